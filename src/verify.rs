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
use crate::halt::Halt;
use crate::knobs::crash_point;
use crate::marker::{MarkerSeen, ObjectId};
use crate::origin::changes::{self as change_set, ChangeSet};
use crate::origin::{Check, EarlyHead, Origin};
use crate::retry::{self, Retry};
use crate::store::{changes, markers, requests, Status, Store};

/// The looks after an uploader read the marker (its close, heard by the watcher): the gaps
/// between them. An upload ends within a moment of its read (aws s3 sync and rsync-style tools
/// read the file to send it), so looks come close at first, never more than 500 ms apart, for
/// 3.8 s; then the slow schedule again. 15 looks: a read that is not an upload (a backup,
/// `cat`) costs only those.
const BURST: [u64; 15] = [
    20, 30, 50, 100, 100, 100, 100, 200, 200, 300, 300, 500, 500, 500, 500,
];

/// At most one S3 look per this much waiting on average, beyond [`FREE_LOOKS`]: bursts past
/// that budget are not started (reads that keep coming cannot turn the wait into polling).
const LOOK_EVERY: Duration = Duration::from_secs(2);
const FREE_LOOKS: u32 = 20;

/// What wakes a waiting request early.
pub struct Wake {
    /// The marker was written again (merged in): the settle window and the wait restart.
    pub written: Notify,
    /// The marker was read to its close by another process, likely its uploader: look now,
    /// in a [`BURST`].
    pub read: Notify,
    /// Asks the watcher to hear reads in the markers' folders while the wait lasts.
    pub listener: Option<crate::watch::Listener>,
}

impl Wake {
    pub fn new(listener: Option<crate::watch::Listener>) -> Wake {
        Wake {
            written: Notify::new(),
            read: Notify::new(),
            listener,
        }
    }
}

/// The burst of looks after a read, within the looks' budget.
#[derive(Default)]
struct Burst {
    /// The next gap of [`BURST`], while one runs.
    step: Option<usize>,
    /// Looks made in this wait.
    looks: u32,
}

impl Burst {
    /// A read was heard after `waited`: a new burst, if the budget allows one.
    fn start(&mut self, waited: Duration) {
        let allowed = FREE_LOOKS + (waited.as_secs_f64() / LOOK_EVERY.as_secs_f64()) as u32;
        if self.looks + BURST.len() as u32 <= allowed {
            self.step = Some(0);
        }
    }

    /// The gap before the next look of a running burst.
    fn next(&mut self) -> Option<Duration> {
        let i = self.step?;
        self.step = (i + 1 < BURST.len()).then_some(i + 1);
        Some(Duration::from_millis(BURST[i]))
    }
}

/// How long a pass may spend on the calls every pass repeats before the next waits for that
/// time beyond this.
const LOOK_FREE: Duration = Duration::from_secs(1);

/// The wait before the next look: the schedule's, or the last pass's repeated calls' time
/// beyond [`LOOK_FREE`] when that is longer.
fn pause(scheduled: Duration, repeated: Duration) -> Duration {
    scheduled.max(repeated.saturating_sub(LOOK_FREE))
}

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
            // The first open change, and why: a new note when the wait moves on to another.
            NotYet::Changes { first, .. } => {
                format!("changes: {}", first.first().map_or("", |f| f))
            }
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

/// What the wait needs.
pub struct Waiter<'a> {
    pub store: &'a Store,
    pub origin: &'a Origin,
    pub config: &'a OriginConfig,
    pub root: &'a Path,
    /// The site the request belongs to (its open change set).
    pub site: &'a str,
    pub settle: Duration,
    pub token: &'a CancellationToken,
}

