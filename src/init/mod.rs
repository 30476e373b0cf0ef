//! `purgewatch init` and `purgewatch takeover`: the move from the setup purgewatch replaces
//! (lsyncd into a bucket, an S3 trigger invoking the article's Lambda, its count bucket).
//!
//! `init` reads what is already there and plans one config ([`plan`]): lsyncd's config,
//! evaluated as lsyncd does ([`lsyncd`]), gives each site's tree, bucket and prefix;
//! ListDistributions the distribution in front of each bucket and where it serves the site
//! ([`discover`]); the bucket's notification entries and GetFunction the old Lambda, whose code
//! gives the quota it kept ([`lambda`]). [`render`] writes the TOML (each value with where it
//! came from) and the IAM policy. `takeover` ([`takeover`]) removes the Lambda's trigger after
//! the shadow week, and puts it back with `--undo`.

pub mod discover;
pub mod lambda;
pub mod lsyncd;
pub mod render;
pub mod takeover;

use std::path::{Path, PathBuf};

use crate::aws::{Aws, Clients};
use crate::quota::Period;
use discover::{Candidate, Trigger};

/// Where lsyncd's config is looked for: Debian's, then EPEL's.
pub const LSYNCD_PATHS: [&str; 2] = ["/etc/lsyncd/lsyncd.conf.lua", "/etc/lsyncd.conf"];

/// `purgewatch init`'s options.
#[derive(Debug, Clone, Default)]
pub struct Args {
    pub from_lsyncd: Option<PathBuf>,
    pub lambda_code: Option<PathBuf>,
    /// Chooses among several distributions in front of a bucket (may be given once a site).
    pub distribution: Vec<String>,
    pub endpoint_url: Option<String>,
}

/// Why no config was planned: the exit status says which.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Exit 1: something is missing or wrong.
    #[error("{0}")]
    Failed(String),
    /// Exit 2: more than one answer; the message lists them and how to choose.
    #[error("{0}")]
    Ambiguous(String),
}

/// A value and where it came from, for the comment beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    pub value: T,
    pub from: String,
}

fn sourced<T>(value: T, from: impl Into<String>) -> Sourced<T> {
    Sourced {
        value,
        from: from.into(),
    }
}

/// The old Lambda of one bucket, as found.
#[derive(Debug, Clone)]
pub struct OldLambda {
    /// The function's name (None: only code from `--lambda-code`, no trigger found).
    pub function: Option<String>,
    /// The bucket's notification entries invoking it: the trigger `takeover` removes.
    pub triggers: Vec<Trigger>,
    /// Where the code was read from, for the comments.
    pub code_from: String,
    pub facts: lambda::Facts,
}

/// One site of the planned config.
#[derive(Debug, Clone)]
pub struct SitePlan {
    pub name: String,
    pub root: Sourced<String>,
    pub bucket: Sourced<String>,
    pub prefix: Sourced<String>,
    pub distribution: Sourced<Candidate>,
    pub path_prefix: Sourced<String>,
    pub marker: Sourced<String>,
    pub max: Sourced<u32>,
    pub period: Sourced<Period>,
    pub timezone: Sourced<String>,
    pub count_bucket: Option<Sourced<String>>,
    pub lambda: Option<OldLambda>,
}

/// What `init` found and will write.
#[derive(Debug, Clone)]
pub struct Plan {
    pub lsyncd: PathBuf,
    pub sites: Vec<SitePlan>,
    /// Things the operator should know (a Lambda constant not understood, a mismatch).
    pub notes: Vec<String>,
    pub endpoint_url: Option<String>,
}

impl Plan {
    /// A trigger still invokes an old Lambda: the config starts in shadow mode.
    pub fn trigger_live(&self) -> bool {
        self.sites
            .iter()
            .any(|s| s.lambda.as_ref().is_some_and(|l| !l.triggers.is_empty()))
    }
}

/// lsyncd's config: the one named, else the first of [`LSYNCD_PATHS`] that exists.
pub fn lsyncd_path(given: Option<&Path>) -> Result<PathBuf, Refusal> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    LSYNCD_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            Refusal::Failed(format!(
                "no lsyncd config at {} (name one with --from-lsyncd PATH)",
                LSYNCD_PATHS.join(" or ")
            ))
        })
}

