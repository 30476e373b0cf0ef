//! Proof at the edge (`cloudfront.edge_check`), against the caching edge of the test layer
//! (tests/moto_edge.py): it caches what it fetched from the emulator's S3 and drops a copy only
//! when the emulator's CreateInvalidation names a path matching it, as CloudFront does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{free_port, Site, ENDED};
use crate::metrics::{get, value};

/// The edge's base URL for the site's distribution.
fn edge_url(site: &Site) -> String {
    format!("{}/_edge/{}", site.endpoint, site.distribution_id)
}

/// One GET to the emulator (the edge or its control): (status, ETag, body).
fn fetch(site: &Site, path: &str) -> (u16, Option<String>, String) {
    let addr = site.endpoint.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let etag = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("etag").then(|| v.trim().to_owned())
    });
    (status, etag, body.to_owned())
}

/// What a viewer gets at `path` through the site's distribution: its ETag.
fn viewer_etag(site: &Site, path: &str) -> Option<String> {
    let (status, etag, _) = fetch(site, &format!("/_edge/{}{path}", site.distribution_id));
    assert_eq!(status, 200, "{path} through the edge");
    etag
}

/// A deployed site whose edge holds v1 of index.html and news/a.html; the config with the
/// edge check on (`extra` in `[cloudfront]`).
pub(crate) async fn cached_site(extra: &str, metrics: Option<u16>) -> (Site, String, String) {
    let site = Site::new().await;
    for rel in ["index.html", "news/a.html"] {
        site.write(rel, format!("<p>{rel} v1</p>").as_bytes());
        site.upload(rel).await;
    }
    let v1 = viewer_etag(&site, "/index.html").expect("an ETag");
    viewer_etag(&site, "/news/a.html");
    let mut toml = site.toml("", "", "").replace(
        "[cloudfront]\n",
        &format!(
            "[cloudfront]\npaths = \"changed\"\nedge_check = true\nedge_url = \"{}\"\nedge_retry_for = \"3s\"\n{extra}\n",
            edge_url(&site)
        ),
    );
    if let Some(p) = metrics {
        toml += &format!("\n[metrics]\nlisten = \"127.0.0.1:{p}\"\n");
    }
    (site, toml, v1)
}

/// The deploy: v2 of both files, then the marker (`marker` its bytes), all uploaded.
pub(crate) async fn deploy(site: &Site, marker: &[u8]) {
    for rel in ["index.html", "news/a.html"] {
        site.write(rel, format!("<p>{rel} v2, longer</p>").as_bytes());
        site.upload(rel).await;
    }
    site.write(".purge", marker);
    site.upload(".purge").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_mapping_is_fresh_at_the_edge() {
    let (site, toml, v1) = cached_site("", None).await;
    let daemon = site.start_with(&toml).await;
    deploy(&site, b"deploy 2\n").await;
    let rows = site.settled(1, ENDED).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(rows[0].status, "completed", "{:?}", rows[0].detail);
    let story: Vec<String> = site
        .events(rows[0].id)
        .into_iter()
        .filter_map(|e| e.2)
        .collect();
    let want = format!("edge: 2 of 2 fresh via {}", edge_url(&site));
    assert!(story.iter().any(|d| d == &want), "{want} in {story:?}");
    // And so it is: viewers get the new bytes.
    assert_ne!(viewer_etag(&site, "/index.html"), Some(v1));
}

/// The marker lists `/News/*`; viewers ask for `/news/a.html`: CloudFront matches paths
/// case-sensitively, so the old copy stays, and the check names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_the_invalidation_did_not_match_is_caught_as_stale() {
    let port = free_port();
    let (site, toml, _) = cached_site("", Some(port)).await;
    let stale_etag = viewer_etag(&site, "/news/a.html").expect("an ETag");
    let daemon = site.start_with(&toml).await;
    deploy(&site, b"/News/*\n/index.html\n").await;
    let rows = site.settled(1, ENDED).await;
    let (_, page) = get(port, "/metrics", "*/*").await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(rows[0].status, "stale", "{:?}", rows[0].detail);
    let detail = rows[0].detail.clone().unwrap_or_default();
    for want in [
        "/news/a.html",
        &stale_etag,
        "never in the invalidation (sent: /News/* /index.html)",
        "1 of 2 stale",
    ] {
        assert!(detail.contains(want), "{want} in {detail}");
    }
    // S3's ETag of the new file is named too.
    let s3 = site
        .s3
        .head_object()
        .bucket(&site.origin_bucket)
        .key("news/a.html")
        .send()
        .await
        .expect("head");
    assert!(detail.contains(s3.e_tag().expect("etag")), "{detail}");
    // No second invalidation, no second slot.
    assert_eq!(site.invalidations().await.len(), 1);
    let period = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(site.count_object(&period).await.as_deref(), Some("1"));
    assert_eq!(
        value(
            &page,
            r#"purgewatch_requests_total{status="stale",site="default"}"#
        ),
        Some(1.0),
        "{page}"
    );
}

