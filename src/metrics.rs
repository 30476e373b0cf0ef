//! `[metrics] listen`: Prometheus metrics at `GET /metrics` (issue 14).
//!
//! The names are fixed (README "Metrics"), so dashboards and the alert rules of
//! docs/purgewatch.rules.yml can be shared between servers.
//!
//! # Where each value comes from
//! - **The database, at scrape time**, so the pipeline carries no hooks: the `events` appended
//!   since the process started ([`Tally`]: read incrementally by `events.id`, the rowid, never a
//!   scan) give `requests_total{status}`, `invalidations_total`, `invalidation_paths_total` and
//!   the `marker_to_invalidation_seconds` histogram; the `requests` in each stage (index on
//!   `status`) give `requests_in_progress{stage}`; the `quota` row of the current period gives
//!   `quota_used`; the newest `finished_at` of a completed request (index on `finished_at`)
//!   gives `last_completed_timestamp_seconds`.
//! - **The AWS SDK**: an interceptor ([`AwsCalls`], added to every client in `aws::Clients::new`)
//!   times each attempt by operation and counts failed attempts by kind. It records into a
//!   process-global registry, so the counts survive a daemon started again in the same process.
//! - **The watchers**: [`Watchers`] (folders watched and not, events lost, over the sites).
//! - **`/proc/self`**: the standard `process_*` metrics ([`Process`]; prometheus-client has no
//!   process collector).
//!
//! Counters count from the process's start, as Prometheus expects (`rate()` handles resets).
//!
//! # The HTTP side
//! One fixed path on (usually) loopback does not need an HTTP server crate: each connection is
//! a task of its own, its head read within [`HEAD_DEADLINE`] (8 KiB at most), answered, and
//! closed. The listener always accepts: past [`MAX_CONNECTIONS`] open at once a new one is
//! closed unanswered, so clients that connect and send nothing (issue 22: four of them held
//! every slot for 10 s) cost a slot each for a few seconds and never stop a scrape. The body
//! is the Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), or OpenMetrics text when
//! the scraper asks for it in `Accept` (Prometheus does); both are prometheus-client's own
//! encoders.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use rusqlite::{Connection, OptionalExtension};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::clock::Clock;
use crate::config::Running;
use crate::quota;
use crate::store::{counters, Store, StoreError};
use crate::watch::Watchers;

/// What the metrics are read from.
#[derive(Clone)]
pub struct Source {
    /// The running sites; the quota gauges are the first site's quota.
    pub sites: Running,
    pub store: Store,
    pub watchers: Watchers,
    pub clock: Clock,
}

