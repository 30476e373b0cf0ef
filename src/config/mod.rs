//! TOML → validated, typed configuration.
//!
//! Every error names the file and the dotted key (`quota.max`), so an operator can fix the config
//! from one log line; the binary maps [`ConfigError`] to exit status 78 (EX_CONFIG) and starts nothing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod raw;
mod sites;
mod tables;
#[cfg(test)]
mod tests;

use raw::RawConfig;
pub use tables::webhook_shown;

// The quota's settings and the AWS ones are their modules' own types; the config builds them.
use crate::aws::Aws;
use crate::quota::Quota;
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

/// `[metrics]`: Prometheus text format at `GET /metrics` (src/metrics/); off unless set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    pub listen: Option<std::net::SocketAddr>,
}

/// `[notify]`: alerts when a request reaches one of `on` (src/notify/). Its `Debug` shows
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
    /// The distributions in front of the site (at least one): each purge goes to every one.
    pub distribution_ids: Vec<String>,
    pub paths: Paths,
    /// Most paths one invalidation may carry when `paths = "changed"` (wildcards count as one).
    pub max_paths: usize,
    /// Shadow mode: every step runs, the quota is read but no slot taken, nothing is sent.
    pub dry_run: bool,
    /// The URL path the site root is served at, encoded, ending in '/' ("/" the distribution's
    /// root; "/www/" when the bucket's `www/` is served under `/www/`): put before every path
    /// sent, configured, changed or listed in a marker (`paths::under_prefix`).
    pub path_prefix: String,
    /// After Completed, fetch a few purged objects through each distribution and compare their
    /// ETags with S3's (`edge.rs`).
    pub edge_check: bool,
    /// The viewer URL of each distribution, in the order of `distribution_ids` (no trailing
    /// '/'); `None`: its first alias, else its `*.cloudfront.net` domain (GetDistribution).
    pub edge_urls: Vec<Option<String>>,
    /// How long a stale answer at the edge is asked again before the request is `stale`.
    pub edge_retry_for: Duration,
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

// ---- the file as written ------------------------------------------------------------------

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

    /// Validates one site's tables, one function a table ([`tables`]). `name_key` turns a key
    /// of the single-site layout (`origin.bucket`) into the one the operator wrote
    /// (`site[1].origin.bucket`).
    fn build(
        file: &Path,
        raw: RawConfig,
        site: &str,
        quota_name: &str,
        name_key: &dyn Fn(&str) -> String,
        root_must_exist: bool,
    ) -> Result<Config, ConfigError> {
        let k = tables::Keys { file, name_key };
        Ok(Config {
            file: file.to_owned(),
            site: site.to_owned(),
            watch: tables::watch(&k, raw.watch, root_must_exist)?,
            origin: tables::origin(&k, raw.origin)?,
            quota: tables::quota(&k, raw.quota, quota_name)?,
            cloudfront: tables::cloudfront(&k, raw.cloudfront)?,
            state: tables::state(&k, raw.state)?,
            aws: tables::aws(&k, raw.aws)?,
            metrics: tables::metrics(&k, raw.metrics)?,
            notify: tables::notify(&k, raw.notify)?,
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
