//! Switches of the emulator's strict layer (tests/moto_atomic.py documents each behaviour and the
//! AWS fact behind it), per bucket and per distribution, so concurrent tests do not meet.
//!
//! `bucket(name, json!({"kms": true}))` merges options for one bucket; `bucket_calls(name)` gives
//! the number of requests the emulator saw for it, by operation name ("HeadObject": 3, ...).
//! The `*_at` variants talk to another emulator (a `PrivateEmulator`'s `url`, plain HTTP only).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// One HTTP/1.0 exchange with the emulator's control endpoint: (status, body).
fn exchange(url: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let addr = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("the strict layer is driven over plain HTTP, not {url}"))
        .trim_end_matches('/');
    let mut s = TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connect to the emulator at {addr}: {e}"));
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("send {method} {path} to the emulator: {e}"));
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("read the emulator's answer to {method} {path}: {e}"));
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| {
            panic!("no HTTP status in the emulator's answer to {method} {path}: {out:?}")
        });
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn configure(url: &str, kind: &str, name: &str, opts: Value) -> Value {
    let mut req = match opts {
        Value::Object(m) => m,
        Value::Null => serde_json::Map::new(),
        other => panic!("strict options for {kind} {name} must be a JSON object, not {other}"),
    };
    req.insert(kind.to_owned(), Value::String(name.to_owned()));
    let body = Value::Object(req).to_string();
    let (status, answer) = exchange(url, "POST", "/_strict", &body);
    assert!(
        status == 200,
        "the emulator refused strict options {body} for {kind} {name}: {status} {answer} \
         (is it started through tests/moto_atomic.py?)"
    );
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("strict answer {answer:?}: {e}"))
}

fn calls(url: &str, kind: &str, name: &str) -> HashMap<String, u64> {
    let path = format!("/_strict/calls?{kind}={}", query_escape(name));
    let (status, answer) = exchange(url, "GET", &path, "");
    assert!(
        status == 200,
        "the emulator refused {path}: {status} {answer} (is it started through tests/moto_atomic.py?)"
    );
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("calls answer {answer:?}: {e}"))
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Merges strict options for bucket `name` (POST /_strict {"bucket": name, ..opts}); returns the
/// options now in force. Options: kms, checksums, region, expired_token, conflict, access_denied.
pub fn bucket_at(url: &str, name: &str, opts: Value) -> Value {
    configure(url, "bucket", name, opts)
}

/// Merges strict options for distribution `id`. Options: caller_reference, validate_paths,
/// in_progress_secs, throttle, expired_token, lose_answer.
pub fn distribution_at(url: &str, id: &str, opts: Value) -> Value {
    configure(url, "distribution", id, opts)
}

/// Requests the emulator saw for bucket `name`, by S3 operation name.
pub fn bucket_calls_at(url: &str, name: &str) -> HashMap<String, u64> {
    calls(url, "bucket", name)
}

/// Requests the emulator saw for distribution `id`, by CloudFront operation name.
pub fn distribution_calls_at(url: &str, id: &str) -> HashMap<String, u64> {
    calls(url, "distribution", id)
}

/// `bucket_at` on the shared emulator.
pub fn bucket(name: &str, opts: Value) {
    bucket_at(&super::emulator().url, name, opts);
}

/// `distribution_at` on the shared emulator.
pub fn distribution(id: &str, opts: Value) {
    distribution_at(&super::emulator().url, id, opts);
}

pub fn bucket_calls(name: &str) -> HashMap<String, u64> {
    bucket_calls_at(&super::emulator().url, name)
}

pub fn distribution_calls(id: &str) -> HashMap<String, u64> {
    distribution_calls_at(&super::emulator().url, id)
}

impl super::Site {
    /// Strict options for this site's origin bucket.
    pub fn strict_origin(&self, opts: Value) {
        bucket_at(&self.endpoint, &self.origin_bucket, opts);
    }

    /// Strict options for this site's count bucket.
    pub fn strict_count(&self, opts: Value) {
        bucket_at(&self.endpoint, &self.count_bucket, opts);
    }

    /// Strict options for this site's distribution.
    pub fn strict_cdn(&self, opts: Value) {
        distribution_at(&self.endpoint, &self.distribution_id, opts);
    }

    pub fn cdn_calls(&self) -> HashMap<String, u64> {
        distribution_calls_at(&self.endpoint, &self.distribution_id)
    }

    pub fn origin_calls(&self) -> HashMap<String, u64> {
        bucket_calls_at(&self.endpoint, &self.origin_bucket)
    }

    pub fn count_calls(&self) -> HashMap<String, u64> {
        bucket_calls_at(&self.endpoint, &self.count_bucket)
    }
}
