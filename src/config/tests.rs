//! The config's rules, key by key.

use super::*;
use crate::quota::{Period, WhenExhausted};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/pw.toml"), text)
}

const GOOD: &str = r#"
[watch]
root = "/tmp"
[origin]
bucket = "my-origin"
[quota]
max = 10
[cloudfront]
distribution_id = "E2EXAMPLE"
"#;

#[test]
fn defaults_match_the_seed() {
    let c = parse(GOOD).expect("valid");
    assert_eq!(c.watch.marker, ".purge");
    assert_eq!(c.watch.settle, Duration::from_secs(2));
    assert_eq!(c.origin.wait_timeout, Duration::from_secs(900));
    assert_eq!(c.quota.period, Period::Day);
    assert_eq!(c.quota.timezone, chrono_tz::UTC);
    assert_eq!(c.quota.when_exhausted, WhenExhausted::Skip);
    assert_eq!(c.cloudfront.paths, Paths::Fixed(vec!["/*".to_string()]));
    assert_eq!(c.origin.wait_for, WaitFor::Marker);
}

#[test]
fn distribution_id_is_one_id_or_a_list_of_distinct_ids() {
    let one = parse(GOOD).expect("valid");
    assert_eq!(one.cloudfront.distribution_ids, ["E2EXAMPLE"]);
    let two =
        parse(&GOOD.replace("\"E2EXAMPLE\"", "[\"E2EXAMPLE\", \"E3STAGING\"]")).expect("valid");
    assert_eq!(two.cloudfront.distribution_ids, ["E2EXAMPLE", "E3STAGING"]);
    for (bad, says) in [
        ("[]", "empty list"),
        ("[\"E2EXAMPLE\", \"E2EXAMPLE\"]", "twice"),
        ("[\"E2EXAMPLE\", \"\"]", "is empty"),
        ("\"E2/../x\"", "not a distribution ID"),
        ("3", "a distribution ID like"),
    ] {
        let e = parse(&GOOD.replace("\"E2EXAMPLE\"", bad)).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("/etc/pw.toml")
                && s.contains("cloudfront.distribution_id")
                && s.contains(says),
            "{bad}: {s}"
        );
    }
}

#[test]
fn the_edge_check_is_off_by_default_and_its_urls_are_one_per_distribution() {
    let c = parse(GOOD).expect("valid");
    assert!(!c.cloudfront.edge_check);
    assert_eq!(c.cloudfront.edge_urls, [None]);
    assert_eq!(c.cloudfront.edge_retry_for, Duration::from_secs(180));
    let on = |extra: &str| {
        parse(&GOOD.replace(
            "distribution_id = \"E2EXAMPLE\"",
            &format!(
                "distribution_id = [\"E2EXAMPLE\", \"E3STAGING\"]\nedge_check = true\n{extra}"
            ),
        ))
    };
    let c = on("edge_url = [\"https://www.example.com/\", \"http://127.0.0.1:8080/edge\"]")
        .expect("valid");
    assert_eq!(
        c.cloudfront.edge_urls,
        [
            Some("https://www.example.com".to_owned()),
            Some("http://127.0.0.1:8080/edge".to_owned())
        ]
    );
    for (bad, says) in [
        (
            "edge_url = \"https://www.example.com\"",
            "1 URL(s) for 2 distribution(s)",
        ),
        (
            "edge_url = [\"http://www.example.com\", \"https://b\"]",
            "must start with https://",
        ),
        (
            "edge_url = [\"https://a/?x=1\", \"https://b\"]",
            "has a query",
        ),
        ("edge_retry_for = \"soon\"", "edge_retry_for"),
    ] {
        let s = on(bad).unwrap_err().to_string();
        assert!(s.contains("/etc/pw.toml") && s.contains(says), "{bad}: {s}");
    }
}

#[test]
fn unknown_key_is_named_with_its_table() {
    let e = parse(&GOOD.replace("max = 10", "max = 10\nmaxx = 3")).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("/etc/pw.toml") && s.contains("quota.maxx"),
        "{s}"
    );
}

#[test]
fn wrong_type_is_named() {
    let s = parse(&GOOD.replace("max = 10", "max = \"ten\""))
        .unwrap_err()
        .to_string();
    assert!(s.contains("key `quota.max`"), "{s}");
}

#[test]
fn missing_required_key_is_named() {
    let s = parse(&GOOD.replace("bucket = \"my-origin\"", ""))
        .unwrap_err()
        .to_string();
    assert!(
        s.contains("key `origin.bucket`") && s.contains("missing"),
        "{s}"
    );
}

#[test]
fn the_packaged_config_fails_until_filled_in() {
    let text = include_str!("../../packaging/purgewatch.toml").replace("/var/www/html", "/tmp");
    let s = parse(&text).unwrap_err().to_string();
    assert!(
        s.contains("key `origin.bucket`") && s.contains("is empty"),
        "{s}"
    );
    let filled = text.replace("bucket = \"\"", "bucket = \"my-origin\"");
    let s = parse(&filled).unwrap_err().to_string();
    assert!(s.contains("key `cloudfront.distribution_id`"), "{s}");
    let done = filled.replace("distribution_id = \"\"", "distribution_id = \"E2EXAMPLE\"");
    assert!(parse(&done).is_ok());
}

