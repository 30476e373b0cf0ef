//! inotify → marker events, on a thread of its own.
//!
//! Built on the `inotify` crate (notify's own Linux backend) rather than notify itself, for two
//! reasons measured here: notify hands a new folder's event to us *before* it adds the folder's
//! watch, so a marker written at once into a new folder could fall between our scan and its
//! watch (a lost purge); and notify always asks for IN_OPEN and stats every file, which floods
//! the kernel queue on big trees. Here a new folder is watched first and scanned second, the
//! mask holds only what a marker needs, and an event's name is compared with the marker's before
//! any path is built — the other files of a deploy cost one comparison each.
//!
//! The tree is listed once: the walk that sets the watches also reports the markers (and, with
//! change tracking, the files) it passes, so neither the start-up catch-up nor a new folder
//! costs a second listing. Folders are read with `readdir` (d_type, no stat, no allocation per
//! file). A folder already watched at the same path is not listed again, so the CREATE events
//! of a `cp -r` for folders the walk already covered cost one `inotify_add_watch` each.
//!
//! Markers are never dropped: a kernel queue overflow or a full channel raises [`Lost`], and the
//! pipeline answers with a rescan of the tree.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::sync::{mpsc, Notify};
use tracing::{error, info, warn};

/// What the watcher tells the pipeline.
#[derive(Debug)]
pub enum WatchEvent {
    /// A file named like the marker was closed after writing or renamed into place.
    Marker(PathBuf),
    /// A folder appeared (created or moved in). Its watch is set and these files were already in
    /// it (`files`: only with change tracking). Written before the watch, they had no event.
    Appeared {
        markers: Vec<PathBuf>,
        files: Vec<PathBuf>,
    },
    /// With change tracking: another file was written, renamed into place (`deleted` false),
    /// removed or renamed away (`deleted` true).
    Change { path: PathBuf, deleted: bool },
    /// With change tracking: something happened whose files we cannot list (a folder moved away).
    ChangesUnknown(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Raised when events were lost; the pipeline answers with a rescan.
#[derive(Default)]
pub struct Lost {
    flag: AtomicBool,
    /// Times events were lost since start.
    pub count: AtomicU64,
    pub wake: Notify,
    /// Some folders have no watch (fs.inotify.max_user_watches reached): scan periodically.
    pub degraded: AtomicBool,
}

impl Lost {
    fn raise(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// True once per raise.
    pub fn take(&self) -> bool {
        self.flag.swap(false, Ordering::SeqCst)
    }
}

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

/// Keeps the watch thread alive; [`Watch::stop`] (or dropping it) ends the thread.
pub struct Watch {
    /// Closing this end wakes the thread's poll (hang-up on its end): it returns.
    stop: Option<UnixStream>,
    /// Set before closing: ends the reads of a busy spell, which do not poll.
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop.take();
    }
}

/// What the start-up walk found besides setting the watches.
pub struct Started {
    pub watch: Watch,
    /// Every marker in the tree when its folder was listed (after its watch was set).
    pub markers: Vec<PathBuf>,
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
}

/// How often a removed root is looked for (only while it is missing).
const ROOT_POLL_MS: i32 = 1000;

/// Batching under load: when events keep coming (the last wake-up was less than `BUSY` ago),
/// the thread pauses `GATHER` after handling a read, so the next read takes a batch instead of
/// waking up once per event. An event arriving alone is handled at once; a marker in a storm
/// waits at most `GATHER`. The kernel queue (16,384 events) holds far more than a pause lets in,
/// and a read of `BEHIND` events or more is followed by the next at once. Each wake-up costs
/// ~20 µs on a 2-core VM whatever it reads: 5 ms pauses took the paced storm (5,000 writes/s)
/// from ~10,000 wake-ups to ~4,000 (BENCHMARKS.md).
const BUSY: Duration = Duration::from_millis(5);
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
) -> Result<Started, WatchError> {
    let io_err = |source| WatchError::Io {
        path: root.display().to_string(),
        source,
    };
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
        stopping: Arc::new(AtomicBool::new(false)),
    };
    let t0 = Instant::now();
    let (found, added) = w.add_whole_tree();
    w.folders.compact();
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
    let stopping = w.stopping.clone();
    let thread = std::thread::Builder::new()
        .name("purgewatch-watch".into())
        .spawn(move || w.run(inotify, stopped))
        .map_err(io_err)?;
    Ok(Started {
        watch: Watch {
            stop: Some(stop),
            stopping,
            thread: Some(thread),
        },
        markers: found.markers,
    })
}

