//! Spend and budgets: the [`Ledger`] trait and its in-memory implementation.
//!
//! Admission reserves a request's worst-case cost ([`Ledger::reserve`]); when the request ends,
//! [`Ledger::settle`] replaces that hold with the actual cost and records the spend row, or
//! [`Ledger::release`] drops it when nothing was served. Check and reserve happen in one
//! critical section, so however many requests race, spend stays within the budget plus the
//! overshoot of a single request whose actual cost exceeded its estimate.
//!
//! Money is kept in integer nano-units (10⁻⁹ of a price unit) so sums are exact and a future
//! Redis or SQL backend can add them atomically.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::tenant::Tenant;

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

    fn plus(self, o: Money) -> Money {
        Money(self.0.saturating_add(o.0))
    }

    fn minus(self, o: Money) -> Money {
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
}

impl Hold {
    pub fn amount(&self) -> Money {
        self.amount
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetExceeded {
    pub spent: Money,
    pub reserved: Money,
    pub budget: Money,
    /// What this request would have reserved.
    pub requested: Money,
    /// Time until the budget period resets, when it does.
    pub resets_in: Option<Duration>,
}

/// A tenant's budget position.
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

/// One finished request, as the spend log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendEntry {
    pub tenant_id: String,
    pub key_hash: String,
    pub model: String,
    pub deployment: String,
    pub adapter: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: Money,
    pub status: String,
}

/// Where budgets are enforced and spend is recorded. Implementations must make `reserve`
/// atomic with respect to every other `reserve`/`settle`/`release` of the same tenant.
pub trait Ledger: Send + Sync + 'static {
    /// Holds `worst` against the tenant's budget, or refuses when spend + holds + `worst` would
    /// exceed it.
    fn reserve<'a>(
        &'a self,
        tenant: &'a Tenant,
        worst: Money,
    ) -> BoxFuture<'a, Result<Hold, BudgetExceeded>>;

    /// Replaces `hold` with the entry's actual cost and records the entry.
    fn settle<'a>(&'a self, tenant: &'a Tenant, hold: Hold, entry: SpendEntry)
    -> BoxFuture<'a, ()>;

    /// Drops `hold` without spending anything.
    fn release<'a>(&'a self, tenant: &'a Tenant, hold: Hold) -> BoxFuture<'a, ()>;

    /// The tenant's current position.
    fn status<'a>(&'a self, tenant: &'a Tenant) -> BoxFuture<'a, BudgetStatus>;
}

/// Budgets and spend totals in process memory: one mutex per tenant, held for a few
/// arithmetic operations and never across an `.await`. Spend rows are not kept (only totals);
/// the audit log has them.
#[derive(Debug)]
pub struct MemoryLedger {
    tenants: Vec<Mutex<Account>>,
}

#[derive(Debug)]
struct Account {
    budget: Option<Money>,
    period: Option<Duration>,
    period_ends: Option<Instant>,
    spent: Money,
    reserved: Money,
}

impl Account {
    /// Starts a new budget period when the current one is over.
    fn roll(&mut self, now: Instant) {
        if let (Some(period), Some(ends)) = (self.period, self.period_ends)
            && now >= ends
        {
            let behind = now.duration_since(ends).as_secs_f64() / period.as_secs_f64();
            let skip = behind.floor() as u32 + 1;
            self.period_ends = Some(ends + period.saturating_mul(skip));
            self.spent = Money::ZERO;
        }
    }
}

impl MemoryLedger {
    /// One account per tenant, indexed by [`Tenant::index`]; periods start now.
    pub fn new(tenants: &[std::sync::Arc<Tenant>]) -> Self {
        let now = Instant::now();
        Self {
            tenants: tenants
                .iter()
                .map(|t| {
                    let period = t.config.budget_duration;
                    Mutex::new(Account {
                        budget: t.config.max_budget.map(Money::from_f64),
                        period,
                        period_ends: period.map(|p| now + p),
                        spent: Money::ZERO,
                        reserved: Money::ZERO,
                    })
                })
                .collect(),
        }
    }

    fn with<R>(&self, tenant: &Tenant, f: impl FnOnce(&mut Account) -> R) -> Option<R> {
        let slot = self.tenants.get(tenant.index)?;
        // A poisoned lock only means another thread panicked between two additions; the
        // numbers are still the best we have, so keep going.
        let mut acct = slot.lock().unwrap_or_else(|e| e.into_inner());
        acct.roll(Instant::now());
        Some(f(&mut acct))
    }

