//! The cost model: what self-hosting costs per tenant, what the same traffic would cost on a
//! per-token API, and the tenant count above which self-hosting wins.
//!
//! Token volumes are scaled from the run: tokens of successful requests in the measured window
//! ÷ `duration_s` × 3600 × `active_hours_per_month`. Self-hosting costs the server (all GPUs of
//! the run) plus each LoRA tenant's training cost amortised over `lora_amortisation_months`.
//! Break-even assumes every extra tenant looks like the run's average tenant; whether the server
//! can actually carry that many is what the latency figures answer, not this model.

use serde::{Deserialize, Serialize};

use crate::distribution::round_to;

/// Tokens per "million tokens" API price unit.
const TOKENS_PER_MTOK: f64 = 1_000_000.0;

/// Prices from the scenario, in GBP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    /// All GPUs of the run together, £ per month.
    pub server_gbp_per_month: f64,
    /// Training one tenant's LoRA adapter, £.
    pub lora_training_gbp_per_tenant: f64,
    /// Months over which a LoRA's training cost is spread.
    pub lora_amortisation_months: f64,
    /// API price per million prompt tokens, £.
    pub api_input_gbp_per_mtok: f64,
    /// API price per million generated tokens, £.
    pub api_output_gbp_per_mtok: f64,
    /// Hours a month the tenants send at the measured rate (730 = always).
    pub active_hours_per_month: f64,
}

impl CostModel {
    /// One LoRA tenant's training cost per month. A non-positive amortisation period charges
    /// the whole training in one month rather than dividing by zero.
    pub fn lora_gbp_per_month(&self) -> f64 {
        let months = if self.lora_amortisation_months > 0.0 {
            self.lora_amortisation_months
        } else {
            1.0
        };
        finite_or_zero(self.lora_training_gbp_per_tenant / months)
    }

    /// Factor from tokens in a window of `duration_s` seconds to tokens per month.
    pub fn monthly_scale(&self, duration_s: f64) -> f64 {
        if duration_s > 0.0 {
            finite_or_zero(3600.0 * self.active_hours_per_month / duration_s)
        } else {
            0.0
        }
    }

    /// API price of a month's tokens, £.
    pub fn api_gbp(&self, input_tokens: f64, output_tokens: f64) -> f64 {
        finite_or_zero(
            input_tokens / TOKENS_PER_MTOK * self.api_input_gbp_per_mtok
                + output_tokens / TOKENS_PER_MTOK * self.api_output_gbp_per_mtok,
        )
    }

    /// Cost lines of one tenant that sent `input_tokens`/`output_tokens` (successful requests)
    /// in a window of `duration_s`, on a server shared by `tenant_count` tenants.
    pub fn tenant_cost(
        &self,
        has_lora: bool,
        tenant_count: usize,
        input_tokens: u64,
        output_tokens: u64,
        duration_s: f64,
    ) -> TenantCost {
        let scale = self.monthly_scale(duration_s);
        let input_per_month = input_tokens as f64 * scale;
        let output_per_month = output_tokens as f64 * scale;
        let lora = if has_lora {
            self.lora_gbp_per_month()
        } else {
            0.0
        };
        let server_share = if tenant_count > 0 {
            self.server_gbp_per_month / tenant_count as f64
        } else {
            0.0
        };
        TenantCost {
            input_tokens_per_month: input_per_month.round(),
            output_tokens_per_month: output_per_month.round(),
            api_gbp_per_month: money(self.api_gbp(input_per_month, output_per_month)),
            lora_gbp_per_month: money(lora),
            self_hosted_gbp_per_month: money(server_share + lora),
        }
    }

    /// The whole run's cost lines from its tenants' lines.
    pub fn summarize(&self, tenants: &[TenantCost]) -> CostSummary {
        let n = tenants.len();
        let sum = |f: fn(&TenantCost) -> f64| tenants.iter().map(f).sum::<f64>();
        let lora = money(sum(|t| t.lora_gbp_per_month));
        let api = money(sum(|t| t.api_gbp_per_month));
        let server = finite_or_zero(self.server_gbp_per_month);
        let self_hosted = server + lora;
        let per_tenant = |total: f64| (n > 0).then(|| total / n as f64);
        let api_avg = per_tenant(api);
        let lora_avg = per_tenant(lora);
        CostSummary {
            tenants: n as u64,
            active_hours_per_month: finite_or_zero(self.active_hours_per_month),
            server_gbp_per_month: money(server),
            lora_gbp_per_month: money(lora),
            self_hosted_gbp_per_month: money(self_hosted),
            per_tenant_month: per_tenant(self_hosted).map(money),
            api_gbp_per_month: money(api),
            api_per_tenant_month: api_avg.map(money),
            savings_gbp_per_month: money(api - self_hosted),
            input_tokens_per_month: sum(|t| t.input_tokens_per_month),
            output_tokens_per_month: sum(|t| t.output_tokens_per_month),
            breakeven_tenants: match (api_avg, lora_avg) {
                (Some(api), Some(lora)) => breakeven_tenants(server, lora, api),
                _ => None,
            },
        }
    }
}

