//! GPU, model and precision catalogues, loaded from the data files in `mocks/catalog/*.toml`
//! (compiled in with `include_str!`, so the binary needs no files at run time).
//!
//! The files cite their sources. Parsing is two-stage as everywhere in tenantbench: serde into
//! raw structs with `deny_unknown_fields`, then checks into the types below. Look-ups are
//! case-insensitive; model names also resolve with or without an `-instruct` suffix and by their
//! Hugging Face id, and precisions by alias (`awq` → `w4a16`, `fp16` → `bf16`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::SimError;

const GPUS_FILE: &str = "catalog/gpus.toml";
const MODELS_FILE: &str = "catalog/models.toml";
const PRECISIONS_FILE: &str = "catalog/precisions.toml";
const GPUS_TOML: &str = include_str!("../catalog/gpus.toml");
const MODELS_TOML: &str = include_str!("../catalog/models.toml");
const PRECISIONS_TOML: &str = include_str!("../catalog/precisions.toml");

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Step-cost constants of one GPU (optionally refined per precision).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTuning {
    /// Achieved fraction of peak memory bandwidth in memory-bound (decode) steps.
    pub mem_efficiency: f64,
    /// Achieved fraction of peak tensor throughput in compute-bound (prefill) steps.
    pub compute_efficiency: f64,
    /// Fixed time per engine step (scheduler, launches, sampling), milliseconds.
    pub step_overhead_ms: f64,
    /// Extra time per sequence in the step and per model layer (attention and per-sequence
    /// metadata work of each layer), µs.
    pub per_seq_layer_us: f64,
}

/// One GPU profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub id: String,
    pub name: String,
    pub memory_gb: f64,
    /// Memory as CUDA reports it, in bytes.
    pub usable_memory_bytes: u64,
    pub bandwidth_bytes_s: f64,
    pub bf16_flops: f64,
    pub fp8_flops: Option<f64>,
    pub fp4_flops: Option<f64>,
    pub runtime_overhead_bytes: u64,
    pub default_max_num_batched_tokens: u32,
    pub default_max_num_seqs: u32,
    pub tuning: StepTuning,
}

impl Gpu {
    /// Whether the GPU has tensor cores for a compute format: bf16 everywhere; fp8 and fp4
    /// where the catalogue lists their throughput (`fp8_tflops`, `fp4_tflops`: Ada, Hopper and
    /// Blackwell have FP8, only Blackwell has FP4).
    pub fn has_native(&self, compute: Compute) -> bool {
        match compute {
            Compute::Bf16 => true,
            Compute::Fp8 => self.fp8_flops.is_some(),
            Compute::Fp4 => self.fp4_flops.is_some(),
        }
    }

    /// Refuses a precision whose GEMMs need tensor cores this GPU does not have (nvfp4 on
    /// anything before Blackwell, fp8 on an A100).
    ///
    /// Why refuse rather than run: vLLM ≥ 0.10 would start such an engine with weight-only
    /// Marlin kernels (logging "Your GPU does not have native support for FP8/FP4
    /// computation…"), but none of the published runs the step costs are tuned on exercises
    /// that path, so any timing given for it would be a guess presented as a prediction. A
    /// capacity plan built on it should say so up front; the error names the formats that are
    /// modelled for this GPU.
    pub fn check_precision(&self, requested: &str, precision: &Precision) -> Result<(), SimError> {
        if self.has_native(precision.compute) {
            return Ok(());
        }
        let format = match precision.compute {
            Compute::Bf16 => "BF16",
            Compute::Fp8 => "FP8",
            Compute::Fp4 => "FP4",
        };
        let named = if requested.eq_ignore_ascii_case(&precision.id) {
            format!("`{}`", precision.id)
        } else {
            format!("`{requested}` ({})", precision.id)
        };
        let mut supported = vec!["bf16 (fp16)", "w4a16 (awq, gptq)"];
        if self.has_native(Compute::Fp8) {
            supported.push("fp8");
        }
        if self.has_native(Compute::Fp4) {
            supported.push("nvfp4");
        }
        Err(SimError::config(
            "precision",
            format!(
                "precision {named} is not supported on GPU `{}` ({}): it has no {format} tensor \
                 cores, and the simulator does not model vLLM's weight-only fallback for it. \
                 Supported on {}: {}",
                self.id,
                self.name,
                self.id,
                supported.join(", ")
            ),
        ))
    }

