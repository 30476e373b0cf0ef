//! Wiring: the watcher feeds a bounded channel; one loop hands its events to the intake and
//! runs each stored request as a task of the pipeline; one cancellation token stops everything;
//! tasks are joined, never detached.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::aws::Clients;
use crate::clock::Clock;
use crate::config::{Config, Running, Sites};
use crate::intake::{configured_paths, Intake, NewRequest, FLUSH_AT, FLUSH_EVERY};
use crate::knobs::Knobs;
use crate::pipeline::{self, Halt, Pipeline};
use crate::quota;
use crate::store::{self, requests, HistoryRow, Source, Status, Store, StoreError};
use crate::watch::{self, Lost, WatchError, WatchEvent, Watchers};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("{0}")]
    Other(String),
}

/// Events buffered between the watcher thread and the pipeline before a rescan takes over.
const CHANNEL: usize = 4096;

/// A running daemon: one [`SiteRun`] per site of the config, and the neighbours they share
/// (the heartbeat, metrics, alerts, pruning). [`Daemon::start`] returns once every watch is set.
pub struct Daemon {
    token: CancellationToken,
    main: tokio::task::JoinHandle<Result<(), AppError>>,
    /// Times the (first) site's watcher lost events and a rescan ran instead.
    pub lost: Arc<Lost>,
    reload: mpsc::Sender<(Sites, tokio::sync::oneshot::Sender<Vec<String>>)>,
    /// The metrics socket (a handle of its own), so a reload onto the same address reuses it.
    metrics: Option<(SocketAddr, std::net::TcpListener)>,
}

/// What a daemon needs before anything of a running one is stopped: its database open and its
/// metrics address bound. A reload that cannot get them keeps the running daemon untouched.
pub struct Prepared {
    store: Store,
    metrics: Option<(SocketAddr, std::net::TcpListener)>,
}

/// How long a site whose root is missing waits before the next try.
const ROOT_RETRY: Duration = Duration::from_secs(30);

impl Daemon {
    pub async fn start(cfg: Config) -> Result<Daemon, AppError> {
        Daemon::start_with(cfg, Knobs::default()).await
    }

    /// [`Daemon::start`] with test knobs turned (see [`Knobs`]).
    pub async fn start_with(cfg: Config, knobs: Knobs) -> Result<Daemon, AppError> {
        Daemon::start_sites(Sites::one(cfg), knobs).await
    }

    /// Every site of the file. A site whose root is missing is reported and tried again every
    /// 30 s; the others run. Any other failure to start a site stops the start.
    pub async fn start_sites(sites: Sites, knobs: Knobs) -> Result<Daemon, AppError> {
        let prepared = Daemon::prepare(&sites, None).await?;
        Daemon::start_prepared(sites, knobs, prepared).await
    }

    /// Opens the database and binds the metrics address of `sites`, reusing the socket of
    /// `running` when the address stays (it cannot be bound twice). Err names the key.
    pub async fn prepare(sites: &Sites, running: Option<&Daemon>) -> Result<Prepared, AppError> {
        let shared = sites.shared();
        let store = open_store(shared).await?;
        let metrics = match shared.metrics.listen {
            None => None,
            Some(addr) => {
                let cannot = |e: std::io::Error| {
                    AppError::Other(format!(
                        "{}: metrics.listen {addr}: cannot listen: {e}",
                        shared.file.display()
                    ))
                };
                let kept = running
                    .and_then(|d| d.metrics.as_ref())
                    .filter(|(a, _)| *a == addr);
                let l = match kept {
                    Some((_, l)) => l.try_clone().map_err(cannot)?,
                    None => std::net::TcpListener::bind(addr).map_err(cannot)?,
                };
                l.set_nonblocking(true).map_err(cannot)?;
                Some((addr, l))
            }
        };
        Ok(Prepared { store, metrics })
    }

