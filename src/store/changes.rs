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
pub fn record(conn: &mut Connection, site: &str, batch: &[ChangeSeen]) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO changes (site, rel, deleted, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (site, rel) WHERE request_id IS NULL
             DO UPDATE SET deleted = excluded.deleted, last_seen = excluded.last_seen",
        )?;
        for c in batch {
            stmt.execute(params![site, c.rel, c.deleted, c.first_seen, c.last_seen])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Notes that the open set misses changes (events lost, daemon down); the next request says so.
pub fn unknown(conn: &Connection, site: &str, why: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('changes_unknown:' || ?1, ?2)
         ON CONFLICT (key) DO NOTHING",
        [site, why],
    )?;
    Ok(())
}

/// The open set becomes the request's, with the note of what it may miss.
pub(super) fn claim(conn: &Connection, site: &str, id: i64) -> rusqlite::Result<()> {
    let n = conn.execute(
        "UPDATE changes SET request_id = ?1 WHERE request_id IS NULL AND site = ?2",
        params![id, site],
    )?;
    // Kept on the request once the change rows are pruned (store::prune).
    conn.execute(
        "UPDATE requests SET change_count = coalesce(change_count, 0) + ?2 WHERE id = ?1",
        rusqlite::params![id, n as i64],
    )?;
    conn.execute(
        "UPDATE requests SET changes_unknown = coalesce(changes_unknown,
             (SELECT value FROM meta WHERE key = 'changes_unknown:' || ?2)) WHERE id = ?1",
        params![id, site],
    )?;
    conn.execute(
        "DELETE FROM meta WHERE key = 'changes_unknown:' || ?1",
        [site],
    )?;
    Ok(())
}

/// The paths written since the last request claimed the changes (the open set): for a request
/// still waiting for its changes in S3, those of its own written again.
pub fn open_paths(conn: &Connection, site: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT rel FROM changes WHERE request_id IS NULL AND site = ?1")?;
    let rows = stmt
        .query_map([site], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(rows)
}

/// A request's changed paths in key order, each once, handed to `each` as the rows are read:
/// a change set is built without a second copy of the list.
pub fn each_path_of_request(
    conn: &Connection,
    id: i64,
    mut each: impl FnMut(&str),
) -> Result<(), StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT DISTINCT rel FROM changes WHERE request_id = ?1 ORDER BY rel")?;
    let mut rows = stmt.query([id])?;
    while let Some(row) = rows.next()? {
        each(row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?);
    }
    Ok(())
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