#[test]
fn keep_is_a_duration_of_a_second_or_more() {
    let c = parse(GOOD).expect("valid");
    assert_eq!(c.state.keep, Duration::from_secs(400 * 86_400));
    assert_eq!(c.state.keep_changes, Duration::from_secs(7 * 86_400));
    let s = parse(&format!("{GOOD}[state]\nkeep = \"500ms\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        s.contains("key `state.keep`") && s.contains("at least 1s"),
        "{s}"
    );
    let c = parse(&format!(
        "{GOOD}[state]\nkeep = \"2s\"\nkeep_changes = \"1s\"\n"
    ))
    .expect("ok");
    assert_eq!(c.state.keep, Duration::from_secs(2));
}

#[test]
fn bad_duration_is_named() {
    let s = parse(&GOOD.replace("[origin]", "[origin]\nwait_timeout = \"soon\""))
        .unwrap_err()
        .to_string();
    assert!(s.contains("origin.wait_timeout"), "{s}");
}

#[test]
fn a_metrics_listen_that_is_not_an_address_is_named() {
    let e = parse(&format!("{GOOD}[metrics]\nlisten = \"nonsense\"\n")).unwrap_err();
    let s = e.to_string();
    assert!(
        matches!(e, ConfigError::Invalid { .. }) && s.contains("key `metrics.listen`"),
        "{s}"
    );
    let c = parse(&format!("{GOOD}[metrics]\nlisten = \"127.0.0.1:9465\"\n")).expect("valid");
    assert_eq!(c.metrics.listen, Some(([127, 0, 0, 1], 9465).into()));
}

mod webhook_tests {
    use super::*;

    const BASE: &str = "[watch]\nroot = \"/tmp\"\n[origin]\nbucket = \"abc\"\n[quota]\nmax = 1\n[cloudfront]\ndistribution_id = \"E\"\n[notify]\n";

    // A webhook without https:// was echoed whole, token and all, into the journal.
    #[test]
    fn a_bad_webhook_is_named_never_shown() {
        for url in [
            "http://hooks.slack.com/services/T0/B0/SECRETTOKEN",
            "hooks.slack.com/services/T0/B0/SECRETTOKEN",
            "https://hooks slack.com/SECRETTOKEN",
            "https:///SECRETTOKEN",
            "ftp://h/SECRETTOKEN",
            "http://10.0.0.1/SECRETTOKEN",
        ] {
            let text = format!("{BASE}webhook = \"{url}\"\n");
            let e = Config::parse(Path::new("/etc/pw.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains("key `notify.webhook`"), "{url}: {e}");
            assert!(!e.contains("SECRETTOKEN"), "{url}: {e}");
        }
        for url in [
            "https://hooks.slack.com/services/T0/B0/X",
            "http://127.0.0.1:8080/hook",
            "http://[::1]:8080/hook",
            "http://localhost/hook",
        ] {
            let text = format!("{BASE}webhook = \"{url}\"\n");
            assert!(Config::parse(Path::new("f"), &text).is_ok(), "{url}");
        }
    }

    #[test]
    fn debug_shows_where_the_webhook_goes_not_its_token() {
        let text = format!("{BASE}webhook = \"https://hooks.slack.com/services/T0/B0/SECRET\"\n");
        let c = Config::parse(Path::new("f"), &text).expect("valid");
        let d = format!("{c:?}");
        assert!(
            d.contains("https://hooks.slack.com/…") && !d.contains("SECRET"),
            "{d}"
        );
    }
}

mod paths_tests {
    use super::*;

    #[test]
    fn paths_is_a_list_or_the_word_changed() {
        let base = "[watch]\nroot = \"/tmp\"\n[origin]\nbucket = \"abc\"\nwait_for = \"changes\"\n[quota]\nmax = 1\n[cloudfront]\ndistribution_id = \"E\"\n";
        let c = Config::parse(Path::new("f"), &format!("{base}paths = \"changed\"\n")).expect("ok");
        assert_eq!(c.cloudfront.paths, Paths::Changed);
        assert_eq!(c.origin.wait_for, WaitFor::Changes);
        let e = Config::parse(Path::new("f"), &format!("{base}paths = \"all\"\n")).unwrap_err();
        assert!(e.to_string().contains("cloudfront.paths"), "{e}");
        let e = Config::parse(Path::new("f"), &format!("{base}max_paths = 0\n")).unwrap_err();
        assert!(e.to_string().contains("cloudfront.max_paths"), "{e}");
    }

    // Paths CloudFront refuses spent a quota slot on every purge: now the config says so.
    #[test]
    fn paths_cloudfront_would_refuse_are_a_config_error() {
        let base = "[watch]\nroot = \"/tmp\"\n[origin]\nbucket = \"abc\"\n[quota]\nmax = 1\n[cloudfront]\ndistribution_id = \"E\"\n";
        let sixteen: Vec<String> = (0..16).map(|i| format!("\"/d{i}/*\"")).collect();
        for bad in [
            "[\"/a*b\"]",
            "[\"img\"]",
            "[\"/a b\"]".to_owned().as_str(),
            &format!("[{}]", sixteen.join(",")),
        ] {
            let e = Config::parse(Path::new("f"), &format!("{base}paths = {bad}\n")).unwrap_err();
            assert!(
                e.to_string().contains("key `cloudfront.paths`"),
                "{bad}: {e}"
            );
        }
        // What can be encoded is encoded, once.
        let c = Config::parse(
            Path::new("f"),
            &format!("{base}paths = [\"/img/[1].png\", \"/a%20b\"]\n"),
        )
        .expect("encodable");
        assert_eq!(
            c.cloudfront.paths,
            Paths::Fixed(vec!["/img/%5B1%5D.png".into(), "/a%20b".into()])
        );
    }
}
