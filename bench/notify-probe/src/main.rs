//! `notify-probe ROOT`: notify's recommended watcher on ROOT, recursive, with its default
//! configuration (as an application using notify would run it). Prints "Watches established."
//! on stderr once `watch` returns (every folder watched), then one line per event on stdout in
//! inotifywait's `%e %w%f` format: CLOSE_WRITE, MOVED_TO, CREATE, OVERFLOW (a rescan notify
//! asks for) and OTHER for the rest, so bench.py reads it like inotifywait's output.

use std::io::Write;
use std::path::Path;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

fn main() {
    let root = std::env::args().nth(1).expect("usage: notify-probe ROOT");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).expect("watcher");
    watcher
        .watch(Path::new(&root), RecursiveMode::Recursive)
        .expect("watch");
    eprintln!("Watches established.");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // Written in batches: flushed whenever the channel runs dry.
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

fn line(ev: &notify::Event) -> String {
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
    let path = ev.paths.last().map(|p| p.display().to_string()).unwrap_or_default();
    format!("{name} {path}")
}
