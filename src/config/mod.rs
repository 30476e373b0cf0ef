//! TOML → validated, typed configuration.
//!
//! Every error names the file and the dotted key (`quota.max`), so an operator can fix the config
//! from one log line; the binary maps [`ConfigError`] to exit status 78 (EX_CONFIG) and starts nothing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod sites;

// The quota's settings are the quota's own types; the config builds them.
pub use crate::quota::{Period, Quota, WhenExhausted};
pub use sites::{Running, Sites};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("{file}: {message}")]
    Syntax { file: PathBuf, message: String },
}

/// One site's view of the config file: its own tables, with the file's shared ones
/// (`[state]`, `[aws]`, `[metrics]`, `[notify]`). A file without `[[site]]` is one site named
/// `default`; see [`Sites`] for the file with several.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from, for messages.
    pub file: PathBuf,
    /// The site's name (`default` for a single-site file): in history, metrics and alerts.
    pub site: String,
    pub watch: Watch,
    pub origin: Origin,
    pub quota: Quota,
    pub cloudfront: CloudFront,
    pub state: State,
    pub aws: Aws,
    pub metrics: Metrics,
    pub notify: Notify,
}

/// `[metrics]`: Prometheus text format at `GET /metrics` (src/metrics.rs); off unless set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    pub listen: Option<std::net::SocketAddr>,
}

/// `[notify]`: alerts when a request reaches one of `on` (src/notify.rs). Its `Debug` shows
/// where the webhook goes, never the URL (a secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Notify {
    /// POSTed JSON with a chat-ready `text` (Slack, Teams, Discord).
    pub webhook: Option<String>,
    pub sns_topic_arn: Option<String>,
    pub on: Vec<crate::store::Status>,
}

impl Default for Notify {
    fn default() -> Notify {
        use crate::store::Status;
        Notify {
            webhook: None,
            sns_topic_arn: None,
            on: vec![
                Status::Failed,
                Status::OriginTimeout,
                Status::QuotaExhausted,
            ],
        }
    }
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notify")
            .field("webhook", &self.webhook.as_deref().map(webhook_shown))
            .field("sns_topic_arn", &self.sns_topic_arn)
            .field("on", &self.on)
            .finish()
    }
}

impl Notify {
    pub fn is_on(&self) -> bool {
        self.webhook.is_some() || self.sns_topic_arn.is_some()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    pub root: PathBuf,
    pub marker: String,
    /// Marker writes closer together than this become one request.
    pub settle: Duration,
    /// How often folders without an inotify watch (the kernel's limit reached) are scanned.
    pub fallback_scan: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub bucket: String,
    /// The bucket's region when it is not `[aws] region` (learned from S3 when unset).
    pub region: Option<String>,
    pub prefix: String,
    pub wait_timeout: Duration,
    pub wait_for: WaitFor,
    pub changes_check: ChangesCheck,
}

/// How `wait_for = "changes"` asks S3 (src/origin/changes.rs): `sweep`, the fewest listing
/// pages; `folders` and `head`, the plans it is measured against (bench/).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangesCheck {
    Sweep,
    Folders,
    Head,
}

/// What must be in S3 before a purge: the marker (the seed's trigger) or every change it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitFor {
    Marker,
    Changes,
}

