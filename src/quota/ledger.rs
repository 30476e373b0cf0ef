//! Taking a quota slot: the one place that decides whether requests may spend one.
//!
//! One attempt ([`Ledger::take_slot`]): the count object is read (unless this database knows
//! it), a slot is decided and journalled on the request in one SQLite write transaction, then
//! written to the count bucket conditionally. The condition keeps out everyone else: other
//! servers, a `purgewatch purge`, a second daemon on the same database, another request of this
//! one. A lost race reads the object again.
//!
//! Invariants kept here:
//! - a slot is journalled on the request (`reserved_period`, `reserved_slot`, the
//!   CallerReference) before the count object is written, so a restart recognises its own write
//!   by the name it left in the object's metadata;
//! - the local count holds confirmed slots only, so a write that lost a race never makes the
//!   next attempt skip a slot;
//! - fail closed: no slot while the count bucket cannot confirm one.

use std::sync::Arc;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tracing::warn;

use super::mirror::{Mirror, MirrorError, Remote};
use super::{Quota, WhenExhausted};
use crate::aws::AwsError;
use crate::clock::Clock;
use crate::knobs::crash_point;
use crate::store::{counters, requests, Counter, Status, Store, StoreError};

/// A quota slot is reserved (locally and in the count bucket) for these requests.
#[derive(Debug, Clone)]
pub struct Granted {
    pub request_ids: Vec<i64>,
    pub period: String,
    pub caller_reference: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The count bucket could not confirm a slot: try again later.
    #[error(transparent)]
    Mirror(#[from] MirrorError),
}

impl From<rusqlite::Error> for GrantError {
    fn from(e: rusqlite::Error) -> GrantError {
        GrantError::Store(e.into())
    }
}

/// Names a grant's CallerReference from its lead request and the time (ms): the CDN's own
/// idempotency token, made by its module (`cloudfront::caller_reference`), called once per
/// grant and journalled with the slot, so the ledger never builds a CloudFront name itself.
pub type Namer = Arc<dyn Fn(i64, i64) -> String + Send + Sync>;

/// The quota's rules, the local counter and the count bucket, together.
#[derive(Clone)]
pub struct Ledger {
    quota: Arc<Quota>,
    store: Store,
    mirror: Option<Mirror>,
    clock: Clock,
    name: Namer,
}

/// What phase 1 of an attempt decided.
enum Decided {
    /// Exhausted (the requests are ended), or nothing left to grant.
    Ended,
    Granted(Granted),
    /// This slot is journalled on the request; it is ours once the count bucket says so.
    Reserved(u32, Granted),
}

impl Ledger {
    pub fn new(
        quota: Arc<Quota>,
        store: Store,
        mirror: Option<Mirror>,
        clock: Clock,
        name: Namer,
    ) -> Ledger {
        Ledger {
            quota,
            store,
            mirror,
            clock,
            name,
        }
    }

    pub fn mirror(&self) -> Option<&Mirror> {
        self.mirror.as_ref()
    }

    /// What a grant would decide now, without taking anything (shadow mode): the period, the
    /// slots used (the larger of the local count and the count object, read) and the max.
    pub async fn peek(&self) -> Result<(String, u32, u32), GrantError> {
        let q = &self.quota;
        let period = super::period_key(self.clock.now(), q.timezone, q.period);
        let (quota, p) = (q.name.clone(), period.clone());
        let local = self
            .store
            .quick(move |c| counters::get(c, &quota, &p))
            .await?;
        let remote = match &self.mirror {
            Some(m) => m.read(&period).await?.count,
            None => 0,
        };
        Ok((period, local.count.max(remote), q.max))
    }

