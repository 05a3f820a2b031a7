//! The step-cost model: how long one engine step takes on a GPU.
//!
//! A roofline (`mocks/README.md`, "Step-time model"): a step reads every weight once plus the
//! KV cache of the batch (memory term), and does `2 × params` FLOPs per token plus attention
//! (compute term); it takes as long as the slower of the two, at a tuned fraction of the
//! spec-sheet peak, plus a fixed per-step cost and a cost per sequence and layer. The latter is
//! the "batch slope" the published runs show: decode steps grow by ~100-250 µs per added
//! sequence, far more than the KV bytes explain, and in proportion to the layer count (8B vs 32B
//! on the same H100) — the per-sequence attention and metadata work of each layer.
//! Decode-only steps are memory-bound and grow slowly with the batch; a step that carries a
//! prefill chunk turns compute-bound, which is how chunked prefill slows the decodes sharing it.
//!
//! - memory  = (weight bytes + KV bytes read) / (bandwidth × mem_efficiency)
//! - compute = (2 × block params × tokens + 2 × vocab × hidden × sampled sequences
//!   + 4 × layers × heads × head_dim × Σ attended (query, key) pairs) / (FLOP/s × compute_efficiency)
//! - LoRA: a step serving any adapter costs (1 + fixed_frac + per_rank_frac × rank) times more
//!   (vLLM PR #11267 and issue #10062, see `catalog/precisions.toml`), plus any adapter load.
//!
//! The efficiencies and overheads are per GPU and precision (`catalog/gpus.toml`). No code fits
//! them: they were tuned by hand, replaying `/work/shared/calibration/published-runs.csv` with
//! `tenantbench calibrate` ([`crate::calibration`] only predicts and reports the error). Only
//! three profiles have rows behind them: rtx-4090 bf16 (P01-P04, P08-P10), h100-pcie bf16
//! (P05-P07, P11-P14) and rtx-5090 (bf16 P16, nvfp4 P15). The other GPUs' values, and the
//! w4a16 overrides, are estimates carried over from those by analogy (similar kernels and
//! memory systems), not fits; treat predictions for them as less certain.

use std::time::Duration;

use crate::catalog::LoraCost;
use crate::config::EngineSpec;
use crate::memory::{kv_bytes_per_token, weights_bytes};

/// What a step's batch holds, summarised for costing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchShape {
    /// Sequences in the step (decodes + prefill chunks).
    pub seqs: u32,
    /// Tokens computed in the step (1 per decode + chunk lengths).
    pub new_tokens: u64,
    /// KV tokens read by attention: Σ over sequences of (cached context + new tokens).
    pub kv_read_tokens: u64,
    /// Σ over sequences of attended (query, key) pairs: new × context + new² / 2.
    pub attn_pairs: f64,
    /// Sequences that sample a token at the end of the step (run the output projection).
    pub sampled: u32,
    /// Largest adapter rank in the step, when any adapter is in it.
    pub lora_max_rank: Option<u32>,
    /// Time spent loading adapters for this step, milliseconds.
    pub lora_load_ms: f64,
}

/// Precomputed constants of one engine's step cost.
#[derive(Debug, Clone)]
pub struct StepCostModel {
    weight_read_bytes: f64,
    kv_bytes_per_token: f64,
    flops_per_token: f64,
    flops_per_sample: f64,
    attn_flops_per_pair: f64,
    bandwidth: f64,
    flops: f64,
    overhead_s: f64,
    per_seq_s: f64,
    lora: LoraCost,
}

impl StepCostModel {
    pub fn new(spec: &EngineSpec, lora: LoraCost) -> Self {
        let m = &spec.model;
        let t = spec.tuning;
        // The input embedding is a gather (a few rows per step), not a full read; an untied
        // output table is read in full by the logits GEMM.
        let gather_saved = if m.tied_embeddings {
            0.0
        } else {
            m.embedding_params() * 2.0
        };
        Self {
            weight_read_bytes: weights_bytes(spec) as f64 - gather_saved,
            kv_bytes_per_token: kv_bytes_per_token(spec) as f64,
            flops_per_token: 2.0 * m.block_params(),
            flops_per_sample: 2.0 * m.embedding_params(),
            attn_flops_per_pair: 4.0 * f64::from(m.layers) * f64::from(m.heads * m.head_dim),
            bandwidth: spec.gpu.bandwidth_bytes_s * t.mem_efficiency,
            flops: spec.gpu.flops_for(spec.precision.compute) * t.compute_efficiency,
            overhead_s: t.step_overhead_ms / 1e3,
            per_seq_s: t.per_seq_layer_us * f64::from(m.layers) / 1e6,
            lora,
        }
    }

