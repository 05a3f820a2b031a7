//! Engine settings: one `vllm serve` instance.
//!
//! [`EngineConfig`] mirrors vLLM's flags (names and defaults from `vllm/engine/arg_utils.py` and
//! `vllm/config/lora.py`) plus two of ours (`gpu`, `default_max_tokens`). [`EngineConfig::resolve`]
//! checks it against the catalogues and fills in vLLM's per-GPU defaults, giving an
//! [`EngineSpec`] that cannot be wrong.

use crate::SimError;
use crate::catalog::{Catalog, Gpu, Model, Precision, StepTuning};

/// vLLM's default `--max-lora-rank`.
pub const DEFAULT_MAX_LORA_RANK: u32 = 16;
/// Rank assumed for an adapter whose rank is not given (a common fine-tuning choice).
pub const DEFAULT_ADAPTER_RANK: u32 = 8;
/// vLLM's KV-cache block size in tokens (`vllm/config/cache.py`).
pub const BLOCK_SIZE: u32 = 16;

/// One LoRA adapter (`--lora-modules name=path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraModule {
    pub name: String,
    pub path: String,
    /// The adapter's rank (`r` in its `adapter_config.json`); `None` = [`DEFAULT_ADAPTER_RANK`].
    pub rank: Option<u32>,
}

impl LoraModule {
    /// Parses one `--lora-modules` item: `name=path`, or vLLM's JSON form
    /// `{"name": .., "path": .., "base_model_name": ..}` (our extension: `"rank"`).
    pub fn parse(s: &str) -> Result<LoraModule, SimError> {
        let s = s.trim();
        if s.starts_with('{') {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Raw {
                name: String,
                path: String,
                #[serde(default)]
                base_model_name: Option<String>,
                #[serde(default)]
                rank: Option<u32>,
            }
            let raw: Raw = serde_json::from_str(s)
                .map_err(|e| SimError::config("lora_modules", format!("`{s}`: {e}")))?;
            let _ = raw.base_model_name;
            return Ok(LoraModule {
                name: raw.name,
                path: raw.path,
                rank: raw.rank,
            });
        }
        match s.split_once('=') {
            Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(LoraModule {
                name: name.to_string(),
                path: path.to_string(),
                rank: None,
            }),
            _ => Err(SimError::config(
                "lora_modules",
                format!("`{s}` is not `name=path` or a JSON object"),
            )),
        }
    }

    pub fn rank_or_default(&self) -> u32 {
        self.rank.unwrap_or(DEFAULT_ADAPTER_RANK)
    }
}

