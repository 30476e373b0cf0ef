//! The CloudFront stage: a granted purge → one invalidation on each distribution of the site →
//! every one completed.
//!
//! Each distribution gets its own invalidation, with its own CallerReference stored before its
//! first call (`store::invalidations`): the grant's own reference for the first distribution
//! (what a single distribution always sent), the grant's with `-2`, `-3` … for the others. The
//! first attempts go out in the config's order, one after the other, so a crash leaves the later
//! ones unsent and the restart sends each once (a resend with the stored reference gets the
//! first invalidation back). A distribution that must wait (too many invalidations in progress
//! there, a transient failure) then waits on its own while the others go on. The requests move
//! to `invalidated` once every distribution took its invalidation and to `completed` once every
//! one completed; one refused for good ends them `failed`, naming it, after the others were
//! sent and completed. One quota slot covers the purge, whatever the number of distributions.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::aws::AwsError;
use crate::cloudfront::{self, Cdn};
use crate::config::CloudFront;
use crate::halt::{Halt, Steps};
use crate::knobs::crash_point;
use crate::origin::Origin;
use crate::quota::ledger::Granted;
use crate::retry::{self, Retry};
use crate::store::invalidations::{self, Row, State};
use crate::store::{requests, Status};

mod edge_check;

/// CloudFront took the purge on every distribution (or refused it for good on some).
#[derive(Debug, Clone)]
pub struct Invalidated {
    pub request_ids: Vec<i64>,
    /// The grant's CallerReference: the key of its rows in `invalidations`.
    pub grant: String,
}

/// The CallerReference of a grant's invalidation on the distribution at `position` (from 0).
/// The grant's is at most 120 characters, so this stays within CloudFront's 128.
pub fn reference(grant: &str, position: usize) -> String {
    match position {
        0 => grant.to_owned(),
        n => format!("{grant}-{}", n + 1),
    }
}

/// The stage, for one site's distributions.
pub struct Sender<'a> {
    pub steps: Steps<'a>,
    pub cdns: &'a [Cdn],
    pub site: &'a str,
    /// The site's `[cloudfront]`: `path_prefix` and the edge check's settings.
    pub cfg: &'a CloudFront,
    /// The origin, for S3's ETag of the objects the edge check asks for.
    pub origin: &'a Origin,
}

/// How one attempt on one distribution ended.
enum Attempt {
    Taken,
    Refused,
    Again(AwsError),
}

