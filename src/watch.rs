//! notify → marker events. The name is checked before anything else, so the thousands of other
//! files a deploy writes cost one comparison each; markers are never dropped: when the kernel
//! queue overflows (notify's Rescan flag) or our channel is full, a rescan of the tree is asked for.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, Notify};
use tracing::{error, warn};
use walkdir::WalkDir;

/// What the watcher tells the pipeline.
#[derive(Debug)]
pub enum WatchEvent {
    /// A file named like the marker was closed after writing or renamed into place.
    Marker(PathBuf),
    /// A folder appeared: markers written into it before its watch was set would be missed,
    /// so the pipeline scans it.
    NewDir(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "inotify ran out of watches at {path}: raise fs.inotify.max_user_watches \
         (the tree has about {folders} folders; e.g. sysctl fs.inotify.max_user_watches={suggest})"
    )]
    TooManyWatches {
        path: String,
        folders: usize,
        suggest: usize,
    },
    #[error("cannot watch {path}: {source}")]
    Notify { path: String, source: notify::Error },
}

/// Raised when events were lost; the pipeline answers with a rescan.
#[derive(Default)]
pub struct Lost {
    pub flag: AtomicBool,
    pub count: AtomicU64,
    pub wake: Notify,
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

/// Keeps the watch alive; dropping it stops the watch.
pub struct Watch {
    _watcher: notify::RecommendedWatcher,
}

/// Starts a recursive watch of `root`; returns once every folder's watch is set.
pub fn start(
    root: &Path,
    marker: &str,
    tx: mpsc::Sender<WatchEvent>,
    lost: Arc<Lost>,
) -> Result<Watch, WatchError> {
    let marker = std::ffi::OsString::from(marker);
    let handler_lost = lost.clone();
    let handler = move |res: notify::Result<Event>| {
        let ev = match res {
            Ok(ev) => ev,
            Err(e) => {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    error!(
                        error = %e,
                        "inotify ran out of watches: raise fs.inotify.max_user_watches; new folders are not watched"
                    );
                } else {
                    warn!(error = %e, "watch error");
                }
                handler_lost.raise();
                return;
            }
        };
        if ev.need_rescan() {
            warn!("the kernel dropped file events; rescanning for markers");
            handler_lost.raise();
            return;
        }
        let renamed = matches!(ev.kind, EventKind::Modify(ModifyKind::Name(RenameMode::To)));
        let written = matches!(
            ev.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        let new_dir = matches!(ev.kind, EventKind::Create(CreateKind::Folder));
        if !(renamed || written || new_dir) {
            return;
        }
        for path in ev.paths {
            let is_marker = path.file_name() == Some(marker.as_os_str());
            let out = if is_marker && (renamed || written) {
                WatchEvent::Marker(path)
            } else if new_dir
                || (renamed && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()))
            {
                // A folder moved in brings its files without events for them.
                WatchEvent::NewDir(path)
            } else {
                continue;
            };
            if tx.try_send(out).is_err() {
                // Full (or closing): never drop a marker, look for it again instead.
                handler_lost.raise();
            }
        }
    };
    let mut watcher =
        notify::recommended_watcher(handler).map_err(|source| WatchError::Notify {
            path: root.display().to_string(),
            source,
        })?;
    watcher
        .watch(root, RecursiveMode::Recursive)
        .map_err(|source| match source.kind {
            notify::ErrorKind::MaxFilesWatch => {
                let folders = count_folders(root);
                WatchError::TooManyWatches {
                    path: source
                        .paths
                        .first()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| root.display().to_string()),
                    folders,
                    suggest: (folders * 2).max(65_536),
                }
            }
            _ => WatchError::Notify {
                path: root.display().to_string(),
                source,
            },
        })?;
    Ok(Watch { _watcher: watcher })
}

/// Every file named `marker` under `dir`, never following symlinks.
pub fn find_markers(dir: &Path, marker: &str) -> Vec<PathBuf> {
    WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.file_name() == marker)
        .map(|e| e.into_path())
        .collect()
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
