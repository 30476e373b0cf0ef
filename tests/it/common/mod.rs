//! The shared harness: one moto_server for the whole test binary (on a free 127.0.0.1 port),
//! and per test a `Site`: its own origin bucket, count bucket, distribution, tree and database.

#![allow(dead_code)]

pub mod proxy;
pub mod strict;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_cloudfront::types as cf;
use purgewatch::config::Config;

pub struct Emulator {
    pub url: String,
}

static EMULATOR: OnceLock<Emulator> = OnceLock::new();

/// The emulator: moto from the .venv the test command made, through tests/moto_atomic.py (which
/// makes S3 conditional writes atomic, as in S3), or the server named by PURGEWATCH_MOTO_SERVER.
/// The built CLI with `--config config` and `args`, the emulator's fake credentials, no IMDS.
pub fn purgewatch(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_purgewatch"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("RUST_LOG")
        .output()
        .expect("run purgewatch")
}

/// The Python of the .venv the test command made (moto, boto3), else the system's.
pub fn python() -> PathBuf {
    let venv_python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv_python.exists() {
        venv_python
    } else {
        PathBuf::from("python3")
    }
}

fn moto_command(port: u16) -> Command {
    let port = port.to_string();
    if let Ok(p) = std::env::var("PURGEWATCH_MOTO_SERVER") {
        let mut c = Command::new(p);
        c.args(["-H", "127.0.0.1", "-p", &port]);
        return c;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Command::new(python());
    c.arg(root.join("tests/moto_atomic.py"))
        .args(["-H", "127.0.0.1", "-p", &port]);
    c
}

/// Bytes the process has read so far (`rchar` of /proc/PID/io).
pub fn read_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("rchar: ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A port free on 127.0.0.1 a moment ago, for a listener the test configures.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("addr").port()
}

fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

/// Starts the emulator once per test process. The child is spawned from a thread that lives
/// as long as the process, with PDEATHSIG, so the emulator dies with the test binary.
pub fn emulator() -> &'static Emulator {
    EMULATOR.get_or_init(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_DEFAULT_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        if let Ok(url) = std::env::var("PURGEWATCH_TEST_ENDPOINT") {
            return Emulator { url };
        }
        let port = free_port();
        let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<u32>>();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = moto_command(port);
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(child) => {
                    let _ = tx.send(Ok(child.id()));
                    let _keep: Child = child;
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        match rx.recv().expect("spawner thread") {
            Ok(_) => {}
            Err(e) => panic!(
                "cannot start the emulator: {e}; run the tests with scripts/test, which installs moto[server] in .venv"
            ),
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers(port) {
            assert!(Instant::now() < deadline, "moto_server did not answer within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Emulator {
            url: format!("http://127.0.0.1:{port}"),
        }
    })
}

/// An emulator of one test's own, for tests that change its global state (IAM enforcement).
/// Killed on drop.
pub struct PrivateEmulator {
    pub url: String,
    pub port: u16,
    child: Child,
}

impl PrivateEmulator {
    pub fn start() -> PrivateEmulator {
        Self::start_with(None)
    }

    /// The emulator behind HTTPS, serving `cert` (with its `key`).
    pub fn start_tls(cert: &Path, key: &Path) -> PrivateEmulator {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> PrivateEmulator {
        emulator(); // sets the test credentials in the environment
        let port = free_port();
        let mut cmd = moto_command(port);
        if let Some((cert, key)) = tls {
            cmd.arg("-c").arg(cert).arg("-k").arg(key);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a private moto_server");
        let deadline = Instant::now() + Duration::from_secs(60);
        // Over TLS a plain-HTTP probe cannot answer: a listening port is enough there.
        let ready = || match tls {
            None => answers(port),
            Some(_) => TcpStream::connect(("127.0.0.1", port)).is_ok(),
        };
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "private moto_server did not answer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        PrivateEmulator {
            url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            child,
        }
    }

    /// POST a plain-text body to the emulator's control API; returns the status line.
    pub fn post(&self, path: &str, body: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let req = format!(
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("send");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines().next().unwrap_or("").to_owned()
    }
}

impl Drop for PrivateEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The aws CLI from the test venv, pointed at `endpoint` with the given keys.
pub fn aws_cli(endpoint: &str, keys: (&str, &str), args: &[&str]) -> std::process::Output {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/aws");
    let bin = std::env::var("PURGEWATCH_AWS_CLI")
        .map(PathBuf::from)
        .unwrap_or(venv);
    Command::new(bin)
        .arg("--endpoint-url")
        .arg(endpoint)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", keys.0)
        .env("AWS_SECRET_ACCESS_KEY", keys.1)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("run the aws CLI (scripts/test installs it in .venv)")
}

/// The built daemon, `purgewatch --config FILE run`, with test credentials and stderr piped.
pub fn daemon_command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_purgewatch"));
    cmd.args(["--config", &config.display().to_string(), "run"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A daemon process that said it is watching.
pub struct Spawned {
    pub child: Child,
    /// Lines logged up to and including "watching".
    pub early: Vec<String>,
    /// Lines logged since (the reader keeps draining the pipe even if this is dropped).
    pub log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and returns once the daemon logs "watching" (30 s at most).
pub fn spawn_watching(mut cmd: Command) -> Spawned {
    use std::io::BufRead;
    let mut child = cmd.spawn().expect("spawn the daemon");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut early = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) => {
                let ready = line.contains("watching");
                early.push(line);
                if ready {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    // Built before the check, so a failed start is killed and reaped by Drop.
    let spawned = Spawned { child, early, log };
    assert!(
        ready,
        "the daemon never said it was watching: {:?}",
        spawned.early
    );
    spawned
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Every status a request can end (or park) in.
pub const ENDED: &[&str] = &[
    "completed",
    "stale",
    "quota_exhausted",
    "origin_timeout",
    "failed",
    "deferred",
];

/// Today's count-object stem in UTC, the seed's default.
pub fn today_utc() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// A small tmpfs mounted on `dir` (root only; None elsewhere), unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }

    pub fn remount_read_only(&self) -> bool {
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Polls `f` until it returns Some, or panics with `what` after `limit`.
pub async fn poll<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One site: buckets and a distribution in the emulator, a content tree and a database on disk.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub db: PathBuf,
    pub origin_bucket: String,
    pub count_bucket: String,
    pub distribution_id: String,
    pub s3: aws_sdk_s3::Client,
    pub cloudfront: aws_sdk_cloudfront::Client,
    pub endpoint: String,
}

pub async fn clients(endpoint: &str) -> (aws_sdk_s3::Client, aws_sdk_cloudfront::Client) {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(purgewatch::aws::http_client())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let s3conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .build();
    (
        aws_sdk_s3::Client::from_conf(s3conf),
        aws_sdk_cloudfront::Client::new(&shared),
    )
}

/// One test's set-up, as ripgrep's `rgtest!` gives each test its directory and command: a new
/// site (its own buckets, distribution, tree and database) and a daemon watching it on the
/// default config.
pub async fn site_and_daemon() -> (Site, purgewatch::app::Daemon) {
    let site = Site::new().await;
    let daemon = site.start().await;
    (site, daemon)
}

impl Site {
    /// A daemon on this site's default config, once it watches.
    pub async fn start(&self) -> purgewatch::app::Daemon {
        self.start_config(self.config()).await
    }

    /// A daemon on `toml` (usually [`Site::toml`] edited), once it watches.
    pub async fn start_with(&self, toml: &str) -> purgewatch::app::Daemon {
        self.start_config(self.config_from(toml)).await
    }

    pub async fn start_config(&self, cfg: Config) -> purgewatch::app::Daemon {
        purgewatch::app::Daemon::start(cfg)
            .await
            .expect("start the daemon")
    }

    pub async fn new() -> Site {
        let emu = emulator();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let (s3, cloudfront) = clients(&emu.url).await;
        let origin_bucket = format!("origin-{tag}");
        let count_bucket = format!("count-{tag}");
        for b in [&origin_bucket, &count_bucket] {
            s3.create_bucket()
                .bucket(b)
                .send()
                .await
                .expect("create bucket");
        }
        let distribution_id = create_distribution(&cloudfront, &origin_bucket, &tag).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("html");
        std::fs::create_dir_all(&root).expect("mkdir root");
        let db = dir.path().join("state/purgewatch.db");
        Site {
            dir,
            root,
            db,
            origin_bucket,
            count_bucket,
            distribution_id,
            s3,
            cloudfront,
            endpoint: emu.url.clone(),
        }
    }

    /// A second server of the same fleet: same buckets and distribution, its own tree and database.
    pub fn sibling(&self) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("html");
        std::fs::create_dir_all(&root).expect("mkdir root");
        Site {
            db: dir.path().join("state/purgewatch.db"),
            dir,
            root,
            origin_bucket: self.origin_bucket.clone(),
            count_bucket: self.count_bucket.clone(),
            distribution_id: self.distribution_id.clone(),
            s3: self.s3.clone(),
            cloudfront: self.cloudfront.clone(),
            endpoint: self.endpoint.clone(),
        }
    }

    /// The TOML a test starts from; `extra` lines are appended to the named tables by the caller.
    pub fn toml(&self, quota_extra: &str, watch_extra: &str, origin_extra: &str) -> String {
        format!(
            r#"
[watch]
root = "{root}"
settle = "200ms"
{watch_extra}

[origin]
bucket = "{ob}"
wait_timeout = "20s"
{origin_extra}

[quota]
max = 10
count_bucket = "{cb}"
{quota_extra}

[cloudfront]
distribution_id = "{dist}"

[state]
database = "{db}"

[aws]
region = "us-east-1"
endpoint_url = "{url}"
"#,
            root = self.root.display(),
            ob = self.origin_bucket,
            cb = self.count_bucket,
            dist = self.distribution_id,
            db = self.db.display(),
            url = self.endpoint,
        )
    }

    pub fn config_from(&self, toml: &str) -> Config {
        let file = self.dir.path().join("purgewatch.toml");
        std::fs::write(&file, toml).expect("write config");
        Config::load(&file).expect("valid config")
    }

    pub fn config(&self) -> Config {
        self.config_from(&self.toml("", "", ""))
    }

    /// Writes the config file and returns its path, for the binary.
    pub fn config_file(&self, toml: &str) -> PathBuf {
        let file = self.dir.path().join("purgewatch.toml");
        std::fs::write(&file, toml).expect("write config");
        file
    }

    /// Writes the default config with the database at `db` instead; returns the file's path.
    pub fn config_file_with_db(&self, db: &Path) -> PathBuf {
        let toml = self
            .toml("", "", "")
            .replace(&self.db.display().to_string(), &db.display().to_string());
        self.config_file(&toml)
    }

    /// Writes a file under the root, creating folders.
    pub fn write(&self, rel: &str, body: &[u8]) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, body).expect("write");
        p
    }

    /// Puts `body` in the origin bucket under `key`, as lsyncd would have uploaded the bytes
    /// the file held then (it may hold anything since).
    pub async fn put(&self, key: &str, body: &[u8]) {
        self.s3
            .put_object()
            .bucket(&self.origin_bucket)
            .key(key)
            .body(body.to_vec().into())
            .send()
            .await
            .expect("upload");
    }

    /// What lsyncd does: copy the local file to the origin bucket.
    pub async fn upload(&self, rel: &str) {
        let body = std::fs::read(self.root.join(rel)).expect("read local file");
        self.s3
            .put_object()
            .bucket(&self.origin_bucket)
            .key(rel)
            .body(body.into())
            .send()
            .await
            .expect("upload");
    }

    /// Invalidations in the emulator: (id, caller reference, paths).
    pub async fn invalidations(&self) -> Vec<(String, String, Vec<String>)> {
        self.invalidations_of(&self.distribution_id).await
    }

    /// Another distribution in front of this site's bucket.
    pub async fn another_distribution(&self) -> String {
        let tag = format!(
            "{}-{}",
            self.origin_bucket,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        create_distribution(&self.cloudfront, &self.origin_bucket, &tag).await
    }

    /// [`Site::invalidations`] of any distribution.
    pub async fn invalidations_of(&self, distribution: &str) -> Vec<(String, String, Vec<String>)> {
        let list = self
            .cloudfront
            .list_invalidations()
            .distribution_id(distribution)
            .send()
            .await
            .expect("list invalidations");
        let mut out = Vec::new();
        for s in list
            .invalidation_list
            .and_then(|l| l.items)
            .unwrap_or_default()
        {
            let got = self
                .cloudfront
                .get_invalidation()
                .distribution_id(distribution)
                .id(&s.id)
                .send()
                .await
                .expect("get invalidation");
            let batch = got
                .invalidation
                .and_then(|i| i.invalidation_batch)
                .expect("batch");
            out.push((
                s.id,
                batch.caller_reference,
                batch.paths.and_then(|p| p.items).unwrap_or_default(),
            ));
        }
        out
    }

    pub async fn count_object(&self, period: &str) -> Option<String> {
        let got = self
            .s3
            .get_object()
            .bucket(&self.count_bucket)
            .key(format!("{period}.txt"))
            .send()
            .await
            .ok()?;
        let bytes = got.body.collect().await.expect("body").into_bytes();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn put_count_object(&self, period: &str, body: &str) {
        self.s3
            .put_object()
            .bucket(&self.count_bucket)
            .key(format!("{period}.txt"))
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .expect("put count object");
    }

    /// The history as the database holds it, newest first.
    pub fn history(&self) -> Vec<purgewatch::store::HistoryRow> {
        if !self.db.exists() {
            return Vec::new();
        }
        let conn = rusqlite_open(&self.db);
        purgewatch::store::requests::history(&conn, None, 1000).expect("history")
    }

    /// Event details of one request, oldest first.
    pub fn events(&self, id: i64) -> Vec<(Option<String>, String, Option<String>)> {
        let conn = rusqlite_open(&self.db);
        let mut stmt = conn
            .prepare("SELECT from_status, to_status, detail FROM events WHERE request_id = ?1 ORDER BY id")
            .expect("prepare");
        stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows")
    }

    /// Polls (20 s at most) until the newest request's history has an event whose detail
    /// contains `needle`; returns that request's id.
    pub async fn noted(&self, needle: &str) -> i64 {
        poll(
            &format!("a history event saying {needle:?}"),
            Duration::from_secs(20),
            || async {
                let h = self.history();
                let r = h.first()?;
                self.events(r.id)
                    .iter()
                    .any(|e| e.2.as_deref().is_some_and(|d| d.contains(needle)))
                    .then_some(r.id)
            },
        )
        .await
    }

    pub fn statuses(&self) -> Vec<String> {
        self.history()
            .into_iter()
            .map(|r| r.status.to_string())
            .collect()
    }

    /// Polls until the history holds `n` requests that all ended in one of `ends`.
    pub async fn settled(&self, n: usize, ends: &[&str]) -> Vec<purgewatch::store::HistoryRow> {
        let what = format!("{n} requests ending in {ends:?}");
        poll(&what, Duration::from_secs(60), || async {
            let h = self.history();
            (h.len() == n && h.iter().all(|r| ends.contains(&r.status.as_str()))).then_some(h)
        })
        .await
    }
}

fn rusqlite_open(path: &Path) -> rusqlite::Connection {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open db");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

async fn create_distribution(cf: &aws_sdk_cloudfront::Client, bucket: &str, tag: &str) -> String {
    let domain = format!("{bucket}.s3.amazonaws.com");
    create_distribution_with(cf, &domain, "", &[], tag).await
}

/// A distribution whose one origin is `domain` (an S3 endpoint) under `origin_path`.
pub async fn create_distribution_with(
    cf: &aws_sdk_cloudfront::Client,
    domain: &str,
    origin_path: &str,
    aliases: &[&str],
    tag: &str,
) -> String {
    let origin = cf::Origin::builder()
        .id("s3-origin")
        .domain_name(domain)
        .origin_path(origin_path)
        .s3_origin_config(
            cf::S3OriginConfig::builder()
                .origin_access_identity("")
                .build(),
        )
        .build()
        .expect("origin");
    let behavior = cf::DefaultCacheBehavior::builder()
        .target_origin_id("s3-origin")
        .viewer_protocol_policy(cf::ViewerProtocolPolicy::AllowAll)
        .build()
        .expect("behavior");
    let config = cf::DistributionConfig::builder()
        .caller_reference(format!("test-{tag}"))
        .origins(
            cf::Origins::builder()
                .quantity(1)
                .items(origin)
                .build()
                .expect("origins"),
        )
        .default_cache_behavior(behavior)
        .set_aliases((!aliases.is_empty()).then(|| {
            cf::Aliases::builder()
                .quantity(aliases.len() as i32)
                .set_items(Some(aliases.iter().map(|a| a.to_string()).collect()))
                .build()
                .expect("aliases")
        }))
        .comment(format!("purgewatch test {tag}"))
        .enabled(true)
        .build()
        .expect("distribution config");
    let out = cf
        .create_distribution()
        .distribution_config(config)
        .send()
        .await
        .expect("create distribution");
    out.distribution.expect("distribution").id
}
