//! The webhook target: one JSON POST per alert, whose `text` Slack, Teams and Discord show as
//! is. hyper with rustls on ring and the system's root certificates (the crates the AWS SDK's
//! own client links). The URL is a secret (Slack's holds the token): never logged.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use super::ATTEMPT_TIMEOUT;

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

pub struct Webhook {
    client: HttpClient,
    uri: hyper::Uri,
}

impl Webhook {
    /// Err: why this URL cannot be used, in words (without the URL).
    pub fn new(url: &str) -> Result<Webhook, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("the webhook URL does not parse: {e}"))?;
        let client = crate::aws::hyper_client()?;
        Ok(Webhook { client, uri })
    }

    /// Ok: "HTTP 200". Err: why not, with the start of the answer (Slack says
    /// "invalid_payload", "no_service").
    pub async fn post(&self, json: String) -> Result<String, String> {
        let req = hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("purgewatch/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| format!("request: {e}"))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| crate::aws::error_chain(&e))?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), 4096)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                Ok(format!("HTTP {}", status.as_u16()))
            } else {
                let said: String = String::from_utf8_lossy(&body)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                Err(format!("HTTP {} {}", status.as_u16(), said.trim())
                    .trim()
                    .to_owned())
            }
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()))?
    }
}