    /// [`Daemon::start_sites`] with its database and listener already in hand.
    pub async fn start_prepared(
        sites: Sites,
        knobs: Knobs,
        prepared: Prepared,
    ) -> Result<Daemon, AppError> {
        let shared = Arc::new(sites.shared().clone());
        let token = CancellationToken::new();
        let Prepared {
            store,
            metrics: bound,
        } = prepared;
        let clients = Clients::new(&shared.aws).await;
        let env = SiteEnv {
            store,
            clients,
            knobs,
            changed: Arc::new(tokio::sync::Notify::new()),
        };
        let mut runs = Vec::new();
        let mut waiting = Vec::new();
        let started = futures_join_all(
            sites
                .sites
                .iter()
                .map(|cfg| SiteRun::start(cfg.clone(), &env, token.child_token())),
        )
        .await;
        for (cfg, r) in sites.sites.iter().zip(started) {
            match r {
                Ok(run) => runs.push(run),
                Err(AppError::Watch(e)) if !cfg.watch.root.is_dir() => {
                    warn!(site = %cfg.site, error = %e, "the site's root is missing; trying again every 30 s, the other sites run");
                    waiting.push(cfg.clone());
                }
                Err(e) => {
                    token.cancel();
                    for run in runs {
                        let _ = run.handle.await;
                    }
                    return Err(e);
                }
            }
        }
        let lost = runs
            .first()
            .map_or_else(|| Arc::new(Lost::default()), |r| r.lost.clone());
        let metrics = match &bound {
            None => None,
            Some((addr, l)) => {
                let served = l
                    .try_clone()
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|e| {
                        AppError::Other(format!(
                            "{}: metrics.listen {addr}: cannot listen: {e}",
                            shared.file.display()
                        ))
                    })?;
                Some(served)
            }
        };
        let (reload, reloads) = mpsc::channel(1);
        let main = tokio::spawn(supervise(
            Supervisor {
                shared,
                env,
                runs,
                waiting,
                token: token.clone(),
            },
            metrics,
            reloads,
        ));
        Ok(Daemon {
            token,
            main,
            lost,
            reload,
            metrics: bound,
        })
    }

    /// Applies a new config: sites added start, sites removed stop, sites whose tables changed
    /// restart; the others are not touched. Returns what changed, one line per site.
    pub async fn reload(&self, sites: Sites) -> Result<Vec<String>, AppError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reload
            .send((sites, tx))
            .await
            .map_err(|_| AppError::Other("the daemon has stopped".into()))?;
        rx.await
            .map_err(|_| AppError::Other("the daemon has stopped".into()))
    }

    /// Stops watching, parks requests in hand, and waits for every task to end.
    pub async fn shutdown(self) -> Result<(), AppError> {
        self.token.cancel();
        self.wait().await
    }

    /// Waits until the daemon ends (a fatal error, or [`Daemon::shutdown`]).
    pub async fn wait(self) -> Result<(), AppError> {
        self.main
            .await
            .map_err(|e| AppError::Other(format!("daemon task: {e}")))?
    }

    /// [`Daemon::wait`] without giving the daemon up (to wait beside a signal).
    pub async fn wait_ref(&mut self) -> Result<(), AppError> {
        (&mut self.main)
            .await
            .map_err(|e| AppError::Other(format!("daemon task: {e}")))?
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

/// Awaits every future, in order (the sites' start-ups, concurrently).
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(
            h.await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        );
    }
    out
}

/// What every site of the process shares.
#[derive(Clone)]
struct SiteEnv {
    store: Store,
    clients: Clients,
    knobs: Knobs,
    /// Signalled when a site's state moved (requests, folders): the heartbeat writes then.
    changed: Arc<tokio::sync::Notify>,
}

/// One site, running: its watcher, intake, pipeline and requests (an [`App`]).
struct SiteRun {
    cfg: Arc<Config>,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), AppError>>,
    lost: Arc<Lost>,
    /// Bumped by the site's loop itself (under a watchdog): the watchdog ping is sent only
    /// while every site's loop moves, not just one.
    alive: Arc<AtomicU64>,
}

