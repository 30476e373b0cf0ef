//! Wiring, in three rooms: the daemon (this file: start, reload, stop, the manual purge), the
//! supervisor of the sites and their shared neighbours ([`supervisor`]), and one site's run
//! ([`site`]: its watcher feeds a bounded channel; one loop hands its events to the intake and
//! runs each stored request as a task of the pipeline). One cancellation token stops
//! everything; tasks are joined, never detached.

mod site;
mod supervisor;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn, Instrument};

use crate::aws::Clients;
use crate::clock::Clock;
use crate::config::{Config, Sites};
use crate::halt::Halt;
use crate::intake::configured_paths;
use crate::knobs::Knobs;
use crate::pipeline::{self, Pipeline};
use crate::store::{requests, HistoryRow, Store, StoreError};
use crate::watch::{Lost, WatchError};

use site::{SiteEnv, SiteRun};
use supervisor::{supervise, Supervisor};

/// Why the daemon (or one of its sites) could not start or went on no longer.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// `[metrics] listen` could not be bound (in use, not this machine's).
    #[error("{file}: metrics.listen {addr}: cannot listen: {source}")]
    Listen {
        file: std::path::PathBuf,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The daemon's task ended while a caller still talked to it.
    #[error("the daemon has stopped")]
    Stopped,
    /// A task of the daemon panicked or was cancelled: `what` names it.
    #[error("{what}: {error}")]
    Task { what: String, error: String },
    /// The watcher's thread ended (its channel closed).
    #[error("the watcher of site {0} stopped")]
    WatcherStopped(String),
    /// The manual purge's request is not in the database after it ran.
    #[error("request {0} vanished from the database")]
    Vanished(i64),
}

impl AppError {
    fn task(what: impl Into<String>, e: tokio::task::JoinError) -> AppError {
        AppError::Task {
            what: what.into(),
            error: e.to_string(),
        }
    }
}

/// A running daemon: one [`SiteRun`] per site of the config, and the neighbours they share
/// (the heartbeat, metrics, alerts, pruning). [`Daemon::start`] returns once every watch is set.
pub struct Daemon {
    token: CancellationToken,
    main: tokio::task::JoinHandle<Result<(), AppError>>,
    /// Times the (first) site's watcher lost events and a rescan ran instead.
    pub lost: Arc<Lost>,
    reload: mpsc::Sender<(Sites, tokio::sync::oneshot::Sender<Vec<String>>)>,
    /// The metrics socket (a handle of its own), so a reload onto the same address reuses it.
    metrics: Option<(SocketAddr, std::net::TcpListener)>,
}

/// What a daemon needs before anything of a running one is stopped: its database open and its
/// metrics address bound. A reload that cannot get them keeps the running daemon untouched.
pub struct Prepared {
    store: Store,
    metrics: Option<(SocketAddr, std::net::TcpListener)>,
}

impl Daemon {
    pub async fn start(cfg: Config) -> Result<Daemon, AppError> {
        Daemon::start_with(cfg, Knobs::default()).await
    }

    /// [`Daemon::start`] with test knobs turned (see [`Knobs`]).
    pub async fn start_with(cfg: Config, knobs: Knobs) -> Result<Daemon, AppError> {
        Daemon::start_sites(Sites::one(cfg), knobs).await
    }

    /// Every site of the file. A site whose root is missing is reported and tried again every
    /// 30 s; the others run. Any other failure to start a site stops the start.
    pub async fn start_sites(sites: Sites, knobs: Knobs) -> Result<Daemon, AppError> {
        let prepared = Daemon::prepare(&sites, None).await?;
        Daemon::start_prepared(sites, knobs, prepared).await
    }

    /// Opens the database and binds the metrics address of `sites`, reusing the socket of
    /// `running` when the address stays (it cannot be bound twice). Err names the key.
    pub async fn prepare(sites: &Sites, running: Option<&Daemon>) -> Result<Prepared, AppError> {
        let shared = sites.shared();
        let store = open_store(shared).await?;
        let metrics = match shared.metrics.listen {
            None => None,
            Some(addr) => {
                let cannot = |source| AppError::Listen {
                    file: shared.file.clone(),
                    addr,
                    source,
                };
                let kept = running
                    .and_then(|d| d.metrics.as_ref())
                    .filter(|(a, _)| *a == addr);
                let l = match kept {
                    Some((_, l)) => l.try_clone().map_err(cannot)?,
                    None => std::net::TcpListener::bind(addr).map_err(cannot)?,
                };
                l.set_nonblocking(true).map_err(cannot)?;
                Some((addr, l))
            }
        };
        Ok(Prepared { store, metrics })
    }

