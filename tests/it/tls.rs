//! HTTPS to AWS as on a real server: the SDK's client (rustls on ring) trusts the system's root
//! certificates, so an endpoint signed by a CA the system knows works and any other is refused.
//! The emulator serves TLS with a certificate for 127.0.0.1 from a CA made here; the daemon is
//! told about that CA the standard way (SSL_CERT_FILE), as an operator behind a TLS-inspecting
//! proxy would.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{aws_cli, PrivateEmulator};

/// A CA, and a server certificate for IP 127.0.0.1 signed by it (openssl CLI, P-256 keys).
fn make_certs(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let p = |n: &str| dir.join(n);
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .ok()?;
    // A fresh P-256 key, no passphrase.
    const KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let steps = [
        format!(
            "req -x509 {KEY} -keyout ca.key -out ca.pem -days 2 -subj /CN=purgewatch-test-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
        ),
        format!("req {KEY} -keyout leaf.key -out leaf.csr -subj /CN=127.0.0.1"),
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 \
         -extfile leaf.ext"
            .to_string(),
    ];
    for args in steps {
        let ok = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .ok()?
            .status
            .success();
        if !ok {
            return None;
        }
    }
    Some((p("ca.pem"), p("leaf.pem"), p("leaf.key")))
}

fn run(config: &Path, args: &[&str], ca: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_purgewatch"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", ca);
    }
    cmd.output().expect("run purgewatch")
}

#[test]
fn https_works_with_a_trusted_ca_and_is_refused_with_an_unknown_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((ca, cert, key)) = make_certs(dir.path()) else {
        eprintln!("skipped: the openssl CLI is missing or failed");
        return;
    };
    let emu = PrivateEmulator::start_tls(&cert, &key);
    let ca_s = ca.display().to_string();
    let cli = |args: &[&str]| {
        let mut all = vec!["--ca-bundle", ca_s.as_str()];
        all.extend_from_slice(args);
        let out = aws_cli(&emu.url, ("test", "test"), &all);
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for b in ["tls-origin", "tls-count"] {
        cli(&["s3api", "create-bucket", "--bucket", b]);
    }
    let dist = cli(&[
        "cloudfront",
        "create-distribution",
        "--origin-domain-name",
        "tls-origin.s3.amazonaws.com",
        "--query",
        "Distribution.Id",
        "--output",
        "text",
    ]);
    let root = dir.path().join("html");
    std::fs::create_dir_all(&root).expect("mkdir");
    let db = dir.path().join("pw.db");
    let config = dir.path().join("purgewatch.toml");
    std::fs::write(
        &config,
        format!(
            "[watch]\nroot = \"{}\"\n[origin]\nbucket = \"tls-origin\"\n[quota]\nmax = 10\n\
             count_bucket = \"tls-count\"\n[cloudfront]\ndistribution_id = \"{dist}\"\n\
             [state]\ndatabase = \"{}\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            root.display(),
            db.display(),
            emu.url
        ),
    )
    .expect("config");

    // Trusted: a purge by hand goes through S3 (the count object) and CloudFront over TLS.
    let out = run(&config, &["purge", "--wait"], Some(&ca));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "purge over HTTPS: {text}");
    let rows = purgewatch::store::requests::history(
        &rusqlite::Connection::open(&db).expect("db"),
        None,
        10,
    )
    .expect("history");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, "completed", "{rows:?}");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let count = cli(&["s3", "cp", &format!("s3://tls-count/{today}.txt"), "-"]);
    assert_eq!(count, "1");

    // The same endpoint with only the system's roots: refused, and `check` says why.
    let out = run(&config, &["check"], None);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown CA must not pass: {text}");
    assert!(
        text.contains("FAIL") && text.to_lowercase().contains("certificate"),
        "check names the certificate problem: {text}"
    );
}
