//! The origin wait: after `settle`, poll S3 with backoff until it holds this write of every
//! marker of the request (and, with `wait_for = "changes"`, every change), or `wait_timeout`
//! passes. The S3 questions and the proof rules are [`crate::origin`]'s; this is the loop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::aws::AwsError;
use crate::config::{Origin as OriginConfig, WaitFor};
use crate::knobs::crash_point;
use crate::origin::{ChangeCache, Check, EarlyHead, Origin};
use crate::retry::{self, Retry};
use crate::store::{changes, markers, requests, MarkerSeen, ObjectId, Status, Store};

/// Why S3 does not hold a request's writes yet.
#[derive(Debug)]
pub enum NotYet {
    /// No object at a marker's key.
    Missing { url: String },
    /// An object, but not this write.
    Differs { url: String, why: String },
    /// The markers are there; these changes are not (the first 20 named).
    Changes {
        differ: usize,
        of: usize,
        first: Vec<String>,
    },
    /// S3 could not be asked.
    Aws(AwsError),
}

impl NotYet {
    /// What stays the same from poll to poll: one note per distinct reason.
    fn reason(&self) -> String {
        match self {
            NotYet::Missing { url } | NotYet::Differs { url, .. } => url.clone(),
            NotYet::Changes { .. } => "changes".into(),
            NotYet::Aws(e) => e.to_string(),
        }
    }
}

impl std::fmt::Display for NotYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotYet::Missing { url } => write!(f, "{url} not there yet"),
            NotYet::Differs { url, why } => write!(f, "{url} differs: {why}"),
            NotYet::Changes { differ, of, first } => write!(
                f,
                "{differ} of {of} changes not in S3 yet: {}",
                first.join(", ")
            ),
            NotYet::Aws(e) => write!(f, "{e}"),
        }
    }
}

/// S3 holds every marker of the request.
#[derive(Debug)]
pub struct Verified {
    pub request_ids: Vec<i64>,
}

/// What the watcher's side already has for a request's first origin check.
#[derive(Default)]
pub struct FirstLook {
    /// The generation and markers as just stored: saves reading them back.
    pub stored: Option<(i64, Vec<MarkerSeen>)>,
    /// The HeadObject sent while the marker was being stored (settle 0).
    pub head: Option<EarlyHead>,
}

/// Why the wait ended without a verified request.
pub enum Stop {
    /// Ended (`origin_timeout`), recorded.
    Ended,
    /// The daemon is stopping.
    Shutdown,
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for Stop {
    fn from(e: crate::store::StoreError) -> Stop {
        Stop::Store(e)
    }
}

/// What the wait needs.
pub struct Waiter<'a> {
    pub store: &'a Store,
    pub origin: &'a Origin,
    pub config: &'a OriginConfig,
    pub root: &'a Path,
    pub settle: Duration,
    pub token: &'a CancellationToken,
}

impl Waiter<'_> {
    /// Waits until S3 holds this write of every marker of request `id`. A marker write merged
    /// in meanwhile (signalled on `wake`) restarts the settle window and the wait.
    pub async fn wait(
        &self,
        id: i64,
        wake: Arc<Notify>,
        first: FirstLook,
    ) -> Result<Verified, Stop> {
        let (mut first, mut early) = (first.stored, first.head);
        let timeout = self.config.wait_timeout;
        'wait: loop {
            // Settle: writes closer together than `settle` are one request. A zero settle
            // skips the timer: tokio's is millisecond-grained, so even sleep(0) costs ~1 ms.
            while !self.settle.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(self.settle) => break,
                    _ = wake.notified() => continue,
                    _ = self.token.cancelled() => return Err(Stop::Shutdown),
                }
            }
            let deadline = Instant::now() + timeout;
            let mut retry = Retry::new(retry::origin_delay);
            let mut cache = ChangeCache::default();
            loop {
                let (generation, markers) = match first.take() {
                    Some(f) => f,
                    None => {
                        self.store
                            .quick(move |c| markers::of_request(c, id))
                            .await?
                    }
                };
                let checked = self.look(id, &markers, &mut early, &mut cache).await?;
                let (proof, why) = match checked {
                    Ok(proof) => (proof, None),
                    Err(not_yet) => (Proof::default(), Some(not_yet)),
                };
                let Some(why) = why else {
                    let Proof {
                        by,
                        objects,
                        changes,
                    } = proof;
                    let by = by.join(", ");
                    let detail = format!(
                        "S3 holds {} marker(s){changes} after {} check(s), verified by {by}",
                        markers.len(),
                        retry.attempt() + 1
                    );
                    let ok = self
                        .store
                        .quick(move |c| {
                            requests::mark_verified(c, id, generation, &by, &objects, &detail)
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
                    self.store
                        .quick(move |c| {
                            requests::advance_all(c, &[id], Status::OriginTimeout, &detail)
                        })
                        .await?;
                    return Err(Stop::Ended);
                }
                // Noted once per distinct reason, not once per poll; an AWS failure at once, a
                // marker not uploaded yet only if the first look missed it.
                let worth = retry.attempt() > 0 || matches!(why, NotYet::Aws(_));
                let reason = if worth { why.reason() } else { String::new() };
                if retry.failed(&reason) && worth {
                    let detail = format!("waiting: {why}");
                    self.store
                        .quick(move |c| requests::note(c, &[id], &detail))
                        .await?;
                }
                let delay = retry.delay().min(deadline - now);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wake.notified() => continue 'wait,
                    _ = self.token.cancelled() => return Err(Stop::Shutdown),
                }
            }
        }
    }

    /// One look at S3: every marker, then (if asked for) the changes.
    async fn look(
        &self,
        id: i64,
        markers: &[MarkerSeen],
        early: &mut Option<EarlyHead>,
        cache: &mut ChangeCache,
    ) -> Result<Result<Proof, NotYet>, Stop> {
        let mut proof = Proof::default();
        for m in markers {
            let url = format!("s3://{}/{}", self.origin.bucket(), self.origin.key(&m.rel));
            let seen = match early.take() {
                Some(e) => e.check(self.root, m).await,
                None => None,
            };
            let checked = match seen {
                Some(c) => c,
                None => self.origin.check(self.root, m).await,
            };
            match checked {
                Ok(Check::Holds { by, object }) => {
                    let by = by.to_string();
                    if !proof.by.contains(&by) {
                        proof.by.push(by);
                    }
                    proof.objects.push((m.rel.clone(), object));
                }
                Ok(Check::Missing) => return Ok(Err(NotYet::Missing { url })),
                Ok(Check::Differs(why)) => return Ok(Err(NotYet::Differs { url, why })),
                Err(e) => return Ok(Err(NotYet::Aws(e))),
            }
        }
        if self.config.wait_for == WaitFor::Changes {
            let (list, _) = self
                .store
                .quick(move |c| changes::of_request(c, id))
                .await?;
            match self.origin.check_changes(self.root, &list, cache).await {
                Ok(differs) if differs.is_empty() => {
                    proof.changes = format!(" and {} change(s)", list.len());
                }
                Ok(differs) => {
                    return Ok(Err(NotYet::Changes {
                        differ: differs.len(),
                        of: list.len(),
                        first: differs.into_iter().take(20).collect(),
                    }))
                }
                Err(e) => return Ok(Err(NotYet::Aws(e))),
            }
        }
        Ok(Ok(proof))
    }
}

/// What proved a look: the methods, the object of each marker, the changes checked.
#[derive(Default)]
struct Proof {
    by: Vec<String>,
    objects: Vec<(String, ObjectId)>,
    changes: String,
}
