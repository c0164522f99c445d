//! The agent's clocks: the system's, and one that moves only when told
//! to (tests of expiry).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

pub trait Clock: Send + Sync + fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now(&self) -> f64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        crate::util::now_secs()
    }
}

/// A clock that moves only when told to, for tests of expiry.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_secs: f64) -> ManualClock {
        ManualClock(AtomicU64::new(start_secs.to_bits()))
    }
    pub fn advance(&self, secs: f64) {
        let now = f64::from_bits(self.0.load(Ordering::SeqCst));
        self.0.store((now + secs).to_bits(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::SeqCst))
    }
}
