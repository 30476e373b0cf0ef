//! The alerts' outbox and deliveries: the `events` table read as an outbox (its cursor under
//! `meta.notify_last_event`), and `alert_deliveries`, one row per attempt to deliver an alert
//! to a target. `notify` sends; every statement it needs is here.
//!
//! An alert is the event of a request's move to a status in `[notify] on`. A target is
//! finished with it once a row says `delivered` or `gave_up`; `failed` is retried. A restart
//! reads that, never the wording of the notes written beside each row for people (`history`):
//! rewording a note or a target's name in them changes nothing that is sent.
//!
//! ## Compatibility
//! Migration 10 turns the notes of earlier versions ("alert on completed to webhook: delivered
//! (HTTP 200)", "… gave up after …", "…, retrying in 5s") into rows, each tied to the event it
//! was about, so an alert a target had before the upgrade is not sent again and one it was
//! still waiting for is. Rows go with their event and request (`ON DELETE CASCADE`): pruning
//! needs no step of its own, and an event id SQLite hands out again after pruning finds no
//! rows of the old event.

use std::collections::HashMap;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{cached, counters, invalidations, now_text, Status, StoreError};

/// `meta`'s key for the outbox's cursor.
const CURSOR_KEY: &str = "notify_last_event";

/// Where an alert goes: `alert_deliveries.target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Webhook,
    Sns,
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Target::Webhook => "webhook",
            Target::Sns => "sns",
        }
    }
}

impl ToSql for Target {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Target {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        match v.as_str()? {
            "webhook" => Ok(Target::Webhook),
            "sns" => Ok(Target::Sns),
            s => Err(FromSqlError::Other(
                format!("unknown alert target {s:?}").into(),
            )),
        }
    }
}

/// How one attempt ended: `alert_deliveries.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target took it: finished.
    Delivered,
    /// Not taken; tried again.
    Failed,
    /// Not taken, and no longer tried: finished.
    GaveUp,
}

impl ToSql for Outcome {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::GaveUp => "gave_up",
        }))
    }
}

/// A site's quota as the alert shows it.
#[derive(Debug, Clone)]
pub struct QuotaNow {
    /// The quota's name (`default`, or NAME of `[quotas.NAME]`).
    pub name: String,
    /// Its current period, for a request that never reached the quota.
    pub period: String,
}

/// One read of the outbox.
#[derive(Debug, Clone)]
pub struct Query {
    /// Every event up to this id was read.
    pub after: i64,
    /// Most alerts to return.
    pub limit: usize,
    /// The statuses alerted on.
    pub on: Vec<Status>,
    /// Each site's quota (a site removed since: the quota `default`, no period).
    pub quotas: HashMap<String, QuotaNow>,
    /// When ids went back (see [`read`]), the events older than this (RFC 3339) were read.
    pub reset_before: String,
}

/// What one read found.
#[derive(Debug)]
pub struct Batch {
    /// Every event up to this id was read.
    pub cursor: i64,
    /// Set when the newest id was below [`Query::after`] (pruning removed the newest events,
    /// so SQLite hands out their ids again): the cursor the read went on from instead.
    pub went_back: Option<i64>,
    pub alerts: Vec<AlertRow>,
}

/// An alert: the event of a request's move to a status in `on`, with its request.
#[derive(Debug, Clone)]
pub struct AlertRow {
    pub event_id: i64,
    pub request_id: i64,
    pub status: Status,
    /// The move's detail: why, in words.
    pub detail: Option<String>,
    /// When (RFC 3339).
    pub at: String,
    pub site: String,
    pub marker: String,
    pub invalidation_id: Option<String>,
    /// One per distribution the purge went to: its invalidation id and state now.
    pub invalidations: Vec<invalidations::Row>,
    pub paths: Vec<String>,
    /// The request's quota: its name, the request's period (or the current one) and the
    /// slots used in it when read.
    pub quota: String,
    pub period: String,
    pub count: u32,
    /// The targets already finished with it (before a restart).
    pub finished: Vec<Target>,
}

