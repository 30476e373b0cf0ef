//! The emulator's strict layer (tests/moto_atomic.py), proven through the AWS Rust SDK itself:
//! each switch behaves as the AWS fact it imitates, and the SDK parses its errors.

use std::time::{Duration, Instant};

use aws_sdk_cloudfront::types as cf;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType, ServerSideEncryption};
use serde_json::json;

use crate::common::{strict, Site};

type Meta = (Option<u16>, Option<String>);

/// (HTTP status, error code) of a failed SDK call (S3 or CloudFront: the same SdkError).
fn meta<E: ProvideErrorMetadata>(e: &SdkError<E>) -> Meta {
    (
        e.raw_response().map(|r| r.status().as_u16()),
        e.code().map(str::to_owned),
    )
}

async fn shared(endpoint: &str, region: &'static str, retries: bool) -> aws_config::SdkConfig {
    let retry = if retries {
        aws_config::retry::RetryConfig::standard()
    } else {
        aws_config::retry::RetryConfig::disabled()
    };
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(purgewatch::aws::http_client())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(region))
        .retry_config(retry)
        .load()
        .await
}

/// An S3 client signing for `region`, without retries.
async fn s3_in(site: &Site, region: &'static str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(&shared(&site.endpoint, region, false).await)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A CloudFront client without retries, so each refusal is seen once.
async fn cf_once(site: &Site) -> aws_sdk_cloudfront::Client {
    aws_sdk_cloudfront::Client::new(&shared(&site.endpoint, "us-east-1", false).await)
}

// Expected checksums, base64 of the big-endian digest as S3 sends them (Python's hashlib for
// SHA-256; CRC64NVME also checked by the SDK itself, which validates GetObject bodies against it).
/// CRC64NVME of b"no checksum sent".
const CRC64NVME_PLAIN: &str = "IzphC71t9bk=";
/// SHA-256 of b"sha256 asked" (the SDK sends the same in x-amz-checksum-sha256).
const SHA256_ASKED: &str = "f+LPfoywFMpoW7RAgQqUOfwBvUiKfDs9mwt7PNNFssQ=";
/// SHA-256 of 70,000 b'z'.
const SHA256_STREAMED: &str = "xGY4lYCupaKI77T255YeaAd/xSlePpIi2avuSjS5mgU=";

fn batch(reference: &str, paths: &[&str]) -> cf::InvalidationBatch {
    cf::InvalidationBatch::builder()
        .caller_reference(reference)
        .paths(
            cf::Paths::builder()
                .quantity(paths.len() as i32)
                .set_items(Some(paths.iter().map(|p| p.to_string()).collect()))
                .build()
                .expect("paths"),
        )
        .build()
        .expect("batch")
}

async fn invalidate(
    client: &aws_sdk_cloudfront::Client,
    site: &Site,
    reference: &str,
    paths: &[&str],
) -> Result<cf::Invalidation, Meta> {
    client
        .create_invalidation()
        .distribution_id(&site.distribution_id)
        .invalidation_batch(batch(reference, paths))
        .send()
        .await
        .map(|o| o.invalidation.expect("invalidation"))
        .map_err(|e| meta(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_etag_is_not_the_md5_and_if_match_takes_it() {
    let site = Site::new().await;
    site.strict_origin(json!({"kms": true}));
    let s3 = &site.s3;
    let b = &site.origin_bucket;
    let put = s3
        .put_object()
        .bucket(b)
        .key("k")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .expect("put");
    let etag = put.e_tag().expect("etag").to_owned();
    let hex = etag.trim_matches('"');
    assert!(
        hex.len() == 32 && hex.bytes().all(|c| c.is_ascii_hexdigit()),
        "{etag}"
    );
    assert_ne!(
        hex, "5d41402abc4b2a76b9719d911017c592",
        "the ETag of an SSE-KMS object is not the MD5"
    );
    assert_eq!(
        put.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
    let head = s3
        .head_object()
        .bucket(b)
        .key("k")
        .send()
        .await
        .expect("head");
    assert_eq!(head.e_tag(), Some(etag.as_str()));
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
    let list = s3.list_objects_v2().bucket(b).send().await.expect("list");
    assert_eq!(list.contents()[0].e_tag(), Some(etag.as_str()));

    // The ETag S3 showed works as a condition; the body's MD5 does not.
    let again = s3
        .put_object()
        .bucket(b)
        .key("k")
        .if_match(&etag)
        .body(ByteStream::from_static(b"world"))
        .send()
        .await
        .expect("If-Match with the shown ETag");
    let md5_world = "\"7d793037a0760186574b0282f2f435e7\"";
    let e = s3
        .put_object()
        .bucket(b)
        .key("k")
        .if_match(md5_world)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect_err("If-Match with the MD5");
    assert_eq!(meta(&e), (Some(412), Some("PreconditionFailed".into())));
    let e = s3
        .put_object()
        .bucket(b)
        .key("k")
        .if_none_match("*")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect_err("If-None-Match * on an existing key");
    assert_eq!(meta(&e).0, Some(412));
    let got = s3
        .get_object()
        .bucket(b)
        .key("k")
        .send()
        .await
        .expect("get");
    assert_eq!(got.e_tag(), again.e_tag());
    assert_eq!(
        got.body
            .collect()
            .await
            .expect("body")
            .into_bytes()
            .as_ref(),
        b"world"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mode_reports_the_checksum_s3_stores() {
    let site = Site::new().await;
    let b = &site.origin_bucket;
    // An upload that sends no checksum at all: S3 computes CRC64NVME.
    let plain = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared(&site.endpoint, "us-east-1", true).await)
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build(),
    );
    let body = b"no checksum sent".to_vec();
    plain
        .put_object()
        .bucket(b)
        .key("plain")
        .body(body.clone().into())
        .send()
        .await
        .expect("put");
    let h = site
        .s3
        .head_object()
        .bucket(b)
        .key("plain")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .expect("head");
    assert_eq!(h.checksum_crc64_nvme(), Some(CRC64NVME_PLAIN));
    assert_eq!(h.checksum_type(), Some(&ChecksumType::FullObject));
    assert_eq!((h.checksum_crc32(), h.checksum_sha256()), (None, None));

    // Without checksum mode: none.
    let h = site
        .s3
        .head_object()
        .bucket(b)
        .key("plain")
        .send()
        .await
        .expect("head");
    assert_eq!((h.checksum_crc64_nvme(), h.checksum_type()), (None, None));

    // The uploader asked for SHA256 (in-memory body: header), and through a streamed body
    // (aws-chunked with the checksum as a trailer).
    let body = b"sha256 asked".to_vec();
    site.s3
        .put_object()
        .bucket(b)
        .key("sha")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .body(body.clone().into())
        .send()
        .await
        .expect("put sha256");
    let h = site
        .s3
        .head_object()
        .bucket(b)
        .key("sha")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .expect("head");
    assert_eq!(h.checksum_sha256(), Some(SHA256_ASKED));
    assert_eq!(h.checksum_crc64_nvme(), None);
    let file = site.dir.path().join("streamed");
    let streamed = vec![b'z'; 70_000];
    std::fs::write(&file, &streamed).expect("write");
    site.s3
        .put_object()
        .bucket(b)
        .key("streamed")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .body(ByteStream::from_path(&file).await.expect("stream"))
        .send()
        .await
        .expect("put streamed");
    let h = site
        .s3
        .head_object()
        .bucket(b)
        .key("streamed")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .expect("head");
    assert_eq!(h.content_length(), Some(70_000));
    assert_eq!(h.checksum_sha256(), Some(SHA256_STREAMED));

    // GetObject: the SDK asks for checksum mode by itself and validates the body against it.
    let got = site
        .s3
        .get_object()
        .bucket(b)
        .key("plain")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .expect("get");
    assert_eq!(got.checksum_crc64_nvme(), Some(CRC64NVME_PLAIN));
    assert_eq!(
        got.body
            .collect()
            .await
            .expect("validated body")
            .into_bytes()
            .as_ref(),
        b"no checksum sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_from_before_2025_have_no_checksum() {
    let site = Site::new().await;
    site.strict_origin(json!({"checksums": false}));
    let b = &site.origin_bucket;
    site.s3
        .put_object()
        .bucket(b)
        .key("old")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .body(ByteStream::from_static(b"old"))
        .send()
        .await
        .expect("put");
    let h = site
        .s3
        .head_object()
        .bucket(b)
        .key("old")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .expect("head");
    assert_eq!(
        (
            h.checksum_crc32(),
            h.checksum_crc64_nvme(),
            h.checksum_type()
        ),
        (None, None, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_region_gets_a_301_naming_the_bucket_region() {
    let site = Site::new().await;
    site.strict_count(json!({"region": "eu-west-1"}));
    let b = &site.count_bucket;
    let e = site
        .s3
        .head_object()
        .bucket(b)
        .key("any")
        .send()
        .await
        .expect_err("signed for us-east-1");
    let raw = e.raw_response().expect("raw response");
    assert_eq!(raw.status().as_u16(), 301);
    assert_eq!(raw.headers().get("x-amz-bucket-region"), Some("eu-west-1"));
    let e = site
        .s3
        .get_object()
        .bucket(b)
        .key("any")
        .send()
        .await
        .expect_err("GET too");
    assert_eq!(meta(&e), (Some(301), Some("PermanentRedirect".into())));
    // Signed for the bucket's region it works, and every answer names the region.
    let eu = s3_in(&site, "eu-west-1").await;
    let hb = eu
        .head_bucket()
        .bucket(b)
        .send()
        .await
        .expect("head bucket in eu-west-1");
    assert_eq!(hb.bucket_region(), Some("eu-west-1"));
    eu.put_object()
        .bucket(b)
        .key("k")
        .body(ByteStream::from_static(b"1"))
        .send()
        .await
        .expect("put in eu-west-1");
    // The origin bucket is in us-east-1 (the default): its answers say so.
    let hb = site
        .s3
        .head_bucket()
        .bucket(&site.origin_bucket)
        .send()
        .await
        .expect("head origin");
    assert_eq!(hb.bucket_region(), Some("us-east-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_parse_in_s3_and_cloudfront() {
    let site = Site::new().await;
    site.strict_origin(json!({"expired_token": 2}));
    let s3 = s3_in(&site, "us-east-1").await;
    let e = s3
        .get_object()
        .bucket(&site.origin_bucket)
        .key("k")
        .send()
        .await
        .expect_err("expired");
    assert_eq!(meta(&e), (Some(400), Some("ExpiredToken".into())));
    let e = s3
        .head_object()
        .bucket(&site.origin_bucket)
        .key("k")
        .send()
        .await
        .expect_err("expired");
    assert_eq!(meta(&e).0, Some(400));
    let e = s3
        .head_object()
        .bucket(&site.origin_bucket)
        .key("k")
        .send()
        .await
        .expect_err("missing");
    assert_eq!(meta(&e).0, Some(404), "two requests only");

    site.strict_cdn(json!({"expired_token": 1}));
    let cfc = cf_once(&site).await;
    let e = cfc
        .list_invalidations()
        .distribution_id(&site.distribution_id)
        .send()
        .await
        .expect_err("expired");
    assert_eq!(meta(&e), (Some(403), Some("ExpiredToken".into())));
    cfc.list_invalidations()
        .distribution_id(&site.distribution_id)
        .send()
        .await
        .expect("then fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_conflict_and_access_denied_parse() {
    let site = Site::new().await;
    site.strict_count(json!({"conflict": 1, "access_denied": ["GetObject"]}));
    let b = &site.count_bucket;
    let e = site
        .s3
        .put_object()
        .bucket(b)
        .key("c")
        .if_none_match("*")
        .body(ByteStream::from_static(b"1"))
        .send()
        .await
        .expect_err("conflict");
    assert_eq!(
        meta(&e),
        (Some(409), Some("ConditionalRequestConflict".into()))
    );
    let e = site
        .s3
        .head_object()
        .bucket(b)
        .key("c")
        .send()
        .await
        .expect_err("nothing written");
    assert_eq!(meta(&e).0, Some(404));
    site.s3
        .put_object()
        .bucket(b)
        .key("c")
        .if_none_match("*")
        .body(ByteStream::from_static(b"1"))
        .send()
        .await
        .expect("the next one writes");
    let e = site
        .s3
        .get_object()
        .bucket(b)
        .key("c")
        .send()
        .await
        .expect_err("denied");
    assert_eq!(meta(&e), (Some(403), Some("AccessDenied".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_reference_is_idempotent_per_batch() {
    let site = Site::new().await;
    let cfc = cf_once(&site).await;
    let first = invalidate(&cfc, &site, "ref-1", &["/a", "/b/*"])
        .await
        .expect("first");
    let again = invalidate(&cfc, &site, "ref-1", &["/b/*", "/a"])
        .await
        .expect("same batch again");
    assert_eq!(first.id, again.id);
    let e = invalidate(&cfc, &site, "ref-1", &["/other"])
        .await
        .expect_err("another batch");
    assert_eq!(
        e,
        (Some(409), Some("InvalidationBatchAlreadyExists".into()))
    );
    assert_eq!(site.invalidations().await.len(), 1);
    // With the switch off: moto's own behaviour, a second invalidation.
    site.strict_cdn(json!({"caller_reference": false}));
    let dup = invalidate(&cfc, &site, "ref-1", &["/a", "/b/*"])
        .await
        .expect("duplicate");
    assert_ne!(dup.id, first.id);
    // ListInvalidations: newest first, as CloudFront.
    let list = site
        .cloudfront
        .list_invalidations()
        .distribution_id(&site.distribution_id)
        .send()
        .await
        .expect("list");
    let ids: Vec<String> = list
        .invalidation_list
        .and_then(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [dup.id, first.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_paths_are_refused() {
    let site = Site::new().await;
    let cfc = cf_once(&site).await;
    for (i, bad) in [
        "/a[1].html",
        "/a*/b",
        "no-slash",
        "/caf\u{e9}",
        "/a b",
        "/50%",
        "/x{y}",
    ]
    .iter()
    .enumerate()
    {
        let e = invalidate(&cfc, &site, &format!("bad-{i}"), &[bad])
            .await
            .expect_err(bad);
        assert_eq!(e, (Some(400), Some("InvalidArgument".into())), "{bad}");
    }
    let long = format!("/{}", "a".repeat(4000));
    let e = invalidate(&cfc, &site, "long", &[&long])
        .await
        .expect_err("long");
    assert_eq!(e.1.as_deref(), Some("InvalidArgument"));
    let e = cfc
        .create_invalidation()
        .distribution_id(&site.distribution_id)
        .invalidation_batch(
            cf::InvalidationBatch::builder()
                .caller_reference("q")
                .paths(
                    cf::Paths::builder()
                        .quantity(2)
                        .items("/a")
                        .build()
                        .expect("paths"),
                )
                .build()
                .expect("batch"),
        )
        .send()
        .await
        .expect_err("quantity");
    assert_eq!(meta(&e), (Some(400), Some("InconsistentQuantities".into())));
    // 16 wildcards at once: past the 15 in progress even with nothing else in progress.
    let sixteen: Vec<String> = (0..16).map(|i| format!("/w{i}/*")).collect();
    let sixteen: Vec<&str> = sixteen.iter().map(String::as_str).collect();
    let e = invalidate(&cfc, &site, "sixteen", &sixteen)
        .await
        .expect_err("16 wildcards");
    assert_eq!(
        e,
        (Some(400), Some("TooManyInvalidationsInProgress".into()))
    );
    assert!(site.invalidations().await.is_empty());
    invalidate(
        &cfc,
        &site,
        "good",
        &["/~user/a%5B1%5D.html", "/%7Euser/*", "/caf%C3%A9"],
    )
    .await
    .expect("encoded paths");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_in_progress_are_limited() {
    let site = Site::new().await;
    site.strict_cdn(json!({"in_progress_secs": 1.5}));
    let cfc = cf_once(&site).await;
    let eight: Vec<String> = (0..8).map(|i| format!("/w{i}/*")).collect();
    let eight: Vec<&str> = eight.iter().map(String::as_str).collect();
    let first = invalidate(&cfc, &site, "w-1", &eight)
        .await
        .expect("8 wildcards");
    assert_eq!(first.status, "InProgress");
    let e = invalidate(&cfc, &site, "w-2", &eight)
        .await
        .expect_err("16 in progress");
    assert_eq!(
        e,
        (Some(400), Some("TooManyInvalidationsInProgress".into()))
    );
    // Status moves to Completed; then the same batch goes through.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = cfc
            .get_invalidation()
            .distribution_id(&site.distribution_id)
            .id(&first.id)
            .send()
            .await
            .expect("get");
        let status = got.invalidation.expect("invalidation").status;
        if status == "Completed" {
            break;
        }
        assert_eq!(status, "InProgress");
        assert!(Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = cfc
        .list_invalidations()
        .distribution_id(&site.distribution_id)
        .send()
        .await
        .expect("list");
    let items = list
        .invalidation_list
        .and_then(|l| l.items)
        .unwrap_or_default();
    assert_eq!(
        items.iter().map(|s| s.status.as_str()).collect::<Vec<_>>(),
        ["Completed"]
    );
    invalidate(&cfc, &site, "w-2", &eight)
        .await
        .expect("after completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_parses_and_the_sdk_retries_it() {
    let site = Site::new().await;
    site.strict_cdn(json!({"throttle": 1}));
    let e = invalidate(&cf_once(&site).await, &site, "t-1", &["/a"])
        .await
        .expect_err("throttled");
    assert_eq!(e, (Some(400), Some("Throttling".into())));
    site.strict_cdn(json!({"throttle": 1}));
    // The SDK's standard retry takes Throttling as transient: the second attempt passes.
    invalidate(&site.cloudfront, &site, "t-2", &["/a"])
        .await
        .expect("retried");
    assert_eq!(site.cdn_calls()["CreateInvalidation"], 3);
    assert_eq!(site.invalidations().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_still_created_the_invalidation() {
    let site = Site::new().await;
    site.strict_cdn(json!({"lose_answer": 1}));
    let cfc = cf_once(&site).await;
    let e = invalidate(&cfc, &site, "lost-1", &["/a"])
        .await
        .expect_err("lost");
    assert_eq!(e, (Some(503), Some("ServiceUnavailable".into())));
    let made = site.invalidations().await;
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].1, "lost-1");
    // Sending the same batch again with the same reference finds it.
    let again = invalidate(&cfc, &site, "lost-1", &["/a"])
        .await
        .expect("resent");
    assert_eq!(again.id, made[0].0);
    assert_eq!(site.invalidations().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_counted_per_resource() {
    let site = Site::new().await;
    let b = &site.origin_bucket;
    site.s3
        .head_bucket()
        .bucket(b)
        .send()
        .await
        .expect("head bucket");
    site.s3
        .put_object()
        .bucket(b)
        .key("a/b c")
        .body(ByteStream::from_static(b"1"))
        .send()
        .await
        .expect("put");
    for _ in 0..2 {
        site.s3
            .head_object()
            .bucket(b)
            .key("a/b c")
            .send()
            .await
            .expect("head");
    }
    site.s3
        .get_object()
        .bucket(b)
        .key("a/b c")
        .send()
        .await
        .expect("get");
    site.s3
        .list_objects_v2()
        .bucket(b)
        .send()
        .await
        .expect("list");
    let calls = site.origin_calls();
    for (op, n) in [
        ("HeadBucket", 1),
        ("PutObject", 1),
        ("HeadObject", 2),
        ("GetObject", 1),
        ("ListObjectsV2", 1),
        ("CopyObject", 0),
    ] {
        assert_eq!(calls.get(op), Some(&n), "{op} in {calls:?}");
    }
    assert_eq!(site.count_calls()["PutObject"], 0);
    let inv = invalidate(&site.cloudfront, &site, "c-1", &["/a"])
        .await
        .expect("create");
    site.cloudfront
        .get_invalidation()
        .distribution_id(&site.distribution_id)
        .id(&inv.id)
        .send()
        .await
        .expect("get");
    let calls = strict::distribution_calls(&site.distribution_id);
    assert_eq!(
        (
            calls["CreateInvalidation"],
            calls["GetInvalidation"],
            calls["ListInvalidations"]
        ),
        (1, 1, 0)
    );
}
