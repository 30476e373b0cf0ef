//! Which CloudFront paths to invalidate: from a change set ([`collapse`]) or from the marker file
//! itself ([`parse_marker`]).
//!
//! Pure logic, no I/O, so the quota-relevant decisions (how many paths, how many wildcards) are
//! property-tested here rather than against AWS. CloudFront bills per path and allows only 15
//! wildcard paths in progress, so a large change set is collapsed into the deepest `/dir/*`
//! wildcards that fit, and into `/*` only as a last resort.
//!
//! # Encoding
//! AWS asks for non-ASCII bytes and RFC 1738's "unsafe" characters to be percent-encoded and for
//! nothing else to be, or the old object is not invalidated. So a key byte stays literal iff it is
//! printable ASCII other than RFC 1738's unsafe `"` `#` `%` `<` `>` `\` `^` `` ` `` `{` `|` `}` `~`
//! `[` `]`, `?` (would start a query string) and `*` (would be a wildcard). Everything else
//! (space, controls, UTF-8 bytes of non-ASCII) becomes `%XX`, so "a b" → "/a%20b", "*" → "/%2A".
//! A path written in a marker is taken as the operator wrote it, with the same characters
//! encoded, except a `%XX` escape already there (never encoded twice) and `?` and a final `*`.
//!
//! # CloudFront's rules
//! [`check_batch`] holds a batch to what CloudFront accepts (each path starts with '/', `*` only
//! last, at most 4,000 characters, nothing left unencoded; at most 15 wildcards and 3,000 file
//! paths, its limits in progress per distribution), before any quota slot is spent on it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::cloudfront::limits;

/// CloudFront's limit on one path's length.
const MAX_PATH_CHARS: usize = limits::PATH_CHARS;
/// CloudFront's limit on file paths in progress; more in one marker can never be accepted.
const MAX_MARKER_PATHS: usize = limits::FILES_IN_PROGRESS;

/// RFC 1738's unsafe characters, which CloudFront wants percent-encoded.
const UNSAFE: &[u8] = br##""#%<>\^`{|}~[]"##;

/// One change under the web root, as an S3 key relative to the site root (no leading '/'), e.g.
/// "blog/2026/post.html".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change<'a> {
    pub key: &'a str,
    /// Deleted keys are invalidated like changed ones: the edge may still hold the old copy.
    pub deleted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_paths: usize,
    pub max_wildcards: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_paths: 15,
            max_wildcards: 15,
        }
    }
}

/// A malformed line in a marker that is a path list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct MarkerError {
    /// 1-based, counting every line of the file.
    pub line: usize,
    pub message: String,
}

