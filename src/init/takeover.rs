//! `purgewatch takeover [--site NAME] [--undo]`: after the shadow week, the old Lambda's S3
//! trigger is removed and purgewatch purges for real; `--undo` puts the trigger back.
//!
//! S3 has no conditional write of a bucket's notification configuration and a put replaces
//! all of it: the configuration is read, only the old Lambda's entries are left out, everything
//! else (queues, topics, other functions, EventBridge) is sent back as read, and the result is
//! read again to prove it. What was removed is stored first (`store::takeovers`), so `--undo`
//! restores exactly that. Running either twice finds nothing left to do.

use std::path::Path;

use anyhow::Context;
use aws_sdk_s3::types::NotificationConfiguration;
use chrono::{DateTime, Utc};

use super::discover::{self, Trigger};
use super::lambda;
use crate::aws::{Bucket, Clients};
use crate::config::Config;
use crate::quota::{self, mirror::Mirror};
use crate::store::{takeovers, Store};
use crate::text::printable;

/// What one site's takeover (or undo) did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Lines for the operator.
    pub lines: Vec<String>,
    /// The trigger is gone (takeover) or back (undo), or already was: the config's `dry_run`
    /// may follow.
    pub done: bool,
}

/// The bucket's notification configuration with `keep` as its Lambda entries and everything
/// else as read.
fn with_lambdas(
    read: &aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput,
    keep: Vec<aws_sdk_s3::types::LambdaFunctionConfiguration>,
) -> NotificationConfiguration {
    NotificationConfiguration::builder()
        .set_lambda_function_configurations(Some(keep))
        .set_queue_configurations(Some(read.queue_configurations().to_vec()))
        .set_topic_configurations(Some(read.topic_configurations().to_vec()))
        .set_event_bridge_configuration(read.event_bridge_configuration().cloned())
        .build()
}

async fn put(bucket: &Bucket, conf: NotificationConfiguration) -> anyhow::Result<()> {
    let name = bucket.name().to_owned();
    bucket
        .send(|c| {
            c.put_bucket_notification_configuration()
                .bucket(&name)
                .notification_configuration(conf.clone())
                .send()
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{}",
                crate::aws::classify(
                    &format!("PutBucketNotificationConfiguration s3://{name}"),
                    &e
                )
            )
        })?;
    Ok(())
}

/// Is this entry the old Lambda's? Its code names this site's marker, distribution or count
/// bucket; without the code (no lambda:GetFunction), an entry filtered to the marker's name.
async fn is_old_lambda(clients: &Clients, cfg: &Config, t: &Trigger) -> Result<bool, String> {
    let marker_filter = t
        .filter
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("suffix") && v.ends_with(&cfg.watch.marker));
    let f = match discover::function(&clients.shared, t).await {
        Ok(f) => f,
        Err(_) if marker_filter => return Ok(true),
        Err(e) => return Err(e),
    };
    let Some(url) = &f.location else {
        return Ok(marker_filter);
    };
    let bytes = match discover::download(url).await {
        Ok(b) => b,
        Err(_) if marker_filter => return Ok(true),
        Err(e) => return Err(e),
    };
    let code = lambda::code_from_bytes(&bytes, "Code.Location", f.handler.as_deref())
        .map_err(|e| e.to_string())?;
    let facts = lambda::facts(&code, &f.env);
    let is = |x: &Option<lambda::Fact<String>>, v: Option<&str>| {
        x.as_ref().zip(v).is_some_and(|(a, b)| a.value == b)
    };
    Ok(marker_filter
        || is(&facts.target_file, Some(&cfg.watch.marker))
        || cfg
            .cloudfront
            .distribution_ids
            .iter()
            .any(|d| is(&facts.distribution_id, Some(d)))
        || is(&facts.count_bucket, cfg.quota.count_bucket.as_deref()))
}

