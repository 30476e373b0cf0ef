//! The quota. Three parts, one owner each:
//! - this module: pure period policy (time zone, day or month; the count object's name and
//!   body), no I/O;
//! - [`mirror`]: the count bucket in the seed Lambda's format, written conditionally;
//! - [`ledger`]: taking a slot ([`ledger::Ledger::take_slot`]), the one place that decides
//!   whether a request may spend one, journalling it locally before the count object is written.
//!
//! The count object is the seed Lambda's: `<period>.txt` whose body is the decimal count. Reading
//! it before a grant makes an existing Lambda count carry over; writing it with a conditional
//! PutObject (`If-None-Match: *` when new, `If-Match: <etag>` after) lets several servers share one
//! quota: a lost race is a 412 (or 409), after which the ledger re-reads and decides again.

pub mod ledger;
pub mod mirror;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

/// Day or month: how long one count lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

/// What a request does when the period's count is spent (`[quota] when_exhausted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenExhausted {
    /// Record the request as `quota_exhausted` and drop it, like the seed Lambda.
    Skip,
    /// Park the request as `deferred` and invalidate once at the start of the next period.
    Defer,
}

/// One quota's settings (`[quota]`, or `[quotas.NAME]`), as the config file resolved them.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    /// The quota's name (`default`, or NAME of `[quotas.NAME]`): sites naming the same quota
    /// share its count, locally and in the count bucket.
    pub name: String,
    /// Before the count object's name (`<key_prefix><period>.txt`): several quotas in one bucket.
    pub key_prefix: String,
    pub max: u32,
    pub period: Period,
    pub timezone: chrono_tz::Tz,
    pub count_bucket: Option<String>,
    /// The count bucket's region when it is not `[aws] region` (learned from S3 when unset).
    pub count_bucket_region: Option<String>,
    pub when_exhausted: WhenExhausted,
}

/// The period `now` falls in, as the count object's stem: `YYYY-MM-DD` or `YYYY-MM`.
pub fn period_key(now: DateTime<Utc>, tz: Tz, period: Period) -> String {
    let local = now.with_timezone(&tz);
    match period {
        Period::Day => local.format("%Y-%m-%d").to_string(),
        Period::Month => local.format("%Y-%m").to_string(),
    }
}

/// When the period after the one `now` falls in begins, as a UTC instant.
pub fn next_period_start(now: DateTime<Utc>, tz: Tz, period: Period) -> DateTime<Utc> {
    let today = now.with_timezone(&tz).date_naive();
    let next: NaiveDate = match period {
        Period::Day => today + ChronoDuration::days(1),
        Period::Month => {
            let (y, m) = if today.month() == 12 {
                (today.year() + 1, 1)
            } else {
                (today.year(), today.month() + 1)
            };
            NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(today)
        }
    };
    // Midnight may not exist (a DST jump at 00:00): take the first instant of that date that does.
    let mut t = next.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..4 {
        if let Some(at) = tz.from_local_datetime(&t).earliest() {
            return at.with_timezone(&Utc);
        }
        t += ChronoDuration::minutes(30);
    }
    now + ChronoDuration::days(1)
}

/// The count object's name for a period.
pub fn object_key(period: &str) -> String {
    format!("{period}.txt")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "count object {key} holds {body:?}, not a count (a non-negative integer); fix or delete it"
)]
pub struct MalformedCount {
    pub key: String,
    pub body: String,
}