/// Which paths to invalidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paths {
    /// Always these, e.g. `["/*"]` (the seed's behaviour).
    Fixed(Vec<String>),
    /// The changes recorded since the last request, collapsed under `max_paths`.
    Changed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CloudFront {
    pub distribution_id: String,
    pub paths: Paths,
    /// Most paths one invalidation may carry when `paths = "changed"` (wildcards count as one).
    pub max_paths: usize,
    /// Shadow mode: every step runs, the quota is read but no slot taken, nothing is sent.
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub database: PathBuf,
    /// Requests that ended longer ago than this are deleted, with their events and changes.
    pub keep: Duration,
    /// The changes of an ended request are deleted after this (its path list and change count
    /// stay on the request).
    pub keep_changes: Duration,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aws {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

// ---- the file as written ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    watch: RawWatch,
    origin: RawOrigin,
    quota: RawQuota,
    cloudfront: RawCloudFront,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    aws: RawAws,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    notify: RawNotify,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    webhook: Option<String>,
    sns_topic_arn: Option<String>,
    on: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    root: PathBuf,
    #[serde(default = "default_marker")]
    marker: String,
    #[serde(default = "default_settle")]
    settle: HumanDuration,
    #[serde(default = "default_fallback_scan")]
    fallback_scan: HumanDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrigin {
    bucket: String,
    region: Option<String>,
    #[serde(default)]
    prefix: String,
    #[serde(default = "default_wait_timeout")]
    wait_timeout: HumanDuration,
    #[serde(default = "default_wait_for")]
    wait_for: WaitFor,
    #[serde(default = "default_changes_check")]
    changes_check: ChangesCheck,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    max: u32,
    #[serde(default = "default_period")]
    period: Period,
    #[serde(default = "default_timezone")]
    timezone: String,
    count_bucket: Option<String>,
    count_bucket_region: Option<String>,
    #[serde(default)]
    key_prefix: String,
    #[serde(default = "default_when_exhausted")]
    when_exhausted: WhenExhausted,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloudFront {
    distribution_id: String,
    #[serde(default = "default_paths")]
    paths: RawPaths,
    #[serde(default = "default_max_paths")]
    max_paths: usize,
    #[serde(default)]
    dry_run: bool,
}

/// `paths = ["/*"]` or `paths = "changed"`.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a list of paths like [\"/*\"] or the word \"changed\""
)]
enum RawPaths {
    List(Vec<String>),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default = "default_database")]
    database: PathBuf,
    #[serde(default = "default_keep")]
    keep: HumanDuration,
    #[serde(default = "default_keep_changes")]
    keep_changes: HumanDuration,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            database: default_database(),
            keep: default_keep(),
            keep_changes: default_keep_changes(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Option<String>,
    endpoint_url: Option<String>,
}

/// A humantime string (`"2s"`, `"15m"`) as a [`Duration`].
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"2s\", \"500ms\" or \"15m\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(s)
                    .map(HumanDuration)
                    .map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

fn default_marker() -> String {
    ".purge".into()
}
fn default_settle() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_fallback_scan() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_wait_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}
fn default_period() -> Period {
    Period::Day
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_when_exhausted() -> WhenExhausted {
    WhenExhausted::Skip
}
fn default_paths() -> RawPaths {
    RawPaths::List(vec!["/*".into()])
}
fn default_max_paths() -> usize {
    15
}
fn default_wait_for() -> WaitFor {
    WaitFor::Marker
}
fn default_changes_check() -> ChangesCheck {
    ChangesCheck::Sweep
}
fn default_database() -> PathBuf {
    PathBuf::from("/var/lib/purgewatch/purgewatch.db")
}
fn default_keep() -> HumanDuration {
    HumanDuration(Duration::from_secs(400 * 86_400))
}
fn default_keep_changes() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 86_400))
}

impl Config {
    /// Whether every file change is recorded, not only markers.
    pub fn tracks_changes(&self) -> bool {
        self.origin.wait_for == WaitFor::Changes || self.cloudfront.paths == Paths::Changed
    }

