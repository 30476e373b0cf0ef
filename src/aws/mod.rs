//! AWS clients from the standard chain, with timeouts on every call, one error type that says
//! whether trying again can help, and one S3 client per bucket signed for that bucket's region.
//!
//! # Regions
//! The Rust SDK does not follow S3's 301 PermanentRedirect, and a count bucket made for the old
//! Lambda may live in another region than the origin. Every S3 answer about a bucket (301 and 403
//! included) names its region in `x-amz-bucket-region`, so a [`Bucket`] starts with the region
//! configured for it (or `[aws] region`) and, when an answer names another, switches its client
//! to that region and sends the call again, once.
//!
//! # Credentials
//! Errors a credential refresh or a retry cures (`ExpiredToken`, `RequestExpired`,
//! `RequestTimeTooSkewed`) are transient: the SDK refreshes instance-profile credentials before
//! the next attempt. `AccessDenied` is permanent and names the permission the call needs, as the
//! shipped IAM policy (packaging/iam-policy.json) grants it.
//!
//! # Error codes
//! [`Code`] is the one table of the codes purgewatch tells apart: the retry classes here and the
//! `kind` of `purgewatch_aws_errors_total` ([`interceptor`], which times every attempt) both
//! read it.

pub mod interceptor;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use tracing::warn;

/// `[aws]`: where the clients connect (the standard chain's region when unset; an endpoint
/// for the emulator).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aws {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum AwsError {
    /// Network trouble, throttling, 5xx, TooManyInvalidationsInProgress: retry with backoff.
    #[error("{0} (will retry)")]
    Transient(String),
    /// Denied, missing, invalid: retrying will not help; the request fails with this message.
    #[error("{0}")]
    Permanent(String),
    /// CloudFront's TooManyInvalidationsInProgress: wait for the distribution's own
    /// invalidations to complete, then send again.
    #[error("{0} (will retry)")]
    Busy(String),
}

impl AwsError {
    pub fn transient(m: impl Into<String>) -> AwsError {
        AwsError::Transient(m.into())
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, AwsError::Transient(_) | AwsError::Busy(_))
    }
}

/// What an AWS error code says, the one table of them: [`classify`] sorts errors for retries
/// by it, and the metrics label failed attempts by it (`interceptor::error_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Slow down: a retry after a pause cures it.
    Throttling,
    /// CloudFront's TooManyInvalidationsInProgress: wait for the distribution's invalidations.
    Busy,
    /// The service's own trouble: a retry cures it.
    ServerTrouble,
    /// Credentials a refresh renews (an expired session token, a request signed with a clock
    /// that drifted): the SDK refreshes them before the next attempt.
    Credentials,
    /// A permission is missing: an operator must grant it.
    Denied,
}

/// Every error code purgewatch tells apart; any other is sorted by its HTTP status.
const CODES: &[(&str, Code)] = &[
    ("Throttling", Code::Throttling),
    ("ThrottlingException", Code::Throttling),
    ("TooManyRequestsException", Code::Throttling),
    ("RequestLimitExceeded", Code::Throttling),
    ("SlowDown", Code::Throttling),
    ("TooManyInvalidationsInProgress", Code::Busy),
    ("RequestTimeout", Code::ServerTrouble),
    ("InternalError", Code::ServerTrouble),
    ("ServiceUnavailable", Code::ServerTrouble),
    ("IDPCommunicationError", Code::ServerTrouble),
    ("ExpiredToken", Code::Credentials),
    ("ExpiredTokenException", Code::Credentials),
    ("TokenRefreshRequired", Code::Credentials),
    ("RequestExpired", Code::Credentials),
    ("RequestTimeTooSkewed", Code::Credentials),
    ("RequestInTheFuture", Code::Credentials),
    ("AccessDenied", Code::Denied),
    ("AccessDeniedException", Code::Denied),
];

impl Code {
    /// What `code` says (`AccessDenied…` in any of its spellings is a denial), if it is known.
    pub fn of(code: &str) -> Option<Code> {
        CODES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(_, class)| class)
            .or_else(|| code.starts_with("AccessDenied").then_some(Code::Denied))
    }
}

