//! The engine core: a pure, synchronous model of vLLM V1's scheduler and step timing.
//!
//! No tokio and no wall clock: [`Engine::step`] takes the simulated time at which a step starts
//! and returns what the step does and how long it takes. Two drivers run it: the async server
//! driver ([`crate::driver`], sleeping with `tokio::time::sleep_until` on a logical clock) and
//! the virtual-time replay of [`crate::calibration`].
//!
//! What one step does, after vLLM V1 (`vllm/v1/core/sched/scheduler.py`,
//! `docs/configuration/optimization.md`; explained in `mocks/README.md`, "Scheduler",
//! "Preemption by recompute" and "Prefix caching"):
//! 1. Running sequences that are decoding get one token each, first (decode-first).
//! 2. Running sequences in the middle of a chunked prefill get what is left of the
//!    `max_num_batched_tokens` budget, in order.
//! 3. If nothing was preempted, waiting sequences are admitted in arrival order while budget,
//!    `max_num_seqs` and KV blocks allow; a prompt larger than the remaining budget is chunked.
//!    A waiting sequence whose LoRA adapter would make the step exceed `max_loras` distinct
//!    adapters is skipped and later ones still proceed. A sequence whose next blocks cannot be
//!    allocated stops admission.
//! 4. KV lives in 16-token blocks ([`crate::kv_cache`]). When a running sequence cannot get the
//!    blocks for its new tokens, the most recently admitted running sequence is preempted by
//!    recompute: its blocks are freed and it goes back to the front of the queue, to prefill
//!    its prompt and the tokens it already generated again.
//! 5. With prefix caching, a newly admitted sequence starts from the longest cached run of its
//!    prompt's full blocks (at least one token is always computed).
//! 6. The step's duration comes from [`crate::cost`]. A sequence samples a token at the end of
//!    the step in which all its known tokens have been computed: its first token at the end of
//!    the step that completes its prefill, then one per step.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use crate::catalog::LoraCost;
use crate::config::{BLOCK_SIZE, EngineSpec};
use crate::cost::{BatchShape, StepCostModel};
use crate::kv_cache::KvCache;
use crate::lora::{Adapter, Adapters};
use crate::memory::MemoryPlan;

/// Engine-wide sequence id (one per choice of a request).
pub type SeqId = u64;

/// A sequence to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqRequest {
    pub id: SeqId,
    pub prompt_tokens: u32,
    /// Tokens to generate (the simulator has no EOS, so exactly this many).
    pub max_tokens: u32,
    pub lora: Option<String>,
    /// Chain hashes of the prompt's full blocks ([`crate::kv_cache::block_hashes`]); empty
    /// when the prompt shares nothing worth caching.
    pub block_hashes: Vec<u64>,
    /// Simulated arrival time.
    pub arrival: Duration,
}

/// Why the core refuses a sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("sequence id {0} is already in the engine")]
    Duplicate(SeqId),
    #[error("{needed} tokens can never fit a KV cache of {capacity} tokens")]
    TooLong { needed: u64, capacity: u64 },
    #[error("a sequence must have at least one prompt token and one token to generate")]
    Empty,
}

#[derive(Debug, Clone)]
struct Seq {
    req: SeqRequest,
    computed: u32,
    generated: u32,
    /// Leading prompt blocks held as shared cached blocks (their hashes).
    shared: Vec<u64>,
    private: u32,
}

impl Seq {
    fn num_tokens(&self) -> u32 {
        self.req.prompt_tokens + self.generated
    }
    fn remaining(&self) -> u32 {
        self.num_tokens() - self.computed
    }
    fn blocks(&self) -> u32 {
        self.shared.len() as u32 + self.private
    }
}

/// One token handed out at the end of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emitted {
    pub seq: SeqId,
    /// 0-based index of the token in the sequence's output.
    pub index: u32,
    /// This was the sequence's last token (it reached `max_tokens`).
    pub finished: bool,
}

