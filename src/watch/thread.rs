//! The watch thread: [`start`] sets a watch on every folder of the tree, then a thread of its
//! own blocks on poll(2) over the inotify descriptor and a stop socket and turns each event
//! into a [`WatchEvent`], or raises [`Lost`] when events may have been missed.
//!
//! A new folder is watched first and listed second: a marker written into it is either already
//! there for the listing or caught by the watch. After a kernel queue overflow, or when a
//! removed root comes back, the whole tree is walked again (watches for folders that lack one)
//! and the pipeline rescans it. When the kernel's watch limit is reached the thread says so
//! once, with the limit needed, keeps serving the folders it watches and sets
//! [`Lost::degraded`] so that the pipeline scans the tree periodically.
//!
//! The watches are added with inotify_add_watch(2) on the raw descriptor rather than through
//! the `inotify` crate's `Watches`, so that the threads of the start-up walk can share it.
//!
//! ## Performance
//! - Batching under load. A wake-up of this thread costs about the same whatever it reads, so
//!   when events keep coming (the last wake-up was less than `BUSY` ago) the thread pauses
//!   `GATHER` after handling a read, and the next read, made without polling, takes a batch
//!   instead of one event. An event arriving alone is handled at once; a marker in a storm
//!   waits at most `GATHER`. The kernel queue (fs.inotify.max_queued_events) holds far more
//!   than a pause lets in, and a read of `BEHIND` events or more is followed by the next at
//!   once. BENCHMARKS.md has the wake-ups and CPU this saves in a paced storm.
//! - The start-up walk runs on up to four threads (see the `walk` module) and returns the walk
//!   threads' freed buffers to the kernel (`malloc_trim`) before the daemon reports ready.
//! - The hot path: a file event's name is compared with the marker's before any path is built
//!   or allocated.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use libc::{ENOSPC, ENOTDIR};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::folders::Folders;
use super::walk::{walk, walk_parallel, with_c_path, Found, Listing, Visit};
use super::{count_folders, Listener, Lost, Started, Watch, WatchError, WatchEvent};

/// Folder watches: only what a marker or a new folder can cause. IN_ONLYDIR and IN_DONT_FOLLOW
/// keep a symlink from taking the watch out of the tree.
fn mask(track_changes: bool) -> WatchMask {
    let m = WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::CREATE
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW;
    if track_changes {
        m | WatchMask::DELETE | WatchMask::MOVED_FROM
    } else {
        m
    }
}

struct Watcher {
    /// The inotify descriptor (owned by the `Inotify` that `run` reads).
    fd: i32,
    root: PathBuf,
    marker: OsString,
    /// Report every file change, not only markers (`paths = "changed"` or `wait_for = "changes"`).
    track_changes: bool,
    folders: Folders,
    tx: mpsc::Sender<WatchEvent>,
    lost: Arc<Lost>,
    stopping: Arc<AtomicBool>,
    /// Said once: repeating "out of watches" for every new folder helps nobody.
    warned_limit: bool,
    /// The root itself was removed: look for it once a second until it is back.
    root_gone: bool,
    /// Test knob: act as if the kernel refused watches past this many.
    max_watches: Option<usize>,
    /// Folders whose watch also asks for CLOSE_NOWRITE, with how many waits listen there.
    listening: std::collections::HashMap<PathBuf, usize>,
}

/// How often a removed root is looked for (only while it is missing).
const ROOT_POLL_MS: i32 = 1000;

/// Batching under load (see the module doc): events keep coming when the last wake-up was
/// less than this ago.
const BUSY: Duration = Duration::from_millis(5);
/// The pause after a read while busy, so that the next read takes a batch: the longest a
/// marker in a storm waits.
const GATHER: Duration = Duration::from_millis(5);
/// A read this full means we are behind: read again at once.
const BEHIND: usize = 512;