/// Reads lsyncd's config and asks AWS what stands behind each S3 target.
pub async fn plan(args: &Args) -> Result<Plan, Refusal> {
    let path = lsyncd_path(args.from_lsyncd.as_deref())?;
    let env = |k: &str| std::env::var(k).ok();
    let syncs = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || lsyncd::read(&path, &env))
            .await
            .map_err(|e| Refusal::Failed(e.to_string()))?
            // The Lua message quotes the file: shown escaped.
            .map_err(|e| Refusal::Failed(crate::text::printable(&e.to_string()).into_owned()))?
    };
    let shown = crate::text::printable(&path.display().to_string()).into_owned();
    let s3: Vec<_> = syncs.iter().filter(|s| s.s3.is_some()).collect();
    if s3.is_empty() {
        let mut msg = format!("{shown}: no sync{{}} into S3");
        if syncs.is_empty() {
            msg.push_str(" (the file declares no sync{} at all)");
        }
        for s in &syncs {
            msg.push_str(&format!(
                "\n  sync #{} source {} target {}: {}",
                s.index,
                shown_opt(&s.source),
                shown_opt(&s.target),
                crate::text::printable(s.why_not.as_deref().unwrap_or("not S3"))
            ));
        }
        return Err(Refusal::Failed(msg));
    }
    let clients = Clients::new(&Aws {
        region: None,
        endpoint_url: args.endpoint_url.clone(),
    })
    .await;
    let mut notes = Vec::new();
    let mut sites = Vec::new();
    let mut names = Vec::new();
    for s in s3 {
        let Some((url, via)) = &s.s3 else { continue };
        let Some(source) = &s.source else {
            notes.push(format!("sync #{} has no source: skipped", s.index));
            continue;
        };
        let whence = match via {
            lsyncd::Via::Target => format!("lsyncd {shown} sync #{} target", s.index),
            lsyncd::Via::Command => {
                format!("lsyncd {shown} sync #{}, the command it runs", s.index)
            }
        };
        let bucket = clients.bucket(&url.bucket, None);
        let lambda = old_lambda(&clients, &bucket, args.lambda_code.as_deref(), &mut notes).await?;
        let distribution =
            choose_distribution(&clients, &url.bucket, args, lambda.as_ref()).await?;
        let path_prefix = discover::served_at(&url.prefix, &distribution.value.origin_path)
            .map_err(|e| {
                Refusal::Failed(format!(
                    "s3://{}/{} behind {}: {e}",
                    url.bucket, url.prefix, distribution.value.id
                ))
            })?;
        let path_from = format!(
            "origin path {:?} of {} and the prefix {:?}",
            distribution.value.origin_path, distribution.value.id, url.prefix
        );
        let name = unique_name(&url.bucket, &url.prefix, &mut names);
        sites.push(site_plan(
            name,
            sourced(
                source.clone(),
                format!("lsyncd {shown} sync #{} source", s.index),
            ),
            sourced(url.bucket.clone(), whence.clone()),
            sourced(url.prefix.clone(), whence),
            distribution,
            sourced(path_prefix, path_from),
            lambda,
            &mut notes,
        ));
    }
    if sites.is_empty() {
        return Err(Refusal::Failed(format!(
            "{shown}: no sync{{}} into S3 with a source"
        )));
    }
    Ok(Plan {
        lsyncd: path,
        sites,
        notes,
        endpoint_url: args.endpoint_url.clone(),
    })
}

fn shown_opt(s: &Option<String>) -> String {
    match s {
        Some(s) => format!("{:?}", crate::text::printable(s)),
        None => "(none)".into(),
    }
}

