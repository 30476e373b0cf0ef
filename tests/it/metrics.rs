//! `[metrics] listen` (issue 14): the page a Prometheus scrape reads, over plain HTTP, with the
//! values an operator's dashboards and alert rules (docs/purgewatch.rules.yml) depend on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{free_port, poll, Site, ENDED};

/// One HTTP/1.1 request as a scraper sends it; (head, body) of the answer.
pub(crate) async fn get(port: u16, path: &str, accept: &str) -> (String, String) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\nUser-Agent: test\r\n\r\n"
    );
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read until closed");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        (head.to_owned(), body.to_owned())
    })
    .await
    .expect("scrape")
}

/// The value of one series (`name` or `name{labels}`, exactly as exposed).
pub(crate) fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split(' ').next()?.parse().ok()
    })
}

fn must(page: &str, series: &str) -> f64 {
    value(page, series).unwrap_or_else(|| panic!("no {series} in:\n{page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_one_completed_one_over_quota_and_the_calls_behind_them() {
    let site = Site::new().await;
    for d in ["a", "b", "c/d"] {
        std::fs::create_dir_all(site.root.join(d)).expect("mkdir");
    }
    let port = free_port();
    let toml = site.toml("", "", "").replace("max = 10", "max = 1")
        + &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let daemon = site.start_with(&toml).await;

    // Before anything happened: every status counted from 0, nothing in progress.
    let (head, page) = get(port, "/metrics", "*/*").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert_eq!(
        must(
            &page,
            r#"purgewatch_requests_total{status="completed",site="default"}"#
        ),
        0.0
    );
    assert_eq!(
        must(
            &page,
            r#"purgewatch_requests_in_progress{stage="origin",site="default"}"#
        ),
        0.0
    );
    assert!(
        must(&page, "purgewatch_watched_folders") >= 5.0,
        "root, a, b, c, c/d"
    );
    assert_eq!(must(&page, "purgewatch_unwatched_folders"), 0.0);
    assert!(value(&page, "purgewatch_last_completed_timestamp_seconds").is_none());

    // The first marker is seen before its upload (a HeadObject 404), then completes; the
    // second finds the quota used up.
    site.write("a/.purge", b"one\n");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    site.upload("a/.purge").await;
    site.settled(1, ENDED).await;
    site.write("b/.purge", b"two\n");
    site.upload("b/.purge").await;
    let rows = site.settled(2, ENDED).await;
    let mut ends: Vec<_> = rows.iter().map(|r| r.status.to_string()).collect();
    ends.sort();
    assert_eq!(ends, ["completed", "quota_exhausted"]);

    let (_, page) = get(port, "/metrics", "*/*").await;
    assert_eq!(
        must(
            &page,
            r#"purgewatch_requests_total{status="completed",site="default"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &page,
            r#"purgewatch_requests_total{status="invalidated",site="default"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &page,
            r#"purgewatch_requests_total{status="quota_exhausted",site="default"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &page,
            r#"purgewatch_requests_total{status="failed",site="default"}"#
        ),
        0.0
    );
    for stage in ["origin", "quota", "cloudfront"] {
        let series =
            format!(r#"purgewatch_requests_in_progress{{stage="{stage}",site="default"}}"#);
        assert_eq!(must(&page, &series), 0.0, "{series}");
    }
    assert_eq!(must(&page, "purgewatch_invalidations_total"), 1.0);
    assert_eq!(
        must(&page, "purgewatch_invalidation_paths_total"),
        1.0,
        "/*"
    );
    assert_eq!(
        must(&page, "purgewatch_marker_to_invalidation_seconds_count"),
        1.0
    );
    let took = must(&page, "purgewatch_marker_to_invalidation_seconds_sum");
    assert!(
        (1.0..60.0).contains(&took),
        "the upload came 1.2 s after the write: {took}"
    );
    assert_eq!(
        must(&page, r#"purgewatch_quota_used{quota="default"}"#),
        1.0
    );
    assert_eq!(must(&page, r#"purgewatch_quota_max{quota="default"}"#), 1.0);
    let now = chrono::Utc::now().timestamp() as f64;
    let end = must(
        &page,
        r#"purgewatch_quota_period_end_timestamp_seconds{quota="default"}"#,
    );
    assert!(
        end > now && end <= now + 86_400.0,
        "the end of today: {end}"
    );
    let last = must(&page, "purgewatch_last_completed_timestamp_seconds");
    assert!((now - 120.0..=now + 1.0).contains(&last), "{last}");
    assert!(
        must(
            &page,
            r#"purgewatch_aws_request_duration_seconds_count{operation="CreateInvalidation"}"#
        ) >= 1.0
    );
    assert!(
        must(
            &page,
            r#"purgewatch_aws_errors_total{operation="HeadObject",kind="not_found"}"#
        ) >= 1.0,
        "the marker looked for before its upload"
    );
    assert_eq!(must(&page, "purgewatch_events_lost_total"), 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        must(
            &page,
            &format!(r#"purgewatch_build_info{{version="{version}"}}"#)
        ),
        1.0
    );
    assert!(must(&page, "process_resident_memory_bytes") > 0.0);
    assert!(must(&page, "process_start_time_seconds") <= now);
    assert!(must(&page, "process_open_fds") > 0.0);
    assert!(value(&page, "process_cpu_seconds_total").is_some());

    // Prometheus asks for OpenMetrics; the same values, in that format.
    let (head, page) = get(
        port,
        "/metrics",
        "application/openmetrics-text;version=1.0.0",
    )
    .await;
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(page.ends_with("# EOF\n"), "{page}");
    assert_eq!(must(&page, "purgewatch_invalidations_total"), 1.0);

    let (head, _) = get(port, "/", "*/*").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    daemon.shutdown().await.expect("shutdown");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port is closed with the daemon"
    );
}

/// One scrape that must be answered within `limit` (connect, send, the whole answer); the
/// status line, or what went wrong and after how long.
async fn scrape_within(port: u16, limit: Duration) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let fail = |what: &str, e: std::io::Error| format!("{what} after {:?}: {e}", t.elapsed());
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| fail("connect", e))?;
        s.set_read_timeout(Some(limit))
            .map_err(|e| fail("timeout", e))?;
        s.set_write_timeout(Some(limit))
            .map_err(|e| fail("timeout", e))?;
        let req = format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        s.write_all(req.as_bytes()).map_err(|e| fail("send", e))?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).map_err(|e| fail("read", e))?;
        if t.elapsed() > limit {
            return Err(format!("answered after {:?}", t.elapsed()));
        }
        let answer = String::from_utf8_lossy(&answer);
        Ok(answer.lines().next().unwrap_or("").to_owned())
    })
    .await
    .expect("scrape")
}

// Issue 22: four connections that sent nothing held every slot of the metrics server for 10 s
// each, so most scrapes timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_do_not_starve_a_scrape() {
    let site = Site::new().await;
    let port = free_port();
    let toml = site.toml("", "", "") + &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let daemon = site.start_with(&toml).await;

    // Eight connections that send nothing, and a slow loris that stops halfway through a head;
    // all stay open while the scrapes run.
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let mut loris = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    loris.write_all(b"GET /metr").expect("half a request");
    idle.push(loris);

    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(scrape_within(port, Duration::from_secs(2)).await);
    }
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().is_ok_and(|l| l.starts_with("HTTP/1.1 200"))),
        "{answers:?}"
    );
    drop(idle);
    daemon.shutdown().await.expect("shutdown");
}