/// Folder paths by watch descriptor, relative to the root and packed into one byte arena: a
/// folder costs its path plus a 12-byte span, not a PathBuf allocation plus a 40-byte map
/// entry (BENCHMARKS.md: RSS per folder). The spans are a Vec sorted by descriptor, not a hash
/// map: the kernel hands descriptors out in increasing order (idr_alloc_cyclic), so a new folder
/// is a push and memory grows by exactly one span per folder, where a map doubles its table in
/// steps. Replaced and removed entries are garbage until compaction, which happens once they
/// outweigh the live ones.
#[derive(Default)]
struct Folders {
    arena: Vec<u8>,
    spans: Vec<Span>,
    /// Spans not `GONE`.
    live: usize,
    /// Arena bytes no live span points to.
    garbage: usize,
}

#[derive(Clone, Copy)]
struct Span {
    wd: i32,
    at: u32,
    len: u32,
}

/// The length of a removed folder's span (a tombstone until compaction).
const GONE: u32 = u32::MAX;

impl Folders {
    fn len(&self) -> usize {
        self.live
    }

    fn find(&self, wd: i32) -> Result<usize, usize> {
        // Nearly always the newest descriptor, or one near it: look at the end first.
        match self.spans.last() {
            Some(last) if last.wd == wd => Ok(self.spans.len() - 1),
            Some(last) if last.wd < wd => Err(self.spans.len()),
            _ => self.spans.binary_search_by_key(&wd, |s| s.wd),
        }
    }

    fn path(&self, s: Span) -> Option<&[u8]> {
        if s.len == GONE {
            return None;
        }
        self.arena.get(s.at as usize..(s.at + s.len) as usize)
    }

    fn get(&self, wd: i32) -> Option<&[u8]> {
        self.path(self.spans[self.find(wd).ok()?])
    }

    /// Records `rel` for `wd`; false when `wd` already had exactly this path.
    fn set(&mut self, wd: i32, rel: &[u8]) -> bool {
        let span = Span {
            wd,
            at: self.arena.len() as u32,
            len: rel.len() as u32,
        };
        match self.find(wd) {
            Ok(i) => {
                let old = self.spans[i];
                match self.path(old) {
                    Some(p) if p == rel => return false,
                    Some(_) => self.garbage += old.len as usize,
                    None => self.live += 1,
                }
                self.spans[i] = span;
            }
            Err(i) => {
                self.spans.insert(i, span);
                self.live += 1;
            }
        }
        self.arena.extend_from_slice(rel);
        self.compact_if_needed();
        true
    }

    /// Forgets `wd`; `Some(true)` when it was the root (empty relative path).
    fn remove(&mut self, wd: i32) -> Option<bool> {
        let i = self.find(wd).ok()?;
        let len = self.spans[i].len;
        if len == GONE {
            return None;
        }
        self.spans[i].len = GONE;
        self.live -= 1;
        self.garbage += len as usize;
        self.compact_if_needed();
        Some(len == 0)
    }

    fn compact_if_needed(&mut self) {
        let dead = self.spans.len() - self.live;
        let arena_wasted = self.garbage >= 1 << 16 && self.garbage >= self.arena.len() / 2;
        let spans_wasted = dead >= 1 << 12 && dead >= self.live;
        if arena_wasted || spans_wasted {
            self.compact();
        }
    }