impl Sender<'_> {
    /// Sends the batch to every distribution not sent yet, until each takes it or refuses it.
    /// The same batch with the same stored CallerReference is sent every time (after a failed
    /// attempt, after a restart): CloudFront answers a repeat with the invalidation it made the
    /// first time, so nothing is paid twice.
    pub async fn invalidate(&self, g: Granted, paths: Vec<String>) -> Result<Invalidated, Halt> {
        let planned: Vec<(String, String)> = self
            .cdns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let id = c.distribution_id().to_owned();
                (id, reference(&g.caller_reference, i))
            })
            .collect();
        let (grant, site, n) = (
            g.caller_reference.clone(),
            self.site.to_owned(),
            paths.len() as i64,
        );
        let rows = self
            .steps
            .store
            .quick(move |c| invalidations::plan(c, &grant, &site, &planned, n))
            .await?;
        let mut again = Vec::new();
        for row in rows.iter().filter(|r| !r.state.is_sent()) {
            let mut state = row.state;
            if let Attempt::Again(e) = self
                .attempt(&g, &paths, row, rows.len(), &mut state)
                .await?
            {
                again.push((row, e, state));
            }
        }
        let waits = again
            .into_iter()
            .map(|(row, e, state)| self.until_taken(&g, &paths, row, rows.len(), e, state));
        for r in futures_util::future::join_all(waits).await {
            r?;
        }
        let inv = Invalidated {
            request_ids: g.request_ids,
            grant: g.caller_reference,
        };
        let rows = self.rows(&inv.grant).await?;
        let ids = &inv.request_ids;
        if rows.iter().all(|r| r.state == State::Failed) {
            return self.steps.end(ids, Status::Failed, refusals(&rows)).await;
        }
        // Moved by the last distribution's answer, unless one was refused or all were taken
        // before a restart: then here, with the whole story.
        let status = self.steps.store.quick({
            let id = ids[0];
            move |c| requests::status_of(c, id)
        });
        if status.await? == Status::Invalidating {
            let detail = match refusals(&rows) {
                r if r.is_empty() => format!("invalidations {}", listing(&rows)),
                r => format!("invalidations {}; {r}", listing(&rows)),
            };
            let ids = ids.clone();
            self.steps
                .store
                .quick(move |c| requests::advance_all(c, &ids, Status::Invalidated, &detail))
                .await?;
        }
        Ok(inv)
    }

    /// One CreateInvalidation on one distribution, its outcome recorded on the row (and, for
    /// the last distribution taken, the move to `invalidated`).
    /// `state`: the row's state as last recorded (a repeat of it is not recorded again).
    async fn attempt(
        &self,
        g: &Granted,
        paths: &[String],
        row: &Row,
        of: usize,
        state: &mut State,
    ) -> Result<Attempt, Halt> {
        let Some(cdn) = self.cdn(&row.distribution_id) else {
            let why = format!(
                "{}: no longer in cloudfront.distribution_id; not sent",
                row.distribution_id
            );
            self.record(g, row, State::Failed, None, why).await?;
            return Ok(Attempt::Refused);
        };
        let sent = cdn.create(paths, &row.caller_reference).await;
        crash_point("after_invalidation_sent");
        match sent {
            Ok(inv) => {
                let on = if of > 1 {
                    format!(" on {}", row.distribution_id)
                } else {
                    String::new()
                };
                let detail = format!(
                    "invalidation {inv}{on} created for {} ({})",
                    paths.join(" "),
                    row.caller_reference
                );
                info!(requests = ?g.request_ids, invalidation = %inv, distribution = %row.distribution_id, "invalidated");
                self.record(g, row, State::InProgress, Some(inv), detail)
                    .await?;
                crash_point("after_invalidation_stored");
                Ok(Attempt::Taken)
            }
            Err(e) if e.is_transient() || matches!(e, AwsError::Busy(_)) => {
                let now = if matches!(e, AwsError::Busy(_)) {
                    State::Busy
                } else {
                    State::Sending
                };
                if *state != now {
                    *state = now;
                    let detail = format!("{}: {e}", row.distribution_id);
                    self.record(g, row, now, None, detail).await?;
                }
                Ok(Attempt::Again(e))
            }
            Err(e) => {
                // The slot stays used: the count object already says so, and failing closed
                // never exceeds the quota.
                let detail = format!("CloudFront refused on {}: {e}", row.distribution_id);
                warn!(requests = ?g.request_ids, %detail, "invalidation failed");
                self.record(g, row, State::Failed, None, detail).await?;
                Ok(Attempt::Refused)
            }
        }
    }

    /// Attempts on one distribution after a failed first one: a busy distribution waits for its
    /// own invalidations in progress, a transient failure for the backoff.
    async fn until_taken(
        &self,
        g: &Granted,
        paths: &[String],
        row: &Row,
        of: usize,
        first: AwsError,
        mut state: State,
    ) -> Result<(), Halt> {
        let mut retry = Retry::new(retry::aws_delay);
        let mut last = first;
        // Bounded by the request: every wait below ends at shutdown; CloudFront answers in time.
        loop {
            match &last {
                AwsError::Busy(e) => self.wait_busy(g, row, &mut retry, e).await?,
                e => {
                    if retry.log(&e.to_string()) {
                        warn!(requests = ?g.request_ids, error = %e, distribution = %row.distribution_id, "invalidation not accepted yet");
                    }
                    let why = format!("CloudFront on {}: {e}", row.distribution_id);
                    self.steps.wait_out(&g.request_ids, &mut retry, why).await?;
                }
            }
            match self.attempt(g, paths, row, of, &mut state).await? {
                Attempt::Taken | Attempt::Refused => return Ok(()),
                Attempt::Again(e) => last = e,
            }
        }
    }

    /// CloudFront's limit on paths in progress: wait for the distribution's own invalidations
    /// rather than for a blind backoff.
    async fn wait_busy(
        &self,
        g: &Granted,
        row: &Row,
        retry: &mut Retry,
        e: &str,
    ) -> Result<(), Halt> {
        let Some(cdn) = self.cdn(&row.distribution_id) else {
            return Ok(());
        };
        let waiting = cdn.in_progress().await.unwrap_or_else(|e2| {
            warn!(error = %e2, "cannot list the invalidations in progress");
            Vec::new()
        });
        if waiting.is_empty() {
            let why = format!("CloudFront on {}: {e}", row.distribution_id);
            return self.steps.wait_out(&g.request_ids, retry, why).await;
        }
        let shown: Vec<&str> = waiting.iter().take(10).map(String::as_str).collect();
        let msg = format!(
            "CloudFront: too many invalidations in progress on {}; waiting for {} of them to complete: {}",
            cdn.distribution_id(),
            waiting.len(),
            shown.join(", ")
        );
        if retry.log(&msg) {
            warn!(requests = ?g.request_ids, %msg, "invalidation waits");
        }
        if retry.failed(&msg) {
            self.steps.note(&g.request_ids, msg).await?;
        }
        self.until_one_completes(cdn, &waiting).await
    }

    /// Polls GetInvalidation at a modest interval, for at most an hour, until CloudFront says
    /// Completed on every distribution. An invalidation still running then stays `invalidated`.
    pub async fn complete(&self, inv: &Invalidated) -> Result<(), Halt> {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let mut delay = Duration::from_secs(0);
        while Instant::now() < deadline {
            self.steps.pause(delay).await?;
            delay = (delay * 2).clamp(Duration::from_secs(5), Duration::from_secs(60));
            let rows = self.rows(&inv.grant).await?;
            for row in rows.iter().filter(|r| r.state == State::InProgress) {
                let (Some(cdn), Some(id)) = (self.cdn(&row.distribution_id), &row.invalidation_id)
                else {
                    continue;
                };
                match cdn.status(id).await {
                    Ok(s) if cloudfront::is_completed(&s) => {
                        let detail =
                            format!("invalidation {id} on {} completed", row.distribution_id);
                        let g = Granted {
                            request_ids: inv.request_ids.clone(),
                            period: String::new(),
                            caller_reference: inv.grant.clone(),
                        };
                        // A line of its own when the request's move will not say it.
                        if rows.len() > 1 || self.cfg.edge_check {
                            self.record(&g, row, State::Completed, None, detail).await?;
                        } else {
                            self.mark(&inv.grant, row, State::Completed).await?;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(invalidation = %id, error = %e, "status unknown"),
                }
            }
            let rows = self.rows(&inv.grant).await?;
            if rows.iter().any(|r| r.state == State::InProgress) {
                continue;
            }
            let done: Vec<&Row> = rows
                .iter()
                .filter(|r| r.state == State::Completed)
                .collect();
            let ids: Vec<&str> = done
                .iter()
                .filter_map(|r| r.invalidation_id.as_deref())
                .collect();
            let detail = match (rows.len(), refusals(&rows)) {
                (1, _) => format!("invalidation {} completed", ids.concat()),
                (_, r) if r.is_empty() => {
                    format!("invalidations {} completed", listing(&rows))
                }
                // None in progress now: every row CloudFront took has completed.
                (_, r) if done.is_empty() => format!("{r}; nothing invalidated"),
                (_, r) => format!("{r}; invalidations {} completed", listing(&rows)),
            };
            let (mut to, mut detail) = if done.len() == rows.len() {
                (Status::Completed, detail)
            } else {
                (Status::Failed, detail)
            };
            if to == Status::Completed && self.cfg.edge_check {
                if let Some(stale) = self.at_the_edge(inv, &rows).await? {
                    (to, detail) = (Status::Stale, stale);
                }
            }
            let ids = inv.request_ids.clone();
            self.steps
                .store
                .quick(move |c| requests::advance_all(c, &ids, to, &detail))
                .await?;
            return Ok(());
        }
        let msg = "not completed after an hour of polling; CloudFront still works on it";
        self.steps.note(&inv.request_ids, msg.into()).await
    }

    /// Polls GetInvalidation on `ids` (2 s, doubling to 60 s) until one of them has completed,
    /// for at most an hour.
    async fn until_one_completes(&self, cdn: &Cdn, ids: &[String]) -> Result<(), Halt> {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let mut delay = Duration::from_secs(2);
        while Instant::now() < deadline {
            self.steps.pause(delay).await?;
            delay = (delay * 2).min(Duration::from_secs(60));
            for id in ids {
                if let Ok(s) = cdn.status(id).await {
                    if cloudfront::is_completed(&s) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn cdn(&self, distribution_id: &str) -> Option<&Cdn> {
        self.cdns
            .iter()
            .find(|c| c.distribution_id() == distribution_id)
    }

    async fn rows(&self, grant: &str) -> Result<Vec<Row>, Halt> {
        let grant = grant.to_owned();
        Ok(self
            .steps
            .store
            .quick(move |c| invalidations::of_grant(c, &grant))
            .await?)
    }

    /// A row's new state, recorded with an event on the requests; when it is the last
    /// distribution taken and none was refused, the requests move to `invalidated` with it.
    async fn record(
        &self,
        g: &Granted,
        row: &Row,
        state: State,
        invalidation_id: Option<String>,
        detail: String,
    ) -> Result<(), Halt> {
        let (grant, dist, ids) = (
            g.caller_reference.clone(),
            row.distribution_id.clone(),
            g.request_ids.clone(),
        );
        Ok(self
            .steps
            .store
            .quick(move |c| {
                invalidations::update(
                    c,
                    &grant,
                    &dist,
                    state,
                    invalidation_id.as_deref(),
                    &detail,
                    &ids,
                )
            })
            .await?)
    }

    /// A row's new state without an event (the requests' own move tells it).
    async fn mark(&self, grant: &str, row: &Row, state: State) -> Result<(), Halt> {
        let (grant, dist) = (grant.to_owned(), row.distribution_id.clone());
        Ok(self
            .steps
            .store
            .quick(move |c| invalidations::set_state(c, &grant, &dist, state))
            .await?)
    }
}

/// "I1 on E1, I2 on E2" for the rows CloudFront took.
fn listing(rows: &[Row]) -> String {
    let taken: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.invalidation_id
                .as_ref()
                .map(|i| format!("{i} on {}", r.distribution_id))
        })
        .collect();
    taken.join(", ")
}

/// The refusals among the rows, each with CloudFront's reason ("" if none).
fn refusals(rows: &[Row]) -> String {
    let refused: Vec<&str> = rows
        .iter()
        .filter(|r| r.state == State::Failed)
        .filter_map(|r| r.detail.as_deref())
        .collect();
    refused.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_distribution_has_its_own_reference_the_first_the_grants() {
        let grant = "purgewatch-web1-0000abcd-7-1700000000000";
        assert_eq!(reference(grant, 0), grant);
        assert_eq!(reference(grant, 1), format!("{grant}-2"));
        let long =
            crate::cloudfront::caller_reference(&"h".repeat(300), "0000abcd", i64::MAX, i64::MAX);
        assert!(reference(&long, 15).len() <= 128);
    }
}
