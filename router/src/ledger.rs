//! Budgets: the [`Ledger`] trait and its in-memory implementation.
//!
//! Admission reserves a request's worst-case cost against every [`Scope`] of the request
//! ([`Ledger::reserve`]); when the request ends, [`Ledger::settle`] replaces that hold with the
//! actual cost, or [`Ledger::release`] drops it when nothing was served. Check and reserve
//! happen in one critical section over all scopes, so however many requests race, spend stays
//! within the budget plus the overshoot of a single request whose actual cost exceeded its
//! estimate. The durable record of spend is the spend log ([`crate::spend`]); the ledger holds
//! the running totals, and [`Ledger::resume`] seeds them from the spend log at start-up so
//! budgets survive a restart. Budget periods are aligned on the Unix epoch
//! ([`Scope::period_start_ms`]), so a restart or another replica agrees on the current period.
//!
//! Money is kept in integer nano-units (10⁻⁹ of a price unit) so sums are exact and Redis and
//! SQL add them atomically.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::clock::Clock;
use crate::scope::Scope;

/// An amount in price units (LiteLLM: USD), stored as nano-units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);
    const SCALE: f64 = 1e9;

    /// Rounds `x` to the nearest nano-unit (saturating).
    pub fn from_f64(x: f64) -> Self {
        Money((x * Self::SCALE).round() as i64)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE
    }

    pub fn nanos(self) -> i64 {
        self.0
    }

    /// Cost of `prompt` and `completion` tokens at per-token prices.
    pub fn for_tokens(prompt: u64, completion: u64, input_price: f64, output_price: f64) -> Self {
        Self::from_f64(prompt as f64 * input_price + completion as f64 * output_price)
    }

    pub fn from_nanos(n: i64) -> Self {
        Money(n)
    }

    pub fn plus(self, o: Money) -> Money {
        Money(self.0.saturating_add(o.0))
    }

    pub fn minus(self, o: Money) -> Money {
        Money(self.0.saturating_sub(o.0))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.9}", self.as_f64())
    }
}

/// A budget hold taken at admission. Hand it back through `settle` or `release`.
#[derive(Debug)]
#[must_use = "a hold must be settled or released, or the budget stays reserved"]
pub struct Hold {
    amount: Money,
    /// Identifies the hold in a shared backend (Redis), where holds of a crashed replica expire.
    id: u64,
}

impl Hold {
    pub fn new(amount: Money, id: u64) -> Self {
        Self { amount, id }
    }

    pub fn amount(&self) -> Money {
        self.amount
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetExceeded {
    /// The scope whose budget refused (`tenant:<id>` or `key:<hash>`).
    pub scope: Arc<str>,
    pub spent: Money,
    pub reserved: Money,
    pub budget: Money,
    /// What this request would have reserved.
    pub requested: Money,
    /// Time until the budget period resets, when it does.
    pub resets_in: Option<Duration>,
}

/// Why a reservation did not go through.
#[derive(Debug, Clone, PartialEq)]
pub enum ReserveError {
    Exceeded(BudgetExceeded),
    /// The shared backend (Redis) could not be asked; refused rather than let through.
    Backend(String),
}

/// A scope's budget position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetStatus {
    /// Settled spend in the current period.
    pub spent: Money,
    /// Held by requests in flight.
    pub reserved: Money,
    pub budget: Option<Money>,
}

impl BudgetStatus {
    /// Budget left after spend and holds; `None` without a budget.
    pub fn remaining(&self) -> Option<Money> {
        self.budget
            .map(|b| b.minus(self.spent).minus(self.reserved).max(Money::ZERO))
    }
}

/// Where budgets are enforced. Implementations must make `reserve` atomic with respect to
/// every other `reserve`/`settle`/`release` touching the same scopes.
pub trait Ledger: Send + Sync + 'static {
    /// Holds `worst` against the budget of every scope that has one, or refuses when spend +
    /// holds + `worst` would exceed any of them (and then holds nothing).
    fn reserve<'a>(
        &'a self,
        scopes: &'a [Scope],
        worst: Money,
    ) -> BoxFuture<'a, Result<Hold, ReserveError>>;

    /// Replaces `hold` with the actual cost.
    fn settle<'a>(&'a self, scopes: &'a [Scope], hold: Hold, actual: Money) -> BoxFuture<'a, ()>;

    /// Drops `hold` without spending anything.
    fn release<'a>(&'a self, scopes: &'a [Scope], hold: Hold) -> BoxFuture<'a, ()>;

    /// The scope's current position.
    fn status<'a>(&'a self, scope: &'a Scope) -> BoxFuture<'a, BudgetStatus>;

    /// Seeds the scope's spend in the current period (read from the spend log at start-up or
    /// when a key is first seen). A shared backend keeps a value another replica already set.
    fn resume<'a>(&'a self, scope: &'a Scope, spent: Money) -> BoxFuture<'a, ()>;
}

