//! One readable path per request: verified → granted → invalidated → recorded.
//!
//! Each stage stores its outcome before the next begins, so a restart resumes from
//! `requests.status` (see [`Pipeline::resume`]). A stage ends in one of three ways: it hands its
//! typed result to the next, the request ends with a recorded reason ([`Halt::Ended`]), or the
//! daemon is stopping and the request stays parked where it is ([`Halt::Shutdown`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rusqlite::TransactionBehavior;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::aws::{AwsError, Clients};
use crate::cdn::{self, Cdn};
use crate::config::{Config, Paths, WaitFor, WhenExhausted};
use crate::origin::{self, Check, Origin};
use crate::paths;
use crate::quota::{self, Mirror, MirrorError};
use crate::store::{self, MarkerSeen, Status, Store, StoreError};

/// Why a request stopped moving.
#[derive(Debug)]
pub enum Halt {
    /// The daemon is stopping: the request is parked in its stored state and resumes at start.
    Shutdown,
    /// The request reached a final or parked state, recorded in the history.
    Ended,
    /// The database failed; nothing more can be recorded.
    Store(StoreError),
}

impl From<StoreError> for Halt {
    fn from(e: StoreError) -> Halt {
        Halt::Store(e)
    }
}

/// S3 holds every marker of the request.
#[derive(Debug)]
pub struct Verified {
    pub request_ids: Vec<i64>,
}

/// A quota slot is reserved (locally and in the count bucket) for these requests.
#[derive(Debug, Clone)]
pub struct Granted {
    pub request_ids: Vec<i64>,
    pub period: String,
    pub caller_reference: String,
}

/// CloudFront accepted the invalidation.
#[derive(Debug, Clone)]
pub struct Invalidated {
    pub request_ids: Vec<i64>,
    pub invalidation_id: String,
}

/// Everything a request needs: config, database and the three AWS seams.
#[derive(Clone)]
pub struct Pipeline {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub origin: Origin,
    pub mirror: Option<Mirror>,
    pub cdn: Cdn,
    host: String,
    instance: String,
    token: CancellationToken,
    /// The ids gathered into the invalidation of the request verified first (see [`Pipeline::gather`]).
    batch: Arc<std::sync::Mutex<Option<Vec<i64>>>>,
}

/// Retries of AWS calls after the first: 1 s doubling to 60 s, with jitter so a fleet that
/// lost the same endpoint does not come back in lockstep.
fn retry_delay(attempt: u32) -> Duration {
    let base = 1000u64.saturating_mul(1 << attempt.min(6)).min(60_000);
    Duration::from_millis(base / 2 + fastrand::u64(..=base / 2))
}

impl Pipeline {
    pub async fn new(
        cfg: Arc<Config>,
        store: Store,
        token: CancellationToken,
    ) -> Result<Pipeline, StoreError> {
        let clients = Clients::new(&cfg.aws).await;
        let instance = store.call(|c| Store::instance_id(c)).await?;
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let origin = clients.bucket(&cfg.origin.bucket, cfg.origin.region.as_deref());
        Ok(Pipeline {
            origin: Origin::new(origin, cfg.origin.prefix.clone()),
            mirror: cfg
                .quota
                .count_bucket
                .as_ref()
                .map(|b| Mirror::new(clients.bucket(b, cfg.quota.count_bucket_region.as_deref()))),
            cdn: Cdn::new(clients.cloudfront, cfg.cloudfront.distribution_id.clone()),
            cfg,
            store,
            host,
            instance,
            token,
            batch: Default::default(),
        })
    }

