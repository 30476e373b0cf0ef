//! Status at a glance: a heartbeat the daemon writes to the database (readable by the
//! unprivileged user who runs `purgewatch status`), the one-line `STATUS=` that
//! `systemctl status` shows, and the report `purgewatch status` prints.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Config, Running};
use crate::quota;
use crate::store::StoreError;
use crate::store::{counters, counts, meta, requests, ts, Connection, HistoryRow, Status, Store};
use crate::watch::Watchers;

/// Changes closer together than this are written as one beat.
const DEBOUNCE: Duration = Duration::from_secs(1);

/// The daemon's own account of itself, kept in `meta` under `daemon`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Beat {
    pub pid: u32,
    pub version: String,
    /// When this run started (RFC 3339).
    pub since: String,
    /// The last beat (RFC 3339).
    pub at: String,
    pub watched_folders: u64,
    pub unwatched_folders: u64,
    pub events_lost: u64,
    /// Stopped cleanly (set by the last beat of a run).
    pub stopped: bool,
}

/// Writes the heartbeat and `STATUS=` at start, after each change the sites signal on
/// `changed` (a request stored or ended, folders appeared, events lost; changes within a second
/// are one write), and a last beat that says the daemon stopped cleanly once `token` is
/// cancelled. Nothing changes, nothing is written: an idle daemon never wakes for it
/// (BENCHMARKS.md, idle). `purgewatch status` tells a running daemon by its pid.
pub async fn beat(
    sites: Running,
    store: Store,
    watchers: Watchers,
    clock: Clock,
    changed: Arc<tokio::sync::Notify>,
    token: CancellationToken,
) {
    let since = ts(Utc::now());
    let make = |stopped: bool| {
        let w = watchers.totals();
        Beat {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            since: since.clone(),
            at: ts(Utc::now()),
            watched_folders: w.watched,
            unwatched_folders: w.unwatched,
            events_lost: w.lost,
            stopped,
        }
    };
    loop {
        let b = make(false);
        let (list, now) = (sites.get(), clock.now());
        let beat = b.clone();
        match store
            .call(move |c| {
                meta::set_heartbeat(c, &beat)?;
                LineReading::read(c, &list, now)
            })
            .await
        {
            Ok(reading) => {
                let status = line(&reading, &b);
                crate::systemd::hint(&format!("STATUS={status}\n"));
            }
            Err(e) => tracing::warn!(error = %e, "cannot write the heartbeat"),
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = token.cancelled() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(DEBOUNCE) => {}
            _ = token.cancelled() => break,
        }
    }
    let b = make(true);
    let _ = store.call(move |c| meta::set_heartbeat(c, &b)).await;
}