/// Connections open at once; one more is closed as soon as it is accepted.
const MAX_CONNECTIONS: usize = 64;
/// The time a client has to send its request head (a scraper sends it at once).
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// A connection's whole life: its request head read, the page made and written.
const DEADLINE: Duration = Duration::from_secs(10);
/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listener` until `token` is cancelled.
pub async fn serve(listener: TcpListener, source: Source, token: CancellationToken) {
    let page = Arc::new(Page::new(source));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((_, peer)) if conns.len() >= MAX_CONNECTIONS => {
                    // Closed (dropped) unanswered; a waiting one would hold a descriptor.
                    debug!(%peer, "metrics: too many connections; one closed");
                }
                Ok((stream, peer)) => {
                    let page = page.clone();
                    conns.spawn(async move {
                        match tokio::time::timeout(DEADLINE, answer(stream, &page)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => debug!(%peer, error = %e, "metrics: connection failed"),
                            Err(_) => debug!(%peer, "metrics: connection timed out"),
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, say: not a reason to stop, nor to spin.
                    warn!(error = %e, "metrics: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    conns.shutdown().await;
}

/// Reads one request head and answers it; the connection is closed after.
async fn answer(mut stream: TcpStream, page: &Arc<Page>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head_by = tokio::time::Instant::now() + HEAD_DEADLINE;
    let end = loop {
        let n = match tokio::time::timeout_at(head_by, stream.read(&mut chunk)).await {
            Ok(read) => read?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request head within the deadline",
                ))
            }
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "",
                b"",
                true,
            )
            .await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or("").split(' ');
    let (method, target) = (request.next().unwrap_or(""), request.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let openmetrics = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("accept:") && l.contains("application/openmetrics-text")
    });
    let with_body = method != "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => match page.render(openmetrics).await {
            Ok(body) => {
                let ctype = if openmetrics {
                    OPENMETRICS
                } else {
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE
                };
                respond(&mut stream, "200 OK", ctype, body.as_bytes(), with_body).await
            }
            Err(e) => {
                warn!(error = %e, "metrics: cannot make the page");
                let body = format!("{e}\n");
                respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain; charset=utf-8",
                    body.as_bytes(),
                    with_body,
                )
                .await
            }
        },
        (_, "/metrics") => {
            let body = b"GET or HEAD only\n";
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                body,
                with_body,
            )
            .await
        }
        _ => {
            let body = b"not found: the metrics are at /metrics\n";
            respond(&mut stream, "404 Not Found", "text/plain", body, with_body).await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if with_body {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).await?;
    stream.shutdown().await
}

/// The registry of one served daemon and the live metrics in it, brought up to date at each
/// scrape.
struct Page {
    source: Source,
    registry: Registry,
    live: Live,
    /// Held across a scrape: two scrapes at once would count the same events twice.
    tally: tokio::sync::Mutex<Tally>,
}

/// The metrics [`Page::render`] sets from the database and the watcher.
struct Live {
    requests: Family<StatusLabel, Counter>,
    in_progress: Family<StageLabel, Gauge>,
    quota_used: Family<QuotaLabel, Gauge>,
    quota_max: Family<QuotaLabel, Gauge>,
    period_end: Family<QuotaLabel, Gauge<f64, AtomicU64>>,
    invalidations: Counter,
    paths: Counter,
    marker_to_invalidation: Histogram,
    watched: Gauge,
    unwatched: Gauge,
    lost: Counter,
    /// No series until a request completed (a 0 would read as "1970").
    last_completed: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
    site: String,
}

/// A quota by name (`default`, or NAME of `[quotas.NAME]`); sites may share one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabel {
    quota: String,
}

/// The statuses `requests_total` counts, each shown from 0 so `increase()` sees the first.
/// (`dry_run` is the final status of shadow mode.)
const COUNTED: [&str; 7] = [
    "completed",
    "invalidated",
    "origin_timeout",
    "quota_exhausted",
    "deferred",
    "failed",
    "dry_run",
];

/// `requests_in_progress{stage}`: the statuses each stage holds. `deferred` is in none: a
/// parked request waits for the next period, not for anything in progress.
const STAGES: [(&str, &[&str]); 3] = [
    ("origin", &["waiting_for_origin"]),
    ("quota", &["waiting_for_quota"]),
    ("cloudfront", &["invalidating", "invalidated"]),
];

/// The events already counted: everything up to `after` (an `events.id`).
#[derive(Default)]
struct Tally {
    /// `None` until the first scrape finds the last event written before the process started.
    after: Option<i64>,
    /// Invalidations counted lately: one invalidation is several requests' events.
    counted: VecDeque<String>,
}

/// What one scrape reads from the database.
struct Reading {
    /// The newest `events.id` read.
    upto: i64,
    /// Status changes since the last scrape, oldest first.
    moves: Vec<Move>,
    /// (site, status, requests).
    in_progress: Vec<(String, String, i64)>,
    /// (quota, slots used in its current period).
    quota_used: Vec<(String, u32)>,
    last_completed: Option<String>,
}

struct Move {
    site: String,
    to: String,
    at: String,
    detected_at: Option<String>,
    invalidation_id: Option<String>,
    path_count: Option<i64>,
}

impl Page {
    fn new(source: Source) -> Page {
        let live = Live {
            requests: Family::default(),
            in_progress: Family::default(),
            quota_used: Family::default(),
            quota_max: Family::default(),
            period_end: Family::default(),
            invalidations: Counter::default(),
            paths: Counter::default(),
            // A second to a day: the origin wait is minutes, a deferred request a period.
            marker_to_invalidation: Histogram::new([
                1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
                21600.0, 86400.0,
            ]),
            watched: Gauge::default(),
            unwatched: Gauge::default(),
            lost: Counter::default(),
            last_completed: Family::default(),
        };
        for site in source.sites.get() {
            for s in COUNTED {
                let _ = live.requests.get_or_create(&StatusLabel {
                    status: s.into(),
                    site: site.site.clone(),
                });
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Process));
        let r = registry.sub_registry_with_prefix("purgewatch");
        r.register(
            "requests",
            "Requests that reached each status since the process started",
            live.requests.clone(),
        );
        r.register(
            "requests_in_progress",
            "Requests held by each stage now: origin (waiting for S3), quota (waiting for a slot), cloudfront (invalidating, or waiting for Completed)",
            live.in_progress.clone(),
        );
        r.register(
            "quota_used",
            "Invalidations counted in the current quota period",
            live.quota_used.clone(),
        );
        r.register(
            "quota_max",
            "Invalidations allowed per quota period (quota.max)",
            live.quota_max.clone(),
        );
        r.register_with_unit(
            "quota_period_end_timestamp",
            "When the current quota period ends (Unix time)",
            Unit::Seconds,
            live.period_end.clone(),
        );
        r.register(
            "invalidations",
            "CreateInvalidation calls CloudFront accepted since the process started",
            live.invalidations.clone(),
        );
        r.register(
            "invalidation_paths",
            "Paths sent in the invalidations counted by purgewatch_invalidations_total",
            live.paths.clone(),
        );
        r.register_with_unit(
            "marker_to_invalidation",
            "From a request's marker write to CloudFront accepting its invalidation",
            Unit::Seconds,
            live.marker_to_invalidation.clone(),
        );
        r.register(
            "watched_folders",
            "Folders with an inotify watch",
            live.watched.clone(),
        );
        r.register(
            "unwatched_folders",
            "Folders without a watch (fs.inotify.max_user_watches reached); scanned every watch.fallback_scan",
            live.unwatched.clone(),
        );
        r.register(
            "events_lost",
            "Times file events were lost (kernel queue or channel full) and the tree rescanned",
            live.lost.clone(),
        );
        r.register_with_unit(
            "last_completed_timestamp",
            "When the newest completed request completed (Unix time)",
            Unit::Seconds,
            live.last_completed.clone(),
        );
        r.register(
            "build",
            "This build of purgewatch",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let aws = aws();
        r.register_with_unit(
            "aws_request_duration",
            "Each attempt of an AWS call, by operation",
            Unit::Seconds,
            aws.duration.clone(),
        );
        r.register(
            "aws_errors",
            "Failed attempts of AWS calls, by operation and kind (throttling, transient, denied, not_found, conflict, other)",
            aws.errors.clone(),
        );
        Page {
            source,
            registry,
            live,
            tally: tokio::sync::Mutex::new(Tally::default()),
        }
    }

    /// Brings the live metrics up to date and encodes the page.
    async fn render(self: &Arc<Page>, openmetrics: bool) -> Result<String, String> {
        let mut tally = self.tally.lock().await;
        let after = tally.after;
        let now = self.source.clock.now();
        let quotas: Vec<(String, String)> = self
            .source
            .sites
            .get()
            .iter()
            .map(|c| {
                let q = &c.quota;
                (q.name.clone(), quota::period_key(now, q.timezone, q.period))
            })
            .collect();
        let reading = self
            .source
            .store
            .call(move |c| read(c, after, &quotas))
            .await
            .map_err(|e| e.to_string())?;
        self.apply(&mut tally, reading, now);
        drop(tally);
        // The process collector reads /proc: off the runtime, with the rest of the encoding.
        let page = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = String::with_capacity(8 * 1024);
            let encoded = if openmetrics {
                prometheus_client::encoding::text::encode(&mut out, &page.registry)
            } else {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &page.registry)
            };
            encoded.map(|()| out)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the metrics could not be encoded".to_owned())
    }

    fn apply(&self, tally: &mut Tally, r: Reading, now: DateTime<Utc>) {
        let (live, src) = (&self.live, &self.source);
        let mut invalidations: Vec<(String, u64)> = Vec::new();
        for m in &r.moves {
            if COUNTED.contains(&m.to.as_str()) {
                live.requests
                    .get_or_create(&StatusLabel {
                        status: m.to.clone(),
                        site: m.site.clone(),
                    })
                    .inc();
            }
            if m.to != "invalidated" {
                continue;
            }
            if let Some(took) = m
                .detected_at
                .as_deref()
                .and_then(|d| seconds_between(d, &m.at))
            {
                live.marker_to_invalidation.observe(took);
            }
            // The requests of one sync share an invalidation (and its paths): count it once.
            let id = m.invalidation_id.clone().unwrap_or_default();
            let paths = m.path_count.unwrap_or(0).max(0) as u64;
            match invalidations
                .iter_mut()
                .find(|(i, _)| *i == id && !id.is_empty())
            {
                Some(seen) => seen.1 = seen.1.max(paths),
                None => invalidations.push((id, paths)),
            }
        }
        for (id, paths) in invalidations {
            if !id.is_empty() && tally.counted.contains(&id) {
                continue;
            }
            live.invalidations.inc();
            live.paths.inc_by(paths);
            tally.counted.push_back(id);
            if tally.counted.len() > 64 {
                tally.counted.pop_front();
            }
        }
        tally.after = Some(r.upto);
        let sites = src.sites.get();
        // Sites removed by a reload: their series go.
        live.in_progress.clear();
        live.quota_used.clear();
        live.quota_max.clear();
        live.period_end.clear();
        for cfg in &sites {
            for (stage, statuses) in STAGES {
                let n = r
                    .in_progress
                    .iter()
                    .filter(|(site, s, _)| *site == cfg.site && statuses.contains(&s.as_str()))
                    .map(|(_, _, n)| n)
                    .sum();
                live.in_progress
                    .get_or_create(&StageLabel {
                        stage,
                        site: cfg.site.clone(),
                    })
                    .set(n);
            }
            let q = &cfg.quota;
            let label = QuotaLabel {
                quota: q.name.clone(),
            };
            let used = r
                .quota_used
                .iter()
                .find(|(n, _)| *n == q.name)
                .map_or(0, |u| u.1);
            live.quota_used.get_or_create(&label).set(i64::from(used));
            live.quota_max.get_or_create(&label).set(i64::from(q.max));
            let end = quota::next_period_start(now, q.timezone, q.period);
            live.period_end
                .get_or_create(&label)
                .set(end.timestamp() as f64);
        }
        let w = src.watchers.totals();
        live.watched.set(w.watched as i64);
        live.unwatched.set(w.unwatched as i64);
        live.lost.inc_by(w.lost.saturating_sub(live.lost.get()));
        match r.last_completed.as_deref().and_then(unix_seconds) {
            Some(t) => {
                live.last_completed.get_or_create(&Vec::new()).set(t);
            }
            None => live.last_completed.clear(),
        }
    }
}

/// One scrape's queries. The first finds where "since the process started" begins in
/// `events` (walking back from the newest event, which stops at the first older one).
fn read(
    c: &mut Connection,
    after: Option<i64>,
    quotas: &[(String, String)],
) -> Result<Reading, StoreError> {
    let after = match after {
        Some(a) => a,
        None => {
            let started = crate::store::ts(process_start());
            c.query_row(
                "SELECT id FROM events WHERE at < ?1 ORDER BY id DESC LIMIT 1",
                [started],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0)
        }
    };
    let upto: i64 = c.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?;
    let mut stmt = c.prepare_cached(
        "SELECT e.to_status, e.at, r.detected_at, r.invalidation_id,
                coalesce(r.path_count, json_array_length(r.paths)), r.site
         FROM events e LEFT JOIN requests r ON r.id = e.request_id
         WHERE e.id > ?1 AND e.id <= ?2
           AND (e.from_status IS NULL OR e.from_status != e.to_status)
         ORDER BY e.id",
    )?;
    let moves = stmt
        .query_map([after, upto.max(after)], |r| {
            Ok(Move {
                to: r.get(0)?,
                at: r.get(1)?,
                detected_at: r.get(2)?,
                invalidation_id: r.get(3)?,
                path_count: r.get(4)?,
                site: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = c.prepare_cached(
        "SELECT site, status, count(*) FROM requests
         WHERE status IN ('waiting_for_origin', 'waiting_for_quota', 'invalidating', 'invalidated')
         GROUP BY site, status",
    )?;
    let in_progress = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let last_completed = c
        .query_row(
            "SELECT finished_at FROM requests
             WHERE finished_at IS NOT NULL AND status = 'completed'
             ORDER BY finished_at DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(Reading {
        upto: upto.max(after),
        moves,
        in_progress,
        quota_used: quotas
            .iter()
            .map(|(q, p)| Ok((q.clone(), counters::get(c, q, p)?.count)))
            .collect::<Result<_, StoreError>>()?,
        last_completed,
    })
}

fn unix_seconds(rfc3339: &str) -> Option<f64> {
    let t = DateTime::parse_from_rfc3339(rfc3339).ok()?;
    Some(t.timestamp_millis() as f64 / 1000.0)
}

fn seconds_between(from: &str, to: &str) -> Option<f64> {
    Some((unix_seconds(to)? - unix_seconds(from)?).max(0.0))
}

// ---- AWS calls ----

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    operation: String,
    kind: &'static str,
}

type Histograms = Family<OperationLabel, Histogram, fn() -> Histogram>;

/// The AWS metrics of the whole process (every client built by `aws::Clients::new`).
struct AwsMetrics {
    duration: Histograms,
    errors: Family<ErrorLabel, Counter>,
}

fn aws() -> &'static AwsMetrics {
    static AWS: OnceLock<AwsMetrics> = OnceLock::new();
    AWS.get_or_init(|| AwsMetrics {
        // 5 ms to 20 s (the attempt timeout), doubling.
        duration: Family::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 13))
        }),
        errors: Family::default(),
    })
}

/// The SDK interceptor behind `purgewatch_aws_request_duration_seconds` and
/// `purgewatch_aws_errors_total`: each attempt (a retry is another) timed by operation, and
/// a failed one counted by [`error_kind`].
#[derive(Debug)]
pub struct AwsCalls;

#[derive(Debug, Clone)]
struct AttemptStarted(Instant);

impl Storable for AttemptStarted {
    type Storer = StoreReplace<Self>;
}

impl Intercept for AwsCalls {
    fn name(&self) -> &'static str {
        "purgewatch metrics"
    }

    fn read_before_attempt(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(AttemptStarted(Instant::now()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        ctx: &FinalizerInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map_or("unknown", |m| m.name())
            .to_owned();
        let m = aws();
        if let Some(started) = cfg.load::<AttemptStarted>() {
            m.duration
                .get_or_create(&OperationLabel {
                    operation: operation.clone(),
                })
                .observe(started.0.elapsed().as_secs_f64());
        }
        let status = ctx.response().map(|r| r.status().as_u16());
        let failed =
            matches!(ctx.output_or_error(), Some(Err(_))) || status.is_some_and(|s| s >= 300);
        if failed {
            let body = ctx.response().and_then(|r| r.body().bytes()).unwrap_or(b"");
            let kind = error_kind(status, error_code(body));
            m.errors
                .get_or_create(&ErrorLabel { operation, kind })
                .inc();
        }
        Ok(())
    }
}

/// The `<Code>` of an S3 or CloudFront XML error body ("" without one: HeadObject has no body).
fn error_code(body: &[u8]) -> &str {
    let s = std::str::from_utf8(body).unwrap_or("");
    s.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map_or("", |(code, _)| code.trim())
}

/// A failed attempt's kind, for `purgewatch_aws_errors_total{kind}`: `throttling` (429,
/// SlowDown, TooManyInvalidationsInProgress…), `transient` (no answer — timeout, connection —,
/// 5xx, credentials a refresh renews), `denied` (403), `not_found` (404: a marker not uploaded
/// yet is one, and expected), `conflict` (409/412: a count object another server wrote
/// first, also expected), `other`.
fn error_kind(status: Option<u16>, code: &str) -> &'static str {
    const THROTTLING: &[&str] = &[
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "TooManyInvalidationsInProgress",
    ];
    const CREDENTIALS: &[&str] = &[
        "ExpiredToken",
        "ExpiredTokenException",
        "TokenRefreshRequired",
        "RequestExpired",
        "RequestTimeTooSkewed",
        "RequestInTheFuture",
    ];
    if THROTTLING.contains(&code) || status == Some(429) {
        return "throttling";
    }
    match status {
        None => "transient",
        Some(s) if s >= 500 || s == 408 => "transient",
        _ if CREDENTIALS.contains(&code) => "transient",
        Some(403) => "denied",
        _ if code.starts_with("AccessDenied") => "denied",
        Some(404) => "not_found",
        Some(409 | 412) => "conflict",
        _ => "other",
    }
}

// ---- the process ----

/// The standard `process_*` metrics of Prometheus's client libraries, from `/proc/self`.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = ProcStat::read() else {
            return Ok(());
        };
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: f64| {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        let cpu = ConstCounter::new(stat.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            stat.rss_bytes as f64,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            stat.vsize_bytes as f64,
        )?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            process_start().timestamp_millis() as f64 / 1000.0,
        )?;
        gauge(
            &mut encoder,
            "process_threads",
            "Number of OS threads in the process",
            stat.threads as f64,
        )?;
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The listing's own descriptor is one of them.
            let open = fds.count().saturating_sub(1);
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                open as f64,
            )?;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid rlimit to fill.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                lim.rlim_cur as f64,
            )?;
        }
        Ok(())
    }
}

/// The fields of `/proc/self/stat` the process metrics need.
struct ProcStat {
    cpu_seconds: f64,
    threads: u64,
    /// Clock ticks after boot.
    start_ticks: u64,
    vsize_bytes: u64,
    rss_bytes: u64,
}

impl ProcStat {
    fn read() -> Option<ProcStat> {
        ProcStat::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<ProcStat> {
        // The command name, in parentheses, may hold spaces and parentheses itself.
        let (_, rest) = stat.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `f[0]` is field 3 (state) of proc(5).
        let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
        let ticks = clock_ticks();
        Some(ProcStat {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            start_ticks: field(22)?,
            vsize_bytes: field(23)?,
            rss_bytes: field(24)? * page_size(),
        })
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// When this process started (boot time + its start in clock ticks), to the 10 ms; now, the
/// first time it is asked, where /proc cannot tell.
fn process_start() -> DateTime<Utc> {
    static START: OnceLock<DateTime<Utc>> = OnceLock::new();
    *START.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<i64>().ok())
        });
        let started = ProcStat::read().map(|s| s.start_ticks);
        match (boot, started) {
            (Some(boot), Some(ticks)) => {
                let ms = boot * 1000 + (ticks as f64 / clock_ticks() * 1000.0) as i64;
                DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
            }
            _ => Utc::now(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_tell_expected_outcomes_from_trouble() {
        assert_eq!(error_kind(Some(503), "SlowDown"), "throttling");
        assert_eq!(
            error_kind(Some(400), "TooManyInvalidationsInProgress"),
            "throttling"
        );
        assert_eq!(error_kind(Some(429), ""), "throttling");
        assert_eq!(error_kind(None, ""), "transient");
        assert_eq!(error_kind(Some(500), "InternalError"), "transient");
        assert_eq!(error_kind(Some(403), "RequestTimeTooSkewed"), "transient");
        assert_eq!(error_kind(Some(403), ""), "denied");
        assert_eq!(error_kind(Some(400), "AccessDeniedException"), "denied");
        assert_eq!(error_kind(Some(404), ""), "not_found");
        assert_eq!(error_kind(Some(412), "PreconditionFailed"), "conflict");
        assert_eq!(error_kind(Some(400), "InvalidArgument"), "other");
    }

    #[test]
    fn the_error_code_is_read_from_an_xml_body() {
        let body = b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>\
                     <Message>Rate exceeded</Message></Error></ErrorResponse>";
        assert_eq!(error_code(body), "Throttling");
        assert_eq!(error_code(b""), "");
    }

    #[test]
    fn proc_stat_survives_a_command_name_with_spaces_and_parentheses() {
        let line = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 \
                    9000 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let s = ProcStat::parse(line).expect("parsed");
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_ticks, 9000);
        assert_eq!(s.vsize_bytes, 104_857_600);
        assert_eq!(s.rss_bytes, 2560 * page_size());
        assert!((s.cpu_seconds - 300.0 / clock_ticks()).abs() < 1e-9);
    }

    #[test]
    fn this_process_has_a_start_and_memory() {
        assert!(process_start() <= Utc::now());
        assert!(ProcStat::read().expect("/proc/self/stat").rss_bytes > 0);
    }
}
