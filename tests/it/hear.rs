//! Hearing the upload (issue 25): while a marker waits for S3, its folder's watch hears the
//! marker read to its close by another process (an uploader), and the wait looks at once, in a
//! burst, instead of at the slow schedule's next turn. Behaviour, not timing: what the watcher
//! reports, and how many looks S3 saw.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use purgewatch::watch::{self, Lost, WatchEvent};
use tokio::sync::mpsc;

use crate::common::{poll, Site};

/// The next event, within 10 s.
async fn next(rx: &mut mpsc::Receiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("the watcher runs")
}

/// The Read events up to the first of `sentinel`: what the kernel queued before it. (Reads are
/// compared with reads: a close-after-read may be queued after a later write's close.)
async fn reads_before(rx: &mut mpsc::Receiver<WatchEvent>, sentinel: &Path) -> Vec<PathBuf> {
    std::fs::read(sentinel).expect("read sentinel");
    let mut before = Vec::new();
    loop {
        match next(rx).await {
            WatchEvent::Read(p) if p == sentinel => return before,
            WatchEvent::Read(p) => before.push(p),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_heard_only_while_listening_and_never_our_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("blog")).expect("mkdir");
    std::fs::create_dir_all(root.join("other")).expect("mkdir");
    let marker = root.join("blog/.purge");
    std::fs::write(&marker, b"deploy\n").expect("write");
    // Another waiting marker, in another folder: its reads mark the end of what came before.
    let sentinel = root.join("other/.purge");
    std::fs::write(&sentinel, b"s").expect("write");
    let (tx, mut rx) = mpsc::channel(64);
    let started = watch::start(
        &root,
        ".purge",
        false,
        tx,
        Arc::new(Lost::default()),
        &purgewatch::knobs::Knobs::default(),
    )
    .expect("watch");
    let _sentinel_listening = started.listener.listen(vec![root.join("other")]);
    // The masks change on the watch thread: read until the sentinel is heard.
    let mut heard = false;
    for _ in 0..100 {
        std::fs::read(&sentinel).expect("read");
        if let Ok(Some(WatchEvent::Read(_))) =
            tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "a read was never heard while listening");
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {}

    // Not listening to blog/: its reads are not events (a web server's reads cost nothing).
    std::fs::read(&marker).expect("read");
    assert!(reads_before(&mut rx, &sentinel).await.is_empty());

    // Listening: another reader's close is heard.
    let listening = started.listener.listen(vec![root.join("blog")]);
    let mut heard = false;
    for _ in 0..100 {
        std::fs::read(&marker).expect("read");
        if !reads_before(&mut rx, &sentinel).await.is_empty() {
            heard = true;
            break;
        }
    }
    assert!(
        heard,
        "a read of blog/.purge was never heard while listening"
    );

    // Our own read (the intake's, the same function the daemon calls) is not heard.
    purgewatch::marker::read_marker(&marker, "blog/.purge".into()).expect("own read");
    assert!(
        reads_before(&mut rx, &sentinel).await.is_empty(),
        "own read heard"
    );
    // Another reader still is.
    std::fs::read(&marker).expect("read");
    assert_eq!(reads_before(&mut rx, &sentinel).await, vec![marker.clone()]);

    // The wait ends: the mask is restored, reads are not heard again.
    drop(listening);
    let mut restored = false;
    for _ in 0..100 {
        std::fs::read(&marker).expect("read");
        if reads_before(&mut rx, &sentinel).await.is_empty() {
            restored = true;
            break;
        }
    }
    assert!(restored, "reads still heard after the wait ended");
    for _ in 0..3 {
        std::fs::read(&marker).expect("read");
        assert!(reads_before(&mut rx, &sentinel).await.is_empty());
    }
    started.watch.stop();
}

/// HeadObjects of `key` the emulator has seen.
fn heads(site: &Site, key: &str) -> u64 {
    site.origin_calls()
        .get(&format!("HeadObject {key}"))
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_by_another_process_brings_looks_at_once_and_the_purge_with_them() {
    let site = Site::new().await;
    let daemon = site.start().await;
    let marker = site.write(".purge", b"deploy 7\n");
    // The slow schedule backs off while nothing is uploaded: 0.25, 0.5, 1, 2, 4, then 8 s.
    poll("six looks", Duration::from_secs(30), || async {
        (heads(&site, ".purge") >= 6).then_some(())
    })
    .await;
    let before = heads(&site, ".purge");
    // The uploader reads the file: looks come at once, before the schedule's next (8 s on).
    std::fs::read(&marker).expect("read");
    poll("a burst of looks", Duration::from_secs(2), || async {
        (heads(&site, ".purge") >= before + 3).then_some(())
    })
    .await;
    // Its upload lands within the burst: the purge follows without waiting for the schedule.
    site.put(".purge", b"deploy 7\n").await;
    let rows = site.settled(1, &["completed"]).await;
    assert_eq!(site.invalidations().await.len(), 1);
    assert!(
        heads(&site, ".purge") <= before + 15,
        "one burst: {} looks after {before}",
        heads(&site, ".purge")
    );
    assert_eq!(rows[0].marker, ".purge");
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_is_no_upload_costs_a_burst_and_the_wait_still_times_out() {
    let site = Site::new().await;
    let toml = site
        .toml("", "", "")
        .replace("wait_timeout = \"20s\"", "wait_timeout = \"6s\"");
    let daemon = site.start_with(&toml).await;
    let marker = site.write("news/.purge", b"x\n");
    poll("the first look", Duration::from_secs(10), || async {
        (heads(&site, "news/.purge") >= 1).then_some(())
    })
    .await;
    // A backup reading the tree, twice: no upload follows.
    std::fs::read(&marker).expect("read");
    std::fs::read(&marker).expect("read");
    let rows = site.settled(1, &["origin_timeout"]).await;
    assert!(
        rows[0]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("gave up after 6s"),
        "{rows:?}"
    );
    // The schedule's few looks in 6 s, and at most one burst (the budget: 20 + 1 per 2 s).
    let looks = heads(&site, "news/.purge");
    assert!(looks <= 6 + 15, "{looks} looks");
    assert!(site.invalidations().await.is_empty());
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_marker_is_not_held_back_by_the_window_for_others_of_its_sync() {
    let site = Site::new().await;
    // A long settle: requests verified within it share one invalidation; with no other
    // request waiting, none can join, and the verified one goes on at once.
    let toml = site
        .toml("", "", "")
        .replace("settle = \"200ms\"", "settle = \"3s\"");
    let daemon = site.start_with(&toml).await;
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await;
    let rows = site.settled(1, &["completed"]).await;
    daemon.shutdown().await.expect("shutdown");
    let db = rusqlite::Connection::open(&site.db).expect("db");
    let (verified, granted): (String, String) = db
        .query_row(
            "SELECT verified_at, granted_at FROM requests WHERE id = ?1",
            [rows[0].id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("times");
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).expect("rfc 3339");
    let held = at(&granted) - at(&verified);
    assert!(
        held < chrono::Duration::seconds(3),
        "verified {verified}, granted {granted}: held for the window"
    );
}
