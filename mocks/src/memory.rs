//! GPU memory planning: how much KV cache an engine gets, and whether it starts at all.
//!
//! vLLM sizes its KV cache at start-up from a profiling run (`vllm/v1/worker/gpu_worker.py`,
//! `determine_available_memory`): the budget is `gpu_memory_utilization` × the memory CUDA
//! reports; from it go the weights, the peak activation memory of a dummy forward pass of
//! `max_num_batched_tokens` tokens (plus the sampler's logits for `max_num_seqs` sequences), and
//! the memory outside PyTorch's allocator (CUDA context, library workspaces, CUDA graphs). What
//! is left becomes 16-token blocks of `2 × layers × kv_heads × head_dim × dtype bytes` per token
//! (`mocks/README.md`, "Paged KV cache and the memory plan"). vLLM refuses to start when nothing
//! is left, or when the cache cannot hold one request of `max_model_len` tokens; so does
//! [`plan_memory`], with the numbers.
//!
//! Checked against vLLM's logs: Qwen3-8B bf16 on an RTX 5090 at 0.9 → 84,368 tokens; Qwen2-7B
//! bf16 on an A100-80GB at 0.5 → 464,848 tokens (tests in `tests/it/memory.rs`).

use crate::SimError;
use crate::config::{BLOCK_SIZE, EngineConfig, EngineSpec};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

/// The memory layout of one engine, as vLLM computes it at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// Total GPU memory as CUDA reports it.
    pub gpu_memory_bytes: u64,
    /// `gpu_memory_utilization` × total.
    pub budget_bytes: u64,
    pub weights_bytes: u64,
    /// LoRA slots: `max_loras` adapters of `max_lora_rank` on every projection.
    pub lora_bytes: u64,
    /// Peak activations of the profiling run, plus the runtime's non-PyTorch memory.
    pub activation_bytes: u64,
    /// Memory of the allocated KV blocks.
    pub kv_cache_bytes: u64,
    pub kv_bytes_per_token: u64,
    /// "GPU KV cache size: N tokens".
    pub kv_cache_tokens: u64,
    pub max_model_len: u32,
    /// "Maximum concurrency for `max_model_len` tokens per request: Xx".
    pub max_concurrency: f64,
    /// Number of 16-token KV blocks.
    pub num_gpu_blocks: u64,
}

impl MemoryPlan {
    /// vLLM's two start-up lines about the cache, worded and formatted as
    /// `vllm/v1/core/kv_cache_utils.py` logs them (`f"{n:,}"` thousands separators, `%.2fx`):
    /// "GPU KV cache size: 84,656 tokens" and
    /// "Maximum concurrency for 8,192 tokens per request: 10.33x". Log scrapers written for
    /// vLLM read them from the simulator too.
    pub fn startup_log_lines(&self) -> [String; 2] {
        [
            format!(
                "GPU KV cache size: {} tokens",
                thousands(self.kv_cache_tokens)
            ),
            format!(
                "Maximum concurrency for {} tokens per request: {:.2}x",
                thousands(u64::from(self.max_model_len)),
                self.max_concurrency
            ),
        ]
    }
}

/// `n` with a comma every three digits, as Python's `f"{n:,}"`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What an engine needs, independent of whether it fits.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryNeeds {
    pub gpu_memory_bytes: u64,
    pub weights_bytes: u64,
    pub lora_bytes: u64,
    pub activation_bytes: u64,
    pub kv_bytes_per_token: u64,
    pub max_model_len: u32,
    /// Weights + LoRA + activations + KV for one `max_model_len` request: the least budget
    /// (`gpu_memory_utilization` × total) with which vLLM starts.
    pub min_budget_bytes: u64,
}

/// Bytes of KV cache per token.
pub fn kv_bytes_per_token(spec: &EngineSpec) -> u64 {
    let m = &spec.model;
    2 * u64::from(m.layers)
        * u64::from(m.kv_heads)
        * u64::from(m.head_dim)
        * u64::from(spec.precision.kv_bytes)
}

/// Bytes of weights: the transformer blocks at the precision's width, the embedding and output
/// tables at 16 bits (no quantisation format here touches them).
pub fn weights_bytes(spec: &EngineSpec) -> u64 {
    let m = &spec.model;
    let tables = if m.tied_embeddings { 1.0 } else { 2.0 };
    (m.block_params() * spec.precision.weight_bits / 8.0 + tables * m.embedding_params() * 2.0)
        as u64
}