    /// Reads and validates `file`. Nothing is touched beyond reading it and stat-ing `watch.root`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(file, &text)
    }

    /// A single-site file (no `[[site]]`): the site `default`.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| deserialize_error(file, Some(text), e, &|k| k.to_owned()))?;
        Config::build(file, raw, "default", "default", &|k| k.to_owned(), true)
    }

    /// Validates one site's tables. `name_key` turns a key of the single-site layout
    /// (`origin.bucket`) into the one the operator wrote (`site[1].origin.bucket`).
    fn build(
        file: &Path,
        raw: RawConfig,
        site: &str,
        quota_name: &str,
        name_key: &dyn Fn(&str) -> String,
        root_must_exist: bool,
    ) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: name_key(key),
            message,
        };

        let w = raw.watch;
        match std::fs::metadata(&w.root) {
            Ok(m) if m.is_dir() => {}
            // One site of several: reported and tried again while the others run.
            Err(e) if !root_must_exist && e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(_) => {
                return Err(invalid(
                    "watch.root",
                    format!("{} is not a directory", w.root.display()),
                ))
            }
            Err(e) => return Err(invalid("watch.root", format!("{}: {e}", w.root.display()))),
        }
        if w.marker.is_empty() || w.marker.contains('/') || w.marker == "." || w.marker == ".." {
            return Err(invalid(
                "watch.marker",
                format!("{:?} must be a plain file name without '/'", w.marker),
            ));
        }

        let o = raw.origin;
        check_bucket(&o.bucket).map_err(|m| invalid("origin.bucket", m))?;
        if o.prefix.starts_with('/') {
            return Err(invalid(
                "origin.prefix",
                "an S3 key prefix does not start with '/'".into(),
            ));
        }
        if o.wait_timeout.0.is_zero() {
            return Err(invalid("origin.wait_timeout", "must be more than 0".into()));
        }

        let q = raw.quota;
        if q.max == 0 {
            return Err(invalid("quota.max", "must be at least 1".into()));
        }
        let timezone: chrono_tz::Tz = q.timezone.parse().map_err(|_| {
            invalid(
                "quota.timezone",
                format!(
                    "unknown time zone {:?} (use an IANA name such as \"Asia/Tokyo\")",
                    q.timezone
                ),
            )
        })?;
        if let Some(b) = &q.count_bucket {
            check_bucket(b).map_err(|m| invalid("quota.count_bucket", m))?;
        }
        for (key, region) in [
            ("origin.region", &o.region),
            ("quota.count_bucket_region", &q.count_bucket_region),
            ("aws.region", &raw.aws.region),
        ] {
            if let Some(r) = region {
                check_region(r).map_err(|m| invalid(key, m))?;
            }
        }

        let c = raw.cloudfront;
        if c.distribution_id.trim().is_empty() {
            return Err(invalid(
                "cloudfront.distribution_id",
                "is empty: set the distribution's ID (CloudFront console, ID column)".into(),
            ));
        }
        let paths = match c.paths {
            RawPaths::Word(w) if w == "changed" => Paths::Changed,
            RawPaths::Word(w) => {
                return Err(invalid(
                    "cloudfront.paths",
                    format!("{w:?}: expected a list like [\"/*\"] or \"changed\""),
                ))
            }
            RawPaths::List(list) => {
                if list.is_empty() {
                    return Err(invalid(
                        "cloudfront.paths",
                        "needs at least one path".into(),
                    ));
                }
                // Refused by CloudFront, they would spend a quota slot on every purge.
                let list = crate::paths::configured(&list).map_err(|m| {
                    invalid(
                        "cloudfront.paths",
                        format!("CloudFront would refuse it: {m}"),
                    )
                })?;
                Paths::Fixed(list)
            }
        };
        if !(1..=3000).contains(&c.max_paths) {
            return Err(invalid(
                "cloudfront.max_paths",
                "must be between 1 and 3000 (CloudFront's limit per invalidation)".into(),
            ));
        }

        for (key, d) in [
            ("state.keep", raw.state.keep.0),
            ("state.keep_changes", raw.state.keep_changes.0),
        ] {
            if d < Duration::from_secs(1) {
                return Err(invalid(key, "must be at least 1s".into()));
            }
        }

        let metrics = Metrics {
            listen: match &raw.metrics.listen {
                None => None,
                Some(a) => Some(a.parse().map_err(|_| {
                    invalid(
                        "metrics.listen",
                        format!("{a:?} is not an address and port such as \"127.0.0.1:9465\""),
                    )
                })?),
            },
        };
        let n = raw.notify;
        if let Some(w) = &n.webhook {
            check_webhook(w).map_err(|m| {
                invalid(
                    "notify.webhook",
                    format!("{m} (the value is not shown: the URL carries a token)"),
                )
            })?;
        }
        if let Some(t) = &n.sns_topic_arn {
            if !t.starts_with("arn:") || t.split(':').count() != 6 {
                return Err(invalid(
                    "notify.sns_topic_arn",
                    format!("{t:?} is not a topic ARN such as \"arn:aws:sns:REGION:ACCOUNT:NAME\""),
                ));
            }
        }
        let on = match n.on {
            None => Notify::default().on,
            Some(list) => {
                use crate::store::Status;
                let mut on = Vec::new();
                for w in list {
                    let st = Status::parse(&w).filter(|s| {
                        matches!(
                            s,
                            Status::Failed
                                | Status::OriginTimeout
                                | Status::QuotaExhausted
                                | Status::Completed
                                | Status::Deferred
                        )
                    });
                    on.push(st.ok_or_else(|| {
                        invalid(
                            "notify.on",
                            format!("{w:?}: one of \"failed\", \"origin_timeout\", \"quota_exhausted\", \"completed\", \"deferred\""),
                        )
                    })?);
                }
                on
            }
        };
        let notify = Notify {
            webhook: n.webhook,
            sns_topic_arn: n.sns_topic_arn,
            on,
        };

        if let Some(url) = &raw.aws.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "aws.endpoint_url",
                    format!("{url:?} must start with http:// or https://"),
                ));
            }
        }

        if q.key_prefix.starts_with('/') {
            return Err(invalid(
                "quota.key_prefix",
                "an S3 key prefix does not start with '/'".into(),
            ));
        }
        Ok(Config {
            file: file.to_owned(),
            site: site.to_owned(),
            watch: Watch {
                root: w.root,
                marker: w.marker,
                settle: w.settle.0,
                fallback_scan: w.fallback_scan.0.max(Duration::from_millis(100)),
            },
            origin: Origin {
                bucket: o.bucket,
                region: o.region,
                prefix: o.prefix,
                wait_timeout: o.wait_timeout.0,
                wait_for: o.wait_for,
                changes_check: o.changes_check,
            },
            quota: Quota {
                name: quota_name.to_owned(),
                key_prefix: q.key_prefix,
                max: q.max,
                period: q.period,
                timezone,
                count_bucket: q.count_bucket,
                count_bucket_region: q.count_bucket_region,
                when_exhausted: q.when_exhausted,
            },
            cloudfront: CloudFront {
                distribution_id: c.distribution_id,
                paths,
                max_paths: c.max_paths,
                dry_run: c.dry_run,
            },
            state: State {
                database: raw.state.database,
                keep: raw.state.keep.0,
                keep_changes: raw.state.keep_changes.0,
            },
            aws: Aws {
                region: raw.aws.region,
                endpoint_url: raw.aws.endpoint_url,
            },
            metrics,
            notify,
        })
    }
}

