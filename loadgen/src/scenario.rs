//! Scenario files (TOML, `version = 1`): what to simulate, how hard to drive it, what it costs
//! and what counts as passing.
//!
//! Parsing is two-stage. [`RawScenario`] mirrors the file with `deny_unknown_fields`, so a typo is
//! an error naming the key and line; [`RawScenario::validate`] turns it into a [`Scenario`] whose
//! values cannot be wrong (positive durations, known engines, resolved tenants) and whose errors
//! name the file, the field path and what to change. Everything is checked before a port is bound.
//!
//! The doc comments on the raw types are the field reference; `scenarios/README.md` follows them.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::distribution::{Arrival, LengthDist, RawArrival, RawLength};
use crate::error::ScenarioError;

/// The whole scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    /// Format version; must be 1.
    pub version: u32,
    /// Name used for the results directory and the report title.
    pub name: String,
    /// Free text shown at the top of the report.
    #[serde(default)]
    pub description: Option<String>,
    /// Seed for every random choice (arrivals, lengths, prompt text, keys). Same seed, same run.
    #[serde(default)]
    pub seed: u64,
    /// Length of the whole run in seconds, warm-up included.
    pub duration_s: f64,
    /// Seconds at the start whose requests are sent and recorded but left out of the statistics.
    #[serde(default)]
    pub warmup_s: f64,
    /// A request that has not finished this many seconds after its intended start is a timeout.
    #[serde(default = "default_timeout")]
    pub request_timeout_s: f64,
    /// Send vLLM's `ignore_eos` so outputs run to `max_tokens` (as `vllm bench` does with
    /// synthetic prompts). Default true.
    #[serde(default = "default_true")]
    pub ignore_eos: bool,
    /// Simulated GPUs running vLLM (the embedded stack starts one simulator per engine).
    #[serde(default)]
    pub engines: Vec<RawEngine>,
    /// Virtual models the router exposes (what clients put in `model`).
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// Router-wide settings.
    #[serde(default)]
    pub router: RawRouter,
    /// Tenant groups: `count` tenants built from one template.
    pub groups: Vec<RawGroup>,
    /// Per-tenant changes to a group's template, by tenant id (`<group>-<n>`).
    #[serde(default)]
    pub overrides: Vec<RawOverride>,
    /// Pass/fail conditions checked after the run (exit code 3 when one fails).
    #[serde(default)]
    pub gates: Vec<RawGate>,
    /// The monthly cost model for cost per tenant and the break-even tenant count.
    pub cost: RawCost,
    /// Scenario-wide SLO: a verdict on the overall statistics, and the per-request thresholds
    /// for goodput of every tenant without a group or tenant SLO of its own.
    #[serde(default)]
    pub slo: Option<RawSlo>,
    /// Consecutive named phases from the run's start (warm-up included), e.g. a `baseline`
    /// then a `flood`; `isolation` compares two of them.
    #[serde(default)]
    pub phases: Vec<RawPhase>,
    /// Noisy-neighbour check between two phases.
    #[serde(default)]
    pub isolation: Option<RawIsolation>,
}

/// SLO thresholds; every field optional. A request meets the SLO when it succeeded and its TTFT,
/// TPOT and E2E are within the thresholds and the `percentile`-th of its token gaps is within
/// `itl_ms`. A scope (tenant, group, whole run) passes when its `percentile`-th TTFT, TPOT, ITL
/// and E2E and its error rate are within them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    /// 50, 90 or 99. Default 99.
    #[serde(default)]
    pub percentile: Option<u8>,
    /// Time to first token, ms.
    #[serde(default)]
    pub ttft_ms: Option<f64>,
    /// Time per output token, ms.
    #[serde(default)]
    pub tpot_ms: Option<f64>,
    /// Inter-token latency, ms.
    #[serde(default)]
    pub itl_ms: Option<f64>,
    /// End-to-end latency, ms.
    #[serde(default)]
    pub e2e_ms: Option<f64>,
    /// Failed ÷ all requests (scope verdicts only).
    #[serde(default)]
    pub max_error_rate: Option<f64>,
}

/// A named phase of the run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPhase {
    /// Name `isolation` refers to.
    pub name: String,
    /// Length in seconds; phases follow one another from t = 0.
    pub duration_s: f64,
}

/// Compares victims' latency between two phases and checks aggressors against their limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIsolation {
    /// The phase measured without the aggressor. Default: the first phase.
    #[serde(default)]
    pub baseline: Option<String>,
    /// The phase with the aggressor flooding. Default: the second phase.
    #[serde(default)]
    pub test: Option<String>,
    /// Aggressor tenant ids.
    #[serde(default)]
    pub aggressors: Vec<String>,
    /// A group whose tenants are all aggressors.
    #[serde(default)]
    pub aggressor_group: Option<String>,
    /// Latency compared: `ttft_ms` (default), `tpot_ms`, `itl_ms` or `e2e_ms`.
    #[serde(default)]
    pub metric: Option<String>,
    /// Percentile compared: 50, 90 or 99 (default).
    #[serde(default)]
    pub percentile: Option<u8>,
    /// A victim passes while test ÷ baseline is at most this. Default 1.5.
    #[serde(default)]
    pub max_ratio: Option<f64>,
    /// Fraction by which accepted traffic may exceed a limit before it counts as broken.
    /// Default 0.1.
    #[serde(default)]
    pub limit_tolerance: Option<f64>,
    /// Fewest values each phase needs for a ratio to be judged (smaller samples are reported,
    /// not judged). Default: 5 ÷ (1 − percentile), i.e. 500 for p99, 50 for p90.
    #[serde(default)]
    pub min_samples: Option<u64>,
}

