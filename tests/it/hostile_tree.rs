//! A hostile tree (issue 22): what a CMS, a deploy script or a person may leave under the root
//! must not stall, mislead or kill the daemon. The stalls are run against the built binary, so a
//! wedged runtime shows as a test failure, not as a hung test process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use purgewatch::app::Daemon;

use crate::common::{daemon_command, free_port, poll, read_bytes, spawn_watching, Site, Spawned};

const DONE: &[&str] = &["completed"];

/// `GET /metrics` with a 2 s deadline for the whole answer: the status line, or why not.
fn scrape(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("no answer within 2 s: {e}"))?;
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

/// Makes a FIFO at `path` (mkfifo(3)).
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// Swaps `rel` for what `make` creates beside it, by rename (what rsync does).
fn swap(site: &Site, rel: &str, make: impl FnOnce(&Path)) {
    let tmp = site.root.join(format!("{rel}.swap"));
    make(&tmp);
    std::fs::rename(&tmp, site.root.join(rel)).expect("rename over the marker");
}

/// SIGTERM, then the time until the process is gone (10 s at most).
fn stop(d: &mut Spawned) -> Duration {
    let asked = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    while asked.elapsed() < Duration::from_secs(10) {
        if d.child.try_wait().expect("wait").is_some() {
            return asked.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    asked.elapsed()
}

/// The paths of the site's only invalidation.
async fn only_paths(site: &Site) -> Vec<String> {
    let invs = site.invalidations().await;
    assert_eq!(invs.len(), 1, "{invs:?}");
    let mut p = invs[0].2.clone();
    p.sort();
    p
}

/// Polls until a request of the site waits for its origin; returns its id.
async fn waiting(site: &Site) -> i64 {
    poll(
        "a request waiting for its origin",
        Duration::from_secs(20),
        || async {
            site.history()
                .into_iter()
                .find(|r| r.status.as_str() == "waiting_for_origin")
                .map(|r| r.id)
        },
    )
    .await
}

// Item 1: the path list was read from the file again at decide time, with a plain open: a FIFO
// swapped in after intake blocked the runtime's one thread for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_swapped_in_after_intake_neither_stalls_nor_changes_the_paths() {
    let site = Site::new().await;
    let file = site.config_file(&site.toml("", "", ""));
    let mut daemon = spawn_watching(daemon_command(&file));
    let list = b"/a.html\n/b.html\n";
    site.write(".purge", list);
    waiting(&site).await;
    swap(&site, ".purge", mkfifo);
    // S3 gets the bytes that were written (lsyncd uploaded them before the swap).
    site.put(".purge", list).await;
    poll(
        "the listed paths invalidated",
        Duration::from_secs(30),
        || async {
            site.history()
                .iter()
                .any(|r| r.status.as_str() == "completed")
                .then_some(())
        },
    )
    .await;
    assert_eq!(only_paths(&site).await, vec!["/a.html", "/b.html"]);
    assert!(
        stop(&mut daemon) < Duration::from_secs(5),
        "SIGTERM was not obeyed"
    );
}

// Item 1: a symlink swapped in after intake was followed: a file outside the root became the
// invalidated path list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_in_after_intake_is_not_followed() {
    let site = Site::new().await;
    let outside = site.dir.path().join("outside.txt");
    std::fs::write(&outside, b"/secret/*\n").expect("write outside");
    let daemon = site.start().await;
    let list = b"/a.html\n";
    site.write(".purge", list);
    waiting(&site).await;
    swap(&site, ".purge", |tmp| {
        std::os::unix::fs::symlink(&outside, tmp).expect("symlink")
    });
    site.put(".purge", list).await;
    poll("the request completed", Duration::from_secs(30), || async {
        site.history()
            .iter()
            .any(|r| r.status.as_str() == "completed")
            .then_some(())
    })
    .await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(only_paths(&site).await, vec!["/a.html"]);
}

