//! Purge what changed, once all of it is in S3: change tracking, the whole-change wait, and
//! invalidation paths from the change set or from the marker's contents.

use purgewatch::app::Daemon;
use purgewatch::paths::covers;

use crate::common::{site_and_daemon, Site};

const DONE: &[&str] = &["completed"];

/// A site that tracks changes: `paths = "changed"`, and optionally `wait_for = "changes"`.
fn changed_config(
    site: &Site,
    wait_for_changes: bool,
    extra_cloudfront: &str,
) -> purgewatch::config::Config {
    let origin = if wait_for_changes {
        "wait_for = \"changes\""
    } else {
        ""
    };
    let toml = site
        .toml("", "", origin)
        .replace(
            &format!("distribution_id = \"{}\"", site.distribution_id),
            &format!(
                "distribution_id = \"{}\"\npaths = \"changed\"\n{extra_cloudfront}",
                site.distribution_id
            ),
        )
        .replace("settle = \"200ms\"", "settle = \"300ms\"");
    site.config_from(&toml)
}

/// Writes files, uploads them (as lsyncd would), then writes and uploads the marker.
async fn deploy(site: &Site, files: &[String], marker: &str) {
    for f in files {
        site.write(f, format!("<p>{f}</p>").as_bytes());
    }
    for f in files {
        site.upload(f).await;
    }
    site.write(marker, b"deploy\n");
    site.upload(marker).await;
}

