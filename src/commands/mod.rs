//! The CLI's verbs. Each returns Ok(true) on success, Ok(false) when it ran but something it
//! checked failed (exit 1), Err for a failure to run at all.

use std::borrow::Cow;

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;
use std::io::Write;

use crate::app::{self, Daemon};
use crate::aws::{self, Clients};
use crate::cloudfront::Cdn;
use crate::config::{Config, Sites};
use crate::quota::{self, mirror::Mirror};
use crate::store::{self, counters, requests, Store};
use crate::text::printable;

mod migrate;
pub use migrate::{init, takeover, InitOutput};

/// `println!` that hands the error back instead of panicking: `purgewatch history | head`
/// closes the pipe early, and main ends such a command quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

/// The daemon: runs until SIGTERM/SIGINT; SIGHUP reloads the config ([`reload`]).
pub async fn run(sites: Sites, knobs: crate::knobs::Knobs) -> anyhow::Result<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    let mut daemon = Daemon::start_sites(sites.clone(), knobs.clone()).await?;
    let mut sites = sites;
    // Every watch is set and the catch-up scan is done: tell systemd (Type=notify) we are up.
    crate::systemd::tell("READY=1\n").await;
    loop {
        let token = daemon.token();
        tokio::select! {
            _ = app::shutdown_signal() => {
                tracing::info!("stopping");
                token.cancel();
                daemon.wait().await?;
                return Ok(true);
            }
            _ = hup.recv() => {
                let Some(new) = reload(&sites) else { continue };
                crate::systemd::tell("RELOADING=1\n").await;
                if shared_tables(&new) == shared_tables(&sites) {
                    // Only sites changed: the others are not touched.
                    for line in daemon.reload(new.clone()).await? {
                        tracing::info!("{line}");
                    }
                } else {
                    // The new database and listener first: what cannot be had keeps the
                    // running daemon (a restart loop under systemd otherwise).
                    let (prepared, fallback) = match Daemon::prepare(&new, Some(&daemon)).await {
                        Ok(p) => (p, Daemon::prepare(&sites, Some(&daemon)).await),
                        Err(e) => {
                            tracing::warn!("reload refused, keeping the running config: {e}");
                            crate::systemd::tell("READY=1\n").await;
                            continue;
                        }
                    };
                    daemon.shutdown().await?;
                    match Daemon::start_prepared(new.clone(), knobs.clone(), prepared).await {
                        Ok(d) => daemon = d,
                        Err(e) => {
                            tracing::warn!("reload refused, back to the running config: {e}");
                            daemon = Daemon::start_prepared(sites.clone(), knobs.clone(), fallback?).await?;
                            crate::systemd::tell("READY=1\n").await;
                            continue;
                        }
                    }
                }
                sites = new;
                tracing::info!(config = %sites.file.display(), "reloaded");
                crate::systemd::tell("READY=1\n").await;
            }
            // The daemon ended by itself (a fatal error): say why.
            r = daemon.wait_ref() => {
                r?;
                return Ok(true);
            }
        }
    }
}

/// The process's own tables: a change restarts everything, not only the sites.
fn shared_tables(s: &Sites) -> impl PartialEq + '_ {
    let c = s.shared();
    (&c.state, &c.aws, &c.metrics, &c.notify)
}

/// SIGHUP: the config file read again. Valid → the new config, applied by restarting the sites
/// whose tables changed (requests in hand park and resume, as at a restart; the tree is walked
/// again), or everything when `[state]`, `[aws]`, `[metrics]` or `[notify]` changed. Invalid →
/// `None`: one log line naming the file and the key, and the daemon goes on with the old
/// config. `state.database` cannot change while running: the old one stays.
pub fn reload(old: &Sites) -> Option<Sites> {
    match Sites::load(&old.file) {
        Err(e) => {
            tracing::warn!("reload refused, keeping the running config: {e}");
            None
        }
        Ok(mut new) => {
            let (was, now) = (&old.shared().state.database, &new.shared().state.database);
            if was != now {
                tracing::warn!(
                    old = %was.display(),
                    new = %now.display(),
                    "state.database cannot change while running: keeping the old one until a restart"
                );
                let was = was.clone();
                for s in &mut new.sites {
                    std::sync::Arc::make_mut(s).state.database = was.clone();
                }
            }
            Some(new)
        }
    }
}

/// The sites `--site` names (all when omitted), or an error listing the names.
fn selected(sites: &Sites, site: Option<&str>) -> anyhow::Result<Vec<std::sync::Arc<Config>>> {
    sites.select(site).map_err(anyhow::Error::msg)
}

