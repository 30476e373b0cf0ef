//! The binary as an operator uses it: config errors, check, purge, history, quota, SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::purgewatch;
use crate::common::{daemon_command, poll, spawn_watching, Site};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_config_error_names_file_and_key_and_exits_78() {
    let site = Site::new().await;
    let good = site.toml("", "", "");
    let cases: Vec<(&str, String)> = vec![
        ("quota.maxx", good.replace("max = 10", "max = 10\nmaxx = 1")),
        ("quota.max", good.replace("max = 10", "max = \"ten\"")),
        ("quota.max", good.replace("max = 10", "max = 0")),
        (
            "origin.bucket",
            good.replace(&format!("bucket = \"{}\"", site.origin_bucket), ""),
        ),
        (
            "cloudfront.distribution_id",
            good.replace(
                &format!("distribution_id = \"{}\"", site.distribution_id),
                "",
            ),
        ),
        (
            "watch.root",
            good.replace(&site.root.display().to_string(), "/nonexistent/www"),
        ),
        (
            "quota.timezone",
            good.replace("max = 10", "max = 10\ntimezone = \"Mars/Olympus\""),
        ),
        (
            "quota.period",
            good.replace("max = 10", "max = 10\nperiod = \"week\""),
        ),
        (
            "watch.settle",
            good.replace("settle = \"200ms\"", "settle = \"soonish\""),
        ),
        (
            "watch.marker",
            good.replace("settle = \"200ms\"", "marker = \"a/b\""),
        ),
        (
            "aws.endpoint_url",
            good.replace("endpoint_url = \"", "endpoint_url = \"ftp"),
        ),
    ];
    for (key, toml) in cases {
        let file = site.config_file(&toml);
        for verb in ["check", "run"] {
            let out = purgewatch(&file, &[verb]);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{verb} {key}: {err}");
            assert!(
                err.contains(&file.display().to_string()),
                "names the file: {err}"
            );
            assert!(err.contains(&format!("`{key}`")), "names {key}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        }
    }
    assert!(!site.db.exists(), "nothing started");
    let missing = purgewatch(&site.dir.path().join("nope.toml"), &["check"]);
    assert_eq!(missing.status.code(), Some(78));
    assert!(text(&missing.stderr).contains("nope.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_item_and_fails_on_a_missing_distribution() {
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    let out = purgewatch(&file, &["check"]);
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}{}", text(&out.stderr));
    for item in [
        "watch.root",
        "origin.bucket",
        "quota.count_bucket",
        "cloudfront.distribution_id",
    ] {
        assert!(
            so.lines().any(|l| l.starts_with("OK") && l.contains(item)),
            "{item}: {so}"
        );
    }
    let bad = site
        .toml("", "", "")
        .replace(&site.distribution_id, "ENOSUCHDIST");
    let out = purgewatch(&site.config_file(&bad), &["check"]);
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    assert!(
        so.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("cloudfront.distribution_id")),
        "{so}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_purges_then_history_json_matches_the_emulator_one_for_one() {
    let site = Site::new().await;
    let toml = site.toml("", "", "").replace("max = 10", "max = 2");
    let file = site.config_file(&toml);
    for _ in 0..3 {
        purgewatch(&file, &["purge"]);
    }
    let out = purgewatch(&file, &["history", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json array");
    assert_eq!(rows.len(), 3);
    let mut ours: Vec<String> = rows
        .iter()
        .filter_map(|r| r["invalidation_id"].as_str().map(str::to_owned))
        .collect();
    let exhausted: Vec<_> = rows
        .iter()
        .filter(|r| r["status"] == "quota_exhausted")
        .collect();
    assert_eq!(exhausted.len(), 1);
    assert!(exhausted[0]["invalidation_id"].is_null());
    assert!(rows.iter().all(|r| r["origin"] == "manual"));
    let mut theirs: Vec<String> = site
        .invalidations()
        .await
        .into_iter()
        .map(|i| i.0)
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);

    let q = purgewatch(&file, &["quota", "--json"]);
    let q: serde_json::Value = serde_json::from_slice(&q.stdout).expect("quota json");
    assert_eq!(q["count"], 2);
    assert_eq!(q["max"], 2);
    assert_eq!(q["mirrored_count"], 2);

    let table = text(&purgewatch(&file, &["history", "--limit", "1"]).stdout);
    assert_eq!(table.lines().count(), 2, "header and one row: {table}");
    assert!(table.contains("quota_exhausted"), "{table}");
}

// `purgewatch history --json | grep -q completed`: the reader leaves after its first match. The
// command must end quietly with status 0 (a release build aborts on a panic: a core dump).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_into_a_closed_pipe_ends_quietly_with_status_0() {
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    purgewatch(&file, &["purge"]);
    for args in [&["history", "--json"][..], &["history"][..], &["quota"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_purgewatch"))
            .arg("--config")
            .arg(&file)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take()); // the reader is gone before the first line
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{args:?}: {:?} {}",
            out.status,
            text(&out.stderr)
        );
        assert!(
            !text(&out.stderr).contains("panicked"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_with_status_0_within_5s() {
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    // The watch is set once the daemon logs "watching"; the marker must come after that.
    let mut daemon = spawn_watching(daemon_command(&file));
    for line in &daemon.early {
        assert!(
            !line.contains('\u{1b}'),
            "no ANSI colour when stderr is not a terminal: {line:?}"
        );
    }
    // A request in hand when the signal comes: waiting for an upload that never happens.
    site.write(".purge", b"in hand");
    poll(
        "the request to be stored",
        Duration::from_secs(10),
        || async { (site.history().len() == 1).then_some(()) },
    )
    .await;
    let started = Instant::now();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = daemon.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        site.statuses(),
        vec!["waiting_for_origin"],
        "parked, not lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_folders_the_daemon_user_cannot_read() {
    use std::os::unix::fs::PermissionsExt;
    // Needs root to run the check as another user; CI runs as root.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to switch to an unprivileged user");
        return;
    }
    let site = Site::new().await;
    let open = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    open(site.dir.path(), 0o755);
    open(&site.root, 0o755);
    std::fs::create_dir_all(site.root.join("public/css")).expect("mkdir");
    std::fs::create_dir_all(site.root.join("private")).expect("mkdir");
    open(&site.root.join("private"), 0o700); // root's only
    let toml = site.toml("", "", "").replace(
        &site.db.display().to_string(),
        "/tmp/purgewatch-check-nobody.db",
    );
    let file = site.config_file(&toml);
    open(&file, 0o644);
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_purgewatch"))
        .args(["--config", &file.display().to_string(), "check"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .expect("setpriv");
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}{}", text(&out.stderr));
    let line = so
        .lines()
        .find(|l| l.contains("watch.root"))
        .expect("a watch.root line");
    assert!(
        line.starts_with("FAIL") && line.contains("private") && line.contains("not readable"),
        "{line}"
    );
    let _ = std::fs::remove_file("/tmp/purgewatch-check-nobody.db");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_tells_systemd_ready_once_watching_and_pings_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    let socket_path = site.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut child = Command::new(env!("CARGO_BIN_EXE_purgewatch"))
        .args(["--config", &file.display().to_string(), "run"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000") // 0.4 s: pings every 0.2 s
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut buf = [0u8; 256];
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while messages
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "messages so far: {messages:?}");
        let n = socket.recv(&mut buf).expect("a notification");
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(messages[0].contains("READY=1"), "READY first: {messages:?}");
    // READY comes after the start-up: the database exists and the first start is recorded.
    let conn = rusqlite::Connection::open(&site.db).expect("db");
    let started: i64 = conn
        .query_row(
            "SELECT count(*) FROM meta WHERE key = 'first_started:default'",
            [],
            |r| r.get(0),
        )
        .expect("meta");
    assert_eq!(started, 1);
}

/// A service manager that never reads the notify socket (its queue full: 10 datagrams by
/// default, net.unix.max_dgram_qlen) must not stall the daemon: READY, STATUS and the watchdog
/// pings are sent without blocking. Seen failing: the daemon's one thread blocked in send(2)
/// and no marker was ever handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_socket_nobody_reads_never_stalls_the_daemon() {
    use std::os::unix::net::UnixDatagram;
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    let socket_path = site.dir.path().join("notify.sock");
    let _socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    // Fill its queue, as a reader that stopped reading would leave it.
    let filler = UnixDatagram::unbound().expect("socket");
    filler.set_nonblocking(true).expect("nonblocking");
    let mut queued = 0;
    while filler.send_to(b"X=1", &socket_path).is_ok() {
        queued += 1;
        assert!(queued < 100_000, "the queue never filled");
    }
    let mut cmd = daemon_command(&file);
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000"); // a ping every 0.1 s, each into the full queue
    let _daemon = spawn_watching(cmd);
    // Markers one after another, each uploaded after its write: every one is purged.
    for n in 1..=3 {
        let rel = format!("d{n}/.purge");
        site.write(&rel, format!("deploy {n}\n").as_bytes());
        site.upload(&rel).await;
        site.settled(n, &["completed"]).await;
    }
    assert_eq!(site.invalidations().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_folder_is_skipped_and_the_rest_is_served() {
    use std::os::unix::fs::PermissionsExt;
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run the daemon as another user");
        return;
    }
    let site = Site::new().await;
    let chmod = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    chmod(site.dir.path(), 0o755);
    chmod(&site.root, 0o755);
    std::fs::create_dir_all(site.root.join("private/inner")).expect("mkdir");
    std::fs::create_dir_all(site.root.join("public")).expect("mkdir");
    chmod(&site.root.join("private"), 0o700);
    let state = tempfile::tempdir().expect("state dir");
    chmod(state.path(), 0o777);
    let db = state.path().join("pw.db");
    let toml = site
        .toml("", "", "")
        .replace(&site.db.display().to_string(), &db.display().to_string());
    let file = site.config_file(&toml);
    chmod(&file, 0o644);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_purgewatch"))
        .args(["--config", &file.display().to_string(), "run"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let daemon = spawn_watching(cmd);
    let warned = daemon
        .early
        .iter()
        .any(|l| l.contains("no read access") && l.contains("private"));
    assert!(warned, "the unreadable folder is named in the log");
    site.write("public/.purge", b"readable");
    site.upload("public/.purge").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = rusqlite::Connection::open(&db)
            .ok()
            .and_then(|c| purgewatch::store::requests::history(&c, None, 10).ok())
            .unwrap_or_default();
        if rows.len() == 1 && rows[0].status == "completed" {
            break rows;
        }
        if Instant::now() > deadline {
            panic!(
                "rows {rows:?}; log {:?}",
                daemon.log.try_iter().collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rows[0].marker, "public/.purge");
}
