//! The embedded stack: one simulated vLLM per engine and the reference router in front of them,
//! all on 127.0.0.1 ephemeral ports, configured from the scenario.
//!
//! The router is configured through the same LiteLLM-style YAML a user would write (generated
//! here, parsed by the router's own config loader, and saved in the results directory), so the
//! embedded run exercises the real configuration path and leaves a config the user can reuse.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::error::RunError;
use crate::scenario::Scenario;
use crate::schedule::tenant_rng;

/// A running embedded stack. Dropping it does not stop the servers: cancel the token given to
/// [`start`].
pub struct Stack {
    /// Base URL of the router's OpenAI API (`http://127.0.0.1:PORT/v1`).
    pub router_url: String,
    /// One simulator per scenario engine, in scenario order.
    pub engines: Vec<(String, mocks::SimHandle)>,
    /// API key of each tenant, in scenario order.
    pub keys: Vec<String>,
    /// The router configuration the stack was started with (keys redacted).
    pub router_yaml_redacted: String,
}

/// Generates a tenant's API key (random, seeded, never reused across seeds).
fn tenant_key(seed: u64, tenant: &str) -> String {
    use rand::Rng;
    let mut rng = tenant_rng(seed, tenant, "api-key");
    let a: u64 = rng.random();
    let b: u64 = rng.random();
    format!("sk-tb-{tenant}-{a:016x}{b:016x}")
}

/// The engine configurations with every tenant's adapter registered where it is used.
pub fn engine_configs(s: &Scenario) -> Vec<mocks::EngineConfig> {
    s.engines
        .iter()
        .map(|e| {
            let mut cfg = e.config.clone();
            cfg.seed = s.seed ^ crate::schedule::stable_hash(&e.name);
            for t in &s.tenants {
                for (model, _) in &t.models {
                    let on_this = s
                        .models
                        .iter()
                        .any(|m| &m.name == model && m.engine == e.name);
                    if let (true, Some(name)) = (on_this, t.adapter_for(model)) {
                        cfg.lora_modules.push(mocks::LoraModule {
                            path: format!("/adapters/{name}"),
                            name,
                            rank: Some(e.lora_rank),
                        });
                    }
                }
            }
            cfg.enable_lora = !cfg.lora_modules.is_empty();
            cfg
        })
        .collect()
}

/// The router's LiteLLM-style configuration for this scenario.
pub fn router_config(
    s: &Scenario,
    engine_urls: &BTreeMap<String, String>,
    keys: &[String],
    audit_log: Option<&Path>,
) -> Value {
    let model_list: Vec<Value> = s
        .models
        .iter()
        .map(|m| {
            let engine = s.engines.iter().find(|e| e.name == m.engine);
            let upstream_model = engine.map(|e| e.config.model.clone()).unwrap_or_default();
            json!({
                "model_name": m.name,
                "litellm_params": {
                    "model": format!("hosted_vllm/{upstream_model}"),
                    "api_base": engine_urls.get(&m.engine).cloned().unwrap_or_default(),
                    "api_key": "none",
                    "timeout": s.router_timeout_s,
                },
                "model_info": {
                    "id": m.engine,
                    "input_cost_per_token": m.input_price_per_mtok / 1e6,
                    "output_cost_per_token": m.output_price_per_mtok / 1e6,
                    // The engine's context window, so the router refuses an over-long prompt
                    // before it takes any allowance (null: no engine, the engine decides).
                    "max_input_tokens": engine
                        .and_then(|e| e.config.resolve().ok())
                        .map(|spec| spec.max_model_len),
                },
            })
        })
        .collect();
    let fallbacks: Vec<Value> = s
        .models
        .iter()
        .filter(|m| !m.fallbacks.is_empty())
        .map(|m| json!({ m.name.clone(): m.fallbacks }))
        .collect();
    let tenants: Vec<Value> = s
        .tenants
        .iter()
        .zip(keys)
        .map(|(t, key)| {
            let mut v = json!({ "id": t.id, "keys": [key], "models": t.models.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>() });
            // The tenant may be sent to a fallback model, so it gets an adapter there too.
            let mut lora = serde_json::Map::new();
            for (m, _) in &t.models {
                let reachable = std::iter::once(m.clone())
                    .chain(s.models.iter().find(|vm| &vm.name == m).map(|vm| vm.fallbacks.clone()).unwrap_or_default());
                for name in reachable {
                    if let Some(a) = t.adapter_for(&name) {
                        lora.insert(name, Value::String(a));
                    }
                }
            }
            if t.lora {
                v["lora"] = Value::Object(lora);
            }
            if let Some(x) = t.rpm_limit {
                v["rpm_limit"] = json!(x);
            }
            if let Some(x) = t.tpm_limit {
                v["tpm_limit"] = json!(x);
            }
            if let Some(x) = t.max_parallel_requests {
                v["max_parallel_requests"] = json!(x);
            }
            if let Some(x) = t.max_budget {
                v["max_budget"] = json!(x);
            }
            v
        })
        .collect();
    let mut settings = json!({});
    if let Some(p) = audit_log {
        settings["audit_log"] = Value::String(p.display().to_string());
    }
    json!({
        "model_list": model_list,
        "router_settings": { "routing_strategy": "simple-shuffle", "fallbacks": fallbacks, "num_retries": 0, "timeout": s.router_timeout_s },
        "general_settings": { "master_key": format!("sk-tb-master-{:016x}", s.seed ^ 0x5eed) },
        "tenantbench_settings": settings,
        "tenants": tenants,
    })
}

