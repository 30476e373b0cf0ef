//! The shipped least-privilege IAM policy (packaging/iam-policy.json), enforced by the emulator:
//! enough for a whole purge, and no write to the origin.

use std::process::Command;
use std::time::Duration;

use crate::common::{aws_cli, daemon_command, poll, spawn_watching, PrivateEmulator};

fn ok(emu: &PrivateEmulator, keys: (&str, &str), args: &[&str]) -> String {
    let out = aws_cli(&emu.url, keys, args);
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Creates a user with an inline policy and returns its access keys.
fn user(
    emu: &PrivateEmulator,
    name: &str,
    policy: &str,
    dir: &std::path::Path,
) -> (String, String) {
    let root = ("test", "test");
    let file = dir.join(format!("{name}-policy.json"));
    std::fs::write(&file, policy).expect("write policy");
    ok(emu, root, &["iam", "create-user", "--user-name", name]);
    let doc = format!("file://{}", file.display());
    ok(
        emu,
        root,
        &[
            "iam",
            "put-user-policy",
            "--user-name",
            name,
            "--policy-name",
            name,
            "--policy-document",
            &doc,
        ],
    );
    let keys = ok(
        emu,
        root,
        &[
            "iam",
            "create-access-key",
            "--user-name",
            name,
            "--query",
            "AccessKey.[AccessKeyId,SecretAccessKey]",
            "--output",
            "text",
        ],
    );
    let mut k = keys.split_whitespace();
    (
        k.next().expect("key id").to_owned(),
        k.next().expect("secret").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_iam_policy_allows_a_whole_purge_and_denies_origin_writes() {
    let emu = PrivateEmulator::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = ("test", "test");
    ok(&emu, root, &["s3", "mb", "s3://iam-origin"]);
    ok(&emu, root, &["s3", "mb", "s3://iam-count"]);
    let dist = ok(
        &emu,
        root,
        &[
            "cloudfront",
            "create-distribution",
            "--origin-domain-name",
            "iam-origin.s3.amazonaws.com",
            "--query",
            "Distribution.Id",
            "--output",
            "text",
        ],
    );
    let arn = format!("arn:aws:cloudfront::123456789012:distribution/{dist}");
    let policy = include_str!("../../packaging/iam-policy.json")
        .replace("ORIGIN_BUCKET", "iam-origin")
        .replace("ORIGIN_PREFIX", "")
        .replace("COUNT_BUCKET", "iam-count")
        .replace("ACCOUNT_ID", "123456789012")
        .replace("DISTRIBUTION_ID", &dist);
    assert!(
        policy.contains(&arn),
        "the shipped policy names the distribution's ARN"
    );
    // moto checks CloudFront actions against Resource "*" only, so this one statement is widened
    // here; the S3 statements are tested exactly as shipped.
    let policy = policy.replace(&arn, "*");
    let limited = user(&emu, "purgewatch", &policy, dir.path());
    let admin = user(
        &emu,
        "deployer",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        dir.path(),
    );
    let status = emu.post("/moto-api/reset-auth", "0");
    assert!(status.contains("200"), "enforcement on: {status}");
    let denied = aws_cli(&emu.url, root, &["s3", "ls"]);
    assert!(
        !denied.status.success(),
        "unknown keys are refused once IAM is enforced"
    );

    let tree = dir.path().join("html");
    std::fs::create_dir_all(&tree).expect("mkdir");
    let db = dir.path().join("state.db");
    let config = dir.path().join("purgewatch.toml");
    std::fs::write(
        &config,
        format!(
            "[watch]\nroot = \"{}\"\nsettle = \"200ms\"\n[origin]\nbucket = \"iam-origin\"\nwait_timeout = \"30s\"\n\
             [quota]\nmax = 5\ncount_bucket = \"iam-count\"\n[cloudfront]\ndistribution_id = \"{dist}\"\n\
             [state]\ndatabase = \"{}\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            tree.display(),
            db.display(),
            emu.url
        ),
    )
    .expect("config");

    let check = Command::new(env!("CARGO_BIN_EXE_purgewatch"))
        .args(["--config", &config.display().to_string(), "check"])
        .env("AWS_ACCESS_KEY_ID", &limited.0)
        .env("AWS_SECRET_ACCESS_KEY", &limited.1)
        .output()
        .expect("check");
    let report = String::from_utf8_lossy(&check.stdout);
    for item in ["origin.bucket", "quota.count_bucket"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("OK") && l.contains(item)),
            "check with the policy's keys: {report}"
        );
    }
    // moto 5.2 cannot verify the SigV4 signature of a CloudFront GET (List/GetInvalidation): it
    // hashes the request headers as the payload and answers SignatureDoesNotMatch whatever the
    // policy. CreateInvalidation (a POST) is checked; the GETs are checked with enforcement off.

    let mut cmd = daemon_command(&config);
    cmd.env("AWS_ACCESS_KEY_ID", &limited.0)
        .env("AWS_SECRET_ACCESS_KEY", &limited.1);
    let daemon = spawn_watching(cmd);
    let marker = tree.join(".purge");
    std::fs::write(&marker, b"iam test\n").expect("marker");
    ok(
        &emu,
        (&admin.0, &admin.1),
        &[
            "s3",
            "cp",
            &marker.display().to_string(),
            "s3://iam-origin/.purge",
        ],
    );

    let history = |status: &'static str| {
        let db = db.clone();
        async move {
            let conn = rusqlite::Connection::open(&db).ok()?;
            let rows = purgewatch::store::requests::history(&conn, None, 10).ok()?;
            (rows.len() == 1 && rows[0].status == status).then_some(rows)
        }
    };
    // S3 reads, the count object's conditional write and CreateInvalidation, all under the policy.
    poll(
        "the invalidation to be created",
        Duration::from_secs(60),
        || history("invalidated"),
    )
    .await;
    // The daemon's keys may read the origin, never write it.
    let write = aws_cli(
        &emu.url,
        (&limited.0, &limited.1),
        &[
            "s3",
            "cp",
            &marker.display().to_string(),
            "s3://iam-origin/defaced.html",
        ],
    );
    assert!(!write.status.success(), "origin write must be denied");
    assert!(String::from_utf8_lossy(&write.stderr).contains("AccessDenied"));
    let status = emu.post("/moto-api/reset-auth", "inf");
    assert!(
        status.contains("200"),
        "enforcement off for the status GETs: {status}"
    );
    let rows = poll("the purge to complete", Duration::from_secs(60), || {
        history("completed")
    })
    .await;
    drop(daemon);
    let invs = ok(
        &emu,
        (&admin.0, &admin.1),
        &[
            "cloudfront",
            "list-invalidations",
            "--distribution-id",
            &dist,
            "--query",
            "InvalidationList.Items[].Id",
            "--output",
            "text",
        ],
    );
    assert_eq!(invs, rows[0].invalidation_id.clone().unwrap_or_default());
    let period = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let count = ok(
        &emu,
        (&admin.0, &admin.1),
        &["s3", "cp", &format!("s3://iam-count/{period}.txt"), "-"],
    );
    assert_eq!(count, "1");
}