    /// Dense tensor FLOP/s for a compute format, falling back to bf16 for a format the GPU
    /// lacks (unreachable for a resolved engine: [`Gpu::check_precision`] refuses those).
    pub fn flops_for(&self, compute: Compute) -> f64 {
        match compute {
            Compute::Bf16 => self.bf16_flops,
            Compute::Fp8 => self.fp8_flops.unwrap_or(self.bf16_flops),
            Compute::Fp4 => self.fp4_flops.unwrap_or(self.bf16_flops),
        }
    }
}

/// The architecture numbers of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub id: String,
    pub hf_id: String,
    pub layers: u32,
    pub hidden: u32,
    pub intermediate: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub vocab: u32,
    pub params: f64,
    pub tied_embeddings: bool,
    pub max_position: u32,
}

impl Model {
    /// Parameters of one embedding table (vocab × hidden).
    pub fn embedding_params(&self) -> f64 {
        f64::from(self.vocab) * f64::from(self.hidden)
    }

    /// Parameters outside the embedding and output tables: the transformer blocks.
    pub fn block_params(&self) -> f64 {
        let tables = if self.tied_embeddings { 1.0 } else { 2.0 };
        (self.params - tables * self.embedding_params()).max(0.0)
    }
}

/// The arithmetic a precision's GEMMs run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compute {
    Bf16,
    Fp8,
    Fp4,
}

/// A weight precision.
#[derive(Debug, Clone, PartialEq)]
pub struct Precision {
    pub id: String,
    pub aliases: Vec<String>,
    pub weight_bits: f64,
    pub compute: Compute,
    pub kv_bytes: u32,
}

/// Multi-LoRA cost constants.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraCost {
    pub fixed_frac: f64,
    pub per_rank_frac: f64,
    pub disk_load_ms: f64,
    pub gpu_swap_ms: f64,
}