/// What a step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub start: Duration,
    pub duration: Duration,
    pub shape: BatchShape,
    /// Tokens emitted at `start + duration`, in scheduling order.
    pub emitted: Vec<Emitted>,
    /// Sequences preempted (by recompute) while scheduling this step.
    pub preempted: Vec<SeqId>,
    /// (sequence, tokens computed for it) in scheduling order.
    pub scheduled: Vec<(SeqId, u32)>,
    /// Distinct adapters in the step.
    pub loras: BTreeSet<String>,
}

impl StepOutcome {
    pub fn end(&self) -> Duration {
        self.start + self.duration
    }
}

/// Counters and gauges for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_usage: f64,
    pub preemptions_total: u64,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub prefix_cache_queries_total: u64,
    pub prefix_cache_hits_total: u64,
    pub steps_total: u64,
    pub running_loras: BTreeSet<String>,
    pub waiting_loras: BTreeSet<String>,
}

/// The scheduler, the KV pool and the cost model of one engine.
#[derive(Debug, Clone)]
pub struct Engine {
    max_num_seqs: usize,
    max_num_batched_tokens: u32,
    max_loras: usize,
    prefix_caching: bool,
    cost: StepCostModel,
    kv: KvCache,
    seqs: HashMap<SeqId, Seq>,
    /// Admission order (the last one is the first to be preempted).
    running: Vec<SeqId>,
    waiting: VecDeque<SeqId>,
    adapters: Adapters,
    stats: EngineStats,
}

impl Engine {
    /// An engine for `spec` with the KV capacity of `plan`.
    pub fn new(spec: &EngineSpec, plan: &MemoryPlan, lora: LoraCost) -> Self {
        let mut adapters = Adapters::new(spec.max_loras, spec.max_cpu_loras, lora);
        for m in &spec.lora_modules {
            adapters.register(Adapter {
                name: m.name.clone(),
                path: m.path.clone(),
                rank: m.rank_or_default(),
            });
        }
        Self {
            max_num_seqs: spec.max_num_seqs as usize,
            max_num_batched_tokens: spec.max_num_batched_tokens,
            max_loras: spec.max_loras as usize,
            prefix_caching: spec.enable_prefix_caching,
            cost: StepCostModel::new(spec, lora),
            kv: KvCache::new(
                plan.num_gpu_blocks.min(u64::from(u32::MAX)) as u32,
                BLOCK_SIZE,
            ),
            seqs: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            adapters,
            stats: EngineStats::default(),
        }
    }

    pub fn cost_model(&self) -> &StepCostModel {
        &self.cost
    }

    pub fn adapters(&self) -> &Adapters {
        &self.adapters
    }

    pub fn adapters_mut(&mut self) -> &mut Adapters {
        &mut self.adapters
    }

    /// KV capacity in tokens.
    pub fn kv_capacity_tokens(&self) -> u64 {
        u64::from(self.kv.total_blocks()) * u64::from(self.kv.block_size())
    }

    /// KV-cache tokens held by running sequences now (blocks in use × block size).
    pub fn kv_used_tokens(&self) -> u64 {
        let used = self.kv.total_blocks() - self.kv.available();
        u64::from(used) * u64::from(self.kv.block_size())
    }

    /// Queues a sequence.
    pub fn add(&mut self, req: SeqRequest) -> Result<(), AdmitError> {
        if self.seqs.contains_key(&req.id) {
            return Err(AdmitError::Duplicate(req.id));
        }
        if req.prompt_tokens == 0 || req.max_tokens == 0 {
            return Err(AdmitError::Empty);
        }
        let needed = u64::from(req.prompt_tokens) + u64::from(req.max_tokens);
        if needed > self.kv_capacity_tokens() {
            return Err(AdmitError::TooLong {
                needed,
                capacity: self.kv_capacity_tokens(),
            });
        }
        let id = req.id;
        self.seqs.insert(
            id,
            Seq {
                req,
                computed: 0,
                generated: 0,
                shared: Vec::new(),
                private: 0,
            },
        );
        self.waiting.push_back(id);
        Ok(())
    }