#[derive(Debug, Default)]
struct Account {
    period_start_ms: u64,
    spent: Money,
    reserved: Money,
}

impl Account {
    /// Starts a new budget period when the current one is over.
    fn roll(&mut self, s: &Scope, now_ms: u64) {
        let start = s.period_start_ms(now_ms);
        if start != self.period_start_ms {
            self.period_start_ms = start;
            self.spent = Money::ZERO;
        }
    }
}

type Cell = Arc<Mutex<Account>>;

/// Budgets in process memory: one mutex per scope, held for a few integer additions and never
/// across an `.await`.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    clock: Clock,
    accounts: RwLock<HashMap<Arc<str>, Cell>>,
}

fn lock(c: &Cell) -> std::sync::MutexGuard<'_, Account> {
    // A poisoned lock only means another thread panicked between two additions; the numbers
    // are still the best we have, so keep going.
    c.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryLedger {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            accounts: RwLock::default(),
        }
    }

    fn cell(&self, s: &Scope) -> Cell {
        {
            let map = self.accounts.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = map.get(&s.id) {
                return c.clone();
            }
        }
        let now = self.clock.now_ms();
        let mut map = self.accounts.write().unwrap_or_else(|e| e.into_inner());
        map.entry(s.id.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Account {
                    period_start_ms: s.period_start_ms(now),
                    ..Account::default()
                }))
            })
            .clone()
    }

    /// Cells of the scopes with a budget, in id order (the lock order).
    fn budgeted<'s>(&self, scopes: &'s [Scope]) -> Vec<(&'s Scope, Cell)> {
        let mut v: Vec<(&Scope, Cell)> = scopes
            .iter()
            .filter(|s| s.budget.is_some())
            .map(|s| (s, self.cell(s)))
            .collect();
        v.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        v.dedup_by(|a, b| a.0.id == b.0.id);
        v
    }

    /// Synchronous core of [`Ledger::reserve`].
    pub fn try_reserve(&self, scopes: &[Scope], worst: Money) -> Result<Hold, BudgetExceeded> {
        let now = self.clock.now_ms();
        let cells = self.budgeted(scopes);
        let mut guards: Vec<_> = cells.iter().map(|(_, c)| lock(c)).collect();
        for ((s, _), a) in cells.iter().zip(guards.iter_mut()) {
            a.roll(s, now);
            let Some(budget) = s.budget else { continue };
            let after = a.spent.plus(a.reserved).plus(worst);
            if a.spent >= budget || after > budget {
                return Err(BudgetExceeded {
                    scope: s.id.clone(),
                    spent: a.spent,
                    reserved: a.reserved,
                    budget,
                    requested: worst,
                    resets_in: s.period_left_ms(now).map(Duration::from_millis),
                });
            }
        }
        for a in guards.iter_mut() {
            a.reserved = a.reserved.plus(worst);
        }
        Ok(Hold::new(worst, 0))
    }

    /// Synchronous core of settle/release.
    pub fn finish(&self, scopes: &[Scope], hold: Hold, actual: Money) {
        let now = self.clock.now_ms();
        for (s, c) in self.budgeted(scopes) {
            let mut a = lock(&c);
            a.roll(s, now);
            a.reserved = a.reserved.minus(hold.amount).max(Money::ZERO);
            a.spent = a.spent.plus(actual);
        }
    }

    /// Synchronous core of [`Ledger::status`].
    pub fn position(&self, s: &Scope) -> BudgetStatus {
        let c = self.cell(s);
        let mut a = lock(&c);
        a.roll(s, self.clock.now_ms());
        BudgetStatus {
            spent: a.spent,
            reserved: a.reserved,
            budget: s.budget,
        }
    }
}