/// `path_prefix = "/www/"` where the distribution serves the bucket's root: the purge and the
/// check both go to /www/…, which viewers never reach; the check says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_path_prefix_is_caught_as_stale() {
    let (site, toml, v1) = cached_site("path_prefix = \"/www/\"", None).await;
    let daemon = site.start_with(&toml).await;
    deploy(&site, b"deploy 2\n").await;
    let rows = site.settled(1, ENDED).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(rows[0].status, "stale", "{:?}", rows[0].detail);
    let detail = rows[0].detail.clone().unwrap_or_default();
    assert!(
        detail.contains("/www/index.html") && detail.contains("path_prefix \"/www/\""),
        "{detail}"
    );
    // Viewers do still get the old page.
    assert_eq!(viewer_etag(&site, "/index.html"), Some(v1));
}

/// Off by default: nothing is fetched through the edge, no edge line in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_check_is_off_by_default() {
    let site = Site::new().await;
    let daemon = site.start().await;
    site.write(".purge", b"deploy 1\n");
    site.upload(".purge").await;
    let rows = site.settled(1, ENDED).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(rows[0].status, "completed");
    let story: Vec<String> = site
        .events(rows[0].id)
        .into_iter()
        .filter_map(|e| e.2)
        .collect();
    assert!(!story.iter().any(|d| d.starts_with("edge")), "{story:?}");
    let (status, _, control) = fetch(&site, &format!("/_strict/edge/{}", site.distribution_id));
    assert_eq!(status, 200, "{control}");
    let control: serde_json::Value = serde_json::from_str(&control).expect("json");
    assert_eq!(control["requests"], serde_json::json!([]), "{control}");
}

/// Without `edge_url`: the distribution's first alias that names a host, else its domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_edge_url_is_the_first_alias_else_the_domain() {
    let site = Site::new().await;
    let domain = format!("{}.s3.amazonaws.com", site.origin_bucket);
    let tag = format!("{}-aliases", site.origin_bucket);
    let aliased = crate::common::create_distribution_with(
        &site.cloudfront,
        &domain,
        "",
        &["*.example.com", "www.example.com"],
        &tag,
    )
    .await;
    let viewer =
        |id: &str| purgewatch::cloudfront::Cdn::new(site.cloudfront.clone(), id.to_owned());
    let (url, root) = viewer(&aliased).viewer().await.expect("GetDistribution");
    assert_eq!((url.as_str(), root), ("https://www.example.com", None));
    let (url, _) = viewer(&site.distribution_id)
        .viewer()
        .await
        .expect("GetDistribution");
    assert!(
        url.starts_with("https://") && url.ends_with(".cloudfront.net"),
        "{url}"
    );
}

/// The edge of the test layer itself: tests/edge_selfcheck.py against the shared emulator.
#[test]
fn the_test_layers_edge_behaves_like_cloudfront() {
    let port = crate::common::emulator()
        .url
        .rsplit(':')
        .next()
        .expect("a port")
        .to_owned();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(crate::common::python())
        .arg(root.join("tests/edge_selfcheck.py"))
        .arg(&port)
        .output()
        .expect("run the self-check");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
