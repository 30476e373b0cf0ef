//! The SDK interceptor added to every client in [`Clients::new`](super::Clients::new): each
//! attempt (a retry is another) timed by operation, and a failed one counted by kind, into
//! [`Calls`], the counters the metrics page shows (`purgewatch_aws_request_duration_seconds`,
//! `purgewatch_aws_errors_total`).
//!
//! The counters are process-global, so the counts survive a daemon started again in the same
//! process; the metrics read them from here ([`calls`]), and nothing here knows the metrics.

use std::sync::OnceLock;
use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use super::Code;

/// An operation's name, as the SDK knows it (`HeadObject`, `CreateInvalidation`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    operation: String,
}

/// An operation and the [`error_kind`] of a failed attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    operation: String,
    kind: &'static str,
}

/// A histogram per operation, each with the buckets of [`calls`].
pub type Histograms = Family<OperationLabel, Histogram, fn() -> Histogram>;

/// The AWS calls of the whole process (every client built by `Clients::new`).
pub struct Calls {
    /// Each attempt's time, by operation.
    pub duration: Histograms,
    /// Failed attempts, by operation and kind.
    pub errors: Family<ErrorLabel, Counter>,
}

/// The counters [`AwsCalls`] fills.
pub fn calls() -> &'static Calls {
    static CALLS: OnceLock<Calls> = OnceLock::new();
    CALLS.get_or_init(|| Calls {
        // 5 ms to 20 s (the attempt timeout), doubling.
        duration: Family::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 13))
        }),
        errors: Family::default(),
    })
}

/// The SDK interceptor behind [`Calls`]: each attempt timed by operation, and a failed one
/// counted by [`error_kind`].
#[derive(Debug)]
pub struct AwsCalls;

#[derive(Debug, Clone)]
struct AttemptStarted(Instant);

impl Storable for AttemptStarted {
    type Storer = StoreReplace<Self>;
}

impl Intercept for AwsCalls {
    fn name(&self) -> &'static str {
        "purgewatch metrics"
    }

    fn read_before_attempt(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(AttemptStarted(Instant::now()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        ctx: &FinalizerInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map_or("unknown", |m| m.name())
            .to_owned();
        let m = calls();
        if let Some(started) = cfg.load::<AttemptStarted>() {
            m.duration
                .get_or_create(&OperationLabel {
                    operation: operation.clone(),
                })
                .observe(started.0.elapsed().as_secs_f64());
        }
        let status = ctx.response().map(|r| r.status().as_u16());
        let failed =
            matches!(ctx.output_or_error(), Some(Err(_))) || status.is_some_and(|s| s >= 300);
        if failed {
            let body = ctx.response().and_then(|r| r.body().bytes()).unwrap_or(b"");
            let kind = error_kind(status, error_code(body));
            m.errors
                .get_or_create(&ErrorLabel { operation, kind })
                .inc();
        }
        Ok(())
    }
}

/// The `<Code>` of an S3 or CloudFront XML error body ("" without one: HeadObject has no body).
fn error_code(body: &[u8]) -> &str {
    let s = std::str::from_utf8(body).unwrap_or("");
    s.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map_or("", |(code, _)| code.trim())
}

/// A failed attempt's kind, for `purgewatch_aws_errors_total{kind}`: `throttling` (429,
/// SlowDown, TooManyInvalidationsInProgress…), `transient` (no answer — timeout, connection —,
/// 5xx, the service's trouble, credentials a refresh renews), `denied` (403), `not_found` (404:
/// a marker not uploaded yet is one, and expected), `conflict` (409/412: a count object another
/// server wrote first, also expected), `other`. The codes are [`Code`]'s, the retry classes'.
fn error_kind(status: Option<u16>, code: &str) -> &'static str {
    let known = Code::of(code);
    if matches!(known, Some(Code::Throttling | Code::Busy)) || status == Some(429) {
        return "throttling";
    }
    match status {
        None => "transient",
        Some(s) if s >= 500 || s == 408 => "transient",
        _ if matches!(known, Some(Code::Credentials | Code::ServerTrouble)) => "transient",
        Some(403) => "denied",
        _ if known == Some(Code::Denied) => "denied",
        Some(404) => "not_found",
        Some(409 | 412) => "conflict",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_tell_expected_outcomes_from_trouble() {
        assert_eq!(error_kind(Some(503), "SlowDown"), "throttling");
        assert_eq!(
            error_kind(Some(400), "TooManyInvalidationsInProgress"),
            "throttling"
        );
        assert_eq!(error_kind(Some(429), ""), "throttling");
        assert_eq!(error_kind(None, ""), "transient");
        assert_eq!(error_kind(Some(500), "InternalError"), "transient");
        assert_eq!(error_kind(Some(403), "RequestTimeTooSkewed"), "transient");
        assert_eq!(error_kind(Some(403), ""), "denied");
        assert_eq!(error_kind(Some(400), "AccessDeniedException"), "denied");
        assert_eq!(error_kind(Some(404), ""), "not_found");
        assert_eq!(error_kind(Some(412), "PreconditionFailed"), "conflict");
        assert_eq!(error_kind(Some(400), "InvalidArgument"), "other");
    }

    /// The retry class and the metric's kind come from one table: a code a retry cures is
    /// never counted as `other` (S3's RequestTimeout is a 400, and was).
    #[test]
    fn a_code_retried_is_counted_as_trouble() {
        assert_eq!(error_kind(Some(400), "RequestTimeout"), "transient");
        assert_eq!(Code::of("RequestTimeout"), Some(Code::ServerTrouble));
        assert_eq!(Code::of("AccessDenied"), Some(Code::Denied));
        assert_eq!(Code::of("NoSuchKey"), None);
    }

    #[test]
    fn the_error_code_is_read_from_an_xml_body() {
        let body = b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>\
                     <Message>Rate exceeded</Message></Error></ErrorResponse>";
        assert_eq!(error_code(body), "Throttling");
        assert_eq!(error_code(b""), "");
    }
}