    /// Seconds of memory traffic for the batch.
    pub fn memory_s(&self, b: &BatchShape) -> f64 {
        (self.weight_read_bytes + b.kv_read_tokens as f64 * self.kv_bytes_per_token)
            / self.bandwidth
    }

    /// Seconds of tensor-core work for the batch.
    pub fn compute_s(&self, b: &BatchShape) -> f64 {
        (self.flops_per_token * b.new_tokens as f64
            + self.flops_per_sample * f64::from(b.sampled)
            + self.attn_flops_per_pair * b.attn_pairs)
            / self.flops
    }

    /// Duration of one step over `b`; zero for an empty batch.
    pub fn step_time(&self, b: &BatchShape) -> Duration {
        if b.seqs == 0 {
            return Duration::ZERO;
        }
        let mut s = self.memory_s(b).max(self.compute_s(b));
        if let Some(rank) = b.lora_max_rank {
            s *= 1.0 + self.lora.fixed_frac + self.lora.per_rank_frac * f64::from(rank);
        }
        s += self.overhead_s + self.per_seq_s * f64::from(b.seqs) + b.lora_load_ms / 1e3;
        Duration::from_secs_f64(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineConfig;
    use crate::catalog::Catalog;

    fn model(cfg: EngineConfig) -> StepCostModel {
        let spec = cfg.resolve();
        let Ok(spec) = spec else {
            panic!("{:?}", spec.err())
        };
        let Ok(cat) = Catalog::get() else {
            panic!("catalogue")
        };
        StepCostModel::new(&spec, cat.lora)
    }

    fn decode(seqs: u32, ctx: u64) -> BatchShape {
        BatchShape {
            seqs,
            new_tokens: u64::from(seqs),
            kv_read_tokens: u64::from(seqs) * (ctx + 1),
            attn_pairs: f64::from(seqs) * (ctx as f64 + 0.5),
            sampled: seqs,
            ..Default::default()
        }
    }

    #[test]
    fn decode_is_memory_bound_near_the_bandwidth_roofline() {
        let m = model(EngineConfig::default());
        let b = decode(1, 100);
        assert!(m.memory_s(&b) > m.compute_s(&b));
        // Mistral-7B bf16 ≈ 14.2 GB read per token over 1.79 TB/s ≈ 8 ms at the roofline.
        let t = m.step_time(&b).as_secs_f64() * 1e3;
        assert!((8.0..14.0).contains(&t), "{t} ms");
    }

    #[test]
    fn bigger_batches_and_prefill_chunks_take_longer() {
        let m = model(EngineConfig::default());
        let one = m.step_time(&decode(1, 500));
        let many = m.step_time(&decode(64, 500));
        assert!(many > one);
        let mut mixed = decode(8, 500);
        mixed.seqs += 1;
        mixed.new_tokens += 2000;
        mixed.attn_pairs += 2000.0 * 2000.0 / 2.0;
        mixed.kv_read_tokens += 2000;
        let t = m.step_time(&mixed);
        assert!(t > 5 * m.step_time(&decode(8, 500)), "{t:?}");
    }

    #[test]
    fn lora_steps_cost_more_with_rank() {
        let m = model(EngineConfig::default());
        let base = decode(4, 100);
        let r8 = BatchShape {
            lora_max_rank: Some(8),
            ..base
        };
        let r64 = BatchShape {
            lora_max_rank: Some(64),
            ..base
        };
        assert!(m.step_time(&base) < m.step_time(&r8));
        assert!(m.step_time(&r8) < m.step_time(&r64));
    }
}
