//! Each watched folder's path by watch descriptor, relative to the root: every inotify event
//! names its folder by descriptor, and this is where the path comes back from.
//!
//! A folder moved within the tree keeps its descriptor (re-adding its watch returns the old
//! one) and gets its new path; a folder whose watch the kernel dropped (IN_IGNORED) is
//! forgotten. Replaced and removed entries are garbage until compaction, which happens once
//! they outweigh the live ones, and once after the start-up walk.
//!
//! ## Performance
//! The table is as big as the tree, so its cost per folder is most of the daemon's own memory
//! (BENCHMARKS.md: RSS per folder). The paths are packed into one byte arena: a folder costs its
//! path plus a 12-byte span, not a PathBuf allocation plus a hash map entry. The spans are a Vec
//! sorted by descriptor, not a map: the kernel hands descriptors out in increasing order
//! (idr_alloc_cyclic), so a new folder is a push, a lookup nearly always ends at the last span,
//! and memory grows by exactly one span per folder, where a map doubles its table in steps.
//! Compaction after the start-up walk gives the spare capacity of those steps back.

/// Folder paths by watch descriptor: one arena of path bytes and a sorted Vec of spans into it.
#[derive(Default)]
pub(super) struct Folders {
    arena: Vec<u8>,
    spans: Vec<Span>,
    /// Spans not `GONE`.
    live: usize,
    /// Arena bytes no live span points to.
    garbage: usize,
}

#[derive(Clone, Copy)]
struct Span {
    wd: i32,
    at: u32,
    len: u32,
}

/// The length of a removed folder's span (a tombstone until compaction).
const GONE: u32 = u32::MAX;

impl Folders {
    pub(super) fn len(&self) -> usize {
        self.live
    }

    fn find(&self, wd: i32) -> Result<usize, usize> {
        // Nearly always the newest descriptor, or one near it: look at the end first.
        match self.spans.last() {
            Some(last) if last.wd == wd => Ok(self.spans.len() - 1),
            Some(last) if last.wd < wd => Err(self.spans.len()),
            _ => self.spans.binary_search_by_key(&wd, |s| s.wd),
        }
    }

    fn path(&self, s: Span) -> Option<&[u8]> {
        if s.len == GONE {
            return None;
        }
        self.arena.get(s.at as usize..(s.at + s.len) as usize)
    }

    pub(super) fn get(&self, wd: i32) -> Option<&[u8]> {
        self.path(self.spans[self.find(wd).ok()?])
    }

    /// Records `rel` for `wd`; false when `wd` already had exactly this path.
    pub(super) fn set(&mut self, wd: i32, rel: &[u8]) -> bool {
        let span = Span {
            wd,
            at: self.arena.len() as u32,
            len: rel.len() as u32,
        };
        match self.find(wd) {
            Ok(i) => {
                let old = self.spans[i];
                match self.path(old) {
                    Some(p) if p == rel => return false,
                    Some(_) => self.garbage += old.len as usize,
                    None => self.live += 1,
                }
                self.spans[i] = span;
            }
            Err(i) => {
                self.spans.insert(i, span);
                self.live += 1;
            }
        }
        self.arena.extend_from_slice(rel);
        self.compact_if_needed();
        true
    }

    /// Forgets `wd`; `Some(true)` when it was the root (empty relative path).
    pub(super) fn remove(&mut self, wd: i32) -> Option<bool> {
        let i = self.find(wd).ok()?;
        let len = self.spans[i].len;
        if len == GONE {
            return None;
        }
        self.spans[i].len = GONE;
        self.live -= 1;
        self.garbage += len as usize;
        self.compact_if_needed();
        Some(len == 0)
    }

    fn compact_if_needed(&mut self) {
        let dead = self.spans.len() - self.live;
        let arena_wasted = self.garbage >= 1 << 16 && self.garbage >= self.arena.len() / 2;
        let spans_wasted = dead >= 1 << 12 && dead >= self.live;
        if arena_wasted || spans_wasted {
            self.compact();
        }
    }

    /// Drops the garbage and gives spare capacity back: after the start-up walk, memory is
    /// what the folders need, whatever the growth steps were.
    pub(super) fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        self.spans.retain(|s| s.len != GONE);
        for span in &mut self.spans {
            let (at, len) = (span.at as usize, span.len as usize);
            let new_at = arena.len() as u32;
            arena.extend_from_slice(&self.arena[at..at + len]);
            span.at = new_at;
        }
        self.spans.shrink_to_fit();
        self.arena = arena;
        self.garbage = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_paths_survive_moves_removals_and_compaction() {
        let mut f = Folders::default();
        assert!(f.set(1, b""));
        assert!(!f.set(1, b""), "same path again: already listed");
        for wd in 2..20_000 {
            assert!(f.set(wd, format!("a/{wd}").as_bytes()));
        }
        // Every folder moved (new paths), then half of them removed: compaction runs.
        for wd in 2..20_000 {
            assert!(f.set(wd, format!("b/{wd}").as_bytes()));
        }
        for wd in (2..20_000).step_by(2) {
            assert_eq!(f.remove(wd), Some(false));
        }
        assert!(f.garbage < f.arena.len().max(1 << 16));
        assert!(f.spans.len() - f.len() < f.len().max(1 << 12));
        assert_eq!(f.get(3), Some(&b"b/3"[..]));
        assert_eq!(f.get(19_999), Some(&b"b/19999"[..]));
        assert_eq!(f.get(4), None);
        assert_eq!(f.remove(1), Some(true), "the root");
        assert_eq!(f.len(), 9_999);
    }
}