/// What the `STATUS=` line shows from the database.
struct LineReading {
    /// (quota, period word, slots used, max), each quota once, in the sites' order.
    quotas: Vec<(String, &'static str, u32, u32)>,
    /// Sites configured: with one, its quota reads as a sentence.
    sites: usize,
    /// The newest request.
    last: Option<HistoryRow>,
}

impl LineReading {
    fn read(
        conn: &Connection,
        sites: &[Arc<Config>],
        now: DateTime<Utc>,
    ) -> Result<LineReading, StoreError> {
        let mut quotas = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for cfg in sites {
            let q = &cfg.quota;
            if !seen.insert(q.name.clone()) {
                continue;
            }
            let period = quota::period_key(now, q.timezone, q.period);
            let used = counters::get(conn, &q.name, &period)?.count;
            let when = match q.period {
                crate::quota::Period::Day => "today",
                crate::quota::Period::Month => "this month",
            };
            quotas.push((q.name.clone(), when, used, q.max));
        }
        Ok(LineReading {
            quotas,
            sites: sites.len(),
            last: requests::history(conn, None, 1)?.into_iter().next(),
        })
    }
}

/// `watching 21,021 folders · 3 of 10 purges today · last: completed 12:03Z blog/.purge`;
/// with several quotas, `blog 3/10 today, shared 5/20 this month`.
fn line(r: &LineReading, b: &Beat) -> String {
    let quotas: Vec<String> = r
        .quotas
        .iter()
        .map(|(name, when, used, max)| {
            if r.sites == 1 {
                format!("{used} of {max} purges {when}")
            } else {
                format!("{name} {used}/{max} {when}")
            }
        })
        .collect();
    let last = r
        .last
        .as_ref()
        .map(|r| {
            let at = r.finished_at.as_deref().unwrap_or(&r.detected_at);
            let hm = at.get(11..16).unwrap_or(at);
            // A name from the tree: a line break in it would end STATUS= and start another
            // assignment to the service manager; escaped, it is only shown.
            let marker = if r.marker.is_empty() {
                "manual".into()
            } else {
                crate::text::printable(&r.marker)
            };
            format!(" · last: {} {hm}Z {marker}", r.status)
        })
        .unwrap_or_default();
    let mut s = format!(
        "watching {} folders · {}{last}",
        thousands(b.watched_folders),
        quotas.join(", ")
    );
    if b.unwatched_folders > 0 {
        s.push_str(&format!(
            " · {} folders without a watch",
            b.unwatched_folders
        ));
    }
    s
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Requests in progress, by the stage that holds them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct InProgress {
    pub origin: u64,
    pub quota: u64,
    pub cloudfront: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuotaNow {
    pub period: String,
    pub count: u32,
    pub max: u32,
}

/// One site in `purgewatch status`.
#[derive(Debug, Clone, Serialize)]
pub struct SiteNow {
    pub site: String,
    /// Requests not ended yet.
    pub waiting: u64,
    pub quota_name: String,
    pub quota: QuotaNow,
}

/// What `purgewatch status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub running: bool,
    pub since: Option<String>,
    pub version: Option<String>,
    pub watched_folders: u64,
    pub unwatched_folders: u64,
    pub events_lost: u64,
    pub in_progress: InProgress,
    /// The first selected site's quota (the only one of a single-site config).
    pub quota: QuotaNow,
    /// Each selected site: requests in progress and its quota.
    pub sites: Vec<SiteNow>,
    pub last_completed: Option<HistoryRow>,
    pub last_failed: Option<HistoryRow>,
    /// Why the daemon is degraded, if it is (empty: healthy).
    pub problems: Vec<String>,
    /// Why there is nothing to report: the daemon has not run yet (no database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Report {
    /// 0: running and healthy; 1: not running; 2: running but degraded.
    pub fn exit_code(&self) -> u8 {
        match (self.running, self.problems.is_empty()) {
            (false, _) => 1,
            (true, true) => 0,
            (true, false) => 2,
        }
    }
}

/// The pid of the daemon running on this database, if one is (`takeover` reloads it).
pub fn running_pid(conn: &Connection) -> Result<Option<u32>, StoreError> {
    let beat: Option<Beat> = meta::heartbeat(conn)?;
    Ok(beat.filter(|b| !b.stopped && alive(b.pid)).map(|b| b.pid))
}

/// Whether process `pid` is a purgewatch: its `comm`, or where /proc hides other users'
/// processes (hidepid), whether it exists at all.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.trim_end().starts_with("purgewatch"),
        Err(_) => {
            let Ok(pid) = i32::try_from(pid) else {
                return false;
            };
            // SAFETY: signal 0 only asks whether the process exists.
            let r = unsafe { libc::kill(pid, 0) };
            r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        }
    }
}