impl Waiter<'_> {
    /// Waits until S3 holds this write of every marker of request `id`. A marker write merged
    /// in meanwhile (signalled on `wake`) restarts the settle window and the wait.
    pub async fn wait(&self, id: i64, wake: Arc<Wake>, first: FirstLook) -> Result<Verified, Halt> {
        let (mut first, mut early) = (first.stored, first.head);
        let timeout = self.config.wait_timeout;
        // The markers' folders hear reads while the wait lasts; dropped, the masks go back.
        let _listening = match &wake.listener {
            Some(l) => {
                let rels: Vec<String> = match &first {
                    Some((_, m)) => m.iter().map(|m| m.rel.clone()).collect(),
                    None => {
                        let (_, m) = self
                            .store
                            .quick(move |c| markers::of_request(c, id))
                            .await?;
                        m.into_iter().map(|m| m.rel).collect()
                    }
                };
                let folders = rels
                    .iter()
                    .filter_map(|r| self.root.join(r).parent().map(Path::to_path_buf))
                    .collect();
                Some(l.listen(folders))
            }
            None => None,
        };
        let started = Instant::now();
        let mut burst = Burst::default();
        'wait: loop {
            // Settle: writes closer together than `settle` are one request. A zero settle
            // skips the timer: tokio's is millisecond-grained, so even sleep(0) costs ~1 ms.
            // The uploader reading the marker ends it early: lsyncd sends a write only after its
            // own delay, so no write of this marker is still to come for that upload.
            while !self.settle.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(self.settle) => break,
                    _ = wake.written.notified() => continue,
                    _ = wake.read.notified() => {
                        burst.start(Duration::ZERO);
                        break;
                    }
                    _ = self.token.cancelled() => return Err(Halt::Shutdown),
                }
            }
            let deadline = Instant::now() + timeout;
            let mut retry = Retry::new(retry::origin_delay);
            // Loaded once per wait: each pass asks only about what is still open.
            let mut changes: Option<ChangeSet> = None;
            loop {
                let (generation, markers) = match first.take() {
                    Some(f) => f,
                    None => {
                        self.store
                            .quick(move |c| markers::of_request(c, id))
                            .await?
                    }
                };
                burst.looks += 1;
                let (checked, progressed, repeated) =
                    self.look(id, &markers, &mut early, &mut changes).await?;
                if progressed {
                    // The upload is visibly moving: look again soon.
                    retry.progressed();
                }
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
                    return Err(Halt::Ended);
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
                // A pass whose listings took longer than a second (or whose pages, asked in
                // parallel, count for more: `Pass::paced`) is followed by a pause of that time
                // beyond the second: a slow S3 or a huge change set (200 pages a pass at 200,000
                // changes) is not listed back to back for the whole deploy, while quick passes
                // keep the schedule. The HeadObjects that settle a change once are not counted:
                // the next pass does not repeat them.
                // A burst after a read runs its course; else the schedule.
                let delay = burst
                    .next()
                    .unwrap_or_else(|| pause(retry.delay(), repeated));
                let mut at = (now + delay).min(deadline);
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => break,
                        _ = wake.written.notified() => continue 'wait,
                        _ = wake.read.notified() => {
                            burst.start(started.elapsed());
                            // Over budget: the schedule stands.
                            if let Some(d) = burst.next() {
                                at = (Instant::now() + d).min(deadline);
                            }
                        }
                        _ = self.token.cancelled() => return Err(Halt::Shutdown),
                    }
                }
            }
        }
    }

    /// One look at S3: every marker, then (if asked for) the changes still open. Also says
    /// whether changes were proven in this look (the upload is moving).
    async fn look(
        &self,
        id: i64,
        markers: &[MarkerSeen],
        early: &mut Option<EarlyHead>,
        changes: &mut Option<ChangeSet>,
    ) -> Result<(Result<Proof, NotYet>, bool, Duration), Halt> {
        let mut proof = Proof::default();
        let changes_too = self.config.wait_for == WaitFor::Changes;
        // With `wait_for = "changes"` the changes are checked even while a marker is missing
        // (lsyncd may upload it last): the upload shows its progress, the interval stays short,
        // and the look that finds the marker has little left to check.
        let mut marker_missing = None;
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
            let not_yet = match checked {
                Ok(Check::Holds { by, object }) => {
                    let by = by.to_string();
                    if !proof.by.contains(&by) {
                        proof.by.push(by);
                    }
                    proof.objects.push((m.rel.clone(), object));
                    continue;
                }
                Ok(Check::Missing) => NotYet::Missing { url },
                Ok(Check::Differs(why)) => NotYet::Differs { url, why },
                Err(e) => NotYet::Aws(e),
            };
            if changes_too && !matches!(not_yet, NotYet::Aws(_)) {
                marker_missing = Some(not_yet);
                break;
            }
            return Ok((Err(not_yet), false, Duration::ZERO));
        }
        if !changes_too {
            return Ok((Ok(proof), false, Duration::ZERO));
        }
        let set = match changes {
            Some(set) => {
                // Files written again since: checked again.
                let site = self.site.to_owned();
                let written = self
                    .store
                    .quick(move |c| changes::open_paths(c, &site))
                    .await?;
                set.rewritten(self.root, &written).await;
                set
            }
            None => {
                let set = self
                    .store
                    .quick(move |c| {
                        let mut b = change_set::Builder::default();
                        changes::each_path_of_request(c, id, |rel| b.push(rel))?;
                        Ok::<_, crate::store::StoreError>(b.build())
                    })
                    .await?;
                changes.insert(set)
            }
        };
        let pass = match set
            .pass(
                self.origin,
                self.root,
                self.config.changes_check,
                self.token,
            )
            .await
        {
            // A pass cut short by the shutdown proves nothing.
            _ if self.token.is_cancelled() => return Err(Halt::Shutdown),
            Ok(p) => p,
            Err(e) => return Ok((Err(NotYet::Aws(e)), false, Duration::ZERO)),
        };
        let (progressed, repeated) = (pass.verified > 0, pass.paced());
        if let Some(not_yet) = marker_missing {
            return Ok((Err(not_yet), progressed, repeated));
        }
        if pass.open > 0 {
            let not_yet = NotYet::Changes {
                differ: pass.open,
                of: set.len(),
                first: pass.first,
            };
            return Ok((Err(not_yet), progressed, repeated));
        }
        proof.changes = format!(" and {} change(s)", set.len());
        Ok((Ok(proof), progressed, repeated))
    }
}

