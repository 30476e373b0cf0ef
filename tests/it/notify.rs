//! `[notify]` (issue 14): alerts to a webhook (a receiver on 127.0.0.1 in the test) and to SNS
//! (the emulator's topic, read back through an SQS queue subscribed to it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use purgewatch::app::purge_now;

use crate::common::{aws_cli, poll, today_utc, Site, ENDED};

/// A webhook receiver: every POST's JSON body, in order. Answers 200 "ok" and closes.
#[derive(Clone)]
struct Hook {
    port: u16,
    got: Arc<Mutex<Vec<Value>>>,
    /// The bodies as sent, before JSON decoding.
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
    /// A marker whose alerts are answered 500 (and not kept) while set.
    refuse: Arc<Mutex<Option<String>>>,
}

impl Hook {
    fn start() -> Hook {
        Hook::on(TcpListener::bind("127.0.0.1:0").expect("bind the receiver"))
    }

    fn on(listener: TcpListener) -> Hook {
        let hook = Hook {
            port: listener.local_addr().expect("addr").port(),
            got: Arc::default(),
            raw: Arc::default(),
            refuse: Arc::default(),
        };
        let h = hook.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                h.serve(s);
            }
        });
        hook
    }

    fn serve(&self, s: TcpStream) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut r = BufReader::new(s);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_owned());
        }
        let header = |name: &str| {
            head.iter().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        assert!(head[0].starts_with("POST /hook "), "{head:?}");
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/json"),
            "{head:?}"
        );
        let json: Value = serde_json::from_slice(&body).expect("the alert is JSON");
        if self.refuse.lock().expect("lock").as_deref() == json["request"]["marker"].as_str() {
            let _ = r.get_mut().write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndown",
            );
            return;
        }
        self.got.lock().expect("lock").push(json);
        self.raw.lock().expect("lock").push(body);
        let _ = r
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    }

    fn bodies(&self) -> Vec<Value> {
        self.got.lock().expect("lock").clone()
    }

    fn raw_bodies(&self) -> Vec<Vec<u8>> {
        self.raw.lock().expect("lock").clone()
    }

    fn url(&self) -> String {
        url(self.port)
    }

    /// `site`'s config with this hook as the webhook, alerting on `completed`.
    fn on_completed(&self, site: &Site) -> String {
        on_completed(site, &self.url())
    }

    /// Answers 500 to the alerts about `marker` (`None`: to none).
    fn refuse(&self, marker: Option<&str>) {
        *self.refuse.lock().expect("lock") = marker.map(str::to_owned);
    }
}

/// `site`'s config with `webhook`, alerting on `completed`.
fn on_completed(site: &Site, webhook: &str) -> String {
    site.toml("", "", "") + &format!("\n[notify]\nwebhook = \"{webhook}\"\non = [\"completed\"]\n")
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/hook")
}

fn host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// The alert notes in a request's history, oldest first.
fn alert_notes(site: &Site, id: i64) -> Vec<String> {
    site.events(id)
        .into_iter()
        .filter_map(|e| e.2)
        .filter(|d| d.starts_with("alert on "))
        .collect()
}

