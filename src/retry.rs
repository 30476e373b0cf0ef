//! Waiting out a failure, the same way in every stage: a schedule of delays, and a note on the
//! requests once per distinct reason (and every 20th attempt), so the history says what a request
//! waits for without a row per poll.

use std::time::Duration;

/// Retries of AWS calls after the first: 1 s doubling to 60 s, with jitter so a fleet that
/// lost the same endpoint does not come back in lockstep.
pub fn aws_delay(attempt: u32) -> Duration {
    let base = 1000u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(60_000);
    Duration::from_millis(base / 2 + fastrand::u64(..=base / 2))
}

/// Origin polls: first at once, then doubling from 250 ms up to 30 s. No jitter: each request
/// polls its own key.
pub fn origin_delay(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let ms = 250u64.saturating_mul(1 << attempt.min(8).saturating_sub(1));
    Duration::from_millis(ms.min(30_000))
}

/// One stage's retries: which attempt this is, and what was noted last.
pub struct Retry {
    schedule: fn(u32) -> Duration,
    attempt: u32,
    /// Attempts since the last progress: what the delay grows with.
    streak: u32,
    noted: String,
    /// The last warning logged, and when: a repeated one goes to the log once a minute at most.
    logged: Option<(String, std::time::Instant)>,
}

/// How often the same warning may reach the log.
const LOG_EVERY: Duration = Duration::from_secs(60);

impl Retry {
    pub fn new(schedule: fn(u32) -> Duration) -> Retry {
        Retry {
            schedule,
            attempt: 0,
            streak: 0,
            noted: String::new(),
            logged: None,
        }
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Counts a failed attempt. Returns whether `reason` (the part of the message that names
    /// the reason, without ids or counts that change from poll to poll) should be noted now:
    /// it differs from the last one noted, or 20 attempts passed.
    pub fn failed(&mut self, reason: &str) -> bool {
        let note = reason != self.noted || self.attempt % 20 == 19;
        if note {
            reason.clone_into(&mut self.noted);
        }
        self.attempt += 1;
        self.streak += 1;
        note
    }

    /// Whether a warning about `why` should be logged now: a new one at once, the same one
    /// again at most once a minute (the same AWS error on every retry would flood the journal).
    pub fn log(&mut self, why: &str) -> bool {
        let now = std::time::Instant::now();
        let due = match &self.logged {
            Some((last, at)) => last != why || now.duration_since(*at) >= LOG_EVERY,
            None => true,
        };
        if due {
            self.logged = Some((why.to_owned(), now));
        }
        due
    }

    /// The last attempt moved something (changes got verified): the next comes after the
    /// schedule's first delay again, not a longer one. Backing off is for when nothing moves.
    pub fn progressed(&mut self) {
        self.streak = 0;
    }

    /// How long to wait before the next attempt.
    pub fn delay(&self) -> Duration {
        (self.schedule)(self.streak.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_delay_is_capped_and_jittered() {
        for a in 0..40 {
            let d = aws_delay(a);
            assert!(
                d <= Duration::from_secs(60) && d >= Duration::from_millis(500),
                "{d:?}"
            );
        }
    }

    #[test]
    fn origin_delay_starts_at_once_and_caps_at_30s() {
        assert_eq!(origin_delay(0), Duration::ZERO);
        assert_eq!(origin_delay(1), Duration::from_millis(250));
        assert_eq!(origin_delay(2), Duration::from_millis(500));
        assert_eq!(origin_delay(30), Duration::from_secs(30));
    }

    #[test]
    fn progress_keeps_the_delay_short_and_stillness_backs_off() {
        let mut r = Retry::new(origin_delay);
        for _ in 0..5 {
            r.failed("x");
        }
        assert_eq!(r.delay(), Duration::from_secs(4));
        r.progressed();
        assert_eq!(r.delay(), Duration::from_millis(250));
        r.failed("x");
        assert_eq!(
            r.delay(),
            Duration::from_millis(250),
            "counted from the progress"
        );
        r.failed("x");
        assert_eq!(r.delay(), Duration::from_millis(500));
    }

    #[test]
    fn the_same_warning_is_logged_once_a_minute() {
        let mut r = Retry::new(aws_delay);
        assert!(r.log("throttled"));
        assert!(!r.log("throttled"), "the same error again, at once");
        assert!(r.log("denied"), "another error");
        assert!(
            r.log("throttled"),
            "then the first again: it differs from the last"
        );
        r.logged = Some(("x".into(), std::time::Instant::now() - LOG_EVERY));
        assert!(r.log("x"), "a minute later");
    }

    #[test]
    fn a_reason_is_noted_once_then_every_twentieth_time() {
        let mut r = Retry::new(aws_delay);
        let noted: Vec<bool> = (0..45).map(|_| r.failed("throttled")).collect();
        assert!(noted[0]);
        assert_eq!(noted.iter().filter(|&&n| n).count(), 3, "{noted:?}");
        assert!(r.failed("denied"), "a new reason is noted at once");
        assert_eq!(r.attempt(), 46);
    }
}
