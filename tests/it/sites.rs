//! Several sites in one daemon: each tree's markers purge its own distribution, each quota
//! counts in its own count object (sites sharing a quota share the count), one database holds
//! every site's history; a site whose root is missing waits while the others run; a reload
//! adds and removes sites without touching the others.

use std::path::Path;
use std::time::Duration;

use purgewatch::app::Daemon;
use purgewatch::config::Sites;
use purgewatch::knobs::Knobs;

use crate::common::{poll, today_utc, Site};

const DONE: &[&str] = &["completed"];

/// One `[[site]]` table for `s`, named `name`, using quota `quota`.
fn site_table(name: &str, s: &Site, root: &Path, quota: &str) -> String {
    format!(
        "[[site]]\nname = \"{name}\"\nroot = \"{}\"\norigin = {{ bucket = \"{}\" }}\n\
         cloudfront = {{ distribution_id = \"{}\" }}\nquota = \"{quota}\"\n\n",
        root.display(),
        s.origin_bucket,
        s.distribution_id
    )
}

/// The file: `sites` as tables, quota `own` (max 10) and `shared` (max 2, key_prefix
/// `shared/`) in `db_site`'s count bucket, its database, the emulator.
fn file(db_site: &Site, sites: &[String]) -> String {
    format!(
        r#"
[watch]
settle = "200ms"

[origin]
wait_timeout = "20s"

{}
[quotas.own]
max = 10
count_bucket = "{cb}"

[quotas.shared]
max = 2
count_bucket = "{cb}"
key_prefix = "shared/"

[state]
database = "{db}"

[aws]
region = "us-east-1"
endpoint_url = "{url}"
"#,
        sites.concat(),
        cb = db_site.count_bucket,
        db = db_site.db.display(),
        url = db_site.endpoint,
    )
}

fn load(at: &Site, text: &str) -> Sites {
    Sites::load(&at.config_file(text)).expect("valid config")
}

async fn object(s: &Site, key: &str) -> Option<String> {
    let got =
        s.s3.get_object()
            .bucket(&s.count_bucket)
            .key(key)
            .send()
            .await
            .ok()?;
    let bytes = got.body.collect().await.expect("body").into_bytes();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Three sites, two quotas: blog has its own, shop and news share one of 2 a day. Each marker
/// purges its own site's distribution; the third purge on the shared quota is refused; the
/// count objects say 1 (`<day>.txt`) and 2 (`shared/<day>.txt`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sites_purge_their_own_distributions_and_count_in_their_own_quotas() {
    let (blog, shop, news) = (Site::new().await, Site::new().await, Site::new().await);
    let text = file(
        &blog,
        &[
            site_table("blog", &blog, &blog.root, "own"),
            site_table("shop", &shop, &shop.root, "shared"),
            site_table("news", &news, &news.root, "shared"),
        ],
    );
    let daemon = Daemon::start_sites(load(&blog, &text), Knobs::default())
        .await
        .expect("start");

    blog.write(".purge", b"blog 1\n");
    blog.upload(".purge").await;
    shop.write("cart/.purge", b"shop 1\n");
    shop.upload("cart/.purge").await;
    blog.settled(2, DONE).await;
    news.write(".purge", b"news 1\n");
    news.upload(".purge").await;
    blog.settled(3, DONE).await;
    // The shared quota (2 a day) is used up by shop and news: shop's next purge is refused.
    shop.write(".purge", b"shop 2\n");
    shop.upload(".purge").await;
    let rows = blog.settled(4, &["completed", "quota_exhausted"]).await;
    daemon.shutdown().await.expect("shutdown");

    let by_site = |name: &str| -> Vec<&purgewatch::store::HistoryRow> {
        rows.iter().filter(|r| r.site == name).collect()
    };
    assert_eq!(by_site("blog").len(), 1);
    assert_eq!(by_site("news").len(), 1);
    let shop_rows = by_site("shop");
    assert_eq!(shop_rows.len(), 2, "{rows:?}");
    assert_eq!(shop_rows[0].status, "quota_exhausted", "{shop_rows:?}");
    assert!(
        shop_rows[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("2 of 2")),
        "{shop_rows:?}"
    );
    assert_eq!(shop_rows[1].marker, "cart/.purge");
    for (s, name) in [(&blog, "blog"), (&shop, "shop"), (&news, "news")] {
        let invs = s.invalidations().await;
        assert_eq!(invs.len(), 1, "{name}: {invs:?}");
        let id = by_site(name)
            .iter()
            .find(|r| r.status == "completed")
            .and_then(|r| r.invalidation_id.clone());
        assert_eq!(id.as_deref(), Some(invs[0].0.as_str()), "{name}");
    }
    let day = today_utc();
    assert_eq!(
        object(&blog, &format!("{day}.txt")).await.as_deref(),
        Some("1")
    );
    assert_eq!(
        object(&blog, &format!("shared/{day}.txt")).await.as_deref(),
        Some("2")
    );
    assert_eq!(object(&shop, &format!("{day}.txt")).await, None);
}

