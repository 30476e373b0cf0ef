//! The `events` table read from the side: the status changes the metrics count, by `events.id`
//! (the rowid), never a scan. The rows are written by [`super::requests::advance`] alone.

use rusqlite::{Connection, OptionalExtension};

use super::{Status, StoreError};

/// A request that changed status: one event, with what its request says about it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub site: String,
    /// The status it went to; `None` for one this version does not know (a newer version
    /// wrote it): counted by nobody, and no reason to fail a scrape.
    pub to: Option<Status>,
    /// When (RFC 3339).
    pub at: String,
    /// When its marker was written.
    pub detected_at: Option<String>,
    pub invalidation_id: Option<String>,
    /// The paths its invalidation sent.
    pub path_count: Option<i64>,
    /// The distributions that took its invalidation (0 before the `invalidations` table: one).
    pub distributions: i64,
}

/// The newest event written before `at` (RFC 3339): where "since the process started" begins,
/// found walking back from the newest event (it stops at the first older one).
pub fn last_before(conn: &Connection, at: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM events WHERE at < ?1 ORDER BY id DESC LIMIT 1")?
        .query_row([at], |r| r.get(0))
        .optional()?)
}

/// The newest event's id (0 without one).
pub fn newest(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(id), 0) FROM events")?
        .query_row([], |r| r.get(0))?)
}

/// The changes of status among events `after < id <= upto`, oldest first (an event that keeps
/// the status, a note, is none).
pub fn moves(conn: &Connection, after: i64, upto: i64) -> Result<Vec<Move>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.to_status, e.at, r.detected_at, r.invalidation_id,
                coalesce(r.path_count, json_array_length(r.paths)), r.site,
                (SELECT count(*) FROM invalidations i WHERE i.grant_ref = r.caller_reference
                 AND i.invalidation_id IS NOT NULL)
         FROM events e LEFT JOIN requests r ON r.id = e.request_id
         WHERE e.id > ?1 AND e.id <= ?2
           AND (e.from_status IS NULL OR e.from_status != e.to_status)
         ORDER BY e.id",
    )?;
    let moves = stmt
        .query_map([after, upto], |r| {
            Ok(Move {
                to: Status::parse(&r.get::<_, String>(0)?),
                at: r.get(1)?,
                detected_at: r.get(2)?,
                invalidation_id: r.get(3)?,
                path_count: r.get(4)?,
                site: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                distributions: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(moves)
}
