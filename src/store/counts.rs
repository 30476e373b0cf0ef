//! Requests counted by status, for what the neighbours show: `requests_in_progress` and
//! `last_completed_timestamp_seconds` on the metrics page, the stages and last requests of
//! `purgewatch status`. Statuses are always [`Status`] values, bound as parameters: a status
//! added to the enum needs no edit here.
//!
//! ## Performance
//! Every query is served by an index: `requests_site_status` (site, status), `requests_status`,
//! `requests_finished`.

use rusqlite::{params, Connection, OptionalExtension};

use super::{Status, StoreError};

/// How many requests of one site are in one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InStatus {
    pub site: String,
    pub status: Status,
    pub requests: i64,
}

/// A JSON array for `json_each`, the one way to bind a list.
fn list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

/// The requests in each of `statuses`, by site and status (only those with some).
pub fn by_site_and_status(
    conn: &Connection,
    statuses: &[Status],
) -> Result<Vec<InStatus>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT site, status, count(*) FROM requests
         WHERE status IN (SELECT value FROM json_each(?1))
         GROUP BY site, status",
    )?;
    let rows = stmt
        .query_map([list(statuses)], |r| {
            Ok(InStatus {
                site: r.get(0)?,
                status: r.get(1)?,
                requests: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The requests of `sites` in any of `statuses`.
pub fn count(conn: &Connection, statuses: &[Status], sites: &[&str]) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM requests
             WHERE status IN (SELECT value FROM json_each(?1))
               AND site IN (SELECT value FROM json_each(?2))",
        )?
        .query_row(params![list(statuses), list(sites)], |r| r.get(0))?;
    Ok(n as u64)
}

/// The newest request of `sites` in `status` (its id).
pub fn newest(
    conn: &Connection,
    status: Status,
    sites: &[&str],
) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT max(id) FROM requests WHERE status = ?1
             AND site IN (SELECT value FROM json_each(?2))",
        )?
        .query_row(params![status, list(sites)], |r| r.get(0))
        .optional()?
        .flatten())
}

/// When the request of any site that most recently ended in `status` ended (RFC 3339).
pub fn last_finished(conn: &Connection, status: Status) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT finished_at FROM requests
             WHERE finished_at IS NOT NULL AND status = ?1
             ORDER BY finished_at DESC LIMIT 1",
        )?
        .query_row([status], |r| r.get(0))
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_status_and_site() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::super::Store::open(&dir.path().join("pw.db")).expect("open");
        let c = store.lock();
        for (site, status, finished) in [
            ("a", Status::WaitingForOrigin, None),
            ("a", Status::Invalidated, None),
            ("b", Status::Invalidated, None),
            ("a", Status::Completed, Some("2026-01-01T00:00:00.000Z")),
            ("b", Status::Completed, Some("2026-01-02T00:00:00.000Z")),
        ] {
            c.execute(
                "INSERT INTO requests (origin, marker, status, detected_at, updated_at,
                                       finished_at, paths, site)
                 VALUES ('watch', '.purge', ?1, 't', 't', ?2, '[]', ?3)",
                params![status, finished, site],
            )
            .expect("insert");
        }
        let waiting = [Status::WaitingForOrigin, Status::Invalidated];
        let mut rows = by_site_and_status(&c, &waiting).expect("by status");
        rows.sort_by(|x, y| (&x.site, x.status.as_str()).cmp(&(&y.site, y.status.as_str())));
        let rows: Vec<_> = rows
            .iter()
            .map(|r| (r.site.as_str(), r.status, r.requests))
            .collect();
        assert_eq!(
            rows,
            [
                ("a", Status::Invalidated, 1),
                ("a", Status::WaitingForOrigin, 1),
                ("b", Status::Invalidated, 1)
            ]
        );
        assert_eq!(count(&c, &waiting, &["a"]).expect("count"), 2);
        assert_eq!(count(&c, &waiting, &["a", "b"]).expect("count"), 3);
        assert_eq!(count(&c, &[Status::Failed], &["a", "b"]).expect("count"), 0);
        assert_eq!(
            newest(&c, Status::Completed, &["a"]).expect("newest"),
            Some(4)
        );
        assert_eq!(newest(&c, Status::Failed, &["a"]).expect("newest"), None);
        assert_eq!(
            last_finished(&c, Status::Completed)
                .expect("last")
                .as_deref(),
            Some("2026-01-02T00:00:00.000Z")
        );
    }
}
