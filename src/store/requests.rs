//! The `requests` table and its `events`: the request state machine, the one place a request's
//! status changes ([`advance`]), and the history an operator reads.
//!
//! Every change of status appends an event in the same transaction, and only the moves
//! [`Status::can_go_to`] allows are made: a bug that would move a request backwards (or out of
//! a final state) is an error, not a silent rewrite of the audit log.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::{cached, changes, now_text, Source, Status, StoreError};
use super::{invalidations, markers};
use crate::marker::{MarkerSeen, ObjectId};

/// One request as `purgewatch history` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub id: i64,
    /// The site (`default` for a single-site config).
    pub site: String,
    /// How many paths the invalidation carries (each wildcard counts as one, as AWS bills).
    pub path_count: Option<i64>,
    pub paths: Vec<String>,
    pub marker: String,
    pub origin: String,
    pub status: Status,
    pub detected_at: String,
    pub finished_at: Option<String>,
    pub invalidation_id: Option<String>,
    pub period: Option<String>,
    pub caller_reference: Option<String>,
    pub detail: Option<String>,
    /// One per distribution the purge went to: its invalidation id and state.
    pub invalidations: Vec<invalidations::Row>,
}

/// A request the pipeline must carry on with after a restart.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub marker: String,
    pub status: Status,
    pub source: Source,
    pub period: Option<String>,
    pub caller_reference: Option<String>,
    pub invalidation_id: Option<String>,
}

/// Stores a new request with its first marker (none for a manual request) and its first event.
pub fn insert(
    conn: &mut Connection,
    site: &str,
    source: Source,
    marker: Option<&MarkerSeen>,
    paths: &[String],
    detail: &str,
) -> Result<i64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_text();
    let status = source.first_status();
    let paths_json = serde_json::to_string(paths).unwrap_or_else(|_| "[]".into());
    cached(
        &tx,
        "INSERT INTO requests (origin, marker, status, detected_at, updated_at, paths, detail, site)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7)",
        params![
            source,
            marker.map(|m| m.rel.as_str()).unwrap_or(""),
            status,
            now,
            paths_json,
            detail,
            site
        ],
    )?;
    let id = tx.last_insert_rowid();
    if let Some(m) = marker {
        markers::upsert_for_request(&tx, id, m)?;
        // In the same transaction: a marker remembered without its request (the disk filled
        // between the two) would look unchanged at the next start and never be purged.
        markers::remember(&tx, site, m)?;
    }
    changes::claim(&tx, site, id)?;
    event(&tx, id, None, status, detail, &now)?;
    tx.commit()?;
    Ok(id)
}

/// Stores a request that cannot go anywhere (an unreadable marker), already `failed`.
pub fn insert_failed(
    conn: &mut Connection,
    site: &str,
    source: Source,
    rel: &str,
    detail: &str,
) -> Result<i64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_text();
    cached(&tx,
        "INSERT INTO requests (origin, marker, status, detected_at, updated_at, finished_at, paths, detail, site)
         VALUES (?1, ?2, ?3, ?4, ?4, ?4, '[]', ?5, ?6)",
        params![source, rel, Status::Failed, now, detail, site],
    )?;
    let id = tx.last_insert_rowid();
    event(&tx, id, None, Status::Failed, detail, &now)?;
    tx.commit()?;
    Ok(id)
}

/// Another unusable write of the marker of `failed` request `id`, folded into it: counted, its
/// detail says so, no new event (so no new alert). False when the request is gone (pruned).
pub fn repeat_failed(conn: &mut Connection, id: i64, detail: &str) -> Result<bool, StoreError> {
    let n = cached(
        conn,
        "UPDATE requests SET repeats = repeats + 1, updated_at = ?2,
             detail = ?3 || ' (' || (repeats + 2) || ' unusable writes of this marker, the last at ' || ?2 || ')'
         WHERE id = ?1 AND status = ?4",
        params![id, now_text(), detail, Status::Failed],
    )?;
    Ok(n == 1)
}

fn event(
    conn: &Connection,
    id: i64,
    from: Option<Status>,
    to: Status,
    detail: &str,
    at: &str,
) -> rusqlite::Result<usize> {
    cached(
        conn,
        "INSERT INTO events (request_id, at, from_status, to_status, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, at, from, to, detail],
    )
}