impl SiteRun {
    /// Walks the site's root (setting every watch), resumes its requests, catches up on markers
    /// written while it was down, and runs it.
    fn start(
        cfg: Arc<Config>,
        env: &SiteEnv,
        token: CancellationToken,
    ) -> impl std::future::Future<Output = Result<SiteRun, AppError>> + Send + 'static {
        let env = env.clone();
        async move {
            let knobs = env.knobs.clone();
            let clock = knobs.clock.clone();
            let (tx, rx) = mpsc::channel(knobs.channel.unwrap_or(CHANNEL));
            let lost = Arc::new(Lost::default());
            // The walk that sets the watches is most of the start-up: it runs on its own thread
            // while the pipeline is built and the buckets are reached.
            let walking = {
                let (root, marker, lost) = (
                    cfg.watch.root.clone(),
                    cfg.watch.marker.clone(),
                    lost.clone(),
                );
                let track = cfg.tracks_changes();
                tokio::task::spawn_blocking(move || {
                    watch::start(&root, &marker, track, tx, lost, &knobs)
                })
            };
            let pipeline = Pipeline::with_clients(
                cfg.clone(),
                env.store.clone(),
                token.clone(),
                clock,
                env.clients.clone(),
            )
            .await?;
            let reachable = tokio::spawn(reach_buckets(cfg.site.clone(), pipeline.clone()));
            let started = walking
                .await
                .map_err(|e| AppError::Other(e.to_string()))??;
            let watch = started.watch;
            let mut app = App {
                intake: Intake::new(cfg.clone(), env.store.clone(), pipeline.origin.clone()),
                cfg: cfg.clone(),
                pipeline,
                store: env.store.clone(),
                tasks: JoinSet::new(),
                changed: env.changed.clone(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), reachable).await;
            app.resume().await?;
            let found = app.intake.catch_up(started.markers).await?;
            app.spawn(found);
            info!(site = %cfg.site, root = %cfg.watch.root.display(), "watching");
            let alive = Arc::new(AtomicU64::new(0));
            let handle =
                tokio::spawn(app.run(rx, lost.clone(), token.clone(), watch, alive.clone()));
            Ok(SiteRun {
                cfg,
                token,
                handle,
                lost,
                alive,
            })
        }
    }

    async fn stop(self) -> Result<(), AppError> {
        self.token.cancel();
        self.handle
            .await
            .map_err(|e| AppError::Other(format!("site {} task: {e}", self.cfg.site)))?
    }
}

/// One HeadBucket per bucket while the walk runs: a wrong bucket, endpoint or permission is in
/// the log at start, each bucket's region is learned (a count bucket made for the old Lambda may
/// live elsewhere), and what the first call loads (TLS roots, credentials) is loaded before
/// READY, not on the first marker's way. It holds READY for at most a second.
async fn reach_buckets(site: String, pipeline: Pipeline) {
    let origin = pipeline.origin.clone();
    let mirror = pipeline.ledger.mirror().cloned();
    let count = async {
        match &mirror {
            Some(m) => Some((m.bucket().to_owned(), m.handle().locate().await)),
            None => None,
        }
    };
    let (o, c) = tokio::join!(origin.reachable(), count);
    for (bucket, r) in std::iter::once((origin.bucket().to_owned(), o)).chain(c) {
        match r {
            Ok(region) => debug!(%site, %bucket, %region, "the bucket answers"),
            Err(e) => {
                warn!(%site, %bucket, error = %e, "the bucket does not answer (yet); requests wait for it")
            }
        }
    }
}

/// The process: the sites' runs, the ones waiting for their root, and the shared neighbours.
struct Supervisor {
    shared: Arc<Config>,
    env: SiteEnv,
    runs: Vec<SiteRun>,
    waiting: Vec<Arc<Config>>,
    token: CancellationToken,
}