/// Removes the old Lambda's entries from the site's origin bucket.
pub async fn take(clients: &Clients, store: &Store, cfg: &Config) -> anyhow::Result<Outcome> {
    let o = &cfg.origin;
    let bucket = clients.bucket(&o.bucket, o.region.as_deref());
    let read = discover::notifications(&bucket)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut old = Vec::new();
    let mut kept = Vec::new();
    let mut unknown = Vec::new();
    for c in read.lambda_function_configurations() {
        let t = Trigger::of(c);
        match is_old_lambda(clients, cfg, &t).await {
            Ok(true) => old.push(t),
            Ok(false) => kept.push(c.clone()),
            Err(e) => {
                unknown.push(format!("{}: {e}", t.function_name()));
                kept.push(c.clone());
            }
        }
    }
    let mut out = Outcome::default();
    let at = format!("s3://{}", o.bucket);
    if old.is_empty() {
        if !unknown.is_empty() {
            anyhow::bail!(
                "{at}: cannot tell which function is the old Lambda ({}); nothing removed",
                unknown.join("; ")
            );
        }
        out.lines.push(format!(
            "{at}: no notification entry invokes the old Lambda (taken over already?): nothing to remove"
        ));
        out.done = true;
        return Ok(out);
    }
    let json = serde_json::to_string(&old)?;
    let (site, name) = (cfg.site.clone(), o.bucket.clone());
    let id = store
        .call(move |c| takeovers::record(c, &site, &name, &json))
        .await?;
    let removed_left = |n: &aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput| {
        n.lambda_function_configurations()
            .iter()
            .any(|c| old.contains(&Trigger::of(c)))
    };
    let sent = put(&bucket, with_lambdas(&read, kept)).await;
    let after = match sent {
        Ok(()) => discover::notifications(&bucket)
            .await
            .map_err(anyhow::Error::msg),
        Err(e) => Err(e),
    };
    match after {
        Ok(n) if !removed_left(&n) => {}
        other => {
            store.call(move |c| takeovers::forget(c, id)).await?;
            let why = match other {
                Err(e) => e.to_string(),
                Ok(_) => "the entries are still there after the write".into(),
            };
            anyhow::bail!("{at}: the trigger was not removed: {why}");
        }
    }
    for t in &old {
        out.lines.push(format!(
            "{at}: removed the trigger of {} ({}{}); `purgewatch takeover --undo` puts it back",
            printable(t.function_name()),
            t.events.join(", "),
            filter_text(t)
        ));
    }
    out.done = true;
    Ok(out)
}

fn filter_text(t: &Trigger) -> String {
    if t.filter.is_empty() {
        return String::new();
    }
    let rules: Vec<String> = t.filter.iter().map(|(n, v)| format!("{n} {v:?}")).collect();
    format!(", {}", rules.join(", "))
}

/// Puts back what the site's takeovers removed, unless an equal entry is there already.
pub async fn undo(clients: &Clients, store: &Store, cfg: &Config) -> anyhow::Result<Outcome> {
    let site = cfg.site.clone();
    let open = store.call(move |c| takeovers::open_of(c, &site)).await?;
    let mut out = Outcome::default();
    if open.is_empty() {
        out.lines.push(format!(
            "site {}: no takeover to undo",
            printable(&cfg.site)
        ));
        out.done = true;
        return Ok(out);
    }
    for t in open {
        let removed: Vec<Trigger> =
            serde_json::from_str(&t.removed).context("reading a stored takeover")?;
        let bucket = clients.bucket(&t.bucket, cfg.origin.region.as_deref());
        let read = discover::notifications(&bucket)
            .await
            .map_err(anyhow::Error::msg)?;
        let mut lambdas = read.lambda_function_configurations().to_vec();
        let there: Vec<Trigger> = lambdas.iter().map(Trigger::of).collect();
        let missing: Vec<&Trigger> = removed.iter().filter(|r| !there.contains(r)).collect();
        if !missing.is_empty() {
            for r in &missing {
                lambdas.push(r.to_sdk().map_err(anyhow::Error::msg)?);
            }
            put(&bucket, with_lambdas(&read, lambdas)).await?;
            let back = discover::notifications(&bucket)
                .await
                .map_err(anyhow::Error::msg)?;
            let now: Vec<Trigger> = back
                .lambda_function_configurations()
                .iter()
                .map(Trigger::of)
                .collect();
            if let Some(r) = missing.iter().find(|r| !now.contains(r)) {
                anyhow::bail!(
                    "s3://{}: the trigger of {} is not there after the write",
                    t.bucket,
                    printable(r.function_name())
                );
            }
        }
        let id = t.id;
        store.call(move |c| takeovers::mark_undone(c, id)).await?;
        for r in &removed {
            out.lines.push(format!(
                "s3://{}: the trigger of {} is back ({})",
                t.bucket,
                printable(r.function_name()),
                r.events.join(", ")
            ));
        }
    }
    out.done = true;
    Ok(out)
}