/// Turn a change set into CloudFront invalidation paths, sorted and without duplicates.
///
/// Each key gives `/key`, and `dir/index.html` also gives `/dir/` and `/dir`. Over `limits.max_paths`, the
/// paths under one directory at a time are replaced by `/dir/*` while the wildcards stay within
/// `limits.max_wildcards`: the deepest directory that alone brings the count within the limit, or
/// failing that the one saving most paths, and repeat. If that cannot get within the limits the
/// result is `["/*"]`. An empty change set gives no paths.
///
/// A key longer than CloudFront takes once encoded (4,000 characters; a Japanese character is
/// 9) is covered by the deepest folder whose wildcard fits: a deep folder of long names never
/// fails a deploy. None fits, or too many wildcards: `["/*"]`. (Every other key fits, so every
/// folder above it does too: the wildcards chosen below always fit.)
pub fn collapse(changes: &[Change<'_>], limits: &Limits) -> Vec<String> {
    // Raw keys until the end: encoding is per byte and keeps '/', so directory prefixes carry over.
    let mut exact = BTreeSet::new();
    for c in changes {
        exact.insert(c.key.to_owned());
        for also in served_as(c.key) {
            exact.insert(also.to_owned());
        }
    }
    let mut wild = BTreeSet::new(); // directories ("a/b/") invalidated as "/a/b/*"
    let long: Vec<String> = exact
        .iter()
        .filter(|k| uri_len(k) > MAX_PATH_CHARS)
        .cloned()
        .collect();
    for k in long {
        if wild.iter().any(|w: &String| k.starts_with(w.as_str())) {
            continue;
        }
        // The prefixes grow, so those that fit come first; the last of them is the deepest.
        let Some(dir) = dirs(&k).take_while(|d| wildcard_fits(d)).last() else {
            return vec!["/*".to_owned()];
        };
        let dir = dir.to_owned();
        exact.retain(|e: &String| !e.starts_with(&dir));
        wild.retain(|w: &String| !w.starts_with(&dir));
        wild.insert(dir);
    }
    if wild.len() > limits.max_wildcards {
        return vec!["/*".to_owned()];
    }
    while exact.len() + wild.len() > limits.max_paths {
        let Some(dir) = next_wildcard(&exact, &wild, limits) else {
            return vec!["/*".to_owned()];
        };
        exact.retain(|k: &String| !k.starts_with(&dir));
        wild.retain(|w: &String| !w.starts_with(&dir));
        wild.insert(dir);
    }
    // No duplicates to remove: the encoding is injective (it encodes '%') and never emits a bare '*'.
    let mut paths: Vec<String> = exact
        .iter()
        .map(|k| uri(k))
        .chain(wild.iter().map(|d| uri(d) + "*"))
        .collect();
    paths.sort_unstable();
    paths
}

/// Does invalidation path `pattern` (e.g. "/blog/*" or "/a%20b.html") cover the object key `key`?
///
/// `key` may also be a directory ending in '/', standing for the `/dir/` URI its index.html is
/// served under. A `*` counts as a wildcard only at the end, as in CloudFront.
pub fn covers(pattern: &str, key: &str) -> bool {
    let uri = uri(key);
    match pattern.strip_suffix('*') {
        Some(prefix) => uri.starts_with(prefix),
        None => uri == pattern,
    }
}

/// The URL path a viewer asks for the file `rel` (relative to the site root) by: encoded as an
/// invalidation path is, under `prefix` ([`prefix`]).
pub fn viewer_path(prefix: &str, rel: &str) -> String {
    format!("{prefix}{}", &uri(rel)[1..])
}

/// Does the invalidation path `pattern` (as sent, prefix included) match the viewer path `path`
/// as CloudFront compares them: the same characters, or a prefix before a final `*`.
pub fn matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == pattern,
    }
}

/// Paths listed in the marker file's contents, if any.
///
/// Lines are trimmed; blank lines and lines starting with `#` are comments. The contents are a
/// path list iff some other line starts with '/'; then every other line must be a path, so a typo
/// is an error rather than a silent purge of the configured paths. Otherwise (empty, comments
/// only, a timestamp...) they are not a path list: `Ok(None)`, use the configured paths.
///
/// A path starts with '/', has `*` at most as its last character, no whitespace or control
/// characters (write `%20`), is UTF-8 and at most 4,000 characters once its non-ASCII characters
/// are percent-encoded (the rest is taken as written); at most 3,000 paths. The result is sorted
/// and deduplicated.
pub fn parse_marker(contents: &[u8]) -> Result<Option<Vec<String>>, MarkerError> {
    // Some editors prepend a BOM; left in, it would hide the leading '/' and mean "not a list".
    let contents = contents.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(contents);
    let lines = || {
        contents
            .split(|&b| b == b'\n')
            .map(<[u8]>::trim_ascii)
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with(b"#"))
    };
    if !lines().any(|(_, l)| l.starts_with(b"/")) {
        return Ok(None);
    }
    let mut paths = Vec::new();
    for (i, line) in lines() {
        let err = |message| MarkerError {
            line: i + 1,
            message,
        };
        if paths.len() == MAX_MARKER_PATHS {
            return Err(err(format!("more than {MAX_MARKER_PATHS} paths")));
        }
        paths.push(marker_path(line).map_err(err)?);
    }
    paths.sort_unstable();
    paths.dedup();
    Ok(Some(paths))
}

