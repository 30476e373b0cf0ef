//! The `markers` table (the last state of every marker seen, and the S3 object it was last
//! verified against) and `request_markers` (the bytes each request waits for S3 to hold).

use rusqlite::{params, Connection};

use super::{cached, now_text, StoreError};
use crate::marker::{MarkerSeen, ObjectId};

pub(super) fn upsert_for_request(
    conn: &Connection,
    request_id: i64,
    m: &MarkerSeen,
) -> rusqlite::Result<usize> {
    cached(
        conn,
        "INSERT INTO request_markers (request_id, rel, md5, size, mtime_ns, crc32, crc64nvme, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (request_id, rel) DO UPDATE SET md5 = excluded.md5, size = excluded.size,
             mtime_ns = excluded.mtime_ns, crc32 = excluded.crc32, crc64nvme = excluded.crc64nvme,
             body = excluded.body",
        params![
            request_id,
            m.rel,
            m.sums.md5,
            m.size as i64,
            m.mtime_ns,
            m.sums.crc32,
            m.sums.crc64nvme,
            m.body
        ],
    )
}

/// The markers a request waits for, and the generation they belong to.
pub fn of_request(conn: &Connection, id: i64) -> Result<(i64, Vec<MarkerSeen>), StoreError> {
    let generation = super::requests::generation(conn, id)?;
    let mut stmt = conn.prepare_cached(
        "SELECT r.rel, r.md5, r.size, r.mtime_ns, r.crc32, r.crc64nvme,
                m.verified_etag, m.verified_last_modified, m.verified_version, r.body
         FROM request_markers r JOIN requests q ON q.id = r.request_id
         LEFT JOIN markers m ON m.site = q.site AND m.rel = r.rel
         WHERE r.request_id = ?1 ORDER BY r.rel",
    )?;
    let markers = stmt
        .query_map([id], |r| {
            let etag: Option<String> = r.get(6)?;
            let last_modified: Option<i64> = r.get(7)?;
            Ok(MarkerSeen {
                rel: r.get(0)?,
                sums: crate::marker::Sums {
                    md5: r.get(1)?,
                    // Rows from before migration 4 have none: such a marker is proven by MD5.
                    crc32: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    crc64nvme: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                },
                size: r.get::<_, i64>(2)? as u64,
                mtime_ns: r.get(3)?,
                prior: etag
                    .zip(last_modified)
                    .map(|(etag, last_modified)| ObjectId {
                        etag,
                        last_modified,
                        version: r.get(8).ok().flatten(),
                    }),
                body: r.get(9)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((generation, markers))
}

/// Remembers, per marker, the S3 object its write was verified against: the same bytes
/// uploaded again are a new upload only if the object is another one. Part of the verification's
/// transaction.
pub(super) fn set_verified(
    conn: &Connection,
    site: &str,
    objects: &[(String, ObjectId)],
) -> rusqlite::Result<()> {
    for (rel, o) in objects {
        cached(
            conn,
            "UPDATE markers SET verified_etag = ?2, verified_last_modified = ?3,
                 verified_version = ?4 WHERE site = ?5 AND rel = ?1",
            params![rel, o.etag, o.last_modified, o.version, site],
        )?;
    }
    Ok(())
}

/// Last state of every marker seen, for catch-up scans.
pub fn known(
    conn: &Connection,
    site: &str,
) -> Result<std::collections::HashMap<String, (u64, i64)>, StoreError> {
    let mut stmt = conn.prepare("SELECT rel, size, mtime_ns FROM markers WHERE site = ?1")?;
    let rows = stmt
        .query_map([site], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get::<_, i64>(1)? as u64, r.get(2)?),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

pub fn remember(conn: &Connection, site: &str, m: &MarkerSeen) -> Result<(), StoreError> {
    cached(
        conn,
        "INSERT INTO markers (site, rel, md5, size, mtime_ns, seen_at)
         VALUES (?6, ?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (site, rel) DO UPDATE SET md5 = excluded.md5, size = excluded.size,
             mtime_ns = excluded.mtime_ns, seen_at = excluded.seen_at",
        params![
            m.rel,
            m.sums.md5,
            m.size as i64,
            m.mtime_ns,
            now_text(),
            site
        ],
    )?;
    Ok(())
}
