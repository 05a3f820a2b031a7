//! Replays published vLLM benchmark runs against the engine core in virtual time, for
//! `tenantbench calibrate` (issue 4).
//!
//! Input rows follow `/work/shared/calibration/published-runs.csv` (its README documents the
//! columns). For each row the replay builds the engine the row describes, generates the row's
//! workload with a seeded RNG, and drives the pure core ([`crate::engine::Engine`]) on a
//! virtual clock — no sleeping, so a file of rows finishes in seconds:
//! - `poisson_rps`: open loop, exponential inter-arrival times at `load_value` requests/s;
//! - `closed_concurrency`: `load_value` clients, each sending its next request the moment the
//!   previous one finishes;
//! - `burst`: all `num_requests` at t = 0.
//!
//! Lengths: `random` rows use the given lengths exactly (vLLM's random dataset with its default
//! `range_ratio` of 0). `sharegpt` rows draw log-normal prompt lengths (σ = 1.0: ShareGPT's
//! human prompts are heavy-tailed, median well under the mean) and Gamma(shape 2) answer lengths
//! (model-written answers are skewed but thinner-tailed), cut as `vllm bench` filters ShareGPT
//! (prompt ≤ 1,024 tokens, prompt + output ≤ 2,048, both ≥ 4), then rescaled so the sample means
//! equal the row's means. A stated `prefix_cache_hit_rate` becomes a prompt prefix shared by all
//! requests of that length fraction.
//!
//! Metrics are computed as `vllm bench serve` computes them: TTFT from send to first token,
//! TPOT = (E2E − TTFT) / (output − 1) per request, ITL = every gap between tokens, output
//! throughput = output tokens / (last completion − first send).

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Gamma, LogNormal};
use serde::Deserialize;

use crate::catalog::Catalog;
use crate::config::{BLOCK_SIZE, EngineConfig, LoraModule};
use crate::engine::{Engine, SeqId, SeqRequest};
use crate::kv_cache::{PromptSegment, block_hashes};
use crate::{SimError, memory};

/// How a row loads the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Open loop, requests per second.
    PoissonRps(f64),
    /// Requests in flight at all times.
    ClosedConcurrency(u32),
    /// All requests at t = 0.
    Burst,
}

/// The metrics a row reports (measured) or the replay predicts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunMetrics {
    pub output_tok_s: Option<f64>,
    pub ttft_mean_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub tpot_mean_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p99_ms: Option<f64>,
}

impl RunMetrics {
    /// (name, value) pairs in column order.
    pub fn fields(&self) -> [(&'static str, Option<f64>); 6] {
        [
            ("output_tok_s", self.output_tok_s),
            ("ttft_mean_ms", self.ttft_mean_ms),
            ("ttft_p99_ms", self.ttft_p99_ms),
            ("tpot_mean_ms", self.tpot_mean_ms),
            ("itl_p50_ms", self.itl_p50_ms),
            ("itl_p99_ms", self.itl_p99_ms),
        ]
    }
}

/// One published benchmark run (a row of the calibration CSV).
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationRow {
    pub id: String,
    pub source: String,
    pub gpu: String,
    pub model: String,
    pub precision: String,
    pub engine: String,
    /// `sharegpt` (wide length distributions) or `random` (fixed lengths).
    pub dataset: String,
    pub input_tokens_mean: f64,
    pub output_tokens_mean: f64,
    pub load: Load,
    pub num_requests: u32,
    pub max_num_batched_tokens: Option<u32>,
    pub max_num_seqs: Option<u32>,
    pub lora_adapters: u32,
    pub lora_share: f64,
    pub max_loras: Option<u32>,
    pub gpu_memory_utilization: Option<f64>,
    pub prefix_cache_hit_rate: Option<f64>,
    pub measured: RunMetrics,
}

/// The replay of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationResult {
    pub id: String,
    /// The prediction, or why the row could not run.
    pub predicted: Result<RunMetrics, String>,
    pub measured: RunMetrics,
    /// What the replay's engine did (KV capacity, preemptions, batch sizes).
    pub engine: Option<ReplayStats>,
}

