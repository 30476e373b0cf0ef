//! kill -9 at every step: the daemon aborts at a crash point (feature `failpoints`), restarts,
//! and the request still ends in exactly one invalidation, with the count object equal to the
//! number of invalidations and a history that says what happened.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use crate::common::{daemon_command, poll, spawn_watching, Site, Spawned};

/// Starts the built daemon (with FAILPOINTS, or without) once it is watching.
fn start(config: &std::path::Path, failpoints: Option<&str>) -> Spawned {
    let mut cmd = daemon_command(config);
    cmd.env_remove("FAILPOINTS");
    if let Some(f) = failpoints {
        cmd.env("FAILPOINTS", f);
    }
    spawn_watching(cmd)
}

async fn crash_and_recover(point: &str) {
    crash_and_recover_with(point, "return", 1).await;
}

/// Crashes at `point` when fail's `action` says so (`return`: the first time; `1*off->return`:
/// the second), in front of `distributions` distributions, and checks that every one ends with
/// exactly one invalidation for the one slot.
async fn crash_and_recover_with(point: &str, action: &str, distributions: usize) {
    let site = Site::new().await;
    let mut ids = vec![site.distribution_id.clone()];
    for _ in 1..distributions {
        ids.push(site.another_distribution().await);
    }
    let list: Vec<String> = ids.iter().map(|d| format!("\"{d}\"")).collect();
    let toml = site.toml("", "", "").replace(
        &format!("distribution_id = \"{}\"", site.distribution_id),
        &format!("distribution_id = [{}]", list.join(", ")),
    );
    let config = site.config_file(&toml);
    let mut daemon = start(&config, Some(&format!("{point}={action}")));
    site.write(".purge", point.as_bytes());
    site.upload(".purge").await;
    let status = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = daemon.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{point}: the daemon did not reach its crash point"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "{point}: crashed, not exited"
    );

    let daemon = start(&config, None);
    let rows = poll(
        &format!("{point}: the request to complete after the restart"),
        Duration::from_secs(60),
        || async {
            let h = site.history();
            (h.len() == 1 && h[0].status == "completed").then_some(h)
        },
    )
    .await;
    drop(daemon);

    for (i, d) in ids.iter().enumerate() {
        let invs = site.invalidations_of(d).await;
        assert_eq!(
            invs.len(),
            1,
            "{point}: exactly one invalidation on {d}: {invs:?}"
        );
        let row = rows[0]
            .invalidations
            .iter()
            .find(|r| &r.distribution_id == d)
            .unwrap_or_else(|| panic!("{point}: {d} in {:?}", rows[0].invalidations));
        assert_eq!(
            row.invalidation_id.as_deref(),
            Some(invs[0].0.as_str()),
            "{point}"
        );
        assert_eq!(row.state.to_string(), "completed", "{point}");
        if i == 0 {
            assert_eq!(
                rows[0].invalidation_id.as_deref(),
                Some(invs[0].0.as_str()),
                "{point}"
            );
        }
    }
    let period = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(
        site.count_object(&period).await.as_deref(),
        Some("1"),
        "{point}: count = invalidations"
    );
    let story: Vec<String> = site
        .events(rows[0].id)
        .into_iter()
        .filter_map(|e| e.2)
        .collect();
    assert!(
        story.iter().any(|d| d.contains("slot 1 of 10")),
        "{point}: {story:?}"
    );
    assert!(
        story.iter().any(|d| d.contains("completed")),
        "{point}: {story:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_request_is_stored() {
    crash_and_recover("after_request_stored").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_origin_check_succeeds() {
    crash_and_recover("after_origin_verified").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_slot_is_reserved_locally() {
    crash_and_recover("after_slot_reserved").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_count_object_is_written() {
    crash_and_recover("after_count_written").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_create_invalidation_is_sent_before_its_id_is_stored() {
    // The restart sends the same batch with the stored CallerReference: CloudFront's contract
    // (the strict emulator's too) answers with the invalidation the first send made.
    crash_and_recover("after_invalidation_sent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_invalidation_id_is_stored() {
    crash_and_recover("after_invalidation_stored").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_distributions_crash_after_the_first_is_sent_before_its_id_is_stored() {
    crash_and_recover_with("after_invalidation_sent", "return", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_distributions_crash_between_the_two_calls() {
    // The first's id is stored; the second is not sent yet.
    crash_and_recover_with("after_invalidation_stored", "return", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_distributions_crash_after_the_second_is_sent_before_its_id_is_stored() {
    crash_and_recover_with("after_invalidation_sent", "1*off->return", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_distributions_crash_after_both_ids_are_stored() {
    crash_and_recover_with("after_invalidation_stored", "1*off->return", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_watches_keeps_serving_and_scans_the_unwatched_folders() {
    let site = Site::new().await;
    std::fs::create_dir_all(site.root.join("deep/er/folder")).expect("mkdir");
    let toml = site
        .toml("", "fallback_scan = \"300ms\"", "")
        .replace("settle = \"200ms\"", "settle = \"100ms\"");
    let config = site.config_file(&toml);
    // The kernel refuses a second watch (test seam): only the root is watched.
    let mut cmd = daemon_command(&config);
    cmd.env("PURGEWATCH_TEST_MAX_WATCHES", "1");
    let daemon = spawn_watching(cmd);
    let advice = daemon
        .early
        .iter()
        .find(|l| l.contains("fs.inotify.max_user_watches"))
        .cloned();
    let advice = advice.expect("one clear error naming fs.inotify.max_user_watches");
    assert!(
        advice.contains("at least 4"),
        "the number needed (4 folders): {advice}"
    );
    // A marker in the watched root: seen by inotify, as before.
    site.write(".purge", b"watched");
    site.upload(".purge").await;
    // Done before the next marker: two requests verified within `settle` of each other would
    // share one invalidation (one sync, one purge), and this test counts two.
    site.settled(1, &["completed"]).await;
    // A marker in a folder without a watch: found by the periodic scan.
    site.write("deep/er/folder/.purge", b"unwatched");
    site.upload("deep/er/folder/.purge").await;
    let rows = poll("both markers handled", Duration::from_secs(30), || async {
        let h = site.history();
        (h.len() == 2 && h.iter().all(|r| r.status == "completed")).then_some(h)
    })
    .await;
    let by_scan = rows
        .iter()
        .find(|r| r.marker == "deep/er/folder/.purge")
        .expect("row");
    assert_eq!(by_scan.origin, "scan");
    assert_eq!(site.invalidations().await.len(), 2);
    let errors = daemon
        .log
        .try_iter()
        .filter(|l| l.contains("ran out of watches"))
        .count();
    assert_eq!(errors, 0, "said once, not per folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_rescans_instead_of_dropping_the_marker() {
    let site = Site::new().await;
    for d in 0..200 {
        std::fs::create_dir_all(site.root.join(format!("s{d}"))).expect("mkdir");
    }
    // Change tracking puts every write on the channel; a channel of 2 overflows at once.
    let toml = site.toml("", "", "").replace(
        &format!("distribution_id = \"{}\"", site.distribution_id),
        &format!(
            "distribution_id = \"{}\"\npaths = \"changed\"",
            site.distribution_id
        ),
    );
    let config = site.config_file(&toml);
    let mut cmd = daemon_command(&config);
    cmd.env("PURGEWATCH_TEST_CHANNEL", "2");
    let daemon = spawn_watching(cmd);
    for w in 0..5_000 {
        site.write(&format!("s{}/p{}.html", w % 200, w % 3), b"storm");
        if w == 2_500 {
            site.write("s7/.purge", b"mid-storm");
        }
    }
    site.upload("s7/.purge").await;
    let rows = poll(
        "the marker to be handled",
        Duration::from_secs(60),
        || async {
            let h = site.history();
            (h.len() == 1 && h[0].status == "completed").then_some(h)
        },
    )
    .await;
    assert_eq!(rows[0].marker, "s7/.purge");
    let log: Vec<String> = daemon.log.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("change set is incomplete")),
        "lost events were noticed"
    );
    // With events lost, the changes are unknown: the purge says so and falls back to /*.
    let story: Vec<String> = site
        .events(rows[0].id)
        .into_iter()
        .filter_map(|e| e.2)
        .collect();
    assert!(
        story.iter().any(|d| d.contains("changes unknown")),
        "{story:?}"
    );
    assert_eq!(site.invalidations().await.len(), 1);
}