/// One simulated `vllm serve` instance.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// GPU profile name from `catalog/gpus.toml`.
    pub gpu: String,
    /// Model name from `catalog/models.toml` (`-instruct` aliases and Hugging Face ids accepted).
    pub model: String,
    /// Weight precision (`bf16`, `fp16`, `fp8`, `awq`, `gptq`, `w4a16`, `nvfp4`).
    pub precision: String,
    /// `--served-model-name` (its first value); default: `model` as given. Responses and
    /// metrics report this name.
    pub served_model_name: Option<String>,
    /// Further `--served-model-name` values: vLLM accepts every name given there as the base
    /// model (each is listed in `/v1/models`), so these are aliases of `served_model_name`.
    pub served_model_aliases: Vec<String>,
    /// `--enable-lora`.
    pub enable_lora: bool,
    /// `--lora-modules`.
    pub lora_modules: Vec<LoraModule>,
    /// `--max-loras`: distinct adapters in one batch (vLLM default 1).
    pub max_loras: u32,
    /// `--max-lora-rank` (vLLM default 16).
    pub max_lora_rank: u32,
    /// `--max-cpu-loras`: adapters cached in CPU memory; `None` = `max_loras`.
    pub max_cpu_loras: Option<u32>,
    /// `--max-num-seqs`; `None` = vLLM's per-GPU default.
    pub max_num_seqs: Option<u32>,
    /// `--max-num-batched-tokens`; `None` = vLLM's per-GPU default.
    pub max_num_batched_tokens: Option<u32>,
    /// `--gpu-memory-utilization` (vLLM default 0.9).
    pub gpu_memory_utilization: f64,
    /// `--max-model-len`; `None` = the model's `max_position_embeddings`.
    pub max_model_len: Option<u32>,
    /// `--enable-prefix-caching` (on by default in vLLM V1).
    pub enable_prefix_caching: bool,
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING`: serve `/v1/load_lora_adapter` and
    /// `/v1/unload_lora_adapter` (only when `enable_lora` too).
    pub allow_runtime_lora_updating: bool,
    /// Seed of generated text (vLLM's `--seed`).
    pub seed: u64,
    /// Ours: the output length of a chat request that gives no `max_tokens`. A simulator has no
    /// end-of-sequence token, so where vLLM would stop at EOS we stop here (capped by what the
    /// context leaves, as vLLM caps its own default).
    pub default_max_tokens: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            gpu: "rtx-5090".into(),
            model: "mistral-7b-instruct".into(),
            precision: "bf16".into(),
            served_model_name: None,
            served_model_aliases: Vec::new(),
            enable_lora: false,
            lora_modules: Vec::new(),
            max_loras: 1,
            max_lora_rank: DEFAULT_MAX_LORA_RANK,
            max_cpu_loras: None,
            max_num_seqs: None,
            max_num_batched_tokens: None,
            gpu_memory_utilization: 0.9,
            max_model_len: None,
            enable_prefix_caching: true,
            allow_runtime_lora_updating: true,
            seed: 0,
            default_max_tokens: 256,
        }
    }
}

/// A checked engine configuration with every default resolved.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    pub gpu: Gpu,
    pub model: Model,
    pub precision: Precision,
    pub tuning: StepTuning,
    /// The first served name: the one responses and metrics report.
    pub served_model_name: String,
    /// Every name the base model answers to, `served_model_name` first, without repeats.
    pub served_model_names: Vec<String>,
    pub enable_lora: bool,
    pub lora_modules: Vec<LoraModule>,
    pub max_loras: u32,
    pub max_lora_rank: u32,
    pub max_cpu_loras: u32,
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    pub gpu_memory_utilization: f64,
    pub max_model_len: u32,
    pub enable_prefix_caching: bool,
    pub allow_runtime_lora_updating: bool,
    pub seed: u64,
    pub default_max_tokens: u32,
}

impl EngineConfig {
    /// Checks the settings as vLLM's argument validation would, and resolves defaults.
    pub fn resolve(&self) -> Result<EngineSpec, SimError> {
        let cat = Catalog::get()?;
        let gpu = cat.gpu(&self.gpu)?.clone();
        let model = cat.model(&self.model)?.clone();
        let precision = cat.precision(&self.precision)?.clone();
        gpu.check_precision(&self.precision, &precision)?;
        let tuning = cat.tuning(&gpu, &precision);
        let u = self.gpu_memory_utilization;
        if !(u > 0.0 && u <= 1.0) {
            return Err(SimError::config(
                "gpu_memory_utilization",
                format!("must be in (0, 1], got {u}"),
            ));
        }
        if self.max_loras == 0 {
            return Err(SimError::config("max_loras", "must be at least 1"));
        }
        if self.max_lora_rank == 0 {
            return Err(SimError::config("max_lora_rank", "must be at least 1"));
        }
        let max_cpu_loras = self.max_cpu_loras.unwrap_or(self.max_loras);
        if max_cpu_loras < self.max_loras {
            // vLLM: "max_cpu_loras must be >= max_loras".
            return Err(SimError::config(
                "max_cpu_loras",
                format!(
                    "max_cpu_loras ({max_cpu_loras}) must be >= max_loras ({})",
                    self.max_loras
                ),
            ));
        }
        if !self.lora_modules.is_empty() && !self.enable_lora {
            return Err(SimError::config(
                "lora_modules",
                "LoRA adapters were given but LoRA is not enabled (pass --enable-lora)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.lora_modules {
            if !seen.insert(m.name.as_str()) {
                return Err(SimError::config(
                    "lora_modules",
                    format!("adapter name `{}` is given twice", m.name),
                ));
            }
            let r = m.rank_or_default();
            if r == 0 {
                return Err(SimError::config(
                    "lora_modules",
                    format!(
                        "LoRA rank of adapter `{}` must be at least 1, got 0",
                        m.name
                    ),
                ));
            }
            if r > self.max_lora_rank {
                return Err(SimError::config(
                    "lora_modules",
                    format!(
                        "LoRA rank {r} of adapter `{}` is greater than max_lora_rank {}",
                        m.name, self.max_lora_rank
                    ),
                ));
            }
        }
        let max_num_seqs = self.max_num_seqs.unwrap_or(gpu.default_max_num_seqs);
        if max_num_seqs == 0 {
            return Err(SimError::config("max_num_seqs", "must be at least 1"));
        }
        let max_model_len = self.max_model_len.unwrap_or(model.max_position);
        if max_model_len == 0 {
            return Err(SimError::config("max_model_len", "must be at least 1"));
        }
        if max_model_len > model.max_position {
            return Err(SimError::config(
                "max_model_len",
                format!(
                    "User-specified max_model_len ({max_model_len}) is greater than the derived \
                     max_model_len (max_position_embeddings={} in model's config.json)",
                    model.max_position
                ),
            ));
        }
        let max_num_batched_tokens = self
            .max_num_batched_tokens
            .unwrap_or(gpu.default_max_num_batched_tokens);
        if max_num_batched_tokens == 0 {
            return Err(SimError::config(
                "max_num_batched_tokens",
                "must be at least 1",
            ));
        }
        if max_num_batched_tokens < max_num_seqs {
            return Err(SimError::config(
                "max_num_batched_tokens",
                format!(
                    "max_num_batched_tokens ({max_num_batched_tokens}) must be greater than or \
                     equal to max_num_seqs ({max_num_seqs})"
                ),
            ));
        }
        if self.default_max_tokens == 0 {
            return Err(SimError::config("default_max_tokens", "must be at least 1"));
        }
        let served_model_name = self
            .served_model_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.model.clone());
        let mut served_model_names = vec![served_model_name.clone()];
        for alias in &self.served_model_aliases {
            if alias.is_empty() {
                return Err(SimError::config(
                    "served_model_name",
                    "a served model name must not be empty",
                ));
            }
            if !served_model_names.contains(alias) {
                served_model_names.push(alias.clone());
            }
        }
        // Every served name is the base model's, so an adapter under one of them could never be
        // reached.
        if let Some(m) = self
            .lora_modules
            .iter()
            .find(|m| served_model_names.contains(&m.name))
        {
            return Err(SimError::config(
                "lora_modules",
                format!(
                    "adapter name `{}` is a served model name; an adapter may not share the \
                     base model's names",
                    m.name
                ),
            ));
        }
        Ok(EngineSpec {
            gpu,
            model,
            precision,
            tuning,
            served_model_name,
            served_model_names,
            enable_lora: self.enable_lora,
            lora_modules: self.lora_modules.clone(),
            max_loras: self.max_loras,
            max_lora_rank: self.max_lora_rank,
            max_cpu_loras,
            max_num_seqs,
            max_num_batched_tokens,
            gpu_memory_utilization: u,
            max_model_len,
            enable_prefix_caching: self.enable_prefix_caching,
            allow_runtime_lora_updating: self.allow_runtime_lora_updating,
            seed: self.seed,
            default_max_tokens: self.default_max_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_module_forms_parse() {
        let a = LoraModule::parse("t1=/adapters/t1");
        assert_eq!(
            a.ok(),
            Some(LoraModule {
                name: "t1".into(),
                path: "/adapters/t1".into(),
                rank: None
            })
        );
        let b =
            LoraModule::parse(r#"{"name":"t2","path":"/a/t2","base_model_name":"m","rank":32}"#);
        assert_eq!(b.ok().and_then(|m| m.rank), Some(32));
        assert!(LoraModule::parse("noequals").is_err());
    }

    #[test]
    fn defaults_follow_the_gpu() {
        let spec = EngineConfig::default().resolve();
        let Ok(spec) = spec else {
            panic!("{:?}", spec.err())
        };
        assert_eq!(
            (spec.max_num_batched_tokens, spec.max_num_seqs),
            (2048, 256)
        );
        let h = EngineConfig {
            gpu: "h100-sxm".into(),
            ..Default::default()
        }
        .resolve();
        assert_eq!(
            h.ok().map(|s| (s.max_num_batched_tokens, s.max_num_seqs)),
            Some((8192, 1024))
        );
        let a = EngineConfig {
            gpu: "a100-80gb".into(),
            ..Default::default()
        }
        .resolve();
        assert_eq!(a.ok().map(|s| s.max_num_batched_tokens), Some(2048));
    }

    #[test]
    fn bad_settings_are_refused_with_the_field() {
        for (cfg, field) in [
            (
                EngineConfig {
                    gpu_memory_utilization: 1.5,
                    ..Default::default()
                },
                "gpu_memory_utilization",
            ),
            (
                EngineConfig {
                    max_loras: 2,
                    max_cpu_loras: Some(1),
                    ..Default::default()
                },
                "max_cpu_loras",
            ),
            (
                EngineConfig {
                    max_model_len: Some(1_000_000),
                    ..Default::default()
                },
                "max_model_len",
            ),
            (
                EngineConfig {
                    enable_lora: true,
                    lora_modules: vec![LoraModule {
                        name: "a".into(),
                        path: "p".into(),
                        rank: Some(64),
                    }],
                    ..Default::default()
                },
                "lora_modules",
            ),
        ] {
            match cfg.resolve() {
                Err(SimError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected {field} error, got {other:?}"),
            }
        }
    }
}