    /// [`Daemon::start_sites`] with its database and listener already in hand.
    pub async fn start_prepared(
        sites: Sites,
        knobs: Knobs,
        prepared: Prepared,
    ) -> Result<Daemon, AppError> {
        let shared = Arc::new(sites.shared().clone());
        let token = CancellationToken::new();
        let Prepared {
            store,
            metrics: bound,
        } = prepared;
        let clients = Clients::new(&shared.aws).await;
        let env = SiteEnv {
            store,
            clients,
            knobs,
            changed: Arc::new(tokio::sync::Notify::new()),
        };
        let mut runs = Vec::new();
        let mut waiting = Vec::new();
        let started = futures_util::future::join_all(
            sites
                .sites
                .iter()
                .map(|cfg| SiteRun::start(cfg.clone(), &env, token.child_token())),
        )
        .await;
        for (cfg, r) in sites.sites.iter().zip(started) {
            match r {
                Ok(run) => runs.push(run),
                Err(AppError::Watch(e)) if !cfg.watch.root.is_dir() => {
                    warn!(site = %cfg.site, error = %e, "the site's root is missing; trying again every 30 s, the other sites run");
                    waiting.push(cfg.clone());
                }
                Err(e) => {
                    token.cancel();
                    for run in runs {
                        let _ = run.handle.await;
                    }
                    return Err(e);
                }
            }
        }
        let lost = runs
            .first()
            .map_or_else(|| Arc::new(Lost::default()), |r| r.lost.clone());
        let metrics = match &bound {
            None => None,
            Some((addr, l)) => {
                let served = l
                    .try_clone()
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|source| AppError::Listen {
                        file: shared.file.clone(),
                        addr: *addr,
                        source,
                    })?;
                Some(served)
            }
        };
        let (reload, reloads) = mpsc::channel(1);
        let main = tokio::spawn(supervise(
            Supervisor {
                shared,
                env,
                runs,
                waiting,
                token: token.clone(),
            },
            metrics,
            reloads,
        ));
        Ok(Daemon {
            token,
            main,
            lost,
            reload,
            metrics: bound,
        })
    }

    /// Applies a new config: sites added start, sites removed stop, sites whose tables changed
    /// restart; the others are not touched. Returns what changed, one line per site.
    pub async fn reload(&self, sites: Sites) -> Result<Vec<String>, AppError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reload
            .send((sites, tx))
            .await
            .map_err(|_| AppError::Stopped)?;
        rx.await.map_err(|_| AppError::Stopped)
    }

    /// Stops watching, parks requests in hand, and waits for every task to end.
    pub async fn shutdown(self) -> Result<(), AppError> {
        self.token.cancel();
        self.wait().await
    }

    /// Waits until the daemon ends (a fatal error, or [`Daemon::shutdown`]).
    pub async fn wait(self) -> Result<(), AppError> {
        self.main
            .await
            .map_err(|e| AppError::task("the daemon", e))?
    }

    /// [`Daemon::wait`] without giving the daemon up (to wait beside a signal).
    pub async fn wait_ref(&mut self) -> Result<(), AppError> {
        (&mut self.main)
            .await
            .map_err(|e| AppError::task("the daemon", e))?
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

/// `purgewatch purge`: a request by hand, no origin wait, the same quota and invalidation.
/// The SQLite write lock makes its slot reservation atomic with a running daemon's.
pub async fn purge_now(cfg: Config, wait_completed: bool) -> Result<HistoryRow, AppError> {
    let cfg = Arc::new(cfg);
    let store = open_store(&cfg).await?;
    let token = CancellationToken::new();
    let pipeline =
        Pipeline::new(cfg.clone(), store.clone(), token.clone(), Clock::system()).await?;
    let id = pipeline::store_manual(&store, &cfg.site, configured_paths(&cfg)).await?;
    let run = pipeline
        .run_manual(id, wait_completed)
        .instrument(info_span!("request", id, marker = "manual"));
    tokio::select! {
        r = run => match r {
            Ok(()) | Err(Halt::Ended) | Err(Halt::Shutdown) => {}
            Err(Halt::Store(e)) => return Err(e.into()),
        },
        _ = shutdown_signal() => {
            token.cancel();
        }
    }
    let row = store
        .call(move |c| {
            Ok(requests::history(c, None, u32::MAX)?
                .into_iter()
                .find(|r| r.id == id))
        })
        .await?;
    row.ok_or(AppError::Vanished(id))
}

async fn open_store(cfg: &Config) -> Result<Store, AppError> {
    let path = cfg.state.database.clone();
    Ok(tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(|e| AppError::task("opening the database", e))??)
}

/// SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