/// Starts watching `root` recursively; returns once every folder's watch is set, with the
/// markers the walk found.
pub fn start(
    root: &Path,
    marker: &str,
    track_changes: bool,
    tx: mpsc::Sender<WatchEvent>,
    lost: Arc<Lost>,
    knobs: &crate::knobs::Knobs,
) -> Result<Started, WatchError> {
    let io_err = |source| WatchError::Io {
        path: root.display().to_string(),
        source,
    };
    // A missing root is the caller's to handle (the site waits for it); the walk would
    // otherwise find nothing and watch nothing.
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(io_err(std::io::Error::from_raw_os_error(ENOTDIR))),
        Err(e) => return Err(io_err(e)),
    }
    let inotify = Inotify::init().map_err(io_err)?;
    let mut w = Watcher {
        fd: inotify.as_raw_fd(),
        root: root.to_owned(),
        marker: OsString::from(marker),
        track_changes,
        folders: Folders::default(),
        tx,
        lost,
        warned_limit: false,
        root_gone: false,
        max_watches: knobs.max_watches,
        stopping: Arc::new(AtomicBool::new(false)),
        listening: Default::default(),
    };
    let t0 = Instant::now();
    let (found, added) = w.add_whole_tree();
    w.folders.compact();
    w.lost.watched.store(w.folders.len(), Ordering::Relaxed);
    // SAFETY: no preconditions; returns the walk threads' freed buffers to the kernel.
    unsafe { libc::malloc_trim(0) };
    info!(
        folders = w.folders.len(),
        markers = found.markers.len(),
        ms = t0.elapsed().as_millis() as u64,
        "every folder watched"
    );
    match added {
        Ok(()) => {}
        Err(AddError::Limit(path)) => w.out_of_watches(&path),
        Err(AddError::Io(path, source)) => {
            return Err(WatchError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    }
    let (stop, stopped) = UnixStream::pair().map_err(io_err)?;
    let (wake, woken) = UnixStream::pair().map_err(io_err)?;
    woken.set_nonblocking(true).map_err(io_err)?;
    let listener = Listener::new(wake);
    let stopping = w.stopping.clone();
    let asked = listener.clone();
    let thread = std::thread::Builder::new()
        .name("purgewatch-watch".into())
        .spawn(move || w.run(inotify, stopped, woken, asked))
        .map_err(io_err)?;
    Ok(Started {
        watch: Watch {
            stop: Some(stop),
            stopping,
            thread: Some(thread),
        },
        listener,
        markers: found.markers,
    })
}

enum AddError {
    /// ENOSPC: fs.inotify.max_user_watches reached.
    Limit(PathBuf),
    Io(PathBuf, std::io::Error),
}

/// inotify_add_watch(2) on the raw descriptor, so the threads of the start-up walk can share it.
fn add_watch(fd: i32, path: &Path, mask: u32) -> std::io::Result<i32> {
    // SAFETY: `fd` is the open inotify descriptor; `c` is NUL-terminated.
    let wd = with_c_path(&[path.as_os_str().as_bytes()], |c| unsafe {
        libc::inotify_add_watch(fd, c.as_ptr(), mask)
    })?;
    if wd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(wd)
    }
}

/// Records a watch just added and says whether its folder needs listing; an error that ends
/// the walk goes into `failure`.
fn after_add(
    added: std::io::Result<i32>,
    path: &Path,
    root: &Path,
    folders: &mut Folders,
    relist: bool,
    failure: &mut Option<AddError>,
) -> Visit {
    match added {
        // Re-adding a folder (moved within the tree) returns its old descriptor: the path is
        // updated so later events name the new place, and the folder is listed again.
        Ok(wd) => {
            let rel = path.strip_prefix(root).unwrap_or(path);
            if folders.set(wd, rel.as_os_str().as_bytes()) || relist {
                Visit::List
            } else {
                Visit::Skip
            }
        }
        Err(e) if e.raw_os_error() == Some(ENOSPC) => {
            *failure = Some(AddError::Limit(path.to_owned()));
            Visit::Stop
        }
        // Gone, or replaced by a file (ENOTDIR) or a symlink.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(ENOTDIR) => {
            Visit::Skip
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // Markers in there can never be read either: say so, serve the rest.
            warn!(folder = %path.display(), "no read access; folder not watched (see purgewatch check)");
            Visit::Skip
        }
        Err(e) => {
            *failure = Some(AddError::Io(path.to_owned(), e));
            Visit::Stop
        }
    }
}