/// The quota and marker from the Lambda's facts, else the article's defaults.
#[allow(clippy::too_many_arguments)]
fn site_plan(
    name: String,
    root: Sourced<String>,
    bucket: Sourced<String>,
    prefix: Sourced<String>,
    distribution: Sourced<Candidate>,
    path_prefix: Sourced<String>,
    lambda: Option<OldLambda>,
    notes: &mut Vec<String>,
) -> SitePlan {
    const NO_LAMBDA: &str = "the article's value (no old Lambda found)";
    let facts = lambda.as_ref().map(|l| &l.facts);
    let of = |name: &str, f: &lambda::From| format!("the Lambda's {name} ({f})");
    let marker = facts
        .and_then(|f| f.target_file.as_ref())
        .map(|f| sourced(f.value.clone(), of("TARGET_FILE", &f.from)))
        .unwrap_or_else(|| sourced(".purge".into(), NO_LAMBDA));
    let max = facts
        .and_then(|f| f.count_max.as_ref())
        .map(|f| sourced(f.value, of("COUNT_MAX", &f.from)))
        .unwrap_or_else(|| sourced(10, NO_LAMBDA));
    let period = facts
        .and_then(|f| f.period.as_ref())
        .map(|f| {
            let p = match f.value {
                lambda::CountPeriod::Day => Period::Day,
                lambda::CountPeriod::Month => Period::Month,
            };
            sourced(p, of("count key's strftime", &f.from))
        })
        .unwrap_or_else(|| sourced(Period::Day, NO_LAMBDA));
    let timezone = facts
        .map(|f| sourced(f.timezone.value.clone(), of("time zone", &f.timezone.from)))
        .unwrap_or_else(|| sourced("UTC".into(), NO_LAMBDA));
    let count_bucket = facts
        .and_then(|f| f.count_bucket.as_ref())
        .map(|f| sourced(f.value.clone(), of("COUNT_BUCKET_NAME", &f.from)));
    if let Some(f) = facts {
        if let Some(o) = &f.origin_bucket {
            if o.value != bucket.value {
                notes.push(format!(
                    "the Lambda's ORIGIN_BUCKET_NAME is {:?} ({}), lsyncd syncs into {:?}",
                    o.value, o.from, bucket.value
                ));
            }
        }
        if let Some(d) = &f.distribution_id {
            if d.value != distribution.value.id {
                notes.push(format!(
                    "the Lambda's DISTRIBUTION_ID is {:?} ({}), the distribution in front of s3://{} is {}",
                    d.value, d.from, bucket.value, distribution.value.id
                ));
            }
        }
        for p in &f.problems {
            notes.push(format!("the Lambda's code: {p}"));
        }
    }
    SitePlan {
        name,
        root,
        bucket,
        prefix,
        distribution,
        path_prefix,
        marker,
        max,
        period,
        timezone,
        count_bucket,
        lambda,
    }
}

/// A site name from the bucket (and prefix): 1-40 of a-z, 0-9, '-', unique in the file.
fn unique_name(bucket: &str, prefix: &str, taken: &mut Vec<String>) -> String {
    let raw = format!("{bucket}-{}", prefix.trim_end_matches('/'));
    let mut name: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let mut name = name.trim_matches('-').chars().take(36).collect::<String>();
    if name.is_empty() {
        name = "site".into();
    }
    let base = name.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    taken.push(name.clone());
    name
}

/// The distribution in front of `bucket`: the one named by `--distribution`, the only one, or
/// among several the one the old Lambda invalidated.
async fn choose_distribution(
    clients: &Clients,
    bucket: &str,
    args: &Args,
    lambda: Option<&OldLambda>,
) -> Result<Sourced<Candidate>, Refusal> {
    let found = discover::distributions_for(&clients.cloudfront, bucket)
        .await
        .map_err(|e| Refusal::Failed(format!("finding the distribution of s3://{bucket}: {e}")))?;
    if found.is_empty() {
        return Err(Refusal::Failed(format!(
            "no CloudFront distribution has an origin in the bucket {bucket:?} \
             (looked for {bucket}.s3.amazonaws.com, {bucket}.s3.REGION.amazonaws.com and the \
             website endpoints)"
        )));
    }
    if let Some(c) = found.iter().find(|c| args.distribution.contains(&c.id)) {
        return Ok(sourced(c.clone(), "--distribution"));
    }
    if !args.distribution.is_empty() && found.len() == 1 {
        return Err(Refusal::Failed(format!(
            "--distribution {} is not in front of s3://{bucket}: {} is",
            args.distribution.join(", "),
            found[0].describe()
        )));
    }
    if found.len() == 1 {
        let c = found[0].clone();
        let from = format!(
            "ListDistributions: the one distribution with origin {}",
            c.origin_domain
        );
        return Ok(sourced(c, from));
    }
    let by_lambda = lambda
        .and_then(|l| l.facts.distribution_id.as_ref())
        .and_then(|d| found.iter().find(|c| c.id == d.value).map(|c| (c, &d.from)));
    if let Some((c, from)) = by_lambda {
        return Ok(sourced(
            c.clone(),
            format!(
                "the Lambda's DISTRIBUTION_ID ({from}), one of {} in front of the bucket",
                found.len()
            ),
        ));
    }
    let mut msg = format!(
        "{} distributions have an origin in the bucket {bucket:?}; choose one with --distribution ID:",
        found.len()
    );
    for c in &found {
        msg.push_str(&format!("\n  {}", crate::text::printable(&c.describe())));
    }
    Err(Refusal::Ambiguous(msg))
}

