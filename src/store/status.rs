//! The two names every table of requests speaks: a request's [`Status`] (the state machine's
//! states and its moves, [`Status::can_go_to`]) and its [`Source`]. Stored as their snake_case
//! names, so `sqlite3` users read them directly; an unknown stored name is an error.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::Serialize;

/// Where a request stands, named after the stage that holds it. Stored as its snake_case name
/// so `sqlite3` users read it directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Stored; waiting until S3 holds this write of every marker (and, optionally, the changes).
    WaitingForOrigin,
    /// Verified (or asked by hand); waiting for a quota slot the count bucket confirms.
    WaitingForQuota,
    OriginTimeout,
    QuotaExhausted,
    /// Over the quota, parked until the next period.
    Deferred,
    /// A slot is taken; CreateInvalidation is being sent.
    Invalidating,
    /// CloudFront took it; waiting for Completed.
    Invalidated,
    Completed,
    /// Completed, but the edge check (`cloudfront.edge_check`) found viewers still get the old
    /// bytes of a purged object: the detail names the path, the ETags and the likely cause.
    Stale,
    Failed,
    /// Shadow mode (`[cloudfront] dry_run`): every step ran, nothing was sent, no slot taken.
    DryRun,
}

const ALL: [Status; 11] = [
    Status::WaitingForOrigin,
    Status::WaitingForQuota,
    Status::OriginTimeout,
    Status::QuotaExhausted,
    Status::Deferred,
    Status::Invalidating,
    Status::Invalidated,
    Status::Completed,
    Status::Stale,
    Status::Failed,
    Status::DryRun,
];

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::WaitingForOrigin => "waiting_for_origin",
            Status::WaitingForQuota => "waiting_for_quota",
            Status::OriginTimeout => "origin_timeout",
            Status::QuotaExhausted => "quota_exhausted",
            Status::Deferred => "deferred",
            Status::Invalidating => "invalidating",
            Status::Invalidated => "invalidated",
            Status::Completed => "completed",
            Status::Stale => "stale",
            Status::Failed => "failed",
            Status::DryRun => "dry_run",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Ends the request: `finished_at` is set when a request enters one of these.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::OriginTimeout
                | Status::QuotaExhausted
                | Status::Completed
                | Status::Stale
                | Status::Failed
                | Status::DryRun
        )
    }

    /// The moves the pipeline makes, and no others. Staying put is not a move (see [`note`]).
    pub fn can_go_to(self, to: Status) -> bool {
        use Status::*;
        match self {
            WaitingForOrigin => matches!(to, WaitingForQuota | OriginTimeout | Failed),
            // A grant decides: a slot, none (skip or defer), or paths CloudFront would refuse.
            WaitingForQuota | Deferred => {
                matches!(
                    to,
                    Invalidating | QuotaExhausted | Deferred | Failed | DryRun
                ) && !(self == Deferred && to == Deferred)
            }
            Invalidating => matches!(to, Invalidated | Failed),
            // Failed: another distribution of the purge refused it for good.
            // Stale: CloudFront completed, the edge still serves an old object.
            Invalidated => matches!(to, Completed | Failed | Stale),
            OriginTimeout | QuotaExhausted | Completed | Stale | Failed | DryRun => false,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad, not write_str: `history` formats it into a column.
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for Status {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for Status {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl ToSql for Status {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

/// An unknown stored status is an error, never read as some other status.
impl FromSql for Status {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = v.as_str()?;
        Status::parse(s).ok_or_else(|| FromSqlError::Other(format!("unknown status {s:?}").into()))
    }
}

/// How a request came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A marker write seen by the watcher.
    Watch,
    /// A marker found changed by a scan (start-up catch-up or after lost events).
    Scan,
    /// `purgewatch purge`: no origin wait.
    Manual,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Watch => "watch",
            Source::Scan => "scan",
            Source::Manual => "manual",
        }
    }

    /// The status a new request of this source starts in: a manual one has no origin to wait for.
    pub(super) fn first_status(self) -> Status {
        match self {
            Source::Manual => Status::WaitingForQuota,
            Source::Watch | Source::Scan => Status::WaitingForOrigin,
        }
    }
}

impl ToSql for Source {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Source {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        match v.as_str()? {
            "watch" => Ok(Source::Watch),
            "scan" => Ok(Source::Scan),
            "manual" => Ok(Source::Manual),
            s => Err(FromSqlError::Other(format!("unknown origin {s:?}").into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `purgewatch history` pads the status to a column: the width must be honoured.
    #[test]
    fn a_status_fills_its_column() {
        assert_eq!(format!("{:<12}|", Status::Completed), "completed   |");
    }

    #[test]
    fn every_status_round_trips_and_unknown_is_none() {
        for s in ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("cancelled"), None);
    }

    #[test]
    fn final_states_go_nowhere_and_the_way_forward_is_open() {
        use Status::*;
        for s in ALL.into_iter().filter(|s| s.is_final()) {
            assert!(ALL.iter().all(|&t| !s.can_go_to(t)), "{s}");
        }
        let path = [
            WaitingForOrigin,
            WaitingForQuota,
            Invalidating,
            Invalidated,
            Completed,
        ];
        for w in path.windows(2) {
            assert!(w[0].can_go_to(w[1]), "{} -> {}", w[0], w[1]);
            assert!(!w[1].can_go_to(w[0]), "{} -> {}", w[1], w[0]);
        }
        assert!(
            !WaitingForOrigin.can_go_to(Invalidating),
            "no slot without a verified origin"
        );
    }
}
