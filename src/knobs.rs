//! Test knobs: seams the fault tests turn, passed in by whoever starts the daemon. The library
//! never reads them from the environment; only the binary does, and only when built with the
//! `failpoints` feature (see `main.rs`), so a release build has no way to set them.

/// Everything at its production default unless a test says otherwise.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// The clock the stages read (the system's by default; a test's fixed one to set the day).
    pub clock: crate::clock::Clock,
    /// The watcher → pipeline channel's capacity, to force the "channel full → rescan" path.
    pub channel: Option<usize>,
    /// Behave as if the kernel refused every inotify watch past this many (ENOSPC), so the
    /// fallback scan can be tested without lowering the machine-wide limit under other tests.
    pub max_watches: Option<usize>,
    /// How often a site whose root is missing is tried again (30 s by default).
    pub root_retry: Option<std::time::Duration>,
    /// A pause between a request's origin check passing and its joining the invalidation of
    /// its sync ([`crate::pipeline::Pipeline::gather`]), to widen that race in a test.
    pub before_gather: Option<std::time::Duration>,
}

impl Knobs {
    /// `PURGEWATCH_TEST_CHANNEL` and `PURGEWATCH_TEST_MAX_WATCHES`, read by the binary of a
    /// `failpoints` build only.
    #[cfg(feature = "failpoints")]
    pub fn from_env() -> Knobs {
        let get = |k| std::env::var(k).ok().and_then(|v| v.parse().ok());
        Knobs {
            channel: get("PURGEWATCH_TEST_CHANNEL"),
            max_watches: get("PURGEWATCH_TEST_MAX_WATCHES"),
            ..Knobs::default()
        }
    }
}

/// A crash on purpose, for the kill-at-every-step tests (feature `failpoints`, env FAILPOINTS,
/// e.g. `after_count_written=return`): abort(), like kill -9, with no clean-up at all.
#[cfg(feature = "failpoints")]
pub fn crash_point(name: &str) {
    if fail::eval(name, |_| ()).is_some() {
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}

/// A site's loop that stops moving on purpose, for the watchdog test (feature `failpoints`,
/// env FAILPOINTS `site_loop_stall=return(SITE)`): it awaits for ever; the other sites run on.
#[cfg(feature = "failpoints")]
pub async fn stall_point(name: &str, site: &str) {
    if fail::eval(name, |arg| arg.as_deref() == Some(site)) == Some(true) {
        std::future::pending::<()>().await;
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn stall_point(_name: &str, _site: &str) {}
