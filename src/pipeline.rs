//! The order of a request's stages, written once:
//!
//! ```text
//! watched:  wait_for_origin → gather (one sync, one purge) → proceed
//! proceed:  decide_paths → take_slot → invalidate → complete
//! manual:   take_slot → invalidate → (complete)
//! resumed:  from the stored status, the same stages on
//! ```
//!
//! Each stage stores its outcome before the next begins, so a restart resumes from
//! `requests.status` ([`Pipeline::resume`]). A stage hands its typed result to the next
//! ([`Verified`] → [`Granted`] → [`Invalidated`]), or the request ends with a recorded reason
//! ([`Halt::Ended`]), or the daemon is stopping and the request stays parked where it is
//! ([`Halt::Shutdown`]). The detail of each stage lives in its own module: [`crate::verify`]
//! (and [`crate::origin`]), [`crate::paths`], [`crate::quota::ledger`], [`crate::cloudfront`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::aws::{AwsError, Clients};
use crate::clock::Clock;
use crate::cloudfront::{self, Cdn};
use crate::config::{Config, Paths};
pub use crate::halt::Halt;
use crate::halt::Steps;
use crate::invalidate::Sender;
use crate::marker;
use crate::origin::Origin;
use crate::paths;
use crate::quota::ledger::{GrantError, Ledger};
use crate::quota::{self, mirror::Mirror};
use crate::retry::{self, Retry};
use crate::store::{
    changes, invalidations, markers, requests, Pending, Source, Status, Store, StoreError,
};
use crate::verify::{Waiter, Wake};

pub use crate::quota::ledger::Granted;
pub use crate::verify::{FirstLook, Verified};

pub use crate::invalidate::Invalidated;

/// Everything a request needs: config, database, the AWS seams and the ledger.
#[derive(Clone)]
pub struct Pipeline {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub origin: Origin,
    pub ledger: Ledger,
    /// One per distribution in front of the site, in the config's order.
    pub cdns: Vec<Cdn>,
    clock: Clock,
    token: CancellationToken,
    /// The ids gathered into the invalidation of the request verified first ([`Pipeline::gather`]).
    batch: Arc<Mutex<Option<Vec<i64>>>>,
    /// Requests of this site in their origin wait now, and a signal when one leaves it: the
    /// window of [`Pipeline::gather`] waits only while one of them could still join.
    waiting: Arc<(AtomicUsize, Notify)>,
    /// A test's pause before [`Pipeline::gather`] (see [`crate::knobs::Knobs::before_gather`]).
    before_gather: Option<Duration>,
}

/// Counts a request in its origin wait from its start until it has joined (or opened) the
/// invalidation of its sync: leaving the wait and joining are one step for
/// [`Pipeline::gather`]'s window, which must not close between the two.
struct InWait(Arc<(AtomicUsize, Notify)>);

impl InWait {
    fn new(w: &Arc<(AtomicUsize, Notify)>) -> InWait {
        w.0.fetch_add(1, Ordering::SeqCst);
        InWait(w.clone())
    }
}

impl Drop for InWait {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }
}

impl Pipeline {
    pub async fn new(
        cfg: Arc<Config>,
        store: Store,
        token: CancellationToken,
        clock: Clock,
    ) -> Result<Pipeline, StoreError> {
        let clients = Clients::new(&cfg.aws).await;
        Pipeline::with_clients(cfg, store, token, clock, clients).await
    }

