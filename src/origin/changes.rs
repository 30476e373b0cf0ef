//! `wait_for = "changes"`: does S3 hold every file the deploy changed? Checked in passes, each
//! pass asking only about the changes not verified yet, with as few S3 calls as the key order
//! allows.
//!
//! # The sweep
//! ListObjectsV2 returns up to 1,000 keys a page, in key order, from any `StartAfter`. The
//! changes still unverified are walked in key order: a page starts at the first of them and
//! covers every changed key up to its last key; the next page starts at the next changed key
//! past it, jumping over the unchanged rest. That is the greedy cover of the changed keys by
//! pages, which is the fewest pages that cover them (a dense deploy costs about one page per
//! 1,000 changes; a few changes in a huge bucket cost one small page each, like a HeadObject).
//! Pages that do not depend on each other are asked together ([`PARALLEL_PAGES`] at a time):
//! besides the first unverified change, each page of a round starts at the first unverified
//! change at least a page's worth of changes after the previous start, and covers up to the
//! next start; what a page could not reach (other keys between) is a range for the next round.
//! At 200,000 changes against S3's ~100 ms a page, that is 200 pages in 13 rounds.
//! A listed ETag that is the local MD5 proves a file; another (SSE-KMS, multipart) is settled by
//! one HeadObject and its checksum, remembered for as long as the object and the file stay the
//! same.
//!
//! # Incremental
//! A change verified in one pass stays verified, unless the file is written again locally: the
//! caller hands in the paths written since ([`ChangeSet::rewritten`]), and those whose size or
//! mtime moved are checked again.
//!
//! # Off the runtime's thread
//! The local side of a change (a stat, and a hash when the file moved since its last one) is
//! file I/O of any size: a round's worth is looked up in one trip to the blocking pool while S3
//! lists the round's pages, and a hash stops between blocks when the daemon stops. A 20 GiB
//! file holds up its own request, nothing else.
//!
//! # Memory
//! A set holds each path once, in one arena in key order, and per path 64 bytes: its state
//! and, once hashed, its size, mtime and sums as bytes (about 90 bytes a change with the path,
//! 18 MB at 200,000 changes). It is built from the database rows as they are read.
//!
//! The other two plans exist to be measured against (bench/, `[origin] changes_check`):
//! `folders`, one ListObjectsV2 per folder of every change each pass (the plan before the
//! sweep), and `head`, one HeadObject per change each pass.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{content, Head, Method, Origin, CLOCK_TOLERANCE_SECS};
use crate::aws::AwsError;
use crate::config::ChangesCheck;
use crate::marker::{self, local_checksum, mtime_ns, RawSums};

/// Pages asked at once in a sweep's round (they start at known changed keys, so none waits for
/// another's answer). The pause after a pass is paced by its calls ([`CALL_PACE`]), not only by
/// its time, so listing faster does not list more often.
const PARALLEL_PAGES: usize = 16;
/// What a repeated call counts for at least in the pause after a pass ([`Pass::paced`]): 200
/// pages at 200,000 changes buy 8 s less the free second, however quickly they answered.
const CALL_PACE: Duration = Duration::from_millis(40);
/// Keys a ListObjectsV2 page holds at most.
const PAGE_KEYS: usize = 1000;

/// One changed path of a request, and what is known of it.
struct Entry {
    /// Where the path ends in the arena; it starts where the previous entry's ends.
    end: usize,
    state: State,
}

#[derive(Clone, Copy)]
enum State {
    /// Not proven yet; the local file as last hashed.
    Open(Option<Local>),
    /// Proven in S3 as the file was then (size, mtime), or proven gone (`None`).
    Verified(Option<(u64, i64)>),
}

/// (size, mtime in ns) of a regular file; `None`: no such file.
type Stamp = Option<(u64, i64)>;

/// A local file's size, mtime (ns) and sums, hashed once per (size, mtime).
#[derive(Clone, Copy)]
struct Local {
    size: u64,
    mtime: i64,
    sums: RawSums,
}