/// Engine-side facts of a replay, to explain its prediction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReplayStats {
    pub kv_cache_tokens: u64,
    pub max_num_batched_tokens: u32,
    pub max_num_seqs: u32,
    pub steps: u64,
    pub preemptions: u64,
    /// Mean sequences per step.
    pub mean_batch: f64,
    pub max_batch: u32,
    /// Mean duration of a step, ms.
    pub mean_step_ms: f64,
    /// Most KV-cache tokens in use at once.
    pub peak_kv_tokens: u64,
}

impl CalibrationResult {
    /// Relative error (predicted − measured) / measured per metric, where both exist.
    pub fn errors(&self) -> [(&'static str, Option<f64>); 6] {
        let p = self.predicted.as_ref().ok().copied().unwrap_or_default();
        let m = self.measured.fields();
        let mut out = p.fields();
        for (o, (_, mv)) in out.iter_mut().zip(m) {
            o.1 = match (o.1, mv) {
                (Some(p), Some(m)) if m != 0.0 => Some((p - m) / m),
                _ => None,
            };
        }
        out
    }
}

/// A malformed calibration file.
#[derive(Debug, thiserror::Error)]
#[error("calibration row {row}: {message}")]
pub struct RowError {
    /// 1-based data row number (0 for the header).
    pub row: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    id: String,
    #[serde(default)]
    source: String,
    gpu: String,
    model: String,
    precision: String,
    #[serde(default)]
    engine: String,
    dataset: String,
    input_tokens_mean: f64,
    output_tokens_mean: f64,
    load: String,
    load_value: f64,
    num_requests: u32,
    max_num_batched_tokens: Option<u32>,
    max_num_seqs: Option<u32>,
    lora_adapters: Option<u32>,
    lora_share: Option<f64>,
    max_loras: Option<u32>,
    output_tok_s: Option<f64>,
    ttft_mean_ms: Option<f64>,
    ttft_p99_ms: Option<f64>,
    tpot_mean_ms: Option<f64>,
    itl_p50_ms: Option<f64>,
    itl_p99_ms: Option<f64>,
    gpu_memory_utilization: Option<f64>,
    prefix_cache_hit_rate: Option<f64>,
}

/// Parses calibration CSV text (header row first; empty cells are "not stated").
pub fn parse_rows(text: &str) -> Result<Vec<CalibrationRow>, RowError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (i, rec) in reader.deserialize::<RawRow>().enumerate() {
        let err = |message: String| RowError {
            row: i + 1,
            message,
        };
        let r = rec.map_err(|e| err(e.to_string()))?;
        let load = match r.load.as_str() {
            "poisson_rps" if r.load_value > 0.0 => Load::PoissonRps(r.load_value),
            "closed_concurrency" if r.load_value >= 1.0 => {
                Load::ClosedConcurrency(r.load_value as u32)
            }
            "burst" => Load::Burst,
            other => {
                return Err(err(format!(
                    "load `{other}` with load_value {} (expected poisson_rps > 0, \
                     closed_concurrency >= 1 or burst)",
                    r.load_value
                )));
            }
        };
        if r.input_tokens_mean < 1.0 || r.output_tokens_mean < 1.0 || r.num_requests == 0 {
            return Err(err("token means and num_requests must be positive".into()));
        }
        let num_requests = match load {
            Load::Burst if r.load_value >= 1.0 => r.load_value as u32,
            _ => r.num_requests,
        };
        rows.push(CalibrationRow {
            id: r.id,
            source: r.source,
            gpu: r.gpu,
            model: r.model,
            precision: r.precision,
            engine: r.engine,
            dataset: r.dataset,
            input_tokens_mean: r.input_tokens_mean,
            output_tokens_mean: r.output_tokens_mean,
            load,
            num_requests,
            max_num_batched_tokens: r.max_num_batched_tokens,
            max_num_seqs: r.max_num_seqs,
            lora_adapters: r.lora_adapters.unwrap_or(0),
            lora_share: r.lora_share.unwrap_or(0.0).clamp(0.0, 1.0),
            max_loras: r.max_loras,
            gpu_memory_utilization: r.gpu_memory_utilization,
            prefix_cache_hit_rate: r.prefix_cache_hit_rate.map(|h| h.clamp(0.0, 1.0)),
            measured: RunMetrics {
                output_tok_s: r.output_tok_s,
                ttft_mean_ms: r.ttft_mean_ms,
                ttft_p99_ms: r.ttft_p99_ms,
                tpot_mean_ms: r.tpot_mean_ms,
                itl_p50_ms: r.itl_p50_ms,
                itl_p99_ms: r.itl_p99_ms,
            },
        });
    }
    Ok(rows)
}

