//! Proof at the edge (`[cloudfront] edge_check`). "Completed" says CloudFront ran the
//! invalidation, not that viewers get the new bytes: a path that does not match what viewers
//! ask for (an origin path or `path_prefix` mapped wrong, an encoding, `dir/` for
//! `dir/index.html`) leaves the site stale with every light green. So a few purged objects are
//! fetched through the distribution as a viewer would, and each answer's ETag is compared with
//! the one S3 holds for the object.
//!
//! `Accept-Encoding: identity`: CloudFront weakens the ETag of a copy it compresses (`W/"…"`),
//! so only the object as stored carries S3's ETag. Only the head is read; the body is dropped.
//! A stale answer is asked again (2 s, doubling to a minute) for `edge_retry_for` before it
//! counts: an edge location may lag. The check spends no quota and sends no invalidation.

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::aws;

/// One object to ask the edge for: the viewer path, and S3's ETag for it (lower-case, unquoted).
#[derive(Debug, Clone)]
pub struct Target {
    pub path: String,
    pub s3_etag: String,
}

/// What the edge answered for a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// S3's ETag: the new bytes.
    Fresh,
    /// Another ETag (or none, or an error status): old bytes, or not the object at all.
    Stale { status: u16, etag: Option<String> },
    /// No answer (connection refused, a timeout, a TLS failure): nothing to conclude.
    Unreachable(String),
}

/// The check's outcome: the targets asked, and those not fresh with what the edge said last.
#[derive(Debug)]
pub struct Report {
    pub checked: usize,
    pub not_fresh: Vec<(Target, Seen)>,
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// A distribution's viewer side: a base URL (`https://www.example.com`, no trailing '/').
pub struct Edge {
    base: String,
    client: Client,
}

/// How long one GET may take, head included.
const ASK_FOR: Duration = Duration::from_secs(15);

impl Edge {
    pub fn new(base: &str) -> Result<Edge, String> {
        Ok(Edge {
            base: base.trim_end_matches('/').to_owned(),
            client: aws::hyper_client()?,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Asks every target, then the stale ones again until `retry_for` has passed. `None`: the
    /// daemon is stopping.
    pub async fn check(
        &self,
        targets: &[Target],
        retry_for: Duration,
        stop: &CancellationToken,
    ) -> Option<Report> {
        let end = Instant::now() + retry_for;
        let mut open: Vec<(Target, Seen)> =
            targets.iter().map(|t| (t.clone(), Seen::Fresh)).collect();
        let mut delay = Duration::from_secs(2);
        // Bounded: each round waits at least 2 s, and the rounds stop at `end`.
        loop {
            let mut still = Vec::new();
            for (t, _) in open {
                let seen = self.ask(&t).await;
                if seen != Seen::Fresh {
                    still.push((t, seen));
                }
            }
            open = still;
            if open.is_empty() || Instant::now() + delay > end {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return None,
            }
            delay = (delay * 2).min(Duration::from_secs(60));
        }
        Some(Report {
            checked: targets.len(),
            not_fresh: open,
        })
    }

    /// One GET of a target's viewer path, head only.
    async fn ask(&self, t: &Target) -> Seen {
        let url = format!("{}{}", self.base, t.path);
        let req = hyper::Request::get(url.as_str())
            .header(hyper::header::ACCEPT_ENCODING, "identity")
            .header(
                hyper::header::USER_AGENT,
                concat!("purgewatch/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new());
        let req = match req {
            Ok(r) => r,
            Err(e) => return Seen::Unreachable(format!("{url}: {e}")),
        };
        let answer = tokio::time::timeout(ASK_FOR, self.client.request(req)).await;
        let resp = match answer {
            Err(_) => return Seen::Unreachable(format!("no answer within {}s", ASK_FOR.as_secs())),
            Ok(Err(e)) => return Seen::Unreachable(aws::error_chain(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        // The body is not read: dropping the answer closes the connection.
        let etag = resp
            .headers()
            .get(hyper::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(200).collect::<String>());
        if status == 200 && etag.as_deref().map(clean) == Some(t.s3_etag.clone()) {
            Seen::Fresh
        } else {
            Seen::Stale { status, etag }
        }
    }
}

/// An ETag as S3 lists it: lower-case, unquoted. A weak one (`W/"…"`, a compressed copy) keeps
/// its `W/`, so it never equals S3's.
fn clean(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stored_objects_etag_is_fresh() {
        assert_eq!(clean("\"ABC123\""), "abc123");
        assert_eq!(clean(" \"abc123\" "), "abc123");
        // A compressed copy's weak ETag is not the object's.
        assert_ne!(clean("W/\"abc123\""), "abc123");
    }
}
