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
//! Markers are never dropped: a kernel queue overflow or a full channel raises [`Lost`], and the
//! pipeline answers with a rescan of the tree.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use walkdir::WalkDir;

/// What the watcher tells the pipeline.
#[derive(Debug)]
pub enum WatchEvent {
    /// A file named like the marker was closed after writing or renamed into place.
    Marker(PathBuf),
    /// A folder appeared (created or moved in). Its watch is set; markers written into it before
    /// that must be found by a scan.
    NewDir(PathBuf),
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

/// Keeps the watch thread alive; [`Watch::stop`] ends and joins it.
pub struct Watch {
    token: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    pub fn stop(mut self) {
        self.token.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

struct Watcher {
    watches: inotify::Watches,
    root: PathBuf,
    marker: OsString,
    /// Report every file change, not only markers (`paths = "changed"` or `wait_for = "changes"`).
    track_changes: bool,
    paths: HashMap<WatchDescriptor, PathBuf>,
    tx: mpsc::Sender<WatchEvent>,
    lost: Arc<Lost>,
    /// Said once: repeating "out of watches" for every new folder helps nobody.
    warned_limit: bool,
    /// The root itself was removed: look for it once a second until it is back.
    root_gone: bool,
}

/// How often a removed root is looked for (only while it is missing).
const ROOT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts watching `root` recursively; returns once every folder's watch is set.
pub fn start(
    root: &Path,
    marker: &str,
    track_changes: bool,
    tx: mpsc::Sender<WatchEvent>,
    lost: Arc<Lost>,
) -> Result<Watch, WatchError> {
    let io_err = |source| WatchError::Io {
        path: root.display().to_string(),
        source,
    };
    let inotify = Inotify::init().map_err(io_err)?;
    let mut w = Watcher {
        watches: inotify.watches(),
        root: root.to_owned(),
        marker: OsString::from(marker),
        track_changes,
        paths: HashMap::new(),
        tx,
        lost,
        warned_limit: false,
        root_gone: false,
    };
    match w.add_tree(root) {
        Ok(()) => {}
        Err(AddError::Limit(path)) => w.out_of_watches(&path),
        Err(AddError::Io(path, source)) => {
            return Err(WatchError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    }
    let token = CancellationToken::new();
    let t = token.clone();
    let thread = std::thread::Builder::new()
        .name("purgewatch-watch".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return error!(error = %e, "watch thread"),
            };
            rt.block_on(w.run(inotify, t));
        })
        .map_err(io_err)?;
    Ok(Watch {
        token,
        thread: Some(thread),
    })
}

// Linux errno values (asm-generic), to tell the watch limit from a vanished folder.
const ENOSPC: i32 = 28;
const ENOTDIR: i32 = 20;

enum AddError {
    /// ENOSPC: fs.inotify.max_user_watches reached.
    Limit(PathBuf),
    Io(PathBuf, std::io::Error),
}

impl Watcher {
    /// Watches `dir` and every folder below it (d_type from readdir: no stat per entry).
    /// A folder that vanished meanwhile is skipped.
    fn add_tree(&mut self, dir: &Path) -> Result<(), AddError> {
        let mut walk = WalkDir::new(dir).follow_links(false).into_iter();
        while let Some(entry) = walk.next() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "cannot read a folder of the tree; it is not watched");
                    continue;
                }
            };
            if !entry.file_type().is_dir() {
                continue;
            }
            if test_watch_cap_reached(self.paths.len()) {
                return Err(AddError::Limit(entry.into_path()));
            }
            match self.watches.add(entry.path(), mask(self.track_changes)) {
                // Re-adding a folder (moved within the tree) returns its old descriptor: the
                // path is updated so later events name the new place.
                Ok(wd) => {
                    self.paths.insert(wd, entry.into_path());
                }
                Err(e) if e.raw_os_error() == Some(ENOSPC) => {
                    return Err(AddError::Limit(entry.into_path()));
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(ENOTDIR) =>
                {
                    walk.skip_current_dir(); // gone, or replaced by a file (ENOTDIR)
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    // Markers in there can never be read either: say so, serve the rest.
                    warn!(folder = %entry.path().display(), "no read access; folder not watched (see purgewatch check)");
                    walk.skip_current_dir();
                }
                Err(e) => return Err(AddError::Io(entry.into_path(), e)),
            }
        }
        Ok(())
    }

