//! Each table of a site, checked and typed: one function a table, each error naming the file
//! and the key as the operator wrote it ([`Keys`]).

use std::path::Path;
use std::time::Duration;

use super::raw::{RawAws, RawCloudFront, RawDistributions, RawMetrics, RawNotify, RawOrigin};
use super::raw::{RawPaths, RawQuota, RawUrls};
use super::raw::{RawState, RawWatch};
use super::{Aws, CloudFront, ConfigError, Metrics, Notify, Origin, Paths, State, Watch};
use crate::quota::Quota;
use crate::store::Status;

/// Where a table's errors go: the file, and the key as written (`site[1].origin.bucket`).
pub(super) struct Keys<'a> {
    pub(super) file: &'a Path,
    pub(super) name_key: &'a dyn Fn(&str) -> String,
}

impl Keys<'_> {
    fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: (self.name_key)(key),
            message,
        }
    }

    /// An AWS region named by `key`, if set.
    fn region(&self, key: &str, region: &Option<String>) -> Result<(), ConfigError> {
        match region {
            Some(r) => check_region(r).map_err(|m| self.invalid(key, m)),
            None => Ok(()),
        }
    }
}

/// `[watch]`: the root exists (unless one site of several, which waits for it) and the marker
/// is a plain file name.
pub(super) fn watch(k: &Keys, w: RawWatch, root_must_exist: bool) -> Result<Watch, ConfigError> {
    match std::fs::metadata(&w.root) {
        Ok(m) if m.is_dir() => {}
        // One site of several: reported and tried again while the others run.
        Err(e) if !root_must_exist && e.kind() == std::io::ErrorKind::NotFound => {}
        Ok(_) => {
            return Err(k.invalid(
                "watch.root",
                format!("{} is not a directory", w.root.display()),
            ))
        }
        Err(e) => return Err(k.invalid("watch.root", format!("{}: {e}", w.root.display()))),
    }
    if w.marker.is_empty() || w.marker.contains('/') || w.marker == "." || w.marker == ".." {
        return Err(k.invalid(
            "watch.marker",
            format!("{:?} must be a plain file name without '/'", w.marker),
        ));
    }
    Ok(Watch {
        root: w.root,
        marker: w.marker,
        settle: w.settle.0,
        fallback_scan: w.fallback_scan.0.max(Duration::from_millis(100)),
    })
}

/// `[origin]`.
pub(super) fn origin(k: &Keys, o: RawOrigin) -> Result<Origin, ConfigError> {
    check_bucket(&o.bucket).map_err(|m| k.invalid("origin.bucket", m))?;
    if o.prefix.starts_with('/') {
        return Err(k.invalid(
            "origin.prefix",
            "an S3 key prefix does not start with '/'".into(),
        ));
    }
    if o.wait_timeout.0.is_zero() {
        return Err(k.invalid("origin.wait_timeout", "must be more than 0".into()));
    }
    k.region("origin.region", &o.region)?;
    Ok(Origin {
        bucket: o.bucket,
        region: o.region,
        prefix: o.prefix,
        wait_timeout: o.wait_timeout.0,
        wait_for: o.wait_for,
        changes_check: o.changes_check,
    })
}

/// `[quota]` (or `[quotas.NAME]`, named `name`).
pub(super) fn quota(k: &Keys, q: RawQuota, name: &str) -> Result<Quota, ConfigError> {
    if q.max == 0 {
        return Err(k.invalid("quota.max", "must be at least 1".into()));
    }
    let timezone: chrono_tz::Tz = q.timezone.parse().map_err(|_| {
        k.invalid(
            "quota.timezone",
            format!(
                "unknown time zone {:?} (use an IANA name such as \"Asia/Tokyo\")",
                q.timezone
            ),
        )
    })?;
    if let Some(b) = &q.count_bucket {
        check_bucket(b).map_err(|m| k.invalid("quota.count_bucket", m))?;
    }
    k.region("quota.count_bucket_region", &q.count_bucket_region)?;
    if q.key_prefix.starts_with('/') {
        return Err(k.invalid(
            "quota.key_prefix",
            "an S3 key prefix does not start with '/'".into(),
        ));
    }
    Ok(Quota {
        name: name.to_owned(),
        key_prefix: q.key_prefix,
        max: q.max,
        period: q.period,
        timezone,
        count_bucket: q.count_bucket,
        count_bucket_region: q.count_bucket_region,
        when_exhausted: q.when_exhausted,
    })
}