    /// Removes a sequence (client gone); frees its blocks. False if it was not there.
    pub fn abort(&mut self, id: SeqId) -> bool {
        let Some(seq) = self.seqs.remove(&id) else {
            return false;
        };
        self.kv.release(seq.private);
        self.kv.release_shared(&seq.shared);
        self.running.retain(|r| *r != id);
        self.waiting.retain(|r| *r != id);
        true
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// Gauges and counters now.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.running = self.running.len();
        s.waiting = self.waiting.len();
        s.kv_usage = self.kv.usage();
        s.running_loras = self.loras_of(self.running.iter());
        s.waiting_loras = self.loras_of(self.waiting.iter());
        s
    }

    fn loras_of<'a>(&self, ids: impl Iterator<Item = &'a SeqId>) -> BTreeSet<String> {
        ids.filter_map(|id| self.seqs.get(id).and_then(|s| s.req.lora.clone()))
            .collect()
    }

    /// Frees a sequence's blocks and puts it at the front of the queue to recompute.
    fn preempt(&mut self, id: SeqId) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            self.kv.release(seq.private);
            self.kv.release_shared(&seq.shared);
            seq.private = 0;
            seq.shared.clear();
            seq.computed = 0;
        }
        self.running.retain(|r| *r != id);
        self.waiting.push_front(id);
        self.stats.preemptions_total += 1;
    }

    /// Runs one step starting at simulated time `now`; `None` when there is nothing to do.
    pub fn step(&mut self, now: Duration) -> Option<StepOutcome> {
        let mut budget = self.max_num_batched_tokens;
        let mut scheduled: Vec<(SeqId, u32)> = Vec::new();
        let mut preempted: Vec<SeqId> = Vec::new();

        // 1-2: decodes first, then partial prefills, each in admission order.
        let (decodes, partials): (Vec<SeqId>, Vec<SeqId>) = self.running.iter().partition(|id| {
            self.seqs
                .get(id)
                .is_some_and(|s| s.remaining() == 1 && s.generated > 0)
        });
        for id in decodes.into_iter().chain(partials) {
            if budget == 0 {
                break;
            }
            if preempted.contains(&id) {
                continue; // preempted earlier in this step
            }
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            let new = seq.remaining().min(budget);
            let need_blocks = self
                .kv
                .blocks_for(seq.computed + new)
                .saturating_sub(seq.blocks());
            let mut ok = true;
            while !self.kv.allocate(need_blocks) {
                let Some(&victim) = self.running.last() else {
                    ok = false;
                    break;
                };
                if let Some(pos) = scheduled.iter().position(|(s, _)| *s == victim) {
                    budget += scheduled[pos].1;
                    scheduled.remove(pos);
                }
                self.preempt(victim);
                preempted.push(victim);
                if victim == id {
                    ok = false;
                    break;
                }
            }
            if !ok {
                continue;
            }
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.private += need_blocks;
            }
            scheduled.push((id, new));
            budget -= new;
        }

        let mut step_loras: BTreeSet<String> = scheduled
            .iter()
            .filter_map(|(id, _)| self.seqs.get(id).and_then(|s| s.req.lora.clone()))
            .collect();

        // 3: admit waiting sequences.
        if preempted.is_empty() {
            let mut skipped: Vec<SeqId> = Vec::new();
            while budget > 0 && self.running.len() < self.max_num_seqs {
                let Some(id) = self.waiting.pop_front() else {
                    break;
                };
                let Some(seq) = self.seqs.get(&id) else {
                    continue;
                };
                if let Some(l) = &seq.req.lora
                    && !step_loras.contains(l)
                    && step_loras.len() >= self.max_loras
                {
                    skipped.push(id);
                    continue;
                }
                let num_tokens = seq.num_tokens();
                let bs = self.kv.block_size();
                let hit_blocks = if self.prefix_caching {
                    let hits = self.kv.lookup(&seq.req.block_hashes) as u32;
                    // At least one token must be computed to sample from.
                    hits.min((num_tokens - 1) / bs)
                } else {
                    0
                };
                let hit_tokens = hit_blocks * bs;
                let new = (num_tokens - hit_tokens).min(budget);
                let hashes: Vec<u64> = seq.req.block_hashes[..hit_blocks as usize].to_vec();
                self.kv.acquire(&hashes);
                let need = self.kv.blocks_for(hit_tokens + new) - hit_blocks;
                if !self.kv.allocate(need) {
                    self.kv.release_shared(&hashes);
                    self.waiting.push_front(id);
                    break;
                }
                let lora = seq.req.lora.clone();
                let prompt = u64::from(seq.req.prompt_tokens);
                if let Some(seq) = self.seqs.get_mut(&id) {
                    seq.computed = hit_tokens;
                    seq.shared = hashes;
                    seq.private = need;
                }
                if seq_is_fresh(self.seqs.get(&id)) {
                    self.stats.prefix_cache_queries_total += prompt;
                    self.stats.prefix_cache_hits_total += u64::from(hit_tokens);
                }
                if let Some(l) = lora {
                    step_loras.insert(l);
                }
                self.running.push(id);
                scheduled.push((id, new));
                budget -= new;
            }
            for id in skipped.into_iter().rev() {
                self.waiting.push_front(id);
            }
        }

        if scheduled.is_empty() {
            return None;
        }

        // Cost the batch.
        let mut shape = BatchShape::default();
        for (id, new) in &scheduled {
            let Some(seq) = self.seqs.get(id) else {
                continue;
            };
            let ctx = u64::from(seq.computed);
            let n = u64::from(*new);
            shape.seqs += 1;
            shape.new_tokens += n;
            shape.kv_read_tokens += ctx + n;
            shape.attn_pairs += (n * ctx) as f64 + (n * n) as f64 / 2.0;
            if seq.computed + new == seq.num_tokens() {
                shape.sampled += 1;
            }
        }
        if !step_loras.is_empty() {
            shape.lora_max_rank = step_loras.iter().map(|l| self.adapters.rank(l)).max();
            shape.lora_load_ms = self.adapters.prepare_step(&step_loras);
        }
        let duration = self.cost.step_time(&shape);

        // Apply: advance computed tokens, sample, finish.
        let mut emitted = Vec::new();
        let mut finished = Vec::new();
        for (id, new) in &scheduled {
            let Some(seq) = self.seqs.get_mut(id) else {
                continue;
            };
            seq.computed += new;
            let bs = self.kv.block_size();
            while seq.shared.len() < seq.req.block_hashes.len()
                && (seq.shared.len() as u32 + 1) * bs <= seq.computed
                && seq.private > 0
            {
                let h = seq.req.block_hashes[seq.shared.len()];
                self.kv.promote(h);
                seq.private -= 1;
                seq.shared.push(h);
            }
            if seq.computed == seq.num_tokens() {
                if seq.generated == 0 {
                    self.stats.prompt_tokens_total += u64::from(seq.req.prompt_tokens);
                }
                seq.generated += 1;
                self.stats.generation_tokens_total += 1;
                let done = seq.generated >= seq.req.max_tokens;
                emitted.push(Emitted {
                    seq: *id,
                    index: seq.generated - 1,
                    finished: done,
                });
                if done {
                    finished.push(*id);
                }
            }
        }
        for id in finished {
            if let Some(seq) = self.seqs.remove(&id) {
                self.kv.release(seq.private);
                self.kv.release_shared(&seq.shared);
            }
            self.running.retain(|r| *r != id);
        }
        self.stats.steps_total += 1;
        Some(StepOutcome {
            start: now,
            duration,
            shape,
            emitted,
            preempted,
            scheduled,
            loras: step_loras,
        })
    }
}