    /// One attempt to take a slot for `ids`. `Ok(None)`: no slot (the requests ended or were
    /// deferred, recorded) or nothing left to grant. `Err(Mirror)`: try again later.
    pub async fn take_slot(&self, ids: &[i64]) -> Result<Option<Granted>, GrantError> {
        let q = &self.quota;
        let mut reread = false;
        for _ in 0..16 {
            let now = self.clock.now();
            let period = super::period_key(now, q.timezone, q.period);
            let remote = match &self.mirror {
                None => None,
                Some(m) => {
                    let (quota, p, max) = (q.name.clone(), period.clone(), q.max);
                    let known = if reread {
                        None
                    } else {
                        self.store
                            .quick(move |c| Ok(known_remote(&counters::get(c, &quota, &p)?, max)))
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
                let ms = now.timestamp_millis();
                self.store
                    .quick(move |c| this.decide(c, &ids, &p, r.as_ref(), ms))
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
                    let mut local = counters::get(&tx, &this.quota.name, &g2.period)?;
                    local.remote_count = Some(slot);
                    local.remote_etag = etag.clone();
                    this.commit(tx, local, g2.clone(), slot, "")
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
        conn: &mut Connection,
        ids: &[i64],
        period: &str,
        remote: Option<&Remote>,
        now_ms: i64,
    ) -> Result<Decided, StoreError> {
        let q = &self.quota;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have moved these requests on (a resumed manual purge, say).
        let live = requests::grantable(&tx, ids)?;
        let Some(&lead) = live.first() else {
            return Ok(Decided::Ended);
        };
        let (reserved, reference) = requests::reservation(&tx, lead)?;
        // Made once and journalled with the reservation: a restart must recognise the count
        // object it wrote by this name, and send CloudFront the same reference.
        let caller_reference = reference.unwrap_or_else(|| (self.name)(lead, now_ms));
        let g = Granted {
            request_ids: live,
            period: period.to_owned(),
            caller_reference,
        };
        let mut local = counters::get(&tx, &q.name, period)?;
        let own = reserved.filter(|(p, _)| p == period).map(|(_, slot)| slot);
        if let Some(r) = remote {
            local.remote_count = Some(r.count);
            local.remote_etag = r.etag.clone();
            // We crashed after our count-object write landed: the object still names us.
            if own == Some(r.count) && r.writer.as_deref() == Some(g.caller_reference.as_str()) {
                let slot = r.count;
                return self.commit(tx, local, g, slot, " (written before a restart)");
            }
        }
        // The local count holds confirmed slots only: a reservation whose write lost a race
        // (or never happened) must not make the next attempt skip a slot.
        let base = local.count.max(remote.map_or(0, |r| r.count));
        if base >= q.max {
            local.count = local.count.max(base);
            counters::set(&tx, &q.name, period, &local)?;
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
            requests::refuse(&tx, &g.request_ids, period, to, &detail)?;
            tx.commit()?;
            warn!(requests = ?g.request_ids, %detail, "no slot");
            return Ok(Decided::Ended);
        }
        let slot = base + 1;
        if remote.is_none() {
            // No count bucket: the local reservation is the grant, in the same transaction.
            let granted = self.commit(tx, local, g, slot, "");
            crash_point("after_slot_reserved");
            return granted;
        }
        requests::reserve(&tx, lead, period, slot, &g.caller_reference)?;
        tx.commit()?;
        Ok(Decided::Reserved(slot, g))
    }

    /// Counts `slot` as used and moves the requests to `invalidating`, in `tx`.
    fn commit(
        &self,
        tx: Transaction<'_>,
        mut local: Counter,
        g: Granted,
        slot: u32,
        how: &str,
    ) -> Result<Decided, StoreError> {
        local.count = local.count.max(slot);
        counters::set(&tx, &self.quota.name, &g.period, &local)?;
        let mirrored = match &self.mirror {
            Some(m) => format!(", s3://{}/{} = {slot}", m.bucket(), m.key(&g.period)),
            None => String::new(),
        };
        let detail = format!(
            "slot {slot} of {} in {}{mirrored}{how}",
            self.quota.max, g.period
        );
        requests::grant(&tx, &g.request_ids, &g.period, &g.caller_reference, &detail)?;
        tx.commit()?;
        Ok(Decided::Granted(g))
    }
}

/// The count object as this database last read or wrote it, when that would grant a slot.
/// The grant's write is conditional on this ETag, so a count object changed since (another
/// server, the old Lambda, an operator) fails the write and is read again: the GET before each
/// grant is saved, not the check. An exhausted count is always read again, in case it was reset.
fn known_remote(local: &Counter, max: u32) -> Option<Remote> {
    let (count, etag) = (local.remote_count?, local.remote_etag.clone()?);
    (count < max).then_some(Remote {
        count,
        etag: Some(etag),
        writer: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_count_object_saves_the_read_unless_it_is_exhausted() {
        let known = Counter {
            count: 3,
            remote_count: Some(3),
            remote_etag: Some("\"e\"".into()),
        };
        assert_eq!(known_remote(&known, 10).map(|r| r.count), Some(3));
        let full = Counter {
            remote_count: Some(10),
            ..known.clone()
        };
        assert_eq!(
            known_remote(&full, 10),
            None,
            "an exhausted count is read again"
        );
        assert_eq!(
            known_remote(&Counter::default(), 10),
            None,
            "never read: read it"
        );
    }
}