/// Parses the seed's body, `str(count)`. Anything else is an error, never a silent 0: a reset
/// would let the fleet spend the quota a second time.
pub fn parse_count(key: &str, body: &[u8]) -> Result<u32, MalformedCount> {
    let text = String::from_utf8_lossy(body);
    text.trim().parse::<u32>().map_err(|_| MalformedCount {
        key: key.to_owned(),
        body: text.chars().take(40).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn day_key_follows_the_time_zone() {
        let t = at("2026-11-25T16:30:00Z");
        assert_eq!(period_key(t, chrono_tz::UTC, Period::Day), "2026-11-25");
        assert_eq!(
            period_key(t, chrono_tz::Asia::Tokyo, Period::Day),
            "2026-11-26"
        );
        assert_eq!(
            period_key(t, chrono_tz::Asia::Tokyo, Period::Month),
            "2026-11"
        );
    }

    #[test]
    fn next_period_starts_at_local_midnight() {
        let t = at("2026-11-25T16:30:00Z");
        assert_eq!(
            next_period_start(t, chrono_tz::Asia::Tokyo, Period::Day),
            at("2026-11-26T15:00:00Z")
        );
        assert_eq!(
            next_period_start(at("2026-12-31T12:00:00Z"), chrono_tz::UTC, Period::Month),
            at("2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn a_dst_gap_at_midnight_still_has_a_start() {
        // America/Santiago skips 00:00–01:00 when DST begins (2026-09-06).
        let t = at("2026-09-05T12:00:00Z");
        let next = next_period_start(t, chrono_tz::America::Santiago, Period::Day);
        assert!(next > t && next - t < ChronoDuration::hours(24));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const ZONES: &[Tz] = &[
            chrono_tz::UTC,
            chrono_tz::America::New_York,
            chrono_tz::Europe::Berlin,
            chrono_tz::Asia::Tokyo,
            chrono_tz::America::Santiago,
            chrono_tz::Australia::Lord_Howe,
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            // Around every instant from 2000 to 2100, in zones with and without DST: the next
            // period starts after now, the instant before it is still this period, and it is
            // the next calendar day or month.
            #[test]
            fn the_next_period_follows_this_one(secs in 946_684_800i64..4_102_444_800, z in 0..ZONES.len(), month in any::<bool>()) {
                let tz = ZONES[z];
                let period = if month { Period::Month } else { Period::Day };
                let now = DateTime::from_timestamp(secs, 0).expect("in range");
                let next = next_period_start(now, tz, period);
                prop_assert!(next > now);
                let key = period_key(now, tz, period);
                prop_assert_eq!(period_key(next - ChronoDuration::seconds(1), tz, period), key.clone());
                let next_key = period_key(next, tz, period);
                let today = now.with_timezone(&tz).date_naive();
                let want = match period {
                    Period::Day => (today + ChronoDuration::days(1)).format("%Y-%m-%d").to_string(),
                    Period::Month => {
                        let d = today.with_day(1).expect("day 1") + ChronoDuration::days(32);
                        d.format("%Y-%m").to_string()
                    }
                };
                prop_assert_eq!(next_key, want);
                let span = next - now;
                let limit = if month { ChronoDuration::days(32) } else { ChronoDuration::hours(25) };
                prop_assert!(span <= limit, "{:?}", span);
            }
        }

        #[test]
        fn leap_day_and_year_end() {
            let t = at("2028-02-29T12:00:00Z");
            assert_eq!(period_key(t, chrono_tz::UTC, Period::Day), "2028-02-29");
            assert_eq!(
                next_period_start(t, chrono_tz::UTC, Period::Day),
                at("2028-03-01T00:00:00Z")
            );
            // Berlin's DST ends 2026-10-25: that day has 25 hours.
            let t = at("2026-10-24T22:30:00Z"); // 00:30 local on the 25th
            assert_eq!(
                period_key(t, chrono_tz::Europe::Berlin, Period::Day),
                "2026-10-25"
            );
            assert_eq!(
                next_period_start(t, chrono_tz::Europe::Berlin, Period::Day),
                at("2026-10-25T23:00:00Z")
            );
            // New York's DST starts 2026-03-08: a 23-hour day.
            let t = at("2026-03-08T05:00:00Z"); // midnight local
            assert_eq!(
                next_period_start(t, chrono_tz::America::New_York, Period::Day),
                at("2026-03-09T04:00:00Z")
            );
        }
    }

    #[test]
    fn seed_bodies_parse_and_garbage_does_not() {
        assert_eq!(parse_count("k", b"9"), Ok(9));
        assert_eq!(parse_count("k", b" 10\n"), Ok(10));
        for bad in [&b"abc"[..], b"-1", b"", b"1.5"] {
            assert!(parse_count("k", bad).is_err(), "{bad:?}");
        }
    }
}