fn default_timeout() -> f64 {
    120.0
}
fn default_true() -> bool {
    true
}

/// One simulated `vllm serve` instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngine {
    /// Name the models section refers to.
    pub name: String,
    /// GPU profile from the simulator's catalogue (`rtx-5090`, `h100-sxm`, ...).
    pub gpu: String,
    /// Engines with the same `gpu_index` share one physical GPU; their memory is checked together.
    /// Default: each engine on its own GPU.
    #[serde(default)]
    pub gpu_index: Option<u32>,
    /// Model from the simulator's catalogue (`mistral-7b-instruct`, `qwen2.5-32b-instruct`, ...).
    pub model: String,
    /// Weight precision: `bf16`, `fp16`, `fp8`, `awq`, `gptq`, `w4a16`, `nvfp4`.
    #[serde(default = "default_precision")]
    pub precision: String,
    /// vLLM `--max-loras`: distinct adapters in one batch. Default 1 (vLLM's).
    #[serde(default)]
    pub max_loras: Option<u32>,
    /// vLLM `--max-lora-rank`. Default 16.
    #[serde(default)]
    pub max_lora_rank: Option<u32>,
    /// vLLM `--max-cpu-loras`. Default: vLLM's.
    #[serde(default)]
    pub max_cpu_loras: Option<u32>,
    /// vLLM `--max-num-seqs`. Default: vLLM's per-GPU default.
    #[serde(default)]
    pub max_num_seqs: Option<u32>,
    /// vLLM `--max-num-batched-tokens`. Default: vLLM's per-GPU default.
    #[serde(default)]
    pub max_num_batched_tokens: Option<u32>,
    /// vLLM `--gpu-memory-utilization` (share of the GPU's memory this engine may use). Default 0.9.
    #[serde(default)]
    pub gpu_memory_utilization: Option<f64>,
    /// vLLM `--max-model-len`. Default: the model's context length.
    #[serde(default)]
    pub max_model_len: Option<u32>,
    /// LoRA rank of the per-tenant adapters served by this engine. Default 16.
    #[serde(default)]
    pub lora_rank: Option<u32>,
}

fn default_precision() -> String {
    "bf16".to_string()
}

/// A virtual model in the router (a LiteLLM `model_list` entry).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The name clients send as `model` (e.g. `chat-fast`).
    pub name: String,
    /// The engine that serves it.
    pub engine: String,
    /// Price the router bills per million input tokens (LiteLLM's `input_cost_per_token` × 1e6),
    /// in the budget's units. Default 0.
    #[serde(default)]
    pub input_price_per_mtok: f64,
    /// Price the router bills per million output tokens. Default 0.
    #[serde(default)]
    pub output_price_per_mtok: f64,
    /// Virtual models to try, in order, when this one's deployment fails (LiteLLM `fallbacks`).
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

/// Router-wide settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouter {
    /// Upstream timeout in seconds (LiteLLM `router_settings.timeout`). Default 600.
    #[serde(default)]
    pub timeout_s: Option<f64>,
}

/// A group of tenants sharing one template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    /// Group name; tenant ids are `<name>-<n>` with n from 1, zero-padded.
    pub name: String,
    /// Number of tenants in the group.
    pub count: u32,
    #[serde(flatten)]
    pub template: RawTenantTemplate,
}

/// A tenant's traffic and limits. In a group every field is required unless it has a default;
/// in an override every field is optional and replaces the group's value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantTemplate {
    /// Virtual model the tenant calls, or a mix: `{ chat-fast = 0.8, chat-strong = 0.2 }`.
    #[serde(default)]
    pub model: Option<ModelChoice>,
    /// Whether the tenant has its own LoRA adapter on every engine it uses. Default true.
    #[serde(default)]
    pub lora: Option<bool>,
    /// Request arrival process, e.g. `{ kind = "poisson", rate_per_s = 0.2 }`.
    #[serde(default)]
    pub arrival: Option<RawArrival>,
    /// Prompt length in tokens as the server counts them (system prompt and template included).
    #[serde(default)]
    pub prompt_tokens: Option<RawLength>,
    /// Output length in tokens (sent as `max_tokens`).
    #[serde(default)]
    pub output_tokens: Option<RawLength>,
    /// Tokens of the tenant's fixed system prompt (the part of every prompt shared by all of its
    /// requests). Default 0.
    #[serde(default)]
    pub system_prompt_tokens: Option<u32>,
    /// Router requests-per-minute limit for the tenant's key. Absent = unlimited.
    #[serde(default)]
    pub rpm_limit: Option<u64>,
    /// Router tokens-per-minute limit. Absent = unlimited.
    #[serde(default)]
    pub tpm_limit: Option<u64>,
    /// Router concurrent-request limit. Absent = unlimited.
    #[serde(default)]
    pub max_parallel_requests: Option<u64>,
    /// Router budget in the price units of `models`. Absent = unlimited.
    #[serde(default)]
    pub max_budget: Option<f64>,
    /// SLO for the group (verdict on its merged statistics) and goodput thresholds for its
    /// tenants; in an override, the tenant's own.
    #[serde(default)]
    pub slo: Option<RawSlo>,
    /// With `--target`: the environment variable holding this tenant's API key (for a group,
    /// every tenant shares it unless overridden).
    #[serde(default)]
    pub api_key_env: Option<String>,
}

/// One virtual model, or a weighted mix of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModelChoice {
    One(String),
    Mix(BTreeMap<String, f64>),
}

/// Changes to one tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    /// Tenant id, e.g. `standard-07`.
    pub tenant: String,
    #[serde(flatten)]
    pub template: RawTenantTemplate,
}