/// Whether the server closes `s` (end of stream, or a reset) within `limit`, having sent
/// nothing.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Result<(), String> {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(0) => Ok(()),
        Ok(_) => Err("it answered".into()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!("still open after {limit:?}: {e}")),
    }
}

// Issue 22: the connections a metrics server holds are bounded (a new one past 64 is closed at
// once), and one that sends no request head is closed after a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_64_connections_one_is_closed_and_idle_ones_are_dropped() {
    let site = Site::new().await;
    let port = free_port();
    let toml = site.toml("", "", "") + &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let daemon = site.start_with(&toml).await;

    let mut idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    // Every slot is taken once the server accepted them all: a next one is closed unanswered.
    poll(
        "a connection past 64 closed",
        Duration::from_secs(5),
        || async {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            closed_within(&mut s, Duration::from_millis(500))
                .is_ok()
                .then_some(())
        },
    )
    .await;
    // The idle ones are closed after the head deadline (5 s), and scrapes are answered again.
    let t = std::time::Instant::now();
    for s in &mut idle {
        let left = Duration::from_secs(8).saturating_sub(t.elapsed());
        closed_within(s, left.max(Duration::from_millis(1))).expect("an idle connection closed");
    }
    let status = scrape_within(port, Duration::from_secs(2)).await;
    assert!(
        status.as_ref().is_ok_and(|l| l.starts_with("HTTP/1.1 200")),
        "{status:?}"
    );
    daemon.shutdown().await.expect("shutdown");
}
