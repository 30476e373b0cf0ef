//! Wiring: the watcher feeds a bounded channel; one loop turns marker events into stored
//! requests and spawns a task per request; one cancellation token stops everything; tasks are
//! joined, never detached.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::origin;
use crate::pipeline::{FirstLook, Halt, Pipeline, Verified};
use crate::quota;
use crate::store::{self, HistoryRow, MarkerSeen, Source, Store, StoreError};
use crate::watch::{self, Lost, WatchError, WatchEvent};

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

/// A running daemon. [`Daemon::start`] returns once every watch is set.
pub struct Daemon {
    token: CancellationToken,
    main: tokio::task::JoinHandle<Result<(), AppError>>,
    /// Times the watcher lost events and a rescan ran instead.
    pub lost: Arc<Lost>,
}

impl Daemon {
    pub async fn start(cfg: Config) -> Result<Daemon, AppError> {
        let cfg = Arc::new(cfg);
        let token = CancellationToken::new();
        let (tx, rx) = mpsc::channel(channel_capacity());
        let lost = Arc::new(Lost::default());
        // The walk that sets the watches is most of the start-up: it runs on its own thread
        // while the database opens and the AWS clients are built.
        let walking = {
            let (root, marker, lost) = (
                cfg.watch.root.clone(),
                cfg.watch.marker.clone(),
                lost.clone(),
            );
            let track = cfg.tracks_changes();
            tokio::task::spawn_blocking(move || watch::start(&root, &marker, track, tx, lost))
        };
        let store = {
            let path = cfg.state.database.clone();
            tokio::task::spawn_blocking(move || Store::open(&path))
                .await
                .map_err(|e| AppError::Other(e.to_string()))??
        };
        let pipeline = Pipeline::new(cfg.clone(), store.clone(), token.clone()).await?;
        // One HeadBucket per bucket while the walk runs: a wrong bucket, endpoint or permission
        // is in the log at start, each bucket's region is learned (a count bucket made for the
        // old Lambda may live elsewhere), and what the first call loads (TLS roots,
        // credentials) is loaded before READY, not on the first marker's way. It holds READY
        // for at most a second.
        let reachable = {
            let origin = pipeline.origin.clone();
            let mirror = pipeline.mirror.clone();
            tokio::spawn(async move {
                let count = async {
                    match &mirror {
                        Some(m) => Some((m.bucket().to_owned(), m.handle().locate().await)),
                        None => None,
                    }
                };
                let (o, c) = tokio::join!(origin.reachable(), count);
                for (bucket, r) in std::iter::once((origin.bucket().to_owned(), o)).chain(c) {
                    match r {
                        Ok(region) => debug!(%bucket, %region, "the bucket answers"),
                        Err(e) => {
                            warn!(%bucket, error = %e, "the bucket does not answer (yet); requests wait for it")
                        }
                    }
                }
            })
        };
        let started = walking
            .await
            .map_err(|e| AppError::Other(e.to_string()))??;
        let watch = started.watch;
        let mut app = App {
            cfg,
            pipeline,
            store,
            open: HashMap::new(),
            tasks: JoinSet::new(),
            changes: HashMap::new(),
            unusable: HashMap::new(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), reachable).await;
        app.resume().await?;
        app.catch_up(started.markers).await?;
        info!(root = %app.cfg.watch.root.display(), "watching");
        let main = tokio::spawn(app.run(rx, lost.clone(), token.clone(), watch));
        Ok(Daemon { token, main, lost })
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

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

/// What became of a marker write.
enum Stored {
    /// Could not be read (gone, unreadable, not a regular file).
    Unread(std::io::Error),
    /// Folded into the open request with this id.
    Merged(i64),
    /// A new request, with its generation and markers as stored (when they could be read).
    New(i64, Option<(i64, Vec<MarkerSeen>)>),
}

/// A request still taking writes of its marker: merged in until its origin check passes.
struct Open {
    id: i64,
    wake: Arc<Notify>,
}

struct App {
    cfg: Arc<Config>,
    pipeline: Pipeline,
    store: Store,
    /// Per marker path: writes of one marker coalesce; different markers are different requests,
    /// as each `.purge` upload was one Lambda invocation.
    open: HashMap<String, Open>,
    tasks: JoinSet<(i64, Result<(), Halt>)>,
    /// Changes not yet written to SQLite, one entry per path: a storm of rewrites of the same
    /// files costs memory per file, not per event; flushed in one transaction.
    changes: HashMap<String, store::ChangeSeen>,
    /// Markers last recorded as unusable, by (size, mtime): one row per write, not per report.
    unusable: HashMap<String, (u64, i64)>,
}

/// Markers up to this size are hashed on the pipeline's own thread (a read of a few pages).
const INLINE_MARKER: u64 = 64 * 1024;

/// Flush the change buffer at least this often, and whenever it holds this many paths.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const FLUSH_AT: usize = 10_000;

impl App {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<WatchEvent>,
        lost: Arc<Lost>,
        token: CancellationToken,
        watch: watch::Watch,
    ) -> Result<(), AppError> {
        let mut deferred = tokio::spawn(deferred_loop(self.pipeline.clone(), token.clone()));
        // WatchdogSec=: ping from this loop at half the interval, so a wedged loop gets restarted.
        // Without a watchdog the timer never fires: an idle daemon does not wake up.
        let watchdog = sd_notify::watchdog_enabled();
        let every = watchdog.map_or(Duration::from_secs(86_400), |d| d / 2);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut flush_at: Option<tokio::time::Instant> = None;
        // Only once the watch limit was hit: periodic scans for folders without a watch.
        let mut fallback = tokio::time::interval(self.cfg.watch.fallback_scan);
        fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = fallback.tick(), if lost.degraded.load(Ordering::Relaxed) => {
                    let root = self.cfg.watch.root.clone();
                    if let Err(e) = self.scan(root).await { break Err(e) }
                }
                _ = sleep_until_some(flush_at) => {
                    flush_at = None;
                    if let Err(e) = self.flush_changes().await { break Err(e) }
                }
                _ = ping.tick(), if watchdog.is_some() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                _ = token.cancelled() => break Ok(()),
                ev = rx.recv() => match ev {
                    Some(WatchEvent::Marker(path)) => {
                        if let Err(e) = self.on_marker(path, Source::Watch).await { break Err(e) }
                    }
                    Some(WatchEvent::Appeared { markers, files }) => {
                        if let Err(e) = self.appeared(markers, files).await { break Err(e) }
                    }
                    Some(WatchEvent::Change { path, deleted }) => {
                        self.buffer_change(&path, deleted);
                        if self.changes.len() >= FLUSH_AT {
                            if let Err(e) = self.flush_changes().await { break Err(e) }
                        } else if flush_at.is_none() {
                            flush_at = Some(tokio::time::Instant::now() + FLUSH_EVERY);
                        }
                    }
                    Some(WatchEvent::ChangesUnknown(why)) => {
                        if let Err(e) = self.changes_unknown(why).await { break Err(e) }
                    }
                    None => break Err(AppError::Other("the watcher stopped".into())),
                },
                _ = lost.wake.notified() => {
                    if lost.take() {
                        if self.cfg.tracks_changes() {
                            let why = "file events were lost (kernel queue or channel full)".into();
                            if let Err(e) = self.changes_unknown(why).await { break Err(e) }
                        }
                        let root = self.cfg.watch.root.clone();
                        if let Err(e) = self.scan(root).await { break Err(e) }
                    }
                }
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = self.reap(done) { break Err(e) }
                }
            }
        };
        watch.stop();
        token.cancel();
        if let Err(e) = self.flush_changes().await {
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
        match done {
            Ok((id, Err(Halt::Store(e)))) => {
                warn!(request = id, error = %e, "database failed");
                return Err(e.into());
            }
            Ok((id, _)) => {
                self.open.retain(|_, o| o.id != id);
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(AppError::Other(format!("request task panicked: {e}"))),
        }
        Ok(())
    }

    /// A marker write: merged into the open request, or stored as a new one before anything else.
    async fn on_marker(&mut self, path: PathBuf, source: Source) -> Result<(), AppError> {
        let Some(rel) = watch::relative(&self.cfg.watch.root, &path) else {
            return Ok(());
        };
        if path.to_str().is_none() {
            // S3 keys are UTF-8; lsyncd cannot have synced this name as it is.
            self.flush_changes().await?;
            let detail = format!("marker path {rel:?} is not UTF-8: no S3 key can match it");
            return self.unusable(&path, rel, source, detail).await;
        }
        let open = self.open.get(&rel).map(|o| o.id);
        // With no settle time, ask S3 at once, while the marker is hashed and stored below on
        // another thread: the first check does not wait for the SQLite write.
        let early = (self.cfg.watch.settle.is_zero() && open.is_none() && source == Source::Watch)
            .then(|| origin::EarlyHead::start(&self.pipeline.origin, rel.clone()));
        if early.is_some() {
            // Let it reach the wire before anything else here runs.
            tokio::task::yield_now().await;
        }
        // The request owns the changes recorded up to its marker: store them first.
        self.flush_changes().await?;
        // One trip to the blocking pool (or none): hash the marker, then merge it into the open
        // request or store a new one. On an idle daemon each hand-off between threads is a wake-up.
        let paths = configured_paths(&self.cfg);
        let detail = match source {
            Source::Scan => "marker found changed by a scan",
            _ => "marker written",
        };
        let store_marker = move |c: &mut rusqlite::Connection, seen: MarkerSeen| {
            if let Some(id) = open {
                if store::merge_marker(c, id, &seen)? {
                    return Ok(Stored::Merged(id));
                }
            }
            let id = store::insert_request(c, source, Some(&seen), &paths, detail)?;
            // Stored: from here no error may send the write round again (a busy fallback would
            // store it twice). Without this read the request reads its markers itself.
            Ok(Stored::New(id, store::request_markers(c, id).ok()))
        };
        // A small marker whose database is free is hashed and stored right here: the two
        // hand-offs to the blocking pool and back cost more than the work (BENCHMARKS.md,
        // close → HeadObject). Anything else (a big marker, a busy database) goes there.
        let small =
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() <= INLINE_MARKER);
        let inline = if small && early.is_none() {
            match origin::hash_file(&path, rel.clone()) {
                Err(e) => Some(Ok(Stored::Unread(e))),
                Ok(seen) => {
                    let f = store_marker.clone();
                    self.store.try_now(move |c| f(c, seen))
                }
            }
        } else {
            None
        };
        let stored = match inline {
            Some(r) => r?,
            None => {
                let (store, p, r) = (self.store.clone(), path.clone(), rel.clone());
                tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                    let seen = match origin::hash_file(&p, r) {
                        Ok(s) => s,
                        Err(e) => return Ok(Stored::Unread(e)),
                    };
                    store_marker(&mut store.lock(), seen)
                })
                .await
                .map_err(|e| AppError::Other(e.to_string()))??
            }
        };
        match stored {
            Stored::Unread(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Deleted before we could read it: nothing is left to purge for.
                info!(marker = %rel, "marker gone before it could be read; ignored");
                Ok(())
            }
            Stored::Unread(e) => {
                // Unreadable, or not a regular file: recorded, so the operator sees why.
                let detail = format!("cannot use marker {rel}: {e}");
                self.unusable(&path, rel, source, detail).await
            }
            Stored::Merged(id) => {
                debug!(request = id, marker = %rel, "merged into the open request");
                if let Some(o) = self.open.get(&rel) {
                    o.wake.notify_one();
                }
                Ok(())
            }
            Stored::New(id, stored) => {
                let first = FirstLook {
                    stored,
                    head: early,
                };
                self.spawn_request(id, rel, first);
                Ok(())
            }
        }
    }

    /// Records a marker that cannot be purged for, once per write: the watch event and the scan
    /// of a new folder can both report the same write.
    async fn unusable(
        &mut self,
        path: &std::path::Path,
        rel: String,
        source: Source,
        detail: String,
    ) -> Result<(), AppError> {
        let stamp = std::fs::symlink_metadata(path)
            .map(|m| (m.len(), mtime_ns(&m)))
            .unwrap_or_default();
        if self.unusable.get(&rel) == Some(&stamp) {
            return Ok(());
        }
        warn!(marker = %rel, %detail, "marker not usable");
        self.unusable.insert(rel.clone(), stamp);
        self.store
            .call(move |c| store::insert_failed(c, source, &rel, &detail))
            .await?;
        Ok(())
    }

    /// Runs a request just stored, from its origin check on.
    fn spawn_request(&mut self, id: i64, rel: String, first: FirstLook) {
        crate::pipeline::crash_point("after_request_stored");
        info!(request = id, marker = %rel, "purge requested");
        let wake = Arc::new(Notify::new());
        let p = self.pipeline.clone();
        let w = wake.clone();
        let span = info_span!("request", id, marker = %rel);
        self.tasks.spawn(
            async move {
                let r = p.run_watched(id, w, first).await.map(|_| ());
                (id, r)
            }
            .instrument(span),
        );
        self.open.insert(rel, Open { id, wake });
    }

    /// A folder appeared with files in it: they are changes, and its markers count as written.
    async fn appeared(
        &mut self,
        markers: Vec<PathBuf>,
        files: Vec<PathBuf>,
    ) -> Result<(), AppError> {
        for f in &files {
            self.buffer_change(f, false);
        }
        for path in markers {
            self.on_marker(path, Source::Watch).await?;
        }
        Ok(())
    }

    /// Walks `dir` (events were lost, or folders lack a watch): markers that differ from what the
    /// database last saw become marker events.
    async fn scan(&mut self, dir: PathBuf) -> Result<(), AppError> {
        let marker = self.cfg.watch.marker.clone();
        let found = tokio::task::spawn_blocking(move || watch::find_files(&dir, &marker, false))
            .await
            .map_err(|e| AppError::Other(e.to_string()))?;
        self.changed_markers(found.markers).await
    }

    async fn changed_markers(&mut self, found: Vec<PathBuf>) -> Result<(), AppError> {
        if found.is_empty() {
            return Ok(());
        }
        let known = self.store.call(|c| store::known_markers(c)).await?;
        for path in found {
            let Some(rel) = watch::relative(&self.cfg.watch.root, &path) else {
                continue;
            };
            if let (Some(&(size, mtime)), Ok(meta)) = (known.get(&rel), std::fs::metadata(&path)) {
                if meta.len() == size && mtime_ns(&meta) == mtime {
                    continue;
                }
            }
            self.on_marker(path, Source::Scan).await?;
        }
        Ok(())
    }

    /// Markers written while the daemon was down, from the start-up walk. On the very first
    /// start they are only remembered: installing purgewatch must not purge for every old
    /// `.purge` in the tree.
    async fn catch_up(&mut self, found: Vec<PathBuf>) -> Result<(), AppError> {
        let first_start = self.store.call(|c| store::first_start(c)).await?;
        if first_start {
            let root = self.cfg.watch.root.clone();
            let seen: Vec<MarkerSeen> = tokio::task::spawn_blocking(move || {
                found
                    .into_iter()
                    .filter_map(|p| {
                        let rel = watch::relative(&root, &p)?;
                        origin::hash_file(&p, rel).ok()
                    })
                    .collect()
            })
            .await
            .map_err(|e| AppError::Other(e.to_string()))?;
            let n = seen.len();
            self.store
                .call(move |c| {
                    for s in &seen {
                        store::remember_marker(c, s)?;
                    }
                    Ok(())
                })
                .await?;
            if n > 0 {
                info!(
                    markers = n,
                    "first start: existing markers remembered, not purged"
                );
            }
            return Ok(());
        }
        if self.cfg.tracks_changes() {
            let why = "the daemon was stopped: changes made meanwhile are unknown".into();
            self.changes_unknown(why).await?;
        }
        self.changed_markers(found).await
    }

    fn buffer_change(&mut self, path: &std::path::Path, deleted: bool) {
        let Some(rel) = watch::relative(&self.cfg.watch.root, path) else {
            return;
        };
        let now = store::now_text();
        self.changes
            .entry(rel.clone())
            .and_modify(|c| {
                c.deleted = deleted;
                c.last_seen.clone_from(&now);
            })
            .or_insert(store::ChangeSeen {
                rel,
                deleted,
                first_seen: now.clone(),
                last_seen: now,
            });
    }

    async fn flush_changes(&mut self) -> Result<(), AppError> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let batch: Vec<store::ChangeSeen> = self.changes.drain().map(|(_, c)| c).collect();
        debug!(changes = batch.len(), "recording changes");
        self.store
            .call(move |c| store::record_changes(c, &batch))
            .await?;
        Ok(())
    }

    async fn changes_unknown(&mut self, why: String) -> Result<(), AppError> {
        self.flush_changes().await?;
        warn!(reason = %why, "the change set is incomplete; the next purge falls back to /*");
        self.store
            .call(move |c| store::changes_unknown(c, &why))
            .await?;
        Ok(())
    }

    /// Requests in flight when the daemon last stopped carry on from their stored state.
    async fn resume(&mut self) -> Result<(), AppError> {
        let pending = self.store.call(|c| store::pending(c)).await?;
        for p in pending {
            if p.status == store::Status::Deferred {
                continue;
            }
            info!(request = p.id, status = %p.status, "resuming");
            let wake = Arc::new(Notify::new());
            if p.status == store::Status::WaitingForOrigin && !p.verified && p.source != "manual" {
                let open = Open {
                    id: p.id,
                    wake: wake.clone(),
                };
                self.open.insert(p.marker.clone(), open);
            }
            let pipe = self.pipeline.clone();
            let id = p.id;
            let span = info_span!("request", id);
            self.tasks
                .spawn(async move { (id, pipe.resume(p, wake).await) }.instrument(span));
        }
        Ok(())
    }
}

