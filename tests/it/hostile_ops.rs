//! Issue 22, the operator's side: read-only commands never write the database, no secret in a
//! config error, a count object is a few bytes, and names from the tree are data on a terminal.

use crate::common::purgewatch;
use crate::common::{today_utc, Site};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The database and what SQLite keeps beside it.
fn db_files(db: &Path) -> Vec<std::path::PathBuf> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|s| std::path::PathBuf::from(format!("{}{s}", db.display())))
        .filter(|p| p.exists())
        .collect()
}

// `sudo purgewatch check` before the first start created a root-owned database, and the
// service (user purgewatch) then failed for ever with "attempt to write a readonly database".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_before_the_first_start_create_no_database() {
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    let state = site.db.parent().expect("state dir").to_owned();
    for args in [
        &["check"][..],
        &["history"][..],
        &["history", "--json"][..],
        &["status"][..],
        &["status", "--json"][..],
        &["quota"][..],
        &["quota", "--json"][..],
    ] {
        let out = purgewatch(&file, args);
        let (so, se) = (text(&out.stdout), text(&out.stderr));
        assert!(
            db_files(&site.db).is_empty() && !state.exists(),
            "{args:?} left {:?} behind (state dir exists: {}): {so}{se}",
            db_files(&site.db),
            state.exists()
        );
        assert!(
            format!("{so}{se}").contains("the daemon has not run yet"),
            "{args:?} says why there is nothing: {so}{se}"
        );
        let want = match args[0] {
            // Everything else checks out: the usual code.
            "check" | "history" | "quota" => 0,
            // Not running.
            _ => 1,
        };
        assert_eq!(out.status.code(), Some(want), "{args:?}: {so}{se}");
        if args.contains(&"--json") {
            let _: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{args:?} prints JSON still: {e}: {so}"));
        }
    }
    // `check` still checks the rest: a missing distribution fails it as before.
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
    assert!(db_files(&site.db).is_empty() && !state.exists());
}

/// A database from before the current schema is not migrated by a reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_leaves_an_older_schema_for_the_daemon_to_upgrade() {
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    drop(purgewatch::store::Store::open(&site.db).expect("create the database"));
    let version = |db: &Path| -> i64 {
        rusqlite::Connection::open(db)
            .expect("open")
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version")
    };
    let current = version(&site.db);
    rusqlite::Connection::open(&site.db)
        .expect("open")
        .pragma_update(None, "user_version", current - 1)
        .expect("an older version");
    for verb in ["check", "history", "status", "quota"] {
        let out = purgewatch(&file, &[verb]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(version(&site.db), current - 1, "{verb} migrated it: {all}");
        assert!(
            all.contains("the database is from an older version"),
            "{verb} says so: {all}"
        );
    }
}

/// The service writes the database as user purgewatch; an operator who may only read it can
/// still ask `status` and `history`, whether the daemon is running or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_may_only_read_the_database_can_run_status_and_history() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    let state = site.db.parent().expect("state dir").to_owned();
    // The binary and the config where user nobody can reach them.
    let bin = site.dir.path().join("purgewatch");
    std::fs::copy(env!("CARGO_BIN_EXE_purgewatch"), &bin).expect("copy the binary");
    let store = purgewatch::store::Store::open(&site.db).expect("create the database");
    {
        let mut c = store.lock();
        purgewatch::store::requests::insert_failed(
            &mut c,
            "default",
            purgewatch::store::Source::Watch,
            "a/.purge",
            "marker is a FIFO",
        )
        .expect("a row");
    }
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    for d in [site.dir.path(), state.as_path(), site.root.as_path()] {
        chmod(d, 0o755);
    }
    chmod(&file, 0o644);
    let as_nobody = |verb: &str| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&bin)
            .arg("--config")
            .arg(&file)
            .arg(verb)
            .stdin(Stdio::null())
            .output()
            .expect("run setpriv")
    };
    // While the daemon has it open (its -wal and -shm exist, root's), then after it closed it.
    let mut store = Some(store);
    for open in [true, false] {
        for f in db_files(&site.db) {
            chmod(&f, 0o644);
        }
        for verb in ["status", "history"] {
            let out = as_nobody(verb);
            let (so, se) = (text(&out.stdout), text(&out.stderr));
            // status: 1 = not running (no daemon's pid), which is a successful answer.
            let ok = if verb == "status" {
                out.status.code() == Some(1) && so.contains("not running")
            } else {
                out.status.success() && so.contains("marker is a FIFO")
            };
            assert!(
                ok,
                "{verb} as nobody (writer open: {open}): {:?} {so}{se}",
                out.status
            );
        }
        // The last connection closes: SQLite removes the -wal and -shm.
        drop(store.take());
    }
}

