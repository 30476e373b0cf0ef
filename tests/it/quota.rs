//! The quota: local counter, the seed's count object, time zones, and a fleet sharing one bucket.

use std::time::Duration;

use chrono::Utc;
use purgewatch::app::{purge_now, Daemon};

use crate::common::{poll, today_utc, Site, ENDED};

/// Writes and uploads a fresh marker, then waits until the daemon has ended `n` requests.
async fn marker_round(site: &Site, folder: &str, n: usize) {
    let rel = format!("{folder}/.purge");
    site.write(&rel, format!("round {n}\n").as_bytes());
    site.upload(&rel).await;
    site.settled(n, ENDED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_three_of_five_requests_invalidate_and_the_count_object_says_3() {
    let site = Site::new().await;
    let cfg = site.config_from(&site.toml("", "", "").replace("max = 10", "max = 3"));
    let daemon = site.start_config(cfg).await;
    for n in 1..=5 {
        marker_round(&site, &format!("d{n}"), n).await;
    }
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(site.invalidations().await.len(), 3);
    assert_eq!(site.count_object(&today_utc()).await.as_deref(), Some("3"));
    let statuses = site.statuses();
    assert_eq!(statuses.iter().filter(|s| *s == "completed").count(), 3);
    let exhausted: Vec<_> = site
        .history()
        .into_iter()
        .filter(|r| r.status == "quota_exhausted")
        .collect();
    assert_eq!(exhausted.len(), 2, "{statuses:?}");
    for r in exhausted {
        let d = r.detail.unwrap_or_default();
        assert!(d.contains("3 of 3"), "the row says why: {d}");
        assert!(r.invalidation_id.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_lambda_count_of_9_allows_one_more() {
    let site = Site::new().await;
    let period = today_utc();
    site.put_count_object(&period, "9").await;
    let daemon = site.start().await;
    marker_round(&site, "a", 1).await;
    marker_round(&site, "b", 2).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(site.invalidations().await.len(), 1);
    assert_eq!(site.count_object(&period).await.as_deref(), Some("10"));
    let mut statuses = site.statuses();
    statuses.sort();
    assert_eq!(statuses, vec!["completed", "quota_exhausted"]);
}

/// The daemon skips the GET before a grant when it wrote the count object last; the conditional
/// write must then catch a count the old Lambda wrote meanwhile (unconditionally, as it does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_the_old_lambda_wrote_between_two_grants_is_read_again() {
    let site = Site::new().await;
    let period = today_utc();
    let daemon = site.start().await;
    marker_round(&site, "a", 1).await;
    assert_eq!(site.count_object(&period).await.as_deref(), Some("1"));
    site.put_count_object(&period, "7").await;
    marker_round(&site, "b", 2).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(site.count_object(&period).await.as_deref(), Some("8"));
    assert_eq!(site.invalidations().await.len(), 2);
    assert_eq!(site.statuses(), vec!["completed", "completed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokyo_time_zone_names_the_count_object_by_the_tokyo_date() {
    let site = Site::new().await;
    let toml = site
        .toml("timezone = \"Asia/Tokyo\"", "", "")
        .replace("max = 10", "max = 5");
    let tokyo = || {
        Utc::now()
            .with_timezone(&chrono_tz::Asia::Tokyo)
            .format("%Y-%m-%d")
            .to_string()
    };
    let before = tokyo();
    let row = purge_now(site.config_from(&toml), false)
        .await
        .expect("purge");
    let after = tokyo();
    assert_eq!(row.status, "invalidated");
    let period = row.period.expect("period recorded");
    assert!(
        period == before || period == after,
        "{period} vs {before}/{after}"
    );
    assert_eq!(site.count_object(&period).await.as_deref(), Some("1"));
    // The UTC date differs from Tokyo's for 9 hours a day; then no UTC-named object may exist.
    if today_utc() != period {
        assert_eq!(site.count_object(&today_utc()).await, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_period_uses_the_seed_month_name() {
    let site = Site::new().await;
    let toml = site.toml("period = \"month\"", "", "");
    let month = Utc::now().format("%Y-%m").to_string();
    site.put_count_object(&month, "4").await;
    let row = purge_now(site.config_from(&toml), false)
        .await
        .expect("purge");
    assert_eq!(row.status, "invalidated");
    assert_eq!(site.count_object(&month).await.as_deref(), Some("5"));
}

/// A burst in one daemon: six markers written together and uploaded together (as lsyncd pushes
/// a batch), max 4. Their grants overlap, each waiting on the count object while the next
/// decides; exactly 4 slots are taken and the count object says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_markers_at_once_in_one_daemon_take_exactly_max_slots() {
    let site = Site::new().await;
    // Settle 0: no window in which markers verified together share one invalidation (one
    // sync, one purge), so each marker takes its own grant and the grants race.
    let toml = site
        .toml("", "", "")
        .replace("max = 10", "max = 4")
        .replace("settle = \"200ms\"", "settle = \"0s\"");
    let daemon = site.start_with(&toml).await;
    let rels: Vec<String> = (1..=6).map(|n| format!("batch{n}/.purge")).collect();
    for (n, rel) in rels.iter().enumerate() {
        site.write(rel, format!("batch {n}\n").as_bytes());
    }
    for rel in &rels {
        site.upload(rel).await;
    }
    site.settled(6, ENDED).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(site.invalidations().await.len(), 4);
    assert_eq!(site.count_object(&today_utc()).await.as_deref(), Some("4"));
    let mut statuses = site.statuses();
    statuses.sort();
    assert_eq!(
        statuses,
        vec![
            "completed",
            "completed",
            "completed",
            "completed",
            "quota_exhausted",
            "quota_exhausted"
        ]
    );
}

async fn four_rounds(s: &Site) {
    for n in 1..=4 {
        marker_round(s, &format!("r{n}"), n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_count_bucket_never_exceed_max_together() {
    let a = Site::new().await;
    let b = a.sibling();
    let max3 = |s: &Site| s.config_from(&s.toml("", "", "").replace("max = 10", "max = 3"));
    let da = Daemon::start(max3(&a)).await.expect("start a");
    let db = Daemon::start(max3(&b)).await.expect("start b");
    // Both servers get four purges each, at the same time.
    tokio::join!(four_rounds(&a), four_rounds(&b));
    da.shutdown().await.expect("shutdown a");
    db.shutdown().await.expect("shutdown b");
    assert_eq!(a.invalidations().await.len(), 3);
    assert_eq!(a.count_object(&today_utc()).await.as_deref(), Some("3"));
    let done = a
        .statuses()
        .into_iter()
        .chain(b.statuses())
        .filter(|s| s == "completed")
        .count();
    assert_eq!(done, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_manual_purges_on_two_servers_take_exactly_max_slots() {
    let a = Site::new().await;
    let b = a.sibling();
    let cfg = |s: &Site| s.config_from(&s.toml("", "", "").replace("max = 10", "max = 4"));
    let (ca, cb) = (cfg(&a), cfg(&b));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        tasks.push(tokio::spawn(async move { purge_now(c, false).await }));
    }
    let mut invalidated = 0;
    for t in tasks {
        let row = t.await.expect("task").expect("purge");
        assert!(
            ["invalidated", "quota_exhausted"].contains(&row.status.as_str()),
            "{row:?}"
        );
        invalidated += (row.status == "invalidated") as usize;
    }
    assert_eq!(invalidated, 4);
    assert_eq!(a.invalidations().await.len(), 4);
    assert_eq!(a.count_object(&today_utc()).await.as_deref(), Some("4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_count_object_is_an_error_not_a_reset() {
    let site = Site::new().await;
    let period = today_utc();
    site.put_count_object(&period, "abc").await;
    let daemon = site.start().await;
    site.write(".purge", b"x");
    site.upload(".purge").await;
    let id = poll(
        "the malformed count to be recorded",
        Duration::from_secs(20),
        || async {
            let h = site.history();
            let r = h.first()?;
            site.events(r.id)
                .iter()
                .any(|e| {
                    e.2.as_deref()
                        .is_some_and(|d| d.contains("\"abc\"") && d.contains("not a count"))
                })
                .then_some(r.id)
        },
    )
    .await;
    assert!(
        site.invalidations().await.is_empty(),
        "no invalidation without a confirmed slot"
    );
    // The operator fixes the object; the waiting request proceeds.
    site.put_count_object(&period, "2").await;
    let rows = site.settled(1, &["completed"]).await;
    assert_eq!(rows[0].id, id);
    assert_eq!(site.count_object(&period).await.as_deref(), Some("3"));
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_requests_of_a_period_coalesce_into_one_invalidation_next_period() {
    // The daemon's clock is the test's: a day passes when the test says so (today at noon,
    // then tomorrow just after midnight; the rows' own timestamps stay the real ones).
    let today0 = Utc::now().date_naive();
    let day = |d: u64, h: u32| {
        (today0 + chrono::Days::new(d))
            .and_hms_opt(h, 0, 0)
            .map(|t| t.and_utc())
            .expect("a date")
    };
    let clock = purgewatch::clock::Clock::fixed(day(0, 12));
    let knobs = purgewatch::knobs::Knobs {
        clock: clock.clone(),
        ..Default::default()
    };
    let site = Site::new().await;
    let toml = site
        .toml("when_exhausted = \"defer\"", "", "")
        .replace("max = 10", "max = 1");
    let daemon = Daemon::start_with(site.config_from(&toml), knobs.clone())
        .await
        .expect("start");
    for n in 1..=3 {
        marker_round(&site, &format!("d{n}"), n).await;
    }
    daemon.shutdown().await.expect("shutdown");
    let mut statuses = site.statuses();
    statuses.sort();
    assert_eq!(statuses, vec!["completed", "deferred", "deferred"]);
    assert_eq!(site.invalidations().await.len(), 1);
    let first_day = day(0, 12).format("%Y-%m-%d").to_string();
    assert_eq!(site.count_object(&first_day).await.as_deref(), Some("1"));

    // The next day: the deferred requests run at start, in one invalidation.
    clock.set(day(1, 0));
    let today = day(1, 0).format("%Y-%m-%d").to_string();
    let daemon = Daemon::start_with(site.config_from(&toml), knobs)
        .await
        .expect("restart");
    let rows = site.settled(3, &["completed"]).await;
    daemon.shutdown().await.expect("shutdown");
    let invs = site.invalidations().await;
    assert_eq!(
        invs.len(),
        2,
        "two deferred requests, one invalidation: {invs:?}"
    );
    let ids: std::collections::BTreeSet<_> = rows
        .iter()
        .filter_map(|r| r.invalidation_id.clone())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(site.count_object(&today).await.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_purge_while_the_daemon_runs_shares_its_quota() {
    let site = Site::new().await;
    let toml = site.toml("", "", "").replace("max = 10", "max = 2");
    let daemon = site.start_with(&toml).await;
    site.write(".purge", b"deploy");
    site.upload(".purge").await;
    // Two manual purges race the daemon's request for the last slots of one database.
    let (m1, m2) = tokio::join!(
        purge_now(site.config_from(&toml), false),
        purge_now(site.config_from(&toml), false)
    );
    let (m1, m2) = (m1.expect("purge 1"), m2.expect("purge 2"));
    let rows = site
        .settled(3, &["completed", "invalidated", "quota_exhausted"])
        .await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(site.invalidations().await.len(), 2);
    assert_eq!(site.count_object(&today_utc()).await.as_deref(), Some("2"));
    let exhausted = rows
        .iter()
        .filter(|r| r.status == "quota_exhausted")
        .count();
    assert_eq!(exhausted, 1, "{rows:?}");
    assert!([m1.origin.as_str(), m2.origin.as_str()] == ["manual", "manual"]);
}