/// The site a request belongs to.
fn site_of(conn: &Connection, id: i64) -> rusqlite::Result<String> {
    conn.query_row("SELECT site FROM requests WHERE id = ?1", [id], |r| {
        r.get(0)
    })
}

/// A request's status now.
pub fn status_of(conn: &Connection, id: i64) -> Result<Status, StoreError> {
    let s: String = conn.query_row("SELECT status FROM requests WHERE id = ?1", [id], |r| {
        r.get(0)
    })?;
    Status::parse(&s).ok_or(StoreError::UnknownStatus { id, status: s })
}

/// Folds a marker write into a request that is still waiting for the origin: the newest bytes
/// replace the wait. Returns false when the request has moved on.
pub fn merge_marker(conn: &mut Connection, id: i64, m: &MarkerSeen) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let n = cached(
        &tx,
        "UPDATE requests SET generation = generation + 1, updated_at = ?2
         WHERE id = ?1 AND status = ?3",
        params![id, now_text(), Status::WaitingForOrigin],
    )?;
    if n == 0 {
        return Ok(false);
    }
    let site = site_of(&tx, id)?;
    markers::upsert_for_request(&tx, id, m)?;
    markers::remember(&tx, &site, m)?;
    changes::claim(&tx, &site, id)?;
    tx.commit()?;
    Ok(true)
}

/// The generation of the request's markers (bumped by each write merged in).
pub fn generation(conn: &Connection, id: i64) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT generation FROM requests WHERE id = ?1", [id], |r| {
            r.get(0)
        })?,
    )
}

/// S3 holds the markers of `generation`, in the `objects` (per marker), proven `by`
/// ("crc64nvme, md5"): the request moves on to its quota slot. False when a newer write came in
/// meanwhile.
pub fn mark_verified(
    conn: &mut Connection,
    id: i64,
    generation: i64,
    by: &str,
    objects: &[(String, ObjectId)],
    detail: &str,
) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_text();
    let n = cached(
        &tx,
        "UPDATE requests SET verified_at = ?3, verified_by = ?4
         WHERE id = ?1 AND generation = ?2 AND status = ?5",
        params![id, generation, now, by, Status::WaitingForOrigin],
    )?;
    if n == 1 {
        markers::set_verified(&tx, &site_of(&tx, id)?, objects)?;
        advance(&tx, id, Status::WaitingForQuota, detail)?;
    }
    tx.commit()?;
    Ok(n == 1)
}

/// Moves a request to `to`, with an event row, if the state machine allows it
/// ([`Status::can_go_to`]); sets `finished_at` on final states. Part of the caller's transaction.
pub fn advance(conn: &Connection, id: i64, to: Status, detail: &str) -> Result<(), StoreError> {
    let from = status_of(conn, id)?;
    if !from.can_go_to(to) {
        return Err(StoreError::Transition { id, from, to });
    }
    let now = now_text();
    cached(
        conn,
        "UPDATE requests SET status = ?2, updated_at = ?3, detail = ?4,
             finished_at = CASE WHEN ?5 THEN ?3 ELSE finished_at END
         WHERE id = ?1",
        params![id, to, now, detail, to.is_final()],
    )?;
    event(conn, id, Some(from), to, detail, &now)?;
    Ok(())
}

/// [`advance`] for several requests (one sync's, sharing an invalidation), in one transaction.
pub fn advance_all(
    conn: &mut Connection,
    ids: &[i64],
    to: Status,
    detail: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for &id in ids {
        advance(&tx, id, to, detail)?;
    }
    tx.commit()?;
    Ok(())
}