/// Parameters of one rank of LoRA across every projection of one layer (A: in × r, B: r × out).
pub(crate) fn lora_params_per_rank_layer(spec: &EngineSpec) -> u64 {
    let m = &spec.model;
    let (h, q, kv, i) = (
        u64::from(m.hidden),
        u64::from(m.heads * m.head_dim),
        u64::from(m.kv_heads * m.head_dim),
        u64::from(m.intermediate),
    );
    // q, k, v, o, gate, up, down
    (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
}

fn lora_bytes(spec: &EngineSpec) -> u64 {
    if !spec.enable_lora {
        return 0;
    }
    u64::from(spec.max_loras)
        * u64::from(spec.max_lora_rank)
        * u64::from(spec.model.layers)
        * lora_params_per_rank_layer(spec)
        * 2
}

fn activation_bytes(spec: &EngineSpec) -> u64 {
    let m = &spec.model;
    let tokens = u64::from(spec.max_num_batched_tokens);
    // MLP peak: gate+up output, the activated half and the residual stream, 16-bit.
    let forward = tokens * (3 * u64::from(m.intermediate) + 4 * u64::from(m.hidden)) * 2;
    // Sampler: fp32 logits and probabilities for max_num_seqs sequences.
    let sampler = u64::from(spec.max_num_seqs) * u64::from(m.vocab) * 4 * 2;
    // The profiling run frees the forward pass's intermediates before the dummy sampler runs,
    // so the peak is the larger of the two, not their sum.
    forward.max(sampler) + spec.gpu.runtime_overhead_bytes
}

/// The memory an engine needs, whether or not it fits.
pub fn memory_needs(cfg: &EngineConfig) -> Result<MemoryNeeds, SimError> {
    let spec = cfg.resolve()?;
    Ok(needs_of(&spec))
}

pub(crate) fn needs_of(spec: &EngineSpec) -> MemoryNeeds {
    let per_token = kv_bytes_per_token(spec);
    let weights = weights_bytes(spec);
    let lora = lora_bytes(spec);
    let act = activation_bytes(spec);
    let min_kv = u64::from(spec.max_model_len).div_ceil(u64::from(BLOCK_SIZE))
        * u64::from(BLOCK_SIZE)
        * per_token;
    MemoryNeeds {
        gpu_memory_bytes: spec.gpu.usable_memory_bytes,
        weights_bytes: weights,
        lora_bytes: lora,
        activation_bytes: act,
        kv_bytes_per_token: per_token,
        max_model_len: spec.max_model_len,
        min_budget_bytes: weights + lora + act + min_kv,
    }
}

/// Plans one engine's memory; `Err` when vLLM would refuse to start.
pub fn plan_memory(cfg: &EngineConfig) -> Result<MemoryPlan, SimError> {
    let spec = cfg.resolve()?;
    plan_spec(&spec)
}

pub(crate) fn plan_spec(spec: &EngineSpec) -> Result<MemoryPlan, SimError> {
    let n = needs_of(spec);
    let total = spec.gpu.usable_memory_bytes;
    let budget = (total as f64 * spec.gpu_memory_utilization) as u64;
    let fixed = n.weights_bytes + n.lora_bytes + n.activation_bytes;
    let who = format!(
        "{} ({}) on {} at gpu_memory_utilization {}",
        spec.model.id, spec.precision.id, spec.gpu.id, spec.gpu_memory_utilization
    );
    if fixed >= budget {
        return Err(SimError::DoesNotFit(format!(
            "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` \
             when initializing the engine. {who}: weights {:.2} GiB + LoRA {:.2} GiB + \
             activations/runtime {:.2} GiB = {:.2} GiB exceed the budget of {:.2} GiB \
             ({:.2} GiB total) by {:.2} GiB",
            gib(n.weights_bytes),
            gib(n.lora_bytes),
            gib(n.activation_bytes),
            gib(fixed),
            gib(budget),
            gib(total),
            gib(fixed - budget),
        )));
    }
    let kv_available = budget - fixed;
    let block_bytes = n.kv_bytes_per_token * u64::from(BLOCK_SIZE);
    let blocks = kv_available / block_bytes;
    let tokens = blocks * u64::from(BLOCK_SIZE);
    if tokens < u64::from(spec.max_model_len) {
        let needed = u64::from(spec.max_model_len) * n.kv_bytes_per_token;
        return Err(SimError::DoesNotFit(format!(
            "To serve at least one request with the models's max seq len ({}), ({:.2} GiB KV \
             cache is needed, which is larger than the available KV cache memory ({:.2} GiB). \
             Based on the available memory, the estimated maximum model length is {}. Try \
             increasing `gpu_memory_utilization` or decreasing `max_model_len` when \
             initializing the engine. ({who}; short by {:.2} GiB)",
            spec.max_model_len,
            gib(needed),
            gib(kv_available),
            tokens,
            gib(needed.saturating_sub(kv_available)),
        )));
    }
    Ok(MemoryPlan {
        gpu_memory_bytes: total,
        budget_bytes: budget,
        weights_bytes: n.weights_bytes,
        lora_bytes: n.lora_bytes,
        activation_bytes: n.activation_bytes,
        kv_cache_bytes: blocks * block_bytes,
        kv_bytes_per_token: n.kv_bytes_per_token,
        kv_cache_tokens: tokens,
        max_model_len: spec.max_model_len,
        max_concurrency: tokens as f64 / f64::from(spec.max_model_len),
        num_gpu_blocks: blocks,
    })
}

/// Plans several engines sharing ONE GPU (each `vllm serve` takes its own
/// `gpu_memory_utilization` share of the same device). The shares must sum to at most 1.0 and
/// each engine must fit its share; the error says which engine does not fit and by how much.
pub fn plan_shared_gpu(engines: &[EngineConfig]) -> Result<Vec<MemoryPlan>, SimError> {
    let specs = engines
        .iter()
        .map(EngineConfig::resolve)
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = specs.first() else {
        return Ok(Vec::new());
    };
    if let Some(other) = specs.iter().find(|s| s.gpu.id != first.gpu.id) {
        return Err(SimError::config(
            "gpu",
            format!(
                "engines sharing one GPU must name the same GPU; got {} and {}",
                first.gpu.id, other.gpu.id
            ),
        ));
    }
    let total = first.gpu.usable_memory_bytes;
    let needs: Vec<_> = specs.iter().map(needs_of).collect();
    let min_sum: u64 = needs.iter().map(|n| n.min_budget_bytes).sum();
    let describe = || {
        specs
            .iter()
            .zip(&needs)
            .map(|(s, n)| {
                format!(
                    "{} ({} {}) needs at least {:.2} GiB (weights {:.2} GiB + activations/runtime \
                     {:.2} GiB + LoRA {:.2} GiB + KV for {} tokens {:.2} GiB)",
                    s.served_model_name,
                    s.model.id,
                    s.precision.id,
                    gib(n.min_budget_bytes),
                    gib(n.weights_bytes),
                    gib(n.activation_bytes),
                    gib(n.lora_bytes),
                    n.max_model_len,
                    gib(n.min_budget_bytes - n.weights_bytes - n.activation_bytes - n.lora_bytes),
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if min_sum > total {
        let (engines, need) = match specs.len() {
            1 => ("1 engine does not".to_string(), "it needs"),
            n => (format!("{n} engines do not"), "together they need"),
        };
        return Err(SimError::DoesNotFit(format!(
            "{engines} fit on one {} ({:.2} GiB): {need} at least {:.2} GiB, {:.2} GiB more than \
             the GPU has. {}",
            first.gpu.id,
            gib(total),
            gib(min_sum),
            gib(min_sum - total),
            describe()
        )));
    }
    let share: f64 = specs.iter().map(|s| s.gpu_memory_utilization).sum();
    if share > 1.0 + 1e-9 {
        return Err(SimError::DoesNotFit(format!(
            "gpu_memory_utilization shares sum to {share:.3} > 1.0 on one {}: the engines reserve \
             {:.2} GiB of {:.2} GiB, {:.2} GiB too much. The engines would fit with smaller \
             shares: {}",
            first.gpu.id,
            gib(total) * share,
            gib(total),
            gib(total) * (share - 1.0),
            describe()
        )));
    }
    specs
        .iter()
        .map(|s| {
            plan_spec(s).map_err(|e| {
                SimError::DoesNotFit(format!(
                    "engine `{}` does not fit its share: {e}",
                    s.served_model_name
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators_match_pythons_format() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (84_656, "84,656"),
            (464_848, "464,848"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(thousands(n), s);
        }
    }

    #[test]
    fn startup_lines_read_like_vllms() {
        let plan = MemoryPlan {
            gpu_memory_bytes: 0,
            budget_bytes: 0,
            weights_bytes: 0,
            lora_bytes: 0,
            activation_bytes: 0,
            kv_cache_bytes: 0,
            kv_bytes_per_token: 0,
            kv_cache_tokens: 84_656,
            max_model_len: 8_192,
            max_concurrency: 84_656.0 / 8_192.0,
            num_gpu_blocks: 84_656 / 16,
        };
        assert_eq!(
            plan.startup_log_lines(),
            [
                "GPU KV cache size: 84,656 tokens".to_string(),
                "Maximum concurrency for 8,192 tokens per request: 10.33x".to_string(),
            ]
        );
    }
}