/// Replays every row; a row that cannot run carries the reason and the others still run.
pub fn calibrate(rows: &[CalibrationRow]) -> Vec<CalibrationResult> {
    rows.iter()
        .map(|r| {
            let (predicted, engine) = match replay(r) {
                Ok((m, s)) => (Ok(m), Some(s)),
                Err(e) => (Err(e.to_string()), None),
            };
            CalibrationResult {
                id: r.id.clone(),
                predicted,
                measured: r.measured,
                engine,
            }
        })
        .collect()
}

/// Median of |relative error| per metric over the results that have both values.
pub fn median_abs_errors(results: &[CalibrationResult]) -> [(&'static str, Option<f64>); 6] {
    let mut out = RunMetrics::default().fields();
    for (k, slot) in out.iter_mut().enumerate() {
        let mut v: Vec<f64> = results
            .iter()
            .filter_map(|r| r.errors()[k].1.map(f64::abs))
            .collect();
        v.sort_by(f64::total_cmp);
        slot.1 = match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        };
    }
    out
}

/// One request of a replay.
#[derive(Debug, Clone)]
struct Job {
    prompt: u32,
    output: u32,
    lora: Option<String>,
    hashes: Vec<u64>,
}

fn row_seed(row: &CalibrationRow) -> u64 {
    let mut h = DefaultHasher::new();
    row.id.hash(&mut h);
    h.finish()
}

