//! `[notify]`: one alert for each request that reaches a status listed in `on`, to a webhook
//! (a JSON POST whose `text` Slack, Teams and Discord show as is) and/or an SNS topic. This file
//! is the outbox loop and its lanes; each target is a file ([`webhook`], [`sns`]), what an
//! alert says is [`text`], and every statement on the database is `store::alerts`.
//!
//! # The outbox
//! The `events` table is the outbox. Every change of status is already an event, written in the
//! pipeline's own transaction, so alerts need no hook in the pipeline and can never delay a
//! purge: this task only reads what the pipeline wrote. It polls once a second for events after
//! the last one it read whose status changed (a note keeps the status, so the notes this task
//! writes are never alerts themselves) into one of `on`.
//!
//! # Delivery
//! One lane per target (webhook, SNS), each with its own queue and at most one attempt in flight:
//! a dead or slow webhook never holds back SNS, and within a lane attempts interleave (the due
//! delivery with the earliest time goes next), so a new alert does not wait behind an old one's
//! backoff. A failed attempt is retried after 5 s, doubling up to 5 min; a delivery that still
//! fails an hour after its first attempt is given up. Every attempt is a row of
//! `alert_deliveries` and, for people, a note in the request's history ("alert on failed to
//! webhook: HTTP 500, retrying in 10s"). Every failure is retried, 4xx and AccessDenied
//! included: an operator who fixes the URL or the IAM policy within the hour still gets the
//! alert. Each attempt has a deadline (15 s), so a black-holed webhook costs its own lane 15 s
//! per attempt and nothing else. A lane holds at most [`QUEUE_MAX`] alerts; beyond that the
//! events simply wait in the database until there is room.
//!
//! # Restarts
//! `meta.notify_last_event` is the id of the last event every alert before it (and it) is
//! finished with, delivered or given up, on every target: a restart reads again from there. A
//! target that had already finished with an alert has a `delivered` or `gave_up` row for it
//! and is not sent it again; the notes' words are never read back. At the very first start the
//! cursor is the newest event: no alerts for history. A backoff's hour starts again after a
//! restart.

mod sns;
mod text;
mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::aws::Clients;
use crate::config::Running;
use crate::store::alerts::{self, Attempt, Outcome, QuotaNow, Target};
use crate::store::Store;
use text::{Alert, Note};

/// How often the events table is read for new alerts.
const POLL: Duration = Duration::from_secs(1);
/// The first retry's delay; each next one doubles, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// A delivery still failing this long after its first attempt is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);
/// One attempt's deadline (connect, send, answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Most alerts one lane holds; later events wait in the database.
const QUEUE_MAX: usize = 1000;

/// A target, ready to send: one file each, as a command per file.
enum Sender {
    /// A webhook whose URL cannot be used still has its lane: every attempt fails saying why.
    Webhook(Result<Box<webhook::Webhook>, String>),
    Sns(Box<sns::Sns>),
}

impl Sender {
    fn target(&self) -> Target {
        match self {
            Sender::Webhook(_) => Target::Webhook,
            Sender::Sns(_) => Target::Sns,
        }
    }

    /// Ok: what proves delivery ("HTTP 200", "MessageId …"). Err: why not, in words (every
    /// failure is retried alike, so its kind is only for people).
    async fn send(&self, alert: &Alert) -> Result<String, String> {
        let json = alert.to_json()?;
        match self {
            Sender::Webhook(w) => w.as_ref().map_err(Clone::clone)?.post(json).await,
            Sender::Sns(s) => s.publish(alert, json).await,
        }
    }
}

/// An alert on its way to one target.
struct Delivery {
    alert: Arc<Alert>,
    /// Attempts since this start.
    attempts: u32,
    first: Option<Instant>,
    next: Instant,
}

/// One target's queue.
struct Lane {
    sender: Arc<Sender>,
    queue: Vec<Delivery>,
    /// The event id of the attempt in flight.
    busy: Option<i64>,
}