/// One tenant's monthly cost lines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantCost {
    /// Prompt tokens per month at the measured rate.
    pub input_tokens_per_month: f64,
    /// Generated tokens per month at the measured rate.
    pub output_tokens_per_month: f64,
    /// What those tokens would cost on the API, £ per month.
    pub api_gbp_per_month: f64,
    /// This tenant's amortised LoRA training, £ per month (0 without an adapter).
    pub lora_gbp_per_month: f64,
    /// An equal share of the server plus its own LoRA, £ per month.
    pub self_hosted_gbp_per_month: f64,
}

impl TenantCost {
    /// Adds another tenant's lines (for a group's total).
    pub fn add(&mut self, other: &TenantCost) {
        self.input_tokens_per_month += other.input_tokens_per_month;
        self.output_tokens_per_month += other.output_tokens_per_month;
        self.api_gbp_per_month = money(self.api_gbp_per_month + other.api_gbp_per_month);
        self.lora_gbp_per_month = money(self.lora_gbp_per_month + other.lora_gbp_per_month);
        self.self_hosted_gbp_per_month =
            money(self.self_hosted_gbp_per_month + other.self_hosted_gbp_per_month);
    }
}

/// The run's cost section in `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostSummary {
    /// Tenants sharing the server in this run.
    pub tenants: u64,
    /// Hours a month the measured rate is assumed to run.
    pub active_hours_per_month: f64,
    /// All GPUs, £ per month.
    pub server_gbp_per_month: f64,
    /// All tenants' amortised LoRA training, £ per month.
    pub lora_gbp_per_month: f64,
    /// Server plus LoRA, £ per month.
    pub self_hosted_gbp_per_month: f64,
    /// Self-hosted £ per tenant per month at this run's tenant count.
    pub per_tenant_month: Option<f64>,
    /// All tenants' traffic at API prices, £ per month.
    pub api_gbp_per_month: f64,
    /// The average tenant's traffic at API prices, £ per month.
    pub api_per_tenant_month: Option<f64>,
    /// API minus self-hosted, £ per month (negative: the API is cheaper at this tenant count).
    pub savings_gbp_per_month: f64,
    /// All tenants' prompt tokens per month.
    pub input_tokens_per_month: f64,
    /// All tenants' generated tokens per month.
    pub output_tokens_per_month: f64,
    /// Smallest tenant count at which self-hosting is cheaper than the API for the average
    /// tenant; `null` when it never is (the API costs less than a tenant's LoRA alone).
    pub breakeven_tenants: Option<u64>,
}

/// The smallest tenant count `n` with `server / n + lora_per_tenant < api_per_tenant`, or `None`
/// when no count satisfies it.
pub fn breakeven_tenants(
    server_gbp_per_month: f64,
    lora_per_tenant: f64,
    api_per_tenant: f64,
) -> Option<u64> {
    let margin = api_per_tenant - lora_per_tenant;
    // NaN compares false, so this also refuses NaN prices.
    let usable = margin > 0.0 && margin.is_finite() && server_gbp_per_month.is_finite();
    if !usable {
        return None;
    }
    let cheaper = |n: u64| server_gbp_per_month / n as f64 + lora_per_tenant < api_per_tenant;
    let estimate = (server_gbp_per_month.max(0.0) / margin).floor();
    // Beyond this many tenants the figure means nothing for a capacity planner anyway.
    if estimate >= 1e12 {
        return None;
    }
    // The closed form can land one off either way through rounding; settle it with the
    // inequality itself.
    let mut n = (estimate as u64).max(1);
    while n > 1 && cheaper(n - 1) {
        n -= 1;
    }
    while !cheaper(n) {
        n += 1;
    }
    Some(n)
}