/// The old Lambda of the bucket: among the functions its notification entries invoke, the one
/// whose code has the article's constants. `code` (`--lambda-code`) replaces the code fetched.
async fn old_lambda(
    clients: &Clients,
    bucket: &crate::aws::Bucket,
    code: Option<&Path>,
    notes: &mut Vec<String>,
) -> Result<Option<OldLambda>, Refusal> {
    let file = match code {
        Some(p) => Some(read_code_file(p).await?),
        None => None,
    };
    let triggers = match discover::notifications(bucket).await {
        Ok(n) => n
            .lambda_function_configurations()
            .iter()
            .map(Trigger::of)
            .collect::<Vec<_>>(),
        Err(e) => {
            notes.push(format!("the bucket's triggers could not be read: {e}"));
            Vec::new()
        }
    };
    // The functions, each once, in the order of their first entry.
    let mut arns: Vec<&str> = Vec::new();
    for t in &triggers {
        if !arns.contains(&t.function_arn.as_str()) {
            arns.push(&t.function_arn);
        }
    }
    let mut found: Vec<OldLambda> = Vec::new();
    for arn in arns {
        let mine: Vec<Trigger> = triggers
            .iter()
            .filter(|t| t.function_arn == arn)
            .cloned()
            .collect();
        let t = &mine[0];
        let f = match discover::function(&clients.shared, t).await {
            Ok(f) => Some(f),
            Err(e) => {
                notes.push(format!("{}: {e}", t.function_name()));
                None
            }
        };
        let env = f.as_ref().map(|f| f.env.clone()).unwrap_or_default();
        let handler = f.as_ref().and_then(|f| f.handler.clone());
        let (bytes, from) = match (&file, f.as_ref().and_then(|f| f.location.clone())) {
            (Some((bytes, p)), _) => (bytes.clone(), p.clone()),
            (None, Some(url)) => match discover::download(&url).await {
                Ok(b) => (b, "GetFunction's Code.Location".to_owned()),
                Err(e) => {
                    notes.push(format!(
                        "{}: {e} (give the code with --lambda-code PATH)",
                        t.function_name()
                    ));
                    continue;
                }
            },
            (None, None) => continue,
        };
        let code = lambda::code_from_bytes(&bytes, &from, handler.as_deref())
            .map_err(|e| Refusal::Failed(format!("the code of {}: {e}", t.function_name())))?;
        let facts = lambda::facts(&code, &env);
        if looks_like_the_article(&facts) {
            found.push(OldLambda {
                function: Some(
                    f.map(|f| f.name)
                        .unwrap_or_else(|| t.function_name().to_owned()),
                ),
                triggers: mine,
                code_from: format!("{from}, {}", code.file),
                facts,
            });
        }
    }
    if found.len() > 1 {
        let names: Vec<String> = found.iter().filter_map(|l| l.function.clone()).collect();
        return Err(Refusal::Ambiguous(format!(
            "s3://{}: {} functions look like the purge Lambda ({}); remove the others' \
             triggers or pass --lambda-code with the one to read",
            bucket.name(),
            found.len(),
            names.join(", ")
        )));
    }
    if let Some(l) = found.pop() {
        return Ok(Some(l));
    }
    // No trigger: the code given still says the quota the Lambda kept.
    let Some((bytes, from)) = file else {
        return Ok(None);
    };
    let code = lambda::code_from_bytes(&bytes, &from, None)
        .map_err(|e| Refusal::Failed(format!("{from}: {e}")))?;
    let facts = lambda::facts(&code, &Default::default());
    Ok(Some(OldLambda {
        function: None,
        triggers: Vec::new(),
        code_from: format!("{from}, {}", code.file),
        facts,
    }))
}

/// The article's Lambda has a count and a marker name; an image resizer does not.
fn looks_like_the_article(f: &lambda::Facts) -> bool {
    f.count_max.is_some() || f.target_file.is_some() || f.count_bucket.is_some()
}

/// `--lambda-code PATH`: a zip or a .py, at most [`discover::MAX_CODE`], read off the runtime.
async fn read_code_file(p: &Path) -> Result<(Vec<u8>, String), Refusal> {
    let shown = crate::text::printable(&p.display().to_string()).into_owned();
    let path = p.to_path_buf();
    let bytes = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let f = std::fs::File::open(&path)?;
        let mut buf = Vec::new();
        f.take(discover::MAX_CODE as u64 + 1)
            .read_to_end(&mut buf)?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(|e| Refusal::Failed(e.to_string()))?
    .map_err(|e| Refusal::Failed(format!("--lambda-code {shown}: {e}")))?;
    if bytes.len() > discover::MAX_CODE {
        return Err(Refusal::Failed(format!(
            "--lambda-code {shown}: over {} bytes",
            discover::MAX_CODE
        )));
    }
    Ok((bytes, shown))
}