/// `cloudfront.paths` as CloudFront will take them: each path as a marker line (encoded the
/// same way), the whole list held to [`check_batch`]. Err: why not, naming the path.
pub fn configured(list: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(list.len());
    for p in list {
        out.push(marker_path(p.as_bytes()).map_err(|e| format!("{p:?}: {e}"))?);
    }
    check_batch(&out)?;
    Ok(out)
}

/// `cloudfront.path_prefix` as it is put before every path: encoded as a marker's path is,
/// always ending in '/' ("/www" → "/www/"). Err: why not.
pub fn prefix(p: &str) -> Result<String, String> {
    if p.contains('*') {
        return Err("a prefix cannot hold '*'".to_owned());
    }
    let mut path = marker_path(p.as_bytes())?;
    if !path.ends_with('/') {
        path.push('/');
    }
    // Leave room for the paths put after it.
    if path.len() > MAX_PATH_CHARS / 2 {
        return Err(format!("longer than {} characters", MAX_PATH_CHARS / 2));
    }
    Ok(path)
}

/// Every path under the URL path the site root is served at ([`prefix`]): with "/www/",
/// "/a.html" → "/www/a.html" and "/*" → "/www/*". "/" changes nothing.
pub fn under_prefix(prefix: &str, paths: Vec<String>) -> Vec<String> {
    if prefix == "/" {
        return paths;
    }
    paths
        .into_iter()
        .map(|p| format!("{prefix}{}", p.strip_prefix('/').unwrap_or(&p)))
        .collect()
}

fn marker_path(line: &[u8]) -> Result<String, String> {
    let s = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_owned())?;
    if !s.starts_with('/') {
        return Err("a path must start with '/'".to_owned());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "whitespace or a control character in a path (write a space as %20)".to_owned(),
        );
    }
    if s.find('*').is_some_and(|i| i + 1 != s.len()) {
        return Err("'*' is only allowed as the last character".to_owned());
    }
    // CloudFront rejects raw non-ASCII and unsafe characters, and encoding them is unambiguous;
    // an escape already written stays as it is.
    let path = encode_marker(s);
    if path.len() > MAX_PATH_CHARS {
        return Err(format!("longer than {MAX_PATH_CHARS} characters"));
    }
    Ok(path)
}

/// The directory whose wildcard should replace the paths under it next, or None when no wildcard
/// both saves a path and fits the wildcard budget.
///
/// If one wildcard is enough to get within `max_paths`, the deepest such (then the one replacing
/// fewest paths), as it invalidates least. Otherwise the one saving most paths (then the deepest),
/// so few wildcards are spent. Ties go to the first directory in byte order, for determinism.
fn next_wildcard(
    exact: &BTreeSet<String>,
    wild: &BTreeSet<String>,
    limits: &Limits,
) -> Option<String> {
    // Directory → (paths its wildcard would replace, how many of those are wildcards).
    let mut under: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for k in exact {
        for d in dirs(k) {
            under.entry(d).or_default().0 += 1;
        }
    }
    for w in wild {
        // Strict ancestors only: `w` itself is already a wildcard.
        for d in dirs(&w[..w.len() - 1]) {
            let e = under.entry(d).or_default();
            e.0 += 1;
            e.1 += 1;
        }
    }
    let excess = exact.len() + wild.len() - limits.max_paths;
    let fitting: Vec<(&str, usize)> = under
        .into_iter()
        .filter(|&(_, (n, w))| n > 1 && wild.len() - w < limits.max_wildcards)
        .map(|(d, (n, _))| (d, n - 1))
        .collect();
    let depth = |d: &str| d.matches('/').count();
    let enough = fitting
        .iter()
        .filter(|&&(_, saved)| saved >= excess)
        .min_by_key(|&&(d, saved)| (Reverse(depth(d)), saved));
    enough
        .or_else(|| {
            fitting
                .iter()
                .min_by_key(|&&(d, saved)| (Reverse(saved), Reverse(depth(d))))
        })
        .map(|&(d, _)| d.to_owned())
}