async fn purge(site: &Site, folder: &str) {
    let rel = format!("{folder}/.purge");
    site.write(&rel, format!("{folder}\n").as_bytes());
    site.upload(&rel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_quota_posts_one_alert_to_the_webhook() {
    let hook = Hook::start();
    let site = Site::new().await;
    let toml = site.toml("", "", "").replace("max = 10", "max = 1")
        + &format!("\n[notify]\nwebhook = \"{}\"\n", hook.url());
    let daemon = site.start_with(&toml).await;
    purge(&site, "a").await;
    site.settled(1, ENDED).await;
    purge(&site, "b").await;
    let rows = site.settled(2, ENDED).await;
    let over = rows
        .iter()
        .find(|r| r.status == "quota_exhausted")
        .expect("the second request is over the quota");
    let delivered = site
        .noted("alert on quota_exhausted to webhook: delivered (HTTP 200)")
        .await;
    assert_eq!(delivered, over.id);
    let got = hook.bodies();
    // `completed` is not in the default `on`: one alert, for the request over the quota.
    assert_eq!(got.len(), 1, "{got:?}");
    let a = &got[0];
    let detail = over.detail.clone().expect("why it ended");
    assert!(detail.contains("1 of 1"), "{detail}");
    let host = host();
    assert_eq!(a["event"], "quota_exhausted");
    assert_eq!(a["host"], host.as_str());
    assert_eq!(
        a["text"],
        format!(
            "purgewatch on {host}: request {} b/.purge quota_exhausted: {detail}",
            over.id
        )
    );
    let r = &a["request"];
    assert_eq!(r["id"], over.id);
    assert_eq!(r["marker"], "b/.purge");
    assert_eq!(r["status"], "quota_exhausted");
    assert_eq!(r["detail"], detail.as_str());
    assert!(r["invalidation_id"].is_null(), "{a}");
    assert!(r["paths"].is_array(), "{a}");
    let q = &a["quota"];
    assert_eq!(q["period"], today_utc());
    assert_eq!(q["count"], 1);
    assert_eq!(q["max"], 1);
    // The alert's outcome is an event; the request's own detail still says why it ended.
    let row = site.history().into_iter().find(|r| r.id == over.id);
    assert_eq!(row.and_then(|r| r.detail), Some(detail));
    daemon.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_delays_no_purge_and_gets_its_alerts_once_it_is_up() {
    // A port nothing listens on yet: every connection is refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let site = Site::new().await;
    let toml = on_completed(&site, &url(port));
    let daemon = site.start_with(&toml).await;
    purge(&site, "a").await;
    site.settled(1, ENDED).await;
    let first = site.noted("alert on completed to webhook: ").await;
    assert!(
        alert_notes(&site, first)[0].contains("retrying in 5s"),
        "{:?}",
        alert_notes(&site, first)
    );

    // While the webhook is down, the next purge runs as fast as ever.
    let t = Instant::now();
    purge(&site, "b").await;
    let rows = site.settled(2, ENDED).await;
    assert!(rows.iter().all(|r| r.status == "completed"), "{rows:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the purge waited for the webhook: {:?}",
        t.elapsed()
    );
    let second = rows[0].id;
    poll(
        "the second alert's first attempt",
        Duration::from_secs(10),
        || async { (!alert_notes(&site, second).is_empty()).then_some(()) },
    )
    .await;

    // The webhook comes up: both alerts arrive, at the next retries.
    let hook = Hook::on(TcpListener::bind(("127.0.0.1", port)).expect("bind the port again"));
    let got = poll("both alerts", Duration::from_secs(60), || async {
        let b = hook.bodies();
        (b.len() >= 2).then_some(b)
    })
    .await;
    let mut ids: Vec<i64> = got
        .iter()
        .map(|a| a["request"]["id"].as_i64().expect("id"))
        .collect();
    ids.sort();
    assert_eq!(ids, [first, second], "{got:?}");
    assert!(got.iter().all(|a| a["event"] == "completed"), "{got:?}");
    for id in [first, second] {
        let notes = poll("the delivery noted", Duration::from_secs(10), || async {
            let n = alert_notes(&site, id);
            n.last()
                .is_some_and(|l| l.contains("delivered"))
                .then_some(n)
        })
        .await;
        // Failed attempts (refused, retried with a growing delay), then the delivery.
        let (last, failed) = notes.split_last().expect("notes");
        assert_eq!(last, "alert on completed to webhook: delivered (HTTP 200)");
        assert!(!failed.is_empty(), "{notes:?}");
        for (n, note) in failed.iter().enumerate() {
            let delay = 5u64 << n;
            assert!(
                note.starts_with("alert on completed to webhook: ")
                    && note.contains("refused")
                    && note.ends_with(&format!("retrying in {delay}s")),
                "{notes:?}"
            );
        }
    }
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(hook.bodies().len(), 2, "no alert twice");
}

fn cli(site: &Site, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--region", "ap-northeast-1", "--output", "text"]);
    let out = aws_cli(&site.endpoint, ("test", "test"), &all);
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_is_published_to_the_sns_topic_in_the_topics_region() {
    let site = Site::new().await;
    // The topic lives in another region than `[aws] region` (us-east-1): the daemon signs for
    // the ARN's region, or the emulator would not find the topic.
    let name = format!("purgewatch-{}", site.origin_bucket);
    let topic = cli(
        &site,
        &[
            "sns",
            "create-topic",
            "--name",
            &name,
            "--query",
            "TopicArn",
        ],
    );
    assert!(topic.starts_with("arn:aws:sns:ap-northeast-1:"), "{topic}");
    let queue = cli(
        &site,
        &[
            "sqs",
            "create-queue",
            "--queue-name",
            &name,
            "--query",
            "QueueUrl",
        ],
    );
    let queue_arn = cli(
        &site,
        &[
            "sqs",
            "get-queue-attributes",
            "--queue-url",
            &queue,
            "--attribute-names",
            "QueueArn",
            "--query",
            "Attributes.QueueArn",
        ],
    );
    cli(
        &site,
        &[
            "sns",
            "subscribe",
            "--topic-arn",
            &topic,
            "--protocol",
            "sqs",
            "--notification-endpoint",
            &queue_arn,
        ],
    );
    let toml = site.toml("", "", "")
        + &format!("\n[notify]\nsns_topic_arn = \"{topic}\"\non = [\"completed\"]\n");
    let daemon = site.start_with(&toml).await;
    purge(&site, "docs").await;
    let rows = site.settled(1, ENDED).await;
    assert_eq!(rows[0].status, "completed", "{:?}", rows[0].detail);
    let id = site
        .noted("alert on completed to SNS: delivered (MessageId ")
        .await;
    daemon.shutdown().await.expect("shutdown");

    let out = aws_cli(
        &site.endpoint,
        ("test", "test"),
        &[
            "sqs",
            "receive-message",
            "--queue-url",
            &queue,
            "--region",
            "ap-northeast-1",
            "--wait-time-seconds",
            "5",
        ],
    );
    let received: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "a message in the queue: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let messages = received["Messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{received}");
    // SNS wraps the publication: {"Type": "Notification", "Subject": …, "Message": …}.
    let envelope: Value =
        serde_json::from_str(messages[0]["Body"].as_str().expect("body")).expect("envelope");
    let host = host();
    assert_eq!(
        envelope["Subject"],
        format!("purgewatch on {host}: request {id} completed")
    );
    let a: Value =
        serde_json::from_str(envelope["Message"].as_str().expect("message")).expect("alert JSON");
    assert_eq!(a["event"], "completed");
    assert_eq!(a["host"], host.as_str());
    assert_eq!(a["request"]["id"], id);
    assert_eq!(a["request"]["marker"], "docs/.purge");
    assert_eq!(a["request"]["status"], "completed");
    assert_eq!(
        a["request"]["invalidation_id"],
        rows[0]
            .invalidation_id
            .clone()
            .expect("invalidation id")
            .as_str()
    );
    assert_eq!(a["request"]["paths"], serde_json::json!(["/*"]));
    assert_eq!(a["quota"]["period"], today_utc());
    assert_eq!(a["quota"]["count"], 1);
    assert_eq!(a["quota"]["max"], 10);
    assert!(
        a["text"].as_str().is_some_and(|t| t.starts_with(&format!(
            "purgewatch on {host}: request {id} docs/.purge completed"
        ))),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_loses_nor_repeats_an_alert() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let site = Site::new().await;
    let toml = on_completed(&site, &url(port));
    // The daemon stops while the webhook is down and the alert is waiting for its retry.
    let daemon = site.start_with(&toml).await;
    purge(&site, "a").await;
    site.settled(1, ENDED).await;
    let first = site.noted("retrying in 5s").await;
    daemon.shutdown().await.expect("shutdown");

    // The next start sends it.
    let hook = Hook::on(TcpListener::bind(("127.0.0.1", port)).expect("bind the port again"));
    let daemon = site.start_with(&toml).await;
    site.noted("alert on completed to webhook: delivered (HTTP 200)")
        .await;
    purge(&site, "b").await;
    site.settled(2, ENDED).await;
    let second = site
        .noted("alert on completed to webhook: delivered (HTTP 200)")
        .await;
    assert_ne!(first, second);
    daemon.shutdown().await.expect("shutdown");

    // A start after both were delivered sends neither again.
    let daemon = site.start_with(&toml).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    daemon.shutdown().await.expect("shutdown");
    let ids: Vec<i64> = hook
        .bodies()
        .iter()
        .map(|a| a["request"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, [first, second]);
}

// Issue 23: whether a target had an alert was read back from the notes' wording ("alert on …
// to webhook: delivered"); a note reworded (or a target renamed) between two runs sent a
// delivered alert again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_the_notes_are_reworded_neither_resends_nor_loses_an_alert() {
    let hook = Hook::start();
    let site = Site::new().await;
    let toml = hook.on_completed(&site);
    // The first alert keeps failing, so the outbox's cursor stays before it; the second is
    // delivered after it.
    hook.refuse(Some("slow/.purge"));
    let daemon = site.start_with(&toml).await;
    purge(&site, "slow").await;
    site.settled(1, ENDED).await;
    let slow = site.noted("retrying in 5s").await;
    purge(&site, "b").await;
    site.settled(2, ENDED).await;
    let b = site
        .noted("alert on completed to webhook: delivered (HTTP 200)")
        .await;
    daemon.shutdown().await.expect("shutdown");

    // While the daemon is down: a request ends (a manual purge), and every alert note is
    // reworded, as a later version might word them.
    let manual = purge_now(site.config_from(&toml), true)
        .await
        .expect("manual purge");
    assert_eq!(manual.status, "completed", "{:?}", manual.detail);
    let reworded = rusqlite::Connection::open(&site.db)
        .expect("open")
        .execute(
            "UPDATE events SET detail = 'the hook took it; ' || id WHERE detail LIKE 'alert on %'",
            [],
        )
        .expect("reword");
    assert!(reworded >= 2, "{reworded} notes");

    hook.refuse(None);
    let daemon = site.start_with(&toml).await;
    poll("the two alerts left", Duration::from_secs(30), || async {
        (hook.bodies().len() >= 3).then_some(())
    })
    .await;
    // Time for a repeat to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    daemon.shutdown().await.expect("shutdown");
    let mut ids: Vec<i64> = hook
        .bodies()
        .iter()
        .map(|a| a["request"]["id"].as_i64().expect("id"))
        .collect();
    ids.sort();
    let mut want = vec![slow, b, manual.id];
    want.sort();
    assert_eq!(ids, want, "each alert once, none lost");
}

// Issue 22: a folder named "<!channel>" pinged the whole Slack channel through the alert text,
// and an ESC in a name reached the text raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_folder_name_is_shown_as_text_in_the_alert() {
    let hook = Hook::start();
    let site = Site::new().await;
    let toml = hook.on_completed(&site);
    let daemon = site.start_with(&toml).await;
    let folder = "<!channel> & x\x1b[2J\u{9b}";
    purge(&site, folder).await;
    let rows = site.settled(1, ENDED).await;
    assert_eq!(rows[0].status, "completed", "{:?}", rows[0].detail);
    site.noted("alert on completed to webhook: delivered (HTTP 200)")
        .await;
    daemon.shutdown().await.expect("shutdown");

    let got = hook.bodies();
    assert_eq!(got.len(), 1, "{got:?}");
    let text = got[0]["text"].as_str().expect("text");
    assert!(
        text.contains(&format!(
            ": request {} &lt;!channel&gt; &amp; x\\u{{1b}}[2J\\u{{9b}}/.purge completed",
            rows[0].id
        )),
        "{text:?}"
    );
    assert!(!text.contains("<!channel>"), "{text:?}");
    assert!(!text.chars().any(char::is_control), "{text:?}");
    // The name itself is data, exact, for whoever reads the JSON; escaped on the wire.
    assert_eq!(got[0]["request"]["marker"], format!("{folder}/.purge"));
    let raw = String::from_utf8(hook.raw_bodies().remove(0)).expect("UTF-8");
    assert!(!raw.chars().any(char::is_control), "{raw:?}");
}

/// `stale` is an alert choice: the alert says what the edge answered, and carries each
/// distribution's invalidation and state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_request_alerts_with_each_distributions_invalidation() {
    let hook = Hook::start();
    let (site, toml, _) = crate::edge::cached_site("", None).await;
    let toml = toml
        + &format!(
            "\n[notify]\nwebhook = \"{}\"\non = [\"stale\"]\n",
            hook.url()
        );
    let daemon = site.start_with(&toml).await;
    crate::edge::deploy(&site, b"/News/*\n/index.html\n").await;
    let rows = site.settled(1, ENDED).await;
    site.noted("alert on stale to webhook: delivered (HTTP 200)")
        .await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(rows[0].status, "stale", "{:?}", rows[0].detail);
    let got = hook.bodies();
    assert_eq!(got.len(), 1, "{got:?}");
    let a = &got[0];
    assert_eq!(a["event"], "stale");
    let text = a["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("stale: edge: 1 of 2 stale via") && text.contains("/news/a.html"),
        "{text}"
    );
    let inv = &a["request"]["invalidations"];
    assert_eq!(
        inv[0]["distribution_id"],
        site.distribution_id.as_str(),
        "{a}"
    );
    assert_eq!(inv[0]["state"], "completed", "{a}");
    assert_eq!(
        inv[0]["invalidation_id"],
        site.invalidations().await[0].0.as_str(),
        "{a}"
    );
}