impl Ledger for MemoryLedger {
    fn reserve<'a>(
        &'a self,
        scopes: &'a [Scope],
        worst: Money,
    ) -> BoxFuture<'a, Result<Hold, ReserveError>> {
        Box::pin(std::future::ready(
            self.try_reserve(scopes, worst)
                .map_err(ReserveError::Exceeded),
        ))
    }

    fn settle<'a>(&'a self, scopes: &'a [Scope], hold: Hold, actual: Money) -> BoxFuture<'a, ()> {
        self.finish(scopes, hold, actual);
        Box::pin(std::future::ready(()))
    }

    fn release<'a>(&'a self, scopes: &'a [Scope], hold: Hold) -> BoxFuture<'a, ()> {
        self.finish(scopes, hold, Money::ZERO);
        Box::pin(std::future::ready(()))
    }

    fn status<'a>(&'a self, scope: &'a Scope) -> BoxFuture<'a, BudgetStatus> {
        Box::pin(std::future::ready(self.position(scope)))
    }

    fn resume<'a>(&'a self, scope: &'a Scope, spent: Money) -> BoxFuture<'a, ()> {
        let c = self.cell(scope);
        let mut a = lock(&c);
        a.roll(scope, self.clock.now_ms());
        a.spent = spent;
        drop(a);
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(b: f64, period: Option<Duration>) -> [Scope; 1] {
        [Scope {
            budget: Some(Money::from_f64(b)),
            budget_period: period,
            ..Scope::unlimited("tenant:t")
        }]
    }

    #[test]
    fn money_rounds_to_nanos() {
        assert_eq!(
            Money::for_tokens(10, 100, 0.0000002, 0.0000006).nanos(),
            62_000
        );
        assert_eq!(Money::from_f64(25.0).as_f64(), 25.0);
    }

    #[tokio::test]
    async fn racing_reservations_never_exceed_the_budget() {
        // Budget 0.010, each request reserves 0.004: two fit, the third does not (issue 3 case 1).
        let t = budget(0.010, None);
        let ledger = MemoryLedger::new(Clock::new());
        let holds: Vec<_> = (0..10)
            .map(|_| ledger.try_reserve(&t, Money::from_f64(0.004)))
            .collect();
        let ok = holds.iter().filter(|h| h.is_ok()).count();
        assert_eq!(ok, 2);
        for h in holds.into_iter().flatten() {
            ledger.settle(&t, h, Money::from_f64(0.0035)).await;
        }
        let s = ledger.status(&t[0]).await;
        assert_eq!(s.spent, Money::from_f64(0.007));
        assert_eq!(s.reserved, Money::ZERO);
        // 0.003 left: a 0.004 worst case is refused, a 0.002 one fits.
        assert!(ledger.try_reserve(&t, Money::from_f64(0.004)).is_err());
        assert!(ledger.try_reserve(&t, Money::from_f64(0.002)).is_ok());
    }

    #[tokio::test]
    async fn release_returns_the_hold() {
        let t = budget(1.0, None);
        let ledger = MemoryLedger::new(Clock::new());
        let h = ledger.try_reserve(&t, Money::from_f64(0.9));
        assert!(ledger.try_reserve(&t, Money::from_f64(0.2)).is_err());
        if let Ok(h) = h {
            ledger.release(&t, h).await;
        }
        assert!(ledger.try_reserve(&t, Money::from_f64(0.2)).is_ok());
    }

    #[tokio::test]
    async fn a_refusal_by_one_scope_holds_nothing_in_the_other() {
        let tenant = Scope {
            budget: Some(Money::from_f64(1.0)),
            ..Scope::unlimited("tenant:t")
        };
        let key = Scope {
            budget: Some(Money::from_f64(0.1)),
            ..Scope::unlimited("key:k")
        };
        let ledger = MemoryLedger::new(Clock::new());
        let both = [tenant.clone(), key];
        let refused = ledger.try_reserve(&both, Money::from_f64(0.5)).err();
        assert_eq!(refused.map(|e| e.scope), Some("key:k".into()));
        assert_eq!(ledger.position(&tenant).reserved, Money::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_resets_each_period_and_resumes_from_the_spend_log() {
        let t = budget(1.0, Some(Duration::from_secs(3600)));
        let ledger = MemoryLedger::new(Clock::new());
        // What a restart reads back from the spend log for the current period.
        ledger.resume(&t[0], Money::from_f64(0.95)).await;
        let refused = ledger.try_reserve(&t, Money::from_f64(0.1));
        let resets = refused.err().and_then(|e| e.resets_in);
        assert!(resets.is_some_and(|d| d <= Duration::from_secs(3600)));
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(ledger.try_reserve(&t, Money::from_f64(0.1)).is_ok());
        assert_eq!(ledger.status(&t[0]).await.spent, Money::ZERO);
    }
}
