//! The tests of `paths`: the collapse's limits and coverage (with proptest), markers' path
//! lists, CloudFront's path rules.

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
    let nested = (prop::collection::vec("[ab]{1,2}", 1..4), file)
        .prop_map(|(dirs, file)| dirs.iter().map(|d| d.clone() + "/").collect::<String>() + &file);
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