/// A pass/fail condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    /// Label printed with the verdict. Default: the condition.
    #[serde(default)]
    pub name: Option<String>,
    /// `"<metric> <op> <number>"`, e.g. `"ttft_ms.p99 < 800"`. Metrics are summary.json paths
    /// inside a statistics object: `ttft_ms.p99`, `e2e_ms.p50`, `itl_ms.p99`, `tpot_ms.mean`,
    /// `error_rate`, `requests_per_s`, `outcomes.rate_limited`, ... Ops: `<`, `<=`, `>`, `>=`.
    pub condition: String,
    /// Apply to one group (its merged statistics).
    #[serde(default)]
    pub group: Option<String>,
    /// Apply to one tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Apply to every tenant separately (fails if any tenant fails).
    #[serde(default)]
    pub each_tenant: bool,
}

/// Cost model, in pounds sterling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCost {
    /// Monthly price of one GPU server; multiplied by the number of GPUs the engines use.
    pub server_gbp_per_month: f64,
    /// One-off cost of training one tenant's LoRA adapter. Default 0.
    #[serde(default)]
    pub lora_training_gbp_per_tenant: f64,
    /// Months over which the training cost is spread. Default 12.
    #[serde(default = "default_months")]
    pub lora_amortisation_months: f64,
    /// Per-token API price the self-hosted stack competes with, per million input tokens.
    pub api_input_gbp_per_mtok: f64,
    /// ... and per million output tokens.
    pub api_output_gbp_per_mtok: f64,
    /// Hours a month the tenants send traffic at the measured rate (730 = around the clock).
    #[serde(default = "default_hours")]
    pub active_hours_per_month: f64,
}

fn default_months() -> f64 {
    12.0
}
fn default_hours() -> f64 {
    730.0
}

// ---------------------------------------------------------------------------------------------
// Validated types
// ---------------------------------------------------------------------------------------------

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: Option<String>,
    pub source: String,
    pub seed: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub request_timeout_s: f64,
    pub ignore_eos: bool,
    pub engines: Vec<Engine>,
    pub models: Vec<VirtualModel>,
    pub router_timeout_s: f64,
    pub tenants: Vec<Tenant>,
    pub gates: Vec<reports::GateSpec>,
    pub cost: reports::CostModel,
    /// Number of physical GPUs the engines occupy (for the server cost).
    pub gpu_count: u32,
    /// Scenario-wide SLO.
    pub slo: Option<reports::SloSpec>,
    /// Group SLOs by group name.
    pub group_slos: Vec<(String, reports::SloSpec)>,
    /// Named phases, seconds from t0.
    pub phases: Vec<reports::isolation::Phase>,
    /// The isolation check, with aggressors' limits resolved.
    pub isolation: Option<reports::IsolationSpec>,
}

#[derive(Debug, Clone)]
pub struct Engine {
    pub name: String,
    pub gpu_index: u32,
    pub config: mocks::EngineConfig,
    pub lora_rank: u32,
}

#[derive(Debug, Clone)]
pub struct VirtualModel {
    pub name: String,
    pub engine: String,
    pub input_price_per_mtok: f64,
    pub output_price_per_mtok: f64,
    pub fallbacks: Vec<String>,
}

/// One tenant with everything resolved.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub group: String,
    /// (virtual model, weight); weights sum to 1.
    pub models: Vec<(String, f64)>,
    pub lora: bool,
    pub arrival: Arrival,
    pub prompt_tokens: LengthDist,
    pub output_tokens: LengthDist,
    pub system_prompt_tokens: u32,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub max_budget: Option<f64>,
    /// Its SLO (own, else group's, else the scenario's).
    pub slo: Option<reports::SloSpec>,
    /// Environment variable holding its key for external targets.
    pub api_key_env: Option<String>,
}

impl Scenario {
    /// Keeps shard `index` of `count` (0-based): every `count`-th tenant in scenario order,
    /// starting at `index`. Deterministic, so n machines given 0/n … (n−1)/n split the tenants
    /// between them exactly; each tenant's traffic is what it would be unsharded (its RNG is
    /// seeded from its id). The isolation spec is kept whole: the shard's verdict leaves out
    /// aggressors it does not hold (`reports::isolation::evaluate` judges only the run's
    /// tenants), and the merged result judges them all.
    pub fn shard(&mut self, index: u32, count: u32) -> Result<(), String> {
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: need 0 <= i < n"));
        }
        let mut i = 0u32;
        self.tenants.retain(|_| {
            let keep = i % count == index;
            i += 1;
            keep
        });
        if self.tenants.is_empty() {
            return Err(format!(
                "shard {index}/{count} has no tenants (the scenario has fewer than {count})"
            ));
        }
        Ok(())
    }
}

impl Tenant {
    /// The adapter name this tenant uses on `model`'s engine.
    pub fn adapter_for(&self, model: &str) -> Option<String> {
        self.lora.then(|| format!("{}-{}", self.id, model))
    }
}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
        file: file.clone(),
        source: e,
    })?;
    parse(&text, &file)
}

/// Parses and validates scenario text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = toml::from_str(text).map_err(|e| ScenarioError::Syntax {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    raw.validate(file)
}

struct Ctx<'a> {
    file: &'a str,
    /// Directory of the scenario file: relative paths inside it (trace files) start here.
    base: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            file: self.file.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn positive(&self, field: &str, v: f64) -> Result<f64, ScenarioError> {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(self.err(field, format!("must be a positive number, got {v}")))
        }
    }

    fn non_negative(&self, field: &str, v: f64) -> Result<f64, ScenarioError> {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(self.err(field, format!("must be zero or more, got {v}")))
        }
    }
}

