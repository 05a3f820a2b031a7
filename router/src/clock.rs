//! Wall-clock time read through `tokio::time`, so a paused test clock moves it too.
//!
//! Budget periods and spend rows need Unix time (they outlive the process and are shared by
//! replicas); reading `SystemTime` directly would make period resets untestable with
//! `tokio::time::pause`. The clock takes the Unix time once and adds `tokio::time` elapsed.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Unix milliseconds, advancing with `tokio::time`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: u64,
    base: Instant,
}

impl Clock {
    pub fn new() -> Self {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            base_ms,
            base: Instant::now(),
        }
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        let e = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_ms.saturating_add(e)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