/// What proved a look: the methods, the object of each marker, the changes checked.
#[derive(Default)]
struct Proof {
    by: Vec<String>,
    objects: Vec<(String, ObjectId)>,
    changes: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_starts_a_burst_within_the_budget_of_looks() {
        let mut b = Burst::default();
        assert_eq!(b.next(), None, "no read, no burst");
        b.looks = 3;
        b.start(Duration::from_secs(5));
        let gaps: Vec<Duration> = std::iter::from_fn(|| b.next()).collect();
        assert_eq!(gaps.len(), BURST.len());
        assert!(gaps.iter().all(|g| *g <= Duration::from_millis(500)));
        // A second read soon after: past one look per 2 s (+20), no second burst.
        b.looks += BURST.len() as u32;
        b.start(Duration::from_secs(10));
        assert_eq!(b.next(), None);
        // Minutes later the budget allows one again.
        b.start(Duration::from_secs(120));
        assert!(b.next().is_some());
    }

    #[test]
    fn a_long_look_is_followed_by_a_pause_of_its_length_beyond_a_second() {
        let ms = Duration::from_millis;
        // 5,000 changes against moto: 5 pages, ~0.75 s of listing: the schedule's 250 ms stands.
        assert_eq!(pause(ms(250), ms(750)), ms(250));
        // 200 pages at 200,000 changes, 5 minutes: 4:59 before the next.
        assert_eq!(pause(ms(250), ms(300_000)), ms(299_000));
        // Backing off for nothing moving is not shortened by a quick look.
        assert_eq!(pause(ms(30_000), ms(10)), ms(30_000));
    }
}