fn engine_for(row: &CalibrationRow) -> Result<(EngineConfig, Engine), SimError> {
    let mut cfg = EngineConfig {
        gpu: row.gpu.clone(),
        model: row.model.clone(),
        precision: row.precision.clone(),
        max_num_batched_tokens: row.max_num_batched_tokens,
        max_num_seqs: row.max_num_seqs,
        gpu_memory_utilization: row.gpu_memory_utilization.unwrap_or(0.9),
        ..Default::default()
    };
    if row.lora_adapters > 0 && row.lora_share > 0.0 {
        cfg.enable_lora = true;
        cfg.max_loras = row.max_loras.unwrap_or(1).max(1);
        cfg.max_cpu_loras = Some(row.lora_adapters.max(cfg.max_loras));
        cfg.lora_modules = (0..row.lora_adapters)
            .map(|i| LoraModule {
                name: format!("lora-{i}"),
                path: format!("/adapters/lora-{i}"),
                rank: None,
            })
            .collect();
    }
    // A benchmark that cannot hold the model's full context passes a smaller --max-model-len;
    // try the model's own limit first, then the usual smaller settings.
    let mut last = None;
    for len in [None, Some(32_768), Some(16_384), Some(8_192), Some(4_096)] {
        let try_cfg = EngineConfig {
            max_model_len: len,
            ..cfg.clone()
        };
        let spec = match try_cfg.resolve() {
            Ok(s) => s,
            Err(SimError::Config {
                field: "max_model_len",
                ..
            }) => continue,
            Err(e) => return Err(e),
        };
        match memory::plan_spec(&spec) {
            Ok(plan) => {
                let catalog = Catalog::get()?;
                return Ok((try_cfg, Engine::new(&spec, &plan, catalog.lora)));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| SimError::config("max_model_len", "no setting fits")))
}

/// Draws `n` lengths around `mean`: fixed for `random`, log-normal for ShareGPT-like data.
fn lengths(row: &CalibrationRow, rng: &mut StdRng) -> Result<Vec<(u32, u32)>, SimError> {
    let n = row.num_requests as usize;
    if row.dataset.eq_ignore_ascii_case("random") {
        let p = row.input_tokens_mean.round().max(1.0) as u32;
        let o = row.output_tokens_mean.round().max(1.0) as u32;
        return Ok(vec![(p, o); n]);
    }
    const SIGMA_IN: f64 = 1.0;
    let din = LogNormal::new(
        row.input_tokens_mean.ln() - SIGMA_IN * SIGMA_IN / 2.0,
        SIGMA_IN,
    )
    .map_err(|e| SimError::config("dataset", e.to_string()))?;
    // Answers are generated by the model until its end-of-sequence token: less heavy-tailed
    // than the human prompts. Gamma with shape 2 (coefficient of variation 0.71); heavier
    // tails (shape 1, or log-normal) stretch the last completion and cut the published
    // throughput rows by 13-40 %, so the published runs themselves argue for this shape.
    const SHAPE_OUT: f64 = 2.0;
    let dout = Gamma::new(SHAPE_OUT, row.output_tokens_mean / SHAPE_OUT)
        .map_err(|e| SimError::config("dataset", e.to_string()))?;
    let raw: Vec<(f64, f64)> = (0..n)
        .map(|_| (din.sample(rng), dout.sample(rng)))
        .collect();
    // vllm bench's ShareGPT filter, then rescale so the sample means hit the row's means.
    let (mut si, mut so) = (1.0, 1.0);
    let mut out = Vec::with_capacity(n);
    for _ in 0..4 {
        out = raw
            .iter()
            .map(|(i, o)| {
                let p = (i * si).round().clamp(4.0, 1024.0);
                let q = (o * so).round().clamp(4.0, (2048.0 - p).max(4.0));
                (p as u32, q as u32)
            })
            .collect();
        let mi = out.iter().map(|x| f64::from(x.0)).sum::<f64>() / n.max(1) as f64;
        let mo = out.iter().map(|x| f64::from(x.1)).sum::<f64>() / n.max(1) as f64;
        si *= row.input_tokens_mean / mi;
        so *= row.output_tokens_mean / mo;
    }
    Ok(out)
}

fn jobs(row: &CalibrationRow, rng: &mut StdRng) -> Result<Vec<Job>, SimError> {
    let lens = lengths(row, rng)?;
    let hit = row.prefix_cache_hit_rate.unwrap_or(0.0);
    Ok(lens
        .into_iter()
        .enumerate()
        .map(|(i, (prompt, output))| {
            let lora = (row.lora_adapters > 0 && rng.random::<f64>() < row.lora_share)
                .then(|| format!("lora-{}", rng.random_range(0..row.lora_adapters)));
            let shared = ((f64::from(prompt) * hit).round() as u32).min(prompt);
            let mut segments = Vec::new();
            if shared > 0 {
                segments.push(PromptSegment {
                    id: 1,
                    tokens: shared,
                });
            }
            if prompt > shared {
                segments.push(PromptSegment {
                    id: 1_000 + i as u64,
                    tokens: prompt - shared,
                });
            }
            Job {
                prompt,
                output,
                lora,
                hashes: block_hashes(&segments, BLOCK_SIZE),
            }
        })
        .collect())
}

#[derive(Default)]
struct Track {
    arrival: Duration,
    tokens: Vec<Duration>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // numpy's default (linear interpolation), as vllm bench uses.
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Independent workload draws averaged per row: one 200-request sample's longest answers
/// swing throughput by ±15 %, which is sampling noise, not engine behaviour.
pub const REPLICAS: u64 = 4;

/// Replays one row in virtual time: [`REPLICAS`] seeded workloads, metrics averaged.
pub fn replay(row: &CalibrationRow) -> Result<(RunMetrics, ReplayStats), SimError> {
    let mut runs = Vec::new();
    for k in 0..REPLICAS {
        runs.push(replay_once(row, row_seed(row).wrapping_add(k))?);
    }
    let avg = |f: fn(&RunMetrics) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(|(m, _)| f(m)).collect();
        mean(&v)
    };
    let metrics = RunMetrics {
        output_tok_s: avg(|m| m.output_tok_s),
        ttft_mean_ms: avg(|m| m.ttft_mean_ms),
        ttft_p99_ms: avg(|m| m.ttft_p99_ms),
        tpot_mean_ms: avg(|m| m.tpot_mean_ms),
        itl_p50_ms: avg(|m| m.itl_p50_ms),
        itl_p99_ms: avg(|m| m.itl_p99_ms),
    };
    let stats = runs.first().map(|r| r.1).unwrap_or_default();
    Ok((metrics, stats))
}

/// Replays one seeded workload of a row.
pub fn replay_once(row: &CalibrationRow, seed: u64) -> Result<(RunMetrics, ReplayStats), SimError> {
    let (cfg, mut engine) = engine_for(row)?;
    let spec = cfg.resolve()?;
    let mut rs = ReplayStats {
        kv_cache_tokens: engine.kv_capacity_tokens(),
        max_num_batched_tokens: spec.max_num_batched_tokens,
        max_num_seqs: spec.max_num_seqs,
        ..Default::default()
    };
    let mut batch_sum = 0u64;
    let mut step_sum = 0.0;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pending: VecDeque<Job> = jobs(row, &mut rng)?.into();
    let capacity = engine.kv_capacity_tokens();
    // Arrival times for open-loop and burst loads.
    let mut arrivals: VecDeque<Duration> = VecDeque::new();
    let mut in_flight_limit = usize::MAX;
    match row.load {
        Load::PoissonRps(rate) => {
            let exp = Exp::new(rate).map_err(|e| SimError::config("load_value", e.to_string()))?;
            let gaps: Vec<f64> = (1..pending.len()).map(|_| exp.sample(&mut rng)).collect();
            // Rescale so the realised rate is the nominal one: a 200-request sample otherwise
            // drifts by ±7 %, which would show up as throughput error that no engine
            // mechanism explains.
            let total: f64 = gaps.iter().sum();
            let scale = if total > 0.0 {
                gaps.len() as f64 / rate / total
            } else {
                1.0
            };
            let mut t = 0.0;
            arrivals.push_back(Duration::ZERO);
            for g in gaps {
                t += g * scale;
                arrivals.push_back(Duration::from_secs_f64(t));
            }
        }
        Load::Burst => arrivals.extend(std::iter::repeat_n(Duration::ZERO, pending.len())),
        Load::ClosedConcurrency(c) => in_flight_limit = c as usize,
    }
    let mut tracks: HashMap<SeqId, Track> = HashMap::new();
    let mut done: Vec<Track> = Vec::new();
    let mut next_id: SeqId = 0;
    let mut in_flight = 0usize;
    let mut now = Duration::ZERO;
    let mut submit =
        |engine: &mut Engine, job: Job, at: Duration, tracks: &mut HashMap<SeqId, Track>| {
            let id = next_id;
            next_id += 1;
            // Keep each request inside the KV cache, as vllm bench's filter keeps it in context.
            let prompt = job.prompt.min(capacity.saturating_sub(2) as u32).max(1);
            let output = job
                .output
                .min((capacity as u32).saturating_sub(prompt))
                .max(1);
            let req = SeqRequest {
                id,
                prompt_tokens: prompt,
                max_tokens: output,
                lora: job.lora,
                block_hashes: job.hashes,
                arrival: at,
            };
            if engine.add(req).is_ok() {
                tracks.insert(
                    id,
                    Track {
                        arrival: at,
                        tokens: Vec::new(),
                    },
                );
                true
            } else {
                false
            }
        };
    loop {
        // Admit everything that has arrived by now.
        if in_flight_limit == usize::MAX {
            while arrivals.front().is_some_and(|t| *t <= now) {
                let (Some(t), Some(job)) = (arrivals.pop_front(), pending.pop_front()) else {
                    break;
                };
                if submit(&mut engine, job, t, &mut tracks) {
                    in_flight += 1;
                }
            }
        } else {
            while in_flight < in_flight_limit {
                let Some(job) = pending.pop_front() else {
                    break;
                };
                if submit(&mut engine, job, now, &mut tracks) {
                    in_flight += 1;
                }
            }
        }
        match engine.step(now) {
            Some(o) => {
                let end = o.end();
                batch_sum += u64::from(o.shape.seqs);
                rs.max_batch = rs.max_batch.max(o.shape.seqs);
                rs.peak_kv_tokens = rs.peak_kv_tokens.max(engine.kv_used_tokens());
                step_sum += o.duration.as_secs_f64() * 1e3;
                for e in &o.emitted {
                    if let Some(t) = tracks.get_mut(&e.seq) {
                        t.tokens.push(end);
                    }
                    if e.finished
                        && let Some(t) = tracks.remove(&e.seq)
                    {
                        done.push(t);
                        in_flight = in_flight.saturating_sub(1);
                    }
                }
                now = end;
            }
            None => match arrivals.front() {
                Some(t) => now = now.max(*t),
                None => break,
            },
        }
    }
    let st = engine.stats();
    rs.steps = st.steps_total;
    rs.preemptions = st.preemptions_total;
    if rs.steps > 0 {
        rs.mean_batch = batch_sum as f64 / rs.steps as f64;
        rs.mean_step_ms = step_sum / rs.steps as f64;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let first = done.iter().map(|t| t.arrival).min().unwrap_or_default();
    let last = done
        .iter()
        .filter_map(|t| t.tokens.last().copied())
        .max()
        .unwrap_or_default();
    let total_out: usize = done.iter().map(|t| t.tokens.len()).sum();
    let mut ttft: Vec<f64> = done
        .iter()
        .filter_map(|t| t.tokens.first().map(|f| ms(*f - t.arrival)))
        .collect();
    let tpot: Vec<f64> = done
        .iter()
        .filter(|t| t.tokens.len() > 1)
        .filter_map(|t| {
            let (f, l) = (t.tokens.first()?, t.tokens.last()?);
            Some(ms(*l - *f) / (t.tokens.len() - 1) as f64)
        })
        .collect();
    let mut itl: Vec<f64> = done
        .iter()
        .flat_map(|t| t.tokens.windows(2).map(|w| ms(w[1] - w[0])))
        .collect();
    ttft.sort_by(f64::total_cmp);
    itl.sort_by(f64::total_cmp);
    let span = (last.saturating_sub(first)).as_secs_f64();
    Ok((
        RunMetrics {
            output_tok_s: (span > 0.0).then(|| total_out as f64 / span),
            ttft_mean_ms: mean(&ttft),
            ttft_p99_ms: percentile(&ttft, 99.0),
            tpot_mean_ms: mean(&tpot),
            itl_p50_ms: percentile(&itl, 50.0),
            itl_p99_ms: percentile(&itl, 99.0),
        },
        rs,
    ))
}

/// A terminal table of predicted vs measured per row and metric, with the relative error, and
/// the median absolute error per metric at the end.
pub fn render_table(results: &[CalibrationResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let names = RunMetrics::default().fields().map(|(n, _)| n);
    let _ = write!(out, "{:<5}", "row");
    for n in names {
        let _ = write!(out, " {n:>26}");
    }
    out.push('\n');
    for r in results {
        let _ = write!(out, "{:<5}", r.id);
        match &r.predicted {
            Err(reason) => {
                let _ = write!(out, " not run: {reason}");
            }
            Ok(p) => {
                for (((_, pv), (_, mv)), (_, e)) in
                    p.fields().iter().zip(r.measured.fields()).zip(r.errors())
                {
                    let cell = match (pv, mv, e) {
                        (Some(p), Some(m), Some(e)) => {
                            format!("{p:.1} vs {m:.1} ({:+.0}%)", e * 100.0)
                        }
                        (Some(p), None, _) => format!("{p:.1} (not measured)"),
                        _ => "-".to_string(),
                    };
                    let _ = write!(out, " {cell:>26}");
                }
            }
        }
        out.push('\n');
    }
    let _ = write!(out, "{:<5}", "MdAE");
    for (_, e) in median_abs_errors(results) {
        let cell = e.map_or("-".to_string(), |e| format!("{:.1}%", e * 100.0));
        let _ = write!(out, " {cell:>26}");
    }
    out.push('\n');
    out
}

/// The input CSV with `pred_*` columns appended, one per metric (empty where the row did not
/// run or the metric has no prediction). `input` is the text the rows were parsed from.
pub fn predictions_csv(input: &str, results: &[CalibrationResult]) -> Result<String, RowError> {
    let csv_err = |row: usize| {
        move |e: csv::Error| RowError {
            row,
            message: e.to_string(),
        }
    };
    let mut reader = csv::ReaderBuilder::new().from_reader(input.as_bytes());
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = reader
        .headers()
        .map_err(csv_err(0))?
        .iter()
        .map(String::from)
        .collect();
    header.extend(
        RunMetrics::default()
            .fields()
            .map(|(n, _)| format!("pred_{n}")),
    );
    writer.write_record(&header).map_err(csv_err(0))?;
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(csv_err(i + 1))?;
        let mut row: Vec<String> = rec.iter().map(String::from).collect();
        let predicted = results.get(i).and_then(|r| r.predicted.as_ref().ok());
        for (_, v) in predicted.copied().unwrap_or_default().fields() {
            row.push(v.map_or(String::new(), |v| format!("{v:.3}")));
        }
        writer.write_record(&row).map_err(csv_err(i + 1))?;
    }
    let bytes = writer.into_inner().map_err(|e| RowError {
        row: 0,
        message: e.to_string(),
    })?;
    String::from_utf8(bytes).map_err(|e| RowError {
        row: 0,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "id,source,gpu,model,precision,engine,dataset,input_tokens_mean,output_tokens_mean,load,load_value,num_requests,max_num_batched_tokens,max_num_seqs,lora_adapters,lora_share,max_loras,output_tok_s,ttft_mean_ms,ttft_p99_ms,tpot_mean_ms,itl_p50_ms,itl_p99_ms,gpu_memory_utilization,prefix_cache_hit_rate";

    #[test]
    fn rows_parse_and_bad_rows_name_their_number() {
        let ok = format!(
            "{HEADER}\nX1,src,rtx-5090,qwen3-8b,bf16,vllm,random,100,50,burst,20,20,,,0,0,,1000,,,,,,,\n"
        );
        let rows = parse_rows(&ok);
        let Ok(rows) = rows else {
            panic!("{:?}", rows.err())
        };
        assert_eq!(rows[0].load, Load::Burst);
        assert_eq!(rows[0].measured.output_tok_s, Some(1000.0));
        let bad = format!(
            "{HEADER}\nX1,src,rtx-5090,qwen3-8b,bf16,vllm,random,100,50,sideways,1,20,,,0,0,,,,,,,,,\n"
        );
        assert_eq!(parse_rows(&bad).err().map(|e| e.row), Some(1));
    }

    #[test]
    fn sharegpt_lengths_are_wide_but_keep_the_means() {
        let text = format!(
            "{HEADER}\nS,src,rtx-4090,llama-3-8b-instruct,fp16,vllm,sharegpt,206,210,poisson_rps,1,400,,,0,0,,,,,,,,,\n"
        );
        let Ok(rows) = parse_rows(&text) else {
            panic!("parse")
        };
        let mut rng = StdRng::seed_from_u64(1);
        let Ok(l) = lengths(&rows[0], &mut rng) else {
            panic!("lengths")
        };
        let mi = l.iter().map(|x| f64::from(x.0)).sum::<f64>() / l.len() as f64;
        let mo = l.iter().map(|x| f64::from(x.1)).sum::<f64>() / l.len() as f64;
        assert!(
            (mi - 206.0).abs() < 5.0 && (mo - 210.0).abs() < 5.0,
            "{mi} {mo}"
        );
        let mut outs: Vec<u32> = l.iter().map(|x| x.1).collect();
        outs.sort();
        assert!(
            outs[outs.len() / 2] < 180,
            "median below the mean: heavy tail"
        );
        assert!(l.iter().all(|(p, o)| *p <= 1024 && p + o <= 2048));
    }

    #[test]
    fn an_unknown_gpu_is_reported_and_the_other_rows_still_run() {
        let text = format!(
            "{HEADER}\nA,src,tpu-v9,qwen3-8b,bf16,vllm,random,100,20,burst,10,10,,,0,0,,,,,,,,,\n\
             B,src,rtx-5090,qwen3-8b,bf16,vllm,random,100,20,burst,10,10,,,0,0,,,,,,,,,\n"
        );
        let Ok(rows) = parse_rows(&text) else {
            panic!("parse")
        };
        let res = calibrate(&rows);
        assert!(
            res[0]
                .predicted
                .as_ref()
                .is_err_and(|e| e.contains("tpu-v9"))
        );
        let Ok(p) = &res[1].predicted else {
            panic!("{:?}", res[1].predicted)
        };
        assert!(p.output_tok_s.is_some_and(|t| t > 0.0));
        assert!(p.tpot_mean_ms.is_some_and(|t| t > 5.0));
    }
}