/// `[cloudfront]`: configured paths are held to CloudFront's rules here, or every purge would
/// spend a slot on a batch it refuses.
pub(super) fn cloudfront(k: &Keys, c: RawCloudFront) -> Result<CloudFront, ConfigError> {
    let distribution_ids = distributions(k, c.distribution_id)?;
    let paths = match c.paths {
        RawPaths::Word(w) if w == "changed" => Paths::Changed,
        RawPaths::Word(w) => {
            return Err(k.invalid(
                "cloudfront.paths",
                format!("{w:?}: expected a list like [\"/*\"] or \"changed\""),
            ))
        }
        RawPaths::List(list) => {
            if list.is_empty() {
                return Err(k.invalid("cloudfront.paths", "needs at least one path".into()));
            }
            let list = crate::paths::configured(&list).map_err(|m| {
                k.invalid(
                    "cloudfront.paths",
                    format!("CloudFront would refuse it: {m}"),
                )
            })?;
            Paths::Fixed(list)
        }
    };
    if !(1..=3000).contains(&c.max_paths) {
        return Err(k.invalid(
            "cloudfront.max_paths",
            "must be between 1 and 3000 (CloudFront's limit per invalidation)".into(),
        ));
    }
    let path_prefix = crate::paths::prefix(&c.path_prefix).map_err(|m| {
        k.invalid(
            "cloudfront.path_prefix",
            format!(
                "{:?}: {m} (the URL path the site root is served at, like \"/\" or \"/www/\")",
                c.path_prefix
            ),
        )
    })?;
    let edge_urls = edge_urls(k, c.edge_url, distribution_ids.len())?;
    Ok(CloudFront {
        edge_check: c.edge_check,
        edge_urls,
        edge_retry_for: c.edge_retry_for.0,
        distribution_ids,
        paths,
        max_paths: c.max_paths,
        dry_run: c.dry_run,
        path_prefix,
    })
}

/// `cloudfront.distribution_id`: one ID or a list, none empty, none twice.
fn distributions(k: &Keys, raw: RawDistributions) -> Result<Vec<String>, ConfigError> {
    const KEY: &str = "cloudfront.distribution_id";
    let ids = match raw {
        RawDistributions::One(id) => vec![id],
        RawDistributions::Many(ids) if ids.is_empty() => {
            return Err(k.invalid(
                KEY,
                "is an empty list: name at least one distribution".into(),
            ))
        }
        RawDistributions::Many(ids) => ids,
    };
    for (i, id) in ids.iter().enumerate() {
        if id.trim().is_empty() {
            return Err(k.invalid(
                KEY,
                "is empty: set the distribution's ID (CloudFront console, ID column)".into(),
            ));
        }
        // IDs go into API paths and CallerReferences: letters and digits, as CloudFront makes them.
        if !id.bytes().all(|b| b.is_ascii_alphanumeric()) || id.len() > 64 {
            return Err(k.invalid(
                KEY,
                format!(
                    "{:?} is not a distribution ID (letters and digits, like \"E2EXAMPLE\")",
                    crate::text::printable(id)
                ),
            ));
        }
        if ids[..i].contains(id) {
            return Err(k.invalid(KEY, format!("names {id} twice")));
        }
    }
    Ok(ids)
}

