//! Rate limits: the [`Limiter`] trait and its in-memory implementation.
//!
//! Algorithm: a continuously refilled token bucket per tenant and per dimension (equivalent to
//! GCRA with a burst equal to the limit). A bucket holds at most the per-minute limit and
//! refills at limit/60 per second, so a tenant idle for a minute may burst its whole limit and
//! then proceeds at the steady rate — there are no window edges to game.
//!
//! - **RPM**: a request takes one token; it is refused when less than one is left.
//! - **TPM**: a request reserves its *estimated* tokens (prompt count + `max_tokens`, or the
//!   configured default) at admission and is admitted while the bucket is not empty (at least
//!   one token left); the reservation may take the bucket below zero, and that debt delays later
//!   requests. When the request ends, [`Limiter::reconcile`] replaces the estimate with the real
//!   usage (streams included), refunding or charging the difference. So the tokens admitted in
//!   any minute stay within the limit plus one request's tokens, and a short answer to a request
//!   with a large `max_tokens` does not keep the tenant locked out.
//! - **Parallel requests**: a counter; the [`ParallelSlot`] is released when dropped, which the
//!   router does after the last byte of a stream.
//!
//! All checks of one admission happen in one critical section, and a refused request takes
//! nothing. Limits apply per tenant, shared by all its keys.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::tenant::Tenant;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    ParallelRequests,
}

impl LimitKind {
    /// Stable name used in error bodies, metrics labels and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::ParallelRequests => "parallel_requests",
        }
    }
}

/// The state of one rate-limit dimension, for `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// The per-minute limit.
    pub limit: u64,
    /// Whole units left now (0 when in debt).
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// What is left of a tenant's limits; `None` for a dimension without a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Allowance {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

/// A refused admission.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub kind: LimitKind,
    /// The limit that was hit (per minute, or in flight).
    pub limit: u64,
    /// When retrying may succeed.
    pub retry_after: Duration,
    pub allowance: Allowance,
}

/// Holds a parallel-request slot until dropped.
#[must_use = "dropping the slot releases it at once"]
pub struct ParallelSlot {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl ParallelSlot {
    /// A slot that runs `release` when dropped (for other backends).
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for ParallelSlot {
    fn drop(&mut self) {
        if let Some(f) = self.release.take() {
            f();
        }
    }
}

impl std::fmt::Debug for ParallelSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ParallelSlot")
    }
}

/// An admitted request's share of the limits.
#[derive(Debug)]
pub struct Grant {
    /// Tokens reserved against TPM (reconcile them with the real usage).
    pub tokens: u64,
    /// What is left after this admission.
    pub allowance: Allowance,
    /// Present when the tenant has `max_parallel_requests`.
    pub slot: Option<ParallelSlot>,
}

/// Where rate limits are kept. Implementations must check and take all of a request's
/// dimensions atomically.
pub trait Limiter: Send + Sync + 'static {
    /// Admits one request estimated at `tokens`, or says which limit refuses it.
    fn admit<'a>(
        &'a self,
        tenant: &'a Tenant,
        tokens: u64,
    ) -> BoxFuture<'a, Result<Grant, Rejection>>;

    /// Replaces a reservation of `reserved` tokens with the `actual` usage.
    fn reconcile<'a>(&'a self, tenant: &'a Tenant, reserved: u64, actual: u64)
    -> BoxFuture<'a, ()>;

    /// What is left now.
    fn allowance<'a>(&'a self, tenant: &'a Tenant) -> BoxFuture<'a, Allowance>;
}

/// A token bucket refilled continuously.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    per_second: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn per_minute(limit: u64, now: Instant) -> Self {
        let capacity = limit as f64;
        Self {
            capacity,
            per_second: capacity / 60.0,
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + dt * self.per_second).min(self.capacity);
        self.updated = now;
    }

    /// Time until at least `need` units are available.
    fn wait_for(&self, need: f64) -> Duration {
        let short = need - self.level;
        if short <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(short / self.per_second)
        }
    }

    fn window(&self) -> Window {
        Window {
            limit: self.capacity as u64,
            remaining: self.level.max(0.0).floor() as u64,
            reset: self.wait_for(self.capacity),
        }
    }
}