    /// [`Pipeline::new`] with clients shared among the sites of one process.
    pub async fn with_clients(
        cfg: Arc<Config>,
        store: Store,
        token: CancellationToken,
        clock: Clock,
        clients: Clients,
    ) -> Result<Pipeline, StoreError> {
        let instance = store.call(|c| Store::instance_id(c)).await?;
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let origin = clients.bucket(&cfg.origin.bucket, cfg.origin.region.as_deref());
        let mirror = cfg.quota.count_bucket.as_ref().map(|b| {
            Mirror::new(
                clients.bucket(b, cfg.quota.count_bucket_region.as_deref()),
                &cfg.quota.key_prefix,
            )
        });
        Ok(Pipeline {
            origin: Origin::new(origin, cfg.origin.prefix.clone()),
            ledger: Ledger::new(
                Arc::new(cfg.quota.clone()),
                store.clone(),
                mirror,
                clock.clone(),
                Arc::new(move |lead, now_ms| {
                    cloudfront::caller_reference(&host, &instance, lead, now_ms)
                }),
            ),
            cdns: cfg
                .cloudfront
                .distribution_ids
                .iter()
                .map(|id| Cdn::new(clients.cloudfront.clone(), id.clone()))
                .collect(),
            cfg,
            store,
            clock,
            token,
            batch: Default::default(),
            waiting: Default::default(),
            before_gather: None,
        })
    }

    /// This pipeline with a test's pause before [`Pipeline::gather`].
    pub fn pausing_before_gather(self, before_gather: Option<Duration>) -> Pipeline {
        Pipeline {
            before_gather,
            ..self
        }
    }

    // ---- the order of stages -----------------------------------------------------------------

    /// A watched request from start to end. `first`: what the watcher's side already has for
    /// the first origin check.
    pub async fn run_watched(
        &self,
        id: i64,
        wake: Arc<Wake>,
        first: FirstLook,
    ) -> Result<(), Halt> {
        let in_wait = InWait::new(&self.waiting);
        let verified = self.wait_for_origin(id, wake, first).await?;
        if let Some(d) = self.before_gather {
            tokio::time::sleep(d).await;
        }
        match self.gather(verified, in_wait).await? {
            Some(all) => self.proceed(all).await,
            None => Err(Halt::Ended), // carried by the request verified first
        }
    }

    /// Verified requests (one sync's, or the deferred ones of a passed period) to the end.
    pub async fn proceed(&self, verified: Verified) -> Result<(), Halt> {
        let paths = self.decide_paths(&verified.request_ids).await?;
        if self.cfg.cloudfront.dry_run {
            return self.dry_run(&verified.request_ids, &paths).await;
        }
        let granted = self.take_slot(verified).await?;
        let invalidated = self.invalidate(granted, paths).await?;
        self.complete(&invalidated).await
    }

    /// One HeadBucket per bucket this pipeline uses (the origin, the count bucket): each
    /// bucket's region, or why it does not answer.
    pub async fn reach_buckets(&self) -> Vec<(String, Result<String, AwsError>)> {
        let count = async {
            match self.ledger.mirror() {
                Some(m) => Some((m.bucket().to_owned(), m.handle().locate().await)),
                None => None,
            }
        };
        let (o, c) = tokio::join!(self.origin.reachable(), count);
        std::iter::once((self.origin.bucket().to_owned(), o))
            .chain(c)
            .collect()
    }

    /// `purgewatch purge`: no origin to wait for, the configured paths, the same quota.
    pub async fn run_manual(&self, id: i64, wait_completed: bool) -> Result<(), Halt> {
        // Stored with the request (`store_manual`).
        let paths = self.paths_of(id).await?;
        if self.cfg.cloudfront.dry_run {
            return self.dry_run(&[id], &paths).await;
        }
        let granted = self
            .take_slot(Verified {
                request_ids: vec![id],
            })
            .await?;
        let invalidated = self.invalidate(granted, paths).await?;
        if wait_completed {
            self.complete(&invalidated).await?;
        }
        Ok(())
    }