impl RawScenario {
    pub fn validate(self, file: &str) -> Result<Scenario, ScenarioError> {
        let base = Path::new(file).parent().unwrap_or(Path::new("."));
        let cx = Ctx { file, base };
        if self.version != 1 {
            return Err(cx.err(
                "version",
                format!(
                    "unsupported version {}; this tenantbench reads version 1",
                    self.version
                ),
            ));
        }
        if self.name.trim().is_empty() || self.name.contains(['/', '\\']) {
            return Err(cx.err("name", "must be a non-empty name without path separators"));
        }
        let duration_s = cx.positive("duration_s", self.duration_s)?;
        let warmup_s = cx.non_negative("warmup_s", self.warmup_s)?;
        if warmup_s >= duration_s {
            return Err(cx.err(
                "warmup_s",
                format!("must be shorter than duration_s ({duration_s} s), got {warmup_s}"),
            ));
        }
        let request_timeout_s = cx.positive("request_timeout_s", self.request_timeout_s)?;

        let engines = validate_engines(&cx, &self.engines)?;
        let models = validate_models(&cx, &self.models, &engines)?;
        let router_timeout_s = match self.router.timeout_s {
            Some(t) => cx.positive("router.timeout_s", t)?,
            None => 600.0,
        };
        let tenants = validate_tenants(&cx, &self.groups, &self.overrides, &models)?;
        let group_names: HashSet<&str> = tenants.iter().map(|t| t.group.as_str()).collect();
        let tenant_ids: HashSet<&str> = tenants.iter().map(|t| t.id.as_str()).collect();
        let gates = self
            .gates
            .iter()
            .enumerate()
            .map(|(i, g)| validate_gate(&cx, i, g, &group_names, &tenant_ids))
            .collect::<Result<Vec<_>, _>>()?;
        let c = &self.cost;
        let cost = reports::CostModel {
            server_gbp_per_month: cx
                .non_negative("cost.server_gbp_per_month", c.server_gbp_per_month)?,
            lora_training_gbp_per_tenant: cx.non_negative(
                "cost.lora_training_gbp_per_tenant",
                c.lora_training_gbp_per_tenant,
            )?,
            lora_amortisation_months: cx
                .positive("cost.lora_amortisation_months", c.lora_amortisation_months)?,
            api_input_gbp_per_mtok: cx
                .non_negative("cost.api_input_gbp_per_mtok", c.api_input_gbp_per_mtok)?,
            api_output_gbp_per_mtok: cx
                .non_negative("cost.api_output_gbp_per_mtok", c.api_output_gbp_per_mtok)?,
            active_hours_per_month: cx
                .positive("cost.active_hours_per_month", c.active_hours_per_month)?,
        };
        if cost.active_hours_per_month > 744.0 {
            return Err(cx.err(
                "cost.active_hours_per_month",
                "a month has at most 744 hours",
            ));
        }
        let slo = self
            .slo
            .as_ref()
            .map(|raw| validate_slo(&cx, "slo", raw))
            .transpose()?;
        let mut group_slos = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            if let Some(raw) = &g.template.slo {
                group_slos.push((
                    g.name.clone(),
                    validate_slo(&cx, &format!("groups[{gi}].slo"), raw)?,
                ));
            }
        }
        let mut tenants = tenants;
        for t in &mut tenants {
            if t.slo.is_none() {
                t.slo = slo.clone();
            }
        }
        let phases = validate_phases(&cx, &self.phases, duration_s)?;
        let isolation = self
            .isolation
            .as_ref()
            .map(|raw| validate_isolation(&cx, raw, &phases, &tenants))
            .transpose()?;
        let gpu_count = engines
            .iter()
            .map(|e| e.gpu_index)
            .collect::<HashSet<_>>()
            .len() as u32;
        Ok(Scenario {
            name: self.name,
            description: self.description,
            source: file.to_string(),
            seed: self.seed,
            duration_s,
            warmup_s,
            request_timeout_s,
            ignore_eos: self.ignore_eos,
            engines,
            models,
            router_timeout_s,
            tenants,
            gates,
            cost,
            gpu_count,
            slo,
            group_slos,
            phases,
            isolation,
        })
    }
}