impl Lane {
    fn len(&self) -> usize {
        self.queue.len() + usize::from(self.busy.is_some())
    }

    /// The oldest event this lane has not finished with.
    fn oldest(&self) -> Option<i64> {
        self.queue
            .iter()
            .map(|d| d.alert.event_id)
            .chain(self.busy)
            .min()
    }
}

/// Delivers alerts until `token` is cancelled.
pub async fn run(sites: Running, store: Store, clients: Clients, token: CancellationToken) {
    let cfg = sites.first();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let mut senders = Vec::new();
    if let Some(url) = &cfg.notify.webhook {
        let w = webhook::Webhook::new(url).map(Box::new);
        if let Err(e) = &w {
            warn!(error = %e, "notify: the webhook cannot be used; its alerts will fail");
        }
        senders.push(Sender::Webhook(w));
    }
    if let Some(arn) = &cfg.notify.sns_topic_arn {
        senders.push(Sender::Sns(Box::new(sns::Sns::new(&clients.shared, arn))));
    }
    let mut lanes: Vec<Lane> = senders
        .into_iter()
        .map(|s| Lane {
            sender: Arc::new(s),
            queue: Vec::new(),
            busy: None,
        })
        .collect();

    let mut saved = loop {
        match store.call(alerts::start_cursor).await {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %e, "notify: cannot read where alerts stopped; trying again in 10 s");
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        }
    };
    let mut read = saved;
    let mut last_poll = chrono::Utc::now();
    let mut next_poll = Instant::now();
    let mut inflight: JoinSet<(usize, Delivery, Result<String, String>)> = JoinSet::new();

    loop {
        // Start what is due, one attempt per idle lane, earliest first.
        let now = Instant::now();
        for (i, lane) in lanes.iter_mut().enumerate() {
            if lane.busy.is_some() {
                continue;
            }
            let due = (0..lane.queue.len())
                .filter(|&k| lane.queue[k].next <= now)
                .min_by_key(|&k| (lane.queue[k].next, lane.queue[k].alert.event_id));
            if let Some(k) = due {
                let mut d = lane.queue.remove(k);
                d.first.get_or_insert(now);
                lane.busy = Some(d.alert.event_id);
                let sender = lane.sender.clone();
                inflight.spawn(async move {
                    let outcome = sender.send(&d.alert).await;
                    (i, d, outcome)
                });
            }
        }
        let wake = lanes
            .iter()
            .filter(|l| l.busy.is_none())
            .flat_map(|l| l.queue.iter().map(|d| d.next))
            .fold(next_poll, Instant::min);

        tokio::select! {
            _ = token.cancelled() => break,
            Some(done) = inflight.join_next() => {
                match done {
                    Ok((i, d, outcome)) => {
                        lanes[i].busy = None;
                        let target = lanes[i].sender.target();
                        if let Some(again) = settle(&store, target, d, outcome).await {
                            lanes[i].queue.push(again);
                        }
                    }
                    // An attempt cannot panic short of a bug (and release builds abort).
                    Err(e) => warn!(error = %e, "notify: a delivery task ended"),
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }

        if Instant::now() >= next_poll {
            next_poll = Instant::now() + POLL;
            let room = QUEUE_MAX.saturating_sub(lanes.iter().map(Lane::len).max().unwrap_or(0));
            if room > 0 {
                let (query, max) = query(&sites, &cfg.notify.on, read, room, last_poll);
                let started = chrono::Utc::now();
                match store.quick(move |conn| alerts::read(conn, &query)).await {
                    Ok(batch) => {
                        if let Some(now) = batch.went_back {
                            warn!(
                                cursor = read,
                                now,
                                "notify: event ids went back (old history pruned); reading on \
                                 from the events since"
                            );
                        }
                        last_poll = started;
                        read = batch.cursor;
                        let now = Instant::now();
                        for row in batch.alerts {
                            let finished = row.finished.clone();
                            let quota_max = max.get(&row.site).copied().unwrap_or(0);
                            let alert = Arc::new(Alert::new(row, &host, quota_max));
                            for lane in &mut lanes {
                                if !finished.contains(&lane.sender.target()) {
                                    lane.queue.push(Delivery {
                                        alert: alert.clone(),
                                        attempts: 0,
                                        first: None,
                                        next: now,
                                    });
                                }
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "notify: cannot read new events"),
                }
            }
        }

        // Everything up to the oldest unfinished alert is done with, on every target.
        let done_through = lanes
            .iter()
            .filter_map(Lane::oldest)
            .min()
            .map_or(read, |oldest| (oldest - 1).min(read));
        if done_through != saved {
            match store
                .quick(move |conn| alerts::save_cursor(conn, done_through))
                .await
            {
                Ok(()) => saved = done_through,
                Err(e) => warn!(error = %e, "notify: cannot record the alerts done"),
            }
        }
    }
    // In-flight attempts are dropped (aborted) with `inflight`; the cursor does not cover them,
    // so the next start sends them.
}

/// The read of the outbox after event `after`, for at most `limit` alerts, and each site's
/// quota max. `last_poll`: when the last read started (events from before it were read).
fn query(
    sites: &Running,
    on: &[crate::store::Status],
    after: i64,
    limit: usize,
    last_poll: chrono::DateTime<chrono::Utc>,
) -> (alerts::Query, HashMap<String, u32>) {
    let mut quotas = HashMap::new();
    let mut max = HashMap::new();
    for c in sites.get().iter() {
        let q = &c.quota;
        let period = crate::quota::period_key(chrono::Utc::now(), q.timezone, q.period);
        quotas.insert(
            c.site.clone(),
            QuotaNow {
                name: q.name.clone(),
                period,
            },
        );
        max.insert(c.site.clone(), q.max);
    }
    let query = alerts::Query {
        after,
        limit,
        on: on.to_vec(),
        quotas,
        reset_before: crate::store::ts(last_poll - chrono::Duration::seconds(2)),
    };
    (query, max)
}

/// Records an attempt's outcome (a row, and a note in the request's history); returns the
/// delivery when it is to be tried again.
async fn settle(
    store: &Store,
    target: Target,
    mut d: Delivery,
    sent: Result<String, String>,
) -> Option<Delivery> {
    d.attempts += 1;
    let now = Instant::now();
    let a = &d.alert;
    let since_first = now.duration_since(d.first.unwrap_or(now));
    let (outcome, detail, note) = match &sent {
        Ok(proof) => {
            info!(request = a.request.id, event = %a.event, ?target, %proof, "alert delivered");
            (Outcome::Delivered, proof, Note::Delivered { proof })
        }
        Err(e) if since_first >= GIVE_UP_AFTER => {
            warn!(request = a.request.id, event = %a.event, ?target, error = %e, "alert given up");
            let note = Note::GaveUp {
                error: e,
                attempts: d.attempts,
                after: since_first,
            };
            (Outcome::GaveUp, e, note)
        }
        Err(e) => {
            let delay = backoff(d.attempts);
            warn!(request = a.request.id, event = %a.event, ?target, error = %e, "alert not delivered; will retry");
            d.next = now + delay;
            (Outcome::Failed, e, Note::Retrying { error: e, delay })
        }
    };
    let attempt = Attempt {
        request_id: a.request.id,
        event_id: a.event_id,
        target,
        outcome,
        detail: detail.clone(),
        note: note.line(a.event, target),
    };
    if let Err(e) = store.call(move |conn| alerts::record(conn, &attempt)).await {
        warn!(request = d.alert.request.id, error = %e, "notify: cannot record an alert's outcome");
    }
    (outcome == Outcome::Failed).then_some(d)
}

/// The delay after the `attempts`-th failure: 5 s, 10 s, 20 s, … up to 5 min.
fn backoff(attempts: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_5s_to_5min() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(1000), MAX_RETRY);
    }
}
