//! The page: the registry of one served daemon, its live metrics brought up to date from the
//! database and the watchers at each scrape, and its encoding.
//!
//! ## Performance
//! The `events` appended since the last scrape are read by id ([`Tally`]), never a scan; the
//! other reads are served by indexes (`store::counts`).

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::process::{process_start, Process};
use super::Source;
use crate::quota;
use crate::store::events::{self, Move};
use crate::store::invalidations::{self, State};
use crate::store::{counters, counts, Connection, Status, StoreError};

/// The registry of one served daemon and the live metrics in it, brought up to date at each
/// scrape.
pub(super) struct Page {
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
    distributions: Family<DistributionLabel, Gauge>,
    marker_to_invalidation: Histogram,
    watched: Gauge,
    unwatched: Gauge,
    lost: Counter,
    /// No series until a request completed (a 0 would read as "1970").
    last_completed: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DistributionLabel {
    site: String,
    distribution: String,
    state: &'static str,
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
const COUNTED: [Status; 8] = [
    Status::Completed,
    Status::Stale,
    Status::Invalidated,
    Status::OriginTimeout,
    Status::QuotaExhausted,
    Status::Deferred,
    Status::Failed,
    Status::DryRun,
];

/// `requests_in_progress{stage}`: the statuses each stage holds. `deferred` is in none: a
/// parked request waits for the next period, not for anything in progress.
const STAGES: [(&str, &[Status]); 3] = [
    ("origin", &[Status::WaitingForOrigin]),
    ("quota", &[Status::WaitingForQuota]),
    ("cloudfront", &[Status::Invalidating, Status::Invalidated]),
];

/// Every status some stage holds.
fn in_a_stage() -> Vec<Status> {
    STAGES.iter().flat_map(|(_, s)| s.iter().copied()).collect()
}

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
    /// The requests in a stage, by site and status.
    in_progress: Vec<counts::InStatus>,
    /// (quota, slots used in its current period).
    quota_used: Vec<(String, u32)>,
    last_completed: Option<String>,
    /// (site, distribution, state, invalidations).
    distributions: Vec<(String, String, State, u64)>,
}

impl Page {
    pub(super) fn new(source: Source) -> Page {
        let live = Live {
            requests: Family::default(),
            in_progress: Family::default(),
            quota_used: Family::default(),
            quota_max: Family::default(),
            period_end: Family::default(),
            invalidations: Counter::default(),
            paths: Counter::default(),
            distributions: Family::default(),
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
                    status: s.as_str(),
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
            "Invalidations CloudFront accepted since the process started (one per distribution a purge went to)",
            live.invalidations.clone(),
        );
        r.register(
            "invalidation_paths",
            "Paths sent in the invalidations counted by purgewatch_invalidations_total",
            live.paths.clone(),
        );
        r.register(
            "distribution_invalidations",
            "Invalidations kept in the history, by distribution and state (sending, busy, in_progress, completed, failed)",
            live.distributions.clone(),
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
        let aws = crate::aws::interceptor::calls();
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
    pub(super) async fn render(self: &Arc<Page>, openmetrics: bool) -> Result<String, String> {
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
        let mut invalidations: Vec<(String, u64, u64)> = Vec::new();
        for m in &r.moves {
            let Some(to) = m.to else { continue };
            if COUNTED.contains(&to) {
                live.requests
                    .get_or_create(&StatusLabel {
                        status: to.as_str(),
                        site: m.site.clone(),
                    })
                    .inc();
            }
            if to != Status::Invalidated {
                continue;
            }
            if let Some(took) = m
                .detected_at
                .as_deref()
                .and_then(|d| seconds_between(d, &m.at))
            {
                live.marker_to_invalidation.observe(took);
            }
            // The requests of one sync share an invalidation (and its paths): count it once,
            // for each distribution that took it.
            let id = m.invalidation_id.clone().unwrap_or_default();
            let paths = m.path_count.unwrap_or(0).max(0) as u64;
            let each = m.distributions.max(1) as u64;
            match invalidations
                .iter_mut()
                .find(|(i, _, _)| *i == id && !id.is_empty())
            {
                Some(seen) => seen.1 = seen.1.max(paths),
                None => invalidations.push((id, paths, each)),
            }
        }
        for (id, paths, each) in invalidations {
            if !id.is_empty() && tally.counted.contains(&id) {
                continue;
            }
            live.invalidations.inc_by(each);
            live.paths.inc_by(paths * each);
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
                    .filter(|n| n.site == cfg.site && statuses.contains(&n.status))
                    .map(|n| n.requests)
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
        live.distributions.clear();
        for (site, distribution, state, n) in r.distributions {
            live.distributions
                .get_or_create(&DistributionLabel {
                    site,
                    distribution,
                    state: state.as_str(),
                })
                .set(n as i64);
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

/// One scrape's reads. The first finds where "since the process started" begins in `events`.
fn read(
    c: &Connection,
    after: Option<i64>,
    quotas: &[(String, String)],
) -> Result<Reading, StoreError> {
    let after = match after {
        Some(a) => a,
        None => events::last_before(c, &crate::store::ts(process_start()))?.unwrap_or(0),
    };
    let upto = events::newest(c)?.max(after);
    Ok(Reading {
        upto,
        moves: events::moves(c, after, upto)?,
        in_progress: counts::by_site_and_status(c, &in_a_stage())?,
        quota_used: quotas
            .iter()
            .map(|(q, p)| Ok((q.clone(), counters::get(c, q, p)?.count)))
            .collect::<Result<_, StoreError>>()?,
        last_completed: counts::last_finished(c, Status::Completed)?,
        distributions: invalidations::tally(c)?,
    })
}

fn unix_seconds(rfc3339: &str) -> Option<f64> {
    let t = DateTime::parse_from_rfc3339(rfc3339).ok()?;
    Some(t.timestamp_millis() as f64 / 1000.0)
}

fn seconds_between(from: &str, to: &str) -> Option<f64> {
    Some((unix_seconds(to)? - unix_seconds(from)?).max(0.0))
}
