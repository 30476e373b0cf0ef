//! Intake: watcher events → stored requests. A marker write is hashed and stored (merged into
//! the request still waiting for that marker, or a new request) before anything that uses
//! quota; file changes are buffered and stored in batches; scans (start-up catch-up, lost
//! events, folders without a watch) turn markers that changed since last seen into writes.
//!
//! What it hands on is a [`NewRequest`]: stored, for the pipeline to run.
//!
//! ## Performance
//! A small marker is hashed and stored on the pipeline's own thread when the database is free
//! (two hand-offs to the blocking pool would cost more than the work); with `settle = "0s"` the
//! first HeadObject goes out before the marker is stored, and is judged once it is.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::config::{Config, Paths};
use crate::knobs::crash_point;
use crate::marker::{self, mtime_ns, MarkerSeen};
use crate::origin::{EarlyHead, Origin};
use crate::store::{self, changes, markers, requests, ChangeSeen, Pending, Source};
use crate::store::{Status, Store, StoreError};
use crate::verify::{FirstLook, Wake};
use crate::watch;

/// A request just stored, for the pipeline to run.
pub struct NewRequest {
    pub id: i64,
    /// The marker, relative to the root.
    pub rel: String,
    pub first: FirstLook,
    /// Signalled when a later write of the marker is merged into the request, or it is read.
    pub wake: Arc<Wake>,
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
    wake: Arc<Wake>,
}

/// How many unusable markers the intake remembers (see [`Intake::unusable`]).
const UNUSABLE_KEPT: usize = 1024;

/// Flush the change buffer at least this often, and whenever it holds this many paths.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
pub const FLUSH_AT: usize = 10_000;

/// The intake's state: which requests still take writes of their marker, the changes not yet
/// stored, and the markers already recorded as unusable.
pub struct Intake {
    cfg: Arc<Config>,
    store: Store,
    origin: Origin,
    /// Per marker path: writes of one marker coalesce; different markers are different requests,
    /// as each `.purge` upload was one Lambda invocation.
    open: HashMap<String, Open>,
    /// Changes not yet written to SQLite, one entry per path: a storm of rewrites of the same
    /// files costs memory per file, not per event; flushed in one transaction.
    changes: HashMap<String, ChangeSeen>,
    /// Markers whose last write was unusable, and the `failed` request their repeats fold into.
    /// At most [`UNUSABLE_KEPT`].
    unusable: HashMap<String, i64>,
    /// The watcher's: hears an uploader read a waiting marker.
    listener: Option<watch::Listener>,
}

