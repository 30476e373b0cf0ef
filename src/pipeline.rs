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
use crate::knobs::crash_point;
use crate::marker;
use crate::origin::Origin;
use crate::paths;
use crate::quota::ledger::{GrantError, Ledger};
use crate::quota::{self, mirror::Mirror};
use crate::retry::{self, Retry};
use crate::store::{changes, markers, requests, Pending, Source, Status, Store, StoreError};
use crate::verify::{Waiter, Wake};

pub use crate::quota::ledger::Granted;
pub use crate::verify::{FirstLook, Verified};

/// CloudFront accepted the invalidation.
#[derive(Debug, Clone)]
pub struct Invalidated {
    pub request_ids: Vec<i64>,
    pub invalidation_id: String,
}

/// Everything a request needs: config, database, the AWS seams and the ledger.
#[derive(Clone)]
pub struct Pipeline {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub origin: Origin,
    pub ledger: Ledger,
    pub cdn: Cdn,
    clock: Clock,
    token: CancellationToken,
    /// The ids gathered into the invalidation of the request verified first ([`Pipeline::gather`]).
    batch: Arc<Mutex<Option<Vec<i64>>>>,
    /// Requests of this site in their origin wait now, and a signal when one leaves it: the
    /// window of [`Pipeline::gather`] waits only while one of them could still join.
    waiting: Arc<(AtomicUsize, Notify)>,
}

