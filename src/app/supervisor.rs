//! The process: the sites' runs, the ones waiting for their root, a reload applied site by
//! site, the watchdog, and the neighbours every site shares (pruning, the heartbeat, metrics,
//! alerts).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::site::{SiteEnv, SiteRun};
use super::AppError;
use crate::clock::Clock;
use crate::config::{Config, Running, Sites};
use crate::store::{self, Store};
use crate::watch::Watchers;

/// How long a site whose root is missing waits before the next try.
const ROOT_RETRY: Duration = Duration::from_secs(30);

/// The process: the sites' runs, the ones waiting for their root, and the shared neighbours.
pub(super) struct Supervisor {
    pub(super) shared: Arc<Config>,
    pub(super) env: SiteEnv,
    pub(super) runs: Vec<SiteRun>,
    pub(super) waiting: Vec<Arc<Config>>,
    pub(super) token: CancellationToken,
}

pub(super) async fn supervise(
    mut sv: Supervisor,
    metrics: Option<tokio::net::TcpListener>,
    mut reloads: mpsc::Receiver<(Sites, tokio::sync::oneshot::Sender<Vec<String>>)>,
) -> Result<(), AppError> {
    let token = sv.token.clone();
    // Neighbours of the pipelines, joined at shutdown like the rest.
    let mut neighbours = JoinSet::new();
    let watchers = Watchers::of(sv.runs.iter().map(|r| r.lost.clone()).collect());
    let running = Running::new(sv.listed());
    let clock = sv.env.knobs.clock.clone();
    neighbours.spawn(prune_loop(
        sv.shared.clone(),
        sv.env.store.clone(),
        clock.clone(),
        token.clone(),
    ));
    neighbours.spawn(crate::status::beat(
        running.clone(),
        sv.env.store.clone(),
        watchers.clone(),
        clock.clone(),
        sv.env.changed.clone(),
        token.clone(),
    ));
    if let Some(listener) = metrics {
        let source = crate::metrics::Source {
            sites: running.clone(),
            store: sv.env.store.clone(),
            watchers: watchers.clone(),
            clock: clock.clone(),
        };
        neighbours.spawn(crate::metrics::serve(listener, source, token.clone()));
    }
    if sv.shared.notify.is_on() {
        neighbours.spawn(crate::notify::run(
            running.clone(),
            sv.env.store.clone(),
            sv.env.clients.clone(),
            token.clone(),
        ));
    }
    let every = sv.env.knobs.root_retry.unwrap_or(ROOT_RETRY);
    let mut retry = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // WatchdogSec=: ping at half the interval while every site's loop moved since the last
    // look (each bumps its pulse at a quarter). A wedged site gets the daemon restarted even if
    // the others run. Without a watchdog the timer never fires: an idle daemon does not wake.
    let watchdog = crate::systemd::watchdog();
    let look = watchdog.map_or(Duration::from_secs(86_400), |d| d / 2);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + look, look);
    let mut pulses: Vec<(String, u64)> = Vec::new();
    let result = loop {
        tokio::select! {
            _ = token.cancelled() => break Ok(()),
            _ = ping.tick(), if watchdog.is_some() => {
                let now: Vec<(String, u64)> = sv
                    .runs
                    .iter()
                    .map(|r| (r.cfg.site.clone(), r.alive.load(Ordering::Relaxed)))
                    .collect();
                let stalled: Vec<&str> = now
                    .iter()
                    .filter(|n| pulses.contains(n))
                    .map(|(site, _)| site.as_str())
                    .collect();
                if stalled.is_empty() {
                    crate::systemd::hint("WATCHDOG=1\n");
                } else {
                    warn!(sites = ?stalled, "a site's loop does not move: no watchdog ping, so the service manager restarts the daemon");
                }
                pulses = now;
            }
            _ = retry.tick(), if !sv.waiting.is_empty() => {
                if let Err(e) = sv.start_waiting().await { break Err(e) }
                watchers.set(sv.runs.iter().map(|r| r.lost.clone()).collect());
                running.set(sv.listed());
            }
            Some((sites, done)) = reloads.recv() => {
                match sv.reload(sites).await {
                    Ok(lines) => { let _ = done.send(lines); }
                    Err(e) => break Err(e),
                }
                watchers.set(sv.runs.iter().map(|r| r.lost.clone()).collect());
                running.set(sv.listed());
            }
            // A site ended by itself: a fatal error (the database, the watcher), the process's.
            (i, r) = first_ended(&mut sv.runs), if !sv.runs.is_empty() => {
                let run = sv.runs.swap_remove(i);
                let r = r.map_err(|e| AppError::task(format!("site {}", run.cfg.site), e));
                match r.and_then(|r| r) {
                    Ok(()) => break Ok(()),
                    Err(e) => {
                        warn!(site = %run.cfg.site, error = %e, "the site stopped");
                        break Err(e);
                    }
                }
            }
        }
    };
    token.cancel();
    for run in sv.runs.drain(..) {
        let site = run.cfg.site.clone();
        if let Err(e) = run.stop().await {
            warn!(%site, error = %e, "stopping the site");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while neighbours.join_next().await.is_some() {}
    })
    .await;
    neighbours.abort_all();
    result
}