/// The new cursor and the alerts among the events after `q.after`: at most `q.limit` status
/// changes are read (the cursor stops at the last of them). One read transaction, so the newest
/// id and the rows agree.
pub fn read(conn: &mut Connection, q: &Query) -> Result<Batch, StoreError> {
    let tx = conn.transaction()?;
    let newest: i64 = tx
        .prepare_cached("SELECT coalesce(max(id), 0) FROM events")?
        .query_row([], |r| r.get(0))?;
    let mut after = q.after;
    let mut went_back = None;
    if newest < after {
        after = tx
            .prepare_cached("SELECT coalesce(max(id), 0) FROM events WHERE at < ?1")?
            .query_row([&q.reset_before], |r| r.get(0))?;
        went_back = Some(after);
    }
    // A note keeps the status: only changes of status are alerts.
    let mut stmt = tx.prepare_cached(
        "SELECT e.id, e.request_id, e.to_status, e.detail, e.at,
                r.marker, r.invalidation_id, r.paths, r.period, r.site, r.caller_reference
         FROM events e JOIN requests r ON r.id = e.request_id
         WHERE e.id > ?1 AND e.id <= ?2
           AND (e.from_status IS NULL OR e.from_status <> e.to_status)
         ORDER BY e.id LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![after, newest, q.limit as i64])?;
    let mut read = 0;
    let mut last = newest;
    let mut alerts = Vec::new();
    while let Some(r) = rows.next()? {
        read += 1;
        let event_id: i64 = r.get(0)?;
        last = event_id;
        // A status this version does not know is no alert.
        let to: String = r.get(2)?;
        let Some(status) = Status::parse(&to).filter(|s| q.on.contains(s)) else {
            continue;
        };
        let site: String = r.get(9)?;
        let paths: String = r.get(7)?;
        let (quota, current) = q.quotas.get(&site).map_or_else(
            || ("default".into(), String::new()),
            |n| (n.name.clone(), n.period.clone()),
        );
        let period = r.get::<_, Option<String>>(8)?.unwrap_or(current);
        let grant: Option<String> = r.get(10)?;
        alerts.push(AlertRow {
            event_id,
            request_id: r.get(1)?,
            status,
            detail: r.get(3)?,
            at: r.get(4)?,
            marker: r.get(5)?,
            invalidation_id: r.get(6)?,
            invalidations: match &grant {
                Some(g) => invalidations::of_grant(&tx, g)?,
                None => Vec::new(),
            },
            paths: serde_json::from_str(&paths).unwrap_or_default(),
            count: counters::get(&tx, &quota, &period)?.count,
            quota,
            period,
            site,
            finished: finished(&tx, event_id)?,
        });
    }
    drop(rows);
    drop(stmt);
    tx.commit()?;
    let cursor = if read >= q.limit { last } else { newest };
    Ok(Batch {
        cursor,
        went_back,
        alerts,
    })
}

/// The targets finished with the alert of event `event_id`.
fn finished(conn: &Connection, event_id: i64) -> Result<Vec<Target>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT target FROM alert_deliveries
         WHERE event_id = ?1 AND outcome IN ('delivered', 'gave_up')",
    )?;
    let targets = stmt
        .query_map([event_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(targets)
}

/// One attempt at an alert, as [`record`] stores it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub request_id: i64,
    /// The alert's event.
    pub event_id: i64,
    pub target: Target,
    pub outcome: Outcome,
    /// The proof of delivery ("HTTP 200", "MessageId …") or why not.
    pub detail: String,
    /// The line for the request's history, for people (never read back).
    pub note: String,
}

/// Stores an attempt (numbered after the earlier ones of its event and target) and its note,
/// in one transaction. The note is an event that keeps the request's status and leaves its own
/// `detail` (why it ended) as it was: an alert's outcome is not the request's.
pub fn record(conn: &mut Connection, a: &Attempt) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_text();
    cached(
        &tx,
        "INSERT INTO alert_deliveries (request_id, event_id, target, attempt, outcome, detail, at)
         SELECT ?1, ?2, ?3, coalesce(max(attempt), 0) + 1, ?4, ?5, ?6
         FROM alert_deliveries WHERE event_id = ?2 AND target = ?3",
        params![a.request_id, a.event_id, a.target, a.outcome, a.detail, now],
    )?;
    cached(
        &tx,
        "INSERT INTO events (request_id, at, from_status, to_status, detail)
         SELECT id, ?2, status, status, ?3 FROM requests WHERE id = ?1",
        params![a.request_id, now, a.note],
    )?;
    tx.commit()?;
    Ok(())
}

/// Where the outbox stopped; at the very first start, the newest event (no alerts for history).
pub fn start_cursor(conn: &mut Connection) -> Result<i64, StoreError> {
    let saved: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([CURSOR_KEY], |r| r.get(0))
        .optional()?;
    if let Some(v) = saved.and_then(|v| v.parse().ok()) {
        return Ok(v);
    }
    let newest: i64 =
        conn.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?;
    save_cursor(conn, newest)?;
    Ok(newest)
}