#[derive(Debug)]
struct Limits {
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    max_parallel: Option<u32>,
    in_flight: u32,
}

impl Limits {
    fn refill(&mut self, now: Instant) {
        for b in [&mut self.rpm, &mut self.tpm].into_iter().flatten() {
            b.refill(now);
        }
    }

    fn allowance(&self) -> Allowance {
        Allowance {
            requests: self.rpm.as_ref().map(Bucket::window),
            tokens: self.tpm.as_ref().map(Bucket::window),
        }
    }
}

/// Rate limits in process memory: one mutex per tenant, held for a few float operations and
/// never across an `.await`, so tenants never contend with each other.
#[derive(Debug, Clone)]
pub struct MemoryLimiter {
    tenants: Arc<Vec<Mutex<Limits>>>,
}

impl MemoryLimiter {
    /// Buckets start full. Indexed by [`Tenant::index`].
    pub fn new(tenants: &[Arc<Tenant>]) -> Self {
        let now = Instant::now();
        Self {
            tenants: Arc::new(
                tenants
                    .iter()
                    .map(|t| {
                        let c = &t.config;
                        Mutex::new(Limits {
                            rpm: c.rpm_limit.map(|l| Bucket::per_minute(l.get(), now)),
                            tpm: c.tpm_limit.map(|l| Bucket::per_minute(l.get(), now)),
                            max_parallel: c.max_parallel_requests.map(|n| n.get()),
                            in_flight: 0,
                        })
                    })
                    .collect(),
            ),
        }
    }

    fn with<R>(&self, index: usize, f: impl FnOnce(&mut Limits) -> R) -> Option<R> {
        let slot = self.tenants.get(index)?;
        // Poisoning means a panic mid-update of plain numbers; they remain usable.
        let mut l = slot.lock().unwrap_or_else(|e| e.into_inner());
        l.refill(Instant::now());
        Some(f(&mut l))
    }

    /// Synchronous core of [`Limiter::admit`].
    pub fn try_admit(&self, tenant: &Tenant, tokens: u64) -> Result<Grant, Rejection> {
        let index = tenant.index;
        let res = self.with(index, |l| {
            if let Some(max) = l.max_parallel
                && l.in_flight >= max
            {
                return Err(Rejection {
                    kind: LimitKind::ParallelRequests,
                    limit: u64::from(max),
                    // No way to know when a request in flight ends; a second is a polite guess.
                    retry_after: Duration::from_secs(1),
                    allowance: l.allowance(),
                });
            }
            if let Some(b) = &l.rpm
                && b.level < 1.0
            {
                return Err(Rejection {
                    kind: LimitKind::Requests,
                    limit: b.capacity as u64,
                    retry_after: b.wait_for(1.0),
                    allowance: l.allowance(),
                });
            }
            if let Some(b) = &l.tpm
                && b.level < 1.0
            {
                return Err(Rejection {
                    kind: LimitKind::Tokens,
                    limit: b.capacity as u64,
                    retry_after: b.wait_for(1.0),
                    allowance: l.allowance(),
                });
            }
            if let Some(b) = &mut l.rpm {
                b.level -= 1.0;
            }
            if let Some(b) = &mut l.tpm {
                b.level -= tokens as f64;
            }
            let slot = l.max_parallel.is_some().then(|| {
                l.in_flight += 1;
                let me = self.clone();
                ParallelSlot::new(move || {
                    me.with(index, |l| l.in_flight = l.in_flight.saturating_sub(1));
                })
            });
            Ok(Grant {
                tokens,
                allowance: l.allowance(),
                slot,
            })
        });
        res.unwrap_or(Ok(Grant {
            tokens,
            allowance: Allowance::default(),
            slot: None,
        }))
    }

    /// Synchronous core of [`Limiter::reconcile`].
    pub fn settle_tokens(&self, tenant: &Tenant, reserved: u64, actual: u64) {
        self.with(tenant.index, |l| {
            if let Some(b) = &mut l.tpm {
                b.level = (b.level + reserved as f64 - actual as f64).min(b.capacity);
            }
        });
    }

    /// Requests of this tenant in flight now.
    pub fn in_flight(&self, tenant: &Tenant) -> u32 {
        self.with(tenant.index, |l| l.in_flight).unwrap_or(0)
    }
}