/// The index of the first site whose task ended, and how it ended.
async fn first_ended(
    runs: &mut [SiteRun],
) -> (usize, Result<Result<(), AppError>, tokio::task::JoinError>) {
    std::future::poll_fn(|cx| {
        for (i, run) in runs.iter_mut().enumerate() {
            if let std::task::Poll::Ready(r) =
                std::future::Future::poll(std::pin::Pin::new(&mut run.handle), cx)
            {
                return std::task::Poll::Ready((i, r));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

impl Supervisor {
    /// The sites to report on: running or waiting for their root; at least the shared tables.
    fn listed(&self) -> Vec<Arc<Config>> {
        let mut list: Vec<Arc<Config>> = self.runs.iter().map(|r| r.cfg.clone()).collect();
        list.extend(self.waiting.iter().cloned());
        if list.is_empty() {
            list.push(self.shared.clone());
        }
        list
    }

    /// Tries again the sites whose root was missing.
    async fn start_waiting(&mut self) -> Result<(), AppError> {
        for cfg in std::mem::take(&mut self.waiting) {
            if !cfg.watch.root.is_dir() {
                self.waiting.push(cfg);
                continue;
            }
            match SiteRun::start(cfg.clone(), &self.env, self.token.child_token()).await {
                Ok(run) => {
                    info!(site = %cfg.site, "the site's root is back");
                    self.runs.push(run);
                }
                Err(AppError::Watch(e)) => {
                    warn!(site = %cfg.site, error = %e, "the site's root is still not usable");
                    self.waiting.push(cfg);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// SIGHUP: the sites of `new` against the running ones, by name. A changed site that
    /// cannot start on its new tables goes back to its old ones (the reload of it is refused,
    /// in one line); a new one that cannot start is left out. Err only when a site can start
    /// on neither.
    async fn reload(&mut self, new: Sites) -> Result<Vec<String>, AppError> {
        let mut lines = Vec::new();
        let mut keep = Vec::new();
        let mut was: Vec<Arc<Config>> = Vec::new();
        for run in std::mem::take(&mut self.runs) {
            match new.get(&run.cfg.site) {
                Some(cfg) if **cfg == *run.cfg => keep.push(run),
                other => {
                    let (site, cfg) = (run.cfg.site.clone(), run.cfg.clone());
                    run.stop().await?;
                    if other.is_none() {
                        lines.push(format!("site {site}: removed"));
                    } else {
                        was.push(cfg);
                    }
                }
            }
        }
        self.waiting
            .retain(|w| new.get(&w.site).is_some_and(|c| **c == **w));
        for cfg in &new.sites {
            let running = keep.iter().any(|r| r.cfg.site == cfg.site)
                || self.waiting.iter().any(|w| w.site == cfg.site);
            if running {
                continue;
            }
            let old = was.iter().find(|w| w.site == cfg.site).cloned();
            match SiteRun::start(cfg.clone(), &self.env, self.token.child_token()).await {
                Ok(run) => {
                    let how = if old.is_some() {
                        "restarted (its tables changed)"
                    } else {
                        "started"
                    };
                    lines.push(format!("site {}: {how}", cfg.site));
                    keep.push(run);
                }
                Err(AppError::Watch(e)) if !cfg.watch.root.is_dir() => {
                    warn!(site = %cfg.site, error = %e, "the site's root is missing; trying again every 30 s");
                    lines.push(format!("site {}: waiting for its root", cfg.site));
                    self.waiting.push(cfg.clone());
                }
                Err(e) => {
                    warn!(site = %cfg.site, error = %e, "reload of the site refused: it cannot start on the new config");
                    let Some(old) = old else {
                        lines.push(format!("site {}: cannot start ({e}); left out", cfg.site));
                        continue;
                    };
                    let run = SiteRun::start(old, &self.env, self.token.child_token()).await?;
                    lines.push(format!(
                        "site {}: cannot start on the new config ({e}); its old config runs",
                        cfg.site
                    ));
                    keep.push(run);
                }
            }
        }
        self.runs = keep;
        Ok(lines)
    }
}

/// Prunes the database at start and then once a day ([`crate::store::prune`]).
async fn prune_loop(cfg: Arc<Config>, store: Store, clock: Clock, token: CancellationToken) {
    loop {
        let now = clock.now();
        let ago = |d: Duration| {
            let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
            store::ts(
                now.checked_sub_signed(d)
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC),
            )
        };
        let s = &cfg.state;
        let (before, changes_before) = (ago(s.keep), ago(s.keep_changes));
        match crate::store::prune::prune(&store, &before, &changes_before).await {
            Ok(n) if n != Default::default() => info!(
                requests = n.requests,
                changes = n.changes,
                periods = n.periods,
                "pruned the database"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning the database failed; trying again tomorrow"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(86_400)) => {}
            _ = token.cancelled() => return,
        }
    }
}
