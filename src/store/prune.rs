//! Bounded state: what a daemon keeps after months unattended. Requests that ended longer ago
//! than `[state] keep` go, with their events, markers and changes; the changes of an ended
//! request go after `[state] keep_changes` (its path list and change count stay on the row);
//! quota rows of periods not touched since `keep` go. Free pages are handed back
//! (`auto_vacuum = INCREMENTAL`).
//!
//! ## Locking
//! Every step is one small transaction on the blocking pool ([`Store::call`]), so the write lock
//! is never held long enough to delay a marker: a marker's request is stored between two
//! batches.

use rusqlite::params;

use super::{Store, StoreError};

/// Rows per transaction.
const BATCH: usize = 2_000;
/// Requests per transaction (each with its events, markers and changes).
const REQUESTS: usize = 200;

/// What one prune removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub requests: usize,
    pub changes: usize,
    pub periods: usize,
}

/// Prunes what ended before `before` (RFC 3339, as `finished_at`), and the changes of what
/// ended before `changes_before`.
pub async fn prune(
    store: &Store,
    before: &str,
    changes_before: &str,
) -> Result<Pruned, StoreError> {
    let mut out = Pruned::default();
    // Bounded: each round deletes at least one row or stops.
    loop {
        let cutoff = changes_before.to_owned();
        let n = store
            .call(move |c| {
                Ok(c.execute(
                    "DELETE FROM changes WHERE rowid IN (
                         SELECT c.rowid FROM changes c JOIN requests r ON r.id = c.request_id
                         WHERE r.finished_at IS NOT NULL AND r.finished_at < ?1 LIMIT ?2)",
                    params![cutoff, BATCH as i64],
                )?)
            })
            .await?;
        out.changes += n;
        if n < BATCH {
            break;
        }
    }
    loop {
        let cutoff = before.to_owned();
        let (n, changes) = store
            .call(move |c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let ids: Vec<i64> = tx
                    .prepare(
                        "SELECT id FROM requests WHERE finished_at IS NOT NULL AND finished_at < ?1
                         ORDER BY id LIMIT ?2",
                    )?
                    .query_map(params![cutoff, REQUESTS as i64], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut changes = 0;
                for id in &ids {
                    tx.execute("DELETE FROM events WHERE request_id = ?1", [id])?;
                    tx.execute("DELETE FROM request_markers WHERE request_id = ?1", [id])?;
                    changes += tx.execute("DELETE FROM changes WHERE request_id = ?1", [id])?;
                    // The grant's invalidations go with the last of its requests.
                    tx.execute(
                        "DELETE FROM invalidations WHERE grant_ref =
                             (SELECT caller_reference FROM requests WHERE id = ?1)
                         AND NOT EXISTS (SELECT 1 FROM requests r
                             WHERE r.caller_reference = invalidations.grant_ref AND r.id != ?1)",
                        [id],
                    )?;
                    tx.execute("DELETE FROM requests WHERE id = ?1", [id])?;
                }
                tx.commit()?;
                Ok((ids.len(), changes))
            })
            .await?;
        out.requests += n;
        out.changes += changes;
        if n < REQUESTS {
            break;
        }
    }
    let cutoff = before.to_owned();
    out.periods = store
        .call(move |c| Ok(c.execute("DELETE FROM quota WHERE updated_at < ?1", [cutoff])?))
        .await?;
    // Hand the freed pages back, a slice at a time, while that shrinks the free list.
    let mut free = i64::MAX;
    for _ in 0..100_000 {
        let left: i64 = store
            .call(|c| {
                c.execute_batch("PRAGMA incremental_vacuum(2000)")?;
                Ok(c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?)
            })
            .await?;
        if left == 0 || left >= free {
            break;
        }
        free = left;
    }
    Ok(out)
}