// Item 3: a 40 GiB sparse `.purge` (no disk used) was hashed whole: 141 s of the site's loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_over_one_mib_is_refused_unread_and_named_with_its_size() {
    let site = Site::new().await;
    let daemon = site.start().await;
    std::fs::create_dir_all(site.root.join("big")).expect("mkdir");
    swap(&site, "big/.purge", |tmp| {
        std::fs::File::create(tmp)
            .and_then(|f| f.set_len(40 << 30))
            .expect("sparse 40 GiB")
    });
    let rows = site.settled(1, &["failed"]).await;
    let detail = rows[0].detail.clone().unwrap_or_default();
    assert!(
        detail.contains("42949672960 bytes") && detail.contains("1048576"),
        "{detail}"
    );
    // The site goes on: a usable marker is purged for.
    site.write(".purge", b"x");
    site.upload(".purge").await;
    poll(
        "the next marker completed",
        Duration::from_secs(30),
        || async {
            site.statuses()
                .iter()
                .any(|s| s == "completed")
                .then_some(())
        },
    )
    .await;
    daemon.shutdown().await.expect("shutdown");
}

// Item 4: under `wait_for = "changes"` a changed file was hashed on the runtime's thread:
// /metrics timed out for 47 s while a 20 GiB file was read, and SIGTERM waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_changed_file_is_hashed_off_the_loop_and_sigterm_still_works() {
    let site = Site::new().await;
    let port = free_port();
    let toml = site.toml("", "", "wait_for = \"changes\"").replace(
        &format!("distribution_id = \"{}\"", site.distribution_id),
        &format!(
            "distribution_id = \"{}\"\npaths = \"changed\"",
            site.distribution_id
        ),
    ) + &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let file = site.config_file(&toml);
    let mut daemon = spawn_watching(daemon_command(&file));
    let pid = daemon.child.id();
    let big = site.root.join("video.bin");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(20 << 30))
        .expect("sparse 20 GiB");
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await;
    // The hash is under way once the daemon has read a GiB.
    let read = || read_bytes(pid);
    poll(
        "the daemon reading the big file",
        Duration::from_secs(30),
        || async { (read() > 1 << 30).then_some(()) },
    )
    .await;
    for _ in 0..3 {
        let line = tokio::task::spawn_blocking(move || scrape(port))
            .await
            .expect("scrape");
        assert!(
            line.as_ref().is_ok_and(|l| l.starts_with("HTTP/1.1 200")),
            "/metrics during the hash: {line:?}"
        );
    }
    // Another marker is taken in meanwhile: the hash holds up its own request, no other.
    site.write("news/.purge", b"x");
    poll(
        "the next marker stored",
        Duration::from_secs(10),
        || async {
            site.history()
                .iter()
                .any(|r| r.marker == "news/.purge")
                .then_some(())
        },
    )
    .await;
    assert!(
        read() < 20 << 30,
        "the hash ended before the checks: make the file bigger"
    );
    let took = stop(&mut daemon);
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
}

// Item 5: six folders of 80 katakana (4,326 characters encoded) made the whole deploy's request
// `failed`: nothing invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_japanese_folder_too_long_for_cloudfront_is_covered_by_a_wildcard() {
    let site = Site::new().await;
    let toml = site.toml("", "", "").replace(
        &format!("distribution_id = \"{}\"", site.distribution_id),
        &format!(
            "distribution_id = \"{}\"\npaths = \"changed\"",
            site.distribution_id
        ),
    );
    let daemon = site.start_with(&toml).await;
    let name = "カ".repeat(80);
    let five = [name.as_str(); 5].join("/");
    let deep = format!("{five}/{name}/index.html");
    site.write(&deep, b"<p>new</p>");
    site.write("top.html", b"<p>top</p>");
    site.write(".purge", b"deploy\n");
    site.upload(".purge").await;
    let rows = site.settled(1, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    let paths = only_paths(&site).await;
    assert!(paths.iter().all(|p| p.len() <= 4000), "{paths:?}");
    assert!(
        paths
            .iter()
            .any(|p| purgewatch::paths::covers(p, &deep) && p.ends_with('*')),
        "{paths:?}"
    );
    assert!(paths.contains(&"/top.html".to_owned()), "{paths:?}");
    assert!(!paths.contains(&"/*".to_owned()), "{paths:?}");
    assert_eq!(rows[0].paths, paths);
}

