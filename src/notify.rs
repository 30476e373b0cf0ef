//! `[notify]`: one alert for each request that reaches a status listed in `on`, to a webhook
//! (a JSON POST whose `text` Slack, Teams and Discord show as is) and/or an SNS topic.
//!
//! # The outbox
//! The `events` table is the outbox. Every change of status is already an event, written in the
//! pipeline's own transaction, so alerts need no hook in the pipeline and can never delay a
//! purge: this task only reads what the pipeline wrote. It polls once a second for events after
//! the last one it read whose status changed (`from_status <> to_status`; a note keeps the status,
//! so the notes this task writes are never alerts themselves) into one of `on`.
//!
//! # Delivery
//! One lane per target (webhook, SNS), each with its own queue and at most one attempt in flight:
//! a dead or slow webhook never holds back SNS, and within a lane attempts interleave (the due
//! delivery with the earliest time goes next), so a new alert does not wait behind an old one's
//! backoff. A failed attempt is retried after 5 s, doubling up to 5 min; a delivery that still
//! fails an hour after its first attempt is given up. Every attempt's outcome is an event in the
//! request's history ("alert on failed to webhook: HTTP 500, retrying in 10s"). Every failure is
//! retried, 4xx and AccessDenied included: an operator who fixes the URL or the IAM policy within
//! the hour still gets the alert. Each attempt has a deadline (15 s), so a black-holed webhook
//! costs its own lane 15 s per attempt and nothing else. A lane holds at most [`QUEUE_MAX`]
//! alerts; beyond that the events simply wait in the database until there is room.
//!
//! # Restarts
//! `meta.notify_last_event` is the id of the last event every alert before it (and it) is
//! finished with, delivered or given up, on every target: a restart reads again from there. An
//! alert that a target had already finished before the restart is recognised by its "delivered"
//! or "gave up" note (a request reaches each status at most once) and is not sent twice. At the
//! very first start the cursor is the newest event: no alerts for history. A backoff's hour
//! starts again after a restart.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::aws::Clients;
use crate::config::Running;
use crate::store::{now_text, Status, Store, StoreError};

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
/// Most paths an alert lists (the count is always there).
const PATHS_MAX: usize = 100;
const CURSOR_KEY: &str = "notify_last_event";