/// All catalogues.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub gpus: BTreeMap<String, Gpu>,
    pub models: BTreeMap<String, Model>,
    pub precisions: BTreeMap<String, Precision>,
    /// (gpu, precision) → tuning overriding the GPU's default.
    pub profiles: BTreeMap<(String, String), StepTuning>,
    pub lora: LoraCost,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpus {
    gpu: BTreeMap<String, RawGpu>,
    #[serde(default)]
    profile: Vec<RawProfile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpu {
    name: String,
    memory_gb: f64,
    usable_memory_gib: f64,
    bandwidth_gb_s: f64,
    bf16_tflops: f64,
    fp8_tflops: Option<f64>,
    fp4_tflops: Option<f64>,
    runtime_overhead_gib: f64,
    default_max_num_batched_tokens: u32,
    default_max_num_seqs: u32,
    mem_efficiency: f64,
    compute_efficiency: f64,
    step_overhead_ms: f64,
    per_seq_layer_us: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    gpu: String,
    precision: String,
    mem_efficiency: Option<f64>,
    compute_efficiency: Option<f64>,
    step_overhead_ms: Option<f64>,
    per_seq_layer_us: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModels {
    model: BTreeMap<String, RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    hf_id: String,
    layers: u32,
    hidden: u32,
    intermediate: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    vocab: u32,
    params_b: f64,
    tied_embeddings: bool,
    max_position: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrecisions {
    precision: BTreeMap<String, RawPrecision>,
    lora: LoraCost,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrecision {
    #[serde(default)]
    aliases: Vec<String>,
    weight_bits: f64,
    compute: Compute,
    kv_bytes: u32,
}

fn bad(file: &'static str, message: impl Into<String>) -> SimError {
    SimError::Catalog {
        file,
        message: message.into(),
    }
}

fn fraction(file: &'static str, what: &str, v: f64) -> Result<f64, SimError> {
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(bad(file, format!("{what} must be in (0, 1], got {v}")))
    }
}

fn non_negative(file: &'static str, what: &str, v: f64) -> Result<f64, SimError> {
    if v >= 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err(bad(file, format!("{what} must be >= 0, got {v}")))
    }
}

impl Catalog {
    /// The compiled-in catalogues, parsed once.
    pub fn get() -> Result<&'static Catalog, SimError> {
        static CATALOG: OnceLock<Result<Catalog, String>> = OnceLock::new();
        CATALOG
            .get_or_init(|| {
                Catalog::parse(GPUS_TOML, MODELS_TOML, PRECISIONS_TOML).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|m| bad("catalog/*.toml", m.clone()))
    }

    /// Parses catalogue texts (the three files' contents).
    pub fn parse(gpus: &str, models: &str, precisions: &str) -> Result<Catalog, SimError> {
        let raw_gpus: RawGpus = toml::from_str(gpus).map_err(|e| bad(GPUS_FILE, e.to_string()))?;
        let raw_models: RawModels =
            toml::from_str(models).map_err(|e| bad(MODELS_FILE, e.to_string()))?;
        let raw_prec: RawPrecisions =
            toml::from_str(precisions).map_err(|e| bad(PRECISIONS_FILE, e.to_string()))?;

        let mut out_gpus = BTreeMap::new();
        for (id, g) in raw_gpus.gpu {
            let f = GPUS_FILE;
            if g.usable_memory_gib <= 0.0 || g.bandwidth_gb_s <= 0.0 || g.bf16_tflops <= 0.0 {
                return Err(bad(
                    f,
                    format!("gpu {id}: memory, bandwidth and tflops must be > 0"),
                ));
            }
            let tuning = StepTuning {
                mem_efficiency: fraction(f, &format!("{id}.mem_efficiency"), g.mem_efficiency)?,
                compute_efficiency: fraction(
                    f,
                    &format!("{id}.compute_efficiency"),
                    g.compute_efficiency,
                )?,
                step_overhead_ms: non_negative(
                    f,
                    &format!("{id}.step_overhead_ms"),
                    g.step_overhead_ms,
                )?,
                per_seq_layer_us: non_negative(
                    f,
                    &format!("{id}.per_seq_layer_us"),
                    g.per_seq_layer_us,
                )?,
            };
            out_gpus.insert(
                id.to_ascii_lowercase(),
                Gpu {
                    id: id.to_ascii_lowercase(),
                    name: g.name,
                    memory_gb: g.memory_gb,
                    usable_memory_bytes: (g.usable_memory_gib * GIB) as u64,
                    bandwidth_bytes_s: g.bandwidth_gb_s * 1e9,
                    bf16_flops: g.bf16_tflops * 1e12,
                    fp8_flops: g.fp8_tflops.map(|t| t * 1e12),
                    fp4_flops: g.fp4_tflops.map(|t| t * 1e12),
                    runtime_overhead_bytes: (non_negative(
                        f,
                        "runtime_overhead_gib",
                        g.runtime_overhead_gib,
                    )? * GIB) as u64,
                    default_max_num_batched_tokens: g.default_max_num_batched_tokens,
                    default_max_num_seqs: g.default_max_num_seqs,
                    tuning,
                },
            );
        }

        let mut out_models = BTreeMap::new();
        for (id, m) in raw_models.model {
            if m.layers == 0 || m.kv_heads == 0 || m.head_dim == 0 || m.params_b <= 0.0 {
                return Err(bad(
                    MODELS_FILE,
                    format!("model {id}: zero-sized architecture"),
                ));
            }
            out_models.insert(
                id.to_ascii_lowercase(),
                Model {
                    id: id.to_ascii_lowercase(),
                    hf_id: m.hf_id,
                    layers: m.layers,
                    hidden: m.hidden,
                    intermediate: m.intermediate,
                    heads: m.heads,
                    kv_heads: m.kv_heads,
                    head_dim: m.head_dim,
                    vocab: m.vocab,
                    params: m.params_b * 1e9,
                    tied_embeddings: m.tied_embeddings,
                    max_position: m.max_position,
                },
            );
        }

        let mut out_prec = BTreeMap::new();
        for (id, p) in raw_prec.precision {
            if !(1.0..=32.0).contains(&p.weight_bits) || p.kv_bytes == 0 {
                return Err(bad(PRECISIONS_FILE, format!("precision {id}: bad sizes")));
            }
            out_prec.insert(
                id.to_ascii_lowercase(),
                Precision {
                    id: id.to_ascii_lowercase(),
                    aliases: p.aliases.iter().map(|a| a.to_ascii_lowercase()).collect(),
                    weight_bits: p.weight_bits,
                    compute: p.compute,
                    kv_bytes: p.kv_bytes,
                },
            );
        }

        let mut profiles = BTreeMap::new();
        for p in raw_gpus.profile {
            let gpu = p.gpu.to_ascii_lowercase();
            let prec = p.precision.to_ascii_lowercase();
            let Some(g) = out_gpus.get(&gpu) else {
                return Err(bad(GPUS_FILE, format!("profile for unknown gpu {gpu}")));
            };
            let Some(pr) = out_prec.get(&prec) else {
                return Err(bad(
                    GPUS_FILE,
                    format!("profile for unknown precision {prec} (use canonical names)"),
                ));
            };
            if !g.has_native(pr.compute) {
                return Err(bad(
                    GPUS_FILE,
                    format!("profile for {prec} on {gpu}, which that GPU does not support"),
                ));
            }
            let base = g.tuning;
            let f = GPUS_FILE;
            let t = StepTuning {
                mem_efficiency: fraction(
                    f,
                    "profile.mem_efficiency",
                    p.mem_efficiency.unwrap_or(base.mem_efficiency),
                )?,
                compute_efficiency: fraction(
                    f,
                    "profile.compute_efficiency",
                    p.compute_efficiency.unwrap_or(base.compute_efficiency),
                )?,
                step_overhead_ms: non_negative(
                    f,
                    "profile.step_overhead_ms",
                    p.step_overhead_ms.unwrap_or(base.step_overhead_ms),
                )?,
                per_seq_layer_us: non_negative(
                    f,
                    "profile.per_seq_layer_us",
                    p.per_seq_layer_us.unwrap_or(base.per_seq_layer_us),
                )?,
            };
            profiles.insert((gpu, prec), t);
        }

        Ok(Catalog {
            gpus: out_gpus,
            models: out_models,
            precisions: out_prec,
            profiles,
            lora: raw_prec.lora,
        })
    }

    fn unknown(kind: &'static str, name: &str, keys: impl Iterator<Item = String>) -> SimError {
        SimError::UnknownCatalogEntry {
            kind,
            name: name.to_string(),
            known: keys.collect::<Vec<_>>().join(", "),
        }
    }

    /// A GPU by catalogue name.
    pub fn gpu(&self, name: &str) -> Result<&Gpu, SimError> {
        self.gpus
            .get(&name.to_ascii_lowercase())
            .ok_or_else(|| Self::unknown("gpu", name, self.gpus.keys().cloned()))
    }

    /// A model by catalogue name, `-instruct` alias, or Hugging Face id.
    pub fn model(&self, name: &str) -> Result<&Model, SimError> {
        let n = name.to_ascii_lowercase();
        let stripped = n.strip_suffix("-instruct").unwrap_or(&n).to_string();
        let with = format!("{stripped}-instruct");
        self.models
            .get(&n)
            .or_else(|| self.models.get(&stripped))
            .or_else(|| self.models.get(&with))
            .or_else(|| {
                self.models
                    .values()
                    .find(|m| m.hf_id.eq_ignore_ascii_case(name))
            })
            .ok_or_else(|| Self::unknown("model", name, self.models.keys().cloned()))
    }

    /// A precision by canonical name or alias.
    pub fn precision(&self, name: &str) -> Result<&Precision, SimError> {
        let n = name.to_ascii_lowercase();
        self.precisions
            .get(&n)
            .or_else(|| self.precisions.values().find(|p| p.aliases.contains(&n)))
            .ok_or_else(|| Self::unknown("precision", name, self.precisions.keys().cloned()))
    }

    /// The step-cost tuning for a GPU running a precision.
    pub fn tuning(&self, gpu: &Gpu, precision: &Precision) -> StepTuning {
        self.profiles
            .get(&(gpu.id.clone(), precision.id.clone()))
            .copied()
            .unwrap_or(gpu.tuning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogues_parse_and_hold_the_required_entries() {
        let c = Catalog::get();
        assert!(c.is_ok(), "{:?}", c.err());
        let Ok(c) = c else { return };
        for g in [
            "rtx-5090",
            "rtx-4090",
            "l40s",
            "a100-80gb",
            "h100-pcie",
            "h100-sxm",
            "h200",
        ] {
            assert!(c.gpu(g).is_ok(), "{g}");
        }
        for m in [
            "mistral-7b-instruct",
            "llama-3-8b-instruct",
            "llama-3.1-8b-instruct",
            "qwen2-7b-instruct",
            "qwen2.5-7b-instruct",
            "deepseek-r1-distill-qwen-7b",
            "qwen3-8b",
            "gemma-3-27b",
            "qwen2.5-32b",
            "qwen3-32b",
            "deepseek-r1-distill-qwen-32b",
            "qwen2.5-32b-instruct",
            "Qwen/Qwen3-8B",
            "mistral-7b",
        ] {
            assert!(c.model(m).is_ok(), "{m}");
        }
        for p in ["bf16", "fp16", "fp8", "awq", "gptq", "w4a16", "nvfp4"] {
            assert!(c.precision(p).is_ok(), "{p}");
        }
        assert!(c.gpu("rtx-9999").is_err());
    }

    #[test]
    fn precision_support_follows_the_tensor_cores() {
        let Ok(c) = Catalog::get() else {
            panic!("catalogue")
        };
        let check = |g: &str, p: &str| {
            let (Ok(gpu), Ok(prec)) = (c.gpu(g), c.precision(p)) else {
                panic!("{g} {p}")
            };
            gpu.check_precision(p, prec).map_err(|e| e.to_string())
        };
        for (g, p) in [
            ("rtx-5090", "nvfp4"),
            ("rtx-5090", "fp8"),
            ("rtx-4090", "fp8"),
            ("h100-sxm", "fp8"),
            ("a100-80gb", "bf16"),
            ("a100-80gb", "awq"),
            ("l40s", "gptq"),
        ] {
            assert!(check(g, p).is_ok(), "{g} {p}");
        }
        for (g, p, format) in [
            ("a100-80gb", "nvfp4", "FP4"),
            ("rtx-4090", "nvfp4", "FP4"),
            ("h200", "fp4", "FP4"),
            ("a100-80gb", "fp8", "FP8"),
        ] {
            let e = check(g, p).err().unwrap_or_default();
            assert!(
                e.contains(g) && e.contains(p) && e.contains(format),
                "{g} {p}: {e}"
            );
        }
    }

    #[test]
    fn rtx_5090_matches_its_spec_sheet() {
        let Ok(c) = Catalog::get() else {
            panic!("catalogue")
        };
        let Ok(g) = c.gpu("RTX-5090") else {
            panic!("gpu")
        };
        assert_eq!(g.memory_gb, 32.0);
        assert!((g.bandwidth_bytes_s - 1.792e12).abs() < 1.0);
        assert_eq!(g.default_max_num_batched_tokens, 2048);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = Catalog::parse(
            "[gpu.x]\nname = \"x\"\nbogus = 1\n",
            MODELS_TOML,
            PRECISIONS_TOML,
        );
        assert!(matches!(
            e,
            Err(SimError::Catalog {
                file: GPUS_FILE,
                ..
            })
        ));
    }
}