/// A sequence admitted for the first time (not a recompute after preemption).
fn seq_is_fresh(seq: Option<&Seq>) -> bool {
    seq.is_some_and(|s| s.generated == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineConfig;
    use crate::catalog::Catalog;
    use crate::config::LoraModule;

    fn engine(cfg: EngineConfig, blocks: Option<u64>) -> Engine {
        let spec = cfg.resolve();
        let Ok(spec) = spec else {
            panic!("{:?}", spec.err())
        };
        let plan = crate::memory::plan_spec(&spec);
        let Ok(mut plan) = plan else {
            panic!("{:?}", plan.err())
        };
        if let Some(b) = blocks {
            plan.num_gpu_blocks = b;
        }
        let Ok(cat) = Catalog::get() else {
            panic!("catalogue")
        };
        Engine::new(&spec, &plan, cat.lora)
    }

    fn small(budget: u32, seqs: u32) -> EngineConfig {
        EngineConfig {
            max_num_batched_tokens: Some(budget),
            max_num_seqs: Some(seqs),
            max_model_len: Some(4096),
            ..Default::default()
        }
    }

    fn req(id: SeqId, prompt: u32, max_tokens: u32) -> SeqRequest {
        SeqRequest {
            id,
            prompt_tokens: prompt,
            max_tokens,
            lora: None,
            block_hashes: Vec::new(),
            arrival: Duration::ZERO,
        }
    }

    fn add(e: &mut Engine, r: SeqRequest) {
        assert_eq!(e.add(r), Ok(()));
    }

    fn step(e: &mut Engine, now: &mut Duration) -> StepOutcome {
        let Some(o) = e.step(*now) else {
            panic!("idle engine")
        };
        *now = o.end();
        o
    }

    #[test]
    fn decodes_are_scheduled_before_prefills() {
        let mut e = engine(small(64, 16), None);
        let mut now = Duration::ZERO;
        add(&mut e, req(1, 10, 50));
        add(&mut e, req(2, 10, 50));
        let first = step(&mut e, &mut now);
        assert_eq!(first.emitted.len(), 2, "both prompts prefilled in one step");
        add(&mut e, req(3, 500, 5));
        let mixed = step(&mut e, &mut now);
        assert_eq!(mixed.scheduled, vec![(1, 1), (2, 1), (3, 62)]);
        assert_eq!(mixed.shape.new_tokens, 64);
        assert_eq!(
            mixed.emitted.iter().map(|t| t.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn long_prompts_are_chunked_into_the_budget_and_the_first_token_ends_the_last_chunk() {
        let mut e = engine(small(32, 8), None);
        let mut now = Duration::ZERO;
        add(&mut e, req(1, 100, 3));
        let mut chunks = Vec::new();
        loop {
            let o = step(&mut e, &mut now);
            chunks.push(o.scheduled[0].1);
            assert!(o.shape.new_tokens <= 32);
            if !o.emitted.is_empty() {
                assert_eq!(o.emitted[0].index, 0);
                break;
            }
        }
        assert_eq!(chunks, vec![32, 32, 32, 4]);
        let d = step(&mut e, &mut now);
        assert_eq!(d.scheduled, vec![(1, 1)]);
        assert_eq!(d.emitted[0].index, 1);
    }

    #[test]
    fn max_num_seqs_caps_the_running_set() {
        let mut e = engine(small(256, 2), None);
        let mut now = Duration::ZERO;
        for id in 1..=3 {
            add(&mut e, req(id, 8, 4));
        }
        let o = step(&mut e, &mut now);
        assert_eq!(o.scheduled.len(), 2);
        assert_eq!(e.stats().running, 2);
        assert_eq!(e.stats().waiting, 1);
        // Seq 3 gets in once one of the first two finishes.
        let mut all: Vec<SeqId> = Vec::new();
        while e.has_work() {
            let o = step(&mut e, &mut now);
            all.extend(o.emitted.iter().filter(|t| t.finished).map(|t| t.seq));
            assert!(o.scheduled.len() <= 2);
        }
        all.sort();
        assert_eq!(all, vec![1, 2, 3]);
    }

    #[test]
    fn a_waiting_request_over_max_loras_is_skipped_and_later_ones_proceed() {
        let cfg = EngineConfig {
            enable_lora: true,
            max_loras: 1,
            lora_modules: ["a0", "a1"]
                .iter()
                .map(|n| LoraModule {
                    name: n.to_string(),
                    path: format!("/l/{n}"),
                    rank: Some(8),
                })
                .collect(),
            ..small(256, 16)
        };
        let mut e = engine(cfg, None);
        let with = |id, l: Option<&str>| SeqRequest {
            lora: l.map(str::to_string),
            ..req(id, 8, 3)
        };
        add(&mut e, with(1, Some("a0")));
        add(&mut e, with(2, Some("a1")));
        add(&mut e, with(3, Some("a0")));
        add(&mut e, with(4, None));
        let mut now = Duration::ZERO;
        let o = step(&mut e, &mut now);
        let ids: Vec<SeqId> = o.scheduled.iter().map(|s| s.0).collect();
        assert_eq!(ids, vec![1, 3, 4]);
        assert_eq!(o.loras.len(), 1);
        assert!(o.shape.lora_max_rank == Some(8));
        // Never more than one adapter per step, and seq 2 runs once a0 is done.
        let mut saw_two = false;
        while e.has_work() {
            let o = step(&mut e, &mut now);
            assert!(o.loras.len() <= 1, "{:?}", o.loras);
            saw_two |= o.scheduled.iter().any(|s| s.0 == 2);
        }
        assert!(saw_two);
    }

    #[test]
    fn running_out_of_blocks_preempts_the_newest_by_recompute() {
        // 6 blocks = 96 tokens; two sequences that each grow to 60 tokens cannot both stay.
        let mut e = engine(small(256, 16), Some(6));
        add(&mut e, req(1, 20, 40));
        add(&mut e, req(2, 20, 40));
        let mut now = Duration::ZERO;
        let mut emitted: HashMap<SeqId, u32> = HashMap::new();
        let mut preempted = Vec::new();
        let mut steps = 0;
        while e.has_work() && steps < 1000 {
            let o = step(&mut e, &mut now);
            preempted.extend(o.preempted.iter().copied());
            for t in &o.emitted {
                let n = emitted.entry(t.seq).or_default();
                assert_eq!(
                    t.index, *n,
                    "tokens are emitted in order, none lost or repeated"
                );
                *n += 1;
            }
            steps += 1;
        }
        assert_eq!(
            preempted.first(),
            Some(&2),
            "the most recently admitted goes first"
        );
        assert!(e.stats().preemptions_total >= 1);
        assert_eq!(emitted.get(&1), Some(&40));
        assert_eq!(emitted.get(&2), Some(&40));
        assert_eq!(e.stats().kv_usage, 0.0);
    }

    #[test]
    fn shared_prefix_blocks_are_reused() {
        let mut e = engine(small(2048, 16), None);
        let hashes: Vec<u64> = (0..8).collect();
        add(
            &mut e,
            SeqRequest {
                block_hashes: hashes.clone(),
                ..req(1, 130, 2)
            },
        );
        let mut now = Duration::ZERO;
        let first = step(&mut e, &mut now);
        assert_eq!(first.scheduled, vec![(1, 130)]);
        add(
            &mut e,
            SeqRequest {
                block_hashes: hashes,
                ..req(2, 130, 2)
            },
        );
        let o = step(&mut e, &mut now);
        // 8 full blocks (128 tokens) hit; only 2 prompt tokens are computed.
        assert_eq!(o.scheduled, vec![(1, 1), (2, 2)]);
        let s = e.stats();
        assert_eq!(s.prefix_cache_hits_total, 128);
        assert_eq!(s.prefix_cache_queries_total, 260);
    }

    #[test]
    fn abort_frees_blocks_and_unknown_ids_are_ignored() {
        let mut e = engine(small(2048, 16), None);
        add(&mut e, req(1, 500, 100));
        let mut now = Duration::ZERO;
        let _ = step(&mut e, &mut now);
        assert!(e.stats().kv_usage > 0.0);
        assert!(e.abort(1));
        assert!(!e.abort(1));
        assert_eq!(e.stats().kv_usage, 0.0);
        assert!(e.step(now).is_none());
        assert_eq!(e.add(req(2, 0, 1)), Err(AdmitError::Empty));
    }
}
