//! AWS clients from the standard chain, with timeouts on every call, and one error type that
//! says whether trying again can help.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::config::Aws;

#[derive(Debug, thiserror::Error, Clone)]
pub enum AwsError {
    /// Network trouble, throttling, 5xx, TooManyInvalidationsInProgress: retry with backoff.
    #[error("{0} (will retry)")]
    Transient(String),
    /// Denied, missing, invalid: retrying will not help; the request fails with this message.
    #[error("{0}")]
    Permanent(String),
}

impl AwsError {
    pub fn transient(m: impl Into<String>) -> AwsError {
        AwsError::Transient(m.into())
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, AwsError::Transient(_))
    }
}

/// Sorts an SDK error by whether a retry can help. CloudFront errors from the emulator come
/// without a parsed code, so the HTTP status decides too.
pub fn classify<E>(what: &str, e: &SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            let msg = se.err().message().unwrap_or("");
            let text = format!("{what}: HTTP {status} {code} {msg}")
                .trim()
                .to_owned();
            let transient_code = matches!(
                code,
                "Throttling"
                    | "ThrottlingException"
                    | "TooManyRequestsException"
                    | "RequestLimitExceeded"
                    | "SlowDown"
                    | "RequestTimeout"
                    | "InternalError"
                    | "ServiceUnavailable"
                    | "TooManyInvalidationsInProgress"
            );
            if transient_code || status >= 500 || status == 429 || status == 408 {
                AwsError::Transient(text)
            } else {
                AwsError::Permanent(text)
            }
        }
        // Timeouts, connection refused/reset, unparseable responses: the service may be fine soon.
        other => AwsError::Transient(format!("{what}: {}", error_chain(other))),
    }
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

/// Both clients, configured once from `[aws]` and the standard credential chain.
#[derive(Clone)]
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub cloudfront: aws_sdk_cloudfront::Client,
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
            // CloudFront is global; S3 needs some region to sign with when the chain has none.
            loader = loader.region(
                aws_config::meta::region::RegionProviderChain::default_provider()
                    .or_else(Region::from_static("us-east-1")),
            );
        }
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let shared = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared);
        if cfg.endpoint_url.is_some() {
            // Emulators and S3-compatible stores answer on one host: bucket in the path.
            s3 = s3.force_path_style(true);
        }
        Clients {
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            cloudfront: aws_sdk_cloudfront::Client::new(&shared),
        }
    }
}
