//! Time from outside: the stages ask a [`Clock`] for "now" (the quota period, the grant time in
//! a CallerReference), never the system directly, so a test can set the day.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// The system clock, or one a test holds and sets.
#[derive(Clone, Default)]
pub struct Clock {
    fixed: Option<Arc<Mutex<DateTime<Utc>>>>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that says `at` until [`Clock::set`] moves it.
    pub fn fixed(at: DateTime<Utc>) -> Clock {
        Clock {
            fixed: Some(Arc::new(Mutex::new(at))),
        }
    }

    /// Moves a fixed clock (and every clone of it); the system clock cannot be moved.
    pub fn set(&self, at: DateTime<Utc>) {
        if let Some(f) = &self.fixed {
            *f.lock().unwrap_or_else(|p| p.into_inner()) = at;
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.fixed {
            Some(f) => *f.lock().unwrap_or_else(|p| p.into_inner()),
            None => Utc::now(),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.fixed {
            Some(_) => write!(f, "Clock::fixed({})", self.now()),
            None => f.write_str("Clock::system()"),
        }
    }
}
