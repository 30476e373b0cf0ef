//! Running unattended: shadow mode, reload without restart, status at a glance.

use std::time::Duration;

use crate::common::{daemon_command, poll, spawn_watching, today_utc, Site, ENDED};

/// `[cloudfront] dry_run`: the whole way runs, the count object is read but not written, and
/// nothing reaches CloudFront; the row says what would have been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reads_the_quota_and_sends_nothing() {
    let site = Site::new().await;
    site.put_count_object(&today_utc(), "3").await;
    let toml = site
        .toml("", "", "")
        .replace("[cloudfront]", "[cloudfront]\ndry_run = true");
    let daemon = site.start_with(&toml).await;
    site.write(".purge", b"deploy 1\n");
    site.upload(".purge").await;
    let rows = site.settled(1, &["dry_run"]).await;
    daemon.shutdown().await.expect("shutdown");
    let detail = rows[0].detail.clone().unwrap_or_default();
    assert!(
        detail.contains("would invalidate /* with slot 4 of 10"),
        "{detail}"
    );
    assert!(site.invalidations().await.is_empty(), "nothing sent");
    assert_eq!(site.count_object(&today_utc()).await.as_deref(), Some("3"));
}

/// SIGHUP reads the config again: a new `max` applies to the next request; a broken file is
/// refused with one line naming the file and the key, and the daemon goes on as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_max_and_refuses_a_broken_file() {
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    let mut daemon = spawn_watching(daemon_command(&file));
    let hup = |pid: u32| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    };
    let wait_log = |daemon: &mut crate::common::Spawned, needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match daemon.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?} within 30 s"),
            }
        }
    };
    std::fs::write(&file, site.toml("", "", "").replace("max = 10", "max = 1")).expect("write");
    hup(daemon.child.id());
    wait_log(&mut daemon, "reloaded");
    for (n, dir) in ["a", "b"].iter().enumerate() {
        let rel = format!("{dir}/.purge");
        site.write(&rel, format!("deploy {n}\n").as_bytes());
        site.upload(&rel).await;
        site.settled(n + 1, ENDED).await;
    }
    let mut statuses = site.statuses();
    statuses.sort();
    assert_eq!(
        statuses,
        vec!["completed", "quota_exhausted"],
        "max 1 applied"
    );

    std::fs::write(
        &file,
        site.toml("", "", "").replace("max = 10", "max = \"ten\""),
    )
    .expect("write");
    hup(daemon.child.id());
    let line = wait_log(&mut daemon, "reload refused");
    assert!(
        line.contains("quota.max") && line.contains(&file.display().to_string()),
        "{line}"
    );
    assert!(
        daemon.child.try_wait().expect("wait").is_none(),
        "still running"
    );
    site.write("c/.purge", b"deploy 3\n");
    site.upload("c/.purge").await;
    poll(
        "the next marker handled on the old config",
        Duration::from_secs(30),
        || async {
            (site.history().len() == 3 && site.history()[0].status == "quota_exhausted")
                .then_some(())
        },
    )
    .await;
}

/// `purgewatch status`: 1 when no daemon runs, 0 when it runs and is healthy, 2 when it runs
/// degraded (here: a request failed in the last day), 1 again once it stopped cleanly; the
/// JSON has the keys dashboards read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_running_healthy_degraded_and_stopped() {
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    let status = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_purgewatch"))
            .args(["--config", &file.display().to_string(), "status", "--json"])
            .output()
            .expect("status");
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("status --json is JSON");
        (out.status.code(), json)
    };
    assert_eq!(status().0, Some(1), "no daemon yet");
    std::fs::create_dir_all(site.root.join("bad")).expect("mkdir");

    let mut daemon = spawn_watching(daemon_command(&file));
    let (code, json) = poll("status 0", Duration::from_secs(20), || async {
        let (code, json) = status();
        (code == Some(0)).then_some((code, json))
    })
    .await;
    assert_eq!(code, Some(0));
    for key in [
        "running",
        "since",
        "version",
        "watched_folders",
        "unwatched_folders",
        "events_lost",
        "in_progress",
        "quota",
        "last_completed",
        "last_failed",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert_eq!(json["running"], true);
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["quota"]["max"], 10);
    for stage in ["origin", "quota", "cloudfront"] {
        assert!(json["in_progress"][stage].is_u64(), "{json}");
    }

    site.write(".purge", b"deploy 1\n");
    site.upload(".purge").await;
    site.settled(1, &["completed"]).await;
    // A marker that is a symlink cannot be used: a failed request, recorded.
    std::os::unix::fs::symlink("/etc/hostname", site.root.join("x.purge.tmp")).expect("symlink");
    std::fs::rename(site.root.join("x.purge.tmp"), site.root.join("bad/.purge")).expect("rename");
    site.settled(2, ENDED).await;
    let (code, json) = poll("status 2", Duration::from_secs(30), || async {
        let (code, json) = status();
        (code == Some(2)).then_some((code, json))
    })
    .await;
    assert_eq!(code, Some(2));
    assert_eq!(json["last_completed"]["status"], "completed");
    assert_eq!(json["last_failed"]["status"], "failed");

    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    daemon.child.wait().expect("wait");
    assert_eq!(status().0, Some(1), "stopped cleanly");
}