fn validate_engines(cx: &Ctx, raw: &[RawEngine]) -> Result<Vec<Engine>, ScenarioError> {
    if raw.is_empty() {
        return Err(cx.err("engines", "at least one [[engines]] entry is needed"));
    }
    let mut seen = HashSet::new();
    let mut next_gpu = raw
        .iter()
        .filter_map(|e| e.gpu_index)
        .max()
        .map_or(0, |m| m + 1);
    let mut out = Vec::new();
    for (i, e) in raw.iter().enumerate() {
        let f = |name: &str| format!("engines[{i}].{name}");
        if e.name.is_empty() || !seen.insert(e.name.clone()) {
            return Err(cx.err(
                f("name"),
                format!("engine names must be unique and non-empty ('{}')", e.name),
            ));
        }
        let mut config = mocks::EngineConfig {
            gpu: e.gpu.clone(),
            model: e.model.clone(),
            precision: e.precision.clone(),
            ..mocks::EngineConfig::default()
        };
        if let Some(v) = e.max_loras {
            config.max_loras = nonzero(cx, &f("max_loras"), v)?;
        }
        if let Some(v) = e.max_lora_rank {
            config.max_lora_rank = nonzero(cx, &f("max_lora_rank"), v)?;
        }
        if let Some(v) = e.max_cpu_loras {
            config.max_cpu_loras = Some(nonzero(cx, &f("max_cpu_loras"), v)?);
        }
        if let Some(v) = e.max_num_seqs {
            config.max_num_seqs = Some(nonzero(cx, &f("max_num_seqs"), v)?);
        }
        if let Some(v) = e.max_num_batched_tokens {
            config.max_num_batched_tokens = Some(nonzero(cx, &f("max_num_batched_tokens"), v)?);
        }
        if let Some(v) = e.gpu_memory_utilization {
            if !(v > 0.0 && v <= 1.0) {
                return Err(cx.err(
                    f("gpu_memory_utilization"),
                    format!("must be in (0, 1], got {v}"),
                ));
            }
            config.gpu_memory_utilization = v;
        }
        if let Some(v) = e.max_model_len {
            config.max_model_len = Some(nonzero(cx, &f("max_model_len"), v)?);
        }
        let lora_rank = match e.lora_rank {
            Some(r) => nonzero(cx, &f("lora_rank"), r)?,
            None => 16,
        };
        if lora_rank > config.max_lora_rank {
            return Err(cx.err(
                f("lora_rank"),
                format!(
                    "adapter rank {lora_rank} exceeds max_lora_rank {}; raise max_lora_rank",
                    config.max_lora_rank
                ),
            ));
        }
        // Catalogue names and flags are checked here, so a typo fails before any port. Whether
        // the engines fit their GPUs is checked with their adapters in `stack::check_capacity`.
        mocks::memory_needs(&config)
            .map_err(|err| cx.err(format!("engines[{i}]"), err.to_string()))?;
        let gpu_index = match e.gpu_index {
            Some(g) => g,
            None => {
                next_gpu += 1;
                next_gpu - 1
            }
        };
        out.push(Engine {
            name: e.name.clone(),
            gpu_index,
            config,
            lora_rank,
        });
    }
    Ok(out)
}

fn nonzero(cx: &Ctx, field: &str, v: u32) -> Result<u32, ScenarioError> {
    if v == 0 {
        Err(cx.err(field, "must be at least 1"))
    } else {
        Ok(v)
    }
}

fn validate_models(
    cx: &Ctx,
    raw: &[RawModel],
    engines: &[Engine],
) -> Result<Vec<VirtualModel>, ScenarioError> {
    if raw.is_empty() {
        return Err(cx.err("models", "at least one [[models]] entry is needed"));
    }
    let names: HashSet<&str> = raw.iter().map(|m| m.name.as_str()).collect();
    if names.len() != raw.len() {
        return Err(cx.err("models", "virtual model names must be unique"));
    }
    let mut out = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        let f = |name: &str| format!("models[{i}].{name}");
        if m.name.is_empty() {
            return Err(cx.err(f("name"), "must not be empty"));
        }
        if !engines.iter().any(|e| e.name == m.engine) {
            let known: Vec<&str> = engines.iter().map(|e| e.name.as_str()).collect();
            return Err(cx.err(
                f("engine"),
                format!(
                    "no engine named '{}' (engines: {})",
                    m.engine,
                    known.join(", ")
                ),
            ));
        }
        for fb in &m.fallbacks {
            if !names.contains(fb.as_str()) || fb == &m.name {
                return Err(cx.err(
                    f("fallbacks"),
                    format!("'{fb}' is not another virtual model of this scenario"),
                ));
            }
        }
        out.push(VirtualModel {
            name: m.name.clone(),
            engine: m.engine.clone(),
            input_price_per_mtok: cx
                .non_negative(&f("input_price_per_mtok"), m.input_price_per_mtok)?,
            output_price_per_mtok: cx
                .non_negative(&f("output_price_per_mtok"), m.output_price_per_mtok)?,
            fallbacks: m.fallbacks.clone(),
        });
    }
    Ok(out)
}

fn merge(base: &RawTenantTemplate, over: &RawTenantTemplate) -> RawTenantTemplate {
    RawTenantTemplate {
        model: over.model.clone().or_else(|| base.model.clone()),
        lora: over.lora.or(base.lora),
        arrival: over.arrival.clone().or_else(|| base.arrival.clone()),
        prompt_tokens: over
            .prompt_tokens
            .clone()
            .or_else(|| base.prompt_tokens.clone()),
        output_tokens: over
            .output_tokens
            .clone()
            .or_else(|| base.output_tokens.clone()),
        system_prompt_tokens: over.system_prompt_tokens.or(base.system_prompt_tokens),
        rpm_limit: over.rpm_limit.or(base.rpm_limit),
        tpm_limit: over.tpm_limit.or(base.tpm_limit),
        max_parallel_requests: over.max_parallel_requests.or(base.max_parallel_requests),
        max_budget: over.max_budget.or(base.max_budget),
        slo: over.slo.clone().or_else(|| base.slo.clone()),
        api_key_env: over
            .api_key_env
            .clone()
            .or_else(|| base.api_key_env.clone()),
    }
}

