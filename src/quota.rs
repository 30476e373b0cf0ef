//! The quota: pure period policy (time zone, day or month) and the count-bucket mirror.
//!
//! The count object is the seed Lambda's: `<period>.txt` whose body is the decimal count. Reading
//! it before a grant makes an existing Lambda count carry over; writing it with a conditional
//! PutObject (`If-None-Match: *` when new, `If-Match: <etag>` after) lets several servers share one
//! quota: a lost race is a 412, after which the caller re-reads and decides again.

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::aws::{self, AwsError, Bucket};
use crate::config::Period;

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

/// What the count object holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub count: u32,
    /// None when the object does not exist yet.
    pub etag: Option<String>,
    /// The CallerReference of the purgewatch request that wrote it last (object metadata;
    /// the seed Lambda writes none). Lets a restarted daemon recognise its own write.
    pub writer: Option<String>,
}

/// User metadata naming the request that wrote the count; the body stays the seed's format.
const WRITER_KEY: &str = "purgewatch-request";

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Someone else wrote first (412/409): re-read and decide again.
    #[error("count object changed meanwhile")]
    Conflict,
    #[error(transparent)]
    Malformed(#[from] MalformedCount),
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// The count bucket, in the seed's format.
#[derive(Clone)]
pub struct Mirror {
    bucket: Bucket,
}

impl Mirror {
    pub fn new(bucket: Bucket) -> Mirror {
        Mirror { bucket }
    }

    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }

    /// The bucket's handle (its region).
    pub fn handle(&self) -> &Bucket {
        &self.bucket
    }

    pub async fn read(&self, period: &str) -> Result<Remote, MirrorError> {
        let key = object_key(period);
        let name = self.bucket.name();
        let out = self
            .bucket
            .send(|c| c.get_object().bucket(name).key(&key).send())
            .await;
        match out {
            Ok(o) => {
                let etag = o.e_tag.clone();
                let writer = o.metadata().and_then(|m| m.get(WRITER_KEY)).cloned();
                let body = o
                    .body
                    .collect()
                    .await
                    .map_err(|e| AwsError::transient(format!("reading s3://{name}/{key}: {e}")))?
                    .into_bytes();
                Ok(Remote {
                    count: parse_count(&key, &body)?,
                    etag,
                    writer,
                })
            }
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .map(|s| s.is_no_such_key())
                    .unwrap_or(false);
                if not_found {
                    Ok(Remote {
                        count: 0,
                        etag: None,
                        writer: None,
                    })
                } else {
                    Err(
                        aws::classify(&format!("GetObject s3://{name}/{key} (count bucket)"), &e)
                            .into(),
                    )
                }
            }
        }
    }

    /// Writes `count` if the object is still what `etag` says (absent when None). Returns the new ETag.
    pub async fn write(
        &self,
        period: &str,
        count: u32,
        etag: Option<&str>,
        writer: &str,
    ) -> Result<Option<String>, MirrorError> {
        let key = object_key(period);
        let name = self.bucket.name();
        let body = count.to_string();
        let sent = self
            .bucket
            .send(|c| {
                let put = c
                    .put_object()
                    .bucket(name)
                    .key(&key)
                    .content_type("text/plain")
                    .metadata(WRITER_KEY, writer)
                    .body(body.clone().into_bytes().into());
                match etag {
                    Some(t) => put.if_match(t),
                    None => put.if_none_match("*"),
                }
                .send()
            })
            .await;
        match sent {
            Ok(o) => Ok(o.e_tag),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let code = e.as_service_error().and_then(|s| {
                    use aws_sdk_s3::error::ProvideErrorMetadata;
                    s.code().map(str::to_owned)
                });
                // 412: the etag moved (or the object appeared); 409: a concurrent conditional write;
                // 404 on If-Match: the object vanished. Each means "read again".
                if matches!(status, Some(412 | 409))
                    || matches!(
                        code.as_deref(),
                        Some("PreconditionFailed" | "ConditionalRequestConflict")
                    )
                    || (etag.is_some()
                        && (status == Some(404) || code.as_deref() == Some("NoSuchKey")))
                {
                    Err(MirrorError::Conflict)
                } else {
                    Err(
                        aws::classify(&format!("PutObject s3://{name}/{key} (count bucket)"), &e)
                            .into(),
                    )
                }
            }
        }
    }
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
