//! The `changes` table: every file changed under the root since the last request (the open
//! set, `request_id IS NULL`), claimed by the next request, which waits for them in S3
//! (`wait_for = "changes"`) or invalidates them (`paths = "changed"`).

use rusqlite::{params, Connection, TransactionBehavior};

use super::StoreError;

/// One path's net change since it was first seen in the open set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSeen {
    pub rel: String,
    pub deleted: bool,
    pub first_seen: String,
    pub last_seen: String,
}

/// Adds a batch to the open set in one transaction (one commit, not one per event).
pub fn record(conn: &mut Connection, batch: &[ChangeSeen]) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO changes (rel, deleted, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (rel) WHERE request_id IS NULL
             DO UPDATE SET deleted = excluded.deleted, last_seen = excluded.last_seen",
        )?;
        for c in batch {
            stmt.execute(params![c.rel, c.deleted, c.first_seen, c.last_seen])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Notes that the open set misses changes (events lost, daemon down); the next request says so.
pub fn unknown(conn: &Connection, why: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('changes_unknown', ?1) ON CONFLICT (key) DO NOTHING",
        [why],
    )?;
    Ok(())
}

/// The open set becomes the request's, with the note of what it may miss.
pub(super) fn claim(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    let n = conn.execute(
        "UPDATE changes SET request_id = ?1 WHERE request_id IS NULL",
        [id],
    )?;
    // Kept on the request once the change rows are pruned (store::prune).
    conn.execute(
        "UPDATE requests SET change_count = coalesce(change_count, 0) + ?2 WHERE id = ?1",
        rusqlite::params![id, n as i64],
    )?;
    conn.execute(
        "UPDATE requests SET changes_unknown = coalesce(changes_unknown,
             (SELECT value FROM meta WHERE key = 'changes_unknown')) WHERE id = ?1",
        [id],
    )?;
    conn.execute("DELETE FROM meta WHERE key = 'changes_unknown'", [])?;
    Ok(())
}

/// The paths written since the last request claimed the changes (the open set): for a request
/// still waiting for its changes in S3, those of its own written again.
pub fn open_paths(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT rel FROM changes WHERE request_id IS NULL")?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(rows)
}

/// (path relative to the root, deleted) pairs.
pub type ChangeList = Vec<(String, bool)>;

/// A request's changes, one per path (the last event wins), and why the set may be incomplete.
pub fn of_request(conn: &Connection, id: i64) -> Result<(ChangeList, Option<String>), StoreError> {
    let unknown: Option<String> = conn.query_row(
        "SELECT changes_unknown FROM requests WHERE id = ?1",
        [id],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(
        "SELECT rel, deleted FROM changes WHERE request_id = ?1 AND id IN
             (SELECT max(id) FROM changes WHERE request_id = ?1 GROUP BY rel)
         ORDER BY rel",
    )?;
    let rows = stmt
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((rows, unknown))
}