/// Counts a request in its origin wait for as long as it lives.
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
            cdn: Cdn::new(
                clients.cloudfront.clone(),
                cfg.cloudfront.distribution_id.clone(),
            ),
            cfg,
            store,
            clock,
            token,
            batch: Default::default(),
            waiting: Default::default(),
        })
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
        let verified = self.wait_for_origin(id, wake, first).await?;
        match self.gather(verified).await? {
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
            Status::Invalidated => match p.invalidation_id {
                Some(inv) => {
                    self.complete(&Invalidated {
                        request_ids: ids,
                        invalidation_id: inv,
                    })
                    .await
                }
                None => Ok(()),
            },
            // Deferred requests wait for the period loop; the rest are final.
            _ => Ok(()),
        }
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
        let _in_wait = InWait::new(&self.waiting);
        waiter.wait(id, wake, first).await
    }

    /// One sync, one purge: requests whose origin checks pass within `settle` of each other
    /// share one invalidation and one quota slot. The first to pass opens a window of `settle`
    /// and carries every request that passes within it (`Some`, with all their ids); the others
    /// hand themselves to it (`None`). The window closes as soon as no other request of the
    /// site is in its origin wait (none can join): a lone marker is not held back by it.
    pub async fn gather(&self, verified: Verified) -> Result<Option<Verified>, Halt> {
        let window = self.cfg.watch.settle;
        if window.is_zero() {
            return Ok(Some(verified));
        }
        {
            let mut open = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(ids) = open.as_mut() {
                ids.extend(&verified.request_ids);
                info!(requests = ?verified.request_ids, lead = ids[0], "shares the invalidation of a request verified with it");
                return Ok(None);
            }
            *open = Some(verified.request_ids);
        }
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
                    return self.end(ids, Status::Failed, detail).await;
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
            return self.end(ids, Status::Failed, detail).await;
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
                    self.wait_out(ids, &mut retry, msg).await?;
                }
            }
        };
        let slot = if used < max {
            format!("slot {} of {max} in {period}", used + 1)
        } else {
            format!("none: quota exhausted, {used} of {max} used in {period}")
        };
        let detail = format!(
            "dry run: would invalidate {} with {slot}; nothing sent, no slot taken",
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
                    self.wait_out(&ids, &mut retry, msg).await?;
                }
            }
        }
    }

    /// Sends CreateInvalidation until CloudFront takes it. The same batch with the same stored
    /// CallerReference is sent every time (after a failed attempt, after a restart): CloudFront
    /// answers a repeat with the invalidation it made the first time, so nothing is paid twice.
    pub async fn invalidate(&self, g: Granted, paths: Vec<String>) -> Result<Invalidated, Halt> {
        let mut retry = Retry::new(retry::aws_delay);
        loop {
            let sent = self.cdn.create(&paths, &g.caller_reference).await;
            crash_point("after_invalidation_sent");
            match sent {
                Ok(inv) => {
                    let detail = format!(
                        "invalidation {inv} created for {} ({})",
                        paths.join(" "),
                        g.caller_reference
                    );
                    info!(requests = ?g.request_ids, invalidation = %inv, "invalidated");
                    let (ids, inv2) = (g.request_ids.clone(), inv.clone());
                    self.store
                        .quick(move |c| requests::set_invalidation_id(c, &ids, &inv2, &detail))
                        .await?;
                    crash_point("after_invalidation_stored");
                    return Ok(Invalidated {
                        request_ids: g.request_ids,
                        invalidation_id: inv,
                    });
                }
                Err(AwsError::Busy(e)) => {
                    // CloudFront's limit on paths in progress: wait for the distribution's own
                    // invalidations rather than for a blind backoff.
                    let waiting = self.cdn.in_progress().await.unwrap_or_else(|e2| {
                        warn!(error = %e2, "cannot list the invalidations in progress");
                        Vec::new()
                    });
                    if waiting.is_empty() {
                        self.wait_out(&g.request_ids, &mut retry, format!("CloudFront: {e}"))
                            .await?;
                        continue;
                    }
                    let shown: Vec<&str> = waiting.iter().take(10).map(String::as_str).collect();
                    let msg = format!(
                        "CloudFront: too many invalidations in progress on {}; waiting for {} of them to complete: {}",
                        self.cdn.distribution_id(),
                        waiting.len(),
                        shown.join(", ")
                    );
                    if retry.log(&msg) {
                        warn!(requests = ?g.request_ids, %msg, "invalidation waits");
                    }
                    if retry.failed(&msg) {
                        self.note(&g.request_ids, msg).await?;
                    }
                    self.until_one_completes(&waiting).await?;
                }
                Err(e) if e.is_transient() => {
                    if retry.log(&e.to_string()) {
                        warn!(requests = ?g.request_ids, error = %e, "invalidation not accepted yet");
                    }
                    self.wait_out(&g.request_ids, &mut retry, format!("CloudFront: {e}"))
                        .await?;
                }
                Err(e) => {
                    // The slot stays used: the count object already says so, and failing closed
                    // never exceeds the quota.
                    let detail = format!("CloudFront refused: {e}");
                    warn!(requests = ?g.request_ids, %detail, "invalidation failed");
                    return self.end(&g.request_ids, Status::Failed, detail).await;
                }
            }
        }
    }

    /// Polls GetInvalidation at a modest interval, for at most an hour, until CloudFront says
    /// Completed. An invalidation still running then stays `invalidated`.
    async fn complete(&self, inv: &Invalidated) -> Result<(), Halt> {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let mut delay = Duration::from_secs(0);
        while Instant::now() < deadline {
            self.pause(delay).await?;
            delay = (delay * 2).clamp(Duration::from_secs(5), Duration::from_secs(60));
            match self.cdn.status(&inv.invalidation_id).await {
                Ok(s) if cloudfront::is_completed(&s) => {
                    let detail = format!("invalidation {} completed", inv.invalidation_id);
                    let ids = inv.request_ids.clone();
                    self.store
                        .quick(move |c| requests::advance_all(c, &ids, Status::Completed, &detail))
                        .await?;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => warn!(invalidation = %inv.invalidation_id, error = %e, "status unknown"),
            }
        }
        let msg = "not completed after an hour of polling; CloudFront still works on it";
        self.note(&inv.request_ids, msg.into()).await
    }

    // ---- helpers -------------------------------------------------------------------------

    /// Sleeps unless the daemon stops first.
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

    async fn pause(&self, d: Duration) -> Result<(), Halt> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.token.cancelled() => Err(Halt::Shutdown),
        }
    }

    /// One failed attempt of a stage: noted on the requests once per distinct reason, then the
    /// stage's delay.
    async fn wait_out(&self, ids: &[i64], retry: &mut Retry, why: String) -> Result<(), Halt> {
        if retry.failed(&why) {
            self.note(ids, why).await?;
        }
        self.pause(retry.delay()).await
    }

    async fn note(&self, ids: &[i64], detail: String) -> Result<(), Halt> {
        let ids = ids.to_vec();
        Ok(self
            .store
            .quick(move |c| requests::note(c, &ids, &detail))
            .await?)
    }

    /// Ends (or parks) the requests in `to`, recorded: always `Err(Halt::Ended)` after.
    async fn end<T>(&self, ids: &[i64], to: Status, detail: String) -> Result<T, Halt> {
        let ids = ids.to_vec();
        self.store
            .quick(move |c| requests::advance_all(c, &ids, to, &detail))
            .await?;
        Err(Halt::Ended)
    }

    /// Polls GetInvalidation on `ids` (2 s, doubling to 60 s) until one of them has completed,
    /// for at most an hour.
    async fn until_one_completes(&self, ids: &[String]) -> Result<(), Halt> {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let mut delay = Duration::from_secs(2);
        while Instant::now() < deadline {
            self.pause(delay).await?;
            delay = (delay * 2).min(Duration::from_secs(60));
            for id in ids {
                if let Ok(s) = self.cdn.status(id).await {
                    if cloudfront::is_completed(&s) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
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