impl Limiter for MemoryLimiter {
    fn admit<'a>(
        &'a self,
        tenant: &'a Tenant,
        tokens: u64,
    ) -> BoxFuture<'a, Result<Grant, Rejection>> {
        Box::pin(std::future::ready(self.try_admit(tenant, tokens)))
    }

    fn reconcile<'a>(
        &'a self,
        tenant: &'a Tenant,
        reserved: u64,
        actual: u64,
    ) -> BoxFuture<'a, ()> {
        self.settle_tokens(tenant, reserved, actual);
        Box::pin(std::future::ready(()))
    }

    fn allowance<'a>(&'a self, tenant: &'a Tenant) -> BoxFuture<'a, Allowance> {
        let a = self
            .with(tenant.index, |l| l.allowance())
            .unwrap_or_default();
        Box::pin(std::future::ready(a))
    }
}

#[cfg(test)]
mod tests {
    use std::num::{NonZeroU32, NonZeroU64};

    use super::*;
    use crate::tenant::tests::tenant_with;

    #[tokio::test(start_paused = true)]
    async fn rpm_bucket_refuses_then_refills() {
        let t = tenant_with(|c| c.rpm_limit = NonZeroU64::new(2));
        let l = MemoryLimiter::new(std::slice::from_ref(&t));
        assert!(l.try_admit(&t, 0).is_ok());
        let second = l.try_admit(&t, 0);
        assert_eq!(
            second
                .map(|g| g.allowance.requests.map(|w| w.remaining))
                .ok(),
            Some(Some(0))
        );
        let r = l.try_admit(&t, 0).err();
        assert_eq!(r.as_ref().map(|r| r.kind), Some(LimitKind::Requests));
        // 2 per minute refills one request every 30 s.
        assert_eq!(r.map(|r| r.retry_after), Some(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(l.try_admit(&t, 0).is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.try_admit(&t, 0).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn tpm_reserves_the_estimate_and_reconciles_with_usage() {
        // tpm 100, estimates of 266, real usage 80 each: the third request is refused (issue 3
        // case 3), because usage — not the estimate — is what stays charged.
        let t = tenant_with(|c| c.tpm_limit = NonZeroU64::new(100));
        let l = MemoryLimiter::new(std::slice::from_ref(&t));
        for _ in 0..2 {
            let g = l.try_admit(&t, 266);
            assert!(g.is_ok());
            l.settle_tokens(&t, 266, 80);
        }
        let w = l.with(0, |l| l.tpm.as_ref().map(|b| b.level)).flatten();
        assert_eq!(w, Some(-60.0));
        let r = l.try_admit(&t, 266).err();
        assert_eq!(r.as_ref().map(|r| r.kind), Some(LimitKind::Tokens));
        // 61 tokens short at 100/60 per second: 36.6 s.
        assert_eq!(r.map(|r| r.retry_after.as_millis()), Some(36_600));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_request_takes_nothing() {
        let t = tenant_with(|c| {
            c.rpm_limit = NonZeroU64::new(10);
            c.tpm_limit = NonZeroU64::new(100);
        });
        let l = MemoryLimiter::new(std::slice::from_ref(&t));
        let g = l.try_admit(&t, 150);
        assert!(g.is_ok());
        assert!(l.try_admit(&t, 1).is_err());
        // The refused request did not spend a request token: 9 remain.
        let a = l.with(0, |l| l.allowance()).unwrap_or_default();
        assert_eq!(a.requests.map(|w| w.remaining), Some(9));
        assert_eq!(a.tokens.map(|w| w.remaining), Some(0));
    }

    #[tokio::test]
    async fn parallel_slot_is_held_until_dropped() {
        let t = tenant_with(|c| c.max_parallel_requests = NonZeroU32::new(1));
        let l = MemoryLimiter::new(std::slice::from_ref(&t));
        let first = l.try_admit(&t, 1);
        assert!(first.is_ok());
        let r = l.try_admit(&t, 1).err().map(|r| r.kind);
        assert_eq!(r, Some(LimitKind::ParallelRequests));
        assert_eq!(l.in_flight(&t), 1);
        drop(first);
        assert_eq!(l.in_flight(&t), 0);
        assert!(l.try_admit(&t, 1).is_ok());
    }
}