    /// Carries a request on from its stored state after a restart.
    pub async fn resume(&self, p: Pending, wake: Arc<Wake>) -> Result<(), Halt> {
        let ids = vec![p.id];
        match p.status {
            Status::WaitingForOrigin => self.run_watched(p.id, wake, FirstLook::default()).await,
            Status::WaitingForQuota => self.proceed(Verified { request_ids: ids }).await,
            Status::Invalidating => {
                let g = Granted {
                    request_ids: ids,
                    period: p.period.unwrap_or_default(),
                    caller_reference: p.caller_reference.unwrap_or_default(),
                };
                // Decided before the restart: as stored.
                let paths = self.paths_of(p.id).await?;
                let inv = self.invalidate(g, paths).await?;
                self.complete(&inv).await
            }
            Status::Invalidated => {
                let grant = p.caller_reference.unwrap_or_default();
                if let Some(inv) = p.invalidation_id {
                    // Invalidated before the `invalidations` table: its one row, as it was.
                    self.adopt(&grant, &inv).await?;
                }
                self.complete(&Invalidated {
                    request_ids: ids,
                    grant,
                })
                .await
            }
            // Deferred requests wait for the period loop; the rest are final.
            _ => Ok(()),
        }
    }

    /// A request invalidated by a version before several distributions: the row of its one
    /// invalidation (on the first distribution), unless it has rows already.
    async fn adopt(&self, grant: &str, invalidation_id: &str) -> Result<(), Halt> {
        let Some(cdn) = self.cdns.first() else {
            return Ok(());
        };
        let planned = vec![(cdn.distribution_id().to_owned(), grant.to_owned())];
        let (grant, site, inv) = (
            grant.to_owned(),
            self.cfg.site.clone(),
            invalidation_id.to_owned(),
        );
        self.store
            .quick(move |c| {
                if !invalidations::of_grant(c, &grant)?.is_empty() {
                    return Ok(());
                }
                let n = invalidations::plan(c, &grant, &site, &planned, 0)?;
                invalidations::set_taken(c, &grant, &n[0].distribution_id, &inv)
            })
            .await?;
        Ok(())
    }

    /// Deferred requests of passed periods, coalesced into one invalidation.
    pub async fn run_deferred(&self) -> Result<(), Halt> {
        let q = &self.cfg.quota;
        let current = quota::period_key(self.clock.now(), q.timezone, q.period);
        let site = self.cfg.site.clone();
        let ids = self
            .store
            .call(move |c| requests::deferred_before(c, &site, &current))
            .await?;
        if ids.is_empty() {
            return Ok(());
        }
        info!(requests = ?ids, "running deferred requests");
        self.proceed(Verified { request_ids: ids }).await
    }

    /// The clock every stage reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    // ---- the stages ----------------------------------------------------------------------

    /// Until S3 holds this write of every marker (see [`crate::verify`]).
    async fn wait_for_origin(
        &self,
        id: i64,
        wake: Arc<Wake>,
        first: FirstLook,
    ) -> Result<Verified, Halt> {
        let waiter = Waiter {
            store: &self.store,
            origin: &self.origin,
            config: &self.cfg.origin,
            root: &self.cfg.watch.root,
            site: &self.cfg.site,
            settle: self.cfg.watch.settle,
            token: &self.token,
        };
        waiter.wait(id, wake, first).await
    }

    /// One sync, one purge: requests whose origin checks pass within `settle` of each other
    /// share one invalidation and one quota slot. The first to pass opens a window of `settle`
    /// and carries every request that passes within it (`Some`, with all their ids); the others
    /// hand themselves to it (`None`). The window closes as soon as no other request of the
    /// site is in its origin wait (none can join): a lone marker is not held back by it. Each
    /// is counted in the wait (`in_wait`) until it is in the batch.
    async fn gather(&self, verified: Verified, in_wait: InWait) -> Result<Option<Verified>, Halt> {
        let window = self.cfg.watch.settle;
        if window.is_zero() {
            return Ok(Some(verified));
        }
        {
            let mut open = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(ids) = open.as_mut() {
                ids.extend(&verified.request_ids);
                info!(requests = ?verified.request_ids, lead = ids[0], "shares the invalidation of a request verified with it");
                return Ok(None); // `in_wait` ends here, once its ids are in
            }
            *open = Some(verified.request_ids);
        }
        drop(in_wait); // the window below waits for the others only
        let paused = self.window(window).await;
        let ids = self
            .batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        paused?;
        Ok(Some(Verified { request_ids: ids }))
    }

