//! Why a request stopped moving, the one answer every stage gives ([`crate::verify`],
//! [`crate::pipeline`]): parked for the next start, ended with a recorded reason, or the
//! database failed.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::retry::Retry;
use crate::store::{requests, Status, Store, StoreError};

#[derive(Debug)]
pub enum Halt {
    /// The daemon is stopping: the request is parked in its stored state and resumes at start.
    Shutdown,
    /// The request reached a final or parked state, recorded in the history (or was handed to
    /// the request it shares an invalidation with).
    Ended,
    /// The database failed; nothing more can be recorded.
    Store(StoreError),
}

impl From<StoreError> for Halt {
    fn from(e: StoreError) -> Halt {
        Halt::Store(e)
    }
}

/// What every stage does on its way ([`crate::pipeline`], [`crate::invalidate`]): a note on the
/// requests, a pause that ends when the daemon stops, the requests ended with their reason.
#[derive(Clone, Copy)]
pub struct Steps<'a> {
    pub store: &'a Store,
    pub token: &'a CancellationToken,
}

impl Steps<'_> {
    /// Sleeps unless the daemon stops first.
    pub async fn pause(&self, d: Duration) -> Result<(), Halt> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.token.cancelled() => Err(Halt::Shutdown),
        }
    }

    /// One failed attempt of a stage: noted on the requests once per distinct reason, then the
    /// stage's delay.
    pub async fn wait_out(&self, ids: &[i64], retry: &mut Retry, why: String) -> Result<(), Halt> {
        if retry.failed(&why) {
            self.note(ids, why).await?;
        }
        self.pause(retry.delay()).await
    }

    pub async fn note(&self, ids: &[i64], detail: String) -> Result<(), Halt> {
        let ids = ids.to_vec();
        Ok(self
            .store
            .quick(move |c| requests::note(c, &ids, &detail))
            .await?)
    }

    /// Ends (or parks) the requests in `to`, recorded: always `Err(Halt::Ended)` after.
    pub async fn end<T>(&self, ids: &[i64], to: Status, detail: String) -> Result<T, Halt> {
        let ids = ids.to_vec();
        self.store
            .quick(move |c| requests::advance_all(c, &ids, to, &detail))
            .await?;
        Err(Halt::Ended)
    }
}