/// `cloudfront.edge_url`: none (each distribution's own domain), one URL for one distribution,
/// or a list with one per distribution. HTTPS, or HTTP to this machine (a local proxy, tests).
fn edge_urls(k: &Keys, raw: Option<RawUrls>, n: usize) -> Result<Vec<Option<String>>, ConfigError> {
    const KEY: &str = "cloudfront.edge_url";
    let urls = match raw {
        None => return Ok(vec![None; n]),
        Some(RawUrls::One(u)) => vec![u],
        Some(RawUrls::Many(us)) => us,
    };
    if urls.len() != n {
        return Err(k.invalid(
            KEY,
            format!(
                "names {} URL(s) for {n} distribution(s): one per distribution, in the order of distribution_id",
                urls.len()
            ),
        ));
    }
    urls.into_iter()
        .map(|u| {
            let bad = |why: &str| k.invalid(KEY, format!("{:?} {why}", crate::text::printable(&u)));
            check_url(&u).map_err(bad)?;
            let uri: hyper::Uri = u.parse().map_err(|_| bad("is not a URL"))?;
            if uri.query().is_some() {
                return Err(bad(
                    "has a query: give the site's base URL, like \"https://www.example.com\"",
                ));
            }
            Ok(Some(u.trim_end_matches('/').to_owned()))
        })
        .collect()
}

/// `[state]`.
pub(super) fn state(k: &Keys, s: RawState) -> Result<State, ConfigError> {
    for (key, d) in [
        ("state.keep", s.keep.0),
        ("state.keep_changes", s.keep_changes.0),
    ] {
        if d < Duration::from_secs(1) {
            return Err(k.invalid(key, "must be at least 1s".into()));
        }
    }
    Ok(State {
        database: s.database,
        keep: s.keep.0,
        keep_changes: s.keep_changes.0,
    })
}

/// `[aws]`.
pub(super) fn aws(k: &Keys, a: RawAws) -> Result<Aws, ConfigError> {
    k.region("aws.region", &a.region)?;
    if let Some(url) = &a.endpoint_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(k.invalid(
                "aws.endpoint_url",
                format!("{url:?} must start with http:// or https://"),
            ));
        }
    }
    Ok(Aws {
        region: a.region,
        endpoint_url: a.endpoint_url,
    })
}

/// `[metrics]`.
pub(super) fn metrics(k: &Keys, m: RawMetrics) -> Result<Metrics, ConfigError> {
    let listen = match &m.listen {
        None => None,
        Some(a) => Some(a.parse().map_err(|_| {
            k.invalid(
                "metrics.listen",
                format!("{a:?} is not an address and port such as \"127.0.0.1:9465\""),
            )
        })?),
    };
    Ok(Metrics { listen })
}

/// `[notify]`: the webhook is a secret, never shown in an error.
pub(super) fn notify(k: &Keys, n: RawNotify) -> Result<Notify, ConfigError> {
    if let Some(w) = &n.webhook {
        check_url(w).map_err(|m| {
            k.invalid(
                "notify.webhook",
                format!("{m} (the value is not shown: the URL carries a token)"),
            )
        })?;
    }
    if let Some(t) = &n.sns_topic_arn {
        if !t.starts_with("arn:") || t.split(':').count() != 6 {
            return Err(k.invalid(
                "notify.sns_topic_arn",
                format!("{t:?} is not a topic ARN such as \"arn:aws:sns:REGION:ACCOUNT:NAME\""),
            ));
        }
    }
    let on = match n.on {
        None => Notify::default().on,
        Some(list) => {
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
                            | Status::Stale
                    )
                });
                on.push(st.ok_or_else(|| {
                    k.invalid(
                        "notify.on",
                        format!("{w:?}: one of \"failed\", \"origin_timeout\", \"quota_exhausted\", \"completed\", \"deferred\", \"stale\""),
                    )
                })?);
            }
            on
        }
    };
    Ok(Notify {
        webhook: n.webhook,
        sns_topic_arn: n.sns_topic_arn,
        on,
    })
}

/// An `https://` URL, or plain `http://` to this machine only (a local relay, the tests): over
/// the network it would travel in clear (a webhook's URL carries its token). What is wrong is
/// said without a word of the URL: a webhook's is a secret.
pub(super) fn check_url(url: &str) -> Result<(), &'static str> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| "is not a URL such as \"https://example.com/…\"")?;
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
                  elsewhere it would travel in clear)",
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
pub(super) fn check_region(r: &str) -> Result<(), String> {
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
pub(super) fn check_bucket(name: &str) -> Result<(), String> {
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