impl Intake {
    /// `listener`: the watcher's, so a waiting request hears its marker read (None: it never
    /// does, and only polls).
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        origin: Origin,
        listener: Option<watch::Listener>,
    ) -> Intake {
        Intake {
            cfg,
            store,
            origin,
            listener,
            open: HashMap::new(),
            changes: HashMap::new(),
            unusable: HashMap::new(),
        }
    }

    /// A marker write: merged into the open request, or stored as a new one before anything else.
    pub async fn marker(
        &mut self,
        path: PathBuf,
        source: Source,
    ) -> Result<Option<NewRequest>, StoreError> {
        let Some(rel) = watch::relative(&self.cfg.watch.root, &path) else {
            return Ok(None);
        };
        if path.to_str().is_none() {
            // S3 keys are UTF-8; lsyncd cannot have synced this name as it is.
            self.flush_changes().await?;
            let detail = format!("marker path {rel:?} is not UTF-8: no S3 key can match it");
            self.unusable(rel, source, detail).await?;
            return Ok(None);
        }
        let open = self.open.get(&rel).map(|o| o.id);
        // With no settle time, ask S3 at once, while the marker is hashed and stored below on
        // another thread: the first check does not wait for the SQLite write.
        let early = (self.cfg.watch.settle.is_zero() && open.is_none() && source == Source::Watch)
            .then(|| EarlyHead::start(&self.origin, rel.clone()));
        if early.is_some() {
            // Let it reach the wire before anything else here runs.
            tokio::task::yield_now().await;
        }
        // The request owns the changes recorded up to its marker: store them first.
        self.flush_changes().await?;
        // One trip to the blocking pool (or none): hash the marker, then merge it into the open
        // request or store a new one. On an idle daemon each hand-off between threads is a wake-up.
        let paths = configured_paths(&self.cfg);
        let site = self.cfg.site.clone();
        let detail = match source {
            Source::Scan => "marker found changed by a scan",
            _ => "marker written",
        };
        let store_marker = move |c: &mut rusqlite::Connection, seen: MarkerSeen| {
            if let Some(id) = open {
                if requests::merge_marker(c, id, &seen)? {
                    return Ok(Stored::Merged(id));
                }
            }
            let id = requests::insert(c, &site, source, Some(&seen), &paths, detail)?;
            // Stored: from here no error may send the write round again (a busy fallback would
            // store it twice). Without this read the request reads its markers itself.
            Ok(Stored::New(id, markers::of_request(c, id).ok()))
        };
        // Read once, off the runtime's thread (a marker over 1 MiB is refused from its size,
        // a FIFO or a symlink without being opened as one), then stored in the same trip.
        let (store, p, r) = (self.store.clone(), path.clone(), rel.clone());
        let stored = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let seen = match marker::read_marker(&p, r) {
                Ok(s) => s,
                Err(e) => return Ok(Stored::Unread(e)),
            };
            store_marker(&mut store.lock(), seen)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        match stored {
            Stored::Unread(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Deleted before we could read it: nothing is left to purge for.
                info!(marker = %rel, "marker gone before it could be read; ignored");
                Ok(None)
            }
            Stored::Unread(e) => {
                // Unreadable, or not a regular file: recorded, so the operator sees why.
                let detail = format!("cannot use marker {rel}: {e}");
                self.unusable(rel, source, detail).await?;
                Ok(None)
            }
            Stored::Merged(id) => {
                self.unusable.remove(&rel);
                debug!(request = id, marker = %rel, "merged into the open request");
                if let Some(o) = self.open.get(&rel) {
                    o.wake.written.notify_one();
                }
                Ok(None)
            }
            Stored::New(id, stored) => {
                self.unusable.remove(&rel);
                crash_point("after_request_stored");
                info!(request = id, marker = %rel, "purge requested");
                let wake = Arc::new(Wake::new(self.listener.clone()));
                let open = Open {
                    id,
                    wake: wake.clone(),
                };
                self.open.insert(rel.clone(), open);
                let first = FirstLook {
                    stored,
                    head: early,
                };
                Ok(Some(NewRequest {
                    id,
                    rel,
                    first,
                    wake,
                }))
            }
        }
    }

    /// Records a marker that cannot be purged for. Unusable writes of one marker fold into one
    /// `failed` request that counts them, until a usable write: a flood of FIFOs renamed onto
    /// `.purge` is one row and one alert, not hundreds.
    async fn unusable(
        &mut self,
        rel: String,
        source: Source,
        detail: String,
    ) -> Result<(), StoreError> {
        if let Some(id) = self.unusable.get(&rel).copied() {
            let d = detail.clone();
            let folded = self
                .store
                .call(move |c| requests::repeat_failed(c, id, &d))
                .await?;
            if folded {
                return Ok(());
            }
        }
        warn!(marker = %crate::text::printable(&rel), %detail, "marker not usable");
        let site = self.cfg.site.clone();
        let r = rel.clone();
        let id = self
            .store
            .call(move |c| requests::insert_failed(c, &site, source, &r, &detail))
            .await?;
        if self.unusable.len() >= UNUSABLE_KEPT {
            // Bounded: forget one (a later unusable write of it is a row again).
            if let Some(k) = self.unusable.keys().next().cloned() {
                self.unusable.remove(&k);
            }
        }
        self.unusable.insert(rel, id);
        Ok(())
    }

    /// A folder appeared with files in it: they are changes, and its markers count as written.
    pub async fn appeared(
        &mut self,
        markers: Vec<PathBuf>,
        files: Vec<PathBuf>,
    ) -> Result<Vec<NewRequest>, StoreError> {
        for f in &files {
            self.change(f, false);
        }
        let mut new = Vec::new();
        for path in markers {
            new.extend(self.marker(path, Source::Watch).await?);
        }
        Ok(new)
    }

    /// Walks `dir` (events were lost, or folders lack a watch): markers that differ from what the
    /// database last saw become marker events.
    pub async fn scan(&mut self, dir: PathBuf) -> Result<Vec<NewRequest>, StoreError> {
        let marker = self.cfg.watch.marker.clone();
        let found = tokio::task::spawn_blocking(move || watch::find_files(&dir, &marker, false))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.changed_markers(found.markers).await
    }

    async fn changed_markers(
        &mut self,
        found: Vec<PathBuf>,
    ) -> Result<Vec<NewRequest>, StoreError> {
        let mut new = Vec::new();
        if found.is_empty() {
            return Ok(new);
        }
        let site = self.cfg.site.clone();
        let known = self.store.call(move |c| markers::known(c, &site)).await?;
        let root = self.cfg.watch.root.clone();
        // The stat of each marker is file I/O: off the runtime's thread.
        let changed = tokio::task::spawn_blocking(move || {
            found
                .into_iter()
                .filter(|path| {
                    let Some(rel) = watch::relative(&root, path) else {
                        return false;
                    };
                    let now = std::fs::symlink_metadata(path).map(|m| (m.len(), mtime_ns(&m)));
                    !matches!((known.get(&rel), now), (Some(&k), Ok(n)) if k == n)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        for path in changed {
            new.extend(self.marker(path, Source::Scan).await?);
        }
        Ok(new)
    }

    /// Markers written while the daemon was down, from the start-up walk. On the very first
    /// start they are only remembered: installing purgewatch must not purge for every old
    /// `.purge` in the tree.
    pub async fn catch_up(&mut self, found: Vec<PathBuf>) -> Result<Vec<NewRequest>, StoreError> {
        let site = self.cfg.site.clone();
        let first_start = self
            .store
            .call(move |c| store::first_start(c, &site))
            .await?;
        if first_start {
            let root = self.cfg.watch.root.clone();
            let seen: Vec<MarkerSeen> = tokio::task::spawn_blocking(move || {
                found
                    .into_iter()
                    .filter_map(|p| {
                        let rel = watch::relative(&root, &p)?;
                        marker::read_marker(&p, rel).ok()
                    })
                    .collect()
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            let n = seen.len();
            let site = self.cfg.site.clone();
            self.store
                .call(move |c| {
                    for s in &seen {
                        markers::remember(c, &site, s)?;
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
            return Ok(Vec::new());
        }
        if self.cfg.tracks_changes() {
            let why = "the daemon was stopped: changes made meanwhile are unknown".into();
            self.changes_unknown(why).await?;
        }
        self.changed_markers(found).await
    }

    /// A file written or removed: buffered, one entry per path. Returns how many are buffered.
    pub fn change(&mut self, path: &std::path::Path, deleted: bool) -> usize {
        let Some(rel) = watch::relative(&self.cfg.watch.root, path) else {
            return self.changes.len();
        };
        let now = store::now_text();
        self.changes
            .entry(rel.clone())
            .and_modify(|c| {
                c.deleted = deleted;
                c.last_seen.clone_from(&now);
            })
            .or_insert(ChangeSeen {
                rel,
                deleted,
                first_seen: now.clone(),
                last_seen: now,
            });
        self.changes.len()
    }

    /// Stores the buffered changes in one transaction.
    pub async fn flush_changes(&mut self) -> Result<(), StoreError> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let batch: Vec<ChangeSeen> = self.changes.drain().map(|(_, c)| c).collect();
        debug!(changes = batch.len(), "recording changes");
        let site = self.cfg.site.clone();
        self.store
            .call(move |c| changes::record(c, &site, &batch))
            .await?;
        Ok(())
    }

    /// The change set misses changes (events lost, the daemon was down): the next purge says so.
    pub async fn changes_unknown(&mut self, why: String) -> Result<(), StoreError> {
        self.flush_changes().await?;
        warn!(reason = %why, "the change set is incomplete; the next purge falls back to /*");
        let site = self.cfg.site.clone();
        self.store
            .call(move |c| changes::unknown(c, &site, &why))
            .await?;
        Ok(())
    }

    /// A request resumed at start: one still waiting for its origin takes later writes of its
    /// marker. Returns what those writes (and an uploader's reads) signal.
    pub fn resumed(&mut self, p: &Pending) -> Arc<Wake> {
        let wake = Arc::new(Wake::new(self.listener.clone()));
        if p.status == Status::WaitingForOrigin {
            let open = Open {
                id: p.id,
                wake: wake.clone(),
            };
            self.open.insert(p.marker.clone(), open);
        }
        wake
    }

    /// A marker was read to its close by another process: its waiting request looks now.
    pub fn heard(&self, path: &std::path::Path) {
        let Some(rel) = watch::relative(&self.cfg.watch.root, path) else {
            return;
        };
        if let Some(o) = self.open.get(&rel) {
            o.wake.read.notify_one();
        }
    }

    /// The request's task ended: later writes of its marker make a new request.
    pub fn ended(&mut self, id: i64) {
        self.open.retain(|_, o| o.id != id);
    }
}

/// The paths a request starts with, under `path_prefix`; the pipeline settles them once
/// verified (a manual purge keeps them).
pub fn configured_paths(cfg: &Config) -> Vec<String> {
    let paths = match &cfg.cloudfront.paths {
        Paths::Fixed(p) => p.clone(),
        Paths::Changed => vec!["/*".into()],
    };
    crate::paths::under_prefix(&cfg.cloudfront.path_prefix, paths)
}