async fn only_invalidation_paths(site: &Site) -> Vec<String> {
    let invs = site.invalidations().await;
    assert_eq!(invs.len(), 1, "{invs:?}");
    let mut p = invs[0].2.clone();
    p.sort();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pages_in_one_folder_invalidate_exactly_those_and_the_folder_index() {
    let site = Site::new().await;
    let daemon = Daemon::start(changed_config(&site, false, ""))
        .await
        .expect("start");
    let files: Vec<String> = ["blog/a.html", "blog/b.html", "blog/index.html"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    deploy(&site, &files, ".purge").await;
    let rows = site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    // The folder's index is served as `/blog/` and `/blog` (cached separately).
    assert_eq!(
        only_invalidation_paths(&site).await,
        vec![
            "/blog",
            "/blog/",
            "/blog/a.html",
            "/blog/b.html",
            "/blog/index.html"
        ]
    );
    assert_eq!(rows[0].path_count, Some(5));
    assert_eq!(rows[0].paths.len(), 5);
}

// A folder prepared elsewhere and moved in whole (mv, rsync --delay-updates) brings files that
// no event names: the walk that sets its watches reports them, and the marker inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_moved_in_whole_is_purged_for_every_file_it_brought() {
    let site = Site::new().await;
    let daemon = Daemon::start(changed_config(&site, false, ""))
        .await
        .expect("start");
    let staging = site.dir.path().join("staging");
    for (rel, body) in [
        ("shop/a.html", "a"),
        ("shop/x/b.html", "b"),
        ("shop/x/y/c.css", "c"),
        ("shop/x/.purge", "deploy"),
    ] {
        let p = staging.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, body).expect("write");
    }
    std::fs::rename(staging.join("shop"), site.root.join("shop")).expect("move in");
    for rel in [
        "shop/a.html",
        "shop/x/b.html",
        "shop/x/y/c.css",
        "shop/x/.purge",
    ] {
        site.upload(rel).await;
    }
    let rows = site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(rows[0].marker, "shop/x/.purge");
    assert_eq!(
        only_invalidation_paths(&site).await,
        vec!["/shop/a.html", "/shop/x/b.html", "/shop/x/y/c.css"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_changes_under_blog_become_one_wildcard() {
    let site = Site::new().await;
    let daemon = Daemon::start(changed_config(&site, false, ""))
        .await
        .expect("start");
    let files: Vec<String> = (0..500)
        .map(|i| format!("blog/{}/p{i}.html", i % 7))
        .collect();
    for f in &files {
        site.write(f, b"x");
    }
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await;
    site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(only_invalidation_paths(&site).await, vec!["/blog/*"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_over_forty_folders_fit_max_paths_and_cover_every_key() {
    let site = Site::new().await;
    let daemon = Daemon::start(changed_config(&site, false, "max_paths = 15"))
        .await
        .expect("start");
    let files: Vec<String> = (0..40)
        .flat_map(|d| (0..3).map(move |i| format!("s{}/d{d}/page{i}.html", d % 4)))
        .collect();
    for f in &files {
        site.write(f, b"x");
    }
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await;
    let rows = site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    let paths = only_invalidation_paths(&site).await;
    let story = site.events(rows[0].id);
    assert!(paths.len() <= 15, "{paths:?}");
    assert!(paths.iter().filter(|p| p.ends_with('*')).count() <= 15);
    for f in &files {
        assert!(
            paths.iter().any(|p| covers(p, f)),
            "{f} not covered by {paths:?}"
        );
    }
    assert_ne!(
        paths,
        vec!["/*"],
        "40 folders in 4 trees fit without /*: {story:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_page_is_invalidated_once_s3_no_longer_has_it() {
    let site = Site::new().await;
    site.write("old/gone.html", b"old");
    site.upload("old/gone.html").await;
    let daemon = Daemon::start(changed_config(&site, true, ""))
        .await
        .expect("start");
    std::fs::remove_file(site.root.join("old/gone.html")).expect("rm");
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await;
    site.noted("old/gone.html still in S3").await;
    assert!(
        site.invalidations().await.is_empty(),
        "not before S3 agrees"
    );
    site.s3
        .delete_object()
        .bucket(&site.origin_bucket)
        .key("old/gone.html")
        .send()
        .await
        .expect("delete");
    site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(only_invalidation_paths(&site).await, vec!["/old/gone.html"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_page_still_uploading_holds_the_invalidation_until_it_lands() {
    let site = Site::new().await;
    let daemon = Daemon::start(changed_config(&site, true, ""))
        .await
        .expect("start");
    let big = vec![b'x'; 3 * 1024 * 1024];
    site.write("media/big.html", &big);
    site.write("media/small.html", b"small");
    site.upload("media/small.html").await;
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await; // the marker lands first, as it may with aws s3 sync
    site.noted("media/big.html not in S3 yet").await;
    assert!(
        site.invalidations().await.is_empty(),
        "invalidated before the page landed"
    );
    site.upload("media/big.html").await;
    let rows = site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(
        only_invalidation_paths(&site).await,
        vec!["/media/big.html", "/media/small.html"]
    );
    let events = site.events(rows[0].id);
    assert!(
        events.iter().any(|e| e
            .2
            .as_deref()
            .is_some_and(|d| d.contains("and 2 change(s)"))),
        "the row says how many changes were checked: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_listing_paths_invalidates_exactly_those() {
    let (site, daemon) = site_and_daemon().await;
    site.write(".purge", b"# hot fix\n/news/today.html\n/img/*\n");
    site.upload(".purge").await;
    let rows = site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(
        only_invalidation_paths(&site).await,
        vec!["/img/*", "/news/today.html"]
    );
    assert_eq!(rows[0].path_count, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_marker_list_fails_with_its_line_and_purges_nothing() {
    let (site, daemon) = site_and_daemon().await;
    site.write(".purge", b"/ok.html\n/also ok.html\n");
    site.upload(".purge").await;
    let rows = site.settled(1, &["failed"]).await;
    daemon.shutdown().await.expect("shutdown");
    let detail = rows[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("line 2"), "{detail}");
    assert!(site.invalidations().await.is_empty(), "never a silent /*");
    let period = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(site.count_object(&period).await, None, "no quota used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_changes_are_unknown_and_the_row_says_so() {
    let site = Site::new().await;
    let daemon = Daemon::start(changed_config(&site, false, ""))
        .await
        .expect("first start");
    daemon.shutdown().await.expect("shutdown");
    site.write("while-down.html", b"changed while the daemon was stopped");
    let daemon = Daemon::start(changed_config(&site, false, ""))
        .await
        .expect("restart");
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await;
    let rows = site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(only_invalidation_paths(&site).await, vec!["/*"]);
    let events = site.events(rows[0].id);
    assert!(
        events.iter().any(|e| e
            .2
            .as_deref()
            .is_some_and(|d| d.contains("changes unknown"))),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_rewrites_is_stored_once_per_path() {
    let site = Site::new().await;
    let daemon = Daemon::start(changed_config(&site, false, ""))
        .await
        .expect("start");
    for round in 0..20 {
        for i in 0..250 {
            site.write(
                &format!("s/{}/f{i}.html", i % 10),
                format!("{round}").as_bytes(),
            );
        }
    }
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await;
    let rows = site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    let conn = rusqlite::Connection::open(&site.db).expect("db");
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM changes WHERE request_id = ?1",
            [rows[0].id],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(n, 250, "5,000 writes of 250 files: one row per file");
    assert_eq!(only_invalidation_paths(&site).await, vec!["/s/*"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_reports_this_months_paths_and_their_cost() {
    let (site, daemon) = site_and_daemon().await;
    site.write(".purge", b"/a.html\n/b.html\n/c/*\n");
    site.upload(".purge").await;
    site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    let file = site.config_file(&site.toml("", "", ""));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_purgewatch"))
        .args(["--config", &file.display().to_string(), "quota", "--json"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .expect("quota");
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(q["paths_this_month"], 3);
    assert_eq!(q["free_paths_per_month"], 1000);
    assert_eq!(q["estimated_charge_usd"], 0.0);
}

/// Incremental passes keep what they proved, but not past a local rewrite: a file verified in
/// one pass and written again before the deploy is whole is checked again, so the purge waits
/// for its new upload too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_rewritten_locally_during_the_wait_is_checked_again() {
    let site = Site::new().await;
    let daemon = Daemon::start(changed_config(&site, true, ""))
        .await
        .expect("start");
    site.write("a.html", b"<p>a, first</p>");
    site.write("b.html", b"<p>b</p>");
    site.write(".purge", b"deploy\n");
    site.upload("a.html").await;
    site.upload(".purge").await;
    // a.html is proven; the request waits for b.html.
    let id = site.noted("changes not in S3 yet").await;
    let noted = site
        .events(id)
        .into_iter()
        .filter_map(|e| e.2)
        .rfind(|d| d.contains("changes not in S3 yet"));
    assert!(
        noted
            .as_deref()
            .is_some_and(|d| d.contains("1 of 2 changes") && d.contains("b.html")),
        "{noted:?}"
    );
    // a.html written again (other size) while the request waits; the daemon records it.
    site.write("a.html", b"<p>a, second and longer</p>");
    crate::common::poll(
        "the rewrite recorded",
        std::time::Duration::from_secs(10),
        || async {
            let conn = rusqlite::Connection::open(&site.db).ok()?;
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM changes WHERE request_id IS NULL AND rel = 'a.html'",
                    [],
                    |r| r.get(0),
                )
                .ok()?;
            (n == 1).then_some(())
        },
    )
    .await;
    site.upload("b.html").await;
    crate::common::poll(
        "a.html checked again",
        std::time::Duration::from_secs(20),
        || async {
            let events = site.events(id);
            let last = events.iter().rev().find_map(|e| e.2.clone())?;
            (last.contains("a.html size differs")).then_some(())
        },
    )
    .await;
    assert_eq!(site.history()[0].status, "waiting_for_origin");
    assert!(
        site.invalidations().await.is_empty(),
        "not before a.html's new upload"
    );
    site.upload("a.html").await;
    let rows = site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    assert!(
        site.events(rows[0].id).iter().any(|e| e
            .2
            .as_deref()
            .is_some_and(|d| d.contains("and 2 change(s)"))),
        "every change verified: {:?}",
        site.events(rows[0].id)
    );
}

/// Bounded state: at start (and daily), requests that ended longer ago than `[state] keep` go
/// with their events, markers and changes; the changes of one that ended longer ago than
/// `keep_changes` go, its change count stays; what is recent stays whole. Time passes by the
/// daemon's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_requests_and_changes_are_pruned_and_recent_ones_kept() {
    let site = Site::new().await;
    let clock = purgewatch::clock::Clock::fixed(chrono::Utc::now());
    let knobs = purgewatch::knobs::Knobs {
        clock: clock.clone(),
        ..Default::default()
    };
    let cfg = |site: &Site| {
        let mut c = changed_config(site, false, "");
        c.state.keep = std::time::Duration::from_secs(3600);
        c.state.keep_changes = std::time::Duration::from_secs(60);
        c
    };
    let count = |sql: &str| -> i64 {
        rusqlite::Connection::open(&site.db)
            .expect("db")
            .query_row(sql, [], |r| r.get(0))
            .expect("count")
    };
    let daemon = Daemon::start_with(cfg(&site), knobs.clone())
        .await
        .expect("start");
    deploy(
        &site,
        &["old/a.html".into(), "old/b.html".into()],
        "old/.purge",
    )
    .await;
    site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");

    // Two minutes later: past keep_changes, within keep.
    clock.set(chrono::Utc::now() + chrono::Duration::seconds(120));
    let daemon = Daemon::start_with(cfg(&site), knobs.clone())
        .await
        .expect("restart");
    deploy(&site, &["new/c.html".into()], "new/.purge").await;
    let rows = site.settled(2, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    let (new, old) = (rows[0].id, rows[1].id);
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM changes WHERE request_id = {old}"
        )),
        0
    );
    assert_eq!(
        count(&format!(
            "SELECT change_count FROM requests WHERE id = {old}"
        )),
        2
    );
    assert!(
        count(&format!(
            "SELECT count(*) FROM events WHERE request_id = {old}"
        )) > 0
    );
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM changes WHERE request_id = {new}"
        )),
        1
    );

    // Two hours later: past keep. The old request is gone whole; the quota row too.
    clock.set(chrono::Utc::now() + chrono::Duration::seconds(7200));
    let daemon = Daemon::start_with(cfg(&site), knobs)
        .await
        .expect("restart");
    daemon.shutdown().await.expect("shutdown");
    for table in [
        "requests WHERE id",
        "events WHERE request_id",
        "request_markers WHERE request_id",
    ] {
        for id in [old, new] {
            assert_eq!(
                count(&format!("SELECT count(*) FROM {table} = {id}")),
                0,
                "{table} {id}"
            );
        }
    }
    assert_eq!(count("SELECT count(*) FROM quota"), 0);
    assert_eq!(count("PRAGMA auto_vacuum"), 2, "incremental");
}

/// During an upload, a changed file that S3 still holds from before the local write costs no
/// HeadObject: the listing's LastModified already says the object is the previous upload
/// (bench: with the marker uploaded first, the sweep HEADed every file not uploaded yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_not_uploaded_yet_cost_no_head_object() {
    let site = Site::new().await;
    let files: Vec<String> = (0..20).map(|i| format!("p/{i:02}.html")).collect();
    for f in &files {
        site.write(f, b"<p>old</p>");
        site.upload(f).await;
    }
    // S3 keeps whole seconds and the check allows 1 s of clock skew: the new bytes must be
    // written two clock seconds after the old upload to be told apart by time.
    let secs = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    };
    let uploaded = secs();
    crate::common::poll(
        "two clock seconds past the old upload",
        std::time::Duration::from_secs(5),
        || async { (secs() >= uploaded + 2).then_some(()) },
    )
    .await;
    let daemon = Daemon::start(changed_config(&site, true, ""))
        .await
        .expect("start");
    // Same size, other bytes: only the ETag (and the time) tells the upload apart.
    for f in &files {
        site.write(f, b"<p>new</p>");
    }
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await;
    let id = site.noted("changes not in S3 yet").await;
    let calls = site.origin_calls();
    let headed: Vec<&String> = files
        .iter()
        .filter(|f| {
            calls
                .get(&format!("HeadObject {f}"))
                .is_some_and(|n| *n > 0)
        })
        .collect();
    assert!(headed.is_empty(), "HeadObject for {headed:?}");
    for f in &files {
        site.upload(f).await;
    }
    let rows = site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(rows[0].id, id);
    assert!(
        site.events(id).iter().any(|e| e
            .2
            .as_deref()
            .is_some_and(|d| d.contains("and 20 change(s)"))),
        "every change verified: {:?}",
        site.events(id)
    );
}

// 2,600 changes are three pages of S3's listing: they are asked together (each starts at a known
// changed key), against a layer that answers a page as S3 does, from an index, in 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_a_large_deploy_are_listed_together() {
    let site = Site::new().await;
    site.strict_origin(serde_json::json!({"list_ms": 50, "s3_list": true}));
    let daemon = Daemon::start(changed_config(&site, true, ""))
        .await
        .expect("start");
    let files: Vec<String> = (0..2600).map(|i| format!("docs/p{i:04}.html")).collect();
    for f in &files {
        site.write(f, format!("<p>{f}</p>").as_bytes());
    }
    for chunk in files.chunks(50) {
        futures_util::future::join_all(chunk.iter().map(|f| site.upload(f))).await;
    }
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await;
    let rows = site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    assert!(
        rows[0]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("completed")
            || rows[0].invalidation_id.is_some(),
        "{rows:?}"
    );
    let calls = site.origin_calls();
    assert!(
        calls.get("ListObjectsV2 in flight").copied().unwrap_or(0) >= 2,
        "pages one at a time: {calls:?}"
    );
    // Every change was proven before the invalidation (the wait's own words).
    let events = site.events(rows[0].id);
    assert!(
        events
            .iter()
            .any(|(_, _, d)| d.as_deref().is_some_and(|d| d.contains("2600 change(s)"))),
        "{events:?}"
    );
}