/// What the shadow run would have done, period by period, beside the count objects the Lambda
/// wrote for the same periods.
pub async fn shadow_report(
    clients: &Clients,
    store: &Store,
    cfg: &Config,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<String>> {
    let site = cfg.site.clone();
    let rows = store
        .call(move |c| takeovers::shadow_rows(c, &site))
        .await?;
    let mut lines = Vec::new();
    let q = &cfg.quota;
    let Some(first) = rows.first() else {
        lines.push(format!(
            "site {}: no dry-run request recorded: the shadow week has shown nothing yet",
            printable(&cfg.site)
        ));
        return Ok(lines);
    };
    let start = DateTime::parse_from_rfc3339(&first.at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now);
    // Every period from the first dry run to now, at most the last 62.
    let mut periods: Vec<String> = Vec::new();
    let mut t = start;
    while t <= now && periods.len() < 400 {
        let p = quota::period_key(t, q.timezone, q.period);
        if periods.last() != Some(&p) {
            periods.push(p);
        }
        t = quota::next_period_start(t, q.timezone, q.period);
    }
    let now_key = quota::period_key(now, q.timezone, q.period);
    if periods.last() != Some(&now_key) {
        periods.push(now_key);
    }
    let skip = periods.len().saturating_sub(62);
    let mirror = q.count_bucket.as_ref().map(|b| {
        Mirror::new(
            clients.bucket(b, q.count_bucket_region.as_deref()),
            &q.key_prefix,
        )
    });
    lines.push(format!(
        "site {}: the shadow run since {} beside the old Lambda's count objects{}",
        printable(&cfg.site),
        first.at,
        match &q.count_bucket {
            Some(b) => format!(" (s3://{b}/{}<period>.txt)", q.key_prefix),
            None => " (no count bucket configured)".into(),
        }
    ));
    lines.push(format!(
        "  {:<10}  {:>8}  {:>11}  {:>14}  paths",
        "period", "requests", "would purge", "Lambda's count"
    ));
    for p in periods.iter().skip(skip) {
        let mine: Vec<_> = rows
            .iter()
            .filter(|r| {
                DateTime::parse_from_rfc3339(&r.at)
                    .map(|t| quota::period_key(t.with_timezone(&Utc), q.timezone, q.period) == *p)
                    .unwrap_or(false)
            })
            .collect();
        let purges = mine.iter().filter(|r| r.would_purge).count();
        let mut paths: Vec<String> = mine
            .iter()
            .filter(|r| r.would_purge)
            .flat_map(|r| serde_json::from_str::<Vec<String>>(&r.paths).unwrap_or_default())
            .collect();
        paths.sort_unstable();
        paths.dedup();
        let count = match &mirror {
            Some(m) => match m.read(p).await {
                Ok(r) => r.count.to_string(),
                Err(e) => format!("? ({e})"),
            },
            None => "-".into(),
        };
        lines.push(format!(
            "  {p:<10}  {:>8}  {:>11}  {:>14}  {}",
            mine.len(),
            purges,
            count,
            if paths.is_empty() {
                "-".into()
            } else {
                printable(&paths.join(" ")).into_owned()
            }
        ));
    }
    Ok(lines)
}

/// Sets `dry_run` in the config file, keeping its comments and layout: the site's
/// `[cloudfront]` (its `[site.cloudfront]` in a file of sites). Ok(true) when the file changed.
pub fn set_dry_run(file: &Path, site: Option<&str>, on: bool) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", file.display()))?;
    let changed = edit_dry_run(&mut doc, site, on);
    if changed {
        // Written beside and renamed over: a reader never sees half a file.
        let tmp = file.with_extension("toml.purgewatch-new");
        std::fs::write(&tmp, doc.to_string())
            .with_context(|| format!("writing {}", tmp.display()))?;
        if let Ok(meta) = std::fs::metadata(file) {
            let _ = std::fs::set_permissions(&tmp, meta.permissions());
            use std::os::unix::fs::MetadataExt;
            let path = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes().to_vec())?;
            // SAFETY: a valid C string; keeping the owner is best effort (root may, others need not).
            unsafe { libc::chown(path.as_ptr(), meta.uid(), meta.gid()) };
        }
        std::fs::rename(&tmp, file).with_context(|| format!("replacing {}", file.display()))?;
    }
    Ok(changed)
}