    /// Synchronous core of [`Ledger::reserve`].
    pub fn try_reserve(&self, tenant: &Tenant, worst: Money) -> Result<Hold, BudgetExceeded> {
        let now = Instant::now();
        self.with(tenant, |a| {
            if let Some(budget) = a.budget {
                let after = a.spent.plus(a.reserved).plus(worst);
                if a.spent >= budget || after > budget {
                    return Err(BudgetExceeded {
                        spent: a.spent,
                        reserved: a.reserved,
                        budget,
                        requested: worst,
                        resets_in: a.period_ends.map(|e| e.saturating_duration_since(now)),
                    });
                }
            }
            a.reserved = a.reserved.plus(worst);
            Ok(Hold { amount: worst })
        })
        .unwrap_or(Ok(Hold { amount: worst }))
    }

    fn finish(&self, tenant: &Tenant, hold: Hold, actual: Money) {
        self.with(tenant, |a| {
            a.reserved = a.reserved.minus(hold.amount).max(Money::ZERO);
            a.spent = a.spent.plus(actual);
        });
    }

    fn position(&self, tenant: &Tenant) -> BudgetStatus {
        self.with(tenant, |a| BudgetStatus {
            spent: a.spent,
            reserved: a.reserved,
            budget: a.budget,
        })
        .unwrap_or(BudgetStatus {
            spent: Money::ZERO,
            reserved: Money::ZERO,
            budget: None,
        })
    }
}

impl Ledger for MemoryLedger {
    fn reserve<'a>(
        &'a self,
        tenant: &'a Tenant,
        worst: Money,
    ) -> BoxFuture<'a, Result<Hold, BudgetExceeded>> {
        Box::pin(std::future::ready(self.try_reserve(tenant, worst)))
    }

    fn settle<'a>(
        &'a self,
        tenant: &'a Tenant,
        hold: Hold,
        entry: SpendEntry,
    ) -> BoxFuture<'a, ()> {
        self.finish(tenant, hold, entry.cost);
        Box::pin(std::future::ready(()))
    }

    fn release<'a>(&'a self, tenant: &'a Tenant, hold: Hold) -> BoxFuture<'a, ()> {
        self.finish(tenant, hold, Money::ZERO);
        Box::pin(std::future::ready(()))
    }

    fn status<'a>(&'a self, tenant: &'a Tenant) -> BoxFuture<'a, BudgetStatus> {
        Box::pin(std::future::ready(self.position(tenant)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::tests::tenant_with;

    fn entry(cost: Money) -> SpendEntry {
        SpendEntry {
            tenant_id: "t".into(),
            key_hash: String::new(),
            model: "m".into(),
            deployment: "d".into(),
            adapter: None,
            prompt_tokens: 1,
            completion_tokens: 1,
            cost,
            status: "ok".into(),
        }
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
        let t = tenant_with(|c| c.max_budget = Some(0.010));
        let ledger = MemoryLedger::new(std::slice::from_ref(&t));
        let holds: Vec<_> = (0..10)
            .map(|_| ledger.try_reserve(&t, Money::from_f64(0.004)))
            .collect();
        let ok = holds.iter().filter(|h| h.is_ok()).count();
        assert_eq!(ok, 2);
        for h in holds.into_iter().flatten() {
            ledger.settle(&t, h, entry(Money::from_f64(0.0035))).await;
        }
        let s = ledger.status(&t).await;
        assert_eq!(s.spent, Money::from_f64(0.007));
        assert_eq!(s.reserved, Money::ZERO);
        // 0.003 left: a 0.004 worst case is refused, a 0.002 one fits.
        assert!(ledger.try_reserve(&t, Money::from_f64(0.004)).is_err());
        assert!(ledger.try_reserve(&t, Money::from_f64(0.002)).is_ok());
    }

    #[tokio::test]
    async fn release_returns_the_hold() {
        let t = tenant_with(|c| c.max_budget = Some(1.0));
        let ledger = MemoryLedger::new(std::slice::from_ref(&t));
        let h = ledger.try_reserve(&t, Money::from_f64(0.9));
        assert!(ledger.try_reserve(&t, Money::from_f64(0.2)).is_err());
        if let Ok(h) = h {
            ledger.release(&t, h).await;
        }
        assert!(ledger.try_reserve(&t, Money::from_f64(0.2)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn budget_resets_each_period() {
        let t = tenant_with(|c| {
            c.max_budget = Some(1.0);
            c.budget_duration = Some(Duration::from_secs(3600));
        });
        let ledger = MemoryLedger::new(std::slice::from_ref(&t));
        if let Ok(h) = ledger.try_reserve(&t, Money::from_f64(1.0)) {
            ledger.settle(&t, h, entry(Money::from_f64(1.0))).await;
        }
        let refused = ledger.try_reserve(&t, Money::from_f64(0.1));
        let resets = refused.err().and_then(|e| e.resets_in);
        assert!(resets.is_some_and(|d| d <= Duration::from_secs(3600)));
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(ledger.try_reserve(&t, Money::from_f64(0.1)).is_ok());
        assert_eq!(ledger.status(&t).await.spent, Money::ZERO);
    }
}
