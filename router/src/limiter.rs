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
//! A request is admitted against each of its [`Scope`]s (its tenant, shared by all the tenant's
//! keys, and its key when the key has limits of its own). All checks of one admission happen
//! in one critical section over every scope (locks taken in scope-id order), and a refused
//! request takes nothing. [`crate::redis_state`] implements the same algorithm in a Lua script
//! so that several router processes share one allowance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::scope::Scope;

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

/// Why an admission did not go through.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// A limit refused the request.
    Limit(Rejection),
    /// The shared backend (Redis) could not be asked; the request is refused rather than let
    /// through unmetered.
    Backend(String),
}

/// Holds a parallel-request slot until dropped.
#[must_use = "dropping the slot releases it at once"]
pub struct ParallelSlot {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl ParallelSlot {
    /// A slot that runs `release` when dropped.
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
/// dimensions, over all its scopes, atomically.
pub trait Limiter: Send + Sync + 'static {
    /// Admits one request estimated at `tokens`, or says which limit refuses it.
    fn admit<'a>(
        &'a self,
        scopes: &'a [Scope],
        tokens: u64,
    ) -> BoxFuture<'a, Result<Grant, Refused>>;

    /// Replaces a reservation of `reserved` tokens with the `actual` usage.
    fn reconcile<'a>(
        &'a self,
        scopes: &'a [Scope],
        reserved: u64,
        actual: u64,
    ) -> BoxFuture<'a, ()>;

    /// What is left now.
    fn allowance<'a>(&'a self, scopes: &'a [Scope]) -> BoxFuture<'a, Allowance>;
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
    fn new(s: &Scope, now: Instant) -> Self {
        Self {
            rpm: s.rpm.map(|l| Bucket::per_minute(l.get(), now)),
            tpm: s.tpm.map(|l| Bucket::per_minute(l.get(), now)),
            max_parallel: s.max_parallel.map(|n| n.get()),
            in_flight: 0,
        }
    }

    /// Follows a change of the scope's limits (`/key/update`) without losing its position.
    fn adopt(&mut self, s: &Scope, now: Instant) {
        let fix = |b: &mut Option<Bucket>, limit: Option<u64>| match (b.as_mut(), limit) {
            (Some(cur), Some(l)) if cur.capacity as u64 == l => {}
            (Some(cur), Some(l)) => {
                let used = cur.capacity - cur.level;
                let mut nb = Bucket::per_minute(l, now);
                nb.level = nb.capacity - used;
                *b = Some(nb);
            }
            (None, Some(l)) => *b = Some(Bucket::per_minute(l, now)),
            (_, None) => *b = None,
        };
        fix(&mut self.rpm, s.rpm.map(|l| l.get()));
        fix(&mut self.tpm, s.tpm.map(|l| l.get()));
        self.max_parallel = s.max_parallel.map(|n| n.get());
    }

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

    /// The first limit that refuses a request, if any.
    fn refusal(&self) -> Option<(LimitKind, u64, Duration)> {
        if let Some(max) = self.max_parallel
            && self.in_flight >= max
        {
            // No way to know when a request in flight ends; a second is a polite guess.
            return Some((
                LimitKind::ParallelRequests,
                u64::from(max),
                Duration::from_secs(1),
            ));
        }
        for (kind, b) in [
            (LimitKind::Requests, &self.rpm),
            (LimitKind::Tokens, &self.tpm),
        ] {
            if let Some(b) = b
                && b.level < 1.0
            {
                return Some((kind, b.capacity as u64, b.wait_for(1.0)));
            }
        }
        None
    }
}