/// The report without a database: the daemon has not run yet, so it is not running, nothing
/// is in progress and no slot is used; `note` says why.
pub fn without_database(sites: &[Arc<Config>], now: DateTime<Utc>, note: String) -> Report {
    let quota_of = |cfg: &Config| QuotaNow {
        period: quota::period_key(now, cfg.quota.timezone, cfg.quota.period),
        count: 0,
        max: cfg.quota.max,
    };
    Report {
        running: false,
        since: None,
        version: None,
        watched_folders: 0,
        unwatched_folders: 0,
        events_lost: 0,
        in_progress: InProgress::default(),
        quota: quota_of(&sites[0]),
        sites: sites
            .iter()
            .map(|cfg| SiteNow {
                site: cfg.site.clone(),
                waiting: 0,
                quota_name: cfg.quota.name.clone(),
                quota: quota_of(cfg),
            })
            .collect(),
        last_completed: None,
        last_failed: None,
        problems: Vec::new(),
        note: Some(note),
    }
}

/// Reads the report from the database, for the selected sites (never empty).
pub fn report(
    conn: &Connection,
    sites: &[Arc<Config>],
    now: DateTime<Utc>,
) -> Result<Report, StoreError> {
    let beat: Option<Beat> = meta::heartbeat(conn)?;
    // Not stopped cleanly and its process still there: running (a killed daemon's last beat
    // says running, its pid says otherwise).
    let running = beat.as_ref().is_some_and(|b| !b.stopped && alive(b.pid));
    let names: Vec<&str> = sites.iter().map(|s| s.site.as_str()).collect();
    let in_progress = InProgress {
        origin: counts::count(conn, &[Status::WaitingForOrigin], &names)?,
        quota: counts::count(conn, &[Status::WaitingForQuota], &names)?,
        cloudfront: counts::count(conn, &[Status::Invalidating, Status::Invalidated], &names)?,
    };
    let quota_of = |cfg: &Config| -> Result<QuotaNow, StoreError> {
        let q = &cfg.quota;
        let period = quota::period_key(now, q.timezone, q.period);
        Ok(QuotaNow {
            count: counters::get(conn, &q.name, &period)?.count,
            max: q.max,
            period,
        })
    };
    let quota = quota_of(&sites[0])?;
    let mut per_site = Vec::with_capacity(sites.len());
    for cfg in sites {
        per_site.push(SiteNow {
            site: cfg.site.clone(),
            waiting: counts::count(
                conn,
                &[
                    Status::WaitingForOrigin,
                    Status::WaitingForQuota,
                    Status::Invalidating,
                    Status::Invalidated,
                ],
                &[cfg.site.as_str()],
            )?,
            quota_name: cfg.quota.name.clone(),
            quota: quota_of(cfg)?,
        });
    }
    let last_of = |s: Status| -> Result<Option<HistoryRow>, StoreError> {
        Ok(match counts::newest(conn, s, &names)? {
            Some(id) => requests::history(conn, None, u32::MAX)?
                .into_iter()
                .find(|r| r.id == id),
            None => None,
        })
    };
    let last_completed = last_of(Status::Completed)?;
    let last_failed = last_of(Status::Failed)?;
    let b = beat.clone();
    let (watched, unwatched, lost) = b.as_ref().map_or((0, 0, 0), |b| {
        (b.watched_folders, b.unwatched_folders, b.events_lost)
    });
    let mut problems = Vec::new();
    if running {
        if unwatched > 0 {
            problems.push(format!(
                "{unwatched} folders without a watch (fs.inotify.max_user_watches)"
            ));
        }
        if lost > 0 {
            problems.push(format!(
                "events lost {lost} time(s) since start (rescanned)"
            ));
        }
        let day_ago = ts(now - chrono::Duration::days(1));
        if let Some(f) = last_failed
            .as_ref()
            .filter(|f| f.finished_at.as_deref() >= Some(day_ago.as_str()))
        {
            problems.push(format!("request {} failed in the last day", f.id));
        }
    }
    Ok(Report {
        running,
        since: b.as_ref().map(|b| b.since.clone()),
        version: b.as_ref().map(|b| b.version.clone()),
        watched_folders: watched,
        unwatched_folders: unwatched,
        events_lost: lost,
        in_progress,
        quota,
        sites: per_site,
        last_completed,
        last_failed,
        problems,
        note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(21_021), "21,021");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