    /// Settles the paths to invalidate, before any quota is used: those listed in the markers,
    /// else the configured ones or, with `paths = "changed"`, the requests' changes collapsed
    /// under `max_paths`. A malformed marker list, or a batch CloudFront would refuse, fails the
    /// requests with the reason.
    async fn decide_paths(&self, ids: &[i64]) -> Result<Vec<String>, Halt> {
        // Requests sharing one invalidation (one sync, deferred ones) purge the union.
        let all = ids.to_vec();
        let (markers, changes, unknown) = self
            .store
            .quick(move |c| {
                let (mut markers, mut changes, mut unknown) = (Vec::new(), Vec::new(), None);
                for &id in &all {
                    markers.extend(markers::of_request(c, id)?.1);
                    let (ch, u) = changes::of_request(c, id)?;
                    changes.extend(ch);
                    unknown = unknown.or(u);
                }
                Ok((markers, changes, unknown))
            })
            .await?;
        let mut listed = Vec::new();
        let mut all_listed = !markers.is_empty();
        for m in &markers {
            // The bytes read at intake: the file may be anything by now (a FIFO, a symlink).
            match marker::path_list(m.body.as_deref()) {
                Ok(Some(p)) => listed.extend(p),
                Ok(None) => all_listed = false,
                Err(e) => {
                    let detail = format!("marker {}: {e}; nothing invalidated", m.rel);
                    return self.steps().end(ids, Status::Failed, detail).await;
                }
            }
        }
        let (mut paths, why) = if all_listed && !listed.is_empty() {
            (listed, "listed in the marker".to_owned())
        } else {
            let (base, why) = match &self.cfg.cloudfront.paths {
                Paths::Fixed(p) => (p.clone(), "configured".to_owned()),
                Paths::Changed => match unknown {
                    Some(u) => (vec!["/*".into()], format!("changes unknown ({u}): /*")),
                    None if changes.is_empty() => {
                        (vec!["/*".into()], "no changes recorded: /*".to_owned())
                    }
                    None => {
                        let set: Vec<paths::Change> = changes
                            .iter()
                            .map(|(key, deleted)| paths::Change {
                                key,
                                deleted: *deleted,
                            })
                            .collect();
                        let max = self.cfg.cloudfront.max_paths;
                        let limits = paths::Limits {
                            max_paths: max,
                            max_wildcards: max.min(cloudfront::limits::WILDCARDS_IN_PROGRESS),
                        };
                        let why = format!("{} change(s) collapsed", changes.len());
                        (paths::collapse(&set, &limits), why)
                    }
                },
            };
            (base.into_iter().chain(listed).collect(), why)
        };
        paths.sort();
        paths.dedup();
        if paths.iter().any(|p| p == "/*") {
            paths = vec!["/*".into()];
        }
        // Where the site root is served: the distribution's origin path and the bucket prefix.
        let paths = paths::under_prefix(&self.cfg.cloudfront.path_prefix, paths);
        // A batch CloudFront would refuse must not spend a slot first.
        if let Err(e) = paths::check_batch(&paths) {
            let detail = format!(
                "CloudFront would refuse the paths ({why}): {e}; nothing invalidated, no quota used"
            );
            return self.steps().end(ids, Status::Failed, detail).await;
        }
        let detail = format!("{} path(s), {why}", paths.len());
        let (ids, stored) = (ids.to_vec(), paths.clone());
        self.store
            .quick(move |c| requests::set_paths(c, &ids, &stored, &detail))
            .await?;
        Ok(paths)
    }

    /// The paths stored with request `id` (a manual purge's, or decided before a restart).
    async fn paths_of(&self, id: i64) -> Result<Vec<String>, Halt> {
        Ok(self.store.quick(move |c| requests::paths_of(c, id)).await?)
    }

