//! inotify → marker events, on a thread of its own.
//!
//! Built on the `inotify` crate (notify's own Linux backend) rather than notify itself, for two
//! reasons measured here (BENCHMARKS.md: notify 8 and 9): notify hands a new folder's event to
//! us *before* it adds the folder's watch, so a marker written at once into a new folder could
//! fall between our scan and its watch (a lost purge); and notify always asks for IN_OPEN and
//! stats every file, which floods the kernel queue on big trees. Here a new folder is watched
//! first and scanned second, the mask holds only what a marker needs, and an event's name is
//! compared with the marker's before any path is built — the other files of a deploy cost one
//! comparison each.
//!
//! The tree is listed once: the walk that sets the watches also reports the markers (and, with
//! change tracking, the files) it passes, so neither the start-up catch-up nor a new folder
//! costs a second listing. A folder already watched at the same path is not listed again, so
//! the CREATE events of a `cp -r` for folders the walk already covered cost one
//! `inotify_add_watch` each.
//!
//! Markers are never dropped: a kernel queue overflow or a full channel raises [`Lost`], and the
//! pipeline answers with a rescan of the tree.
//!
//! # The event mask
//! Every folder of the tree has a watch for CLOSE_WRITE and MOVED_TO (a marker written, or
//! renamed into place as rsync does) and CREATE (a new folder, watched and listed at once);
//! with change tracking, DELETE and MOVED_FROM too. Nothing else: no IN_OPEN, no IN_MODIFY, no
//! IN_ATTRIB. IN_ONLYDIR and IN_DONT_FOLLOW keep a symlink from taking a watch out of the tree.
//! While a marker waits for S3, its folder's watch also asks for CLOSE_NOWRITE ([`Listener`]):
//! the uploader reading it is the sign its upload is under way; the mask is restored when the
//! wait ends.
//!
//! # Layout
//! - this file: the public face — [`WatchEvent`], [`WatchError`], [`Lost`], [`Watch`],
//!   [`Started`], and the walks without watches ([`find_files`], [`survey`]).
//! - `thread`: [`start`] and the watch thread it spawns: the start-up walk that sets every
//!   watch, the poll loop and its batching, a new folder's watch-then-list, a removed root,
//!   running out of watches.
//! - `folders`: each watched folder's path by watch descriptor, packed into one arena.
//! - `walk`: the tree walk (one thread or several) and the getdents64 folder lister.

use std::ffi::OsStr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

mod folders;
mod thread;
mod walk;

pub use thread::start;
pub use walk::Found;
use walk::{walk, Listing, Visit};

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
    /// A waiting marker was read to its close by another process (an uploader, most likely):
    /// only in a folder a [`Listener`] listens to, never for this process's own reads.
    Read(PathBuf),
}

/// Asks the watch thread to also hear reads (IN_CLOSE_NOWRITE) in a folder while a marker in it
/// waits for S3, and to stop when it no longer does: only those folders, only meanwhile, so a
/// web server reading its files costs nothing. Cheap to clone; works after the watch stopped
/// (then it does nothing).
#[derive(Clone)]
pub struct Listener {
    inner: Arc<ListenInner>,
}

struct ListenInner {
    /// (folder, listen or not), in order, for the thread.
    asked: std::sync::Mutex<Vec<(PathBuf, bool)>>,
    /// One byte wakes the thread's poll to read `asked`.
    wake: UnixStream,
}

/// Listening to one folder; dropping it stops (when no other marker there waits).
pub struct Listening {
    listener: Listener,
    folders: Vec<PathBuf>,
}

impl Listener {
    fn new(wake: UnixStream) -> Listener {
        // Never blocks the runtime: a full socket already holds a wake-up.
        let _ = wake.set_nonblocking(true);
        Listener {
            inner: Arc::new(ListenInner {
                asked: std::sync::Mutex::new(Vec::new()),
                wake,
            }),
        }
    }

    fn ask(&self, folders: &[PathBuf], on: bool) {
        let mut asked = self.inner.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.extend(folders.iter().map(|f| (f.clone(), on)));
        drop(asked);
        use std::io::Write;
        let _ = (&self.inner.wake).write(&[1]);
    }

    /// Hears reads in these folders until the [`Listening`] is dropped.
    pub fn listen(&self, mut folders: Vec<PathBuf>) -> Listening {
        folders.sort();
        folders.dedup();
        self.ask(&folders, true);
        Listening {
            listener: self.clone(),
            folders,
        }
    }

    /// What was asked since the last call (the thread's side).
    fn take(&self) -> Vec<(PathBuf, bool)> {
        std::mem::take(&mut *self.inner.asked.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.listener.ask(&self.folders, false);
    }
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
    /// Folders with a watch now (`purgewatch_watched_folders`).
    pub watched: AtomicUsize,
    /// Folders refused a watch since the limit was reached, at least (`purgewatch_unwatched_folders`).
    pub unwatched: AtomicUsize,
}

/// The watchers of every running site, for the heartbeat and the metrics.
#[derive(Clone, Default)]
pub struct Watchers(Arc<std::sync::Mutex<Vec<Arc<Lost>>>>);

/// The watchers' counts, summed over the sites.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchTotals {
    pub watched: u64,
    pub unwatched: u64,
    pub lost: u64,
}

impl Watchers {
    pub fn of(list: Vec<Arc<Lost>>) -> Watchers {
        Watchers(Arc::new(std::sync::Mutex::new(list)))
    }

    /// The running sites changed (a reload).
    pub fn set(&self, list: Vec<Arc<Lost>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = list;
    }

    pub fn totals(&self) -> WatchTotals {
        let list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .fold(WatchTotals::default(), |t, l| WatchTotals {
                watched: t.watched + l.watched.load(Ordering::Relaxed) as u64,
                unwatched: t.unwatched + l.unwatched.load(Ordering::Relaxed) as u64,
                lost: t.lost + l.count.load(Ordering::Relaxed),
            })
    }
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
    /// Hears an uploader's reads of waiting markers.
    pub listener: Listener,
    /// Every marker in the tree when its folder was listed (after its watch was set).
    pub markers: Vec<PathBuf>,
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

/// For the advice when the watch limit is reached.
fn count_folders(dir: &Path) -> usize {
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
}