    async fn run(mut self, inotify: Inotify, token: CancellationToken) {
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: the AsyncFd owns the Inotify, so its descriptor stays open and the same for
        // the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(inotify, Interest::READABLE) };
        let mut fd = match fd {
            Ok(fd) => fd,
            Err(e) => return error!(error = %e, "cannot poll inotify"),
        };
        loop {
            let mut guard = tokio::select! {
                g = fd.readable_mut() => match g {
                    Ok(g) => g,
                    Err(e) => return error!(error = %e, "inotify poll failed"),
                },
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(ROOT_POLL), if self.root_gone => {
                    if self.root.is_dir() {
                        info!(root = %self.root.display(), "the watch root is back; rescanning");
                        self.root_gone = false;
                        self.on_new_dir(self.root.clone());
                    }
                    continue;
                }
            };
            match guard.get_inner_mut().read_events(&mut buf) {
                Ok(events) => {
                    // In order: a folder created before a marker is watched and reported first.
                    for ev in events {
                        self.on_event(ev.wd, ev.mask, ev.name);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => {
                    error!(error = %e, "reading inotify failed; rescanning");
                    self.lost.raise();
                }
            }
        }
    }

    fn on_event(&mut self, wd: WatchDescriptor, mask: EventMask, name: Option<&std::ffi::OsStr>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            warn!("the kernel dropped file events (queue overflow); rescanning for markers");
            // Folders created meanwhile may lack a watch: walk the whole tree again.
            self.on_new_dir(self.root.clone());
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            if self.paths.remove(&wd).is_some_and(|p| p == self.root) {
                warn!(root = %self.root.display(), "the watch root was removed; waiting for it to come back");
                self.root_gone = true;
            }
            return;
        }
        let Some(name) = name else { return };
        let is_dir = mask.contains(EventMask::ISDIR);
        if is_dir {
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                if let Some(parent) = self.paths.get(&wd) {
                    let dir = parent.join(name);
                    self.on_new_dir(dir);
                }
            } else if self.track_changes && mask.contains(EventMask::MOVED_FROM) {
                if let Some(parent) = self.paths.get(&wd) {
                    let why = format!("folder {} moved away", parent.join(name).display());
                    self.send(WatchEvent::ChangesUnknown(why));
                }
            }
            return;
        }
        let written = mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO);
        // The hot path: one comparison, no allocation, for every file that is not the marker.
        if name == self.marker.as_os_str() {
            if written {
                if let Some(parent) = self.paths.get(&wd) {
                    self.send(WatchEvent::Marker(parent.join(name)));
                }
            }
            return;
        }
        if !self.track_changes {
            return;
        }
        let deleted = mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM);
        if written || deleted {
            if let Some(parent) = self.paths.get(&wd) {
                let path = parent.join(name);
                self.send(WatchEvent::Change { path, deleted });
            }
        }
    }

    /// Watch first, then tell the pipeline to scan: a marker written into the folder is either
    /// already there for the scan or caught by the watch.
    fn on_new_dir(&mut self, dir: PathBuf) {
        let whole_tree = dir == self.root;
        match self.add_tree(&dir) {
            Ok(()) => {}
            Err(AddError::Limit(at)) => self.out_of_watches(&at),
            Err(AddError::Io(at, e)) => warn!(folder = %at.display(), error = %e, "cannot watch"),
        }
        if whole_tree {
            self.lost.raise();
        } else {
            self.send(WatchEvent::NewDir(dir));
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
            watched = self.paths.len(),
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

/// Every file named `marker` under `dir`, never following symlinks.
pub fn find_markers(dir: &Path, marker: &str) -> Vec<PathBuf> {
    find_files(dir, marker, false).0
}

/// Markers under `dir` and, when `others` is set, every other regular file too.
pub fn find_files(dir: &Path, marker: &str, others: bool) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut markers, mut rest) = (Vec::new(), Vec::new());
    let files = WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file());
    for e in files {
        if e.file_name() == marker {
            markers.push(e.into_path());
        } else if others {
            rest.push(e.into_path());
        }
    }
    (markers, rest)
}

/// What `purgewatch check` says about the tree.
pub struct Survey {
    pub folders: usize,
    /// Folders this user cannot list: markers there are never seen.
    pub unreadable: Vec<PathBuf>,
}

pub fn survey(root: &Path) -> Survey {
    let mut s = Survey {
        folders: 0,
        unreadable: Vec::new(),
    };
    for entry in WalkDir::new(root).follow_links(false) {
        match entry {
            Ok(e) if e.file_type().is_dir() => s.folders += 1,
            Ok(_) => {}
            Err(e) => {
                if let Some(p) = e.path() {
                    s.unreadable.push(p.to_owned());
                }
            }
        }
    }
    s
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
    WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .count()
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
    fn scans_skip_directories_named_like_the_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/.purge")).expect("mkdir");
        std::fs::write(dir.path().join("a/b.purge"), b"").expect("write");
        std::fs::write(dir.path().join(".purge"), b"").expect("write");
        let found = find_markers(dir.path(), ".purge");
        assert_eq!(found, vec![dir.path().join(".purge")]);
    }
}
