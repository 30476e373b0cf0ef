//! The tree walk: depth-first from a root, never following a symlink below it. A `visit`
//! callback decides for each folder, before it is listed, whether to list it, skip it or stop
//! the walk (the watcher sets the folder's watch there); markers, with change tracking every
//! other regular file, and the folders that cannot be read are collected on the way.
//!
//! ## Performance
//! Listing folders is most of a start on a big tree (BENCHMARKS.md has what each of these
//! bought):
//! - Folders are read with getdents64(2) into one reused buffer: each entry's name and d_type,
//!   without a stat or an allocation per entry; readdir(3) would add an fstat and a buffer
//!   allocation per folder. An lstat is made only where a file system leaves d_type empty.
//! - The paths of the walk's system calls (`inotify_add_watch`, `open`, a leaf's marker lookup)
//!   are built on the stack when they fit, as std does for its own calls: the walk makes a few
//!   system calls per folder, and an allocation for each would cost more than some of them.
//! - A walk for markers does not list a leaf folder where the file system keeps folder link
//!   counts (a count of 2 proves a leaf, as GNU find's leaf optimisation assumes): its marker is
//!   looked up by name, so the walk costs per folder, not per file.
//! - The start-up walk runs on several threads sharing one stack of folders: listing
//!   parallelises (the kernel serialises only the insertion of each watch). A waiting thread is
//!   woken only when there is a folder for it, the end of the walk or a stop: a wake-up is a
//!   system call, and a big tree has a great many folders.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libc::{ELOOP, ENOTDIR};
use tracing::warn;

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
pub(super) enum Visit {
    List,
    Skip,
    Stop,
}

/// Walks `root` depth-first, never following symlinks below it: `visit` decides for every folder
/// (before it is listed) whether to list it; markers, and with `files` every other regular file,
/// go into `found`.
pub(super) fn walk(
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

/// The same walk on `threads` threads sharing one stack of folders to visit (the start-up walk:
/// see Performance in the module doc). `visit` runs on every thread; each thread's findings are
/// merged at the end.
pub(super) fn walk_parallel(
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
        /// system call, and a walk has one turn per folder).
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
pub(super) enum Listing {
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
    pub(super) fn with_files(files: bool) -> Listing {
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
/// without a stat or an allocation per entry (why not readdir(3): the module doc).
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

/// Calls `f` with `parts` joined into a NUL-terminated path, built on the stack when it fits
/// (as std does for its own calls; why: the module doc). A NUL inside is InvalidInput.
pub(super) fn with_c_path<R>(parts: &[&[u8]], f: impl FnOnce(&CStr) -> R) -> std::io::Result<R> {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::watch::find_files;

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
