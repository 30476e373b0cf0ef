//! The move from the Lambda (issue 24): `purgewatch init` reads lsyncd's config and the old
//! Lambda (its trigger on the origin bucket, GetFunction, the code at Code.Location served by
//! the test layer as AWS serves it) and writes a config that passes `check`; `takeover` removes
//! exactly the old Lambda's trigger and `--undo` puts it back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_sdk_s3::types as s3t;

use crate::common::{self, aws_cli, Site};

/// The article's Lambda with this site's names filled in.
fn article_code(site: &Site) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/article_lambda.py"),
    )
    .expect("fixture")
    .replace("@DISTRIBUTION_ID@", &site.distribution_id)
    .replace("@ORIGIN_BUCKET@", &site.origin_bucket)
    .replace("@COUNT_BUCKET@", &site.count_bucket)
}

/// `code` zipped as lambda_function.py (by the venv's Python, as the console's zip would be).
fn zip_of(dir: &Path, code: &str) -> PathBuf {
    let py = dir.join("lambda_function.py");
    std::fs::write(&py, code).expect("write code");
    let zip = dir.join("function.zip");
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ok = Command::new(python)
        .args([
            "-c",
            "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z: z.write(sys.argv[2], 'lambda_function.py')",
        ])
        .arg(&zip)
        .arg(&py)
        .status()
        .expect("python");
    assert!(ok.success());
    zip
}

/// One more bucket on the site's emulator.
async fn new_bucket(site: &Site, name: &str) {
    site.s3
        .create_bucket()
        .bucket(name)
        .send()
        .await
        .expect("bucket");
}

