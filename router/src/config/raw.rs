//! Stage one of config parsing: the file as serde sees it.
//!
//! The LiteLLM sections (`model_list`, `router_settings`, `general_settings`) are typed for the
//! keys we implement and silently tolerate the rest here; `config::validate` warns about every
//! key it ignores, because a LiteLLM config should load unchanged. Our own sections
//! (`tenantbench_settings`, `tenants`) are strict (`deny_unknown_fields`): a typo there is an
//! error, not a silent default.
//!
//! These types also serialise, so a program (the embedded stack in `loadgen`) can build a
//! config in code and either write it out as YAML or hand it to [`RawConfig::validate`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole `config.yaml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RawConfig {
    /// LiteLLM's deployments; entries sharing a `model_name` form one load-balanced group.
    #[serde(default)]
    pub model_list: Vec<RawModelEntry>,
    /// LiteLLM's `router_settings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_settings: Option<RawRouterSettings>,
    /// LiteLLM's `general_settings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub general_settings: Option<RawGeneralSettings>,
    /// tenantbench's own settings (strict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenantbench_settings: Option<RawTenantbenchSettings>,
    /// tenantbench's tenants (strict).
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
}

/// One `model_list` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RawModelEntry {
    /// The virtual model name clients send (`chat-fast`).
    pub model_name: Option<String>,
    pub litellm_params: Option<RawLitellmParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_info: Option<RawModelInfo>,
}

/// `litellm_params` of a deployment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RawLitellmParams {
    /// `provider/upstream-model`, e.g. `hosted_vllm/mistral-7b-instruct`.
    pub model: Option<String>,
    /// Base URL including `/v1` (`http://127.0.0.1:8001/v1`), or `os.environ/NAME`.
    pub api_base: Option<String>,
    /// Bearer key sent upstream; `none`/empty sends none; `os.environ/NAME` reads a variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The deployment's requests per minute; a weight for simple-shuffle when `weight` is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// The deployment's tokens per minute; a weight when neither `weight` nor `rpm` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Relative weight for simple-shuffle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Seconds; overrides `router_settings.timeout` for this deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

/// `model_info` of a deployment. Other keys here are descriptive metadata and are ignored quietly.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RawModelInfo {
    /// Unique deployment id (LiteLLM's `model_id`); defaults to `<model_name>-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Price of one prompt token, in spend units (LiteLLM says USD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_cost_per_token: Option<f64>,
    /// Price of one completion token, in spend units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cost_per_token: Option<f64>,
    /// The deployment's context window in tokens (LiteLLM's name; for vLLM, its
    /// `--max-model-len`). The router refuses with 400 `context_length_exceeded`, before any
    /// limit or budget is touched, a request whose prompt estimate plus `max_tokens` exceeds
    /// it. Absent: the engine is left to say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
}

/// LiteLLM's `router_settings`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RawRouterSettings {
    /// Only `simple-shuffle` is implemented; others warn and fall back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_strategy: Option<String>,
    /// `[{"chat-strong": ["chat-fast"]}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallbacks: Option<Vec<BTreeMap<String, Vec<String>>>>,
    /// Extra attempts on the same group before its fallbacks (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    /// Seconds (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Failures per minute before a deployment cools down (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_fails: Option<u32>,
    /// Seconds a failing deployment is skipped (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_time: Option<f64>,
    /// Redis host shared by router replicas (LiteLLM's name); with `redis_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_host: Option<String>,
    /// Redis port (default 6379).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_port: Option<u16>,
    /// Redis password, or `os.environ/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_password: Option<String>,
}

/// LiteLLM's `general_settings`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RawGeneralSettings {
    /// The admin key; may call every model with no tenant limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key: Option<String>,
    /// PostgreSQL URL of the spend log and the generated keys (`postgresql://user@host:port/db`,
    /// or `os.environ/NAME`); absent: a SQLite file (`tenantbench_settings.spend_db`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Redis URL (`redis://host:port/db`) shared by router replicas for limits and budget
    /// holds; absent: limits are kept per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
}

/// `tenantbench_settings`: our own knobs. Every field is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTenantbenchSettings {
    /// File that receives one JSON line per request (appended). Relative paths are relative to
    /// the config file's directory. Absent: no audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<String>,
    /// Largest accepted request body in bytes (default 8 MiB); bigger bodies get 413 before any
    /// other work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Completion tokens assumed for a chat request without `max_tokens`, when reserving TPM and
    /// worst-case budget at admission (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_max_tokens_estimate: Option<u32>,
    /// HTTP status of a `budget_exceeded` error: 400 (LiteLLM's historical choice, the default)
    /// or 429 (what newer LiteLLM versions and OpenAI's `insufficient_quota` use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_exceeded_status: Option<u16>,
    /// Seed of the simple-shuffle deployment picker (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// SQLite file of the spend log when `general_settings.database_url` is not set; relative
    /// to the config file. Default: `tenantbench-spend.sqlite` beside a config file; in memory
    /// for a config built in code. `":memory:"` keeps it in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_db: Option<String>,
    /// Prefix of every Redis key this router writes (default `tenantbench`); routers sharing an
    /// allowance must use the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_prefix: Option<String>,
    /// Most tenants given their own label value in `/metrics` (default 500); the rest are
    /// counted under `tenant="other"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_max_tenants: Option<u32>,
}

/// One tenant of `tenants:`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Tenant id, unique: letters, digits, `-`, `_`, `.`, not starting with `_`.
    pub id: Option<String>,
    /// Raw API keys of this tenant; hashed with SHA-256 at load and never kept raw.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Virtual models this tenant may call; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Spend cap in `model_info` price units per budget period; absent means no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget: Option<f64>,
    /// Budget period (`30s`, `15m`, `1h`, `30d`, `1mo` = 30 days); absent: never resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_duration: Option<String>,
    /// Requests per minute across the tenant's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm_limit: Option<u64>,
    /// Tokens (prompt + completion) per minute across the tenant's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_limit: Option<u64>,
    /// Requests in flight at once (a stream holds its slot until its last byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_requests: Option<u32>,
    /// LoRA adapter per virtual model: `{ chat-fast: tenant-01-fast }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<BTreeMap<String, String>>,
}

impl RawConfig {
    /// Stage two: checks everything and builds a [`super::RouterConfig`]. `source` names the
    /// file in errors.
    pub fn validate(self, source: &str) -> Result<super::RouterConfig, super::ConfigError> {
        super::validate(self, source, None, None)
    }
}