/// The tighter of two windows (fewer units left).
fn tighter(a: Option<Window>, b: Option<Window>) -> Option<Window> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.remaining < x.remaining { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Allowance {
    /// Combines the allowances of several scopes: per dimension, the tighter one.
    pub fn merge(self, o: Allowance) -> Allowance {
        Allowance {
            requests: tighter(self.requests, o.requests),
            tokens: tighter(self.tokens, o.tokens),
        }
    }
}

type Cell = Arc<Mutex<Limits>>;

/// Rate limits in process memory: one mutex per scope, held for a few float operations and
/// never across an `.await`, so scopes never contend with each other. Each router process
/// enforces its own allowance.
#[derive(Debug, Clone, Default)]
pub struct MemoryLimiter {
    cells: Arc<RwLock<HashMap<Arc<str>, Cell>>>,
}

/// Locks a cell; a poisoned lock only means a panic between two float updates, and the numbers
/// remain usable.
fn lock(c: &Cell) -> std::sync::MutexGuard<'_, Limits> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cell of a scope with limits, created on first use with full buckets.
    fn cell(&self, s: &Scope) -> Option<Cell> {
        if !s.has_limits() {
            return None;
        }
        {
            let map = self.cells.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = map.get(&s.id) {
                return Some(c.clone());
            }
        }
        let mut map = self.cells.write().unwrap_or_else(|e| e.into_inner());
        Some(
            map.entry(s.id.clone())
                .or_insert_with(|| Arc::new(Mutex::new(Limits::new(s, Instant::now()))))
                .clone(),
        )
    }

    /// The cells of `scopes` in id order (the lock order, so two admissions never deadlock).
    fn cells_of<'s>(&self, scopes: &'s [Scope]) -> Vec<(&'s Scope, Cell)> {
        let mut v: Vec<(&Scope, Cell)> = scopes
            .iter()
            .filter_map(|s| self.cell(s).map(|c| (s, c)))
            .collect();
        v.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        v.dedup_by(|a, b| a.0.id == b.0.id);
        v
    }

    /// Synchronous core of [`Limiter::admit`].
    pub fn try_admit(&self, scopes: &[Scope], tokens: u64) -> Result<Grant, Rejection> {
        let cells = self.cells_of(scopes);
        let now = Instant::now();
        let mut guards: Vec<_> = cells.iter().map(|(_, c)| lock(c)).collect();
        let mut allowance = Allowance::default();
        for ((s, _), g) in cells.iter().zip(guards.iter_mut()) {
            g.adopt(s, now);
            g.refill(now);
            allowance = allowance.merge(g.allowance());
        }
        for g in &guards {
            if let Some((kind, limit, retry_after)) = g.refusal() {
                return Err(Rejection {
                    kind,
                    limit,
                    retry_after,
                    allowance,
                });
            }
        }
        let mut allowance = Allowance::default();
        let mut parallel = Vec::new();
        for ((_, c), g) in cells.iter().zip(guards.iter_mut()) {
            if let Some(b) = &mut g.rpm {
                b.level -= 1.0;
            }
            if let Some(b) = &mut g.tpm {
                b.level -= tokens as f64;
            }
            if g.max_parallel.is_some() {
                g.in_flight += 1;
                parallel.push(c.clone());
            }
            allowance = allowance.merge(g.allowance());
        }
        drop(guards);
        let slot = (!parallel.is_empty()).then(|| {
            ParallelSlot::new(move || {
                for c in &parallel {
                    let mut g = lock(c);
                    g.in_flight = g.in_flight.saturating_sub(1);
                }
            })
        });
        Ok(Grant {
            tokens,
            allowance,
            slot,
        })
    }

    /// Synchronous core of [`Limiter::reconcile`].
    pub fn settle_tokens(&self, scopes: &[Scope], reserved: u64, actual: u64) {
        let now = Instant::now();
        for (_, c) in self.cells_of(scopes) {
            let mut g = lock(&c);
            g.refill(now);
            if let Some(b) = &mut g.tpm {
                b.level = (b.level + reserved as f64 - actual as f64).min(b.capacity);
            }
        }
    }

    /// Synchronous core of [`Limiter::allowance`].
    pub fn current(&self, scopes: &[Scope]) -> Allowance {
        let now = Instant::now();
        let mut a = Allowance::default();
        for (_, c) in self.cells_of(scopes) {
            let mut g = lock(&c);
            g.refill(now);
            a = a.merge(g.allowance());
        }
        a
    }

    /// Requests of this scope in flight now.
    pub fn in_flight(&self, scope: &Scope) -> u32 {
        self.cell(scope).map_or(0, |c| lock(&c).in_flight)
    }
}