fn cli(site: &Site, args: &[&str]) -> Output {
    let out = aws_cli(&site.endpoint, ("test", "test"), args);
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The old setup on the emulator: the function (with `env` as its environment) and its S3
/// trigger on the origin bucket, beside `others` entries. The function's ARN.
async fn old_lambda(site: &Site, name: &str, code: &str, env: &str) -> String {
    let role = format!("role-{name}");
    let out = cli(
        site,
        &[
            "iam",
            "create-role",
            "--role-name",
            &role,
            "--assume-role-policy-document",
            "{}",
        ],
    );
    let role_arn: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let role_arn = role_arn["Role"]["Arn"].as_str().expect("arn").to_owned();
    let zip = zip_of(site.dir.path(), code);
    let zip_arg = format!("fileb://{}", zip.display());
    let mut args = vec![
        "lambda",
        "create-function",
        "--function-name",
        name,
        "--runtime",
        "python3.12",
        "--role",
        &role_arn,
        "--handler",
        "lambda_function.lambda_handler",
        "--zip-file",
        &zip_arg,
    ];
    let env_arg = format!("Variables={{{env}}}");
    if !env.is_empty() {
        args.extend(["--environment", &env_arg]);
    }
    let out = cli(site, &args);
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    f["FunctionArn"].as_str().expect("arn").to_owned()
}

fn lambda_entry(id: &str, arn: &str) -> s3t::LambdaFunctionConfiguration {
    s3t::LambdaFunctionConfiguration::builder()
        .id(id)
        .lambda_function_arn(arn)
        .events(s3t::Event::from("s3:ObjectCreated:*"))
        .build()
        .expect("entry")
}

async fn set_notifications(site: &Site, conf: s3t::NotificationConfiguration) {
    site.s3
        .put_bucket_notification_configuration()
        .bucket(&site.origin_bucket)
        .notification_configuration(conf)
        .send()
        .await
        .expect("put notification");
}

/// `purgewatch init` against the emulator, with `lsyncd` as its config and `extra` arguments.
fn init(site: &Site, lsyncd: &Path, env: &[(&str, &str)], extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_purgewatch"));
    cmd.arg("init")
        .arg("--from-lsyncd")
        .arg(lsyncd)
        .args(["--endpoint-url", &site.endpoint])
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("PURGEWATCH_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run purgewatch init")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The project's example lsyncd config, pointed (through its environment variables, as its
/// header says) at this site's tree and bucket.
fn example_env(site: &Site, target: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LSYNCD_SOURCE", format!("{}/", site.root.display())),
        ("LSYNCD_TARGET", target.to_owned()),
    ]
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lsyncd-s3.conf.lua")
}

fn pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn init_reads_the_example_lsyncd_and_the_articles_lambda_from_its_code_location() {
    let site = Site::new().await;
    let name = format!("purge-{}", site.origin_bucket);
    let arn = old_lambda(&site, &name, &article_code(&site), "").await;
    set_notifications(
        &site,
        s3t::NotificationConfiguration::builder()
            .lambda_function_configurations(lambda_entry("purge-trigger", &arn))
            .build(),
    )
    .await;
    let out_file = site.dir.path().join("purgewatch.toml");
    let env = example_env(&site, &format!("s3://{}/", site.origin_bucket));
    let out = init(
        &site,
        &example(),
        &pairs(&env),
        &["--output", out_file.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let written = std::fs::read_to_string(&out_file).expect("written");
    // The Lambda's quota continues: its count bucket, max, period and marker, UTC.
    let cfg = purgewatch::config::Sites::load(&out_file)
        .expect("loads")
        .sites[0]
        .clone();
    assert_eq!(cfg.quota.max, 10, "{written}");
    assert_eq!(
        cfg.quota.count_bucket.as_deref(),
        Some(site.count_bucket.as_str())
    );
    assert_eq!(cfg.quota.period, purgewatch::quota::Period::Day);
    assert_eq!(cfg.quota.timezone, chrono_tz::UTC);
    assert_eq!(cfg.watch.marker, ".purge");
    assert_eq!(cfg.origin.bucket, site.origin_bucket);
    assert_eq!(
        cfg.cloudfront.distribution_ids,
        vec![site.distribution_id.clone()]
    );
    assert_eq!(cfg.cloudfront.path_prefix, "/");
    assert!(
        cfg.cloudfront.dry_run,
        "the trigger is live: shadow mode\n{written}"
    );
    // Each value says where it came from; the function is named.
    assert!(written.contains("COUNT_MAX"), "{written}");
    assert!(written.contains("lambda_function.py line"), "{written}");
    assert!(written.contains(&name), "{written}");
    assert!(written.contains("ListDistributions"), "{written}");
    // The IAM policy is filled in and the checks ran.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("arn:aws:s3:::{}", site.count_bucket)),
        "{stdout}"
    );
    assert!(
        !stdout.contains("ACCOUNT_ID") && !stdout.contains("ORIGIN_BUCKET"),
        "{stdout}"
    );
    assert!(stdout.contains("OK    config"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // Safe to run twice: the file is never overwritten without --force.
    let again = init(
        &site,
        &example(),
        &pairs(&env),
        &["--output", out_file.to_str().expect("utf-8")],
    );
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("--force"), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(&out_file).expect("still"), written);
}

#[tokio::test]
async fn init_reads_lambda_code_given_as_a_zip_or_a_py_and_the_environment_wins() {
    let site = Site::new().await;
    // A monthly count of 30, by an edited copy of the article's code.
    let code = article_code(&site)
        .replace("COUNT_MAX = 10", "COUNT_MAX = 30")
        .replace("'%Y-%m-%d'", "'%Y-%m'");
    let zip = zip_of(site.dir.path(), &code);
    let py = site.dir.path().join("lambda_function.py");
    let env = example_env(&site, &format!("s3://{}/", site.origin_bucket));
    for given in [&zip, &py] {
        let out = init(
            &site,
            &example(),
            &pairs(&env),
            &["--lambda-code", given.to_str().expect("utf-8")],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.contains("max = 30"), "{printed}");
        assert!(printed.contains("period = \"month\""), "{printed}");
        assert!(
            printed.contains(&format!("count_bucket = \"{}\"", site.count_bucket)),
            "{printed}"
        );
        assert!(printed.contains("marker = \".purge\""), "{printed}");
        // No trigger on the bucket: nothing to shadow.
        assert!(!printed.contains("dry_run = true"), "{printed}");
    }
    // A deployed function whose environment sets COUNT_MAX and TARGET_FILE: those win.
    let name = format!("purge-env-{}", site.origin_bucket);
    let arn = old_lambda(&site, &name, &code, "COUNT_MAX=5,TARGET_FILE=.cdn-purge").await;
    set_notifications(
        &site,
        s3t::NotificationConfiguration::builder()
            .lambda_function_configurations(lambda_entry("t", &arn))
            .build(),
    )
    .await;
    let out = init(&site, &example(), &pairs(&env), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("max = 5  # the Lambda's COUNT_MAX (environment COUNT_MAX)"),
        "{printed}"
    );
    assert!(printed.contains("marker = \".cdn-purge\""), "{printed}");
    assert!(printed.contains("dry_run = true"), "{printed}");
}

#[tokio::test]
async fn a_bucket_with_no_distribution_is_named_and_two_are_listed_with_nothing_written() {
    let site = Site::new().await;
    let lonely = format!("{}-lonely", site.origin_bucket);
    new_bucket(&site, &lonely).await;
    let out_file = site.dir.path().join("purgewatch.toml");
    let env = example_env(&site, &format!("s3://{lonely}/"));
    let out = init(
        &site,
        &example(),
        &pairs(&env),
        &["--output", out_file.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{lonely:?}")),
        "{}",
        text(&out)
    );
    assert!(!out_file.exists());

    // A second distribution in front of the same bucket: which one is the operator's.
    let tag = format!("{}-second", site.origin_bucket);
    let second = common::create_distribution_with(
        &site.cloudfront,
        &format!("{}.s3.us-east-1.amazonaws.com", site.origin_bucket),
        "",
        &["static.example.com"],
        &tag,
    )
    .await;
    let env = example_env(&site, &format!("s3://{}/", site.origin_bucket));
    let out = init(
        &site,
        &example(),
        &pairs(&env),
        &["--output", out_file.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&site.distribution_id) && said.contains(&second),
        "{said}"
    );
    assert!(said.contains("static.example.com"), "{said}");
    assert!(!out_file.exists(), "nothing written");
    let out = init(
        &site,
        &example(),
        &pairs(&env),
        &[
            "--output",
            out_file.to_str().expect("utf-8"),
            "--distribution",
            &second,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(std::fs::read_to_string(&out_file)
        .expect("written")
        .contains(&second));
}

#[tokio::test]
async fn path_prefix_comes_from_the_origin_path_and_the_prefix() {
    let site = Site::new().await;
    // No origin path, lsyncd into www/: the site is served under /www/.
    let env = example_env(&site, &format!("s3://{}/www/", site.origin_bucket));
    let out = init(&site, &example(), &pairs(&env), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("path_prefix = \"/www/\""), "{printed}");
    assert!(printed.contains("prefix = \"www/\""), "{printed}");
    // A bucket whose distribution has origin path /www: the same prefix is served at /.
    let other = format!("{}-op", site.origin_bucket);
    new_bucket(&site, &other).await;
    let other_dist = common::create_distribution_with(
        &site.cloudfront,
        &format!("{other}.s3.amazonaws.com"),
        "/www",
        &[],
        &other,
    )
    .await;
    let env = example_env(&site, &format!("s3://{other}/www/"));
    let out = init(&site, &example(), &pairs(&env), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("path_prefix = \"/\""), "{printed}");
    // `check` says what a wrong path_prefix should be.
    let toml = site
        .toml("", "", "prefix = \"www/\"")
        .replace(&site.origin_bucket, &other)
        .replace(&site.distribution_id, &other_dist)
        .replace("[cloudfront]", "[cloudfront]\npath_prefix = \"/www/\"");
    let file = site.config_file(&toml);
    let out = Command::new(env!("CARGO_BIN_EXE_purgewatch"))
        .args(["--config", file.to_str().expect("utf-8"), "check"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .expect("check");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("set path_prefix = \"/\""), "{said}");
}

#[tokio::test]
async fn an_lsyncd_config_without_s3_exits_1_naming_each_sync() {
    let site = Site::new().await;
    let lua = site.dir.path().join("lsyncd.conf.lua");
    std::fs::write(
        &lua,
        "settings { logfile = '/tmp/x.log' }\nsync { default.rsync, source = '/var/www/html', target = 'backup:/srv/www' }\n",
    )
    .expect("write");
    let out = init(&site, &lua, &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("no sync{} into S3"), "{said}");
    assert!(
        said.contains("sync #1") && said.contains("backup:/srv/www"),
        "{said}"
    );
}

#[tokio::test]
async fn two_syncs_become_two_sites_that_pass_check() {
    let site = Site::new().await;
    let second = format!("{}-b", site.origin_bucket);
    new_bucket(&site, &second).await;
    common::create_distribution_with(
        &site.cloudfront,
        &format!("{second}.s3.amazonaws.com"),
        "",
        &[],
        &second,
    )
    .await;
    let other_root = site.dir.path().join("shop");
    std::fs::create_dir_all(&other_root).expect("mkdir");
    let lua = site.dir.path().join("lsyncd.conf.lua");
    // Locals, a function and `..`, as people write them.
    std::fs::write(
        &lua,
        format!(
            r#"local base = "{base}"
local function s3(bucket, prefix) return "s3://" .. bucket .. "/" .. (prefix or "") end
local layer = {{ delay = 5, maxProcesses = 1 }}
sync {{ layer, source = base .. "/html/", target = s3("{a}") }}
sync {{ layer, source = "{shop}/", target = s3("{b}", "shop/") }}
"#,
            base = site.dir.path().display(),
            a = site.origin_bucket,
            shop = other_root.display(),
            b = second,
        ),
    )
    .expect("write");
    let out_file = site.dir.path().join("sites.toml");
    let out = init(
        &site,
        &lua,
        &[],
        &["--output", out_file.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let sites = purgewatch::config::Sites::load(&out_file).expect("loads");
    assert_eq!(sites.sites.len(), 2);
    assert_eq!(sites.sites[0].origin.bucket, site.origin_bucket);
    assert_eq!(sites.sites[1].origin.bucket, second);
    assert_eq!(sites.sites[1].cloudfront.path_prefix, "/shop/");
}

#[tokio::test]
async fn takeover_removes_only_the_old_lambdas_trigger_and_undo_puts_it_back() {
    let site = Site::new().await;
    let name = format!("purge-{}", site.origin_bucket);
    let arn = old_lambda(&site, &name, &article_code(&site), "").await;
    let resizer = format!("resize-{}", site.origin_bucket);
    let resizer_arn = old_lambda(&site, &resizer, "def handler(e, c):\n    return 1\n", "").await;
    let queue = s3t::QueueConfiguration::builder()
        .id("to-queue")
        .queue_arn("arn:aws:sqs:us-east-1:123456789012:uploads")
        .events(s3t::Event::from("s3:ObjectRemoved:*"))
        .filter(
            s3t::NotificationConfigurationFilter::builder()
                .key(
                    s3t::S3KeyFilter::builder()
                        .filter_rules(
                            s3t::FilterRule::builder()
                                .name(s3t::FilterRuleName::Suffix)
                                .value(".jpg")
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .build()
        .expect("queue");
    set_notifications(
        &site,
        s3t::NotificationConfiguration::builder()
            .lambda_function_configurations(lambda_entry("purge-trigger", &arn))
            .lambda_function_configurations(lambda_entry("resize", &resizer_arn))
            .queue_configurations(queue)
            .event_bridge_configuration(s3t::EventBridgeConfiguration::builder().build())
            .build(),
    )
    .await;
    let before = notifications(&site).await;
    // init, then the shadow week's database, then takeover.
    let out_file = site.dir.path().join("purgewatch.toml");
    let env = example_env(&site, &format!("s3://{}/", site.origin_bucket));
    let out = init(
        &site,
        &example(),
        &pairs(&env),
        &["--output", out_file.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut toml = std::fs::read_to_string(&out_file).expect("written");
    toml.push_str(&format!(
        "\n[state]\ndatabase = \"{}\"\n",
        site.db.display()
    ));
    std::fs::write(&out_file, &toml).expect("write");
    // The shadow week, short: one deploy recorded as a dry run while "the Lambda" counted 2.
    site.put_count_object(&common::today_utc(), "2").await;
    let cfg = purgewatch::config::Sites::load(&out_file)
        .expect("loads")
        .sites[0]
        .clone();
    let daemon = site.start_config((*cfg).clone()).await;
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await;
    site.settled(1, &["dry_run"]).await;
    daemon.shutdown().await.expect("shutdown");
    let takeover = |undo: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_purgewatch"));
        cmd.args(["--config", out_file.to_str().expect("utf-8"), "takeover"])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1");
        if undo {
            cmd.arg("--undo");
        }
        cmd.output().expect("takeover")
    };
    let out = takeover(false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The shadow run beside the Lambda's count for today: 1 request, 1 purge, "2", /*.
    let said = String::from_utf8_lossy(&out.stdout);
    let today = said
        .lines()
        .find(|l| l.trim_start().starts_with(&common::today_utc()))
        .unwrap_or_else(|| panic!("no line for today: {said}"));
    let cols: Vec<&str> = today.split_whitespace().collect();
    assert_eq!(&cols[1..], ["1", "1", "2", "/*"], "{said}");
    let after = notifications(&site).await;
    let names: Vec<&str> = after
        .lambda_function_configurations()
        .iter()
        .map(|c| c.lambda_function_arn())
        .collect();
    assert_eq!(
        names,
        vec![resizer_arn.as_str()],
        "only the old Lambda's entry removed"
    );
    assert_eq!(
        after.queue_configurations(),
        before.queue_configurations(),
        "the queue kept exactly"
    );
    assert!(
        after.event_bridge_configuration().is_some(),
        "EventBridge kept on"
    );
    let now = std::fs::read_to_string(&out_file).expect("config");
    assert_eq!(
        now,
        toml.replace("dry_run = true", "dry_run = false"),
        "comments and layout kept"
    );
    // Twice: harmless.
    let again = takeover(false);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        text(&again).contains("nothing to remove"),
        "{}",
        text(&again)
    );
    assert_eq!(parts(&notifications(&site).await), parts(&after));
    // Undo: exactly what was there.
    let out = takeover(true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let restored = notifications(&site).await;
    let mut want: Vec<_> = before.lambda_function_configurations().to_vec();
    let mut got: Vec<_> = restored.lambda_function_configurations().to_vec();
    want.sort_by(|a, b| a.id().cmp(&b.id()));
    got.sort_by(|a, b| a.id().cmp(&b.id()));
    assert_eq!(got, want);
    assert_eq!(
        restored.queue_configurations(),
        before.queue_configurations()
    );
    assert!(std::fs::read_to_string(&out_file)
        .expect("config")
        .contains("dry_run = true"));
}

type Parts = (
    Vec<s3t::LambdaFunctionConfiguration>,
    Vec<s3t::QueueConfiguration>,
    Vec<s3t::TopicConfiguration>,
    bool,
);

/// The configuration without the answer's request id.
fn parts(
    o: &aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput,
) -> Parts {
    (
        o.lambda_function_configurations().to_vec(),
        o.queue_configurations().to_vec(),
        o.topic_configurations().to_vec(),
        o.event_bridge_configuration().is_some(),
    )
}

async fn notifications(
    site: &Site,
) -> aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput{
    site.s3
        .get_bucket_notification_configuration()
        .bucket(&site.origin_bucket)
        .send()
        .await
        .expect("get notification")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_sent_is_put_under_path_prefix() {
    let site = Site::new().await;
    let toml = site
        .toml("", "", "")
        .replace("[cloudfront]", "[cloudfront]\npath_prefix = \"/www\"");
    let daemon = site.start_with(&toml).await;
    site.write("news/.purge", b"/news/today.html\n/img/*\n");
    site.upload("news/.purge").await;
    site.settled(1, &["completed"]).await;
    site.write(".purge", b"all\n");
    site.upload(".purge").await;
    site.settled(2, &["completed"]).await;
    let mut invs: Vec<Vec<String>> = site
        .invalidations()
        .await
        .into_iter()
        .map(|i| i.2)
        .collect();
    invs.sort();
    assert_eq!(
        invs,
        vec![
            vec!["/www/*".to_string()],
            vec!["/www/img/*".to_string(), "/www/news/today.html".to_string()],
        ]
    );
    daemon.shutdown().await.expect("shutdown");
}
