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

use std::collections::HashMap;
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
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
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
const ROOT_POLL_MS: i32 = 1000;

/// Batching under load: when events keep coming (the last wake-up was less than `BUSY` ago),
/// the thread pauses `GATHER` after handling a read, so the next read takes a batch instead of
/// waking up once per event. An event arriving alone is handled at once; a marker in a storm
/// waits at most `GATHER`. The kernel queue (16,384 events) holds far more than a pause lets in.
const BUSY: Duration = Duration::from_millis(5);
const GATHER: Duration = Duration::from_millis(2);
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
    let mut found = Found::default();
    match w.add_tree(root, &mut found, false, true) {
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
    let thread = std::thread::Builder::new()
        .name("purgewatch-watch".into())
        .spawn(move || w.run(inotify, stopped))
        .map_err(io_err)?;
    Ok(Started {
        watch: Watch {
            stop: Some(stop),
            thread: Some(thread),
        },
        markers: found.markers,
    })
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
        let mask = mask(self.track_changes);
        let marker = self.marker.clone();
        let mut result = Ok(());
        walk(dir, &marker, files, found, |path| {
            if test_watch_cap_reached(self.paths.len()) {
                result = Err(AddError::Limit(path.to_owned()));
                return Visit::Stop;
            }
            match self.watches.add(path, mask) {
                // Re-adding a folder (moved within the tree) returns its old descriptor: the
                // path is updated so later events name the new place.
                Ok(wd) => match self.paths.get_mut(&wd) {
                    Some(known) if known == path && !relist => Visit::Skip,
                    Some(known) => {
                        path.clone_into(known);
                        Visit::List
                    }
                    None => {
                        self.paths.insert(wd, path.to_owned());
                        Visit::List
                    }
                },
                Err(e) if e.raw_os_error() == Some(ENOSPC) => {
                    result = Err(AddError::Limit(path.to_owned()));
                    Visit::Stop
                }
                // Gone, or replaced by a file (ENOTDIR) or a symlink.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(ENOTDIR) =>
                {
                    Visit::Skip
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    // Markers in there can never be read either: say so, serve the rest.
                    warn!(folder = %path.display(), "no read access; folder not watched (see purgewatch check)");
                    Visit::Skip
                }
                Err(e) => {
                    result = Err(AddError::Io(path.to_owned(), e));
                    Visit::Stop
                }
            }
        });
        result
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
            let busy = last_wake.elapsed() < BUSY;
            last_wake = Instant::now();
            let mut count = 0;
            match inotify.read_events(&mut buf) {
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
            if busy && count > 0 && count < BEHIND {
                std::thread::sleep(GATHER);
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
    files: bool,
    found: &mut Found,
    mut visit: impl FnMut(&Path) -> Visit,
) {
    let marker = marker.as_bytes();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        found.folders += 1;
        match visit(&dir) {
            Visit::List => {}
            Visit::Skip => continue,
            Visit::Stop => return,
        }
        let listed = list_dir(&dir, |name, kind| {
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

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Dir,
    File,
    Other,
    Unknown,
}

/// Lists one folder with readdir(3): each entry's name and d_type, without an allocation or a
/// stat per entry. The folder is opened with O_NOFOLLOW: a symlink swapped in is not entered.
fn list_dir(dir: &Path, mut each: impl FnMut(&[u8], Kind)) -> std::io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid NUL-terminated path; the descriptor returned is checked.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is an open directory descriptor; on success the DIR owns it.
    let d = unsafe { libc::fdopendir(fd) };
    if d.is_null() {
        let e = std::io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `fd` is still ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        return Err(e);
    }
    let result = loop {
        // readdir returns NULL both at the end and on error; errno tells them apart.
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `d` is a valid open DIR until closedir below.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            let e = std::io::Error::last_os_error();
            break if e.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: the entry stays valid until the next readdir on `d`; d_name is NUL-terminated.
        let (name, d_type) = unsafe {
            (
                CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes(),
                (*ent).d_type,
            )
        };
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
    };
    // SAFETY: `d` came from fdopendir and is closed once (closing its descriptor too).
    unsafe { libc::closedir(d) };
    result
}

/// Markers under `dir` and, when `files` is set, every other regular file too (no watches).
pub fn find_files(dir: &Path, marker: &str, files: bool) -> Found {
    let mut found = Found::default();
    walk(dir, OsStr::new(marker), files, &mut found, |_| Visit::List);
    found
}

/// What `purgewatch check` says about the tree: folders, and those this user cannot list.
pub fn survey(root: &Path) -> Found {
    find_files(root, "", false)
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
    fn scans_skip_directories_named_like_the_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/.purge")).expect("mkdir");
        std::fs::write(dir.path().join("a/b.purge"), b"").expect("write");
        std::fs::write(dir.path().join(".purge"), b"").expect("write");
        let found = find_files(dir.path(), ".purge", false);
        assert_eq!(found.markers, vec![dir.path().join(".purge")]);
    }
}