/// The database for a command that only reads it (`history`, `status`, `quota`): opened
/// read-only, never created or migrated (`sudo purgewatch status` before the first start once
/// made a root-owned database the service could not write). `None`: the daemon has not run
/// yet. A schema older than this binary's is said on stderr and read as it is.
fn read_store(cfg: &Config) -> anyhow::Result<Option<Store>> {
    let path = &cfg.state.database;
    let Some(r) = Store::open_read_only(path).context("opening the state database")? else {
        return Ok(None);
    };
    if let Some(note) = r.schema_note() {
        eprintln!("purgewatch: {}: {note}", path.display());
    }
    Ok(Some(r.store))
}

/// What a read-only command says when there is no database.
fn never_ran(cfg: &Config) -> String {
    format!(
        "the daemon has not run yet (no database at {})",
        cfg.state.database.display()
    )
}

/// Pretty JSON whose strings cannot act on a terminal: serde escapes the C0 controls, not DEL,
/// the C1 controls (CSI, U+009B) or the bidi overrides, which [`printable`] also names. Those
/// only occur inside strings, where `\uXXXX` is the same character to a JSON reader.
fn json_out<T: Serialize>(v: &T) -> anyhow::Result<String> {
    let json = serde_json::to_string_pretty(v)?;
    let mut out = String::with_capacity(json.len());
    let mut buf = [0u8; 4];
    for c in json.chars() {
        // The pretty printer's own line breaks stay; within strings serde escaped every C0.
        if c != '\n' && matches!(printable(c.encode_utf8(&mut buf)), Cow::Owned(_)) {
            for unit in c.encode_utf16(&mut [0u16; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

pub async fn history(
    sites: Sites,
    site: Option<String>,
    limit: u32,
    json: bool,
) -> anyhow::Result<bool> {
    selected(&sites, site.as_deref())?;
    let Some(store) = read_store(sites.shared())? else {
        let why = never_ran(sites.shared());
        if json {
            // stdout stays what a script parses: no requests.
            eprintln!("purgewatch: {why}");
            out!("[]");
        } else {
            out!("no requests: {why}");
        }
        return Ok(true);
    };
    let rows = store
        .call(move |c| requests::history(c, site.as_deref(), limit))
        .await?;
    if json {
        out!("{}", json_out(&rows)?);
        return Ok(true);
    }
    // The site column only where there is more than one site to tell apart.
    let width = if sites.is_single() {
        0
    } else {
        sites
            .sites
            .iter()
            .map(|s| s.site.len())
            .max()
            .unwrap_or(4)
            .max(4)
            + 2
    };
    let site_cell = |s: &str| {
        if width == 0 {
            String::new()
        } else {
            format!("{s:<w$}", w = width)
        }
    };
    out!(
        "{:>5}  {}{:<18}  {:<7}  {:<24}  {:<24}  {:<24}  {:<16}  {:>5}  DETAIL",
        "ID",
        site_cell("SITE"),
        "STATUS",
        "ORIGIN",
        "MARKER",
        "DETECTED",
        "FINISHED",
        "INVALIDATION",
        "PATHS"
    );
    // The marker, the detail (which quotes names and S3's answers) and the invalidation id come
    // from the tree or from AWS: escaped, so a folder name cannot act on the terminal.
    for r in rows {
        out!(
            "{:>5}  {}{:<18}  {:<7}  {:<24}  {:<24}  {:<24}  {:<16}  {:>5}  {}",
            r.id,
            site_cell(&r.site),
            r.status,
            r.origin,
            if r.marker.is_empty() {
                "-".into()
            } else {
                printable(&r.marker)
            },
            r.detected_at,
            r.finished_at.as_deref().unwrap_or("-"),
            printable(r.invalidation_id.as_deref().unwrap_or("-")),
            r.path_count.map_or("-".to_owned(), |n| n.to_string()),
            printable(r.detail.as_deref().unwrap_or(""))
        );
        // Several distributions: a line each under the request.
        if r.invalidations.len() > 1 {
            for i in &r.invalidations {
                out!(
                    "{:>5}  {}on {}: {} {}",
                    "",
                    site_cell(""),
                    printable(&i.distribution_id),
                    printable(i.invalidation_id.as_deref().unwrap_or("-")),
                    i.state
                );
            }
        }
    }
    Ok(true)
}

#[derive(Serialize)]
struct QuotaReport {
    /// The quota's name (`default`, or NAME of `[quotas.NAME]`) and the sites that use it.
    quota: String,
    sites: Vec<String>,
    period: String,
    count: u32,
    max: u32,
    timezone: String,
    count_object: Option<String>,
    mirrored_count: Option<u32>,
    mirror_error: Option<String>,
    /// Why the local count is 0 without a database (the daemon has not run yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    resets_at: String,
    /// Paths invalidated this calendar month (UTC), as AWS bills them.
    paths_this_month: u64,
    free_paths_per_month: u64,
    estimated_charge_usd: f64,
}

/// CloudFront's free invalidation paths per month, and the documented price of each one past it.
const FREE_PATHS: u64 = 1000;
const USD_PER_PATH: f64 = 0.005;

/// `purgewatch quota`: each quota of the selected sites once (sites may share one). JSON: one
/// object for a single-site config (as before several sites), else an array.
pub async fn quota(sites: Sites, site: Option<String>, json: bool) -> anyhow::Result<bool> {
    let chosen = selected(&sites, site.as_deref())?;
    let store = read_store(sites.shared())?;
    let clients = Clients::new(&sites.shared().aws).await;
    let mut reports = Vec::new();
    for cfg in &chosen {
        if reports
            .iter()
            .any(|r: &QuotaReport| r.quota == cfg.quota.name)
        {
            continue;
        }
        let users = chosen
            .iter()
            .filter(|s| s.quota.name == cfg.quota.name)
            .map(|s| s.site.clone())
            .collect();
        reports.push(quota_report(store.as_ref(), &clients, cfg, users).await?);
    }
    let ok = reports.iter().all(|r| r.mirror_error.is_none());
    if json {
        if sites.is_single() {
            out!("{}", json_out(&reports[0])?);
        } else {
            out!("{}", json_out(&reports)?);
        }
        return Ok(ok);
    }
    for (i, report) in reports.iter().enumerate() {
        if !sites.is_single() {
            if i > 0 {
                out!("");
            }
            out!(
                "quota:    {} (sites: {})",
                report.quota,
                report.sites.join(", ")
            );
        }
        out!("period:   {} ({})", report.period, report.timezone);
        out!("count:    {} of {}", report.count, report.max);
        if let Some(note) = &report.note {
            out!("note:     {note}");
        }
        match (
            &report.count_object,
            report.mirrored_count,
            &report.mirror_error,
        ) {
            (Some(o), Some(n), _) => out!("mirror:   {o} = {n}"),
            // The error may quote the count object's body: anyone may write it.
            (Some(o), None, Some(e)) => out!("mirror:   {o}: {}", printable(e)),
            _ => out!("mirror:   none (quota.count_bucket not set)"),
        }
        out!("resets:   {}", report.resets_at);
        out!(
            "paths:    {} this month (UTC) of {} free; estimated charge ${:.3}",
            report.paths_this_month,
            report.free_paths_per_month,
            report.estimated_charge_usd
        );
    }
    Ok(ok)
}

/// One quota's report; without a database (`store` None) the local count is 0 and the count
/// bucket is still read.
async fn quota_report(
    store: Option<&Store>,
    clients: &Clients,
    cfg: &Config,
    sites: Vec<String>,
) -> anyhow::Result<QuotaReport> {
    let q = &cfg.quota;
    let now = Utc::now();
    let period = quota::period_key(now, q.timezone, q.period);
    let (name, p2) = (q.name.clone(), period.clone());
    let month_start = now.format("%Y-%m-01").to_string();
    let (local, paths_this_month) = match store {
        Some(store) => {
            store
                .call(move |c| {
                    Ok((
                        counters::get(c, &name, &p2)?.count,
                        requests::paths_since(c, &month_start)?,
                    ))
                })
                .await?
        }
        None => (0, 0),
    };
    let mut report = QuotaReport {
        quota: q.name.clone(),
        sites,
        period: period.clone(),
        count: local,
        max: q.max,
        timezone: q.timezone.name().to_owned(),
        count_object: None,
        mirrored_count: None,
        mirror_error: None,
        note: store.is_none().then(|| never_ran(cfg)),
        resets_at: store::ts(quota::next_period_start(now, q.timezone, q.period)),
        paths_this_month,
        free_paths_per_month: FREE_PATHS,
        estimated_charge_usd: paths_this_month.saturating_sub(FREE_PATHS) as f64 * USD_PER_PATH,
    };
    if let Some(bucket) = &q.count_bucket {
        let mirror = Mirror::new(
            clients.bucket(bucket, q.count_bucket_region.as_deref()),
            &q.key_prefix,
        );
        report.count_object = Some(format!("s3://{bucket}/{}", mirror.key(&period)));
        match mirror.read(&period).await {
            Ok(r) => {
                report.mirrored_count = Some(r.count);
                report.count = report.count.max(r.count);
            }
            Err(e) => report.mirror_error = Some(e.to_string()),
        }
    }
    Ok(report)
}

/// `purgewatch status`: the daemon's heartbeat, requests in progress, the quota, the last
/// completed and failed requests. Returns the exit code: 0 running and healthy, 1 not running,
/// 2 degraded.
pub async fn status(sites: Sites, site: Option<String>, json: bool) -> anyhow::Result<u8> {
    let chosen = selected(&sites, site.as_deref())?;
    let r = match read_store(sites.shared())? {
        Some(store) => {
            store
                .call(move |c| crate::status::report(c, &chosen, Utc::now()))
                .await?
        }
        None => crate::status::without_database(&chosen, Utc::now(), never_ran(sites.shared())),
    };
    if json {
        out!("{}", json_out(&r)?);
        return Ok(r.exit_code());
    }
    let state = match r.exit_code() {
        0 => "running",
        1 => "not running",
        _ => "running, degraded",
    };
    out!(
        "purgewatch {state}{}{}",
        r.since
            .as_deref()
            .filter(|_| r.running)
            .map(|s| format!(" since {s}"))
            .unwrap_or_default(),
        r.note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default()
    );
    for p in &r.problems {
        out!("  ! {p}");
    }
    out!(
        "folders:  {} watched, {} without a watch; events lost {} time(s)",
        r.watched_folders,
        r.unwatched_folders,
        r.events_lost
    );
    out!(
        "requests: {} waiting for the origin, {} for a quota slot, {} at CloudFront",
        r.in_progress.origin,
        r.in_progress.quota,
        r.in_progress.cloudfront
    );
    if sites.is_single() {
        out!(
            "quota:    {} of {} in {}",
            r.quota.count,
            r.quota.max,
            r.quota.period
        );
    } else {
        for s in &r.sites {
            out!(
                "site {}: {} waiting, quota {} {} of {} in {}",
                s.site,
                s.waiting,
                s.quota_name,
                s.quota.count,
                s.quota.max,
                s.quota.period
            );
        }
    }
    for (what, row) in [("completed", &r.last_completed), ("failed", &r.last_failed)] {
        match row {
            // The marker and the detail come from the tree: escaped, as in `history`.
            Some(h) => out!(
                "last {what}: request {} {} at {}: {}",
                h.id,
                if h.marker.is_empty() {
                    "manual".into()
                } else {
                    printable(&h.marker)
                },
                h.finished_at.as_deref().unwrap_or("-"),
                printable(h.detail.as_deref().unwrap_or(""))
            ),
            None => out!("last {what}: none"),
        }
    }
    Ok(r.exit_code())
}

pub async fn purge(sites: Sites, site: Option<String>, wait: bool) -> anyhow::Result<bool> {
    if site.is_none() && sites.sites.len() > 1 {
        let names: Vec<&str> = sites.sites.iter().map(|s| s.site.as_str()).collect();
        anyhow::bail!(
            "{} has {} sites: say which with --site ({})",
            sites.file.display(),
            names.len(),
            names.join(", ")
        );
    }
    let cfg = selected(&sites, site.as_deref())?.remove(0);
    let row = app::purge_now((*cfg).clone(), wait).await?;
    out!(
        "request {}{}: {}{}{}",
        row.id,
        if sites.is_single() {
            String::new()
        } else {
            format!(" (site {})", row.site)
        },
        row.status,
        row.invalidation_id
            .as_deref()
            .map(|i| format!(" (invalidation {i})"))
            .unwrap_or_default(),
        row.detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default()
    );
    Ok(matches!(
        row.status,
        crate::store::Status::Invalidated | crate::store::Status::Completed
    ))
}

pub async fn check(sites: Sites, site: Option<String>) -> anyhow::Result<bool> {
    out!("OK    config {}", sites.file.display());
    let chosen = selected(&sites, site.as_deref())?;
    let mut ok = true;
    for cfg in chosen {
        if !sites.is_single() {
            out!("site {}:", cfg.site);
        }
        ok &= check_site(&cfg).await?;
    }
    Ok(ok)
}

/// The checks of one site: its tree, the database, its buckets and distribution.
async fn check_site(cfg: &Config) -> anyhow::Result<bool> {
    let mut ok = true;
    let mut report = |good: bool, what: String| {
        // A closed stdout must not stop the checks (nor panic): the exit status still says.
        let _ = writeln!(
            std::io::stdout(),
            "{}  {what}",
            if good { "OK  " } else { "FAIL" }
        );
        ok &= good;
    };
    let tree = crate::watch::survey(&cfg.watch.root);
    let root = cfg.watch.root.display();
    if tree.unreadable.is_empty() {
        report(
            true,
            format!("watch.root {root}: {} folders, all readable", tree.folders),
        );
    } else {
        report(
            false,
            format!(
                "watch.root {root}: {} of {} folders not readable by this user, e.g. {} \
                 (give the purgewatch user read access: group or ACL, see the README)",
                tree.unreadable.len(),
                tree.folders,
                tree.unreadable[0].display()
            ),
        );
    }
    if let Some(limit) = crate::watch::max_user_watches() {
        report(
            tree.folders <= limit,
            format!(
                "fs.inotify.max_user_watches {limit} for {} folders (one watch each)",
                tree.folders
            ),
        );
    }
    // Read only: a check as root before the first start must not make a database the
    // service's user cannot write (nor migrate one the daemon is still using).
    let db = cfg.state.database.display();
    match Store::open_read_only(&cfg.state.database) {
        Ok(None) => report(
            true,
            format!("state.database {db}: the daemon has not run yet (it creates it at its first start)"),
        ),
        Ok(Some(r)) => match r.schema_note() {
            None => report(true, format!("state.database {db}")),
            Some(note) => report(true, format!("state.database {db}: {note}")),
        },
        Err(e) => report(false, format!("state.database: {e}")),
    }
    let clients = Clients::new(&cfg.aws).await;
    let o = &cfg.origin;
    let origin = clients.bucket(&o.bucket, o.region.as_deref());
    let located = origin.locate().await;
    let listed = origin
        .send(|c| {
            c.list_objects_v2()
                .bucket(&o.bucket)
                .prefix(&o.prefix)
                .max_keys(1)
                .send()
        })
        .await;
    match (listed, located) {
        (Ok(_), located) => report(
            true,
            format!(
                "origin.bucket s3://{}/{} in {}",
                o.bucket,
                o.prefix,
                located.unwrap_or_else(|_| origin.region())
            ),
        ),
        (Err(e), _) => report(
            false,
            format!(
                "origin.bucket: {}",
                aws::classify(&format!("ListObjectsV2 s3://{}", o.bucket), &e)
            ),
        ),
    }
    if let Some(bucket) = &cfg.quota.count_bucket {
        let q = &cfg.quota;
        let period = quota::period_key(Utc::now(), q.timezone, q.period);
        let mirror = Mirror::new(
            clients.bucket(bucket, q.count_bucket_region.as_deref()),
            &q.key_prefix,
        );
        let located = mirror.handle().locate().await;
        match mirror.read(&period).await {
            Ok(r) => report(
                true,
                format!(
                    "quota.count_bucket s3://{bucket}/{} = {} in {}",
                    mirror.key(&period),
                    r.count,
                    located.unwrap_or_else(|_| mirror.handle().region())
                ),
            ),
            Err(e) => report(false, format!("quota.count_bucket: {e}")),
        }
    }
    use crate::init::discover::{check_path_prefix, PrefixCheck};
    let cf = &cfg.cloudfront;
    // Each distribution in front of the site: reachable, and serving the site at path_prefix.
    for id in &cf.distribution_ids {
        let cdn = Cdn::new(clients.cloudfront.clone(), id.clone());
        match cdn.reachable().await {
            Ok(_) => report(true, format!("cloudfront.distribution_id {id}")),
            Err(e) => report(false, format!("cloudfront.distribution_id {id}: {e}")),
        }
        match check_path_prefix(
            &clients.cloudfront,
            id,
            &o.bucket,
            &o.prefix,
            &cf.path_prefix,
        )
        .await
        {
            PrefixCheck::Agrees(line) => report(true, line),
            PrefixCheck::Differs(line) => report(false, line),
            // Not a failure: a role made from an older policy may lack GetDistribution.
            PrefixCheck::Unknown(line) => {
                let _ = writeln!(std::io::stdout(), "WARN  cloudfront.path_prefix {line}");
            }
        }
    }
    Ok(ok)
}
