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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(keys: &[&str], max_paths: usize, max_wildcards: usize) -> Vec<String> {
        let changes: Vec<Change> = keys
            .iter()
            .map(|key| Change {
                key,
                deleted: false,
            })
            .collect();
        collapse(
            &changes,
            &Limits {
                max_paths,
                max_wildcards,
            },
        )
    }

    fn assert_covered(paths: &[String], keys: &[&str]) {
        for key in keys {
            assert!(
                paths.iter().any(|p| covers(p, key)),
                "{key} not covered by {paths:?}"
            );
        }
    }

    #[test]
    fn three_pages_in_one_folder_give_exactly_their_paths_plus_the_folder_for_index() {
        let paths = run(&["blog/a.html", "blog/index.html", "blog/b.html"], 15, 15);
        assert_eq!(
            paths,
            [
                "/blog",
                "/blog/",
                "/blog/a.html",
                "/blog/b.html",
                "/blog/index.html"
            ]
        );
    }

    #[test]
    fn root_index_also_gives_the_root() {
        assert_eq!(run(&["index.html"], 15, 15), ["/", "/index.html"]);
    }

    #[test]
    fn empty_change_set_gives_no_paths() {
        assert!(collapse(&[], &Limits::default()).is_empty());
    }

    #[test]
    fn five_hundred_changes_under_blog_collapse_to_one_wildcard() {
        let keys: Vec<String> = (0..500).map(|i| format!("blog/post-{i}.html")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(run(&keys, 15, 15), ["/blog/*"]);
    }

    #[test]
    fn forty_folders_fit_in_fifteen_paths_and_every_key_is_covered() {
        let keys: Vec<String> = (0..40)
            .flat_map(|i| (0..3).map(move |j| format!("s{}/f{i}/p{j}.html", i % 5)))
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let paths = run(&keys, 15, 15);
        assert!(paths.len() <= 15, "{paths:?}");
        assert_ne!(paths, ["/*"]);
        assert_covered(&paths, &keys);
    }

    #[test]
    fn one_sufficient_wildcard_is_the_deepest() {
        let keys = ["a/b/1", "a/b/2", "a/c", "d"];
        assert_eq!(run(&keys, 3, 15), ["/a/b/*", "/a/c", "/d"]);
    }

    #[test]
    fn forty_top_level_folders_fall_back_to_everything() {
        let keys: Vec<String> = (0..40)
            .flat_map(|i| (0..2).map(move |j| format!("f{i}/p{j}")))
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(run(&keys, 15, 15), ["/*"]);
    }

    #[test]
    fn spent_wildcard_budget_falls_back_to_everything() {
        assert_eq!(run(&["a/1", "a/2", "b/1", "b/2"], 2, 1), ["/*"]);
        assert_eq!(run(&["a/1", "a/2", "b/1", "b/2"], 2, 2), ["/a/*", "/b/*"]);
    }

    // Six folders of 80 katakana: 4,326 characters encoded, and the deploy's request failed.
    #[test]
    fn an_over_long_key_is_covered_by_its_deepest_folder_that_fits() {
        let name = "ア".repeat(80);
        let deep = format!("{}/index.html", [name.as_str(); 6].join("/"));
        let five = format!("{}/", [name.as_str(); 5].join("/"));
        let paths = run(&[&deep, "top.html"], 15, 15);
        assert!(paths.iter().all(|p| p.len() <= MAX_PATH_CHARS), "{paths:?}");
        assert!(paths.contains(&(uri(&five) + "*")), "{paths:?}");
        assert!(paths.contains(&"/top.html".to_owned()), "{paths:?}");
        assert_eq!(check_batch(&paths), Ok(()));
        assert_covered(&paths, &[&deep, "top.html"]);
        // A first folder too long for any wildcard: everything.
        let huge = format!("{}/a.html", "ア".repeat(500));
        assert_eq!(run(&[&huge], 15, 15), vec!["/*"]);
    }

    #[test]
    fn keys_are_percent_encoded_and_a_star_is_not_a_wildcard() {
        assert_eq!(
            run(&["a b/caf\u{e9}*.html"], 15, 15),
            ["/a%20b/caf%C3%A9%2A.html"]
        );
        assert_eq!(run(&["~u/50%?#x"], 15, 15), ["/%7Eu/50%25%3F%23x"]);
        assert_eq!(
            run(&["a-b_c.d/(1)+!$&',;=:@"], 15, 15),
            ["/a-b_c.d/(1)+!$&',;=:@"]
        );
        assert!(!covers("/a%2A", "ab"));
        assert!(covers("/a%20b/*", "a b/x"));
        // RFC 1738 lists the brackets as unsafe too; CloudFront refused them raw.
        assert_eq!(run(&["img/[1].png"], 15, 15), ["/img/%5B1%5D.png"]);
    }

    #[test]
    fn a_changed_index_also_invalidates_the_folder_with_and_without_slash() {
        assert_eq!(
            run(&["docs/index.html"], 15, 15),
            ["/docs", "/docs/", "/docs/index.html"]
        );
    }

    #[test]
    fn marker_paths_are_encoded_once() {
        let parsed = parse_marker("/a[1]/%20ok/50%/caf\u{e9}/~u?x=1\n/b/*\n".as_bytes());
        assert_eq!(
            parsed,
            Ok(Some(vec![
                "/a%5B1%5D/%20ok/50%25/caf%C3%A9/%7Eu?x=1".to_owned(),
                "/b/*".to_owned()
            ]))
        );
        // What came out goes back in unchanged: nothing is encoded twice.
        let again = parse_marker(b"/a%5B1%5D/%20ok/50%25/caf%C3%A9/%7Eu?x=1\n");
        assert_eq!(
            again,
            Ok(Some(vec![
                "/a%5B1%5D/%20ok/50%25/caf%C3%A9/%7Eu?x=1".to_owned()
            ]))
        );
    }

    #[test]
    fn batches_cloudfront_would_refuse_are_named() {
        let ok: Vec<String> = (0..15).map(|i| format!("/d{i}/*")).collect();
        assert_eq!(check_batch(&ok), Ok(()));
        let mut sixteen = ok.clone();
        sixteen.push("/d15/*".into());
        assert!(check_batch(&sixteen)
            .expect_err("16 wildcards")
            .contains("16 wildcard"));
        for bad in ["no-slash", "/a*b", "/a[1]", "/caf\u{e9}", "/a b"] {
            let e = check_batch(&[bad.to_owned()]).expect_err(bad);
            assert!(e.contains("path"), "{bad}: {e}");
        }
        assert!(check_batch(&["/".to_owned() + &"a".repeat(4_000)]).is_err());
        let files: Vec<String> = (0..3_001).map(|i| format!("/f{i}")).collect();
        assert!(check_batch(&files)
            .expect_err("3001")
            .contains("3001 file paths"));
    }

    #[test]
    fn covers_follows_cloudfront_wildcards() {
        assert!(covers("/*", "anything/at/all"));
        assert!(covers("/blog/*", "blog/2026/post.html"));
        assert!(covers("/blog/*", "blog/"));
        assert!(!covers("/blog/*", "blogroll.html"));
        assert!(covers("/blog*", "blogroll.html"));
        assert!(covers("/blog/", "blog/"));
        assert!(!covers("/blog/", "blog/index.html"));
    }

    #[test]
    fn marker_with_paths_and_comments_is_a_sorted_list() {
        let m = b"# after the release\r\n\r\n  /news/*  \r\n/a%20b.html\r\n/caf\xC3\xA9\n/news/*\n";
        assert_eq!(
            parse_marker(m),
            Ok(Some(vec![
                "/a%20b.html".to_owned(),
                "/caf%C3%A9".to_owned(),
                "/news/*".to_owned()
            ]))
        );
        assert_eq!(
            parse_marker("\u{feff}/x".as_bytes()),
            Ok(Some(vec!["/x".to_owned()]))
        );
    }

    #[test]
    fn marker_without_a_path_list_means_configured_paths() {
        for m in [
            "",
            "\n\n",
            "# just a note\n",
            "2026-05-01T10:00:00Z\n",
            "blog/*",
        ] {
            assert_eq!(parse_marker(m.as_bytes()), Ok(None), "{m:?}");
        }
        assert_eq!(parse_marker(b"\xff\xfe\n"), Ok(None));
    }

    #[test]
    fn malformed_marker_lines_report_their_line() {
        let line_of = |m: &[u8]| parse_marker(m).map_err(|e| e.line);
        assert_eq!(line_of(b"/ok\nno-slash\n"), Err(2));
        assert_eq!(line_of(b"typo/*\n# c\n/news/*\n"), Err(1));
        assert_eq!(line_of(b"# c\n\n/a*b\n"), Err(3));
        assert_eq!(line_of(b"/a b\n"), Err(1));
        assert_eq!(line_of(b"/a\tb\n"), Err(1));
        assert_eq!(line_of(b"/ok\n/\xff\n"), Err(2));
        let long = format!("/ok\n/{}\n", "a".repeat(MAX_PATH_CHARS));
        assert_eq!(line_of(long.as_bytes()), Err(2));
        let many: String = (0..=MAX_MARKER_PATHS).map(|i| format!("/p{i}\n")).collect();
        assert_eq!(line_of(many.as_bytes()), Err(MAX_MARKER_PATHS + 1));
        let max: String = (0..MAX_MARKER_PATHS).map(|i| format!("/p{i}\n")).collect();
        assert!(parse_marker(max.as_bytes()).is_ok());
        let e = parse_marker(b"/ok\n/a*b").expect_err("malformed");
        assert_eq!(
            e.to_string(),
            "line 2: '*' is only allowed as the last character"
        );
    }

    /// Keys 1 to 3 directories deep over a small alphabet, so directories are shared, and a few
    /// fixed root files (any more and `/*` would be the only answer).
    fn key() -> impl Strategy<Value = String> {
        let file = prop_oneof![Just("index.html".to_owned()), "[ab *~\u{e9}%?\\[]{1,3}"];
        let nested = (prop::collection::vec("[ab]{1,2}", 1..4), file).prop_map(|(dirs, file)| {
            dirs.iter().map(|d| d.clone() + "/").collect::<String>() + &file
        });
        prop_oneof![
            1 => prop_oneof![Just("index.html"), Just("a b.css")].prop_map(str::to_owned),
            19 => nested,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn collapse_covers_every_change_within_the_limits(
            // Half the sets small, where exact paths and deep wildcards mix.
            keys in prop_oneof![0..100usize, 0..2000usize]
                .prop_flat_map(|n| prop::collection::vec((key(), any::<bool>()), n)),
            max_paths in 1usize..=50,
            max_wildcards in 1usize..=15,
        ) {
            let changes: Vec<Change> =
                keys.iter().map(|(key, deleted)| Change { key, deleted: *deleted }).collect();
            let paths = collapse(&changes, &Limits { max_paths, max_wildcards });

            prop_assert!(paths.windows(2).all(|w| w[0] < w[1]), "not sorted/deduped: {:?}", paths);
            prop_assert!(paths.len() <= max_paths);
            prop_assert!(paths.iter().filter(|p| p.ends_with('*')).count() <= max_wildcards);
            for c in &changes {
                for k in std::iter::once(c.key).chain(served_as(c.key)) {
                    prop_assert!(paths.iter().any(|p| covers(p, k)), "{:?} not covered by {:?}", k, paths);
                }
            }
            // Wildcards only when the exact paths do not fit.
            let exact: BTreeSet<&str> =
                changes.iter().flat_map(|c| std::iter::once(c.key).chain(served_as(c.key))).collect();
            if exact.len() <= max_paths {
                prop_assert_eq!(paths.len(), exact.len());
            }
            // Every path is one the marker rules (CloudFront's) accept, unchanged.
            if !paths.is_empty() {
                prop_assert_eq!(parse_marker(paths.join("\n").as_bytes()), Ok(Some(paths.clone())));
            }
        }
    }
}