async fn supervise(
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
                let r = r.map_err(|e| AppError::Other(format!("site {} task: {e}", run.cfg.site)));
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

struct App {
    cfg: Arc<Config>,
    pipeline: Pipeline,
    store: Store,
    intake: Intake,
    tasks: JoinSet<(i64, Result<(), Halt>)>,
    /// See [`SiteEnv::changed`].
    changed: Arc<tokio::sync::Notify>,
}

impl App {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<WatchEvent>,
        lost: Arc<Lost>,
        token: CancellationToken,
        watch: watch::Watch,
        alive: Arc<AtomicU64>,
    ) -> Result<(), AppError> {
        let mut deferred = tokio::spawn(deferred_loop(self.pipeline.clone(), token.clone()));
        // WatchdogSec=: ping from this loop at half the interval, so a wedged loop gets restarted.
        // Without a watchdog the timer never fires: an idle daemon does not wake up.
        // The pulse the supervisor's watchdog looks at (at half its interval): this loop moves.
        let watchdog = crate::systemd::watchdog();
        let every = watchdog.map_or(Duration::from_secs(86_400), |d| d / 4);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut flush_at: Option<tokio::time::Instant> = None;
        // Only once the watch limit was hit: periodic scans for folders without a watch.
        let mut fallback = tokio::time::interval(self.cfg.watch.fallback_scan);
        fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = fallback.tick(), if lost.degraded.load(Ordering::Relaxed) => {
                    let root = self.cfg.watch.root.clone();
                    if let Err(e) = self.intake.scan(root).await.map(|n| self.spawn(n)) { break Err(e.into()) }
                }
                _ = sleep_until_some(flush_at) => {
                    flush_at = None;
                    if let Err(e) = self.intake.flush_changes().await { break Err(e.into()) }
                }
                _ = ping.tick(), if watchdog.is_some() => {
                    alive.fetch_add(1, Ordering::Relaxed);
                }
                _ = token.cancelled() => break Ok(()),
                ev = rx.recv() => match ev {
                    Some(WatchEvent::Marker(path)) => {
                        crate::knobs::stall_point("site_loop_stall", &self.cfg.site).await;
                        match self.intake.marker(path, Source::Watch).await {
                            Ok(new) => self.spawn(new),
                            Err(e) => break Err(e.into()),
                        }
                    }
                    Some(WatchEvent::Appeared { markers, files }) => {
                        self.changed.notify_one();
                        match self.intake.appeared(markers, files).await {
                            Ok(new) => self.spawn(new),
                            Err(e) => break Err(e.into()),
                        }
                    }
                    Some(WatchEvent::Change { path, deleted }) => {
                        if self.intake.change(&path, deleted) >= FLUSH_AT {
                            if let Err(e) = self.intake.flush_changes().await { break Err(e.into()) }
                        } else if flush_at.is_none() {
                            flush_at = Some(tokio::time::Instant::now() + FLUSH_EVERY);
                        }
                    }
                    Some(WatchEvent::ChangesUnknown(why)) => {
                        if let Err(e) = self.intake.changes_unknown(why).await { break Err(e.into()) }
                    }
                    None => break Err(AppError::Other("the watcher stopped".into())),
                },
                _ = lost.wake.notified() => {
                    self.changed.notify_one();
                    if lost.take() {
                        if self.cfg.tracks_changes() {
                            let why = "file events were lost (kernel queue or channel full)".into();
                            if let Err(e) = self.intake.changes_unknown(why).await { break Err(e.into()) }
                        }
                        let root = self.cfg.watch.root.clone();
                        if let Err(e) = self.intake.scan(root).await.map(|n| self.spawn(n)) { break Err(e.into()) }
                    }
                }
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = self.reap(done) { break Err(e) }
                }
            }
        };
        watch.stop();
        token.cancel();
        if let Err(e) = self.intake.flush_changes().await {
            warn!(error = %e, "could not store the last changes");
        }
        // Requests in hand park at their next await; give them a moment, then stop them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(done)) => {
                    let _ = self.reap(done);
                }
                Ok(None) => break,
                Err(_) => {
                    warn!("requests still busy at shutdown; they resume at the next start");
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut deferred).await;
        deferred.abort();
        result
    }

    fn reap(
        &mut self,
        done: Result<(i64, Result<(), Halt>), tokio::task::JoinError>,
    ) -> Result<(), AppError> {
        self.changed.notify_one();
        match done {
            Ok((id, Err(Halt::Store(e)))) => {
                warn!(request = id, error = %e, "database failed");
                return Err(e.into());
            }
            Ok((id, _)) => self.intake.ended(id),
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(AppError::Other(format!("request task panicked: {e}"))),
        }
        Ok(())
    }

    /// Runs requests just stored, each as a task of its own.
    fn spawn(&mut self, new: impl IntoIterator<Item = NewRequest>) {
        for r in new {
            self.changed.notify_one();
            let p = self.pipeline.clone();
            let span = info_span!("request", id = r.id, marker = %r.rel);
            let id = r.id;
            self.tasks.spawn(
                async move { (id, p.run_watched(id, r.wake, r.first).await) }.instrument(span),
            );
        }
    }

    /// Requests in flight when the daemon last stopped carry on from their stored state.
    async fn resume(&mut self) -> Result<(), AppError> {
        let site = self.cfg.site.clone();
        let pending = self
            .store
            .call(move |c| requests::pending(c, &site))
            .await?;
        for p in pending {
            if p.status == Status::Deferred {
                continue;
            }
            info!(request = p.id, status = %p.status, "resuming");
            let wake = self.intake.resumed(&p);
            let pipe = self.pipeline.clone();
            let id = p.id;
            let span = info_span!("request", id);
            self.tasks
                .spawn(async move { (id, pipe.resume(p, wake).await) }.instrument(span));
        }
        Ok(())
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for (no idle wake-ups).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs deferred requests when a period begins (and at start, for periods that passed).
async fn deferred_loop(p: Pipeline, token: CancellationToken) {
    if p.cfg.quota.when_exhausted != crate::config::WhenExhausted::Defer {
        return;
    }
    loop {
        match p.run_deferred().await {
            Ok(()) | Err(Halt::Ended) => {}
            Err(Halt::Shutdown) => return,
            Err(Halt::Store(e)) => warn!(error = %e, "deferred requests"),
        }
        let q = &p.cfg.quota;
        let now = p.clock().now();
        let next = quota::next_period_start(now, q.timezone, q.period);
        let wait = (next - now).to_std().unwrap_or_default() + Duration::from_secs(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = token.cancelled() => return,
        }
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

/// `purgewatch purge`: a request by hand, no origin wait, the same quota and invalidation.
/// The SQLite write lock makes its slot reservation atomic with a running daemon's.
pub async fn purge_now(cfg: Config, wait_completed: bool) -> Result<HistoryRow, AppError> {
    let cfg = Arc::new(cfg);
    let store = open_store(&cfg).await?;
    let token = CancellationToken::new();
    let pipeline =
        Pipeline::new(cfg.clone(), store.clone(), token.clone(), Clock::system()).await?;
    let id = pipeline::store_manual(&store, &cfg.site, configured_paths(&cfg)).await?;
    let run = pipeline
        .run_manual(id, wait_completed)
        .instrument(info_span!("request", id, marker = "manual"));
    tokio::select! {
        r = run => match r {
            Ok(()) | Err(Halt::Ended) | Err(Halt::Shutdown) => {}
            Err(Halt::Store(e)) => return Err(e.into()),
        },
        _ = shutdown_signal() => {
            token.cancel();
        }
    }
    let row = store
        .call(move |c| {
            Ok(requests::history(c, None, u32::MAX)?
                .into_iter()
                .find(|r| r.id == id))
        })
        .await?;
    row.ok_or_else(|| AppError::Other(format!("request {id} vanished")))
}

async fn open_store(cfg: &Config) -> Result<Store, AppError> {
    let path = cfg.state.database.clone();
    Ok(tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(|e| AppError::Other(e.to_string()))??)
}

/// SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Lost-event counter, for logs and tests.
pub fn lost_count(d: &Daemon) -> u64 {
    d.lost.count.load(Ordering::Relaxed)
}
