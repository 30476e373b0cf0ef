//! The `takeovers` table: what `purgewatch takeover` removed from an origin bucket's
//! notification configuration (the old Lambda's trigger), kept so `--undo` restores it.

use rusqlite::{params, Connection, OptionalExtension};

use super::{now_text, Status, StoreError};

/// One takeover not undone yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    pub id: i64,
    pub site: String,
    pub bucket: String,
    /// JSON, as the caller stored it.
    pub removed: String,
    pub taken_at: String,
}

/// Records entries about to be removed from `bucket`; the row id.
pub fn record(
    conn: &Connection,
    site: &str,
    bucket: &str,
    removed: &str,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO takeovers (site, bucket, removed, taken_at) VALUES (?1, ?2, ?3, ?4)",
        params![site, bucket, removed, now_text()],
    )?;
    Ok(conn.last_insert_rowid())
}

/// The write it was recorded for did not happen: nothing to undo.
pub fn forget(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.execute("DELETE FROM takeovers WHERE id = ?1", params![id])?;
    Ok(())
}

/// The site's takeovers not undone, oldest first.
pub fn open_of(conn: &Connection, site: &str) -> Result<Vec<Takeover>, StoreError> {
    let mut st = conn.prepare(
        "SELECT id, site, bucket, removed, taken_at FROM takeovers
         WHERE site = ?1 AND undone_at IS NULL ORDER BY id",
    )?;
    let rows = st
        .query_map(params![site], |r| {
            Ok(Takeover {
                id: r.get(0)?,
                site: r.get(1)?,
                bucket: r.get(2)?,
                removed: r.get(3)?,
                taken_at: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The newest takeover of the site, undone or not: (taken_at, undone_at).
pub fn last_of(
    conn: &Connection,
    site: &str,
) -> Result<Option<(String, Option<String>)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT taken_at, undone_at FROM takeovers WHERE site = ?1 ORDER BY id DESC LIMIT 1",
            params![site],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

pub fn mark_undone(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE takeovers SET undone_at = ?2 WHERE id = ?1",
        params![id, now_text()],
    )?;
    Ok(())
}

/// A request of the shadow run, for `takeover`'s report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowRow {
    /// When the marker was seen (RFC 3339, UTC).
    pub at: String,
    /// It ended `dry_run` with a slot it would have taken.
    pub would_purge: bool,
    /// Its paths, JSON as stored.
    pub paths: String,
}

/// The site's requests since its first dry run, oldest first.
pub fn shadow_rows(conn: &Connection, site: &str) -> Result<Vec<ShadowRow>, StoreError> {
    let mut st = conn.prepare(
        "SELECT detected_at, status = ?2 AND detail LIKE '% with slot %', paths FROM requests
         WHERE site = ?1 AND origin <> 'manual'
           AND id >= (SELECT min(id) FROM requests WHERE site = ?1 AND status = ?2)
         ORDER BY id",
    )?;
    let rows = st
        .query_map(params![site, Status::DryRun], |r| {
            Ok(ShadowRow {
                at: r.get(0)?,
                would_purge: r.get(1)?,
                paths: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