/// Records something that happened to requests without changing their status (a retry, say),
/// in one transaction.
pub fn note(conn: &mut Connection, ids: &[i64], detail: &str) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for &id in ids {
        note_in(&tx, id, detail)?;
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn note_in(conn: &Connection, id: i64, detail: &str) -> Result<(), StoreError> {
    let now = now_text();
    cached(
        conn,
        "INSERT INTO events (request_id, at, from_status, to_status, detail)
         SELECT id, ?2, status, status, ?3 FROM requests WHERE id = ?1",
        params![id, now, detail],
    )?;
    cached(
        conn,
        "UPDATE requests SET detail = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, detail, now],
    )?;
    Ok(())
}

/// CloudFront took the invalidation of these requests.
pub fn set_invalidation_id(
    conn: &mut Connection,
    ids: &[i64],
    invalidation_id: &str,
    detail: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for &id in ids {
        cached(
            &tx,
            "UPDATE requests SET invalidation_id = ?2 WHERE id = ?1",
            params![id, invalidation_id],
        )?;
        advance(&tx, id, Status::Invalidated, detail)?;
    }
    tx.commit()?;
    Ok(())
}

pub fn paths_of(conn: &Connection, id: i64) -> Result<Vec<String>, StoreError> {
    let json: String = conn.query_row("SELECT paths FROM requests WHERE id = ?1", [id], |r| {
        r.get(0)
    })?;
    Ok(serde_json::from_str(&json).unwrap_or_default())
}

/// Sets the paths the invalidation of these requests will carry.
pub fn set_paths(
    conn: &mut Connection,
    ids: &[i64],
    paths: &[String],
    detail: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let json = serde_json::to_string(paths).unwrap_or_else(|_| "[]".into());
    for &id in ids {
        tx.execute(
            "UPDATE requests SET paths = ?2, path_count = ?3 WHERE id = ?1",
            params![id, json, paths.len() as i64],
        )?;
        note_in(&tx, id, detail)?;
    }
    tx.commit()?;
    Ok(())
}

/// The site's requests that have not ended, oldest first.
pub fn pending(conn: &Connection, site: &str) -> Result<Vec<Pending>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, status, origin, period, caller_reference, invalidation_id, marker
         FROM requests WHERE site = ?6 AND status IN (?1, ?2, ?3, ?4, ?5)
         ORDER BY id",
    )?;
    let rows = stmt
        .query_map(
            params![
                Status::WaitingForOrigin,
                Status::WaitingForQuota,
                Status::Deferred,
                Status::Invalidating,
                Status::Invalidated,
                site
            ],
            |r| {
                Ok(Pending {
                    id: r.get(0)?,
                    status: r.get(1)?,
                    source: r.get(2)?,
                    period: r.get(3)?,
                    caller_reference: r.get(4)?,
                    invalidation_id: r.get(5)?,
                    marker: r.get(6)?,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The site's deferred requests whose period has passed, oldest first.
pub fn deferred_before(
    conn: &Connection,
    site: &str,
    period: &str,
) -> Result<Vec<i64>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id FROM requests WHERE site = ?3 AND status = ?1 AND period < ?2 ORDER BY id",
    )?;
    let ids = stmt
        .query_map(params![Status::Deferred, period, site], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(ids)
}

/// The newest `limit` requests, of one site or (`None`) of all.
pub fn history(
    conn: &Connection,
    site: Option<&str>,
    limit: u32,
) -> Result<Vec<HistoryRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, marker, origin, status, detected_at, finished_at, invalidation_id, period,
                caller_reference, detail, path_count, paths, site
         FROM requests WHERE ?2 IS NULL OR site = ?2 ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt
        .query_map(params![limit, site], |r| {
            Ok(HistoryRow {
                site: r.get(12)?,
                id: r.get(0)?,
                marker: r.get(1)?,
                origin: r.get(2)?,
                status: r.get(3)?,
                detected_at: r.get(4)?,
                finished_at: r.get(5)?,
                invalidation_id: r.get(6)?,
                period: r.get(7)?,
                caller_reference: r.get(8)?,
                detail: r.get(9)?,
                path_count: r.get(10)?,
                paths: serde_json::from_str(&r.get::<_, String>(11)?).unwrap_or_default(),
                invalidations: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut rows = rows;
    for row in &mut rows {
        if let Some(g) = &row.caller_reference {
            row.invalidations = invalidations::of_grant(conn, g)?;
        }
    }
    Ok(rows)
}

/// Records the grant of a slot on the requests (the period, the CallerReference) and moves them
/// to `invalidating`. Part of the grant's transaction.
pub fn grant(
    conn: &Connection,
    ids: &[i64],
    period: &str,
    caller_reference: &str,
    detail: &str,
) -> Result<(), StoreError> {
    for &id in ids {
        cached(
            conn,
            "UPDATE requests SET period = ?2, caller_reference = ?3, granted_at = ?4 WHERE id = ?1",
            params![id, period, caller_reference, now_text()],
        )?;
        advance(conn, id, Status::Invalidating, detail)?;
    }
    Ok(())
}

/// No slot: the requests end (or park) in `to`, with the period they were refused in.
pub fn refuse(
    conn: &Connection,
    ids: &[i64],
    period: &str,
    to: Status,
    detail: &str,
) -> Result<(), StoreError> {
    for &id in ids {
        cached(
            conn,
            "UPDATE requests SET period = ?2 WHERE id = ?1",
            params![id, period],
        )?;
        advance(conn, id, to, detail)?;
    }
    Ok(())
}

/// Of `ids`, those a grant may still move on (waiting for a slot, or deferred), in order.
pub fn grantable(conn: &Connection, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
    let mut live = Vec::new();
    for &id in ids {
        if matches!(
            status_of(conn, id)?,
            Status::WaitingForQuota | Status::Deferred
        ) {
            live.push(id);
        }
    }
    Ok(live)
}

/// Journals the slot a request is about to write into the count object, and the
/// CallerReference that write names (a restart must recognise it by that name).
pub fn reserve(
    conn: &Connection,
    id: i64,
    period: &str,
    slot: u32,
    caller_reference: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE requests SET reserved_period = ?2, reserved_slot = ?3, caller_reference = ?4
         WHERE id = ?1",
        params![id, period, slot, caller_reference],
    )?;
    Ok(())
}

/// The slot journalled on a request, and its CallerReference once one was made.
pub type Reservation = (Option<(String, u32)>, Option<String>);

pub fn reservation(conn: &Connection, id: i64) -> Result<Reservation, StoreError> {
    Ok(conn.query_row(
        "SELECT reserved_period, reserved_slot, caller_reference FROM requests WHERE id = ?1",
        [id],
        |r| {
            let p: Option<String> = r.get(0)?;
            let s: Option<u32> = r.get(1)?;
            Ok((p.zip(s), r.get(2)?))
        },
    )?)
}

/// Paths sent to CloudFront in invalidations granted since `since` (UTC, RFC 3339 prefix), each
/// invalidation once and each distribution's its own: what AWS bills past the free 1,000 a
/// month (per account, across distributions). Grants from before the `invalidations` table
/// count from their request rows.
pub fn paths_since(conn: &Connection, since: &str) -> Result<u64, StoreError> {
    let n: Option<i64> = conn
        .query_row(
            "SELECT sum(n) FROM (
                 SELECT max(coalesce(path_count, json_array_length(paths))) AS n
                 FROM requests r WHERE invalidation_id IS NOT NULL AND granted_at >= ?1
                     AND NOT EXISTS (SELECT 1 FROM invalidations i
                                     WHERE i.grant_ref = r.caller_reference)
                 GROUP BY invalidation_id
                 UNION ALL
                 SELECT paths AS n FROM invalidations
                 WHERE invalidation_id IS NOT NULL AND created_at >= ?1)",
            [since],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(n.unwrap_or(0).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_after_verification_starts_a_new_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = super::super::Store::open(&dir.path().join("pw.db")).expect("open");
        let mut c = s.lock();
        let m = MarkerSeen {
            rel: ".purge".into(),
            sums: Default::default(),
            size: 1,
            mtime_ns: 1,
            prior: None,
            body: None,
        };
        let id = insert(
            &mut c,
            "default",
            Source::Watch,
            Some(&m),
            &["/*".into()],
            "seen",
        )
        .expect("insert");
        assert!(merge_marker(&mut c, id, &m).expect("merge"));
        let (generation, markers) = markers::of_request(&c, id).expect("markers");
        assert_eq!((generation, markers.len()), (1, 1));
        // A stale generation must not verify: the newer write has not been checked yet.
        assert!(!mark_verified(&mut c, id, 0, "md5", &[], "ok").expect("verify"));
        assert!(mark_verified(&mut c, id, 1, "md5", &[], "ok").expect("verify"));
        assert!(!merge_marker(&mut c, id, &m).expect("merge"));
    }
}
