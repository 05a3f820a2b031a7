//! Router configuration: a LiteLLM proxy `config.yaml` plus tenantbench's `tenants:` section.
//!
//! Parsing has two stages. [`raw`] is what serde reads; [`validate`] turns it into a
//! [`RouterConfig`] whose values cannot be wrong (parsed URLs, `Duration`s, non-zero limits,
//! hashed keys). Every error names the file, the field path (`tenants[2].rpm_limit`) and the fix.
//! LiteLLM keys that tenantbench does not implement are warned about (`tracing::warn!` and
//! [`RouterConfig::warnings`]), never fatal, so an existing LiteLLM config loads unchanged.
//!
//! Defaults that differ from LiteLLM's, on purpose: `num_retries` is 0 (LiteLLM retries twice),
//! because a benchmark should see failures rather than have them hidden by retries.

pub mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use serde_yaml_ng::Value;
use url::Url;

use crate::key::{KeyHash, Secret};
use raw::RawConfig;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The I/O error is part of the message, not a `#[source]`: error chains printed with
    // `{:#}` would otherwise repeat it.
    #[error("{file}: cannot read the file: {cause}")]
    Read { file: String, cause: std::io::Error },
    #[error("{file}: {path}: {message}\n  fix: {fix}")]
    Invalid {
        file: String,
        /// The field, as a path from the document root (`model_list[0].litellm_params.model`).
        path: String,
        message: String,
        fix: String,
    },
}

impl ConfigError {
    /// The offending field path, when the error is about a field.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Invalid { path, .. } => Some(path),
            Self::Read { .. } => None,
        }
    }
}

/// A validated router configuration.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Where it came from (a file path or a label), for messages.
    pub source: String,
    /// Model groups in order of first appearance in `model_list`.
    pub groups: Vec<ModelGroup>,
    pub routing: RoutingSettings,
    /// SHA-256 of `general_settings.master_key`.
    pub master_key: Option<KeyHash>,
    pub settings: Settings,
    pub tenants: Vec<TenantConfig>,
    /// What was ignored or defaulted, one sentence each (also logged with `tracing::warn!`).
    pub warnings: Vec<String>,
}

impl RouterConfig {
    /// The group clients call `name`.
    pub fn group(&self, name: &str) -> Option<&ModelGroup> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// Deployments sharing one virtual model name, load-balanced by the routing strategy.
#[derive(Debug, Clone)]
pub struct ModelGroup {
    /// The virtual model name (`chat-fast`).
    pub name: String,
    pub deployments: Vec<Deployment>,
    /// Groups tried, in order, when every attempt on this one failed before any byte reached
    /// the client.
    pub fallbacks: Vec<String>,
}

/// One upstream OpenAI-compatible server (a vLLM instance).
#[derive(Debug, Clone)]
pub struct Deployment {
    /// `model_info.id`, unique across the file.
    pub id: String,
    /// The group it belongs to.
    pub model_name: String,
    /// The provider prefix of `litellm_params.model` (`hosted_vllm`, `openai`).
    pub provider: String,
    /// What follows the provider prefix: the `model` sent upstream when no adapter applies.
    pub upstream_model: String,
    /// Base URL ending in the API version segment (`http://127.0.0.1:8001/v1`).
    pub api_base: Url,
    pub api_key: Option<Secret>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Simple-shuffle weight: `weight`, else `rpm`, else `tpm`, else 1 (as LiteLLM does).
    pub weight: f64,
    /// Time allowed for the response head, for a whole non-streamed body, and between two reads
    /// of a stream.
    pub timeout: Duration,
    pub input_cost_per_token: f64,
    pub output_cost_per_token: f64,
    /// `model_info.max_input_tokens`: prompt + completion tokens the engine accepts (vLLM's
    /// `max_model_len`).
    pub context_window: Option<NonZeroU64>,
}

impl Deployment {
    /// `api_base` + `/chat/completions` or `/completions`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.api_base.as_str().trim_end_matches('/'), path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingStrategy {
    /// Weighted random pick among healthy deployments, from a seeded RNG.
    SimpleShuffle,
}

/// `router_settings`, validated.
#[derive(Debug, Clone)]
pub struct RoutingSettings {
    pub strategy: RoutingStrategy,
    /// Extra attempts on a group (another deployment when there is one) before its fallbacks.
    pub num_retries: u32,
    /// Default deployment timeout.
    pub timeout: Duration,
    /// Failures within a minute after which a deployment cools down.
    pub allowed_fails: u32,
    /// How long a cooled-down deployment is skipped.
    pub cooldown: Duration,
}

/// `tenantbench_settings`, validated (see [`raw::RawTenantbenchSettings`] for each field).
#[derive(Debug, Clone)]
pub struct Settings {
    pub audit_log: Option<PathBuf>,
    /// The spend log and generated keys.
    pub database: crate::store::Database,
    /// Redis shared by replicas; `None`: limits and budget holds are per process.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub metrics_max_tenants: usize,
    pub max_body_bytes: usize,
    pub default_max_tokens_estimate: u32,
    pub budget_exceeded_status: StatusCode,
    pub seed: u64,
}

/// One tenant, validated.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub id: String,
    /// SHA-256 of each key; the raw keys are not kept.
    pub keys: Vec<KeyHash>,
    /// Allowed virtual models; `None` means all.
    pub models: Option<BTreeSet<String>>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<Duration>,
    pub rpm_limit: Option<NonZeroU64>,
    pub tpm_limit: Option<NonZeroU64>,
    pub max_parallel_requests: Option<NonZeroU32>,
    /// Virtual model → LoRA adapter served for this tenant.
    pub lora: BTreeMap<String, String>,
}

