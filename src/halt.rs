//! Why a request stopped moving, the one answer every stage gives ([`crate::verify`],
//! [`crate::pipeline`]): parked for the next start, ended with a recorded reason, or the
//! database failed.

use crate::store::StoreError;

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