/// Records that every alert up to event `id` is finished with, on every target.
pub fn save_cursor(conn: &mut Connection, id: i64) -> Result<(), StoreError> {
    cached(
        conn,
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![CURSOR_KEY, id.to_string()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{migrate, Store, MIGRATIONS};

    fn query(after: i64) -> Query {
        Query {
            after,
            limit: 100,
            on: vec![Status::Completed, Status::Failed],
            quotas: HashMap::new(),
            reset_before: String::new(),
        }
    }

    /// A request that went `waiting_for_origin → … → completed`, its events 1–4 (4: completed).
    const ONE_COMPLETED: &str = "
        INSERT INTO requests (id, origin, marker, status, detected_at, updated_at, paths)
            VALUES (1, 'watch', 'a/.purge', 'completed', 't', 't', '[\"/*\"]');
        INSERT INTO events (id, request_id, at, from_status, to_status, detail) VALUES
            (1, 1, 't1', NULL, 'waiting_for_origin', 'seen'),
            (2, 1, 't2', 'waiting_for_origin', 'waiting_for_quota', 'verified'),
            (3, 1, 't3', 'waiting_for_quota', 'invalidating', 'granted'),
            (4, 1, 't4', 'invalidated', 'completed', 'done');";

    #[test]
    fn a_delivery_is_read_back_as_data_whatever_the_note_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("pw.db")).expect("open");
        let mut c = s.lock();
        c.execute_batch(ONE_COMPLETED).expect("rows");
        let b = read(&mut c, &query(0)).expect("read");
        assert_eq!(b.cursor, 4);
        assert_eq!(b.alerts.len(), 1);
        let a = &b.alerts[0];
        assert_eq!((a.event_id, a.status), (4, Status::Completed));
        assert_eq!(a.paths, ["/*"]);
        assert!(a.finished.is_empty());
        let attempt = |outcome, note: &str| Attempt {
            request_id: 1,
            event_id: 4,
            target: Target::Webhook,
            outcome,
            detail: "HTTP 500".into(),
            note: note.into(),
        };
        record(&mut c, &attempt(Outcome::Failed, "failed once")).expect("record");
        assert!(read(&mut c, &query(0)).expect("read").alerts[0]
            .finished
            .is_empty());
        record(&mut c, &attempt(Outcome::Delivered, "took it")).expect("record");
        c.execute_batch("UPDATE events SET detail = 'other words' WHERE id > 4")
            .expect("reword");
        let b = read(&mut c, &query(0)).expect("read");
        assert_eq!(b.alerts[0].finished, [Target::Webhook]);
        let attempts: Vec<i64> = c
            .prepare("SELECT attempt FROM alert_deliveries ORDER BY id")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(attempts, [1, 2]);
        // The notes keep the status and are no alerts.
        assert_eq!(b.cursor, 6);
        assert_eq!(b.alerts.len(), 1);
        // Pruning the request takes its deliveries.
        c.execute_batch("DELETE FROM events WHERE request_id = 1; DELETE FROM requests;")
            .expect("prune");
        let n: i64 = c
            .query_row("SELECT count(*) FROM alert_deliveries", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 0);
    }

    /// A database of schema 9: the notes of that version become deliveries, so an alert the
    /// webhook had is not sent again and one SNS was still retrying is.
    #[test]
    fn the_notes_of_earlier_versions_become_deliveries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw.db");
        {
            let mut c = Connection::open(&path).expect("open");
            migrate(&mut c, &MIGRATIONS[..9], |_| Ok(())).expect("schema 9");
            c.execute_batch(ONE_COMPLETED).expect("rows");
            c.execute_batch(
                "INSERT INTO events (id, request_id, at, from_status, to_status, detail) VALUES
                 (5, 1, 't5', 'completed', 'completed',
                     'alert on completed to webhook: HTTP 500 to you, retrying in 5s'),
                 (6, 1, 't6', 'completed', 'completed',
                     'alert on completed to SNS: no answer within 15s, retrying in 5s'),
                 (7, 1, 't7', 'completed', 'completed',
                     'alert on completed to webhook: delivered (HTTP 200)'),
                 (8, 1, 't8', 'completed', 'completed', 'some other note');",
            )
            .expect("old notes");
        }
        let s = Store::open(&path).expect("migrate");
        let mut c = s.lock();
        let rows: Vec<(i64, i64, String, i64, String, String)> = c
            .prepare(
                "SELECT request_id, event_id, target, attempt, outcome, at
                 FROM alert_deliveries ORDER BY id",
            )
            .expect("prepare")
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        let row =
            |t: &str, n, o: &str, at: &str| (1, 4, t.to_owned(), n, o.to_owned(), at.to_owned());
        assert_eq!(
            rows,
            [
                row("webhook", 1, "failed", "t5"),
                row("sns", 1, "failed", "t6"),
                row("webhook", 2, "delivered", "t7"),
            ]
        );
        let b = read(&mut c, &query(0)).expect("read");
        assert_eq!(b.alerts[0].finished, [Target::Webhook]);
    }
}