impl TenantConfig {
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }

    pub fn adapter(&self, model: &str) -> Option<&str> {
        self.lora.get(model).map(String::as_str)
    }
}

/// Default `tenantbench_settings.max_body_bytes`: 8 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Default `tenantbench_settings.default_max_tokens_estimate`.
pub const DEFAULT_MAX_TOKENS_ESTIMATE: u32 = 256;
/// Default `router_settings.timeout`, seconds (LiteLLM's).
pub const DEFAULT_TIMEOUT_S: f64 = 600.0;
/// LiteLLM's default `allowed_fails` and `cooldown_time` (litellm/constants.py).
pub const DEFAULT_ALLOWED_FAILS: u32 = 3;
pub const DEFAULT_COOLDOWN_S: f64 = 5.0;

/// Providers whose API is OpenAI's, the only protocol this router speaks upstream.
const PROVIDERS: &[&str] = &["hosted_vllm", "openai", "custom_openai"];

/// Parses and validates a config held in memory; `source` names it in errors. Relative paths
/// (`audit_log`) stay relative to the working directory.
pub fn parse(yaml: &str, source: &str) -> Result<RouterConfig, ConfigError> {
    parse_in(yaml, source, None)
}

/// Reads, parses and validates a config file. Relative paths in it are relative to its
/// directory.
pub fn load(path: &Path) -> Result<RouterConfig, ConfigError> {
    let file = path.display().to_string();
    let yaml = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        file: file.clone(),
        cause,
    })?;
    parse_in(&yaml, &file, path.parent())
}

fn parse_in(yaml: &str, source: &str, base: Option<&Path>) -> Result<RouterConfig, ConfigError> {
    let bad = |path: &str, message: String, fix: &str| ConfigError::Invalid {
        file: source.to_string(),
        path: path.to_string(),
        message,
        fix: fix.to_string(),
    };
    let doc: Value = serde_yaml_ng::from_str(yaml).map_err(|e| {
        bad(
            "(document)",
            format!("not valid YAML: {e}"),
            "fix the YAML syntax at the line shown",
        )
    })?;
    if !doc.is_mapping() {
        return Err(bad(
            "(document)",
            "the file is empty or not a mapping".into(),
            "start from a LiteLLM config.yaml with at least `model_list:`",
        ));
    }
    let raw: RawConfig = serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(
        yaml,
    ))
    .map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_yaml_ng names the field (or its parent) itself; the path is already given once.
        let inner = match inner.split_once(": ") {
            Some((head, rest)) if !head.is_empty() && path.starts_with(head) => rest.to_owned(),
            _ => inner,
        };
        let fix = if inner.contains("unknown field") {
            "remove the field or correct its spelling (this section is strict)"
        } else if inner.contains("missing field") {
            "add the field"
        } else {
            "give the field a value of the type named above"
        };
        bad(&path, inner, fix)
    })?;
    validate(raw, source, base, Some(&doc))
}

/// Stage two: checks a [`RawConfig`]. `doc` (the parsed YAML) is used to warn about LiteLLM keys
/// that serde tolerated; `base` resolves relative paths.
pub(crate) fn validate(
    raw: RawConfig,
    source: &str,
    base: Option<&Path>,
    doc: Option<&Value>,
) -> Result<RouterConfig, ConfigError> {
    let mut v = Validator {
        file: source.to_string(),
        warnings: Vec::new(),
    };
    if let Some(doc) = doc {
        v.unknown_keys(doc);
    }
    let routing = v.routing(raw.router_settings.clone().unwrap_or_default())?;
    let mut groups = v.groups(&raw, &routing)?;
    v.fallbacks(raw.router_settings.as_ref(), &mut groups)?;
    let general = raw.general_settings.unwrap_or_default();
    let master_key = match general.master_key {
        None => None,
        Some(k) => {
            let k = v.resolve_env(&k, "general_settings.master_key")?;
            if k.is_empty() {
                return Err(v.err(
                    "general_settings.master_key",
                    "the master key is empty",
                    "set a non-empty key or remove the field",
                ));
            }
            if !k.starts_with("sk-") {
                v.warn("general_settings.master_key does not start with `sk-` (LiteLLM requires that prefix; tenantbench does not)".into());
            }
            Some(KeyHash::of(&k))
        }
    };
    let mut settings = v.settings(raw.tenantbench_settings.unwrap_or_default(), base)?;
    if let Some(url) = general.database_url.as_deref().filter(|u| !u.is_empty()) {
        let url = v.resolve_env(url, "general_settings.database_url")?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(v.err(
                "general_settings.database_url",
                "only PostgreSQL URLs are supported",
                "write `postgresql://user:password@host:5432/db`, or remove it to use the SQLite file (tenantbench_settings.spend_db)",
            ));
        }
        settings.database = crate::store::Database::Postgres(url);
    }
    settings.redis_url = v.redis(general.redis_url.as_deref(), raw.router_settings.as_ref())?;
    let tenants = v.tenants(raw.tenants, &groups, master_key)?;
    if tenants.is_empty() && master_key.is_none() {
        v.warn("no tenants and no master_key: every model request will get 401".into());
    }
    for w in &v.warnings {
        tracing::warn!(config = %source, "{w}");
    }
    Ok(RouterConfig {
        source: source.to_string(),
        groups,
        routing,
        master_key,
        settings,
        tenants,
        warnings: v.warnings,
    })
}