/// A request's changes, checked against S3 pass after pass.
pub struct ChangeSet {
    /// The paths, concatenated in key order (the prefix is common, so path order is key order).
    names: String,
    entries: Vec<Entry>,
    open: usize,
    /// Objects a HeadObject judged: path → (ETag, local mtime, verdict).
    headed: HashMap<Box<str>, (String, i64, Result<(), String>)>,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Pass {
    /// S3 calls made.
    pub calls: u64,
    /// Time spent in the calls the next pass makes again (the listings; for the `head` plan
    /// its HeadObjects): what the wait paces itself by. A HeadObject that settles a change
    /// once is not among them.
    pub repeated: Duration,
    /// The sweep's pages, which the next pass asks again. They are asked in parallel, so their
    /// time undercounts them; the other plans' calls go one at a time.
    pub repeated_calls: u32,
    /// Changes proven in this pass.
    pub verified: usize,
    /// Changes still not in S3, and the first few of them with why.
    pub open: usize,
    pub first: Vec<String>,
}

impl Pass {
    /// What the pause after this pass is paced by: the repeated calls' time, or
    /// [`CALL_PACE`] each when they answered quicker (parallel pages, a fast S3), so that the
    /// calls a wait makes are bounded by their count, not only by S3's speed.
    pub fn paced(&self) -> Duration {
        self.repeated.max(CALL_PACE * self.repeated_calls)
    }
}

/// What S3 listed (or HeadObject answered) for a key.
#[derive(Clone)]
pub(super) struct Listed {
    pub(super) size: i64,
    /// Lower-case, unquoted.
    pub(super) etag: String,
    /// Whole seconds since the epoch.
    pub(super) modified: Option<i64>,
}

/// What a pass works with.
struct Ctx<'a> {
    origin: &'a Origin,
    root: &'a Path,
    stop: &'a CancellationToken,
    pass: &'a mut Pass,
}

/// Builds a [`ChangeSet`] from paths handed in one by one, in key order as the database reads
/// them (out of order, the set is sorted at the end).
#[derive(Default)]
pub struct Builder {
    names: String,
    entries: Vec<Entry>,
    unsorted: bool,
}

impl Builder {
    pub fn push(&mut self, rel: &str) {
        if let Some(last) = self.entries.len().checked_sub(1) {
            match rel.cmp(self.rel(last)) {
                std::cmp::Ordering::Equal => return,
                std::cmp::Ordering::Less => self.unsorted = true,
                std::cmp::Ordering::Greater => {}
            }
        }
        self.names.push_str(rel);
        self.entries.push(Entry {
            end: self.names.len(),
            state: State::Open(None),
        });
    }

    fn rel(&self, i: usize) -> &str {
        span(&self.names, &self.entries, i)
    }

    pub fn build(mut self) -> ChangeSet {
        if self.unsorted {
            let mut rels: Vec<&str> = (0..self.entries.len()).map(|i| self.rel(i)).collect();
            rels.sort_unstable();
            let mut again = Builder::default();
            rels.into_iter().for_each(|r| again.push(r));
            self = again;
        }
        self.names.shrink_to_fit();
        self.entries.shrink_to_fit();
        ChangeSet {
            open: self.entries.len(),
            names: self.names,
            entries: self.entries,
            headed: HashMap::new(),
        }
    }
}

/// Entry `i`'s path in `names`.
fn span<'a>(names: &'a str, entries: &[Entry], i: usize) -> &'a str {
    let start = i.checked_sub(1).map_or(0, |p| entries[p].end);
    &names[start..entries[i].end]
}