/// One message, as the webhook receives it and as SNS's Message.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// One line: "purgewatch on web1: request 42 blog/.purge failed: CloudFront refused: …".
    pub text: String,
    /// The status reached.
    pub event: Status,
    pub host: String,
    /// The request's site (`default` for a single-site config).
    pub site: String,
    /// When the request reached it (RFC 3339 UTC).
    pub at: String,
    pub request: RequestPart,
    pub quota: QuotaPart,
    #[serde(skip)]
    event_id: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestPart {
    pub id: i64,
    pub marker: String,
    pub status: Status,
    /// Why, in words: the detail of the move to this status.
    pub detail: Option<String>,
    pub invalidation_id: Option<String>,
    /// The first [`PATHS_MAX`] paths; `path_count` says how many there are.
    pub paths: Vec<String>,
    pub path_count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuotaPart {
    /// The quota's name (`default`, or NAME of `[quotas.NAME]`).
    pub name: String,
    /// The request's quota period, or the current one when it never reached the quota.
    pub period: String,
    /// Slots used in that period when the alert was read.
    pub count: u32,
    pub max: u32,
}

impl Alert {
    fn subject(&self) -> String {
        // SNS: ASCII without line breaks or control characters, "less than 100 characters",
        // starting with a letter, digit or punctuation (it does: "purgewatch"). No marker in
        // it: the name is in the message.
        let s = format!(
            "purgewatch on {}: request {} {}",
            self.host, self.request.id, self.event
        );
        s.chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(SUBJECT_MAX)
            .collect()
    }

    /// The JSON body, with every character a terminal acts on as a `\uXXXX` escape: a reader
    /// gets the exact name back, and no raw control reaches a mail client or a log of the body.
    fn to_json(&self) -> Result<String, String> {
        let mut out = Vec::with_capacity(1024);
        let mut ser = serde_json::Serializer::with_formatter(&mut out, InertJson);
        self.serialize(&mut ser).map_err(|e| format!("JSON: {e}"))?;
        String::from_utf8(out).map_err(|e| format!("JSON: {e}"))
    }
}

/// SNS's subject is "less than 100 characters long".
const SUBJECT_MAX: usize = 99;

/// serde_json's compact output, but for DEL, the C1 controls and the bidirectional overrides,
/// which JSON allows raw (it escapes only U+0000–U+001F) and a terminal acts on.
struct InertJson;

impl serde_json::ser::Formatter for InertJson {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if crate::text::acts(c) {
                w.write_all(&fragment.as_bytes()[start..i])?;
                // Every such character is in the BMP: one `\uXXXX`.
                write!(w, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

fn text_of(
    host: &str,
    site: &str,
    id: i64,
    marker: &str,
    status: Status,
    detail: Option<&str>,
) -> String {
    let on = if site == "default" {
        String::new()
    } else {
        format!(" site {site}")
    };
    // A name from the tree is shown escaped (`\n`, `\u{1b}`): an operator sees that a name is
    // odd, where dropping the characters would show two names as one.
    let marker = crate::text::printable(marker);
    let mut t = format!("purgewatch on {host}{on}: request {id} {marker} {status}");
    if let Some(d) = detail.filter(|d| !d.is_empty()) {
        t.push_str(": ");
        // Our own words: a line break in them is a space, so the text stays one line.
        t.push_str(&d.replace(['\r', '\n'], " "));
    }
    slack_escape(&crate::text::printable(&t))
}

/// Slack's escaping of message text: `&`, `<` and `>` are its markup (`<!channel>` pings the
/// channel, `<url|label>` is a link), so a folder name could mention or mislink. Teams and
/// Discord show the entities as text, which is harmless.
fn slack_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Where alerts go.
enum Target {
    Webhook(Result<Box<Webhook>, String>),
    Sns {
        client: aws_sdk_sns::Client,
        arn: String,
    },
}

impl Target {
    /// The name in the history's notes.
    fn name(&self) -> &'static str {
        match self {
            Target::Webhook(_) => "webhook",
            Target::Sns { .. } => "SNS",
        }
    }

    /// Ok: what proves delivery ("HTTP 200", "MessageId …"). Err: why not, in words.
    async fn send(&self, alert: &Alert) -> Result<String, String> {
        let json = alert.to_json()?;
        match self {
            Target::Webhook(w) => w.as_ref().map_err(Clone::clone)?.post(json).await,
            Target::Sns { client, arn } => {
                let publish = client
                    .publish()
                    .topic_arn(arn)
                    .subject(alert.subject())
                    .message(json)
                    .send();
                match tokio::time::timeout(ATTEMPT_TIMEOUT, publish).await {
                    Err(_) => Err(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())),
                    Ok(Ok(out)) => Ok(format!("MessageId {}", out.message_id().unwrap_or("?"))),
                    Ok(Err(e)) => {
                        use crate::aws::AwsError;
                        let (AwsError::Transient(mut m)
                        | AwsError::Permanent(mut m)
                        | AwsError::Busy(mut m)) = crate::aws::classify("Publish", &e);
                        if m.contains("AccessDenied") || m.contains("HTTP 403") {
                            m.push_str(
                                "; needs sns:Publish on the topic (IAM policy statement PublishAlerts)",
                            );
                        }
                        Err(m)
                    }
                }
            }
        }
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// The webhook: hyper with rustls on ring and the system's root certificates (the crates the
/// AWS SDK's own client links). The URL is a secret (Slack's holds the token): never logged.
struct Webhook {
    client: HttpClient,
    uri: hyper::Uri,
}

impl Webhook {
    fn new(url: &str) -> Result<Webhook, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("the webhook URL does not parse: {e}"))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("the system's root certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(Webhook { client, uri })
    }

    async fn post(&self, json: String) -> Result<String, String> {
        let req = hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("purgewatch/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| format!("request: {e}"))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| crate::aws::error_chain(&e))?;
            let status = resp.status();
            // The answer's start, for the history (Slack says "invalid_payload", "no_service").
            let body = http_body_util::Limited::new(resp.into_body(), 4096)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                Ok(format!("HTTP {}", status.as_u16()))
            } else {
                let said: String = String::from_utf8_lossy(&body)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                Err(format!("HTTP {} {}", status.as_u16(), said.trim())
                    .trim()
                    .to_owned())
            }
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()))?
    }
}

/// An alert on its way to one target.
struct Delivery {
    alert: Arc<Alert>,
    attempts: u32,
    first: Option<Instant>,
    next: Instant,
}

/// One target's queue.
struct Lane {
    target: Arc<Target>,
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

/// An event read from the outbox, with what each target already finished (after a restart).
struct Found {
    alert: Alert,
    finished: Vec<bool>,
}

/// Delivers alerts until `token` is cancelled.
pub async fn run(sites: Running, store: Store, clients: Clients, token: CancellationToken) {
    let cfg = sites.first();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let mut lanes = Vec::new();
    if let Some(url) = &cfg.notify.webhook {
        let w = Webhook::new(url).map(Box::new);
        if let Err(e) = &w {
            warn!(error = %e, "notify: the webhook cannot be used; its alerts will fail");
        }
        lanes.push(Target::Webhook(w));
    }
    if let Some(arn) = &cfg.notify.sns_topic_arn {
        // Signed for the topic's region, whatever `[aws] region` says.
        let region = arn.split(':').nth(3).unwrap_or_default().to_owned();
        let conf = aws_sdk_sns::config::Builder::from(&clients.shared)
            .region(aws_sdk_sns::config::Region::new(region))
            .build();
        lanes.push(Target::Sns {
            client: aws_sdk_sns::Client::from_conf(conf),
            arn: arn.clone(),
        });
    }
    let mut lanes: Vec<Lane> = lanes
        .into_iter()
        .map(|t| Lane {
            target: Arc::new(t),
            queue: Vec::new(),
            busy: None,
        })
        .collect();
    let names: Vec<&'static str> = lanes.iter().map(|l| l.target.name()).collect();

    let mut saved = loop {
        match store.call(start_cursor).await {
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
                let target = lane.target.clone();
                inflight.spawn(async move {
                    let outcome = target.send(&d.alert).await;
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
                        if let Some(again) = settle(&store, lanes[i].target.name(), d, outcome).await {
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
                let poll = Poll {
                    after: read,
                    limit: room,
                    on: cfg.notify.on.clone(),
                    targets: names.clone(),
                    host: host.clone(),
                    quotas: sites
                        .get()
                        .iter()
                        .map(|c| {
                            let q = &c.quota;
                            let now =
                                crate::quota::period_key(chrono::Utc::now(), q.timezone, q.period);
                            (c.site.clone(), (q.name.clone(), q.max, now))
                        })
                        .collect(),
                    reset_before: crate::store::ts(last_poll - chrono::Duration::seconds(2)),
                };
                let started = chrono::Utc::now();
                match store.quick(move |conn| poll.read(conn)).await {
                    Ok((cursor, found)) => {
                        last_poll = started;
                        read = cursor;
                        let now = Instant::now();
                        for f in found {
                            let alert = Arc::new(f.alert);
                            for (lane, done) in lanes.iter_mut().zip(f.finished) {
                                if !done {
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
                .quick(move |conn| save_cursor(conn, done_through))
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

/// Records an attempt's outcome in the request's history; returns the delivery when it is to be
/// tried again.
async fn settle(
    store: &Store,
    target: &'static str,
    mut d: Delivery,
    outcome: Result<String, String>,
) -> Option<Delivery> {
    d.attempts += 1;
    let now = Instant::now();
    let a = &d.alert;
    let head = format!("alert on {} to {target}", a.event);
    let (line, again) = match outcome {
        Ok(proof) => {
            info!(request = a.request.id, event = %a.event, target, %proof, "alert delivered");
            (format!("{head}: delivered ({proof})"), false)
        }
        Err(e) if now.duration_since(d.first.unwrap_or(now)) >= GIVE_UP_AFTER => {
            warn!(request = a.request.id, event = %a.event, target, error = %e, "alert given up");
            (
                format!(
                    "{head}: gave up after {} attempts in {}: {e}",
                    d.attempts,
                    humantime::format_duration(Duration::from_secs(
                        now.duration_since(d.first.unwrap_or(now)).as_secs()
                    ))
                ),
                false,
            )
        }
        Err(e) => {
            let delay = backoff(d.attempts);
            warn!(request = a.request.id, event = %a.event, target, error = %e, "alert not delivered; will retry");
            d.next = now + delay;
            (
                format!(
                    "{head}: {e}, retrying in {}",
                    humantime::format_duration(delay)
                ),
                true,
            )
        }
    };
    let id = a.request.id;
    if let Err(e) = store.call(move |conn| note(conn, id, &line)).await {
        warn!(request = id, error = %e, "notify: cannot record an alert's outcome");
    }
    again.then_some(d)
}

/// The delay after the `attempts`-th failure: 5 s, 10 s, 20 s, … up to 5 min.
fn backoff(attempts: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(MAX_RETRY)
}

/// One read of the outbox.
struct Poll {
    after: i64,
    limit: usize,
    on: Vec<Status>,
    targets: Vec<&'static str>,
    host: String,
    /// Site → (its quota's name, max, current period).
    quotas: std::collections::HashMap<String, (String, u32, String)>,
    /// When ids went back (see [`Poll::read`]), events older than this were read already.
    reset_before: String,
}

impl Poll {
    /// The new cursor (every event up to it read) and the alerts among the events after
    /// `after`. One read transaction, so the newest id and the rows agree.
    fn read(&self, conn: &mut Connection) -> Result<(i64, Vec<Found>), StoreError> {
        let tx = conn.transaction()?;
        let newest: i64 =
            tx.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?;
        let mut after = self.after;
        if newest < after {
            // Pruning (`[state] keep`) removed the newest events, so SQLite hands out their ids
            // again: the events written since the last read may have ids below the cursor.
            after = tx.query_row(
                "SELECT coalesce(max(id), 0) FROM events WHERE at < ?1",
                [&self.reset_before],
                |r| r.get(0),
            )?;
            warn!(
                cursor = self.after,
                now = after,
                "notify: event ids went back (old history pruned); reading on from the events since"
            );
        }
        let mut stmt = tx.prepare_cached(
            "SELECT e.id, e.request_id, e.to_status, e.detail, e.at,
                    r.marker, r.invalidation_id, r.paths, r.period, r.site
             FROM events e JOIN requests r ON r.id = e.request_id
             WHERE e.id > ?1 AND e.id <= ?2
               AND (e.from_status IS NULL OR e.from_status <> e.to_status)
             ORDER BY e.id LIMIT ?3",
        )?;
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            i64,
            i64,
            String,
            Option<String>,
            String,
            String,
            Option<String>,
            String,
            Option<String>,
            String,
        )> = stmt
            .query_map(params![after, newest, self.limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let cursor = if rows.len() >= self.limit {
            rows.last().map_or(newest, |r| r.0)
        } else {
            newest
        };
        let mut found = Vec::new();
        for (eid, rid, to, detail, at, marker, invalidation_id, paths, period, site) in rows {
            let Some(status) = Status::parse(&to).filter(|s| self.on.contains(s)) else {
                continue;
            };
            let paths: Vec<String> = serde_json::from_str(&paths).unwrap_or_default();
            // The site's quota (a site removed since: the quota named like before sites).
            let (quota, max, current) = self
                .quotas
                .get(&site)
                .cloned()
                .unwrap_or_else(|| ("default".into(), 0, String::new()));
            let period = period.unwrap_or(current);
            let count: u32 = tx
                .query_row(
                    "SELECT count FROM quota WHERE quota = ?1 AND period = ?2",
                    [&quota, &period],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            // After a restart: the targets that already finished with this alert.
            let mut stmt = tx.prepare_cached(
                "SELECT detail FROM events
                 WHERE request_id = ?1 AND id > ?2 AND from_status = to_status AND detail LIKE ?3",
            )?;
            let head = format!("alert on {status} to ");
            let notes: Vec<String> = stmt
                .query_map(params![rid, eid, format!("{head}%")], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let finished = self
                .targets
                .iter()
                .map(|t| {
                    let mine = format!("{head}{t}: ");
                    notes.iter().any(|n| {
                        n.strip_prefix(&mine)
                            .is_some_and(|o| o.starts_with("delivered") || o.starts_with("gave up"))
                    })
                })
                .collect();
            found.push(Found {
                alert: Alert {
                    text: text_of(&self.host, &site, rid, &marker, status, detail.as_deref()),
                    event: status,
                    host: self.host.clone(),
                    site,
                    at,
                    request: RequestPart {
                        id: rid,
                        marker,
                        status,
                        detail,
                        invalidation_id,
                        path_count: paths.len(),
                        paths: paths.into_iter().take(PATHS_MAX).collect(),
                    },
                    quota: QuotaPart {
                        name: quota,
                        period,
                        count,
                        max,
                    },
                    event_id: eid,
                },
                finished,
            });
        }
        drop(stmt);
        tx.commit()?;
        Ok((cursor, found))
    }
}

/// Where alerts stopped; at the very first start, the newest event (no alerts for history).
fn start_cursor(conn: &mut Connection) -> Result<i64, StoreError> {
    let saved: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [CURSOR_KEY], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(v) = saved.and_then(|v| v.parse().ok()) {
        return Ok(v);
    }
    let newest: i64 =
        conn.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?;
    save_cursor(conn, newest)?;
    Ok(newest)
}

fn save_cursor(conn: &mut Connection, id: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![CURSOR_KEY, id.to_string()],
    )?;
    Ok(())
}

/// An event in the request's history that keeps its status, like `requests::note`, but leaves
/// the request's own `detail` (why it ended) as it was: an alert's outcome is not the request's.
fn note(conn: &mut Connection, id: i64, detail: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO events (request_id, at, from_status, to_status, detail)
         SELECT id, ?2, status, status, ?3 FROM requests WHERE id = ?1",
        params![id, now_text(), detail],
    )?;
    Ok(())
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

    #[test]
    fn the_text_is_one_line() {
        let t = text_of(
            "web1",
            "default",
            42,
            "blog/.purge",
            Status::Failed,
            Some("CloudFront refused:\nInvalidArgument"),
        );
        assert_eq!(
            t,
            "purgewatch on web1: request 42 blog/.purge failed: CloudFront refused: InvalidArgument"
        );
        let t = text_of("web1", "shop", 7, ".purge", Status::Failed, None);
        assert_eq!(t, "purgewatch on web1 site shop: request 7 .purge failed");
    }

    #[test]
    fn a_hostile_folder_name_is_neither_markup_nor_a_control_in_the_text() {
        let t = text_of(
            "web1",
            "default",
            9,
            "<!channel> & x\x1b[2J\n\u{9b}/.purge",
            Status::Failed,
            Some("HeadObject <!here>:\n\x07"),
        );
        assert_eq!(
            t,
            "purgewatch on web1: request 9 &lt;!channel&gt; &amp; x\\u{1b}[2J\\n\\u{9b}/.purge \
             failed: HeadObject &lt;!here&gt;: \\u{7}"
        );
    }

    fn alert(host: &str, marker: &str) -> Alert {
        Alert {
            text: String::new(),
            event: Status::Failed,
            host: host.into(),
            site: "default".into(),
            at: String::new(),
            request: RequestPart {
                id: 12345,
                marker: marker.into(),
                status: Status::Failed,
                detail: None,
                invalidation_id: None,
                paths: Vec::new(),
                path_count: 0,
            },
            quota: QuotaPart {
                name: "default".into(),
                period: String::new(),
                count: 0,
                max: 0,
            },
            event_id: 0,
        }
    }

    #[test]
    fn the_sns_subject_is_printable_ascii_under_100_characters() {
        let s = alert(&format!("web\x1b[2J\n{}", "h".repeat(200)), "").subject();
        assert_eq!(s.chars().count(), 99);
        assert!(s.starts_with("purgewatch on web[2Jhhh"), "{s}");
        assert!(s.chars().all(|c| c.is_ascii_graphic() || c == ' '), "{s}");
    }

    #[test]
    fn the_json_carries_the_exact_name_with_no_raw_control() {
        let name = "a\x1b[2J\u{7f}\u{9b}\u{202e}é/.purge";
        let json = alert("web1", name).to_json().expect("json");
        assert!(!json.chars().any(crate::text::acts), "{json:?}");
        assert!(
            json.contains(r#""a\u001b[2J\u007f\u009b\u202eé/.purge""#),
            "{json}"
        );
        let back: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(back["request"]["marker"], name);
    }
}
