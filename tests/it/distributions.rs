//! Several distributions in front of one site (`cloudfront.distribution_id` as a list): one purge,
//! one quota slot, one invalidation on each distribution with its own CallerReference; one
//! busy distribution does not hold back the others; a refusal names its distribution.

use std::time::Duration;

use serde_json::json;

use crate::common::{free_port, poll, purgewatch, Site, ENDED};
use crate::metrics::{get, value};

/// The site's config with `ids` as its distributions (and the metrics page on `port`).
fn with_distributions(site: &Site, ids: &[&str], port: Option<u16>) -> String {
    let list: Vec<String> = ids.iter().map(|d| format!("\"{d}\"")).collect();
    let toml = site.toml("", "", "").replace(
        &format!("distribution_id = \"{}\"", site.distribution_id),
        &format!("distribution_id = [{}]", list.join(", ")),
    );
    match port {
        Some(p) => toml + &format!("\n[metrics]\nlisten = \"127.0.0.1:{p}\"\n"),
        None => toml,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_purge_reaches_every_distribution_once_for_one_slot() {
    let site = Site::new().await;
    let (d1, d2) = (
        site.distribution_id.clone(),
        site.another_distribution().await,
    );
    let port = free_port();
    let toml = with_distributions(&site, &[&d1, &d2], Some(port));
    let daemon = site.start_with(&toml).await;
    site.write(".purge", b"deploy 1\n");
    site.upload(".purge").await;
    let rows = site.settled(1, ENDED).await;
    let (_, page) = get(port, "/metrics", "*/*").await;
    daemon.shutdown().await.expect("shutdown");

    assert_eq!(rows[0].status, "completed", "{:?}", rows[0].detail);
    let (i1, i2) = (
        site.invalidations_of(&d1).await,
        site.invalidations_of(&d2).await,
    );
    assert_eq!((i1.len(), i2.len()), (1, 1), "one each: {i1:?} {i2:?}");
    assert_eq!(
        (i1[0].2.clone(), i2[0].2.clone()),
        (vec!["/*".to_owned()], vec!["/*".to_owned()])
    );
    assert_ne!(i1[0].1, i2[0].1, "each its own CallerReference");
    // One purge, one slot, as the Lambda counted.
    let period = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(site.count_object(&period).await.as_deref(), Some("1"));

    // The history has each distribution's invalidation and state.
    let inv = &rows[0].invalidations;
    let seen: Vec<(&str, Option<&str>, String)> = inv
        .iter()
        .map(|r| {
            (
                r.distribution_id.as_str(),
                r.invalidation_id.as_deref(),
                r.state.to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (d1.as_str(), Some(i1[0].0.as_str()), "completed".to_owned()),
            (d2.as_str(), Some(i2[0].0.as_str()), "completed".to_owned()),
        ]
    );
    assert_eq!(inv[0].caller_reference, i1[0].1);
    assert_eq!(inv[1].caller_reference, i2[0].1);
    let detail = rows[0].detail.clone().unwrap_or_default();
    assert!(detail.contains(&d1) && detail.contains(&d2), "{detail}");

    // The terminal, the JSON and the month's billed paths (1,000 free per account).
    let file = site.config_file(&toml);
    let text = String::from_utf8_lossy(&purgewatch(&file, &["history"]).stdout).into_owned();
    assert!(
        text.contains(&format!("on {d2}: {} completed", i2[0].0)),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&purgewatch(&file, &["history", "--json"]).stdout).expect("json");
    assert_eq!(json[0]["invalidations"][1]["distribution_id"], json!(d2));
    assert_eq!(json[0]["invalidations"][1]["state"], json!("completed"));
    let q: serde_json::Value =
        serde_json::from_slice(&purgewatch(&file, &["quota", "--json"]).stdout).expect("json");
    assert_eq!(q["paths_this_month"], 2, "/* sent to two distributions");

    // Metrics: an invalidation per distribution, and each distribution's state.
    assert_eq!(
        value(&page, "purgewatch_invalidations_total"),
        Some(2.0),
        "{page}"
    );
    for d in [&d1, &d2] {
        let series = format!(
            r#"purgewatch_distribution_invalidations{{site="default",distribution="{d}",state="completed"}}"#
        );
        assert_eq!(value(&page, &series), Some(1.0), "{series} in\n{page}");
    }
}

/// TooManyInvalidationsInProgress on the first distribution: the second gets its invalidation
/// at once; the first waits for its own invalidations, then the request completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_distribution_does_not_hold_back_the_others() {
    let site = Site::new().await;
    let busy = site.another_distribution().await;
    let free = site.distribution_id.clone();
    crate::common::strict::distribution(&busy, json!({"in_progress_secs": 6}));
    // 15 wildcards in progress there: CloudFront's limit, so the purge's /* is refused for now.
    let fifteen: Vec<String> = (0..15).map(|i| format!("/d{i}/*")).collect();
    site.cloudfront
        .create_invalidation()
        .distribution_id(&busy)
        .invalidation_batch(
            aws_sdk_cloudfront::types::InvalidationBatch::builder()
                .caller_reference("filler")
                .paths(
                    aws_sdk_cloudfront::types::Paths::builder()
                        .quantity(15)
                        .set_items(Some(fifteen))
                        .build()
                        .expect("paths"),
                )
                .build()
                .expect("batch"),
        )
        .send()
        .await
        .expect("fill the busy distribution");
    let daemon = site
        .start_with(&with_distributions(&site, &[&busy, &free], None))
        .await;
    site.write(".purge", b"deploy 1\n");
    site.upload(".purge").await;
    // The free one is invalidated while the busy one still waits.
    let states = poll(
        "the free distribution invalidated while the busy one waits",
        Duration::from_secs(20),
        || async {
            let h = site.history();
            let inv = &h.first()?.invalidations;
            let state = |d: &str| {
                inv.iter()
                    .find(|r| r.distribution_id == d)
                    .map(|r| r.state.to_string())
            };
            let (b, f) = (state(&busy)?, state(&free)?);
            (f != "sending" && f != "busy").then_some((b, f))
        },
    )
    .await;
    assert_eq!(states.0, "busy", "{states:?}");
    assert_eq!(site.invalidations_of(&free).await.len(), 1);
    site.noted(&format!("too many invalidations in progress on {busy}"))
        .await;
    let rows = site.settled(1, ENDED).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(rows[0].status, "completed", "{:?}", rows[0].detail);
    assert_eq!(
        site.invalidations_of(&busy).await.len(),
        2,
        "the filler and ours"
    );
    assert_eq!(site.invalidations_of(&free).await.len(), 1);
    assert!(rows[0]
        .invalidations
        .iter()
        .all(|r| r.state.to_string() == "completed"));
}

/// A distribution that does not exist: `check` fails naming it (and passes the other); a purge
/// still reaches the other and then fails, naming the refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_distribution_is_named_by_check_and_fails_the_request_after_the_other() {
    let site = Site::new().await;
    let good = site.distribution_id.clone();
    let gone = "E0NOSUCHDIST";
    let toml = with_distributions(&site, &[gone, &good], None);
    let file = site.config_file(&toml);
    let out = purgewatch(&file, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    let line = |word: &str, id: &str| {
        text.lines()
            .any(|l| l.starts_with(word) && l.contains(&format!("cloudfront.distribution_id {id}")))
    };
    assert!(line("FAIL", gone) && line("OK", &good), "{text}");

    let daemon = site.start_with(&toml).await;
    site.write(".purge", b"deploy 1\n");
    site.upload(".purge").await;
    let rows = site.settled(1, ENDED).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(rows[0].status, "failed", "{:?}", rows[0].detail);
    let detail = rows[0].detail.clone().unwrap_or_default();
    assert!(
        detail.contains(&format!("CloudFront refused on {gone}")),
        "{detail}"
    );
    let done = site.invalidations_of(&good).await;
    assert_eq!(done.len(), 1, "the other distribution was purged");
    assert!(detail.contains(&done[0].0), "{detail}");
}