/// Sorts an SDK error by whether a retry can help. CloudFront errors from the emulator come
/// without a parsed code, so the HTTP status decides too. `what` starts with the operation's
/// name ("HeadObject s3://…"), which names the permission a denial is about.
pub fn classify<E>(what: &str, e: &SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            let msg = se.err().message().unwrap_or("");
            let mut text = format!("{what}: HTTP {status} {code} {msg}")
                .trim()
                .to_owned();
            let known = Code::of(code);
            if known == Some(Code::Busy) {
                return AwsError::Busy(text);
            }
            let cured = matches!(
                known,
                Some(Code::Throttling | Code::ServerTrouble | Code::Credentials)
            );
            if cured || status >= 500 || status == 429 || status == 408 {
                return AwsError::Transient(text);
            }
            if known == Some(Code::Denied) || status == 403 {
                if let Some(needs) = permission(what) {
                    text.push_str(&format!("; needs {needs}"));
                }
            }
            AwsError::Permanent(text)
        }
        // Timeouts, connection refused/reset, unparseable responses: the service may be fine soon.
        other => AwsError::Transient(format!("{what}: {}", error_chain(other))),
    }
}

/// The IAM action an operation needs and the statement of packaging/iam-policy.json that
/// grants it, for an AccessDenied an operator must fix.
fn permission(what: &str) -> Option<&'static str> {
    let op = what.split_whitespace().next()?;
    let count = what.contains("count bucket");
    Some(match op {
        "HeadObject" | "GetObject" if count => {
            "s3:GetObject on the count objects (IAM policy statement ReadAndWriteTheCountObjects)"
        }
        "HeadObject" | "GetObject" => {
            "s3:GetObject on the origin keys (IAM policy statement ReadMarkersInTheOrigin)"
        }
        "PutObject" => {
            "s3:PutObject and s3:GetObject on COUNT_BUCKET/*.txt (IAM policy statement ReadAndWriteTheCountObjects)"
        }
        "ListObjectsV2" | "HeadBucket" if count => {
            "s3:ListBucket on the count bucket (IAM policy statement ListTheCountBucketSoANewPeriodReads404)"
        }
        "ListObjectsV2" | "HeadBucket" => {
            "s3:ListBucket on the origin bucket (IAM policy statement ListTheOriginSoMissingKeysRead404)"
        }
        "CreateInvalidation" => {
            "cloudfront:CreateInvalidation on the distribution (IAM policy statement InvalidateTheDistribution)"
        }
        "GetInvalidation" => {
            "cloudfront:GetInvalidation on the distribution (IAM policy statement InvalidateTheDistribution)"
        }
        "ListInvalidations" => {
            "cloudfront:ListInvalidations on the distribution (IAM policy statement InvalidateTheDistribution)"
        }
        _ => return None,
    })
}

/// "dispatch failure: io error: connection refused": the whole chain, for the history row.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The HTTPS client of every AWS call (the SDK's own: hyper 1, rustls on ring, the system's
/// root certificates).
pub fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// A hyper client for the few HTTP calls that are not AWS API calls (a webhook, a Lambda's
/// presigned code URL): hyper 1 with rustls on ring and the system's root certificates, the
/// crates the SDK's own client links. HTTP and HTTPS; the caller decides which URLs it allows.
pub fn hyper_client<B>() -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        B,
    >,
    String,