/// Memory plans of every GPU, checked before anything starts.
pub fn check_capacity(s: &Scenario) -> Result<Vec<(u32, Vec<mocks::MemoryPlan>)>, RunError> {
    let configs = engine_configs(s);
    let mut by_gpu: BTreeMap<u32, Vec<mocks::EngineConfig>> = BTreeMap::new();
    for (e, cfg) in s.engines.iter().zip(configs) {
        by_gpu.entry(e.gpu_index).or_default().push(cfg);
    }
    let plans: Vec<(u32, Vec<mocks::MemoryPlan>)> = by_gpu
        .into_iter()
        .map(|(gpu, cfgs)| {
            let names: Vec<&str> = s
                .engines
                .iter()
                .filter(|e| e.gpu_index == gpu)
                .map(|e| e.name.as_str())
                .collect();
            mocks::plan_shared_gpu(&cfgs)
                .map(|plans| (gpu, plans))
                .map_err(|e| {
                    RunError::Capacity(format!(
                        "{}: GPU {gpu} (engines {}): {e}",
                        s.source,
                        names.join(", ")
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    if let Some(problem) = context_overflows(s).into_iter().find(|c| c.always) {
        return Err(RunError::Capacity(format!(
            "{}: {}; no request of it can be served",
            s.source, problem.message
        )));
    }
    Ok(plans)
}

/// A tenant whose prompt + output lengths overflow its engine's context window.
#[derive(Debug, Clone)]
pub struct ContextOverflow {
    /// Even the shortest prompt with the shortest output overflows: every request would fail.
    pub always: bool,
    pub message: String,
}

/// Tenants (one per group and model) whose requests do not fit the context window
/// (`max_model_len`, vLLM's check: prompt + `max_tokens` must fit) of the engine serving them.
pub fn context_overflows(s: &Scenario) -> Vec<ContextOverflow> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in &s.tenants {
        for (model, _) in &t.models {
            let Some(engine) = s
                .models
                .iter()
                .find(|m| &m.name == model)
                .and_then(|m| s.engines.iter().find(|e| e.name == m.engine))
            else {
                continue;
            };
            let Ok(spec) = engine.config.resolve() else {
                continue;
            };
            let window = u64::from(spec.max_model_len);
            let least = t.prompt_tokens.min() + t.output_tokens.min();
            let most = t.prompt_tokens.max() + t.output_tokens.max();
            if most <= window {
                continue;
            }
            let message = format!(
                "group `{}` on `{model}`: prompt_tokens + output_tokens reach {most} \
                 (at least {least}), over engine `{}`'s max_model_len of {window}",
                t.group, engine.name
            );
            // Tenants of a group usually share their lengths: say it once.
            if seen.insert(message.clone()) {
                out.push(ContextOverflow {
                    always: least > window,
                    message,
                });
            }
        }
    }
    out
}

/// Starts the simulators and the router; `results_dir` receives the audit log.
pub async fn start(
    s: &Scenario,
    shutdown: &CancellationToken,
    results_dir: Option<&Path>,
) -> Result<Stack, RunError> {
    check_capacity(s)?;
    let mut engines = Vec::new();
    let mut urls = BTreeMap::new();
    for (e, cfg) in s.engines.iter().zip(engine_configs(s)) {
        let handle = mocks::spawn(cfg, shutdown.child_token())
            .await
            .map_err(|err| RunError::Engine {
                engine: e.name.clone(),
                message: err.to_string(),
            })?;
        urls.insert(e.name.clone(), handle.base_url());
        engines.push((e.name.clone(), handle));
    }
    let keys: Vec<String> = s
        .tenants
        .iter()
        .map(|t| tenant_key(s.seed, &t.id))
        .collect();
    let audit = results_dir.map(|d| d.join("audit.jsonl"));
    let cfg = router_config(s, &urls, &keys, audit.as_deref());
    let yaml = serde_yaml_ng::to_string(&cfg).map_err(|e| RunError::Router(e.to_string()))?;
    let router_cfg = router::config::parse(&yaml, "<generated router config>")
        .map_err(|e| RunError::Router(e.to_string()))?;
    let handle = router::spawn(router_cfg, shutdown.child_token())
        .await
        .map_err(|e| RunError::Router(e.to_string()))?;
    let mut redacted = cfg;
    if let Some(ts) = redacted["tenants"].as_array_mut() {
        for t in ts {
            t["keys"] = json!(["<generated per run>"]);
        }
    }
    redacted["general_settings"]["master_key"] = json!("<generated per run>");
    Ok(Stack {
        router_url: handle.base_url(),
        engines,
        keys,
        router_yaml_redacted: serde_yaml_ng::to_string(&redacted).unwrap_or_default(),
    })
}