impl Watcher {
    /// Watches `dir` and every folder below it, each watch set before its folder is listed, and
    /// collects the markers (with `files`, every regular file) met on the way. A folder already
    /// watched at this path was listed when its watch was set and is skipped, unless `relist`
    /// (events were lost). A folder that vanished meanwhile is skipped.
    fn add_tree(
        &mut self,
        dir: &Path,
        found: &mut Found,
        files: bool,
        relist: bool,
    ) -> Result<(), AddError> {
        let (fd, mask) = (self.fd, mask(self.track_changes).bits());
        let (marker, root) = (self.marker.clone(), self.root.clone());
        let mut failure = None;
        let cap = self.max_watches;
        let listening = &self.listening;
        walk(dir, &marker, Listing::with_files(files), found, |path| {
            if cap.is_some_and(|c| self.folders.len() >= c) {
                failure = Some(AddError::Limit(path.to_owned()));
                return Visit::Stop;
            }
            // A folder watched again keeps hearing reads while a marker in it waits.
            let mask = if listening.contains_key(path) {
                mask | WatchMask::CLOSE_NOWRITE.bits()
            } else {
                mask
            };
            let added = add_watch(fd, path, mask);
            after_add(added, path, &root, &mut self.folders, relist, &mut failure)
        });
        failure.map_or(Ok(()), Err)
    }

    /// The start-up walk: the whole tree, on every core (see [`walk_parallel`]). What was found
    /// before an error stays found.
    fn add_whole_tree(&mut self) -> (Found, Result<(), AddError>) {
        let (fd, mask) = (self.fd, mask(self.track_changes).bits());
        let (marker, root) = (self.marker.clone(), self.root.clone());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let cap = self.max_watches;
        let shared = std::sync::Mutex::new((&mut self.folders, None));
        let found = walk_parallel(&root, &marker, Listing::Markers, threads, |path| {
            let lock = || shared.lock().unwrap_or_else(|e| e.into_inner());
            if cap.is_some_and(|c| lock().0.len() >= c) {
                lock().1 = Some(AddError::Limit(path.to_owned()));
                return Visit::Stop;
            }
            let added = add_watch(fd, path, mask);
            let mut guard = lock();
            let (folders, failure) = &mut *guard;
            after_add(added, path, &root, folders, false, failure)
        });
        let (_, failure) = shared.into_inner().unwrap_or_else(|e| e.into_inner());
        (found, failure.map_or(Ok(()), Err))
    }