fn validate_tenants(
    cx: &Ctx,
    groups: &[RawGroup],
    overrides: &[RawOverride],
    models: &[VirtualModel],
) -> Result<Vec<Tenant>, ScenarioError> {
    if groups.is_empty() {
        return Err(cx.err("groups", "at least one [[groups]] entry is needed"));
    }
    let mut ids = Vec::new();
    let mut seen_groups = HashSet::new();
    for (gi, g) in groups.iter().enumerate() {
        if g.name.is_empty()
            || !g
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(cx.err(
                format!("groups[{gi}].name"),
                "must be non-empty ASCII letters, digits, '-' or '_'",
            ));
        }
        if !seen_groups.insert(g.name.clone()) {
            return Err(cx.err(
                format!("groups[{gi}].name"),
                format!("duplicate group '{}'", g.name),
            ));
        }
        if g.count == 0 || g.count > 10_000 {
            return Err(cx.err(
                format!("groups[{gi}].count"),
                format!("must be 1 to 10000, got {}", g.count),
            ));
        }
        let width = g.count.to_string().len().max(2);
        for n in 1..=g.count {
            ids.push((gi, format!("{}-{:0width$}", g.name, n)));
        }
    }
    let known: HashSet<&str> = ids.iter().map(|(_, id)| id.as_str()).collect();
    let mut by_tenant: BTreeMap<&str, (usize, &RawTenantTemplate)> = BTreeMap::new();
    for (oi, o) in overrides.iter().enumerate() {
        if !known.contains(o.tenant.as_str()) {
            return Err(cx.err(
                format!("overrides[{oi}].tenant"),
                format!(
                    "no tenant '{}' (tenant ids are <group>-<n>, e.g. '{}')",
                    o.tenant, ids[0].1
                ),
            ));
        }
        if by_tenant
            .insert(o.tenant.as_str(), (oi, &o.template))
            .is_some()
        {
            return Err(cx.err(
                format!("overrides[{oi}].tenant"),
                format!("'{}' is overridden twice", o.tenant),
            ));
        }
    }
    let mut out = Vec::new();
    for (gi, id) in ids {
        let group = &groups[gi];
        let (t, prefix) = match by_tenant.get(id.as_str()) {
            Some((oi, o)) => (merge(&group.template, o), format!("overrides[{oi}]")),
            None => (group.template.clone(), format!("groups[{gi}]")),
        };
        out.push(resolve_tenant(cx, &prefix, id, &group.name, &t, models)?);
    }
    Ok(out)
}

fn resolve_tenant(
    cx: &Ctx,
    prefix: &str,
    id: String,
    group: &str,
    t: &RawTenantTemplate,
    models: &[VirtualModel],
) -> Result<Tenant, ScenarioError> {
    let f = |name: &str| format!("{prefix}.{name}");
    let check_model = |name: &str| -> Result<(), ScenarioError> {
        if models.iter().any(|m| m.name == name) {
            Ok(())
        } else {
            let known: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
            Err(cx.err(
                f("model"),
                format!("no virtual model '{name}' (models: {})", known.join(", ")),
            ))
        }
    };
    let model_mix = match &t.model {
        None => return Err(cx.err(f("model"), "is required (a virtual model name or a mix)")),
        Some(ModelChoice::One(m)) => {
            check_model(m)?;
            vec![(m.clone(), 1.0)]
        }
        Some(ModelChoice::Mix(mix)) => {
            let total: f64 = mix.values().sum();
            if mix.is_empty()
                || !total.is_finite()
                || total <= 0.0
                || mix.values().any(|w| !(w.is_finite() && *w >= 0.0))
            {
                return Err(cx.err(
                    f("model"),
                    "a mix needs non-negative weights with a positive sum",
                ));
            }
            let mut v = Vec::new();
            for (m, w) in mix {
                check_model(m)?;
                v.push((m.clone(), w / total));
            }
            v
        }
    };
    let arrival = t
        .arrival
        .as_ref()
        .ok_or_else(|| {
            cx.err(
                f("arrival"),
                "is required, e.g. { kind = \"poisson\", rate_per_s = 0.2 }",
            )
        })?
        .validate(cx.base)
        .map_err(|m| cx.err(f("arrival"), m))?;
    let prompt_tokens = t
        .prompt_tokens
        .as_ref()
        .ok_or_else(|| {
            cx.err(
                f("prompt_tokens"),
                "is required, e.g. { kind = \"fixed\", value = 512 }",
            )
        })?
        .validate()
        .map_err(|m| cx.err(f("prompt_tokens"), m))?;
    let output_tokens = t
        .output_tokens
        .as_ref()
        .ok_or_else(|| {
            cx.err(
                f("output_tokens"),
                "is required, e.g. { kind = \"fixed\", value = 128 }",
            )
        })?
        .validate()
        .map_err(|m| cx.err(f("output_tokens"), m))?;
    let system_prompt_tokens = t.system_prompt_tokens.unwrap_or(0);
    // The prompt must leave room for the template and at least one user token.
    let floor = system_prompt_tokens as u64
        + 2 * wire::tokens::PER_MESSAGE_OVERHEAD as u64
        + wire::tokens::PER_CHAT_OVERHEAD as u64
        + 1;
    if prompt_tokens.min() < floor {
        return Err(cx.err(
            f("prompt_tokens"),
            format!(
                "can be as short as {} tokens, but the system prompt ({system_prompt_tokens}) and chat template need at least {floor}",
                prompt_tokens.min()
            ),
        ));
    }
    if let Some(b) = t.max_budget
        && !(b.is_finite() && b >= 0.0)
    {
        return Err(cx.err(f("max_budget"), format!("must be zero or more, got {b}")));
    }
    for (name, v) in [
        ("rpm_limit", t.rpm_limit),
        ("tpm_limit", t.tpm_limit),
        ("max_parallel_requests", t.max_parallel_requests),
    ] {
        if v == Some(0) {
            return Err(cx.err(f(name), "must be at least 1 (leave it out for no limit)"));
        }
    }
    Ok(Tenant {
        id,
        group: group.to_string(),
        models: model_mix,
        lora: t.lora.unwrap_or(true),
        arrival,
        prompt_tokens,
        output_tokens,
        system_prompt_tokens,
        rpm_limit: t.rpm_limit,
        tpm_limit: t.tpm_limit,
        max_parallel_requests: t.max_parallel_requests,
        max_budget: t.max_budget,
        slo: t
            .slo
            .as_ref()
            .map(|raw| validate_slo(cx, &f("slo"), raw))
            .transpose()?,
        api_key_env: t.api_key_env.clone(),
    })
}

