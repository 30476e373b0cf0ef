//! From a marker write to one invalidation: detection, coalescing, and the origin wait.

use std::time::Duration;

use purgewatch::app::Daemon;

use crate::common::{poll, site_and_daemon, Site};

const DONE: &[&str] = &["completed"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_at_the_root_becomes_one_invalidation_of_everything() {
    let (site, daemon) = site_and_daemon().await;
    site.write(".purge", b"deploy 1\n");
    site.upload(".purge").await;
    let rows = site.settled(1, DONE).await;
    let invs = site.invalidations().await;
    assert_eq!(invs.len(), 1, "{invs:?}");
    assert_eq!(invs[0].2, vec!["/*".to_string()]);
    assert_eq!(rows[0].invalidation_id.as_deref(), Some(invs[0].0.as_str()));
    assert_eq!(
        rows[0].caller_reference.as_deref(),
        Some(invs[0].1.as_str())
    );
    assert_eq!(rows[0].marker, ".purge");
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_in_a_folder_created_after_start_is_seen() {
    let (site, daemon) = site_and_daemon().await;
    // mkdir -p and the write race the watch on the new folders: the folder scan must catch it.
    site.write("blog/2026/11/.purge", b"x");
    site.upload("blog/2026/11/.purge").await;
    let rows = site.settled(1, DONE).await;
    assert_eq!(rows[0].marker, "blog/2026/11/.purge");
    assert_eq!(site.invalidations().await.len(), 1);
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_written_as_temp_file_and_renamed_is_seen() {
    let site = Site::new().await;
    std::fs::create_dir_all(site.root.join("shop")).expect("mkdir");
    let daemon = site.start().await;
    // rsync's way: write .purge.XXXXXX, then rename over the name.
    let tmp = site.write("shop/.purge.Ab12Cd", b"rsynced");
    std::fs::rename(&tmp, site.root.join("shop/.purge")).expect("rename");
    site.upload("shop/.purge").await;
    let rows = site.settled(1, DONE).await;
    assert_eq!(rows[0].marker, "shop/.purge");
    assert_eq!(site.invalidations().await.len(), 1);
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_twenty_marker_writes_is_one_invalidation() {
    let site = Site::new().await;
    let cfg = site.config_from(
        &site
            .toml("", "", "")
            .replace("settle = \"200ms\"", "settle = \"1s\""),
    );
    let daemon = site.start_config(cfg).await;
    for i in 0..20 {
        site.write(".purge", format!("write {i}\n").as_bytes());
    }
    site.upload(".purge").await;
    let rows = site.settled(1, DONE).await;
    assert_eq!(site.invalidations().await.len(), 1);
    // The request waited for the last write's bytes, not the first's.
    let conn = rusqlite::Connection::open(&site.db).expect("db");
    let md5: String = conn
        .query_row(
            "SELECT md5 FROM request_markers WHERE request_id = ?1",
            [rows[0].id],
            |r| r.get(0),
        )
        .expect("marker row");
    let last =
        purgewatch::marker::read_marker(&site.root.join(".purge"), ".purge".into()).expect("hash");
    assert_eq!(md5, last.sums.md5);
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_waits_for_the_upload_that_comes_3s_later() {
    let (site, daemon) = site_and_daemon().await;
    site.write(".purge", b"late");
    // The daemon has looked at S3 and found nothing yet, more than once.
    site.noted("not there yet").await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the lsyncd delay being simulated, not a sync
    assert!(
        site.invalidations().await.is_empty(),
        "invalidated before the upload"
    );
    assert_eq!(site.statuses(), vec!["waiting_for_origin"]);
    site.upload(".purge").await;
    site.settled(1, DONE).await;
    assert_eq!(site.invalidations().await.len(), 1);
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_marker_in_s3_is_not_the_new_one() {
    let site = Site::new().await;
    site.write(".purge", b"old");
    site.upload(".purge").await;
    let daemon = site.start().await;
    site.write(".purge", b"new");
    site.noted("differs").await;
    assert!(site.invalidations().await.is_empty());
    site.upload(".purge").await;
    site.settled(1, DONE).await;
    assert_eq!(site.invalidations().await.len(), 1);
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_never_uploaded_ends_in_origin_timeout_without_a_slot() {
    let site = Site::new().await;
    let toml = site
        .toml("", "", "")
        .replace("wait_timeout = \"20s\"", "wait_timeout = \"2s\"");
    let daemon = site.start_with(&toml).await;
    site.write(".purge", b"never synced");
    let rows = site.settled(1, &["origin_timeout"]).await;
    let detail = rows[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("not there yet"), "{detail}");
    assert!(site.invalidations().await.is_empty());
    let period = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(site.count_object(&period).await, None, "no quota used");
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_files_do_not_make_requests() {
    let (site, daemon) = site_and_daemon().await;
    for i in 0..200 {
        site.write(&format!("pages/p{i}.html"), b"<html>");
    }
    site.write("pages/x.purge", b"not the marker");
    site.write("pages/.purge.bak", b"not the marker");
    // Then a real one: once it is handled, the earlier files have been seen too.
    site.write("pages/.purge", b"real");
    site.upload("pages/.purge").await;
    let rows = site.settled(1, DONE).await;
    assert_eq!(rows[0].marker, "pages/.purge");
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_at_shutdown_resumes_at_the_next_start() {
    let (site, daemon) = site_and_daemon().await;
    site.write(".purge", b"parked");
    poll(
        "the request to be stored",
        Duration::from_secs(10),
        || async { (site.history().len() == 1).then_some(()) },
    )
    .await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(site.statuses(), vec!["waiting_for_origin"]);
    site.upload(".purge").await;
    let daemon = Daemon::start(site.config()).await.expect("restart");
    let rows = site.settled(1, DONE).await;
    assert_eq!(rows.len(), 1, "resumed, not duplicated");
    assert_eq!(site.invalidations().await.len(), 1);
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_written_while_stopped_are_handled_once_at_start() {
    let site = Site::new().await;
    site.write(".purge", b"existed before install");
    let daemon = Daemon::start(site.config()).await.expect("first start");
    daemon.shutdown().await.expect("shutdown");
    assert!(
        site.history().is_empty(),
        "the first start must not purge for old markers"
    );

    site.write("news/.purge", b"written while down");
    site.upload("news/.purge").await;
    let daemon = Daemon::start(site.config()).await.expect("restart");
    let rows = site.settled(1, DONE).await;
    assert_eq!(rows[0].marker, "news/.purge");
    assert_eq!(rows[0].origin, "scan");
    daemon.shutdown().await.expect("shutdown");

    // Unchanged markers are not purged again.
    // The catch-up scan runs before start() returns: what it finds is stored by then.
    let daemon = Daemon::start(site.config()).await.expect("third start");
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(site.history().len(), 1);
    assert_eq!(site.invalidations().await.len(), 1);
}

// Regression: notify reported a new folder before adding its watch, so a marker written into it
// at once could fall between our scan and the watch (seen as a 60 s hang in the fleet test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_written_at_once_into_fifty_new_folders_are_all_seen() {
    let site = Site::new().await;
    let cfg = site.config_from(&site.toml("", "", "").replace("max = 10", "max = 100"));
    let daemon = site.start_config(cfg).await;
    let rels: Vec<String> = (0..50).map(|i| format!("n{i}/deep/er/.purge")).collect();
    for rel in &rels {
        site.write(rel, rel.as_bytes());
    }
    for rel in &rels {
        site.upload(rel).await;
    }
    // Each marker path is its own request; those verified together share an invalidation
    // (one sync, one purge), and every request names the one that covered it.
    let rows = site.settled(50, DONE).await;
    let mut seen: Vec<String> = rows.iter().map(|r| r.marker.clone()).collect();
    seen.sort();
    let mut want = rels.clone();
    want.sort();
    assert_eq!(seen, want);
    let made: std::collections::BTreeSet<String> = site
        .invalidations()
        .await
        .into_iter()
        .map(|i| i.0)
        .collect();
    let named: std::collections::BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r.invalidation_id.clone())
        .collect();
    assert_eq!(
        rows.iter().filter(|r| r.invalidation_id.is_some()).count(),
        50
    );
    assert_eq!(named, made);
    assert_eq!(
        site.count_object(&crate::common::today_utc()).await,
        Some(made.len().to_string()),
        "one slot per invalidation"
    );
    daemon.shutdown().await.expect("shutdown");
}

/// With no settle time the first HeadObject goes out while the marker is being stored, and is
/// judged once it is: whether S3 already holds the bytes, holds older ones, or nothing yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_settle_time_the_first_look_at_s3_is_judged_against_the_stored_marker() {
    let site = Site::new().await;
    let put = |rel: &'static str, body: &'static [u8]| {
        site.s3
            .put_object()
            .bucket(&site.origin_bucket)
            .key(rel)
            .body(body.to_vec().into())
            .send()
    };
    put("held/.purge", b"deploy 7\n").await.expect("upload");
    put("older/.purge", b"deploy 6\n").await.expect("upload");
    let toml = site
        .toml("", "", "")
        .replace("settle = \"200ms\"", "settle = \"0s\"");
    let daemon = site.start_with(&toml).await;
    // S3 holds these bytes already: purged at once.
    site.write("held/.purge", b"deploy 7\n");
    let rows = site.settled(1, DONE).await;
    assert_eq!(rows[0].marker, "held/.purge");
    // S3 holds older bytes, and nothing at all: both wait for the upload.
    site.write("older/.purge", b"deploy 7\n");
    site.write("missing/.purge", b"deploy 7\n");
    // The history says why each waits.
    poll(
        "both requests say why they wait",
        Duration::from_secs(20),
        || {
            let why = |m: &str| {
                site.history()
                    .into_iter()
                    .find(|r| r.marker == m && r.status == "waiting_for_origin")
                    .and_then(|r| r.detail)
                    .unwrap_or_default()
            };
            let ok = why("older/.purge").contains("differs")
                && why("missing/.purge").contains("not there yet");
            async move { ok.then_some(()) }
        },
    )
    .await;
    assert_eq!(
        site.invalidations().await.len(),
        1,
        "nothing purged before the upload"
    );
    site.upload("older/.purge").await;
    site.upload("missing/.purge").await;
    let rows = site.settled(3, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(site.invalidations().await.len(), 3);
    let mut markers: Vec<_> = rows.iter().map(|r| r.marker.as_str()).collect();
    markers.sort();
    assert_eq!(markers, ["held/.purge", "missing/.purge", "older/.purge"]);
}
