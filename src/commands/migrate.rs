//! `init` and `takeover`: the move from the old Lambda (the work is in `crate::init`; here the
//! files written, the checks run, the daemon reloaded).

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::aws::Clients;
use crate::config::Sites;
use crate::init::{self, render, takeover as take, Refusal};
use crate::store::Store;
use crate::text::printable;

/// Where `init` writes.
#[derive(Debug, Clone, Default)]
pub struct InitOutput {
    /// None: printed.
    pub config: Option<PathBuf>,
    pub iam_policy: Option<PathBuf>,
    pub force: bool,
}

/// The config the package installs, unedited: `init` may replace it without `--force` (on a
/// fresh install /etc/purgewatch/purgewatch.toml is this template).
const PACKAGED: &str = include_str!("../../packaging/purgewatch.toml");

/// Whether `path` may be written: absent, `force`, or still the packaged template.
fn may_write(path: &Path, force: bool) -> bool {
    force || !path.exists() || std::fs::read(path).is_ok_and(|b| b == PACKAGED.as_bytes())
}

/// Writes `text` to `path`, never over a file unless `force` (or the packaged template);
/// created 0640 (a config may hold a webhook later).
fn write_new(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    let force = force || may_write(path, false);
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o640);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists: nothing written (--force overwrites it)",
                printable(&path.display().to_string())
            )
        } else {
            anyhow::anyhow!("{}: {e}", printable(&path.display().to_string()))
        }
    })?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// `purgewatch init`: 0 written and checked, 1 an error or a failed check, 2 ambiguous.
pub async fn init(args: init::Args, out: InitOutput) -> anyhow::Result<u8> {
    // Nothing is written when a file is in the way: say so before asking AWS anything.
    for p in [&out.config, &out.iam_policy].into_iter().flatten() {
        if !may_write(p, out.force) {
            eprintln!(
                "purgewatch: {} exists: nothing written (--force overwrites it)",
                printable(&p.display().to_string())
            );
            return Ok(1);
        }
    }
    let plan = match init::plan(&args).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("purgewatch: {e}");
            return Ok(match e {
                Refusal::Failed(_) => 1,
                Refusal::Ambiguous(_) => 2,
            });
        }
    };
    let today = Utc::now().format("%Y-%m-%d").to_string();
    let toml = render::config(&plan, &today);
    let policy = render::iam_policy(&plan);
    for n in &plan.notes {
        eprintln!("note: {}", printable(n));
    }
    for s in &plan.sites {
        let lambda = match s.lambda.as_ref().and_then(|l| l.function.as_deref()) {
            Some(f) => format!("old Lambda {}", printable(f)),
            None => "no old Lambda".into(),
        };
        eprintln!(
            "found: {} → s3://{}/{} → {} (path_prefix {}), {lambda}",
            printable(&s.root.value),
            printable(&s.bucket.value),
            printable(&s.prefix.value),
            s.distribution.value.id,
            s.path_prefix.value
        );
    }
    // The checks read a file: the one written, or a private copy of what is printed.
    let (checked, _tmp) = match &out.config {
        Some(p) => {
            write_new(p, &toml, out.force)?;
            eprintln!("wrote {}", printable(&p.display().to_string()));
            (p.clone(), None)
        }
        None => {
            println!("{toml}");
            let dir = std::env::temp_dir().join(format!("purgewatch-init-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let p = dir.join("purgewatch.toml");
            write_new(&p, &toml, true)?;
            (p, Some(TempDir(dir)))
        }
    };
    match &out.iam_policy {
        Some(p) => {
            write_new(p, &policy, out.force)?;
            eprintln!(
                "wrote the instance role's IAM policy to {}",
                printable(&p.display().to_string())
            );
        }
        None => {
            println!("# The instance role's IAM policy (also: --iam-policy PATH):");
            println!("{policy}");
        }
    }
    if plan.trigger_live() {
        eprintln!(
            "dry_run = true: the old Lambda still purges. After a shadow week, `purgewatch takeover`."
        );
    }
    println!("# purgewatch check:");
    let sites = match Sites::load(&checked) {
        Ok(s) => s,
        Err(e) => {
            println!("FAIL  {e}");
            return Ok(1);
        }
    };
    Ok(if super::check(sites, None).await? {
        0
    } else {
        1
    })
}

/// Removes a directory of `init`'s when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `purgewatch takeover [--site NAME] [--undo]`.
pub async fn takeover(sites: Sites, site: Option<String>, undo: bool) -> anyhow::Result<bool> {
    let chosen = sites.select(site.as_deref()).map_err(anyhow::Error::msg)?;
    let shared = sites.shared();
    let db = &shared.state.database;
    if !db.exists() {
        anyhow::bail!(
            "no database at {}: run the daemon in shadow mode first (dry_run = true, systemctl start purgewatch)",
            db.display()
        );
    }
    let store = Store::open(db)?;
    let clients = Clients::new(&shared.aws).await;
    let mut ok = true;
    let mut changed = false;
    for cfg in &chosen {
        if !undo {
            for l in take::shadow_report(&clients, &store, cfg, Utc::now()).await? {
                println!("{l}");
            }
        }
        let done = if undo {
            take::undo(&clients, &store, cfg).await
        } else {
            take::take(&clients, &store, cfg).await
        };
        match done {
            Ok(o) => {
                for l in &o.lines {
                    println!("{l}");
                }
                if o.done {
                    let name = (!sites.is_single()).then_some(cfg.site.as_str());
                    if take::set_dry_run(&sites.file, name, undo)? {
                        changed = true;
                        println!(
                            "{}: dry_run = {undo}{}",
                            sites.file.display(),
                            name.map(|n| format!(" for site {n}")).unwrap_or_default()
                        );
                    }
                }
            }
            Err(e) => {
                println!("FAIL  {e:#}");
                ok = false;
            }
        }
    }
    drop(store);
    hand_back(db);
    if changed {
        reload(db);
    }
    Ok(ok)
}

/// A -wal or -shm this (root) process left keeps the owner of the database, so the service's
/// user can still open it.
fn hand_back(db: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(db) else {
        return;
    };
    for ext in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(ext);
        if let Ok(c) = std::ffi::CString::new(p.as_encoded_bytes().to_vec()) {
            // SAFETY: a valid C string; a missing file is an error ignored.
            unsafe { libc::chown(c.as_ptr(), meta.uid(), meta.gid()) };
        }
    }
}

/// SIGHUP to the daemon running on this database, or what to type.
fn reload(db: &Path) {
    let pid = Store::open_read_only(db)
        .ok()
        .flatten()
        .and_then(|r| crate::status::running_pid(&r.store.lock()).ok().flatten());
    match pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: a signal to a pid the heartbeat names and /proc shows as purgewatch.
        Some(pid) if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 => {
            println!("reloaded the running daemon (pid {pid})");
        }
        _ => println!("the daemon is not running here: it reads the new config when it starts (or: systemctl reload purgewatch)"),
    }
}