fn validate_slo(cx: &Ctx, field: &str, raw: &RawSlo) -> Result<reports::SloSpec, ScenarioError> {
    let spec = reports::SloSpec {
        percentile: raw.percentile.unwrap_or(99),
        ttft_ms: raw.ttft_ms,
        tpot_ms: raw.tpot_ms,
        itl_ms: raw.itl_ms,
        e2e_ms: raw.e2e_ms,
        max_error_rate: raw.max_error_rate,
    };
    spec.validate().map_err(|m| cx.err(field, m))?;
    Ok(spec)
}

fn validate_phases(
    cx: &Ctx,
    raw: &[RawPhase],
    duration_s: f64,
) -> Result<Vec<reports::isolation::Phase>, ScenarioError> {
    let mut start = 0.0;
    let mut out: Vec<reports::isolation::Phase> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let len = cx.positive(&format!("phases[{i}].duration_s"), p.duration_s)?;
        if p.name.is_empty() || out.iter().any(|q| q.name == p.name) {
            return Err(cx.err(format!("phases[{i}].name"), "must be non-empty and unique"));
        }
        out.push(reports::isolation::Phase {
            name: p.name.clone(),
            start_s: start,
            end_s: start + len,
        });
        start += len;
    }
    if start > duration_s + 1e-9 {
        return Err(cx.err(
            "phases",
            format!("the phases last {start} s, longer than duration_s ({duration_s} s)"),
        ));
    }
    Ok(out)
}

fn validate_isolation(
    cx: &Ctx,
    raw: &RawIsolation,
    phases: &[reports::isolation::Phase],
    tenants: &[Tenant],
) -> Result<reports::IsolationSpec, ScenarioError> {
    let phase = |field: &str, name: &Option<String>, default: usize| {
        let found = match name {
            Some(n) => phases.iter().find(|p| &p.name == n),
            None => phases.get(default),
        };
        found.cloned().ok_or_else(|| {
            let known: Vec<&str> = phases.iter().map(|p| p.name.as_str()).collect();
            cx.err(
                format!("isolation.{field}"),
                format!(
                    "no such phase (declare [[phases]]; phases: {})",
                    known.join(", ")
                ),
            )
        })
    };
    let baseline = phase("baseline", &raw.baseline, 0)?;
    let test = phase("test", &raw.test, 1)?;
    if baseline == test {
        return Err(cx.err("isolation.test", "must differ from the baseline phase"));
    }
    let mut ids: Vec<String> = raw.aggressors.clone();
    for (i, id) in raw.aggressors.iter().enumerate() {
        if !tenants.iter().any(|t| &t.id == id) {
            return Err(cx.err(
                format!("isolation.aggressors[{i}]"),
                format!("no tenant '{id}'"),
            ));
        }
    }
    if let Some(g) = &raw.aggressor_group {
        let members: Vec<String> = tenants
            .iter()
            .filter(|t| &t.group == g)
            .map(|t| t.id.clone())
            .collect();
        if members.is_empty() {
            return Err(cx.err("isolation.aggressor_group", format!("no group '{g}'")));
        }
        ids.extend(members);
    }
    if ids.is_empty() {
        return Err(cx.err(
            "isolation",
            "name the aggressor: aggressors = [\"tenant-id\"] or aggressor_group = \"name\"",
        ));
    }
    let metric = raw.metric.clone().unwrap_or_else(|| "ttft_ms".into());
    if !matches!(metric.as_str(), "ttft_ms" | "tpot_ms" | "itl_ms" | "e2e_ms") {
        return Err(cx.err(
            "isolation.metric",
            format!("must be ttft_ms, tpot_ms, itl_ms or e2e_ms, got '{metric}'"),
        ));
    }
    let percentile = raw.percentile.unwrap_or(99);
    if !matches!(percentile, 50 | 90 | 99) {
        return Err(cx.err("isolation.percentile", "must be 50, 90 or 99"));
    }
    let max_ratio = cx.positive("isolation.max_ratio", raw.max_ratio.unwrap_or(1.5))?;
    let limit_tolerance = cx.non_negative(
        "isolation.limit_tolerance",
        raw.limit_tolerance.unwrap_or(0.1),
    )?;
    let aggressors = ids
        .iter()
        .filter_map(|id| tenants.iter().find(|t| &t.id == id))
        .map(|t| reports::isolation::Aggressor {
            tenant: t.id.clone(),
            rpm_limit: t.rpm_limit,
            tpm_limit: t.tpm_limit,
        })
        .collect();
    if raw.min_samples == Some(0) {
        return Err(cx.err("isolation.min_samples", "must be at least 1"));
    }
    Ok(reports::IsolationSpec {
        baseline,
        test,
        aggressors,
        metric,
        percentile,
        max_ratio,
        limit_tolerance,
        min_samples: raw.min_samples,
    })
}