// Item 7: 300 FIFOs renamed onto `.purge` in 1.1 s gave 202 failed rows and 201 webhook posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unusable_writes_is_one_failed_row_until_a_usable_write() {
    let site = Site::new().await;
    let daemon: Daemon = site.start().await;
    for _ in 0..300 {
        swap(&site, ".purge", mkfifo);
    }
    // Then a usable write (by rename: opening the FIFO to write would wait for a reader);
    // everything before it was handled by then (one loop, in order).
    swap(&site, ".purge", |tmp| {
        std::fs::write(tmp, b"deploy\n").expect("write")
    });
    site.upload(".purge").await;
    let rows = site.settled(2, &["failed", "completed"]).await;
    daemon.shutdown().await.expect("shutdown");
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| r.status.as_str() == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{rows:?}");
    let detail = failed[0].detail.clone().unwrap_or_default();
    assert!(
        detail.contains("not a regular file") && detail.contains("unusable writes"),
        "{detail}"
    );
    // One event, so one alert: the repeats change the row, not the outbox.
    assert_eq!(site.events(failed[0].id).len(), 1);
}

/// The next log line of `d` containing `needle` (15 s at most).
fn logged(d: &Spawned, needle: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match d.log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

// Item 8: a reload onto a metrics port in use stopped the running daemon first, then failed to
// bind, and the process ended with exit 1: a restart loop under systemd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_onto_a_port_in_use_keeps_the_running_daemon() {
    let site = Site::new().await;
    let port = free_port();
    let toml = site.toml("", "", "") + &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let file = site.config_file(&toml);
    let mut daemon = spawn_watching(daemon_command(&file));
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = busy.local_addr().expect("address").port();
    site.config_file(&toml.replace(&format!(":{port}\""), &format!(":{taken}\"")));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    let line = logged(&daemon, "metrics.listen").expect("a line naming metrics.listen");
    assert!(line.contains("reload refused"), "{line}");
    // The old config runs on: its port answers and a marker is purged for.
    let scraped = tokio::task::spawn_blocking(move || scrape(port))
        .await
        .expect("scrape");
    assert!(
        scraped
            .as_ref()
            .is_ok_and(|l| l.starts_with("HTTP/1.1 200")),
        "{scraped:?}"
    );
    site.write(".purge", b"x");
    site.upload(".purge").await;
    site.settled(1, DONE).await;
    assert!(
        daemon.child.try_wait().expect("wait").is_none(),
        "the daemon ended"
    );
    assert!(stop(&mut daemon) < Duration::from_secs(5));
}

// Item 2: each site's loop sent WATCHDOG=1 itself, so one live site kept a wedged one from
// ever being restarted by systemd.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_ping_stops_when_one_sites_loop_stalls() {
    use std::os::unix::net::UnixDatagram;
    let (a, b) = (Site::new().await, Site::new().await);
    let table = |name: &str, s: &Site| {
        format!(
            "[[site]]\nname = \"{name}\"\nroot = \"{}\"\norigin = {{ bucket = \"{}\" }}\n\
             cloudfront = {{ distribution_id = \"{}\" }}\nquota = \"own\"\n\n",
            s.root.display(),
            s.origin_bucket,
            s.distribution_id
        )
    };
    let toml = format!(
        "[watch]\nsettle = \"200ms\"\n\n[origin]\nwait_timeout = \"20s\"\n\n{}{}\
         [quotas.own]\nmax = 10\ncount_bucket = \"{}\"\n\n[state]\ndatabase = \"{}\"\n\n\
         [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
        table("a", &a),
        table("b", &b),
        a.count_bucket,
        a.db.display(),
        a.endpoint
    );
    let sock_path = a.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut cmd = daemon_command(&a.config_file(&toml));
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("FAILPOINTS", "site_loop_stall=return(b)");
    let _daemon = spawn_watching(cmd);
    // Messages received over the next `span`.
    let heard = |span: Duration| {
        let until = Instant::now() + span;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while Instant::now() < until {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    };
    let pings = |got: &[String]| got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        pings(&heard(Duration::from_secs(3))) > 0,
        "no watchdog ping while both sites run"
    );
    b.write(".purge", b"x");
    // Site a goes on: its marker is purged for while b's loop is stuck.
    a.write(".purge", b"x");
    a.upload(".purge").await;
    a.settled(1, DONE).await;
    heard(Duration::from_secs(1));
    let late = heard(Duration::from_secs(3));
    assert_eq!(pings(&late), 0, "pinged with site b stalled: {late:?}");
}
