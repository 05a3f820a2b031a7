//! What the load generator hands over at the end of a run.
//!
//! [`RunData`] is the one input of this crate: the scenario's identity, tenants, cost model and
//! gates, the engines that served the run, and every request record. The time origin t0 of
//! `RequestRecord::intended_start_ms` is the start of the warm-up, so the measured window is
//! `[warmup_s, warmup_s + duration_s)` seconds after t0.

use serde::{Deserialize, Serialize};

use crate::cost::CostModel;
use crate::gate::GateSpec;
use crate::isolation::IsolationSpec;
use crate::record::RequestRecord;
use crate::slo::SloSpec;

/// One tenant as the scenario declared it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantInfo {
    /// The tenant's id.
    pub id: String,
    /// Its group in the scenario.
    pub group: String,
    /// The (virtual) model it calls.
    pub model: String,
    /// Its LoRA adapter, if it has one (then its training cost is charged).
    pub lora: Option<String>,
    /// The SLO its requests are judged by (its own, else its group's, else the scenario's).
    #[serde(default)]
    pub slo: Option<SloSpec>,
}

/// One inference engine of the run (simulated or real).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The engine's name in the scenario.
    pub name: String,
    /// GPU profile (`rtx-5090`).
    pub gpu: String,
    /// Base model.
    pub model: String,
    /// Weight precision (`bf16`, `awq-int4`).
    pub precision: String,
    /// KV-cache capacity in tokens.
    pub kv_cache_tokens: u64,
    /// `--max-loras`.
    pub max_loras: u32,
    /// Where it listened.
    pub url: String,
}

/// Everything about one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunData {
    /// Scenario name.
    pub scenario: String,
    /// The seed the run used (runs are reproducible from scenario + seed).
    pub seed: u64,
    /// Wall-clock time of t0, ms since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// Length of the measured window, warm-up excluded, s.
    pub duration_s: f64,
    /// Length of the warm-up before the measured window, s.
    pub warmup_s: f64,
    /// `embedded` or the target URL.
    pub target: String,
    /// Every tenant of the scenario, in scenario order.
    pub tenants: Vec<TenantInfo>,
    /// Every request sent, warm-up included.
    pub records: Vec<RequestRecord>,
    /// Prices for the cost section.
    pub cost: CostModel,
    /// Gates to evaluate.
    pub gates: Vec<GateSpec>,
    /// Engines that served the run.
    pub engines: Vec<EngineInfo>,
    /// Free-form remarks carried into the summary and the report.
    pub notes: Vec<String>,
    /// The scenario-wide SLO (verdict on the overall statistics).
    #[serde(default)]
    pub slo: Option<SloSpec>,
    /// Group SLOs (verdicts on each group's merged statistics), by group name. A group not
    /// listed is judged by `slo`, the scenario's.
    #[serde(default)]
    pub group_slos: Vec<(String, SloSpec)>,
    /// Isolation phases and thresholds, if the scenario declares them.
    #[serde(default)]
    pub isolation: Option<IsolationSpec>,
    /// Set when the run holds only some of the scenario's tenants (`--shard i/n`, or a merge of
    /// not all shards): gates scoped to an absent tenant or group are then skipped, not failed.
    #[serde(default)]
    pub shard: Option<ShardInfo>,
}

/// Which part of a scenario a sharded run covered, so `tenantbench report merge` can check that
/// shards belong together and put the tenants back in scenario order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// The shard's index `i` of `--shard i/n` (0-based).
    pub index: u32,
    /// The shard count `n`.
    pub count: u32,
    /// Every tenant id of the whole scenario, in scenario order.
    pub scenario_tenants: Vec<String>,
}

impl RunData {
    /// Start of the measured window, ms since t0.
    pub fn window_start_ms(&self) -> f64 {
        self.warmup_s.max(0.0) * 1000.0
    }

    /// Measured (non-warm-up) records.
    pub fn measured(&self) -> impl Iterator<Item = &RequestRecord> {
        self.records.iter().filter(|r| !r.warmup)
    }
}