fn validate_gate(
    cx: &Ctx,
    i: usize,
    g: &RawGate,
    groups: &HashSet<&str>,
    tenants: &HashSet<&str>,
) -> Result<reports::GateSpec, ScenarioError> {
    let field = format!("gates[{i}].condition");
    let parts: Vec<&str> = g.condition.split_whitespace().collect();
    let [metric, op, value] = parts.as_slice() else {
        return Err(cx.err(
            field,
            format!("expected '<metric> <op> <number>', got '{}'", g.condition),
        ));
    };
    let op = match *op {
        "<" => reports::GateOp::Lt,
        "<=" => reports::GateOp::Le,
        ">" => reports::GateOp::Gt,
        ">=" => reports::GateOp::Ge,
        other => {
            return Err(cx.err(
                field,
                format!("unknown operator '{other}' (use <, <=, > or >=)"),
            ));
        }
    };
    let threshold: f64 = value
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| cx.err(&field, format!("'{value}' is not a number")))?;
    let scopes = [g.group.is_some(), g.tenant.is_some(), g.each_tenant]
        .iter()
        .filter(|x| **x)
        .count();
    if scopes > 1 {
        return Err(cx.err(
            format!("gates[{i}]"),
            "give at most one of group, tenant, each_tenant",
        ));
    }
    let scope = if let Some(gr) = &g.group {
        if !groups.contains(gr.as_str()) {
            return Err(cx.err(format!("gates[{i}].group"), format!("no group '{gr}'")));
        }
        reports::GateScope::Group(gr.clone())
    } else if let Some(t) = &g.tenant {
        if !tenants.contains(t.as_str()) {
            return Err(cx.err(format!("gates[{i}].tenant"), format!("no tenant '{t}'")));
        }
        reports::GateScope::Tenant(t.clone())
    } else if g.each_tenant {
        reports::GateScope::EachTenant
    } else {
        reports::GateScope::Overall
    };
    let spec = reports::GateSpec {
        name: g.name.clone().unwrap_or_else(|| g.condition.clone()),
        scope,
        metric: metric.to_string(),
        op,
        threshold,
    };
    spec.validate().map_err(|m| {
        cx.err(
            field,
            format!("{m} (e.g. ttft_ms.p99, e2e_ms.p50, error_rate)"),
        )
    })?;
    Ok(spec)
}

/// A small valid scenario shared by the crate's unit tests.
#[cfg(test)]
pub(crate) const MINIMAL_FOR_TESTS: &str = r#"
version = 1
name = "t"
seed = 1
duration_s = 10
warmup_s = 1

[[engines]]
name = "e"
gpu = "rtx-5090"
model = "mistral-7b-instruct"
max_loras = 4

[[models]]
name = "chat-fast"
engine = "e"

[[groups]]
name = "std"
count = 3
model = "chat-fast"
arrival = { kind = "poisson", rate_per_s = 1.0 }
prompt_tokens = { kind = "fixed", value = 64 }
output_tokens = { kind = "uniform", min = 8, max = 16 }

[[overrides]]
tenant = "std-02"
rpm_limit = 5

[[gates]]
condition = "ttft_ms.p99 < 800"
each_tenant = true

[cost]
server_gbp_per_month = 399
api_input_gbp_per_mtok = 0.5
api_output_gbp_per_mtok = 1.5
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn err_field(text: &str) -> String {
        match parse(text, "s.toml") {
            Err(ScenarioError::Invalid { field, .. }) => field,
            Err(e) => format!("other: {e}"),
            Ok(_) => "ok".into(),
        }
    }

    #[test]
    fn minimal_scenario_resolves_tenants_and_overrides() {
        let s = parse(MINIMAL_FOR_TESTS, "s.toml").expect("valid");
        let ids: Vec<&str> = s.tenants.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["std-01", "std-02", "std-03"]);
        assert_eq!(s.tenants[1].rpm_limit, Some(5));
        assert_eq!(s.tenants[0].rpm_limit, None);
        assert_eq!(s.gpu_count, 1);
        assert!(matches!(s.gates[0].scope, reports::GateScope::EachTenant));
    }

    #[test]
    fn unknown_key_is_a_syntax_error_naming_it() {
        let text = MINIMAL_FOR_TESTS.replace("warmup_s = 1", "warmup_s = 1\nwarmpu = 3");
        match parse(&text, "s.toml") {
            Err(ScenarioError::Syntax { message, file }) => {
                assert_eq!(file, "s.toml");
                assert!(message.contains("warmpu"), "{message}");
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn invalid_values_name_their_field() {
        assert_eq!(
            err_field(&MINIMAL_FOR_TESTS.replace("duration_s = 10", "duration_s = -1")),
            "duration_s"
        );
        assert_eq!(
            err_field(&MINIMAL_FOR_TESTS.replace("warmup_s = 1", "warmup_s = 20")),
            "warmup_s"
        );
        assert_eq!(
            err_field(&MINIMAL_FOR_TESTS.replace("engine = \"e\"", "engine = \"x\"")),
            "models[0].engine"
        );
        assert_eq!(
            err_field(&MINIMAL_FOR_TESTS.replace("tenant = \"std-02\"", "tenant = \"std-9\"")),
            "overrides[0].tenant"
        );
        assert_eq!(
            err_field(&MINIMAL_FOR_TESTS.replace("rate_per_s = 1.0", "rate_per_s = 0")),
            "groups[0].arrival"
        );
        assert_eq!(
            err_field(&MINIMAL_FOR_TESTS.replace("ttft_ms.p99 < 800", "ttft_ms.p99 ~ 800")),
            "gates[0].condition"
        );
        assert_eq!(
            err_field(&MINIMAL_FOR_TESTS.replace("ttft_ms.p99 < 800", "nope.p99 < 800")),
            "gates[0].condition"
        );
        assert_eq!(
            err_field(&MINIMAL_FOR_TESTS.replace("value = 64", "value = 3")),
            "groups[0].prompt_tokens"
        );
        assert_eq!(
            err_field(&MINIMAL_FOR_TESTS.replace("gpu = \"rtx-5090\"", "gpu = \"rtx-9999\"")),
            "engines[0]"
        );
        assert_eq!(
            err_field(&MINIMAL_FOR_TESTS.replace("version = 1", "version = 2")),
            "version"
        );
    }
}
