//! A simulated year with the default `[state]` (keep 400d, keep_changes 7d): 10 deploys a day,
//! each a request with 5,000 changed files, for 365 days, pruned daily as the daemon does
//! (`store::prune::prune` with the cutoffs of the simulated day). Prints the database size and
//! how long `purgewatch history` and `purgewatch quota` take to read it, then and without
//! pruning (what it would be before issue 14's bounded state, extrapolated from the rows).
//!
//!   cargo run --release --example year [-- DAYS DEPLOYS FILES]
//!
//! The rows are written with SQL in the daemon's own schema (the pipeline writes them one by
//! one over a year; here a day's rows are one transaction), timestamps of the simulated day.

use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use purgewatch::store::{self, counters, prune, requests, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let days = *args.first().unwrap_or(&365);
    let deploys = *args.get(1).unwrap_or(&10);
    let files = *args.get(2).unwrap_or(&5_000);
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("purgewatch.db");
    let st = Store::open(&db)?;
    let start = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .ok_or("date")?;
    let (keep, keep_changes) = (Duration::days(400), Duration::days(7));
    let t0 = Instant::now();
    let mut prune_s = 0.0;
    for day in 0..days as i64 {
        let today = start + Duration::days(day);
        st.call(move |c| {
            let tx = c.transaction()?;
            for d in 0..deploys as i64 {
                let at = store::ts(today + Duration::minutes(60 * d + 5));
                let done = store::ts(today + Duration::minutes(60 * d + 6));
                tx.execute(
                    "INSERT INTO requests (origin, marker, status, detected_at, updated_at,
                         finished_at, verified_at, period, granted_at, invalidation_id, paths,
                         path_count, change_count, detail)
                     VALUES ('watch', '.purge', 'completed', ?1, ?2, ?2, ?1, ?3, ?1, ?4, '[\"/*\"]',
                         1, ?5, 'invalidation completed')",
                    rusqlite::params![at, done, &at[..10], format!("I{day}x{d}"), files as i64],
                )?;
                let id = tx.last_insert_rowid();
                for (from, to) in [
                    (None, "waiting_for_origin"),
                    (Some("waiting_for_origin"), "waiting_for_quota"),
                    (Some("waiting_for_quota"), "invalidating"),
                    (Some("invalidating"), "invalidated"),
                    (Some("invalidated"), "completed"),
                ] {
                    tx.execute(
                        "INSERT INTO events (request_id, at, from_status, to_status, detail)
                         VALUES (?1, ?2, ?3, ?4, 'a step')",
                        rusqlite::params![id, at, from, to],
                    )?;
                }
                let mut ins = tx.prepare_cached(
                    "INSERT INTO changes (rel, deleted, first_seen, last_seen, request_id)
                     VALUES (?1, 0, ?2, ?2, ?3)",
                )?;
                for f in 0..files {
                    ins.execute(rusqlite::params![
                        format!("sec{}/d{}/f{}.html", f % 10, f / 50, f),
                        at,
                        id
                    ])?;
                }
            }
            let mut q = counters::get(&tx, "default", &store::ts(today)[..10])?;
            q.count = deploys as u32;
            counters::set(&tx, "default", &store::ts(today)[..10], &q)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        // The daemon's daily prune, at the end of the simulated day.
        let now = today + Duration::days(1);
        let p0 = Instant::now();
        prune::prune(&st, &store::ts(now - keep), &store::ts(now - keep_changes)).await?;
        prune_s += p0.elapsed().as_secs_f64();
    }
    let simulated = t0.elapsed().as_secs_f64();
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    st.call(|c| Ok(c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?))
        .await?;
    let bytes = size(&db) + size(&dir.path().join("purgewatch.db-wal"));
    let (rows, changes, events): (i64, i64, i64) = st
        .call(|c| {
            Ok(c.query_row(
                "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM changes),
                        (SELECT count(*) FROM events)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?)
        })
        .await?;
    let time = |f: &dyn Fn(&rusqlite::Connection)| {
        let c = rusqlite::Connection::open(&db).expect("open");
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            f(&c);
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        best
    };
    let history_ms = time(&|c| {
        requests::history(c, None, 20).expect("history");
    });
    let month = store::ts(start + Duration::days(days as i64 - 1));
    let quota_ms = time(&|c| {
        counters::get(c, "default", &month[..10]).expect("counter");
        requests::paths_since(c, &month[..7]).expect("paths");
    });
    // Without pruning every change row would stay: estimate its size from the rows' average.
    let kept = changes.max(1) as f64;
    let unbounded_changes = (days * deploys * files) as f64;
    let per_change = bytes as f64 * 0.9 / kept;
    println!("simulated {days} days × {deploys} deploys × {files} changed files in {simulated:.0} s (pruning {prune_s:.1} s in all)");
    println!(
        "database: {:.1} MB ({rows} requests, {events} events, {changes} change rows kept)",
        bytes as f64 / 1e6
    );
    println!(
        "without pruning: ~{:.0} MB ({unbounded_changes:.0} change rows)",
        per_change * unbounded_changes / 1e6
    );
    println!("purgewatch history (20 rows): {history_ms:.2} ms; purgewatch quota (counter + paths this month): {quota_ms:.2} ms");
    Ok(())
}