impl ChangeSet {
    /// The set of these paths (relative to the root).
    #[cfg(test)]
    fn of<'a>(rels: impl IntoIterator<Item = &'a str>) -> ChangeSet {
        let mut b = Builder::default();
        rels.into_iter().for_each(|r| b.push(r));
        b.build()
    }

    fn rel(&self, i: usize) -> &str {
        span(&self.names, &self.entries, i)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Changes not proven yet.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Paths written again locally since the set was made: a verified one whose size or mtime
    /// moved (or that appeared or vanished) is checked again. Returns how many reopened.
    pub async fn rewritten(&mut self, root: &Path, rels: &[String]) -> usize {
        let verified: Vec<(usize, PathBuf, Stamp)> = rels
            .iter()
            .filter_map(|rel| {
                let i = self.find(rel)?;
                match self.entries[i].state {
                    State::Verified(was) => Some((i, root.join(self.rel(i)), was)),
                    State::Open(_) => None,
                }
            })
            .collect();
        if verified.is_empty() {
            return 0;
        }
        let moved = tokio::task::spawn_blocking(move || {
            verified
                .into_iter()
                .filter(|(_, path, was)| local_stamp(path) != *was)
                .map(|(i, _, _)| i)
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for &i in &moved {
            self.entries[i].state = State::Open(None);
            self.open += 1;
        }
        moved.len()
    }

    /// The index of `rel`, by binary search over the arena.
    fn find(&self, rel: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.entries.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.rel(mid).cmp(rel) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// One pass over the open changes with `plan`.
    /// Once `stop` is cancelled the pass ends early (the daemon is stopping).
    pub async fn pass(
        &mut self,
        origin: &Origin,
        root: &Path,
        plan: ChangesCheck,
        stop: &CancellationToken,
    ) -> Result<Pass, AwsError> {
        let before = self.open;
        let mut pass = Pass::default();
        let mut ctx = Ctx {
            origin,
            root,
            stop,
            pass: &mut pass,
        };
        match plan {
            ChangesCheck::Sweep => self.sweep(&mut ctx).await?,
            ChangesCheck::Folders => self.folders(&mut ctx).await?,
            ChangesCheck::Head => self.heads(&mut ctx).await?,
        }
        pass.verified = before.saturating_sub(self.open);
        pass.open = self.open;
        Ok(pass)
    }

    /// The greedy page cover, in rounds of pages asked together (see the module docs).
    async fn sweep(&mut self, cx: &mut Ctx<'_>) -> Result<(), AwsError> {
        // Ranges of change indices [from, to) not covered yet, in key order.
        let mut todo = VecDeque::from([(0, self.entries.len())]);
        // Bounded: every page covers at least the change it starts at (its key or a later one
        // is listed, or the listing ends), so a range shrinks each round; the cap is a guard.
        for _ in 0..=self.entries.len() {
            let round = self.next_round(&mut todo);
            if round.is_empty() {
                return Ok(());
            }
            let origin = cx.origin;
            let starts: Vec<String> = round
                .iter()
                .map(|&(a, _)| before(&origin.key(self.rel(a))))
                .collect();
            // The open changes each page may cover, looked up on disk while S3 lists them: the
            // local side of a round costs no time of its own (a page cut short leaves a few
            // looked up for the next round, a stat each again).
            let wanted = self.wanted(&round);
            let all: Vec<usize> = wanted.iter().flatten().copied().collect();
            let asked = Instant::now();
            let (locals, pages) = tokio::join!(
                self.look_locally(cx, &all),
                futures_util::future::join_all(starts.iter().map(|k| origin.page(k)))
            );
            cx.pass.repeated += asked.elapsed();
            cx.pass.repeated_calls += pages.len() as u32;
            cx.pass.calls += pages.len() as u64;
            let Some(locals) = locals else {
                return Ok(());
            };
            let mut locals = locals.into_iter();
            for ((&(at, end), page), wanted) in round.iter().zip(pages).zip(wanted) {
                let (page, last, truncated) = page?;
                let mine: Vec<Option<Local>> = locals.by_ref().take(wanted.len()).collect();
                // Past the page's last key (when more follow): not covered, for a later round.
                let first_out = match (truncated, last.as_deref()) {
                    (true, Some(l)) => self.first_past(origin, at, end, l),
                    _ => end,
                };
                if first_out < end {
                    todo.push_back((first_out.max(at + 1), end));
                }
                let covered = wanted.partition_point(|&j| j < first_out);
                for (&c, local) in wanted[..covered].iter().zip(mine) {
                    let listed = page.get(&origin.key(self.rel(c))).cloned();
                    self.settle(cx, c, listed, local).await?;
                }
            }
        }
        Ok(())
    }

    /// The next round's pages, (first change, end of its range) each, from the ranges not
    /// covered yet (see the module docs).
    fn next_round(&self, todo: &mut VecDeque<(usize, usize)>) -> Vec<(usize, usize)> {
        let mut round: Vec<(usize, usize)> = Vec::new();
        while round.len() < PARALLEL_PAGES {
            let Some((from, to)) = todo.pop_front() else {
                break;
            };
            let Some(mut at) = self.next_open(from).filter(|&a| a < to) else {
                continue;
            };
            loop {
                let next = self.next_open(at + PAGE_KEYS).filter(|&b| b < to);
                match next {
                    Some(b) if round.len() + 1 < PARALLEL_PAGES => {
                        round.push((at, b));
                        at = b;
                    }
                    _ => {
                        round.push((at, to));
                        break;
                    }
                }
            }
        }
        round
    }

    /// The open changes each page of `round` can cover. A page holds at most [`PAGE_KEYS`]
    /// keys, so at most that many changes: the last page of a round reaches to the end of its
    /// range, which in a first pass is the whole rest of the set.
    fn wanted(&self, round: &[(usize, usize)]) -> Vec<Vec<usize>> {
        round
            .iter()
            .map(|&(a, e)| {
                (a..e.min(a + PAGE_KEYS))
                    .filter(|&j| self.is_open(j))
                    .collect()
            })
            .collect()
    }

    /// Today's plan before the sweep, for comparison: one listing per folder of every change.
    async fn folders(&mut self, cx: &mut Ctx<'_>) -> Result<(), AwsError> {
        let mut by_dir: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for i in 0..self.entries.len() {
            let rel = self.rel(i);
            let dir = rel.rfind('/').map_or("", |p| &rel[..=p]);
            by_dir.entry(dir.to_owned()).or_default().push(i);
        }
        for (dir, idx) in by_dir {
            let asked = Instant::now();
            let (listed, calls) = cx.origin.list_folder(&cx.origin.key(&dir)).await?;
            cx.pass.repeated += asked.elapsed();
            cx.pass.calls += calls;
            for &i in &idx {
                self.reopen(i);
            }
            let Some(locals) = self.look_locally(cx, &idx).await else {
                return Ok(());
            };
            for (i, local) in idx.into_iter().zip(locals) {
                let l = listed.get(&cx.origin.key(self.rel(i))).cloned();
                self.settle(cx, i, l, local).await?;
            }
        }
        Ok(())
    }

    /// The naive plan, for comparison: one HeadObject per change.
    async fn heads(&mut self, cx: &mut Ctx<'_>) -> Result<(), AwsError> {
        for i in 0..self.entries.len() {
            let asked = Instant::now();
            let h = cx.origin.head(self.rel(i)).await?;
            cx.pass.repeated += asked.elapsed();
            cx.pass.calls += 1;
            let listed = h.as_ref().map(|h| Listed {
                size: h.size,
                etag: h.etag.clone(),
                modified: h.last_modified,
            });
            self.reopen(i);
            let Some(mut local) = self.look_locally(cx, &[i]).await else {
                return Ok(());
            };
            self.settle(cx, i, listed, local.pop().flatten()).await?;
        }
        Ok(())
    }

    fn reopen(&mut self, i: usize) {
        if matches!(self.entries[i].state, State::Verified(_)) {
            self.entries[i].state = State::Open(None);
            self.open += 1;
        }
    }

    fn is_open(&self, i: usize) -> bool {
        matches!(self.entries[i].state, State::Open(_))
    }

    /// The first change in `from..to` whose key sorts after `last` (`to` if none): keys grow
    /// with the index.
    fn first_past(&self, origin: &Origin, from: usize, to: usize, last: &str) -> usize {
        let (mut lo, mut hi) = (from, to);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if origin.key(self.rel(mid)).as_str() > last {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    fn next_open(&self, from: usize) -> Option<usize> {
        (from..self.entries.len()).find(|&i| self.is_open(i))
    }

    /// Judges open change `i` by what S3 listed for its key (`None`: no such object) and what
    /// the disk holds ([`ChangeSet::look_locally`]).
    async fn settle(
        &mut self,
        cx: &mut Ctx<'_>,
        i: usize,
        listed: Option<Listed>,
        local: Option<Local>,
    ) -> Result<(), AwsError> {
        let verdict: Result<Option<(u64, i64)>, String> = match (local, listed) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err("still in S3 (deleted locally)".into()),
            (Some(_), None) => Err("not in S3 yet".into()),
            (Some(f), Some(l)) if f.size as i64 != l.size => Err("size differs".into()),
            (Some(f), Some(l)) if f.sums.md5_is(&l.etag) => Ok(Some((f.size, f.mtime))),
            // Other bytes, or an ETag that is no MD5 (SSE-KMS, multipart). An object older
            // than the local write is the previous upload either way: no HeadObject for it
            // (during an upload that is every file not uploaded yet).
            (Some(f), Some(l)) if predates(l.modified, f.mtime) => {
                Err("not uploaded yet (S3 holds an older object)".into())
            }
            (Some(f), Some(l)) => {
                cx.pass.calls += 1;
                let rel = self.rel(i).to_owned();
                self.judge(cx.origin, cx.root, &rel, &l.etag, f)
                    .await?
                    .map(|()| Some((f.size, f.mtime)))
            }
        };
        match verdict {
            Ok(stamp) => {
                self.entries[i].state = State::Verified(stamp);
                self.open -= 1;
                self.headed.remove(span(&self.names, &self.entries, i));
            }
            Err(why) => {
                if cx.pass.first.len() < 20 {
                    cx.pass
                        .first
                        .push(format!("{} {why}", cx.origin.key(self.rel(i))));
                }
            }
        }
        Ok(())
    }

    /// The local files of changes `idx` as they are now, in one trip to the blocking pool: a
    /// stat each, and a hash where the (size, mtime) moved since the last one (`None`: gone,
    /// not a regular file, unreadable). `None` overall: the daemon is stopping.
    async fn look_locally(&mut self, cx: &Ctx<'_>, idx: &[usize]) -> Option<Vec<Option<Local>>> {
        if idx.is_empty() {
            return Some(Vec::new());
        }
        let asks: Vec<(PathBuf, Option<Local>)> = idx
            .iter()
            .map(|&i| {
                let known = match self.entries[i].state {
                    State::Open(f) => f,
                    State::Verified(_) => None,
                };
                (cx.root.join(self.rel(i)), known)
            })
            .collect();
        let stop = cx.stop.clone();
        let found = tokio::task::spawn_blocking(move || {
            let stopped = || stop.is_cancelled();
            asks.into_iter()
                .map(|(path, known)| (!stopped()).then(|| local_now(&path, known, &stopped)))
                .collect::<Option<Vec<_>>>()
        })
        .await
        .ok()
        .flatten()?;
        // A hash cut short reads as unreadable: not a verdict to act on.
        if cx.stop.is_cancelled() {
            return None;
        }
        for (&i, f) in idx.iter().zip(&found) {
            if let (Some(f), State::Open(_)) = (f, self.entries[i].state) {
                self.entries[i].state = State::Open(Some(*f));
            }
        }
        Some(found)
    }

    /// A listed ETag that is not the local MD5: either other bytes, or an ETag that is no MD5
    /// at all. HeadObject tells which, by the object's checksum; the verdict is kept for as
    /// long as the ETag and the local file stay the same.
    async fn judge(
        &mut self,
        origin: &Origin,
        root: &Path,
        rel: &str,
        etag: &str,
        f: Local,
    ) -> Result<Result<(), String>, AwsError> {
        if let Some((e, m, verdict)) = self.headed.get(rel) {
            if e == etag && *m == f.mtime {
                return Ok(verdict.clone());
            }
        }
        let Some(h) = origin.head(rel).await? else {
            return Ok(Err("not in S3 yet".into()));
        };
        let etag = h.etag.clone();
        let path = root.join(rel);
        // A checksum the first read did not take (CRC32C, SHA-1, SHA-256) reads the file.
        let verdict = tokio::task::spawn_blocking(move || judge_head(&h, &path, f))
            .await
            .unwrap_or_else(|e| Err(format!("checking the local file: {e}")));
        self.headed
            .insert(rel.into(), (etag, f.mtime, verdict.clone()));
        Ok(verdict)
    }
}

/// The proof rules of the module above for one changed file's HeadObject.
fn judge_head(h: &Head, path: &Path, f: Local) -> Result<(), String> {
    let sums = f.sums.sums();
    match content(&sums, h, |a| {
        local_checksum(path, a, Some((f.size, f.mtime)))
    }) {
        Ok(Method::SizeTime) => {
            let local_secs = f.mtime.div_euclid(1_000_000_000);
            match h.last_modified {
                Some(t) if t + CLOCK_TOLERANCE_SECS >= local_secs => Ok(()),
                _ => Err("uploaded before the local write".to_owned()),
            }
        }
        Ok(_) => Ok(()),
        Err(why) => Err(why),
    }
}

/// Whether an object last modified at `modified` (S3's whole seconds) was uploaded before a
/// local write at `mtime_ns`, beyond the clock tolerance.
fn predates(modified: Option<i64>, mtime_ns: i64) -> bool {
    modified.is_some_and(|t| t + CLOCK_TOLERANCE_SECS < mtime_ns.div_euclid(1_000_000_000))
}

/// (size, mtime) of `path` if it is a regular file now (symlinks are not followed).
fn local_stamp(path: &Path) -> Option<(u64, i64)> {
    let meta = std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())?;
    Some((meta.len(), mtime_ns(&meta)))
}

/// The local file as it is now: `known` again when its (size, mtime) did not move, else hashed
/// (giving up between blocks once `stop` says so). Blocking.
fn local_now(path: &Path, known: Option<Local>, stop: &dyn Fn() -> bool) -> Option<Local> {
    let (size, mtime) = local_stamp(path)?;
    if let Some(f) = known.filter(|f| (f.size, f.mtime) == (size, mtime)) {
        return Some(f);
    }
    let (size, mtime, sums) = marker::hash_raw(path, stop).ok()?;
    Some(Local { size, mtime, sums })
}

/// A `StartAfter` that the listing of `key` starts at or just before: the key without its last
/// character (keys between the two are the key's own prefix extended by a smaller character, a
/// handful at most).
fn before(key: &str) -> String {
    let mut s = key.to_owned();
    s.pop();
    s
}

#[cfg(test)]
#[path = "changes_tests.rs"]
mod tests;
