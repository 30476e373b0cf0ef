//! Issue 22, names from a hostile tree where the daemon writes for people: its log (the
//! alerts' text is in `notify`). A name is data: it must neither drive the terminal that shows
//! the log nor start a line of its own.

use std::time::{Duration, Instant};

use crate::common::{daemon_command, spawn_watching, Site};

// Issue 22: the log wrote a marker's path raw in its fields (`marker = %rel`): an ESC in a
// folder name cleared the screen of whoever tailed the log, a newline forged a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_from_the_tree_neither_drives_the_terminal_nor_forges_a_log_line() {
    let site = Site::new().await;
    // Never uploaded (the emulator has no route for a key with a line break): the request
    // logs its wait for the origin in its span, which names the marker, and times out.
    let toml = site
        .toml("", "", "")
        .replace("wait_timeout = \"20s\"", "wait_timeout = \"2s\"");
    let daemon = spawn_watching(daemon_command(&site.config_file(&toml)));
    let forged = "2099-01-01T00:00:00.000000Z  INFO purgewatch: forged";
    site.write(&format!("x\x1b[2J\n{forged}/.purge"), b"x\n");
    site.settled(1, &["origin_timeout"]).await;

    // Every line up to the one saying the origin wait ended.
    let mut lines = daemon.early.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lines.iter().any(|l| l.contains("origin timeout")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match daemon.log.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(e) => panic!("no \"origin timeout\" line ({e}): {lines:#?}"),
        }
    }
    lines.extend(daemon.log.try_iter());
    drop(daemon);

    let raw: Vec<&String> = lines.iter().filter(|l| l.contains('\x1b')).collect();
    assert!(raw.is_empty(), "an ESC reached the log: {raw:#?}");
    let fake: Vec<&String> = lines.iter().filter(|l| l.starts_with("2099-")).collect();
    assert!(fake.is_empty(), "a line forged by a name: {fake:#?}");
    let requested = lines
        .iter()
        .find(|l| l.contains("purge requested"))
        .unwrap_or_else(|| panic!("no \"purge requested\" line: {lines:#?}"));
    assert!(
        requested.contains(&format!("{forged}/.purge")),
        "the name is on the line that logs it: {lines:#?}"
    );
}