    /// Sleeps unless the daemon stops first.
    async fn pause(&self, d: Duration) -> Result<(), Halt> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.token.cancelled() => Err(Halt::Shutdown),
        }
    }

    async fn note(&self, id: i64, detail: String) -> Result<(), Halt> {
        Ok(self
            .store
            .quick(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                store::note(&tx, id, &detail)?;
                Ok(tx.commit()?)
            })
            .await?)
    }

    async fn end(&self, ids: Vec<i64>, to: Status, detail: String) -> Result<(), Halt> {
        self.store
            .quick(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                for &id in &ids {
                    store::transition(&tx, id, to, &detail)?;
                }
                Ok(tx.commit()?)
            })
            .await?;
        Ok(())
    }

    /// A watched request from start to end: settle, origin wait, then [`Pipeline::proceed`].
    /// `first`: what the watcher's side already has for the first origin check (a stale
    /// generation only costs a second look).
    pub async fn run_watched(
        &self,
        id: i64,
        wake: Arc<Notify>,
        first: FirstLook,
    ) -> Result<Invalidated, Halt> {
        let verified = self.verify(id, wake, first).await?;
        match self.gather(verified).await? {
            Some(all) => self.proceed(all).await,
            None => Err(Halt::Ended), // carried by the request verified first
        }
    }

    /// From verified (or a manual request) to a completed invalidation.
    pub async fn proceed(&self, verified: Verified) -> Result<Invalidated, Halt> {
        self.decide_paths(&verified.request_ids).await?;
        let granted = self.grant(verified).await?;
        let invalidated = self.invalidate(granted).await?;
        self.complete(&invalidated).await?;
        Ok(invalidated)
    }

    /// Waits until S3 holds this write of every marker of the request (see [`origin`]'s proof
    /// rules). A marker write merged in meanwhile (signalled on `wake`) restarts the settle
    /// window and the wait.
    pub async fn verify(
        &self,
        id: i64,
        wake: Arc<Notify>,
        first: FirstLook,
    ) -> Result<Verified, Halt> {
        let (mut first, mut early) = (first.stored, first.head);
        let settle = self.cfg.watch.settle;
        let timeout = self.cfg.origin.wait_timeout;
        let root = &self.cfg.watch.root;
        'wait: loop {
            // Settle: writes closer together than `settle` are one request. A zero settle
            // skips the timer: tokio's is millisecond-grained, so even sleep(0) costs ~1 ms.
            while !settle.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(settle) => break,
                    _ = wake.notified() => continue,
                    _ = self.token.cancelled() => return Err(Halt::Shutdown),
                }
            }
            let deadline = Instant::now() + timeout;
            let mut last_noted = String::new();
            let mut cache = origin::ChangeCache::default();
            for attempt in 0u32.. {
                let (generation, markers) = match first.take() {
                    Some(f) => f,
                    None => {
                        self.store
                            .quick(move |c| store::request_markers(c, id))
                            .await?
                    }
                };
                let mut not_yet = None;
                let mut objects = Vec::with_capacity(markers.len());
                let mut methods: Vec<String> = Vec::new();
                for m in &markers {
                    let key = self.origin.key(&m.rel);
                    let early = match early.take() {
                        Some(e) => e.check(root, m).await,
                        None => None,
                    };
                    let checked = match early {
                        Some(c) => c,
                        None => self.origin.check(root, m).await,
                    };
                    let why = match checked {
                        Ok(Check::Holds { by, object }) => {
                            let by = by.to_string();
                            if !methods.contains(&by) {
                                methods.push(by);
                            }
                            objects.push((m.rel.clone(), object));
                            continue;
                        }
                        Ok(Check::Missing) => {
                            format!("s3://{}/{key} not there yet", self.origin.bucket())
                        }
                        Ok(Check::Differs(d)) => {
                            format!("s3://{}/{key} differs: {d}", self.origin.bucket())
                        }
                        Err(e) => e.to_string(),
                    };
                    not_yet = Some(why);
                    break;
                }
                let mut checked = String::new();
                if not_yet.is_none() && self.cfg.origin.wait_for == WaitFor::Changes {
                    let (changes, _) = self
                        .store
                        .quick(move |c| store::request_changes(c, id))
                        .await?;
                    match self.origin.check_changes(root, &changes, &mut cache).await {
                        Ok(differs) if differs.is_empty() => {
                            checked = format!(" and {} change(s)", changes.len());
                        }
                        Ok(differs) => {
                            let first: Vec<&str> =
                                differs.iter().take(20).map(String::as_str).collect();
                            not_yet = Some(format!(
                                "{} of {} changes not in S3 yet: {}",
                                differs.len(),
                                changes.len(),
                                first.join(", ")
                            ));
                        }
                        Err(e) => not_yet = Some(e.to_string()),
                    }
                }
                let Some(why) = not_yet else {
                    let by = methods.join(", ");
                    let detail = format!(
                        "S3 holds {} marker(s){checked} after {} check(s), verified by {by}",
                        markers.len(),
                        attempt + 1
                    );
                    let ok = self
                        .store
                        .quick(move |c| {
                            store::mark_verified(c, id, generation, &by, &objects, &detail)
                        })
                        .await?;
                    if ok {
                        crash_point("after_origin_verified");
                        info!(request = id, "origin holds the marker");
                        return Ok(Verified {
                            request_ids: vec![id],
                        });
                    }
                    continue 'wait; // a newer write came in while we looked
                };
                let now = Instant::now();
                if now >= deadline {
                    let detail = format!(
                        "gave up after {}: {why}",
                        humantime::format_duration(timeout)
                    );
                    warn!(request = id, %detail, "origin timeout");
                    self.end(vec![id], Status::OriginTimeout, detail).await?;
                    return Err(Halt::Ended);
                }
                // Record what we wait for once per distinct reason, not once per poll; an AWS
                // failure at once, a marker not uploaded yet only if the first look missed it.
                let reason = why.split(':').next().unwrap_or("").to_owned();
                let failure = why.ends_with("(will retry)") || !why.starts_with("s3://");
                if (attempt > 0 || failure) && reason != last_noted {
                    self.note(id, format!("waiting: {why}")).await?;
                    last_noted = reason;
                }
                let delay = origin::backoff(attempt + 1).min(deadline - now);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wake.notified() => continue 'wait,
                    _ = self.token.cancelled() => return Err(Halt::Shutdown),
                }
            }
        }
    }

    /// One sync, one purge: requests whose origin checks pass within `settle` of each other
    /// share one invalidation and one quota slot. The first to pass opens a window of `settle`
    /// and carries every request that passes within it (`Some`, with all their ids); the others
    /// hand themselves to it (`None`). A request still waiting for S3 holds no one back.
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
        let paused = self.pause(window).await;
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
    /// else the configured ones or, with `paths = "changed"`, the request's changes collapsed
    /// under `max_paths`. A malformed marker list fails the request with its line number.
    pub async fn decide_paths(&self, ids: &[i64]) -> Result<(), Halt> {
        let root = self.cfg.watch.root.clone();
        // Requests sharing one invalidation (one sync, deferred ones) purge the union.
        let all = ids.to_vec();
        let (markers, changes, unknown) = self
            .store
            .quick(move |c| {
                let (mut markers, mut changes, mut unknown) = (Vec::new(), Vec::new(), None);
                for &id in &all {
                    markers.extend(store::request_markers(c, id)?.1);
                    let (ch, u) = store::request_changes(c, id)?;
                    changes.extend(ch);
                    unknown = unknown.or(u);
                }
                Ok((markers, changes, unknown))
            })
            .await?;
        let mut listed = Vec::new();
        let mut all_listed = !markers.is_empty();
        for m in &markers {
            match read_marker_list(&root.join(&m.rel)) {
                Ok(Some(p)) => listed.extend(p),
                Ok(None) => all_listed = false,
                Err(e) => {
                    let detail = format!("marker {}: {e}; nothing invalidated", m.rel);
                    self.end(ids.to_vec(), Status::Failed, detail).await?;
                    return Err(Halt::Ended);
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
                            max_wildcards: max.min(15),
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
        // A batch CloudFront would refuse must not spend a slot first.
        if let Err(e) = paths::check_batch(&paths) {
            let detail = format!("CloudFront would refuse the paths ({why}): {e}; nothing invalidated, no quota used");
            self.end(ids.to_vec(), Status::Failed, detail).await?;
            return Err(Halt::Ended);
        }
        let detail = format!("{} path(s), {why}", paths.len());
        let ids = ids.to_vec();
        self.store
            .quick(move |c| store::set_paths(c, &ids, &paths, &detail))
            .await?;
        Ok(())
    }

    /// Takes a quota slot for the requests, or ends them as exhausted / deferred. Fails closed:
    /// while the count bucket cannot confirm a slot, the requests wait and retry.
    pub async fn grant(&self, verified: Verified) -> Result<Granted, Halt> {
        let ids = verified.request_ids;
        let mut last = String::new();
        for attempt in 0u32.. {
            match self.try_grant(&ids).await {
                Ok(Some(g)) => {
                    info!(requests = ?g.request_ids, period = %g.period, "quota slot granted");
                    return Ok(g);
                }
                Ok(None) => return Err(Halt::Ended),
                Err(GrantError::Store(e)) => return Err(Halt::Store(e)),
                Err(GrantError::Mirror(e)) => {
                    let msg = format!("count bucket: {e}; no slot without it, retrying");
                    warn!(requests = ?ids, error = %e, "cannot confirm a quota slot");
                    self.note_once(&ids, &mut last, msg, attempt).await?;
                    self.pause(retry_delay(attempt)).await?;
                }
            }
        }
        unreachable!("the retry loop only ends by returning")
    }

    /// One attempt. The count object is read (unless this database knows it), a slot is
    /// decided and journalled on the request in one SQLite write transaction, then written to
    /// the count bucket conditionally. The condition keeps out everyone else: other servers, a
    /// `purgewatch purge`, a second daemon on the same database, another request of this one.
    /// A lost race reads the object again.
    async fn try_grant(&self, ids: &[i64]) -> Result<Option<Granted>, GrantError> {
        let q = &self.cfg.quota;
        let mut reread = false;
        for _ in 0..16 {
            let now = Utc::now();
            let period = quota::period_key(now, q.timezone, q.period);
            let remote = match &self.mirror {
                None => None,
                Some(m) => {
                    let (p, max) = (period.clone(), q.max);
                    let known = if reread {
                        None
                    } else {
                        self.store
                            .quick(move |c| Ok(store::counter(c, &p)?.known_remote(max)))
                            .await?
                    };
                    Some(match known {
                        Some(r) => r,
                        None => m.read(&period).await?,
                    })
                }
            };
            let decided = {
                let (this, ids, p, r) =
                    (self.clone(), ids.to_vec(), period.clone(), remote.clone());
                self.store
                    .quick(move |c| this.decide(c, &ids, &p, r.as_ref(), now))
                    .await?
            };
            let (slot, g) = match decided {
                Decided::Ended => return Ok(None),
                Decided::Granted(g) => return Ok(Some(g)),
                Decided::Reserved(slot, g) => (slot, g),
            };
            crash_point("after_slot_reserved");
            let (Some(m), Some(r)) = (&self.mirror, &remote) else {
                unreachable!("a slot is reserved only to be written to the count bucket")
            };
            let etag = match m
                .write(&period, slot, r.etag.as_deref(), &g.caller_reference)
                .await
            {
                Ok(etag) => etag,
                Err(MirrorError::Conflict) => {
                    reread = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            crash_point("after_count_written");
            let this = self.clone();
            let g2 = g.clone();
            self.store
                .quick(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let mut local = store::counter(&tx, &g2.period)?;
                    local.remote_count = Some(slot);
                    local.remote_etag = etag.clone();
                    this.commit_grant(tx, local, g2.clone(), slot, "")
                })
                .await?;
            return Ok(Some(g));
        }
        Err(GrantError::Mirror(MirrorError::Aws(AwsError::transient(
            "the count object kept changing under us",
        ))))
    }

    /// Phase 1, one write transaction: which requests are still to grant, and whether there is a
    /// slot for them. A slot to be written to the count bucket is journalled on the request
    /// first, so a crash in between is recognised at restart.
    fn decide(
        &self,
        conn: &mut rusqlite::Connection,
        ids: &[i64],
        period: &str,
        remote: Option<&quota::Remote>,
        now: chrono::DateTime<Utc>,
    ) -> Result<Decided, StoreError> {
        let q = &self.cfg.quota;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have moved these requests on (a resumed manual purge, say).
        let live = store::grantable(&tx, ids)?;
        let Some(&lead) = live.first() else {
            return Ok(Decided::Ended);
        };
        let (reserved, reference) = store::reservation(&tx, lead)?;
        // Made once and journalled with the reservation: a restart must recognise the count
        // object it wrote by this name, and send CloudFront the same reference.
        let caller_reference = reference.unwrap_or_else(|| {
            cdn::caller_reference(&self.host, &self.instance, lead, now.timestamp_millis())
        });
        let g = Granted {
            request_ids: live,
            period: period.to_owned(),
            caller_reference,
        };
        let mut local = store::counter(&tx, period)?;
        let own = reserved.filter(|(p, _)| p == period).map(|(_, slot)| slot);
        if let Some(r) = remote {
            local.remote_count = Some(r.count);
            local.remote_etag = r.etag.clone();
            // We crashed after our count-object write landed: the object still names us.
            if own == Some(r.count) && r.writer.as_deref() == Some(g.caller_reference.as_str()) {
                let slot = r.count;
                return self.commit_grant(tx, local, g, slot, " (written before a restart)");
            }
        }
        // The local count holds confirmed slots only: a reservation whose write lost a race
        // (or never happened) must not make the next attempt skip a slot.
        let base = local.count.max(remote.map_or(0, |r| r.count));
        if base >= q.max {
            local.count = local.count.max(base);
            store::set_counter(&tx, period, &local)?;
            let (to, detail) = match q.when_exhausted {
                WhenExhausted::Skip => (
                    Status::QuotaExhausted,
                    format!("quota exhausted: {base} of {} used in {period}", q.max),
                ),
                WhenExhausted::Defer => (
                    Status::Deferred,
                    format!(
                        "quota exhausted: {base} of {} used in {period}; deferred to the next period",
                        q.max
                    ),
                ),
            };
            for &id in &g.request_ids {
                store::set_period(&tx, id, period)?;
                store::transition(&tx, id, to, &detail)?;
            }
            tx.commit()?;
            warn!(requests = ?g.request_ids, %detail, "no slot");
            return Ok(Decided::Ended);
        }
        let slot = base + 1;
        if remote.is_none() {
            // No count bucket: the local reservation is the grant, in the same transaction.
            let granted = self.commit_grant(tx, local, g, slot, "");
            crash_point("after_slot_reserved");
            return granted;
        }
        store::reserve(&tx, lead, period, slot, &g.caller_reference)?;
        tx.commit()?;
        Ok(Decided::Reserved(slot, g))
    }

    /// Counts `slot` as used and moves the requests to `invalidating`, in `tx`.
    fn commit_grant(
        &self,
        tx: rusqlite::Transaction<'_>,
        mut local: store::Counter,
        g: Granted,
        slot: u32,
        how: &str,
    ) -> Result<Decided, StoreError> {
        local.count = local.count.max(slot);
        store::set_counter(&tx, &g.period, &local)?;
        let mirrored = match &self.mirror {
            Some(m) => format!(
                ", s3://{}/{} = {slot}",
                m.bucket(),
                quota::object_key(&g.period)
            ),
            None => String::new(),
        };
        let detail = format!(
            "slot {slot} of {} in {}{mirrored}{how}",
            self.cfg.quota.max, g.period
        );
        store::grant(&tx, &g.request_ids, &g.period, &g.caller_reference, &detail)?;
        tx.commit()?;
        Ok(Decided::Granted(g))
    }

    /// Sends CreateInvalidation until CloudFront takes it. The same batch with the same stored
    /// CallerReference is sent every time (after a failed attempt, after a restart): CloudFront
    /// answers a repeat with the invalidation it made the first time, so nothing is paid twice.
    pub async fn invalidate(&self, g: Granted) -> Result<Invalidated, Halt> {
        let first = g.request_ids[0];
        let paths = self.store.quick(move |c| store::paths_of(c, first)).await?;
        let mut last = String::new();
        for attempt in 0u32.. {
            let result = self
                .cdn
                .create(&paths, &g.caller_reference)
                .await
                .inspect(|_| crash_point("after_invalidation_sent"));
            match result {
                Ok(inv) => {
                    let detail = format!(
                        "invalidation {inv} created for {} ({})",
                        paths.join(" "),
                        g.caller_reference
                    );
                    info!(requests = ?g.request_ids, invalidation = %inv, "invalidated");
                    let ids = g.request_ids.clone();
                    let inv2 = inv.clone();
                    self.store
                        .quick(move |c| store::set_invalidation_id(c, &ids, &inv2, &detail))
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
                    let waiting = match self.cdn.in_progress().await {
                        Ok(ids) if !ids.is_empty() => ids,
                        Ok(_) => Vec::new(),
                        Err(e2) => {
                            warn!(error = %e2, "cannot list the invalidations in progress");
                            Vec::new()
                        }
                    };
                    let msg = if waiting.is_empty() {
                        format!("CloudFront: {e}")
                    } else {
                        let shown: Vec<&str> =
                            waiting.iter().take(10).map(String::as_str).collect();
                        format!(
                            "CloudFront: too many invalidations in progress on {}; waiting for {} of them to complete: {}",
                            self.cdn.distribution_id(),
                            waiting.len(),
                            shown.join(", ")
                        )
                    };
                    warn!(requests = ?g.request_ids, %msg, "invalidation waits");
                    self.note_once(&g.request_ids, &mut last, msg, attempt)
                        .await?;
                    if waiting.is_empty() {
                        self.pause(retry_delay(attempt)).await?;
                    } else {
                        self.until_one_completes(&waiting).await?;
                    }
                }
                Err(e) if e.is_transient() => {
                    warn!(requests = ?g.request_ids, error = %e, "invalidation not accepted yet");
                    let msg = format!("CloudFront: {e}");
                    self.note_once(&g.request_ids, &mut last, msg, attempt)
                        .await?;
                    self.pause(retry_delay(attempt)).await?;
                }
                Err(e) => {
                    // The slot stays used: the count object already says so, and failing closed
                    // never exceeds the quota.
                    let detail = format!("CloudFront refused: {e}");
                    warn!(requests = ?g.request_ids, %detail, "invalidation failed");
                    self.end(g.request_ids, Status::Failed, detail).await?;
                    return Err(Halt::Ended);
                }
            }
        }
        unreachable!("the retry loop only ends by returning")
    }

    /// Notes `msg` on the requests when it differs from the last note (and every 20th time).
    async fn note_once(
        &self,
        ids: &[i64],
        last: &mut String,
        msg: String,
        attempt: u32,
    ) -> Result<(), Halt> {
        if msg != *last || attempt % 20 == 19 {
            for &id in ids {
                self.note(id, msg.clone()).await?;
            }
            *last = msg;
        }
        Ok(())
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
                    if cdn::is_completed(&s) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Polls GetInvalidation at a modest interval, for at most an hour, until CloudFront says
    /// Completed. An invalidation still running then stays `invalidated`.
    pub async fn complete(&self, inv: &Invalidated) -> Result<(), Halt> {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let mut delay = Duration::from_secs(0);
        while Instant::now() < deadline {
            self.pause(delay).await?;
            delay = (delay * 2).clamp(Duration::from_secs(5), Duration::from_secs(60));
            match self.cdn.status(&inv.invalidation_id).await {
                Ok(s) if cdn::is_completed(&s) => {
                    let detail = format!("invalidation {} completed", inv.invalidation_id);
                    self.end(inv.request_ids.clone(), Status::Completed, detail)
                        .await?;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => warn!(invalidation = %inv.invalidation_id, error = %e, "status unknown"),
            }
        }
        for &id in &inv.request_ids {
            self.note(
                id,
                "not completed after an hour of polling; CloudFront still works on it".into(),
            )
            .await?;
        }
        Ok(())
    }

    /// Carries a request on from its stored state after a restart.
    pub async fn resume(&self, p: store::Pending, wake: Arc<Notify>) -> Result<(), Halt> {
        let ids = vec![p.id];
        match p.status {
            Status::WaitingForOrigin if p.verified || p.source == "manual" => {
                self.proceed(Verified { request_ids: ids }).await?;
            }
            Status::WaitingForOrigin => {
                self.run_watched(p.id, wake, FirstLook::default()).await?;
            }
            Status::Invalidating => {
                let g = Granted {
                    request_ids: ids,
                    period: p.period.unwrap_or_default(),
                    caller_reference: p.caller_reference.unwrap_or_default(),
                };
                let inv = self.invalidate(g).await?;
                self.complete(&inv).await?;
            }
            Status::Invalidated => {
                if let Some(inv) = p.invalidation_id {
                    self.complete(&Invalidated {
                        request_ids: ids,
                        invalidation_id: inv,
                    })
                    .await?;
                }
            }
            // Deferred requests wait for the period loop; the rest are final.
            _ => {}
        }
        Ok(())
    }

    /// Deferred requests of passed periods, coalesced into one invalidation.
    pub async fn run_deferred(&self) -> Result<(), Halt> {
        let q = &self.cfg.quota;
        let current = quota::period_key(Utc::now(), q.timezone, q.period);
        let ids = self
            .store
            .call(move |c| store::deferred_before(c, &current))
            .await?;
        if ids.is_empty() {
            return Ok(());
        }
        info!(requests = ?ids, "running deferred requests");
        self.proceed(Verified { request_ids: ids }).await?;
        Ok(())
    }
}

/// The paths a marker file lists, if it is a list. Markers past 64 KiB cannot be one (4,000
/// characters at most), so a big marker is never read whole.
fn read_marker_list(path: &std::path::Path) -> Result<Option<Vec<String>>, String> {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(path) else {
        return Ok(None); // gone since: what S3 holds was verified; use the configured paths
    };
    let mut buf = Vec::new();
    if f.take(64 * 1024 + 1).read_to_end(&mut buf).is_err() || buf.len() > 64 * 1024 {
        return Ok(None);
    }
    paths::parse_marker(&buf).map_err(|e| e.to_string())
}

/// A crash on purpose, for the kill-at-every-step tests (feature `failpoints`, env FAILPOINTS,
/// e.g. `after_count_written=return`): abort(), like kill -9, with no clean-up at all.
#[cfg(feature = "failpoints")]
pub fn crash_point(name: &str) {
    if fail::eval(name, |_| ()).is_some() {
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}

/// What the watcher's side already has for a request's first origin check.
#[derive(Default)]
pub struct FirstLook {
    /// The generation and markers as just stored: saves reading them back.
    pub stored: Option<(i64, Vec<MarkerSeen>)>,
    /// The HeadObject sent while the marker was being stored (settle 0).
    pub head: Option<origin::EarlyHead>,
}

/// What phase 1 of a grant decided.
enum Decided {
    /// Exhausted (the requests are ended), or nothing left to grant.
    Ended,
    Granted(Granted),
    /// This slot is journalled on the request; it is ours once the count bucket says so.
    Reserved(u32, Granted),
}

#[derive(Debug, thiserror::Error)]
enum GrantError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
}

impl From<rusqlite::Error> for GrantError {
    fn from(e: rusqlite::Error) -> GrantError {
        GrantError::Store(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_is_capped_and_jittered() {
        for a in 0..40 {
            let d = retry_delay(a);
            assert!(
                d <= Duration::from_secs(60) && d >= Duration::from_millis(500),
                "{d:?}"
            );
        }
    }
}
