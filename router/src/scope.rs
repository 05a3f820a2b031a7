//! Scopes: the things a limit or a budget belongs to.
//!
//! A request is admitted against every scope it belongs to, atomically: its tenant (limits from
//! the `tenants:` section, shared by all the tenant's keys) and, when the key has limits of its
//! own (keys made with `POST /key/generate`), the key. Limiters and ledgers know nothing about
//! tenants or keys, only scopes; that is what lets the in-memory and the Redis backends share one
//! interface.

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

use crate::ledger::Money;

/// One set of limits with a stable id (`tenant:<id>` or `key:<sha256 hex>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub id: Arc<str>,
    pub rpm: Option<NonZeroU64>,
    pub tpm: Option<NonZeroU64>,
    pub max_parallel: Option<NonZeroU32>,
    pub budget: Option<Money>,
    /// Budget period; periods are aligned on the Unix epoch so every replica and every restart
    /// agrees on when the current one started.
    pub budget_period: Option<Duration>,
}

impl Scope {
    /// A scope with no limits.
    pub fn unlimited(id: impl Into<Arc<str>>) -> Self {
        Self {
            id: id.into(),
            rpm: None,
            tpm: None,
            max_parallel: None,
            budget: None,
            budget_period: None,
        }
    }

    /// Whether any rate limit (RPM, TPM, parallel) applies.
    pub fn has_limits(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.max_parallel.is_some()
    }

    /// Start of the budget period containing `now_ms` (Unix ms); 0 without a period.
    pub fn period_start_ms(&self, now_ms: u64) -> u64 {
        match self.budget_period {
            Some(p) if p.as_millis() > 0 => {
                let p = u64::try_from(p.as_millis()).unwrap_or(u64::MAX);
                now_ms - now_ms % p
            }
            _ => 0,
        }
    }

    /// Milliseconds until the budget period containing `now_ms` ends.
    pub fn period_left_ms(&self, now_ms: u64) -> Option<u64> {
        let p = u64::try_from(self.budget_period?.as_millis()).ok()?;
        (p > 0).then(|| p - now_ms % p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_align_on_the_epoch() {
        let mut s = Scope::unlimited("t");
        assert_eq!(s.period_start_ms(12_345), 0);
        s.budget_period = Some(Duration::from_secs(10));
        assert_eq!(s.period_start_ms(12_345), 10_000);
        assert_eq!(s.period_left_ms(12_345), Some(7_655));
    }
}