impl Limiter for MemoryLimiter {
    fn admit<'a>(
        &'a self,
        scopes: &'a [Scope],
        tokens: u64,
    ) -> BoxFuture<'a, Result<Grant, Refused>> {
        Box::pin(std::future::ready(
            self.try_admit(scopes, tokens).map_err(Refused::Limit),
        ))
    }

    fn reconcile<'a>(
        &'a self,
        scopes: &'a [Scope],
        reserved: u64,
        actual: u64,
    ) -> BoxFuture<'a, ()> {
        self.settle_tokens(scopes, reserved, actual);
        Box::pin(std::future::ready(()))
    }

    fn allowance<'a>(&'a self, scopes: &'a [Scope]) -> BoxFuture<'a, Allowance> {
        Box::pin(std::future::ready(self.current(scopes)))
    }
}

#[cfg(test)]
mod tests {
    use std::num::{NonZeroU32, NonZeroU64};

    use super::*;

    fn scope_with(f: impl FnOnce(&mut Scope)) -> Scope {
        let mut s = Scope::unlimited("tenant:t");
        f(&mut s);
        s
    }

    #[tokio::test(start_paused = true)]
    async fn rpm_bucket_refuses_then_refills() {
        let t = [scope_with(|c| c.rpm = NonZeroU64::new(2))];
        let l = MemoryLimiter::new();
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
        let t = [scope_with(|c| c.tpm = NonZeroU64::new(100))];
        let l = MemoryLimiter::new();
        for _ in 0..2 {
            let g = l.try_admit(&t, 266);
            assert!(g.is_ok());
            l.settle_tokens(&t, 266, 80);
        }
        let w = l.current(&t).tokens.map(|w| w.remaining);
        assert_eq!(w, Some(0));
        let r = l.try_admit(&t, 266).err();
        assert_eq!(r.as_ref().map(|r| r.kind), Some(LimitKind::Tokens));
        // 61 tokens short at 100/60 per second: 36.6 s.
        assert_eq!(r.map(|r| r.retry_after.as_millis()), Some(36_600));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_request_takes_nothing() {
        let t = [scope_with(|c| {
            c.rpm = NonZeroU64::new(10);
            c.tpm = NonZeroU64::new(100);
        })];
        let l = MemoryLimiter::new();
        let g = l.try_admit(&t, 150);
        assert!(g.is_ok());
        assert!(l.try_admit(&t, 1).is_err());
        // The refused request did not spend a request token: 9 remain.
        let a = l.current(&t);
        assert_eq!(a.requests.map(|w| w.remaining), Some(9));
        assert_eq!(a.tokens.map(|w| w.remaining), Some(0));
    }

    #[tokio::test]
    async fn parallel_slot_is_held_until_dropped() {
        let t = [scope_with(|c| c.max_parallel = NonZeroU32::new(1))];
        let l = MemoryLimiter::new();
        let first = l.try_admit(&t, 1);
        assert!(first.is_ok());
        let r = l.try_admit(&t, 1).err().map(|r| r.kind);
        assert_eq!(r, Some(LimitKind::ParallelRequests));
        assert_eq!(l.in_flight(&t[0]), 1);
        drop(first);
        assert_eq!(l.in_flight(&t[0]), 0);
        assert!(l.try_admit(&t, 1).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn key_and_tenant_limits_both_apply_atomically() {
        // The key allows 2 per minute, its tenant 3: the key's third request is refused by
        // the key's limit and takes nothing from the tenant.
        let tenant = scope_with(|c| c.rpm = NonZeroU64::new(3));
        let key = Scope {
            id: "key:k".into(),
            rpm: NonZeroU64::new(2),
            ..Scope::unlimited("key:k")
        };
        let both = [tenant.clone(), key];
        let l = MemoryLimiter::new();
        assert!(l.try_admit(&both, 0).is_ok());
        assert!(l.try_admit(&both, 0).is_ok());
        let r = l.try_admit(&both, 0).err();
        assert_eq!(r.map(|r| r.limit), Some(2));
        let tenant_only = [tenant];
        assert_eq!(
            l.current(&tenant_only).requests.map(|w| w.remaining),
            Some(1)
        );
        assert!(l.try_admit(&tenant_only, 0).is_ok());
        assert!(l.try_admit(&tenant_only, 0).is_err());
    }
}