/// A serde error as the key it is about (`quota.max`), or a syntax error with its line.
fn deserialize_error(
    file: &Path,
    text: Option<&str>,
    e: serde_path_to_error::Error<toml::de::Error>,
    name_key: &dyn Fn(&str) -> String,
) -> ConfigError {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        file: file.to_owned(),
        key: name_key(key),
        message,
    };
    let key = e.path().to_string();
    let inner = e.into_inner();
    let message = inner.message().to_owned();
    // A missing field is reported at its parent: name the full key instead.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        let full = if key == "." {
            field.to_owned()
        } else {
            format!("{key}.{field}")
        };
        return invalid(&full, "required key is missing".into());
    }
    if key == "." {
        let at = inner
            .span()
            .zip(text)
            .map(|(s, text)| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        ConfigError::Syntax {
            file: file.to_owned(),
            message: format!("{}{at}", message.trim()),
        }
    } else {
        invalid(&key, message.trim().to_owned())
    }
}

/// The webhook URL is a secret (Slack's carries the token): what is wrong with it is said
/// without a word of it. HTTPS, or plain HTTP to this machine only (a local relay, the tests):
/// over the network the token would travel in clear.
fn check_webhook(url: &str) -> Result<(), &'static str> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| "is not a URL such as \"https://hooks.slack.com/services/…\"")?;
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        return Err("has no host name");
    }
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        _ => Err(
            "must start with https:// (http:// only to this machine, such as 127.0.0.1: \
                  elsewhere the token would travel in clear)",
        ),
    }
}

/// Where the webhook goes, `https://hooks.slack.com/…`: enough to recognise it in a listing,
/// without the path that holds the token.
pub fn webhook_shown(url: &str) -> String {
    match url.parse::<hyper::Uri>() {
        Ok(u) => format!(
            "{}://{}/…",
            u.scheme_str().unwrap_or("?"),
            u.authority().map_or("?", |a| a.host())
        ),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// An AWS region name such as "ap-northeast-1": lower-case letters, digits and '-'.
fn check_region(r: &str) -> Result<(), String> {
    let ok = !r.is_empty()
        && r.len() <= 32
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && r.contains('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{r:?} is not an AWS region name (such as \"ap-northeast-1\")"
        ))
    }
}

