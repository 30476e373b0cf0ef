//! `notify-probe [--v9] ROOT`: a notify watcher on ROOT, recursive, as an application using
//! notify would run it.
//! - without `--v9`: notify 8's recommended watcher with its default configuration;
//! - with `--v9`: notify 9's (a release candidate), narrowed with `Config::with_event_kinds` to
//!   creations, closes after writing and renames: the inotify events purgewatch asks for
//!   (notify 9 adds IN_MOVE_SELF for the renames).
//!
//! Prints "Watches established." on stderr once `watch` returns (every folder watched), then
//! one line per event on stdout in inotifywait's `%e %w%f` format: CLOSE_WRITE, MOVED_TO,
//! CREATE, OVERFLOW (a rescan notify asks for) and OTHER for the rest, so bench.py reads it like
//! inotifywait's output.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::Receiver;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let v9 = args.first().is_some_and(|a| a == "--v9");
    if v9 {
        args.remove(0);
    }
    let root = args.pop().expect("usage: notify-probe [--v9] ROOT");
    if v9 {
        v9::run(Path::new(&root));
    } else {
        v8::run(Path::new(&root));
    }
}

/// Writes one line per event in batches: flushed whenever the channel runs dry.
fn print<T, E: std::fmt::Display>(rx: Receiver<Result<T, E>>, line: impl Fn(&T) -> String) {
    eprintln!("Watches established.");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(res) = next {
            match res {
                Ok(ev) => {
                    let _ = writeln!(out, "{}", line(&ev));
                }
                Err(e) => eprintln!("error: {e}"),
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

/// The same mapping for both versions: their event types have the same shape.
macro_rules! line_fn {
    ($n:ident) => {
        fn line(ev: &$n::Event) -> String {
            use $n::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
            use $n::EventKind;
            let name = if ev.need_rescan() {
                "OVERFLOW"
            } else {
                match ev.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => "CLOSE_WRITE",
                    EventKind::Modify(ModifyKind::Name(RenameMode::To))
                    | EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => "MOVED_TO",
                    EventKind::Create(CreateKind::Folder) => "CREATE,ISDIR",
                    EventKind::Create(_) => "CREATE",
                    _ => "OTHER",
                }
            };
            // A rename pair names the source first: the destination is the last path.
            let path = ev
                .paths
                .last()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{name} {path}")
        }
    };
}

mod v8 {
    use notify::{RecursiveMode, Watcher};
    use std::path::Path;

    line_fn!(notify);

    pub fn run(root: &Path) {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(tx).expect("watcher");
        watcher
            .watch(root, RecursiveMode::Recursive)
            .expect("watch");
        super::print(rx, line);
    }
}

mod v9 {
    use notify9::event::EventKindMask;
    use notify9::{Config, RecursiveMode, Watcher};
    use std::path::Path;

    line_fn!(notify9);

    pub fn run(root: &Path) {
        let (tx, rx) = std::sync::mpsc::channel();
        let kinds =
            EventKindMask::CREATE | EventKindMask::ACCESS_CLOSE | EventKindMask::MODIFY_NAME;
        let config = Config::default().with_event_kinds(kinds);
        let mut watcher = notify9::RecommendedWatcher::new(tx, config).expect("watcher");
        watcher
            .watch(root, RecursiveMode::Recursive)
            .expect("watch");
        super::print(rx, line);
    }
}