    /// Blocks on poll(2) over the inotify descriptor and the stop socket; no runtime needed.
    fn run(
        mut self,
        mut inotify: Inotify,
        stopped: UnixStream,
        woken: UnixStream,
        asked: Listener,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_wake = Instant::now() - BUSY;
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: inotify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stopped.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: woken.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let timeout = if self.root_gone { ROOT_POLL_MS } else { -1 };
            // SAFETY: three valid pollfd structs, every descriptor open for the whole call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return error!(error = %e, "inotify poll failed");
            }
            if fds[1].revents != 0 {
                return; // the other end was closed: stop
            }
            if fds[2].revents != 0 {
                use std::io::Read;
                let mut drain = [0u8; 64];
                while matches!((&woken).read(&mut drain), Ok(n) if n > 0) {}
                for (folder, on) in asked.take() {
                    self.listen(folder, on);
                }
                if fds[0].revents == 0 {
                    continue;
                }
            }
            if n == 0 {
                if self.root_gone && self.root.is_dir() {
                    info!(root = %self.root.display(), "the watch root is back; rescanning");
                    self.root_gone = false;
                    self.on_new_dir(self.root.clone());
                }
                continue;
            }
            let mut gather = last_wake.elapsed() < BUSY;
            last_wake = Instant::now();
            let mut count = self.read_once(&mut inotify, &mut buf);
            // Under load: pause, then read again without polling (the queue is rarely empty by
            // then), until a read finds it empty. A full read is read after at once.
            while count > 0 && (gather || count >= BEHIND) && !self.stopping.load(Ordering::Relaxed)
            {
                if count < BEHIND {
                    std::thread::sleep(GATHER);
                }
                // A wait starting or ending in a storm is not held up by it.
                for (folder, on) in asked.take() {
                    self.listen(folder, on);
                }
                last_wake = Instant::now();
                count = self.read_once(&mut inotify, &mut buf);
                gather = true;
            }
        }
    }

    /// One read of the queue, every event handled; how many there were.
    fn read_once(&mut self, inotify: &mut Inotify, buf: &mut [u8]) -> usize {
        let mut count = 0;
        match inotify.read_events(buf) {
            Ok(events) => {
                // In order: a folder created before a marker is watched and reported first.
                for ev in events {
                    count += 1;
                    self.on_event(ev.wd, ev.mask, ev.name);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                error!(error = %e, "reading inotify failed; rescanning");
                self.lost.raise();
                std::thread::sleep(GATHER); // not a busy loop if it keeps failing
            }
        }
        count
    }

    /// `root/rel/name`.
    fn path(&self, rel: &[u8], name: &OsStr) -> PathBuf {
        let mut p = self.root.clone();
        if !rel.is_empty() {
            p.push(OsStr::from_bytes(rel));
        }
        p.push(name);
        p
    }

    /// The path of `name` in the folder of `wd`, if that folder is known.
    fn path_in(&self, wd: i32, name: &OsStr) -> Option<PathBuf> {
        self.folders.get(wd).map(|rel| self.path(rel, name))
    }

    fn on_event(&mut self, wd: WatchDescriptor, mask: EventMask, name: Option<&OsStr>) {
        let wd = wd.get_watch_descriptor_id();
        if mask.contains(EventMask::Q_OVERFLOW) {
            warn!("the kernel dropped file events (queue overflow); rescanning for markers");
            // Folders created meanwhile may lack a watch: walk the whole tree again.
            self.on_new_dir(self.root.clone());
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            if self.folders.remove(wd) == Some(true) {
                warn!(root = %self.root.display(), "the watch root was removed; waiting for it to come back");
                self.root_gone = true;
            }
            self.lost
                .watched
                .store(self.folders.len(), Ordering::Relaxed);
            return;
        }
        let Some(name) = name else { return };
        let is_dir = mask.contains(EventMask::ISDIR);
        if is_dir {
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                if let Some(dir) = self.path_in(wd, name) {
                    self.on_new_dir(dir);
                }
            } else if self.track_changes && mask.contains(EventMask::MOVED_FROM) {
                if let Some(dir) = self.path_in(wd, name) {
                    let why = format!("folder {} moved away", dir.display());
                    self.send(WatchEvent::ChangesUnknown(why));
                }
            }
            return;
        }
        let written = mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO);
        // The hot path: one comparison, no allocation, for every file that is not the marker.
        if name == self.marker.as_os_str() {
            if written {
                if let Some(path) = self.path_in(wd, name) {
                    self.send(WatchEvent::Marker(path));
                }
            } else if mask.contains(EventMask::CLOSE_NOWRITE) {
                // Only where a marker waits (see `listen`); our own reads are not an upload.
                if let Some(path) = self.path_in(wd, name) {
                    if !crate::marker::take_own_read(&path) {
                        self.send(WatchEvent::Read(path));
                    }
                }
            }
            return;
        }
        if !self.track_changes {
            return;
        }
        let deleted = mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM);
        if written || deleted {
            if let Some(path) = self.path_in(wd, name) {
                self.send(WatchEvent::Change { path, deleted });
            }
        }
    }

    /// Watch first, then list: a marker written into the folder is either already there for
    /// the listing or caught by the watch. The whole tree (after a queue overflow, or the root
    /// coming back) is listed again in full and the pipeline rescans it against the database.
    fn on_new_dir(&mut self, dir: PathBuf) {
        let whole_tree = dir == self.root;
        let mut found = Found::default();
        let files = self.track_changes && !whole_tree;
        match self.add_tree(&dir, &mut found, files, whole_tree) {
            Ok(()) => {}
            Err(AddError::Limit(at)) => self.out_of_watches(&at),
            Err(AddError::Io(at, e)) => warn!(folder = %at.display(), error = %e, "cannot watch"),
        }
        self.lost
            .watched
            .store(self.folders.len(), Ordering::Relaxed);
        if whole_tree {
            self.lost.raise();
        } else if !found.markers.is_empty() || !found.files.is_empty() {
            self.send(WatchEvent::Appeared {
                markers: found.markers,
                files: found.files,
            });
        }
    }

    /// Starts (`on`) or stops hearing reads in `folder`: its watch's mask with or without
    /// CLOSE_NOWRITE, counted per waiting marker. Only a folder already watched: a watch made
    /// here would be one the tree's arena does not know, so it is removed again.
    fn listen(&mut self, folder: PathBuf, on: bool) {
        let n = self.listening.get(&folder).copied().unwrap_or(0);
        let now = if on { n + 1 } else { n.saturating_sub(1) };
        if (n == 0) == (now == 0) {
            if now > 0 {
                self.listening.insert(folder, now);
            }
            return; // no change of mask
        }
        let base = mask(self.track_changes).bits();
        let mask = if now > 0 {
            base | WatchMask::CLOSE_NOWRITE.bits()
        } else {
            base
        };
        match add_watch(self.fd, &folder, mask) {
            Ok(wd) if self.folders.get(wd).is_some() => {
                if now > 0 {
                    self.listening.insert(folder, now);
                } else {
                    self.listening.remove(&folder);
                }
            }
            Ok(wd) => {
                // SAFETY: `wd` was just returned for this descriptor.
                unsafe { libc::inotify_rm_watch(self.fd, wd) };
                self.listening.remove(&folder);
            }
            // Gone meanwhile: nothing to hear, nothing to restore.
            Err(_) => {
                self.listening.remove(&folder);
            }
        }
    }

    /// Says once, with the number needed, that the kernel's watch limit was reached; keeps
    /// serving the watched folders and asks the pipeline to scan the tree periodically.
    fn out_of_watches(&mut self, at: &Path) {
        self.lost.degraded.store(true, Ordering::SeqCst);
        self.lost.wake.notify_one();
        if self.warned_limit {
            // One more folder (and what is below it) refused: counted as one, not walked.
            self.lost.unwatched.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.warned_limit = true;
        let folders = count_folders(&self.root);
        let unwatched = folders.saturating_sub(self.folders.len());
        self.lost.unwatched.store(unwatched, Ordering::Relaxed);
        error!(
            folder = %at.display(),
            watched = self.folders.len(),
            folders,
            "inotify ran out of watches: raise fs.inotify.max_user_watches to at least {} \
             (e.g. sysctl fs.inotify.max_user_watches={}); until then folders without a watch \
             are scanned for markers every watch.fallback_scan",
            folders,
            (folders * 2).max(65_536)
        );
    }

    fn send(&self, ev: WatchEvent) {
        if self.tx.try_send(ev).is_err() {
            // Full (or closing): never drop a marker, look for it again instead.
            self.lost.raise();
        }
    }
}