/// S3's naming rules, the ones a typo breaks: 3–63 characters of a–z, 0–9, '.', '-'.
fn check_bucket(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty: set the bucket's name".into());
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !(3..=63).contains(&name.len()) || !ok_chars {
        return Err(format!(
            "{name:?} is not a valid S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/pw.toml"), text)
    }

    const GOOD: &str = r#"
[watch]
root = "/tmp"
[origin]
bucket = "my-origin"
[quota]
max = 10
[cloudfront]
distribution_id = "E2EXAMPLE"
"#;

    #[test]
    fn defaults_match_the_seed() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.watch.marker, ".purge");
        assert_eq!(c.watch.settle, Duration::from_secs(2));
        assert_eq!(c.origin.wait_timeout, Duration::from_secs(900));
        assert_eq!(c.quota.period, Period::Day);
        assert_eq!(c.quota.timezone, chrono_tz::UTC);
        assert_eq!(c.quota.when_exhausted, WhenExhausted::Skip);
        assert_eq!(c.cloudfront.paths, Paths::Fixed(vec!["/*".to_string()]));
        assert_eq!(c.origin.wait_for, WaitFor::Marker);
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        let e = parse(&GOOD.replace("max = 10", "max = 10\nmaxx = 3")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("/etc/pw.toml") && s.contains("quota.maxx"),
            "{s}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let s = parse(&GOOD.replace("max = 10", "max = \"ten\""))
            .unwrap_err()
            .to_string();
        assert!(s.contains("key `quota.max`"), "{s}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let s = parse(&GOOD.replace("bucket = \"my-origin\"", ""))
            .unwrap_err()
            .to_string();
        assert!(
            s.contains("key `origin.bucket`") && s.contains("missing"),
            "{s}"
        );
    }

    #[test]
    fn the_packaged_config_fails_until_filled_in() {
        let text = include_str!("../../packaging/purgewatch.toml").replace("/var/www/html", "/tmp");
        let s = parse(&text).unwrap_err().to_string();
        assert!(
            s.contains("key `origin.bucket`") && s.contains("is empty"),
            "{s}"
        );
        let filled = text.replace("bucket = \"\"", "bucket = \"my-origin\"");
        let s = parse(&filled).unwrap_err().to_string();
        assert!(s.contains("key `cloudfront.distribution_id`"), "{s}");
        let done = filled.replace("distribution_id = \"\"", "distribution_id = \"E2EXAMPLE\"");
        assert!(parse(&done).is_ok());
    }

    #[test]
    fn keep_is_a_duration_of_a_second_or_more() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.state.keep, Duration::from_secs(400 * 86_400));
        assert_eq!(c.state.keep_changes, Duration::from_secs(7 * 86_400));
        let s = parse(&format!("{GOOD}[state]\nkeep = \"500ms\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            s.contains("key `state.keep`") && s.contains("at least 1s"),
            "{s}"
        );
        let c = parse(&format!(
            "{GOOD}[state]\nkeep = \"2s\"\nkeep_changes = \"1s\"\n"
        ))
        .expect("ok");
        assert_eq!(c.state.keep, Duration::from_secs(2));
    }

    #[test]
    fn bad_duration_is_named() {
        let s = parse(&GOOD.replace("[origin]", "[origin]\nwait_timeout = \"soon\""))
            .unwrap_err()
            .to_string();
        assert!(s.contains("origin.wait_timeout"), "{s}");
    }

    #[test]
    fn a_metrics_listen_that_is_not_an_address_is_named() {
        let e = parse(&format!("{GOOD}[metrics]\nlisten = \"nonsense\"\n")).unwrap_err();
        let s = e.to_string();
        assert!(
            matches!(e, ConfigError::Invalid { .. }) && s.contains("key `metrics.listen`"),
            "{s}"
        );
        let c = parse(&format!("{GOOD}[metrics]\nlisten = \"127.0.0.1:9465\"\n")).expect("valid");
        assert_eq!(c.metrics.listen, Some(([127, 0, 0, 1], 9465).into()));
    }
}