/// The directories `key` lies under, as prefixes ending in '/': "a/b/c" → "a/", "a/b/".
fn dirs(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices('/').map(move |(i, _)| &key[..=i])
}

/// `dir/index.html` is also served as `/dir/` (default root object, S3 website index document),
/// which CloudFront caches separately.
fn index_dir(key: &str) -> Option<&str> {
    let dir = key.strip_suffix("index.html")?;
    (dir.is_empty() || dir.ends_with('/')).then_some(dir)
}

/// The other URIs `key` is served under: `dir/index.html` as `/dir/` and, through the
/// redirect or rewrite sites put there, `/dir` (AWS's guide: both are cached separately).
fn served_as(key: &str) -> impl Iterator<Item = &str> {
    let dir = index_dir(key);
    let bare = dir
        .and_then(|d| d.strip_suffix('/'))
        .filter(|d| !d.is_empty());
    dir.into_iter().chain(bare)
}

/// The invalidation path of a key: `/` and the key, encoded as described in the module docs.
fn uri(key: &str) -> String {
    "/".to_owned() + &encode(key, literal_in_uri)
}

fn literal_in_uri(b: u8) -> bool {
    b.is_ascii_graphic() && !UNSAFE.contains(&b) && b != b'?' && b != b'*'
}

/// `uri(key).len()`, without building it.
fn uri_len(key: &str) -> usize {
    1 + key
        .bytes()
        .map(|b| if literal_in_uri(b) { 1 } else { 3 })
        .sum::<usize>()
}

/// Whether folder `dir`'s wildcard (`/dir/*`) is within CloudFront's path length.
fn wildcard_fits(dir: &str) -> bool {
    // Short names need no count: every byte encodes to at most 3 characters.
    3 * dir.len() + 2 <= MAX_PATH_CHARS || uri_len(dir) < MAX_PATH_CHARS
}

/// A path as written in a marker (or the config), encoded: non-ASCII and RFC 1738's unsafe
/// characters become `%XX`, except the `%` of an escape already there.
fn encode_marker(s: &str) -> String {
    let b = s.as_bytes();
    let escape_at = |i: usize| {
        b[i] == b'%'
            && b.len() > i + 2
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
    };
    let mut out = String::with_capacity(s.len());
    for (i, &c) in b.iter().enumerate() {
        if c.is_ascii_graphic() && (!UNSAFE.contains(&c) || escape_at(i)) {
            out.push(char::from(c));
        } else {
            let _ = write!(out, "%{c:02X}");
        }
    }
    out
}

/// Whether CloudFront would take `paths` as one invalidation batch: each path starts with
/// '/', has `*` at most as its last character, is at most 4,000 characters and has nothing left
/// to encode; at most 15 wildcard paths and 3,000 file paths (its limits in progress per
/// distribution, so a bigger batch can never be accepted). Err: why not, naming the path.
pub fn check_batch(paths: &[String]) -> Result<(), String> {
    for p in paths {
        let why = if !p.starts_with('/') {
            "does not start with '/'"
        } else if p.find('*').is_some_and(|i| i + 1 != p.len()) {
            "has '*' before its end"
        } else if p.len() > MAX_PATH_CHARS {
            "is longer than 4,000 characters"
        } else if encode_marker(p) != *p {
            "holds a character CloudFront wants percent-encoded"
        } else {
            continue;
        };
        let shown: String = p.chars().take(80).collect();
        return Err(format!("path {shown:?} {why}"));
    }
    let wild = paths.iter().filter(|p| p.ends_with('*')).count();
    if wild > limits::WILDCARDS_IN_PROGRESS {
        return Err(format!(
            "{wild} wildcard paths: CloudFront takes at most {} in progress per distribution",
            limits::WILDCARDS_IN_PROGRESS
        ));
    }
    let files = paths.len() - wild;
    if files > limits::FILES_IN_PROGRESS {
        return Err(format!(
            "{files} file paths: CloudFront takes at most {} in progress per distribution",
            limits::FILES_IN_PROGRESS
        ));
    }
    Ok(())
}

fn encode(s: &str, literal: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if literal(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests;