/// Money to a hundredth of a penny: enough to add up, few enough digits to read.
fn money(x: f64) -> f64 {
    round_to(finite_or_zero(x), 4)
}

fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> CostModel {
        CostModel {
            server_gbp_per_month: 399.0,
            lora_training_gbp_per_tenant: 24.0,
            lora_amortisation_months: 12.0,
            api_input_gbp_per_mtok: 0.5,
            api_output_gbp_per_mtok: 1.5,
            active_hours_per_month: 730.0,
        }
    }

    #[test]
    fn breakeven_by_hand() {
        // 399 / n + 2 < 15  ⇔  n > 30.69…  → 31.
        assert_eq!(breakeven_tenants(399.0, 2.0, 15.0), Some(31));
        // Exactly equal at n = 30 is not cheaper: 300 / 30 + 0 = 10.
        assert_eq!(breakeven_tenants(300.0, 0.0, 10.0), Some(31));
        // A free server wins from the first tenant.
        assert_eq!(breakeven_tenants(0.0, 0.0, 1.0), Some(1));
        // Expensive enough API: one tenant already pays for it.
        assert_eq!(breakeven_tenants(399.0, 0.0, 500.0), Some(1));
    }

    #[test]
    fn breakeven_never_when_api_is_cheaper_than_a_lora() {
        assert_eq!(breakeven_tenants(399.0, 2.0, 2.0), None);
        assert_eq!(breakeven_tenants(399.0, 2.0, 1.0), None);
        assert_eq!(breakeven_tenants(399.0, 0.0, 0.0), None);
        assert_eq!(breakeven_tenants(399.0, 0.0, f64::NAN), None);
    }

    #[test]
    fn tenant_cost_scales_the_window_to_a_month() {
        let m = model();
        // 60 s window, 36,000 input and 12,000 output tokens: ×(3600×730/60) = ×43,800.
        let c = m.tenant_cost(true, 30, 36_000, 12_000, 60.0);
        assert!((c.input_tokens_per_month - 1_576_800_000.0).abs() < 1e-3);
        assert!((c.output_tokens_per_month - 525_600_000.0).abs() < 1e-3);
        // 1,576.8 Mtok × £0.5 + 525.6 Mtok × £1.5 = 788.4 + 788.4.
        assert!((c.api_gbp_per_month - 1576.8).abs() < 1e-6, "{c:?}");
        assert!((c.lora_gbp_per_month - 2.0).abs() < 1e-12);
        assert!((c.self_hosted_gbp_per_month - (399.0 / 30.0 + 2.0)).abs() < 1e-9);
    }

    #[test]
    fn run_summary_of_thirty_identical_tenants() {
        let m = CostModel {
            api_input_gbp_per_mtok: 0.0,
            api_output_gbp_per_mtok: 1.0,
            ..model()
        };
        // Each tenant: 300 output tokens in 60 s → 13,140,000 a month → £13.14 at £1/Mtok.
        let tenants: Vec<_> = (0..30)
            .map(|_| m.tenant_cost(true, 30, 0, 300, 60.0))
            .collect();
        let s = m.summarize(&tenants);
        assert_eq!(s.tenants, 30);
        assert!((s.lora_gbp_per_month - 60.0).abs() < 1e-9);
        assert!((s.self_hosted_gbp_per_month - 459.0).abs() < 1e-9);
        assert!(s.per_tenant_month.is_some_and(|v| (v - 15.3).abs() < 1e-9));
        assert!(
            s.api_per_tenant_month
                .is_some_and(|v| (v - 13.14).abs() < 1e-9)
        );
        // 399 / n + 2 < 13.14  ⇔  n > 35.8…  → 36.
        assert_eq!(s.breakeven_tenants, Some(36));
        assert!(s.savings_gbp_per_month < 0.0);
    }

    #[test]
    fn no_tenants_and_no_window_give_no_per_tenant_figures() {
        let m = model();
        let s = m.summarize(&[]);
        assert_eq!(s.per_tenant_month, None);
        assert_eq!(s.breakeven_tenants, None);
        assert_eq!(m.tenant_cost(false, 1, 10, 10, 0.0).api_gbp_per_month, 0.0);
    }

    #[test]
    fn zero_amortisation_charges_training_in_one_month() {
        let m = CostModel {
            lora_amortisation_months: 0.0,
            ..model()
        };
        assert_eq!(m.lora_gbp_per_month(), 24.0);
    }
}
