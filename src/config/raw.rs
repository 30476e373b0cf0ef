//! The file as serde reads it: one struct a table, every key named, defaults as the seed's.
//! [`super::tables`] turns each into the typed table, checked.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ChangesCheck, WaitFor};
use crate::quota::{Period, WhenExhausted};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) watch: RawWatch,
    pub(super) origin: RawOrigin,
    pub(super) quota: RawQuota,
    pub(super) cloudfront: RawCloudFront,
    #[serde(default)]
    pub(super) state: RawState,
    #[serde(default)]
    pub(super) aws: RawAws,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) notify: RawNotify,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) webhook: Option<String>,
    pub(super) sns_topic_arn: Option<String>,
    pub(super) on: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    pub(super) root: PathBuf,
    #[serde(default = "default_marker")]
    pub(super) marker: String,
    #[serde(default = "default_settle")]
    pub(super) settle: HumanDuration,
    #[serde(default = "default_fallback_scan")]
    pub(super) fallback_scan: HumanDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrigin {
    pub(super) bucket: String,
    pub(super) region: Option<String>,
    #[serde(default)]
    pub(super) prefix: String,
    #[serde(default = "default_wait_timeout")]
    pub(super) wait_timeout: HumanDuration,
    #[serde(default = "default_wait_for")]
    pub(super) wait_for: WaitFor,
    #[serde(default = "default_changes_check")]
    pub(super) changes_check: ChangesCheck,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuota {
    pub(super) max: u32,
    #[serde(default = "default_period")]
    pub(super) period: Period,
    #[serde(default = "default_timezone")]
    pub(super) timezone: String,
    pub(super) count_bucket: Option<String>,
    pub(super) count_bucket_region: Option<String>,
    #[serde(default)]
    pub(super) key_prefix: String,
    #[serde(default = "default_when_exhausted")]
    pub(super) when_exhausted: WhenExhausted,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCloudFront {
    pub(super) distribution_id: RawDistributions,
    #[serde(default = "default_paths")]
    pub(super) paths: RawPaths,
    #[serde(default = "default_max_paths")]
    pub(super) max_paths: usize,
    #[serde(default)]
    pub(super) dry_run: bool,
    #[serde(default = "default_path_prefix")]
    pub(super) path_prefix: String,
    #[serde(default)]
    pub(super) edge_check: bool,
    pub(super) edge_url: Option<RawUrls>,
    #[serde(default = "default_edge_retry_for")]
    pub(super) edge_retry_for: HumanDuration,
}

/// `edge_url = "https://…"`, or one per distribution.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a URL like \"https://www.example.com\" or a list of them, one per distribution"
)]
pub(super) enum RawUrls {
    One(String),
    Many(Vec<String>),
}

/// `distribution_id = "E2…"` or, for several distributions in front of one site, a list.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a distribution ID like \"E2EXAMPLE\" or a list of them"
)]
pub(super) enum RawDistributions {
    One(String),
    Many(Vec<String>),
}

/// `paths = ["/*"]` or `paths = "changed"`.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a list of paths like [\"/*\"] or the word \"changed\""
)]
pub(super) enum RawPaths {
    List(Vec<String>),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    #[serde(default = "default_database")]
    pub(super) database: PathBuf,
    #[serde(default = "default_keep")]
    pub(super) keep: HumanDuration,
    #[serde(default = "default_keep_changes")]
    pub(super) keep_changes: HumanDuration,
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
pub(super) struct RawAws {
    pub(super) region: Option<String>,
    pub(super) endpoint_url: Option<String>,
}

/// A humantime string (`"2s"`, `"15m"`) as a [`Duration`].
pub(super) struct HumanDuration(pub(super) Duration);

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
fn default_edge_retry_for() -> HumanDuration {
    HumanDuration(Duration::from_secs(180))
}

fn default_path_prefix() -> String {
    "/".into()
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