struct Validator {
    file: String,
    warnings: Vec<String>,
}

fn positive_seconds(x: f64) -> Option<Duration> {
    (x.is_finite() && x > 0.0 && x < 1e9).then(|| Duration::from_secs_f64(x))
}

fn is_price(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

/// `30s`, `15m`, `1h`, `30d`, `1mo` (30 days), as LiteLLM writes budget durations.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "mo" => 30 * 86_400,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs)
}

fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('_')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Validator {
    fn err(&self, path: &str, message: impl Into<String>, fix: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            path: path.to_string(),
            message: message.into(),
            fix: fix.into(),
        }
    }

    fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }

    /// LiteLLM's `os.environ/NAME` indirection.
    fn resolve_env(&self, value: &str, path: &str) -> Result<String, ConfigError> {
        match value.strip_prefix("os.environ/") {
            None => Ok(value.to_string()),
            Some(name) => std::env::var(name).map_err(|_| {
                self.err(
                    path,
                    format!("environment variable `{name}` is not set"),
                    format!("export {name}=... before starting, or write the value inline"),
                )
            }),
        }
    }

    fn unknown_keys(&mut self, doc: &Value) {
        const TOP: &[&str] = &[
            "model_list",
            "router_settings",
            "general_settings",
            "tenantbench_settings",
            "tenants",
        ];
        const ENTRY: &[&str] = &["model_name", "litellm_params", "model_info"];
        const PARAMS: &[&str] = &[
            "model", "api_base", "api_key", "rpm", "tpm", "weight", "timeout",
        ];
        const ROUTER: &[&str] = &[
            "routing_strategy",
            "fallbacks",
            "num_retries",
            "timeout",
            "allowed_fails",
            "cooldown_time",
            "redis_host",
            "redis_port",
            "redis_password",
        ];
        const GENERAL: &[&str] = &["master_key", "database_url", "redis_url"];
        let Some(top) = doc.as_mapping() else { return };
        let mut found = Vec::new();
        let keys = |v: &Value, prefix: &str, known: &[&str], found: &mut Vec<String>| {
            if let Some(m) = v.as_mapping() {
                for k in m.keys() {
                    let name = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
                    if !known.contains(&name.as_str()) {
                        found.push(format!("{prefix}{name}"));
                    }
                }
            }
        };
        keys(doc, "", TOP, &mut found);
        if let Some(Value::Sequence(list)) = top.get("model_list") {
            for (i, e) in list.iter().enumerate() {
                keys(e, &format!("model_list[{i}]."), ENTRY, &mut found);
                if let Some(p) = e.get("litellm_params") {
                    let prefix = format!("model_list[{i}].litellm_params.");
                    keys(p, &prefix, PARAMS, &mut found);
                }
            }
        }
        if let Some(r) = top.get("router_settings") {
            keys(r, "router_settings.", ROUTER, &mut found);
        }
        if let Some(g) = top.get("general_settings") {
            keys(g, "general_settings.", GENERAL, &mut found);
        }
        for key in found {
            self.warn(format!(
                "`{key}` is not implemented by tenantbench's router; ignored"
            ));
        }
    }

    fn routing(&mut self, r: raw::RawRouterSettings) -> Result<RoutingSettings, ConfigError> {
        let strategy = match r.routing_strategy.as_deref() {
            None | Some("simple-shuffle") => RoutingStrategy::SimpleShuffle,
            Some(other) => {
                self.warn(format!(
                    "router_settings.routing_strategy `{other}` is not implemented; using simple-shuffle"
                ));
                RoutingStrategy::SimpleShuffle
            }
        };
        let timeout = match r.timeout {
            None => Duration::from_secs_f64(DEFAULT_TIMEOUT_S),
            Some(t) => positive_seconds(t).ok_or_else(|| {
                self.err(
                    "router_settings.timeout",
                    format!("timeout must be a positive number of seconds, got {t}"),
                    "e.g. `timeout: 600`",
                )
            })?,
        };
        let cooldown = match r.cooldown_time {
            None => Duration::from_secs_f64(DEFAULT_COOLDOWN_S),
            Some(0.0) => Duration::ZERO,
            Some(t) => positive_seconds(t).ok_or_else(|| {
                self.err(
                    "router_settings.cooldown_time",
                    format!("cooldown_time must be a non-negative number of seconds, got {t}"),
                    "e.g. `cooldown_time: 5`",
                )
            })?,
        };
        Ok(RoutingSettings {
            strategy,
            num_retries: r.num_retries.unwrap_or(0),
            timeout,
            allowed_fails: r.allowed_fails.unwrap_or(DEFAULT_ALLOWED_FAILS),
            cooldown,
        })
    }

    fn groups(
        &mut self,
        raw: &RawConfig,
        routing: &RoutingSettings,
    ) -> Result<Vec<ModelGroup>, ConfigError> {
        if raw.model_list.is_empty() {
            return Err(self.err(
                "model_list",
                "no deployments are defined",
                "add at least one entry with model_name and litellm_params {model, api_base}",
            ));
        }
        let mut groups: Vec<ModelGroup> = Vec::new();
        let mut ids = BTreeSet::new();
        for (i, e) in raw.model_list.iter().enumerate() {
            let at = |f: &str| format!("model_list[{i}].{f}");
            let name = e
                .model_name
                .clone()
                .filter(|n| !n.trim().is_empty())
                .ok_or_else(|| {
                    self.err(
                        &at("model_name"),
                        "missing or empty",
                        "give the virtual model name clients will send, e.g. `model_name: chat-fast`",
                    )
                })?;
            let p = e.litellm_params.clone().ok_or_else(|| {
                self.err(
                    &at("litellm_params"),
                    "missing",
                    "add `litellm_params: { model: hosted_vllm/<model>, api_base: http://host:port/v1 }`",
                )
            })?;
            let model = p.model.clone().unwrap_or_default();
            let (provider, upstream) = model.split_once('/').ok_or_else(|| {
                self.err(
                    &at("litellm_params.model"),
                    format!("`{model}` has no provider prefix"),
                    "write it as `hosted_vllm/<model served by vLLM>` or `openai/<model>`",
                )
            })?;
            if !PROVIDERS.contains(&provider) {
                return Err(self.err(
                    &at("litellm_params.model"),
                    format!("provider `{provider}` is not supported: this router speaks only the OpenAI API upstream"),
                    format!("use one of: {}", PROVIDERS.join(", ")),
                ));
            }
            if upstream.is_empty() {
                return Err(self.err(
                    &at("litellm_params.model"),
                    "the model name after the provider prefix is empty",
                    "e.g. `hosted_vllm/mistral-7b-instruct`",
                ));
            }
            let base_path = at("litellm_params.api_base");
            let base = p.api_base.as_deref().ok_or_else(|| {
                self.err(
                    &base_path,
                    "missing",
                    "set the deployment's URL including /v1, e.g. `http://127.0.0.1:8000/v1`",
                )
            })?;
            let base = self.resolve_env(base, &base_path)?;
            let api_base = Url::parse(&base).map_err(|e| {
                self.err(
                    &base_path,
                    format!("`{base}` is not a URL: {e}"),
                    "e.g. `http://127.0.0.1:8000/v1`",
                )
            })?;
            match api_base.scheme() {
                "http" => {}
                "https" => {
                    return Err(self.err(
                        &base_path,
                        "https is not supported: this build has no TLS client",
                        "use an http:// URL (e.g. through a local TLS-terminating proxy)",
                    ));
                }
                s => {
                    return Err(self.err(
                        &base_path,
                        format!("scheme `{s}` is not supported"),
                        "use an http:// URL",
                    ));
                }
            }
            if api_base.path().trim_end_matches('/').is_empty() {
                self.warn(format!(
                    "{base_path} `{base}` has no path: requests go to {}/chat/completions (vLLM serves /v1/...)",
                    base.trim_end_matches('/')
                ));
            }
            let api_key = match p.api_key.as_deref() {
                None => None,
                Some(k) => {
                    let k = self.resolve_env(k, &at("litellm_params.api_key"))?;
                    (!k.is_empty() && !k.eq_ignore_ascii_case("none")).then(|| Secret::new(k))
                }
            };
            let timeout = match p.timeout {
                None => routing.timeout,
                Some(t) => positive_seconds(t).ok_or_else(|| {
                    self.err(
                        &at("litellm_params.timeout"),
                        format!("timeout must be a positive number of seconds, got {t}"),
                        "e.g. `timeout: 600`, or remove it to use router_settings.timeout",
                    )
                })?,
            };
            if let Some(w) = p.weight
                && !(w.is_finite() && w > 0.0)
            {
                return Err(self.err(
                    &at("litellm_params.weight"),
                    format!("weight must be a positive number, got {w}"),
                    "e.g. `weight: 1`",
                ));
            }
            for (field, value) in [("rpm", p.rpm), ("tpm", p.tpm)] {
                if value == Some(0) {
                    return Err(self.err(
                        &at(&format!("litellm_params.{field}")),
                        "must be positive",
                        "remove it or give the deployment's real capacity",
                    ));
                }
            }
            let weight = p
                .weight
                .or(p.rpm.map(|x| x as f64))
                .or(p.tpm.map(|x| x as f64))
                .unwrap_or(1.0);
            let info = e.model_info.clone().unwrap_or_default();
            let id = info.id.clone().unwrap_or_else(|| format!("{name}-{i}"));
            if id.is_empty() || !ids.insert(id.clone()) {
                return Err(self.err(
                    &at("model_info.id"),
                    format!("deployment id `{id}` is empty or used twice"),
                    "give every deployment a unique model_info.id",
                ));
            }
            let price = |field: &str, v: Option<f64>| -> Result<f64, ConfigError> {
                match v {
                    None => Ok(0.0),
                    Some(x) if is_price(x) => Ok(x),
                    Some(x) => Err(self.err(
                        &at(&format!("model_info.{field}")),
                        format!("a price must be a finite number ≥ 0, got {x}"),
                        "e.g. `0.0000002` (price of one token)",
                    )),
                }
            };
            let input_cost_per_token = price("input_cost_per_token", info.input_cost_per_token)?;
            let output_cost_per_token = price("output_cost_per_token", info.output_cost_per_token)?;
            let context_window = match info.max_input_tokens {
                None => None,
                Some(n) => Some(NonZeroU64::new(n).ok_or_else(|| {
                    self.err(
                        &at("model_info.max_input_tokens"),
                        "0 is not a context window",
                        "give the engine's context length (vLLM's --max-model-len), e.g. `max_input_tokens: 8192`, or remove it",
                    )
                })?),
            };
            let deployment = Deployment {
                id,
                model_name: name.clone(),
                provider: provider.to_string(),
                upstream_model: upstream.to_string(),
                api_base,
                api_key,
                rpm: p.rpm,
                tpm: p.tpm,
                weight,
                timeout,
                input_cost_per_token,
                output_cost_per_token,
                context_window,
            };
            match groups.iter_mut().find(|g| g.name == name) {
                Some(g) => g.deployments.push(deployment),
                None => groups.push(ModelGroup {
                    name,
                    deployments: vec![deployment],
                    fallbacks: Vec::new(),
                }),
            }
        }
        Ok(groups)
    }

    /// `general_settings.redis_url`, or LiteLLM's `router_settings.redis_host`/`redis_port`/
    /// `redis_password`.
    fn redis(
        &self,
        url: Option<&str>,
        r: Option<&raw::RawRouterSettings>,
    ) -> Result<Option<String>, ConfigError> {
        if let Some(u) = url.filter(|u| !u.is_empty()) {
            let u = self.resolve_env(u, "general_settings.redis_url")?;
            if !u.starts_with("redis://") {
                return Err(self.err(
                    "general_settings.redis_url",
                    format!("`{u}` is not a redis:// URL"),
                    "write `redis://host:6379` (TLS is not supported)",
                ));
            }
            return Ok(Some(u));
        }
        let Some(host) = r.and_then(|r| r.redis_host.as_deref()) else {
            return Ok(None);
        };
        let host = self.resolve_env(host, "router_settings.redis_host")?;
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(self.err(
                "router_settings.redis_host",
                format!("`{host}` is not a host name"),
                "e.g. `redis_host: 127.0.0.1`",
            ));
        }
        let port = r.and_then(|r| r.redis_port).unwrap_or(6379);
        let auth = match r.and_then(|r| r.redis_password.as_deref()) {
            Some(p) => {
                let p = self.resolve_env(p, "router_settings.redis_password")?;
                format!(
                    ":{}@",
                    url::form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>()
                )
            }
            None => String::new(),
        };
        Ok(Some(format!("redis://{auth}{host}:{port}")))
    }

    fn fallbacks(
        &mut self,
        r: Option<&raw::RawRouterSettings>,
        groups: &mut [ModelGroup],
    ) -> Result<(), ConfigError> {
        let Some(list) = r.and_then(|r| r.fallbacks.as_ref()) else {
            return Ok(());
        };
        let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
        let known = names.join(", ");
        for (i, entry) in list.iter().enumerate() {
            for (from, to) in entry {
                let at = format!("router_settings.fallbacks[{i}].{from}");
                let Some(gi) = names.iter().position(|n| n == from) else {
                    return Err(self.err(
                        &at,
                        format!("`{from}` is not a model_name in model_list"),
                        format!("use one of: {known}"),
                    ));
                };
                for (j, target) in to.iter().enumerate() {
                    let tat = format!("{at}[{j}]");
                    if !names.contains(target) {
                        return Err(self.err(
                            &tat,
                            format!("fallback `{target}` is not a model_name in model_list"),
                            format!("use one of: {known}"),
                        ));
                    }
                    if target == from {
                        return Err(self.err(
                            &tat,
                            "a group cannot fall back to itself",
                            "use num_retries to retry the same group",
                        ));
                    }
                    let g = &mut groups[gi];
                    if !g.fallbacks.contains(target) {
                        g.fallbacks.push(target.clone());
                    }
                }
            }
        }
        Ok(())
    }

    fn settings(
        &mut self,
        s: raw::RawTenantbenchSettings,
        base: Option<&Path>,
    ) -> Result<Settings, ConfigError> {
        let audit_log = match s.audit_log {
            None => None,
            Some(p) if p.trim().is_empty() => {
                return Err(self.err(
                    "tenantbench_settings.audit_log",
                    "the path is empty",
                    "give a file path, or remove the field for no audit log",
                ));
            }
            Some(p) => {
                let p = PathBuf::from(p);
                Some(match base {
                    Some(dir) if p.is_relative() => dir.join(p),
                    _ => p,
                })
            }
        };
        let max_body_bytes = match s.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) if (1..=(1 << 30)).contains(&n) => n as usize,
            Some(n) => {
                return Err(self.err(
                    "tenantbench_settings.max_body_bytes",
                    format!("{n} is out of range"),
                    "use a number of bytes between 1 and 1073741824 (default 8388608)",
                ));
            }
        };
        let default_max_tokens_estimate = match s.default_max_tokens_estimate {
            None => DEFAULT_MAX_TOKENS_ESTIMATE,
            Some(0) => {
                return Err(self.err(
                    "tenantbench_settings.default_max_tokens_estimate",
                    "must be at least 1",
                    "e.g. 256",
                ));
            }
            Some(n) => n,
        };
        let budget_exceeded_status = match s.budget_exceeded_status {
            None | Some(400) => StatusCode::BAD_REQUEST,
            Some(429) => StatusCode::TOO_MANY_REQUESTS,
            Some(n) => {
                return Err(self.err(
                    "tenantbench_settings.budget_exceeded_status",
                    format!("{n} is not offered"),
                    "use 400 (LiteLLM's historical status) or 429",
                ));
            }
        };
        let database = match s.spend_db.as_deref() {
            Some("") => {
                return Err(self.err(
                    "tenantbench_settings.spend_db",
                    "the path is empty",
                    "give a file path, or `:memory:`",
                ));
            }
            Some(":memory:") => crate::store::Database::Memory,
            Some(p) => {
                let p = PathBuf::from(p);
                crate::store::Database::Sqlite(match base {
                    Some(dir) if p.is_relative() => dir.join(p),
                    _ => p,
                })
            }
            None => match base {
                Some(dir) => crate::store::Database::Sqlite(dir.join("tenantbench-spend.sqlite")),
                None => crate::store::Database::Memory,
            },
        };
        let redis_prefix = s.redis_prefix.unwrap_or_else(|| "tenantbench".into());
        if redis_prefix.is_empty() || redis_prefix.contains(char::is_whitespace) {
            return Err(self.err(
                "tenantbench_settings.redis_prefix",
                format!("`{redis_prefix}` is not a usable prefix"),
                "use letters, digits and `-_:.`, e.g. `tenantbench`",
            ));
        }
        let metrics_max_tenants = match s.metrics_max_tenants {
            None => 500,
            Some(n) => n as usize,
        };
        Ok(Settings {
            audit_log,
            database,
            redis_url: None,
            redis_prefix,
            metrics_max_tenants,
            max_body_bytes,
            default_max_tokens_estimate,
            budget_exceeded_status,
            seed: s.seed.unwrap_or(0),
        })
    }

    fn tenants(
        &mut self,
        raw: Vec<raw::RawTenant>,
        groups: &[ModelGroup],
        master: Option<KeyHash>,
    ) -> Result<Vec<TenantConfig>, ConfigError> {
        let known: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let known_list = known.join(", ");
        let mut ids = BTreeSet::new();
        let mut key_owner: BTreeMap<KeyHash, String> = BTreeMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, t) in raw.into_iter().enumerate() {
            let at = |f: &str| format!("tenants[{i}].{f}");
            let id = t.id.unwrap_or_default();
            if !valid_tenant_id(&id) {
                return Err(self.err(
                    &at("id"),
                    format!("`{id}` is not a valid tenant id"),
                    "use 1-128 letters, digits, `-`, `_` or `.`, not starting with `_`",
                ));
            }
            if !ids.insert(id.clone()) {
                return Err(self.err(
                    &at("id"),
                    format!("tenant id `{id}` is used twice"),
                    "give each tenant a unique id",
                ));
            }
            if t.keys.is_empty() {
                return Err(self.err(
                    &at("keys"),
                    "a tenant needs at least one key",
                    "add `keys: [sk-...]`",
                ));
            }
            let mut keys = Vec::with_capacity(t.keys.len());
            for (j, k) in t.keys.iter().enumerate() {
                let kat = at(&format!("keys[{j}]"));
                let k = self.resolve_env(k, &kat)?;
                if k.trim().is_empty() {
                    return Err(self.err(&kat, "the key is empty", "use a non-empty key"));
                }
                let h = KeyHash::of(&k);
                if Some(h) == master {
                    return Err(self.err(
                        &kat,
                        "this key is the master key",
                        "give tenants keys of their own",
                    ));
                }
                if let Some(owner) = key_owner.insert(h, id.clone()) {
                    return Err(self.err(
                        &kat,
                        format!("this key is already a key of tenant `{owner}`"),
                        "keys must be unique across tenants",
                    ));
                }
                keys.push(h);
            }
            let models = match t.models {
                None => None,
                Some(list) => {
                    let mut set = BTreeSet::new();
                    for (j, m) in list.into_iter().enumerate() {
                        if !known.contains(&m.as_str()) {
                            return Err(self.err(
                                &at(&format!("models[{j}]")),
                                format!("`{m}` is not a model_name in model_list"),
                                format!("use one of: {known_list}"),
                            ));
                        }
                        set.insert(m);
                    }
                    Some(set)
                }
            };
            let max_budget = match t.max_budget {
                Some(b) if !is_price(b) => {
                    return Err(self.err(
                        &at("max_budget"),
                        format!("{b} is not a budget"),
                        "use a number ≥ 0 in the same units as model_info prices, or remove it",
                    ));
                }
                b => b,
            };
            let budget_duration = match t.budget_duration {
                None => None,
                Some(d) => Some(parse_duration(&d).ok_or_else(|| {
                    self.err(
                        &at("budget_duration"),
                        format!("`{d}` is not a duration"),
                        "write a positive whole number and a unit: 30s, 15m, 1h, 30d or 1mo",
                    )
                })?),
            };
            if budget_duration.is_some() && max_budget.is_none() {
                self.warn(format!(
                    "{}: budget_duration without max_budget has no effect",
                    at("budget_duration")
                ));
            }
            let nz64 = |field: &str, v: Option<u64>| -> Result<Option<NonZeroU64>, ConfigError> {
                match v {
                    None => Ok(None),
                    Some(x) => NonZeroU64::new(x).map(Some).ok_or_else(|| {
                        self.err(
                            &at(field),
                            "0 is not a limit",
                            "use a positive number, or remove the field for no limit",
                        )
                    }),
                }
            };
            let rpm_limit = nz64("rpm_limit", t.rpm_limit)?;
            let tpm_limit = nz64("tpm_limit", t.tpm_limit)?;
            let max_parallel_requests = match t.max_parallel_requests {
                None => None,
                Some(x) => Some(NonZeroU32::new(x).ok_or_else(|| {
                    self.err(
                        &at("max_parallel_requests"),
                        "0 is not a limit",
                        "use a positive number, or remove the field for no limit",
                    )
                })?),
            };
            let mut lora = BTreeMap::new();
            for (m, adapter) in t.lora.unwrap_or_default() {
                let lat = at(&format!("lora.{m}"));
                if !known.contains(&m.as_str()) {
                    return Err(self.err(
                        &lat,
                        format!("`{m}` is not a model_name in model_list"),
                        format!("key the adapters by virtual model: {known_list}"),
                    ));
                }
                if adapter.trim().is_empty() {
                    return Err(self.err(
                        &lat,
                        "the adapter name is empty",
                        "name the LoRA adapter as vLLM serves it (--lora-modules name=path)",
                    ));
                }
                if models.as_ref().is_some_and(|s| !s.contains(&m)) {
                    self.warn(format!(
                        "{lat}: tenant `{id}` may not call `{m}`, so this adapter is never used"
                    ));
                }
                lora.insert(m, adapter);
            }
            out.push(TenantConfig {
                id,
                keys,
                models,
                max_budget,
                budget_duration,
                rpm_limit,
                tpm_limit,
                max_parallel_requests,
                lora,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
model_list:
  - model_name: chat-fast
    litellm_params: { model: hosted_vllm/mistral-7b-instruct, api_base: "http://127.0.0.1:8001/v1", api_key: "none", rpm: 10000, tpm: 10000000, timeout: 600 }
    model_info: { id: fast-5090-a, input_cost_per_token: 0.0000002, output_cost_per_token: 0.0000006 }
  - model_name: chat-strong
    litellm_params: { model: openai/qwen2.5-32b-instruct, api_base: "http://127.0.0.1:8002/v1" }
router_settings: { routing_strategy: simple-shuffle, fallbacks: [{chat-strong: [chat-fast]}], num_retries: 0, timeout: 600, allowed_fails: 3, cooldown_time: 5, redis_host: localhost }
general_settings: { master_key: sk-master, database_url: null }
litellm_settings: { drop_params: true }
tenantbench_settings: { audit_log: audit.jsonl, max_body_bytes: 8388608, default_max_tokens_estimate: 256 }
tenants:
  - id: tenant-01
    keys: [sk-tenant-01-abc]
    models: [chat-fast, chat-strong]
    max_budget: 25.0
    budget_duration: 30d
    rpm_limit: 120
    tpm_limit: 200000
    max_parallel_requests: 16
    lora: { chat-fast: tenant-01-fast, chat-strong: tenant-01-strong }
"#;

    fn path_of(yaml: &str) -> Option<String> {
        parse(yaml, "t.yaml")
            .err()
            .and_then(|e| e.path().map(str::to_string))
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(GOOD, "t.yaml");
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.groups.len(), 2);
        let fast = &c.groups[0].deployments[0];
        assert_eq!(fast.upstream_model, "mistral-7b-instruct");
        assert_eq!(fast.provider, "hosted_vllm");
        assert!(fast.api_key.is_none());
        assert_eq!(fast.weight, 10000.0);
        assert_eq!(
            fast.endpoint("/chat/completions"),
            "http://127.0.0.1:8001/v1/chat/completions"
        );
        assert_eq!(c.groups[1].deployments[0].id, "chat-strong-1");
        assert_eq!(c.groups[1].fallbacks, vec!["chat-fast".to_string()]);
        let t = &c.tenants[0];
        assert_eq!(t.keys, vec![KeyHash::of("sk-tenant-01-abc")]);
        assert_eq!(t.adapter("chat-strong"), Some("tenant-01-strong"));
        assert_eq!(t.budget_duration, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.master_key, Some(KeyHash::of("sk-master")));
        assert_eq!(c.settings.budget_exceeded_status, StatusCode::BAD_REQUEST);
        // LiteLLM keys we ignore are warned about, not fatal.
        // redis_host is now understood: limits are shared through it.
        assert!(
            !c.warnings
                .iter()
                .any(|w| w.contains("router_settings.redis_host"))
        );
        assert!(
            c.settings
                .redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with("redis://"))
        );
        assert!(c.warnings.iter().any(|w| w.contains("litellm_settings")));
    }

    #[test]
    fn max_input_tokens_is_the_deployments_context_window() {
        let with = |n: &str| {
            GOOD.replace(
                "output_cost_per_token: 0.0000006 }",
                &format!("output_cost_per_token: 0.0000006, max_input_tokens: {n} }}"),
            )
        };
        let c = parse(&with("8192"), "t.yaml");
        assert!(c.is_ok_and(|c| {
            c.groups[0].deployments[0].context_window == NonZeroU64::new(8192)
                && c.groups[1].deployments[0].context_window.is_none()
                && !c.warnings.iter().any(|w| w.contains("max_input_tokens"))
        }));
        assert_eq!(
            path_of(&with("0")).as_deref(),
            Some("model_list[0].model_info.max_input_tokens")
        );
    }

    #[test]
    fn raw_keys_are_not_kept() {
        let c = parse(GOOD, "t.yaml").map(|c| format!("{c:?}"));
        assert!(c.is_ok_and(|dbg| !dbg.contains("sk-tenant-01-abc") && !dbg.contains("sk-master")));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("rpm_limit: 120", "rpm_limit: lots"),
                "tenants[0].rpm_limit",
            ),
            (
                GOOD.replace("rpm_limit: 120", "rpm_limt: 120"),
                "tenants[0].rpm_limt",
            ),
            (
                GOOD.replace("rpm_limit: 120", "rpm_limit: 0"),
                "tenants[0].rpm_limit",
            ),
            (
                GOOD.replace("budget_duration: 30d", "budget_duration: 30x"),
                "tenants[0].budget_duration",
            ),
            (
                GOOD.replace(
                    "models: [chat-fast, chat-strong]",
                    "models: [chat-fast, chat-huge]",
                ),
                "tenants[0].models[1]",
            ),
            (
                GOOD.replace("hosted_vllm/mistral", "anthropic/mistral"),
                "model_list[0].litellm_params.model",
            ),
            (
                GOOD.replace("\"http://127.0.0.1:8001/v1\"", "\"not a url\""),
                "model_list[0].litellm_params.api_base",
            ),
            (
                GOOD.replace(
                    "[{chat-strong: [chat-fast]}]",
                    "[{chat-strong: [chat-tiny]}]",
                ),
                "router_settings.fallbacks[0].chat-strong[0]",
            ),
            (
                GOOD.replace("max_body_bytes: 8388608", "max_body_byte: 8388608"),
                "tenantbench_settings.max_body_byte",
            ),
            (
                GOOD.replace(
                    "output_cost_per_token: 0.0000006",
                    "output_cost_per_token: -1",
                ),
                "model_list[0].model_info.output_cost_per_token",
            ),
            (
                GOOD.replace("lora: { chat-fast", "lora: { chat-slow"),
                "tenants[0].lora.chat-slow",
            ),
            (
                GOOD.replace("keys: [sk-tenant-01-abc]", "keys: [sk-master]"),
                "tenants[0].keys[0]",
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(path_of(&yaml).as_deref(), Some(want), "{yaml}");
        }
    }

    #[test]
    fn error_message_names_file_and_fix() {
        let e = parse(
            &GOOD.replace("rpm_limit: 120", "rpm_limit: 0"),
            "conf/router.yaml",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.starts_with("conf/router.yaml: tenants[0].rpm_limit:"),
            "{e}"
        );
        assert!(e.contains("fix:"), "{e}");
    }

    #[test]
    fn duplicate_keys_and_ids_are_rejected() {
        let two = format!("{GOOD}  - id: tenant-02\n    keys: [sk-tenant-01-abc]\n");
        assert_eq!(path_of(&two).as_deref(), Some("tenants[1].keys[0]"));
        let e = parse(&two, "x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            !e.contains("sk-tenant-01-abc"),
            "a raw key leaked into: {e}"
        );
        let same_id = format!("{GOOD}  - id: tenant-01\n    keys: [sk-other]\n");
        assert_eq!(path_of(&same_id).as_deref(), Some("tenants[1].id"));
    }

    #[test]
    fn empty_and_broken_documents_are_errors() {
        assert!(parse("", "e.yaml").is_err());
        assert!(parse("model_list: [", "e.yaml").is_err());
        assert_eq!(path_of("tenants: []").as_deref(), Some("model_list"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(
            parse_duration("1mo"),
            Some(Duration::from_secs(30 * 86_400))
        );
        for bad in ["", "h", "0d", "5y", "-1d", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn relative_audit_path_follows_the_config_file() {
        let dir = tempfile::tempdir();
        let Ok(dir) = dir else { return };
        let file = dir.path().join("router.yaml");
        assert!(std::fs::write(&file, GOOD).is_ok());
        let c = load(&file).map(|c| c.settings.audit_log);
        assert_eq!(c.ok().flatten(), Some(dir.path().join("audit.jsonl")));
        assert!(load(&dir.path().join("missing.yaml")).is_err());
    }

    #[test]
    fn raw_config_round_trips_through_yaml() {
        let raw: Result<RawConfig, _> = serde_yaml_ng::from_str(GOOD);
        let Ok(raw) = raw else {
            panic!("GOOD must parse")
        };
        let text = serde_yaml_ng::to_string(&raw).unwrap_or_default();
        let again = parse(&text, "roundtrip");
        assert!(again.is_ok_and(|c| c.tenants.len() == 1 && c.groups.len() == 2));
        assert!(raw.validate("code").is_ok());
    }
}
