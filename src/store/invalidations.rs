//! The `invalidations` table: one row per distribution a granted purge goes to. Its
//! CallerReference is stored before its CreateInvalidation, then the id CloudFront gave and its
//! state. The rows of one grant are keyed by the grant's CallerReference
//! (`requests.caller_reference`, shared by the requests of one sync), so a restart finds them
//! from any of those requests.

use rusqlite::{params, Connection, TransactionBehavior};
use serde::Serialize;

use super::requests::{advance, note_in};
use super::{cached, now_text, Status, StoreError};

/// Where one distribution's invalidation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Stored, not accepted by CloudFront yet (not sent, or its answer lost).
    Sending,
    /// Refused for now: too many invalidations in progress on that distribution.
    Busy,
    /// CloudFront took it: its id is known.
    InProgress,
    Completed,
    /// CloudFront refused it for good.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Sending => "sending",
            State::Busy => "busy",
            State::InProgress => "in_progress",
            State::Completed => "completed",
            State::Failed => "failed",
        }
    }

    fn parse(s: &str) -> rusqlite::Result<State> {
        Ok(match s {
            "sending" => State::Sending,
            "busy" => State::Busy,
            "in_progress" => State::InProgress,
            "completed" => State::Completed,
            "failed" => State::Failed,
            other => {
                return Err(rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    format!("unknown invalidation state {other:?}").into(),
                ))
            }
        })
    }

    /// Sent and answered: CloudFront has it (or refused it for good).
    pub fn is_sent(self) -> bool {
        matches!(self, State::InProgress | State::Completed | State::Failed)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One distribution's invalidation of a grant.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub distribution_id: String,
    pub caller_reference: String,
    pub invalidation_id: Option<String>,
    pub state: State,
    /// Paths sent (each wildcard one, as AWS bills).
    pub paths: i64,
    pub detail: Option<String>,
    pub updated_at: String,
}

const COLUMNS: &str =
    "distribution_id, caller_reference, invalidation_id, state, paths, detail, updated_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        distribution_id: r.get(0)?,
        caller_reference: r.get(1)?,
        invalidation_id: r.get(2)?,
        state: State::parse(&r.get::<_, String>(3)?)?,
        paths: r.get(4)?,
        detail: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

/// The rows of a grant, one per distribution: those stored already as they are, a new one for
/// each distribution of `planned` (id, CallerReference) not stored yet. In the config's order.
pub fn plan(
    conn: &mut Connection,
    grant: &str,
    site: &str,
    planned: &[(String, String)],
    paths: i64,
) -> Result<Vec<Row>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_text();
    for (position, (dist, reference)) in planned.iter().enumerate() {
        cached(
            &tx,
            "INSERT OR IGNORE INTO invalidations (grant_ref, distribution_id, site, position,
                 caller_reference, paths, state, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'sending', ?7, ?7)",
            params![grant, dist, site, position as i64, reference, paths, now],
        )?;
    }
    let rows = of_grant(&tx, grant)?;
    tx.commit()?;
    Ok(rows)
}

/// A grant's rows, in the config's order.
pub fn of_grant(conn: &Connection, grant: &str) -> Result<Vec<Row>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM invalidations WHERE grant_ref = ?1
         ORDER BY position, distribution_id"
    ))?;
    let rows = st
        .query_map([grant], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// What happened to one distribution's invalidation, recorded on its row and, as an event, on
/// the requests of the grant, in one transaction. The answer that leaves every distribution
/// taken (none waiting, none refused) moves the requests to `invalidated` instead of a note.
/// The first distribution's invalidation id is also kept on the requests
/// (`requests.invalidation_id`, what one distribution showed before this table).
pub fn update(
    conn: &mut Connection,
    grant: &str,
    distribution_id: &str,
    state: State,
    invalidation_id: Option<&str>,
    detail: &str,
    request_ids: &[i64],
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    set(
        &tx,
        grant,
        distribution_id,
        state,
        invalidation_id,
        Some(detail),
    )?;
    let (first, open): (Option<String>, i64) = tx.query_row(
        "SELECT (SELECT invalidation_id FROM invalidations WHERE grant_ref = ?1
                 ORDER BY position, distribution_id LIMIT 1),
                (SELECT count(*) FROM invalidations WHERE grant_ref = ?1
                 AND state IN ('sending', 'busy', 'failed'))",
        [grant],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let all_taken = state == State::InProgress && open == 0;
    for &id in request_ids {
        if let Some(first) = &first {
            cached(
                &tx,
                "UPDATE requests SET invalidation_id = ?2 WHERE id = ?1",
                params![id, first],
            )?;
        }
        if all_taken {
            advance(&tx, id, Status::Invalidated, detail)?;
        } else {
            note_in(&tx, id, detail)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// A row's new state, nothing else (the requests' own move tells it).
pub fn set_state(
    conn: &Connection,
    grant: &str,
    distribution_id: &str,
    state: State,
) -> Result<(), StoreError> {
    set(conn, grant, distribution_id, state, None, None)
}

/// A row CloudFront took before this table existed: its invalidation id, in progress.
pub fn set_taken(
    conn: &Connection,
    grant: &str,
    distribution_id: &str,
    invalidation_id: &str,
) -> Result<(), StoreError> {
    set(
        conn,
        grant,
        distribution_id,
        State::InProgress,
        Some(invalidation_id),
        None,
    )
}

fn set(
    conn: &Connection,
    grant: &str,
    distribution_id: &str,
    state: State,
    invalidation_id: Option<&str>,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    cached(
        conn,
        "UPDATE invalidations SET state = ?3, invalidation_id = coalesce(?4, invalidation_id),
             detail = coalesce(?5, detail), updated_at = ?6
         WHERE grant_ref = ?1 AND distribution_id = ?2",
        params![
            grant,
            distribution_id,
            state.as_str(),
            invalidation_id,
            detail,
            now_text()
        ],
    )?;
    Ok(())
}

/// Rows by (site, distribution, state), for the metrics: how many of the kept grants' invalidations
/// are in each state.
pub fn tally(conn: &Connection) -> Result<Vec<(String, String, State, u64)>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT site, distribution_id, state, count(*) FROM invalidations
         GROUP BY site, distribution_id, state ORDER BY site, distribution_id, state",
    )?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                State::parse(&r.get::<_, String>(2)?)?,
                r.get::<_, i64>(3)?.max(0) as u64,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}