/// Test seam (feature `failpoints` only): PURGEWATCH_TEST_CHANNEL=N shrinks the watcher's
/// channel so the "channel full → rescan" path runs in a test.
fn channel_capacity() -> usize {
    #[cfg(feature = "failpoints")]
    if let Some(n) = std::env::var("PURGEWATCH_TEST_CHANNEL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    CHANNEL
}

/// Sleeps until `at`, or forever when there is nothing to wait for (no idle wake-ups).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
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
        let next = quota::next_period_start(Utc::now(), q.timezone, q.period);
        let wait = (next - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = token.cancelled() => return,
        }
    }
}

/// `purgewatch purge`: a request by hand, no origin wait, the same quota and invalidation.
/// The SQLite write lock makes its slot reservation atomic with a running daemon's.
pub async fn purge_now(cfg: Config, wait_completed: bool) -> Result<HistoryRow, AppError> {
    let cfg = Arc::new(cfg);
    let store = {
        let path = cfg.state.database.clone();
        tokio::task::spawn_blocking(move || Store::open(&path))
            .await
            .map_err(|e| AppError::Other(e.to_string()))??
    };
    let token = CancellationToken::new();
    let pipeline = Pipeline::new(cfg.clone(), store.clone(), token.clone()).await?;
    let paths = configured_paths(&cfg);
    let id = store
        .call(move |c| store::insert_request(c, Source::Manual, None, &paths, "asked by hand"))
        .await?;
    let span = info_span!("request", id, marker = "manual");
    let run = async {
        let verified = Verified {
            request_ids: vec![id],
        };
        let granted = pipeline.grant(verified).await?;
        let inv = pipeline.invalidate(granted).await?;
        if wait_completed {
            pipeline.complete(&inv).await?;
        }
        Ok::<_, Halt>(())
    }
    .instrument(span);
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
            Ok(store::history(c, u32::MAX)?
                .into_iter()
                .find(|r| r.id == id))
        })
        .await?;
    row.ok_or_else(|| AppError::Other(format!("request {id} vanished")))
}

/// The paths a request starts with; [`Pipeline::decide_paths`] settles them once verified.
fn configured_paths(cfg: &Config) -> Vec<String> {
    match &cfg.cloudfront.paths {
        crate::config::Paths::Fixed(p) => p.clone(),
        crate::config::Paths::Changed => vec!["/*".into()],
    }
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