    /// Drops the garbage and gives spare capacity back: after the start-up walk, memory is
    /// what the folders need, whatever the growth steps were.
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        self.spans.retain(|s| s.len != GONE);
        for span in &mut self.spans {
            let (at, len) = (span.at as usize, span.len as usize);
            let new_at = arena.len() as u32;
            arena.extend_from_slice(&self.arena[at..at + len]);
            span.at = new_at;
        }
        self.spans.shrink_to_fit();
        self.arena = arena;
        self.garbage = 0;
    }
}

// To tell the watch limit from a vanished (or replaced) folder.
const ENOSPC: i32 = libc::ENOSPC;
const ENOTDIR: i32 = libc::ENOTDIR;
const ELOOP: i32 = libc::ELOOP;

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

/// Calls `f` with `parts` joined into a NUL-terminated path, built on the stack when it fits
/// (as std does for its own calls): the start-up walk makes a few system calls per folder, and
/// an allocation for each would cost more than some of them. A NUL inside is InvalidInput.
fn with_c_path<R>(parts: &[&[u8]], f: impl FnOnce(&CStr) -> R) -> std::io::Result<R> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut stack = [0u8; 512];
    let mut heap = Vec::new();
    let buf = if len < stack.len() {
        &mut stack[..=len]
    } else {
        heap.resize(len + 1, 0);
        &mut heap[..]
    };
    let mut at = 0;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    buf[len] = 0;
    CStr::from_bytes_with_nul(buf)
        .map(f)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
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
        walk(dir, &marker, Listing::with_files(files), found, |path| {
            if test_watch_cap_reached(self.folders.len()) {
                failure = Some(AddError::Limit(path.to_owned()));
                return Visit::Stop;
            }
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
        let shared = std::sync::Mutex::new((&mut self.folders, None));
        let found = walk_parallel(&root, &marker, Listing::Markers, threads, |path| {
            let lock = || shared.lock().unwrap_or_else(|e| e.into_inner());
            if test_watch_cap_reached(lock().0.len()) {
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
    fn run(mut self, mut inotify: Inotify, stopped: UnixStream) {
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
            ];
            let timeout = if self.root_gone { ROOT_POLL_MS } else { -1 };
            // SAFETY: two valid pollfd structs, both descriptors open for the whole call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
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
        if whole_tree {
            self.lost.raise();
        } else if !found.markers.is_empty() || !found.files.is_empty() {
            self.send(WatchEvent::Appeared {
                markers: found.markers,
                files: found.files,
            });
        }
    }

    /// Says once, with the number needed, that the kernel's watch limit was reached; keeps
    /// serving the watched folders and asks the pipeline to scan the tree periodically.
    fn out_of_watches(&mut self, at: &Path) {
        self.lost.degraded.store(true, Ordering::SeqCst);
        self.lost.wake.notify_one();
        if self.warned_limit {
            return;
        }
        self.warned_limit = true;
        let folders = count_folders(&self.root);
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

/// Test seam (feature `failpoints` only): PURGEWATCH_TEST_MAX_WATCHES=N behaves as if the
/// kernel refused the watch after N, so the fallback can be tested without lowering the
/// machine-wide fs.inotify.max_user_watches under other tests.
#[cfg(feature = "failpoints")]
fn test_watch_cap_reached(watched: usize) -> bool {
    std::env::var("PURGEWATCH_TEST_MAX_WATCHES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|cap| watched >= cap)
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
fn test_watch_cap_reached(_watched: usize) -> bool {
    false
}

/// What a walk met besides folders.
#[derive(Default, Debug)]
pub struct Found {
    pub markers: Vec<PathBuf>,
    /// Every other regular file, when asked for.
    pub files: Vec<PathBuf>,
    /// Folders visited (listed or not).
    pub folders: usize,
    /// Folders that could not be listed: markers there are never seen.
    pub unreadable: Vec<PathBuf>,
}

/// What to do with a folder a walk reached.
enum Visit {
    List,
    Skip,
    Stop,
}

/// Walks `root` depth-first, never following symlinks below it: `visit` decides for every folder
/// (before it is listed) whether to list it; markers, and with `files` every other regular file,
/// go into `found`.
fn walk(
    root: &Path,
    marker: &OsStr,
    listing: Listing,
    found: &mut Found,
    mut visit: impl FnMut(&Path) -> Visit,
) {
    let mut lister = Lister::new(root, marker, listing);
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        found.folders += 1;
        match visit(&dir) {
            Visit::List => {}
            Visit::Skip => continue,
            Visit::Stop => return,
        }
        lister.list(dir, found, &mut stack);
    }
}

/// The same walk on `threads` threads sharing one stack of folders to visit: listing folders is
/// most of a start on a big tree, and it parallelises (the kernel serialises only the insertion
/// of each watch). `visit` runs on every thread; each thread's findings are merged at the end.
fn walk_parallel(
    root: &Path,
    marker: &OsStr,
    listing: Listing,
    threads: usize,
    visit: impl Fn(&Path) -> Visit + Sync,
) -> Found {
    use std::sync::{Condvar, Mutex};
    struct Queue {
        stack: Vec<PathBuf>,
        /// Folders taken and not yet listed: the walk ends when none are left and the stack
        /// is empty.
        taken: usize,
        /// Threads waiting for folders: woken only when there are some (a wake-up is a
        /// system call; the walk runs ~10⁵ folders).
        idle: usize,
        stop: bool,
    }
    let queue = Mutex::new(Queue {
        stack: vec![root.to_owned()],
        taken: 0,
        idle: 0,
        stop: false,
    });
    let more = Condvar::new();
    let worker = || {
        let mut found = Found::default();
        let mut lister = Lister::new(root, marker, listing);
        let mut children = Vec::new();
        loop {
            let dir = {
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if q.stop {
                        break None;
                    }
                    if let Some(d) = q.stack.pop() {
                        q.taken += 1;
                        break Some(d);
                    }
                    if q.taken == 0 {
                        break None;
                    }
                    q.idle += 1;
                    q = more.wait(q).unwrap_or_else(|e| e.into_inner());
                    q.idle -= 1;
                }
            };
            let Some(dir) = dir else { break };
            found.folders += 1;
            let stop = match visit(&dir) {
                Visit::List => {
                    lister.list(dir, &mut found, &mut children);
                    false
                }
                Visit::Skip => false,
                Visit::Stop => true,
            };
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            q.taken -= 1;
            q.stop |= stop;
            q.stack.append(&mut children);
            // Waiters need a folder, the end of the walk, or a stop.
            let wake = q.idle > 0 && (!q.stack.is_empty() || q.taken == 0 || q.stop);
            drop(q);
            if wake {
                more.notify_all();
            }
        }
        found
    };
    let mut total = Found::default();
    std::thread::scope(|s| {
        let others: Vec<_> = (1..threads.max(1)).map(|_| s.spawn(worker)).collect();
        let mut parts = vec![worker()];
        parts.extend(others.into_iter().filter_map(|h| h.join().ok()));
        for mut f in parts {
            total.folders += f.folders;
            total.markers.append(&mut f.markers);
            total.files.append(&mut f.files);
            total.unreadable.append(&mut f.unreadable);
        }
    });
    total
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Dir,
    File,
    Other,
    Unknown,
}

/// What a walk must learn from each folder.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Listing {
    /// Subfolders and markers. A leaf folder (no subfolder, by its link count) is not listed:
    /// its marker is looked up by name, so the walk costs per folder, not per file.
    Markers,
    /// Subfolders, markers and every other regular file (change tracking).
    Files,
    /// Subfolders and markers, every folder listed: finds the folders that cannot be read.
    Survey,
}

impl Listing {
    /// Every file too (change tracking), or only markers.
    fn with_files(files: bool) -> Listing {
        if files {
            Listing::Files
        } else {
            Listing::Markers
        }
    }
}

/// File systems known to keep the Unix link count of folders (2 + subfolders), where a count
/// of 2 proves a leaf (as GNU find's leaf optimisation assumes): tmpfs, ext2/3/4, xfs. btrfs
/// (always 1), network and FUSE file systems are listed in full.
fn keeps_folder_link_counts(path: &Path) -> bool {
    const TMPFS: i64 = 0x0102_1994;
    const EXT234: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, TMPFS | EXT234 | XFS)
}

/// Lists folders with getdents64(2) into one reused buffer: each entry's name and d_type,
/// without a stat or an allocation per entry (readdir(3) would add an fstat and a 32 KiB
/// allocation per folder).
struct Lister<'a> {
    marker: &'a [u8],
    listing: Listing,
    /// With [`Listing::Markers`] on a file system that keeps link counts: the device of the
    /// root, so that a folder mounted from elsewhere is listed in full.
    leaf_dev: Option<u64>,
    buf: Vec<u8>,
}

impl<'a> Lister<'a> {
    fn new(root: &Path, marker: &'a OsStr, listing: Listing) -> Self {
        use std::os::unix::fs::MetadataExt;
        let leaf_dev = if listing == Listing::Markers && keeps_folder_link_counts(root) {
            std::fs::metadata(root).ok().map(|m| m.dev())
        } else {
            None
        };
        Lister {
            marker: marker.as_bytes(),
            listing,
            leaf_dev,
            buf: vec![0; 32 * 1024],
        }
    }

    /// A folder with no subfolder, by its link count; only where that count can be trusted.
    fn is_leaf(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(dev) = self.leaf_dev else {
            return false;
        };
        std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.dev() == dev && m.nlink() == 2)
    }

    /// Lists `dir`: folders onto `stack`, markers (and other files, if asked) into `found`.
    fn list(&mut self, dir: PathBuf, found: &mut Found, stack: &mut Vec<PathBuf>) {
        if self.is_leaf(&dir) {
            if is_file(&[dir.as_os_str().as_bytes(), b"/", self.marker]) {
                found.markers.push(dir.join(OsStr::from_bytes(self.marker)));
            }
            return;
        }
        let (marker, files) = (self.marker, self.listing == Listing::Files);
        let listed = list_dir(&dir, &mut self.buf, |name, kind| {
            let kind = match kind {
                Kind::Unknown => {
                    // Some file systems leave d_type empty: one lstat, only there.
                    match std::fs::symlink_metadata(dir.join(OsStr::from_bytes(name))) {
                        Ok(m) if m.is_dir() => Kind::Dir,
                        Ok(m) if m.is_file() => Kind::File,
                        _ => Kind::Other,
                    }
                }
                k => k,
            };
            match kind {
                Kind::Dir => stack.push(dir.join(OsStr::from_bytes(name))),
                Kind::File if name == marker => {
                    found.markers.push(dir.join(OsStr::from_bytes(name)));
                }
                Kind::File if files => found.files.push(dir.join(OsStr::from_bytes(name))),
                _ => {}
            }
        });
        match listed {
            Ok(()) => {}
            // Vanished or replaced since its parent was listed: nothing to see there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if matches!(e.raw_os_error(), Some(ENOTDIR) | Some(ELOOP)) => {}
            Err(e) => {
                warn!(folder = %dir.display(), error = %e, "cannot read a folder of the tree; markers there are not seen");
                found.unreadable.push(dir);
            }
        }
    }
}

/// Whether `parts` joined name a regular file, the last part not followed if a symlink.
fn is_file(parts: &[&[u8]]) -> bool {
    // SAFETY: a zeroed stat is a valid out-parameter; the path is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    with_c_path(parts, |c| unsafe { libc::lstat(c.as_ptr(), &mut st) })
        .is_ok_and(|r| r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG)
}

/// One folder's entries, `.` and `..` left out. The folder is opened with O_NOFOLLOW: a symlink
/// swapped in is not entered.
fn list_dir(dir: &Path, buf: &mut [u8], mut each: impl FnMut(&[u8], Kind)) -> std::io::Result<()> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid NUL-terminated path; the descriptor returned is checked.
    let raw = with_c_path(&[dir.as_os_str().as_bytes()], |c| unsafe {
        libc::open(c.as_ptr(), flags)
    })?;
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is an open descriptor owned by nobody else; closed when `fd` drops.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(());
        }
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        let mut at = 0;
        let end = n as usize;
        while at + 19 <= end {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen == 0 || at + reclen > end {
                break;
            }
            let d_type = buf[at + 18];
            let raw_name = &buf[at + 19..at + reclen];
            let name = raw_name
                .iter()
                .position(|&b| b == 0)
                .map_or(raw_name, |nul| &raw_name[..nul]);
            at += reclen;
            if name == b"." || name == b".." {
                continue;
            }
            let kind = match d_type {
                libc::DT_DIR => Kind::Dir,
                libc::DT_REG => Kind::File,
                libc::DT_UNKNOWN => Kind::Unknown,
                _ => Kind::Other,
            };
            each(name, kind);
        }
    }
}

