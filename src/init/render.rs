//! `init`'s output: the config, every value with a comment saying where it came from, and the
//! instance role's IAM policy with every resource filled in.

use std::fmt::Write;

use serde_json::json;

use super::{Plan, SitePlan, Sourced};
use crate::quota::Period;

/// A TOML string, quoted and escaped.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A comment's text: one line, nothing that acts on a terminal (names come from outside).
fn c(s: &str) -> String {
    crate::text::printable(s).into_owned()
}

fn period(p: Period) -> &'static str {
    match p {
        Period::Day => "day",
        Period::Month => "month",
    }
}

/// One `key = value  # from` line.
fn line(out: &mut String, key: &str, value: String, from: &str) {
    let _ = writeln!(out, "{key} = {value}  # {}", c(from));
}

fn s(out: &mut String, key: &str, v: &Sourced<String>) {
    line(out, key, q(&v.value), &v.from);
}

/// The config file `init` writes.
pub fn config(plan: &Plan, today: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# purgewatch config written by `purgewatch init` on {today}, from {}.\n\
         # Each value says where it came from. Check it with `purgewatch check`.",
        c(&plan.lsyncd.display().to_string())
    );
    let live = plan.trigger_live();
    if live {
        out.push_str(
            "#\n# Shadow week: the old Lambda's S3 trigger is still live, so purgewatch only records what\n\
             # it would do (`purgewatch history`). When it agrees with the Lambda, `purgewatch takeover`\n\
             # removes the trigger and turns dry_run off.\n",
        );
    }
    for site in &plan.sites {
        if let Some(l) = &site.lambda {
            if let Some(f) = &l.function {
                let _ = writeln!(
                    out,
                    "# Old Lambda of s3://{}: {} (code from {}).",
                    c(&site.bucket.value),
                    c(f),
                    c(&l.code_from)
                );
            }
        }
    }
    if let [site] = plan.sites.as_slice() {
        single(&mut out, site, live);
    } else {
        several(&mut out, plan, live);
    }
    if let Some(url) = &plan.endpoint_url {
        out.push_str("\n[aws]\n");
        line(
            &mut out,
            "endpoint_url",
            q(url),
            "--endpoint-url (an emulator)",
        );
    }
    out
}

fn single(out: &mut String, site: &SitePlan, live: bool) {
    out.push_str("\n[watch]\n");
    s(out, "root", &site.root);
    s(out, "marker", &site.marker);
    out.push_str("\n[origin]\n");
    s(out, "bucket", &site.bucket);
    s(out, "prefix", &site.prefix);
    out.push_str("\n[quota]\n");
    quota(out, site);
    out.push_str("\n[cloudfront]\n");
    cloudfront(out, site, live);
}

fn quota(out: &mut String, site: &SitePlan) {
    line(out, "max", site.max.value.to_string(), &site.max.from);
    line(
        out,
        "period",
        q(period(site.period.value)),
        &site.period.from,
    );
    s(out, "timezone", &site.timezone);
    match &site.count_bucket {
        Some(b) => s(out, "count_bucket", b),
        None => out.push_str(
            "# count_bucket = \"...\"  # no old Lambda's count bucket found: the count is kept here only\n",
        ),
    }
}

fn cloudfront(out: &mut String, site: &SitePlan, live: bool) {
    let d = &site.distribution;
    line(out, "distribution_id", q(&d.value.id), &d.from);
    s(out, "path_prefix", &site.path_prefix);
    if live {
        line(
            out,
            "dry_run",
            "true".into(),
            "the old Lambda's trigger is live: shadow week until `purgewatch takeover`",
        );
    }
}

/// `[[site]]` tables; sites counting in one count bucket share one quota, as they did.
fn several(out: &mut String, plan: &Plan, live: bool) {
    let mut quotas: Vec<(String, &SitePlan)> = Vec::new();
    for site in &plan.sites {
        let key = site.count_bucket.as_ref().map(|b| b.value.clone());
        let shared = key.is_some()
            && quotas
                .iter()
                .any(|(_, s)| s.count_bucket.as_ref().map(|b| &b.value) == key.as_ref());
        if !shared {
            quotas.push((site.name.clone(), site));
        }
    }
    for site in &plan.sites {
        let quota = quotas
            .iter()
            .find(|(_, s)| {
                std::ptr::eq(*s, site)
                    || (site.count_bucket.is_some()
                        && s.count_bucket.as_ref().map(|b| &b.value)
                            == site.count_bucket.as_ref().map(|b| &b.value))
            })
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| site.name.clone());
        out.push_str("\n[[site]]\n");
        line(out, "name", q(&site.name), "from the bucket and prefix");
        s(out, "root", &site.root);
        line(out, "quota", q(&quota), "[quotas.NAME] below");
        out.push_str("\n[site.watch]\n");
        s(out, "marker", &site.marker);
        out.push_str("\n[site.origin]\n");
        s(out, "bucket", &site.bucket);
        s(out, "prefix", &site.prefix);
        out.push_str("\n[site.cloudfront]\n");
        cloudfront(out, site, live);
    }
    for (name, site) in &quotas {
        let _ = writeln!(out, "\n[quotas.{name}]");
        quota(out, site);
    }
}

/// The instance role's policy: what the daemon calls, on these buckets and distributions only.
pub fn iam_policy(plan: &Plan) -> String {
    let mut origins = Vec::new();
    let mut origin_buckets = Vec::new();
    let mut counts = Vec::new();
    let mut count_buckets = Vec::new();
    let mut dists = Vec::new();
    for s in &plan.sites {
        let b = &s.bucket.value;
        origins.push(format!("arn:aws:s3:::{b}/{}*", s.prefix.value));
        origin_buckets.push(format!("arn:aws:s3:::{b}"));
        if let Some(cb) = &s.count_bucket {
            counts.push(format!("arn:aws:s3:::{}/*.txt", cb.value));
            count_buckets.push(format!("arn:aws:s3:::{}", cb.value));
        }
        dists.push(s.distribution.value.arn.clone());
    }
    for v in [
        &mut origins,
        &mut origin_buckets,
        &mut counts,
        &mut count_buckets,
        &mut dists,
    ] {
        v.sort();
        v.dedup();
    }
    let mut statements = vec![
        json!({"Sid": "ReadMarkersInTheOrigin", "Effect": "Allow", "Action": "s3:GetObject", "Resource": origins}),
        json!({"Sid": "ListTheOriginSoMissingKeysRead404", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": origin_buckets}),
    ];
    if !counts.is_empty() {
        statements.push(json!({"Sid": "ReadAndWriteTheCountObjects", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": counts}));
        statements.push(json!({"Sid": "ListTheCountBucketSoANewPeriodReads404", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": count_buckets}));
    }
    statements.push(json!({
        "Sid": "InvalidateTheDistribution",
        "Effect": "Allow",
        "Action": ["cloudfront:CreateInvalidation", "cloudfront:GetInvalidation", "cloudfront:ListInvalidations", "cloudfront:GetDistribution"],
        "Resource": dists,
    }));
    let policy = json!({"Version": "2012-10-17", "Statement": statements});
    serde_json::to_string_pretty(&policy).unwrap_or_default() + "\n"
}