/// A site whose root is missing at start is reported and tried again; the others run, and
/// once its root exists it runs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_whose_root_is_missing_waits_while_the_others_run() {
    let (blog, shop) = (Site::new().await, Site::new().await);
    let later = shop.dir.path().join("not-yet");
    let text = file(
        &blog,
        &[
            site_table("blog", &blog, &blog.root, "own"),
            site_table("shop", &shop, &later, "shared"),
        ],
    );
    let knobs = Knobs {
        root_retry: Some(Duration::from_millis(200)),
        ..Knobs::default()
    };
    let daemon = Daemon::start_sites(load(&blog, &text), knobs)
        .await
        .expect("starts without shop's root");
    blog.write(".purge", b"blog\n");
    blog.upload(".purge").await;
    blog.settled(1, DONE).await;

    std::fs::create_dir_all(&later).expect("mkdir");
    // Written until the retry has walked the new root and a request for it is stored (the
    // writes before that are not seen; later ones merge into that request).
    let marker = later.join(".purge");
    let mut n = 0;
    poll("a request for shop", Duration::from_secs(20), || {
        n += 1;
        std::fs::write(&marker, format!("shop {n}\n")).expect("write marker");
        async {
            blog.history()
                .iter()
                .any(|r| r.site == "shop")
                .then_some(())
        }
    })
    .await;
    shop.s3
        .put_object()
        .bucket(&shop.origin_bucket)
        .key(".purge")
        .body(std::fs::read(&marker).expect("read").into())
        .send()
        .await
        .expect("upload");
    blog.settled(2, DONE).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(shop.invalidations().await.len(), 1);
}

/// A reload that removes one site and adds another leaves the third running as it was: its
/// request waiting for the origin goes on in the same run, with no restart in its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_sites_without_touching_the_others() {
    let (blog, shop, news) = (Site::new().await, Site::new().await, Site::new().await);
    let before = file(
        &blog,
        &[
            site_table("blog", &blog, &blog.root, "own"),
            site_table("shop", &shop, &shop.root, "shared"),
        ],
    );
    let daemon = Daemon::start_sites(load(&blog, &before), Knobs::default())
        .await
        .expect("start");
    // blog's request waits for its marker in S3 across the reload.
    blog.write(".purge", b"blog\n");
    blog.noted("not there yet").await;

    let after = file(
        &blog,
        &[
            site_table("blog", &blog, &blog.root, "own"),
            site_table("news", &news, &news.root, "shared"),
        ],
    );
    let mut lines = daemon.reload(load(&blog, &after)).await.expect("reload");
    lines.sort();
    assert_eq!(lines, ["site news: started", "site shop: removed"]);

    blog.upload(".purge").await;
    news.write(".purge", b"news\n");
    news.upload(".purge").await;
    let rows = blog.settled(2, DONE).await;
    // shop is no longer watched: its marker makes no request. (What is checked is an absence:
    // it is given four times the settle window and a look to appear.)
    shop.write(".purge", b"shop\n");
    shop.upload(".purge").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    daemon.shutdown().await.expect("shutdown");
    assert_eq!(blog.history().len(), 2, "{:?}", blog.history());
    assert!(shop.invalidations().await.is_empty());
    let blog_id = rows.iter().find(|r| r.site == "blog").expect("blog").id;
    let story: Vec<String> = blog
        .events(blog_id)
        .into_iter()
        .filter_map(|e| e.2)
        .collect();
    assert!(
        !story.iter().any(|d| d.contains("resum")),
        "blog was not restarted: {story:?}"
    );
}

/// The commands on a file with several sites: `history --site` shows that site's requests,
/// `quota` each quota once with the sites using it, `check` reports per site, and `purge`
/// asks which site when there are several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_take_a_site_and_purge_asks_for_one() {
    let (blog, shop) = (Site::new().await, Site::new().await);
    let text = file(
        &blog,
        &[
            site_table("blog", &blog, &blog.root, "own"),
            site_table("shop", &shop, &shop.root, "shared"),
        ],
    );
    let cfg = blog.config_file(&text);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_purgewatch"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .expect("run purgewatch");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["purge"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--site") && err.contains("blog, shop"),
        "{err}"
    );
    let (code, out, err) = run(&["purge", "--site", "shop"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("(site shop)"), "{out}");
    assert_eq!(shop.invalidations().await.len(), 1);
    assert!(blog.invalidations().await.is_empty());

    let (code, out, _) = run(&["history", "--site", "shop", "--json"]);
    assert_eq!(code, Some(0));
    let rows: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["site"], "shop");
    let (_, out, _) = run(&["history", "--site", "blog", "--json"]);
    assert_eq!(out.trim(), "[]");
    let (code, _, err) = run(&["history", "--site", "news"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no site \"news\""), "{err}");

    let (code, out, _) = run(&["quota", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let quotas: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(quotas[0]["quota"], "own");
    assert_eq!(quotas[1]["quota"], "shared");
    assert_eq!(quotas[1]["sites"], serde_json::json!(["shop"]));
    assert_eq!(quotas[1]["count"], 1);
    assert!(quotas[1]["count_object"]
        .as_str()
        .is_some_and(|o| o.ends_with(&format!("shared/{}.txt", today_utc()))));

    let (code, out, err) = run(&["check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("site blog:") && out.contains("site shop:"),
        "{out}"
    );
}