/// The edit itself: true when a value changed.
pub fn edit_dry_run(doc: &mut toml_edit::DocumentMut, site: Option<&str>, on: bool) -> bool {
    use toml_edit::{value, Item};
    fn set(item: &mut Item, on: bool) -> bool {
        if item.as_bool() == Some(on) {
            return false;
        }
        let decor = item.as_value().map(|v| v.decor().clone());
        *item = value(on);
        if let (Some(d), Some(v)) = (decor, item.as_value_mut()) {
            *v.decor_mut() = d;
        }
        true
    }
    let top_on = doc
        .get("cloudfront")
        .and_then(|c| c.get("dry_run"))
        .and_then(Item::as_bool)
        .unwrap_or(false);
    let sites = doc.get_mut("site").and_then(Item::as_array_of_tables_mut);
    match (sites, site) {
        (Some(sites), name) => {
            let mut changed = false;
            for t in sites.iter_mut() {
                let this = t.get("name").and_then(Item::as_str);
                if name.is_some() && this != name {
                    continue;
                }
                let cf = t.entry("cloudfront").or_insert(toml_edit::table());
                match cf.get_mut("dry_run") {
                    Some(item) => changed |= set(item, on),
                    // Inherited from the file's [cloudfront]: the site says its own.
                    None if top_on != on => {
                        if let Some(t) = cf.as_table_like_mut() {
                            t.insert("dry_run", value(on));
                            changed = true;
                        }
                    }
                    None => {}
                }
            }
            changed
        }
        (None, _) => match doc.get_mut("cloudfront").and_then(|c| c.get_mut("dry_run")) {
            Some(item) => set(item, on),
            None if on => {
                if let Some(cf) = doc.get_mut("cloudfront").and_then(Item::as_table_like_mut) {
                    cf.insert("dry_run", value(true));
                    return true;
                }
                false
            }
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::edit_dry_run;

    #[test]
    fn dry_run_is_turned_off_keeping_comments_and_layout() {
        let text = "# mine\n[cloudfront]\ndistribution_id = \"E1\"  # from init\ndry_run = true  # shadow week\n\n[quota]\nmax = 10\n";
        let mut doc: toml_edit::DocumentMut = text.parse().expect("toml");
        assert!(edit_dry_run(&mut doc, None, false));
        assert_eq!(
            doc.to_string(),
            text.replace("dry_run = true", "dry_run = false")
        );
        assert!(
            !edit_dry_run(&mut doc, None, false),
            "twice: nothing to change"
        );
    }

    #[test]
    fn one_site_of_several_is_taken_over_alone() {
        let text = "[cloudfront]\ndry_run = true\n\n[[site]]\nname = \"a\"\nroot = \"/a\"\n\n[site.cloudfront]\ndistribution_id = \"EA\"\n\n[[site]]\nname = \"b\"\nroot = \"/b\"\ncloudfront = { distribution_id = \"EB\", dry_run = true }\n";
        let mut doc: toml_edit::DocumentMut = text.parse().expect("toml");
        assert!(edit_dry_run(&mut doc, Some("a"), false));
        let out = doc.to_string();
        assert!(
            out.contains("[site.cloudfront]\ndistribution_id = \"EA\"\ndry_run = false\n"),
            "{out}"
        );
        assert!(out.contains("dry_run = true }"), "b untouched: {out}");
        assert!(edit_dry_run(&mut doc, Some("b"), false));
        assert!(doc.to_string().contains("dry_run = false }"));
    }
}
