//! One site, running: its watcher, intake, pipeline and requests. [`SiteRun::start`] walks the
//! root (setting every watch), resumes the site's requests and catches up on markers written
//! while it was down; [`App::run`] is the site's loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::AppError;
use crate::aws::Clients;
use crate::config::Config;
use crate::halt::Halt;
use crate::intake::{Intake, NewRequest, FLUSH_AT, FLUSH_EVERY};
use crate::knobs::Knobs;
use crate::pipeline::Pipeline;
use crate::quota;
use crate::store::{requests, Source, Status, Store};
use crate::watch::{self, Lost, WatchEvent};

/// Events buffered between the watcher thread and the pipeline before a rescan takes over.
const CHANNEL: usize = 4096;

/// What every site of the process shares.
#[derive(Clone)]
pub(super) struct SiteEnv {
    pub(super) store: Store,
    pub(super) clients: Clients,
    pub(super) knobs: Knobs,
    /// Signalled when a site's state moved (requests, folders): the heartbeat writes then.
    pub(super) changed: Arc<tokio::sync::Notify>,
}

/// One site, running: its watcher, intake, pipeline and requests (an [`App`]).
pub(super) struct SiteRun {
    pub(super) cfg: Arc<Config>,
    pub(super) token: CancellationToken,
    pub(super) handle: tokio::task::JoinHandle<Result<(), AppError>>,
    pub(super) lost: Arc<Lost>,
    /// Bumped by the site's loop itself (under a watchdog): the watchdog ping is sent only
    /// while every site's loop moves, not just one.
    pub(super) alive: Arc<AtomicU64>,
}

impl SiteRun {
    /// Walks the site's root (setting every watch), resumes its requests, catches up on markers
    /// written while it was down, and runs it.
    pub(super) fn start(
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
            .await?
            .pausing_before_gather(env.knobs.before_gather);
            let reachable = tokio::spawn(reach_buckets(cfg.site.clone(), pipeline.clone()));
            let started = walking
                .await
                .map_err(|e| AppError::task("the walk of the root", e))??;
            let watch = started.watch;
            let mut app = App {
                intake: Intake::new(
                    cfg.clone(),
                    env.store.clone(),
                    pipeline.origin.clone(),
                    Some(started.listener),
                ),
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

    pub(super) async fn stop(self) -> Result<(), AppError> {
        self.token.cancel();
        self.handle
            .await
            .map_err(|e| AppError::task(format!("site {}", self.cfg.site), e))?
    }
}

/// One HeadBucket per bucket while the walk runs: a wrong bucket, endpoint or permission is in
/// the log at start, each bucket's region is learned (a count bucket made for the old Lambda may
/// live elsewhere), and what the first call loads (TLS roots, credentials) is loaded before
/// READY, not on the first marker's way. It holds READY for at most a second.
async fn reach_buckets(site: String, pipeline: Pipeline) {
    let answers = pipeline.reach_buckets().await;
    for (bucket, r) in answers {
        match r {
            Ok(region) => debug!(%site, %bucket, %region, "the bucket answers"),
            Err(e) => {
                warn!(%site, %bucket, error = %e, "the bucket does not answer (yet); requests wait for it")
            }
        }
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
                    Some(WatchEvent::Read(path)) => self.intake.heard(&path),
                    Some(WatchEvent::ChangesUnknown(why)) => {
                        if let Err(e) = self.intake.changes_unknown(why).await { break Err(e.into()) }
                    }
                    None => break Err(AppError::WatcherStopped(self.cfg.site.clone())),
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
            Err(e) => return Err(AppError::task("a request", e)),
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
    if p.cfg.quota.when_exhausted != crate::quota::WhenExhausted::Defer {
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