/// A webhook URL carries its token: a config error names the key, never the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_webhook_is_named_by_its_key_and_never_echoed() {
    let site = Site::new().await;
    let good = site.toml("", "", "");
    for webhook in [
        "\"http://hooks.slack.com/services/T000/B000/SECRETTOKEN\"",
        "\"hooks.slack.com/services/T000/B000/SECRETTOKEN\"",
        "\"https://hooks slack.com/services/T000/B000/SECRETTOKEN\"",
        "\"https:///services/T000/B000/SECRETTOKEN\"",
        "\"ftp://hooks.slack.com/services/T000/B000/SECRETTOKEN\"",
    ] {
        let file = site.config_file(&format!("{good}\n[notify]\nwebhook = {webhook}\n"));
        for verb in ["check", "run"] {
            let out = purgewatch(&file, &[verb]);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{verb} {webhook}: {err}");
            assert!(
                err.contains("`notify.webhook`") && err.contains(&file.display().to_string()),
                "{verb} {webhook}: names the key and the file: {err}"
            );
            assert!(
                !err.contains("SECRETTOKEN") && !text(&out.stdout).contains("SECRETTOKEN"),
                "{verb} {webhook}: echoed the secret: {err}"
            );
        }
    }
    // A token in a TOML syntax error (an unquoted URL, an unclosed string) is not echoed either.
    for line in [
        "webhook = https://hooks.slack.com/services/T000/B000/SECRETTOKEN",
        "webhook = \"https://hooks.slack.com/services/T000/B000/SECRETTOKEN",
    ] {
        let file = site.config_file(&format!("{good}\n[notify]\n{line}\n"));
        let out = purgewatch(&file, &["check"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{line}: {err}");
        assert!(!err.contains("SECRETTOKEN"), "{line}: {err}");
    }
    // A good webhook: `check` and `status` show at most where it goes.
    let file = site.config_file(&format!(
        "{good}\n[notify]\nwebhook = \"https://hooks.slack.com/services/T000/B000/SECRETTOKEN\"\n"
    ));
    for verb in ["check", "status", "history", "quota"] {
        let out = purgewatch(&file, &[verb]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains("SECRETTOKEN"), "{verb}: {all}");
    }
}

/// The body of a count object of `size` bytes of digits.
fn digits(size: usize) -> String {
    "1234567890".repeat(size / 10 + 1)[..size].to_owned()
}

/// Runs `purgewatch quota` and returns its output with its peak RSS in bytes. The child is
/// started by a small Python process that reports its `wait4` rusage: a child forked or
/// vforked from this test process starts with this process's resident pages counted in its
/// own peak (the 64 MiB the test just uploaded among them).
fn quota_with_peak_rss(file: &Path) -> (Output, u64) {
    const REPORT: &str = "import os, sys\n\
        pid = os.fork()\n\
        if pid == 0:\n    os.execv(sys.argv[1], sys.argv[1:])\n\
        _, status, ru = os.wait4(pid, 0)\n\
        sys.stderr.write('\\nmaxrss_kib=%d\\n' % ru.ru_maxrss)\n\
        sys.exit(os.waitstatus_to_exitcode(status))\n";
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let python = if venv.exists() {
        venv
    } else {
        "python3".into()
    };
    let out = Command::new(python)
        .args(["-c", REPORT, env!("CARGO_BIN_EXE_purgewatch"), "--config"])
        .arg(file)
        .arg("quota")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("RUST_LOG")
        .output()
        .expect("run purgewatch quota under python");
    let err = text(&out.stderr);
    let kib: u64 = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rusage reported: {err}"));
    (out, kib * 1024)
}

// A 400 MiB count object made `purgewatch quota` take 414 MB: the body was collected whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_count_object_is_refused_by_its_size_without_being_read() {
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    let period = today_utc();
    // A baseline: the same command on a count object of a few bytes.
    site.put_count_object(&period, "3").await;
    let (out, small_rss) = quota_with_peak_rss(&file);
    assert!(
        out.status.success() && text(&out.stdout).contains("= 3"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    const SIZE: usize = 64 << 20;
    site.put_count_object(&period, &digits(SIZE)).await;
    let (out, rss) = quota_with_peak_rss(&file);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(
        rss < small_rss + (8 << 20),
        "peak RSS {} MiB with a {} MiB count object, {} MiB with a small one: the body was \
         read: {so}{se}",
        rss >> 20,
        SIZE >> 20,
        small_rss >> 20
    );
    assert_eq!(out.status.code(), Some(1), "fails closed: {so}{se}");
    assert!(
        so.contains(&format!("{SIZE} bytes")) && so.contains("not a count"),
        "names the size: {so}{se}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_grants_no_slot_on_a_count_object_of_megabytes() {
    let site = Site::new().await;
    let period = today_utc();
    const SIZE: usize = 5 << 20;
    site.put_count_object(&period, &digits(SIZE)).await;
    let daemon = site.start().await;
    site.write(".purge", b"x");
    site.upload(".purge").await;
    let id = site.noted(&format!("{SIZE} bytes")).await;
    let events = site.events(id);
    assert!(
        events.iter().any(|e| e
            .2
            .as_deref()
            .is_some_and(|d| d.contains("not a count") && d.contains("fix or delete it"))),
        "{events:?}"
    );
    let row = site
        .history()
        .into_iter()
        .find(|r| r.id == id)
        .expect("row");
    assert_eq!(row.status, "waiting_for_quota", "not granted: {row:?}");
    assert!(
        site.invalidations().await.is_empty(),
        "no invalidation without a confirmed slot"
    );
    // The operator deletes it: the waiting request proceeds (the count starts again at 0).
    site.s3
        .delete_object()
        .bucket(&site.count_bucket)
        .key(format!("{period}.txt"))
        .send()
        .await
        .expect("delete");
    site.settled(1, &["completed"]).await;
    daemon.shutdown().await.expect("shutdown");
}

/// A folder name that clears the screen, retitles the window and rings the bell.
const HOSTILE: &str = "x\x1b[2J\x1b]0;pwned\x07<!channel>\u{9b}31m";

// `purgewatch history` printed a marker's folder name as it was: the terminal acted on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_the_tree_reach_the_terminal_escaped() {
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    let rel = format!("{HOSTILE}/.purge");
    {
        let store = purgewatch::store::Store::open(&site.db).expect("open");
        let mut c = store.lock();
        purgewatch::store::requests::insert_failed(
            &mut c,
            "default",
            purgewatch::store::Source::Watch,
            &rel,
            &format!("marker {rel} is a FIFO"),
        )
        .expect("a failed request");
    }
    for args in [
        &["history"][..],
        &["history", "--json"][..],
        &["status"][..],
        &["status", "--json"][..],
    ] {
        let out = purgewatch(&file, args);
        let so = text(&out.stdout);
        for b in [0x1b_u8, 0x07, 0x9b] {
            assert!(
                !out.stdout.contains(&b),
                "{args:?}: byte {b:#04x} reached the terminal: {so:?}"
            );
        }
        let escaped = if args.contains(&"--json") {
            "x\\u001b[2J\\u001b]0;pwned\\u0007<!channel>\\u009b31m"
        } else {
            "x\\u{1b}[2J\\u{1b}]0;pwned\\u{7}<!channel>\\u{9b}31m"
        };
        assert!(
            so.contains(escaped),
            "{args:?} shows the escaped name: {so}"
        );
    }
    // What the JSON says is still the name itself.
    let out = purgewatch(&file, &["history", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["marker"], rel.as_str());
}

/// A count object holding control characters: `purgewatch quota` shows them escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_object_of_control_characters_is_shown_escaped() {
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    site.put_count_object(&today_utc(), "\u{9b}2J\x1b[2J").await;
    for args in [&["quota"][..], &["quota", "--json"][..]] {
        let out = purgewatch(&file, args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        for b in [0x1b_u8, 0x9b] {
            assert!(
                !out.stdout.contains(&b),
                "{args:?}: byte {b:#04x}: {:?}",
                text(&out.stdout)
            );
        }
    }
}
