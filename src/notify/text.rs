//! What an alert says: the JSON a webhook receives and SNS carries as its Message, its one-line
//! `text`, SNS's Subject, and the notes of each attempt in the request's history. Names from
//! the tree are data here: escaped in the text, exact (and `\u`-escaped) in the JSON.

use std::time::Duration;

use serde::Serialize;

use crate::store::alerts::{AlertRow, Target};
use crate::store::Status;

/// Most paths an alert lists (the count is always there).
const PATHS_MAX: usize = 100;
/// SNS's subject is "less than 100 characters long".
const SUBJECT_MAX: usize = 99;

/// One message, as the webhook receives it and as SNS's Message.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// One line: "purgewatch on web1: request 42 blog/.purge failed: CloudFront refused: …".
    pub text: String,
    /// The status reached.
    pub event: Status,
    pub host: String,
    /// The request's site (`default` for a single-site config).
    pub site: String,
    /// When the request reached it (RFC 3339 UTC).
    pub at: String,
    pub request: RequestPart,
    pub quota: QuotaPart,
    /// The event this alert is about (`alert_deliveries.event_id`).
    #[serde(skip)]
    pub event_id: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestPart {
    pub id: i64,
    pub marker: String,
    pub status: Status,
    /// Why, in words: the detail of the move to this status.
    pub detail: Option<String>,
    pub invalidation_id: Option<String>,
    /// Each distribution the purge went to, with its invalidation id and state.
    pub invalidations: Vec<DistributionPart>,
    /// The first [`PATHS_MAX`] paths; `path_count` says how many there are.
    pub paths: Vec<String>,
    pub path_count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct DistributionPart {
    pub distribution_id: String,
    pub invalidation_id: Option<String>,
    pub state: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuotaPart {
    /// The quota's name (`default`, or NAME of `[quotas.NAME]`).
    pub name: String,
    /// The request's quota period, or the current one when it never reached the quota.
    pub period: String,
    /// Slots used in that period when the alert was read.
    pub count: u32,
    pub max: u32,
}

impl Alert {
    /// The alert of an outbox row, from `host`, under a quota of `max` slots.
    pub fn new(row: AlertRow, host: &str, max: u32) -> Alert {
        Alert {
            text: text_of(
                host,
                &row.site,
                row.request_id,
                &row.marker,
                row.status,
                row.detail.as_deref(),
            ),
            event: row.status,
            host: host.to_owned(),
            site: row.site,
            at: row.at,
            request: RequestPart {
                id: row.request_id,
                marker: row.marker,
                status: row.status,
                detail: row.detail,
                invalidation_id: row.invalidation_id,
                invalidations: row
                    .invalidations
                    .into_iter()
                    .map(|i| DistributionPart {
                        distribution_id: i.distribution_id,
                        invalidation_id: i.invalidation_id,
                        state: i.state.as_str().to_owned(),
                    })
                    .collect(),
                path_count: row.paths.len(),
                paths: row.paths.into_iter().take(PATHS_MAX).collect(),
            },
            quota: QuotaPart {
                name: row.quota,
                period: row.period,
                count: row.count,
                max,
            },
            event_id: row.event_id,
        }
    }

    pub fn subject(&self) -> String {
        // SNS: ASCII without line breaks or control characters, "less than 100 characters",
        // starting with a letter, digit or punctuation (it does: "purgewatch"). No marker in
        // it: the name is in the message.
        let s = format!(
            "purgewatch on {}: request {} {}",
            self.host, self.request.id, self.event
        );
        s.chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(SUBJECT_MAX)
            .collect()
    }

    /// The JSON body, with every character a terminal acts on as a `\uXXXX` escape: a reader
    /// gets the exact name back, and no raw control reaches a mail client or a log of the body.
    pub fn to_json(&self) -> Result<String, String> {
        let mut out = Vec::with_capacity(1024);
        let mut ser = serde_json::Serializer::with_formatter(&mut out, InertJson);
        self.serialize(&mut ser).map_err(|e| format!("JSON: {e}"))?;
        String::from_utf8(out).map_err(|e| format!("JSON: {e}"))
    }
}

/// serde_json's compact output, but for DEL, the C1 controls and the bidirectional overrides,
/// which JSON allows raw (it escapes only U+0000–U+001F) and a terminal acts on.
struct InertJson;

impl serde_json::ser::Formatter for InertJson {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if crate::text::acts(c) {
                w.write_all(&fragment.as_bytes()[start..i])?;
                // Every such character is in the BMP: one `\uXXXX`.
                write!(w, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

fn text_of(
    host: &str,
    site: &str,
    id: i64,
    marker: &str,
    status: Status,
    detail: Option<&str>,
) -> String {
    let on = if site == "default" {
        String::new()
    } else {
        format!(" site {site}")
    };
    // A name from the tree is shown escaped (`\n`, `\u{1b}`): an operator sees that a name is
    // odd, where dropping the characters would show two names as one.
    let marker = crate::text::printable(marker);
    let mut t = format!("purgewatch on {host}{on}: request {id} {marker} {status}");
    if let Some(d) = detail.filter(|d| !d.is_empty()) {
        t.push_str(": ");
        // Our own words: a line break in them is a space, so the text stays one line.
        t.push_str(&d.replace(['\r', '\n'], " "));
    }
    slack_escape(&crate::text::printable(&t))
}

/// Slack's escaping of message text: `&`, `<` and `>` are its markup (`<!channel>` pings the
/// channel, `<url|label>` is a link), so a folder name could mention or mislink. Teams and
/// Discord show the entities as text, which is harmless.
fn slack_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// An attempt's outcome in words, for the history ("alert on failed to webhook: HTTP 500,
/// retrying in 10s"). For people only: what is finished is read from `alert_deliveries`.
pub enum Note<'a> {
    Delivered {
        proof: &'a str,
    },
    Retrying {
        error: &'a str,
        delay: Duration,
    },
    GaveUp {
        error: &'a str,
        attempts: u32,
        after: Duration,
    },
}

impl Note<'_> {
    pub fn line(&self, event: Status, target: Target) -> String {
        let target = match target {
            Target::Webhook => "webhook",
            Target::Sns => "SNS",
        };
        let said = match self {
            Note::Delivered { proof } => format!("delivered ({proof})"),
            Note::Retrying { error, delay } => {
                format!(
                    "{error}, retrying in {}",
                    humantime::format_duration(*delay)
                )
            }
            Note::GaveUp {
                error,
                attempts,
                after,
            } => format!(
                "gave up after {attempts} attempts in {}: {error}",
                humantime::format_duration(Duration::from_secs(after.as_secs()))
            ),
        };
        format!("alert on {event} to {target}: {said}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_one_line() {
        let t = text_of(
            "web1",
            "default",
            42,
            "blog/.purge",
            Status::Failed,
            Some("CloudFront refused:\nInvalidArgument"),
        );
        assert_eq!(
            t,
            "purgewatch on web1: request 42 blog/.purge failed: CloudFront refused: InvalidArgument"
        );
        let t = text_of("web1", "shop", 7, ".purge", Status::Failed, None);
        assert_eq!(t, "purgewatch on web1 site shop: request 7 .purge failed");
    }

    #[test]
    fn a_hostile_folder_name_is_neither_markup_nor_a_control_in_the_text() {
        let t = text_of(
            "web1",
            "default",
            9,
            "<!channel> & x\x1b[2J\n\u{9b}/.purge",
            Status::Failed,
            Some("HeadObject <!here>:\n\x07"),
        );
        assert_eq!(
            t,
            "purgewatch on web1: request 9 &lt;!channel&gt; &amp; x\\u{1b}[2J\\n\\u{9b}/.purge \
             failed: HeadObject &lt;!here&gt;: \\u{7}"
        );
    }

    fn alert(host: &str, marker: &str) -> Alert {
        Alert {
            text: String::new(),
            event: Status::Failed,
            host: host.into(),
            site: "default".into(),
            at: String::new(),
            request: RequestPart {
                id: 12345,
                marker: marker.into(),
                status: Status::Failed,
                detail: None,
                invalidation_id: None,
                invalidations: Vec::new(),
                paths: Vec::new(),
                path_count: 0,
            },
            quota: QuotaPart {
                name: "default".into(),
                period: String::new(),
                count: 0,
                max: 0,
            },
            event_id: 0,
        }
    }

    #[test]
    fn the_sns_subject_is_printable_ascii_under_100_characters() {
        let s = alert(&format!("web\x1b[2J\n{}", "h".repeat(200)), "").subject();
        assert_eq!(s.chars().count(), 99);
        assert!(s.starts_with("purgewatch on web[2Jhhh"), "{s}");
        assert!(s.chars().all(|c| c.is_ascii_graphic() || c == ' '), "{s}");
    }

    #[test]
    fn the_json_carries_the_exact_name_with_no_raw_control() {
        let name = "a\x1b[2J\u{7f}\u{9b}\u{202e}é/.purge";
        let json = alert("web1", name).to_json().expect("json");
        assert!(!json.chars().any(crate::text::acts), "{json:?}");
        assert!(
            json.contains(r#""a\u001b[2J\u007f\u009b\u202eé/.purge""#),
            "{json}"
        );
        let back: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(back["request"]["marker"], name);
    }

    #[test]
    fn the_notes_read_as_before() {
        let n = Note::GaveUp {
            error: "HTTP 500",
            attempts: 17,
            after: Duration::from_millis(3_720_500),
        };
        assert_eq!(
            n.line(Status::Failed, Target::Sns),
            "alert on failed to SNS: gave up after 17 attempts in 1h 2m: HTTP 500"
        );
        let n = Note::Retrying {
            error: "refused",
            delay: Duration::from_secs(10),
        };
        assert_eq!(
            n.line(Status::Completed, Target::Webhook),
            "alert on completed to webhook: refused, retrying in 10s"
        );
    }
}