/// Markers under `dir` and, when `files` is set, every other regular file too (no watches).
pub fn find_files(dir: &Path, marker: &str, files: bool) -> Found {
    let mut found = Found::default();
    let listing = Listing::with_files(files);
    walk(dir, OsStr::new(marker), listing, &mut found, |_| {
        Visit::List
    });
    found
}

/// What `purgewatch check` says about the tree: folders, and those this user cannot list.
pub fn survey(root: &Path) -> Found {
    let mut found = Found::default();
    walk(root, OsStr::new(""), Listing::Survey, &mut found, |_| {
        Visit::List
    });
    found
}

/// The kernel's per-user inotify watch limit.
pub fn max_user_watches() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn count_folders(dir: &Path) -> usize {
    survey(dir).folders
}

/// `root/a/b/.purge` → `a/b/.purge`, the S3 key below the prefix.
pub fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_use_slashes() {
        let root = Path::new("/var/www/html");
        assert_eq!(
            relative(root, Path::new("/var/www/html/a/b/.purge")).as_deref(),
            Some("a/b/.purge")
        );
        assert_eq!(
            relative(root, Path::new("/var/www/html/.purge")).as_deref(),
            Some(".purge")
        );
        assert_eq!(relative(root, Path::new("/etc/.purge")), None);
    }

    #[test]
    fn folder_paths_survive_moves_removals_and_compaction() {
        let mut f = Folders::default();
        assert!(f.set(1, b""));
        assert!(!f.set(1, b""), "same path again: already listed");
        for wd in 2..20_000 {
            assert!(f.set(wd, format!("a/{wd}").as_bytes()));
        }
        // Every folder moved (new paths), then half of them removed: compaction runs.
        for wd in 2..20_000 {
            assert!(f.set(wd, format!("b/{wd}").as_bytes()));
        }
        for wd in (2..20_000).step_by(2) {
            assert_eq!(f.remove(wd), Some(false));
        }
        assert!(f.garbage < f.arena.len().max(1 << 16));
        assert!(f.spans.len() - f.len() < f.len().max(1 << 12));
        assert_eq!(f.get(3), Some(&b"b/3"[..]));
        assert_eq!(f.get(19_999), Some(&b"b/19999"[..]));
        assert_eq!(f.get(4), None);
        assert_eq!(f.remove(1), Some(true), "the root");
        assert_eq!(f.len(), 9_999);
    }

    /// A tree of `n` folders three levels deep, a marker in every seventh, a symlink to a folder
    /// (never entered) and a big folder whose entries take several getdents64 calls.
    fn tree(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut markers = Vec::new();
        for i in 0..n {
            let d = dir.path().join(format!("a{}/b{}/c{i}", i % 5, i % 11));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("page.html"), b"x").expect("write");
            if i % 7 == 0 {
                std::fs::write(d.join(".purge"), b"").expect("write");
                markers.push(d.join(".purge"));
            }
        }
        let big = dir.path().join("big");
        std::fs::create_dir(&big).expect("mkdir");
        for i in 0..3000 {
            let name = format!("{i:0>200}.html"); // 3000 × ~224-byte entries: > 32 KiB
            std::fs::write(big.join(name), b"").expect("write");
        }
        std::fs::write(big.join(".purge"), b"").expect("write");
        markers.push(big.join(".purge"));
        std::os::unix::fs::symlink(dir.path().join("a0"), dir.path().join("link")).expect("ln");
        markers.sort();
        (dir, markers)
    }

    #[test]
    fn the_walk_finds_every_marker_once_on_any_number_of_threads() {
        let (dir, want) = tree(400);
        let mut seq = find_files(dir.path(), ".purge", true);
        seq.markers.sort();
        assert_eq!(seq.markers, want);
        assert_eq!(
            seq.files.len(),
            400 + 3000,
            "every other regular file, once"
        );
        let folders = seq.folders;
        for listing in [Listing::Markers, Listing::Survey] {
            for threads in [1, 2, 4] {
                let mut par =
                    walk_parallel(dir.path(), OsStr::new(".purge"), listing, threads, |_| {
                        Visit::List
                    });
                par.markers.sort();
                assert_eq!(par.markers, want, "{listing:?} on {threads} threads");
                assert_eq!(par.folders, folders, "{listing:?} on {threads} threads");
            }
        }
    }

    #[test]
    fn a_stop_ends_the_parallel_walk_early() {
        let (dir, _) = tree(200);
        let visited = std::sync::atomic::AtomicUsize::new(0);
        let found = walk_parallel(
            dir.path(),
            OsStr::new(".purge"),
            Listing::Markers,
            2,
            |_| {
                if visited.fetch_add(1, Ordering::SeqCst) >= 10 {
                    Visit::Stop
                } else {
                    Visit::List
                }
            },
        );
        assert!(
            found.folders < 20,
            "stopped after ~10 folders, not {}",
            found.folders
        );
    }

    #[test]
    fn leaves_are_not_listed_where_link_counts_are_kept_and_markers_still_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leaf = dir.path().join("a/leaf");
        std::fs::create_dir_all(&leaf).expect("mkdir");
        std::fs::write(leaf.join(".purge"), b"").expect("write");
        // A marker that is a folder is not a marker; a symlink named like it is not either.
        std::fs::create_dir_all(dir.path().join("b/.purge")).expect("mkdir");
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("a/.purge")).expect("ln");
        let lister = Lister::new(dir.path(), OsStr::new(".purge"), Listing::Markers);
        if lister.leaf_dev.is_some() {
            assert!(lister.is_leaf(&leaf));
            assert!(!lister.is_leaf(&dir.path().join("a")), "a has a subfolder");
        }
        let found = find_files(dir.path(), ".purge", false);
        assert_eq!(found.markers, vec![leaf.join(".purge")]);
        assert_eq!(found.folders, 5, "root, a, a/leaf, b, b/.purge");
        let listed = Lister::new(dir.path(), OsStr::new(".purge"), Listing::Survey);
        assert!(!listed.is_leaf(&leaf), "a survey lists every folder");
    }

    #[test]
    fn scans_skip_directories_named_like_the_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/.purge")).expect("mkdir");
        std::fs::write(dir.path().join("a/b.purge"), b"").expect("write");
        std::fs::write(dir.path().join(".purge"), b"").expect("write");
        let found = find_files(dir.path(), ".purge", false);
        assert_eq!(found.markers, vec![dir.path().join(".purge")]);
    }
}