>
where
    B: hyper::body::Body + Send,
    B::Data: Send,
{
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("the system's root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// Both clients, configured once from `[aws]` and the standard credential chain.
#[derive(Clone)]
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub cloudfront: aws_sdk_cloudfront::Client,
    /// The configuration every client is built from (region, credentials, timeouts, endpoint),
    /// for other services' clients (SNS).
    pub shared: aws_config::SdkConfig,
}

impl Clients {
    pub async fn new(cfg: &Aws) -> Clients {
        // A stalled connection must not hang a request: every attempt and call has a deadline.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(20))
            .operation_timeout(Duration::from_secs(60))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client())
            .timeout_config(timeouts)
            .stalled_stream_protection(
                aws_sdk_s3::config::StalledStreamProtectionConfig::disabled(),
            );
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        } else {
            // The standard chain (environment, profile, the instance's metadata), then
            // us-east-1: CloudFront is global, S3 needs some region to sign with. Its metadata
            // lookup gets our HTTP client: the SDK's own default chain has none here (no
            // default-https-client), and its IMDS client was built without one (a panic in a
            // debug build, never an answer in a release build).
            use aws_config::meta::region::RegionProviderChain;
            let providers = aws_config::provider_config::ProviderConfig::without_region()
                .with_http_client(http_client());
            loader = loader.region(
                RegionProviderChain::first_try(
                    aws_config::environment::EnvironmentVariableRegionProvider::new(),
                )
                .or_else(
                    aws_config::profile::ProfileFileRegionProvider::builder()
                        .configure(&providers)
                        .build(),
                )
                .or_else(
                    aws_config::imds::region::ImdsRegionProvider::builder()
                        .configure(&providers)
                        .build(),
                )
                .or_else(Region::from_static("us-east-1")),
            );
        }
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let shared = loader.load().await;
        // Every attempt timed by operation for `[metrics]` ([`interceptor`]); the per-bucket
        // clients are built from this config and keep the interceptor.
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared).interceptor(interceptor::AwsCalls);
        if cfg.endpoint_url.is_some() {
            // Emulators and S3-compatible stores answer on one host: bucket in the path.
            s3 = s3.force_path_style(true);
        }
        let cloudfront =
            aws_sdk_cloudfront::config::Builder::from(&shared).interceptor(interceptor::AwsCalls);
        Clients {
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            cloudfront: aws_sdk_cloudfront::Client::from_conf(cloudfront.build()),
            shared,
        }
    }

    /// The S3 client for `bucket`, first signed for `region` (the config's override) or the
    /// default region.
    pub fn bucket(&self, name: &str, region: Option<&str>) -> Bucket {
        let conf = self.s3.config().clone();
        let start = region
            .map(str::to_owned)
            .or_else(|| conf.region().map(|r| r.to_string()))
            .unwrap_or_else(|| "us-east-1".into());
        let client = client_in(&conf, &start);
        Bucket {
            name: name.to_owned(),
            conf,
            current: Arc::new(RwLock::new((start, client))),
        }
    }
}

fn client_in(conf: &aws_sdk_s3::Config, region: &str) -> aws_sdk_s3::Client {
    let conf = conf
        .to_builder()
        .region(Region::new(region.to_owned()))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// One bucket and the client that reaches it, signed for the bucket's own region (see the
/// module's `# Regions`). Clones share the client, so a region learned by one call serves all.
#[derive(Clone)]
pub struct Bucket {
    name: String,
    conf: aws_sdk_s3::Config,
    current: Arc<RwLock<(String, aws_sdk_s3::Client)>>,
}

impl Bucket {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The region this bucket's calls are signed for now.
    pub fn region(&self) -> String {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    fn client(&self) -> aws_sdk_s3::Client {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Sends `call` with this bucket's client. When S3 answers that the bucket lives in another
    /// region, the client switches to it and the call is sent once more.
    pub async fn send<T, E, F, Fut>(&self, call: F) -> Result<T, SdkError<E, HttpResponse>>
    where
        F: Fn(aws_sdk_s3::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        let first = call(self.client()).await;
        match &first {
            Err(e) if self.follow(e) => call(self.client()).await,
            _ => first,
        }
    }

    /// Switches to the region an error names, if it names another. True when it switched.
    fn follow<E>(&self, e: &SdkError<E, HttpResponse>) -> bool {
        let Some(region) = e
            .raw_response()
            .and_then(|r| r.headers().get("x-amz-bucket-region"))
            .filter(|r| !r.is_empty())
        else {
            return false;
        };
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.0 == region {
            return false;
        }
        warn!(
            bucket = %self.name,
            from = %cur.0,
            to = %region,
            "the bucket is in another region: signing its calls for that region"
        );
        *cur = (region.to_owned(), client_in(&self.conf, region));
        true
    }

    /// HeadBucket: proves the bucket answers and learns its region, which S3 names even in a
    /// 301 or 403 answer.
    pub async fn locate(&self) -> Result<String, AwsError> {
        let name = self.name.clone();
        let out = self
            .send(|c| {
                let name = name.clone();
                async move { c.head_bucket().bucket(name).send().await }
            })
            .await;
        match out {
            Ok(o) => Ok(o
                .bucket_region()
                .map_or_else(|| self.region(), str::to_owned)),
            Err(e) => Err(classify(&format!("HeadBucket s3://{}", self.name), &e)),
        }
    }
}