#[cfg(test)]
mod webhook_tests {
    use super::*;

    const BASE: &str = "[watch]\nroot = \"/tmp\"\n[origin]\nbucket = \"abc\"\n[quota]\nmax = 1\n[cloudfront]\ndistribution_id = \"E\"\n[notify]\n";

    // A webhook without https:// was echoed whole, token and all, into the journal.
    #[test]
    fn a_bad_webhook_is_named_never_shown() {
        for url in [
            "http://hooks.slack.com/services/T0/B0/SECRETTOKEN",
            "hooks.slack.com/services/T0/B0/SECRETTOKEN",
            "https://hooks slack.com/SECRETTOKEN",
            "https:///SECRETTOKEN",
            "ftp://h/SECRETTOKEN",
            "http://10.0.0.1/SECRETTOKEN",
        ] {
            let text = format!("{BASE}webhook = \"{url}\"\n");
            let e = Config::parse(Path::new("/etc/pw.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains("key `notify.webhook`"), "{url}: {e}");
            assert!(!e.contains("SECRETTOKEN"), "{url}: {e}");
        }
        for url in [
            "https://hooks.slack.com/services/T0/B0/X",
            "http://127.0.0.1:8080/hook",
            "http://[::1]:8080/hook",
            "http://localhost/hook",
        ] {
            let text = format!("{BASE}webhook = \"{url}\"\n");
            assert!(Config::parse(Path::new("f"), &text).is_ok(), "{url}");
        }
    }

    #[test]
    fn debug_shows_where_the_webhook_goes_not_its_token() {
        let text = format!("{BASE}webhook = \"https://hooks.slack.com/services/T0/B0/SECRET\"\n");
        let c = Config::parse(Path::new("f"), &text).expect("valid");
        let d = format!("{c:?}");
        assert!(
            d.contains("https://hooks.slack.com/…") && !d.contains("SECRET"),
            "{d}"
        );
    }
}

#[cfg(test)]
mod paths_tests {
    use super::*;

    #[test]
    fn paths_is_a_list_or_the_word_changed() {
        let base = "[watch]\nroot = \"/tmp\"\n[origin]\nbucket = \"abc\"\nwait_for = \"changes\"\n[quota]\nmax = 1\n[cloudfront]\ndistribution_id = \"E\"\n";
        let c = Config::parse(Path::new("f"), &format!("{base}paths = \"changed\"\n")).expect("ok");
        assert_eq!(c.cloudfront.paths, Paths::Changed);
        assert_eq!(c.origin.wait_for, WaitFor::Changes);
        let e = Config::parse(Path::new("f"), &format!("{base}paths = \"all\"\n")).unwrap_err();
        assert!(e.to_string().contains("cloudfront.paths"), "{e}");
        let e = Config::parse(Path::new("f"), &format!("{base}max_paths = 0\n")).unwrap_err();
        assert!(e.to_string().contains("cloudfront.max_paths"), "{e}");
    }

    // Paths CloudFront refuses spent a quota slot on every purge: now the config says so.
    #[test]
    fn paths_cloudfront_would_refuse_are_a_config_error() {
        let base = "[watch]\nroot = \"/tmp\"\n[origin]\nbucket = \"abc\"\n[quota]\nmax = 1\n[cloudfront]\ndistribution_id = \"E\"\n";
        let sixteen: Vec<String> = (0..16).map(|i| format!("\"/d{i}/*\"")).collect();
        for bad in [
            "[\"/a*b\"]",
            "[\"img\"]",
            "[\"/a b\"]".to_owned().as_str(),
            &format!("[{}]", sixteen.join(",")),
        ] {
            let e = Config::parse(Path::new("f"), &format!("{base}paths = {bad}\n")).unwrap_err();
            assert!(
                e.to_string().contains("key `cloudfront.paths`"),
                "{bad}: {e}"
            );
        }
        // What can be encoded is encoded, once.
        let c = Config::parse(
            Path::new("f"),
            &format!("{base}paths = [\"/img/[1].png\", \"/a%20b\"]\n"),
        )
        .expect("encodable");
        assert_eq!(
            c.cloudfront.paths,
            Paths::Fixed(vec!["/img/%5B1%5D.png".into(), "/a%20b".into()])
        );
    }
}