    /// Shadow mode (`[cloudfront] dry_run`): what the grant and the invalidation would have
    /// been, recorded; the count object is read, never written, and nothing is sent.
    async fn dry_run(&self, ids: &[i64], paths: &[String]) -> Result<(), Halt> {
        let mut retry = Retry::new(retry::aws_delay);
        let (period, used, max) = loop {
            match self.ledger.peek().await {
                Ok(seen) => break seen,
                Err(GrantError::Store(e)) => return Err(Halt::Store(e)),
                Err(GrantError::Mirror(e)) => {
                    let msg = format!("dry run: count bucket: {e}; retrying");
                    self.steps().wait_out(ids, &mut retry, msg).await?;
                }
            }
        };
        let slot = if used < max {
            format!("slot {} of {max} in {period}", used + 1)
        } else {
            format!("none: quota exhausted, {used} of {max} used in {period}")
        };
        let on = match self.cfg.cloudfront.distribution_ids.as_slice() {
            [_] => String::new(),
            many => format!(" on {}", many.join(", ")),
        };
        let detail = format!(
            "dry run: would invalidate {}{on} with {slot}; nothing sent, no slot taken",
            paths.join(" ")
        );
        info!(requests = ?ids, %detail, "dry run");
        let ids = ids.to_vec();
        self.store
            .quick(move |c| requests::advance_all(c, &ids, Status::DryRun, &detail))
            .await?;
        Ok(())
    }

    /// A quota slot for the requests, or they end as exhausted / deferred. Fails closed: while
    /// the count bucket cannot confirm a slot, the requests wait and retry.
    async fn take_slot(&self, verified: Verified) -> Result<Granted, Halt> {
        let ids = verified.request_ids;
        let mut retry = Retry::new(retry::aws_delay);
        loop {
            match self.ledger.take_slot(&ids).await {
                Ok(Some(g)) => {
                    info!(requests = ?g.request_ids, period = %g.period, "quota slot granted");
                    return Ok(g);
                }
                Ok(None) => return Err(Halt::Ended),
                Err(GrantError::Store(e)) => return Err(Halt::Store(e)),
                Err(GrantError::Mirror(e)) => {
                    if retry.log(&e.to_string()) {
                        warn!(requests = ?ids, error = %e, "cannot confirm a quota slot");
                    }
                    let msg = format!("count bucket: {e}; no slot without it, retrying");
                    self.steps().wait_out(&ids, &mut retry, msg).await?;
                }
            }
        }
    }

    /// The CloudFront stage ([`crate::invalidate`]) for this site's distributions.
    fn sender(&self) -> Sender<'_> {
        Sender {
            steps: self.steps(),
            cdns: &self.cdns,
            site: &self.cfg.site,
            cfg: &self.cfg.cloudfront,
            origin: &self.origin,
        }
    }

    pub async fn invalidate(&self, g: Granted, paths: Vec<String>) -> Result<Invalidated, Halt> {
        self.sender().invalidate(g, paths).await
    }

    async fn complete(&self, inv: &Invalidated) -> Result<(), Halt> {
        self.sender().complete(inv).await
    }

    // ---- helpers -------------------------------------------------------------------------

    /// [`Pipeline::gather`]'s window: `d`, or until no request is in its origin wait.
    async fn window(&self, d: Duration) -> Result<(), Halt> {
        let end = Instant::now() + d;
        let (count, left) = &*self.waiting;
        loop {
            let notified = left.notified();
            if count.load(Ordering::SeqCst) == 0 {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep_until(end) => return Ok(()),
                _ = notified => {}
                _ = self.token.cancelled() => return Err(Halt::Shutdown),
            }
        }
    }

    fn steps(&self) -> Steps<'_> {
        Steps {
            store: &self.store,
            token: &self.token,
        }
    }
}

/// A request by hand: stored (no marker, the configured paths), then [`Pipeline::run_manual`].
pub async fn store_manual(
    store: &Store,
    site: &str,
    paths: Vec<String>,
) -> Result<i64, StoreError> {
    let site = site.to_owned();
    store
        .call(move |c| requests::insert(c, &site, Source::Manual, None, &paths, "asked by hand"))
        .await
}
