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
    /// Why the row cannot run (a malformed cell, an impossible load), when it cannot: the row
    /// is kept so that [`calibrate`] reports it in place and the other rows still run.
    pub problem: Option<String>,
}

impl CalibrationRow {
    /// A row that could not be read: everything but its id and the reason is a placeholder.
    fn unusable(id: String, problem: String) -> Self {
        Self {
            id,
            source: String::new(),
            gpu: String::new(),
            model: String::new(),
            precision: String::new(),
            engine: String::new(),
            dataset: String::new(),
            input_tokens_mean: 0.0,
            output_tokens_mean: 0.0,
            load: Load::Burst,
            num_requests: 0,
            max_num_batched_tokens: None,
            max_num_seqs: None,
            lora_adapters: 0,
            lora_share: 0.0,
            max_loras: None,
            gpu_memory_utilization: None,
            prefix_cache_hit_rate: None,
            measured: RunMetrics::default(),
            problem: Some(problem),
        }
    }
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

/// A calibration file that cannot be read at all (no header, broken CSV quoting). Problems of
/// single rows are not errors of the file: they travel in [`CalibrationRow::problem`].
#[derive(Debug, thiserror::Error)]
#[error("calibration row {row}: {message}")]
pub struct RowError {
    /// 1-based data row number (0 for the header).
    pub row: usize,
    pub message: String,
}

// Unknown columns are ignored, not refused (unlike scenario files): the calibration format is
// shared with other tools that add their own columns, and `calibrate --out` writes the input
// back with `pred_*` columns, which must be readable as input again.
#[derive(Deserialize)]
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

/// Parses calibration CSV text (header row first; empty cells are "not stated"; unknown
/// columns are ignored). A row that cannot be used is kept with its [`CalibrationRow::problem`]
/// so that it is reported in place; only a file without a readable header is an error.
pub fn parse_rows(text: &str) -> Result<Vec<CalibrationRow>, RowError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| RowError {
            row: 0,
            message: e.to_string(),
        })?
        .clone();
    let id_col = headers.iter().position(|h| h == "id");
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let n = i + 1;
        let row = match rec {
            Err(e) => CalibrationRow::unusable(format!("row {n}"), format!("row {n}: {e}")),
            Ok(rec) => {
                let id = id_col
                    .and_then(|c| rec.get(c))
                    .filter(|s| !s.is_empty())
                    .map_or_else(|| format!("row {n}"), String::from);
                match rec
                    .deserialize::<RawRow>(Some(&headers))
                    .map_err(|e| describe_csv_error(&e, &headers))
                    .and_then(row_from_raw)
                {
                    Ok(row) => row,
                    Err(message) => CalibrationRow::unusable(id, format!("row {n}: {message}")),
                }
            }
        };
        rows.push(row);
    }
    Ok(rows)
}

/// A deserialisation error naming the column by its header (the csv crate gives an index).
fn describe_csv_error(e: &csv::Error, headers: &csv::StringRecord) -> String {
    if let csv::ErrorKind::Deserialize { err, .. } = e.kind() {
        let column = err
            .field()
            .and_then(|f| usize::try_from(f).ok())
            .and_then(|f| headers.get(f));
        if let Some(column) = column {
            return format!("column `{column}`: {}", err.kind());
        }
    }
    e.to_string()
}

fn row_from_raw(r: RawRow) -> Result<CalibrationRow, String> {
    let load = match r.load.as_str() {
        "poisson_rps" if r.load_value > 0.0 => Load::PoissonRps(r.load_value),
        "closed_concurrency" if r.load_value >= 1.0 => Load::ClosedConcurrency(r.load_value as u32),
        "burst" => Load::Burst,
        other => {
            return Err(format!(
                "load `{other}` with load_value {} (expected poisson_rps > 0, \
                 closed_concurrency >= 1 or burst)",
                r.load_value
            ));
        }
    };
    if r.input_tokens_mean < 1.0 || r.output_tokens_mean < 1.0 || r.num_requests == 0 {
        return Err("token means and num_requests must be positive".into());
    }
    let num_requests = match load {
        Load::Burst if r.load_value >= 1.0 => r.load_value as u32,
        _ => r.num_requests,
    };
    Ok(CalibrationRow {
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
        problem: None,
    })
}

/// Replays every row; a row that cannot run carries the reason and the others still run.
pub fn calibrate(rows: &[CalibrationRow]) -> Vec<CalibrationResult> {
    rows.iter()
        .map(|r| {
            let (predicted, engine) = match &r.problem {
                Some(p) => (Err(p.clone()), None),
                None => match replay(r) {
                    Ok((m, s)) => (Ok(m), Some(s)),
                    Err(e) => (Err(describe_replay_error(&e)), None),
                },
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

/// Why a row could not be replayed, worded for the reader of the file: a catalogue look-up
/// that failed names the column it came from (`gpu`, `model` and `precision` are both column
/// names and catalogue kinds); engine settings already name theirs.
fn describe_replay_error(e: &SimError) -> String {
    match e {
        SimError::UnknownCatalogEntry { kind, .. } => format!("column `{kind}`: {e}"),
        _ => e.to_string(),
    }
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
/// run or the metric has no prediction). `input` is the text the rows were parsed from, and
/// `results` are in its row order. `pred_*` columns already in the input (a file written by
/// `--out` and fed back in) are replaced, not duplicated.
pub fn predictions_csv(input: &str, results: &[CalibrationResult]) -> Result<String, RowError> {
    let csv_err = |row: usize| {
        move |e: csv::Error| RowError {
            row,
            message: e.to_string(),
        }
    };
    let pred_names = RunMetrics::default()
        .fields()
        .map(|(n, _)| format!("pred_{n}"));
    // Rows with a wrong number of cells are reported by `parse_rows`; here they pass through.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(input.as_bytes());
    let mut writer = csv::WriterBuilder::new()
        .flexible(true)
        .from_writer(Vec::new());
    let in_header = reader.headers().map_err(csv_err(0))?.clone();
    let keep: Vec<bool> = in_header
        .iter()
        .map(|h| !pred_names.iter().any(|p| p == h.trim()))
        .collect();
    let kept = |rec: &csv::StringRecord| -> Vec<String> {
        rec.iter()
            .enumerate()
            .filter(|(i, _)| keep.get(*i).copied().unwrap_or(true))
            .map(|(_, v)| v.to_string())
            .collect()
    };
    let mut header = kept(&in_header);
    header.extend(pred_names.iter().cloned());
    writer.write_record(&header).map_err(csv_err(0))?;
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(csv_err(i + 1))?;
        let mut row = kept(&rec);
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
            "{HEADER}\nX1,src,rtx-5090,qwen3-8b,bf16,vllm,random,100,50,sideways,1,20,,,0,0,,,,,,,,,\n\
             X2,src,rtx-5090,qwen3-8b,bf16,vllm,random,many,50,burst,1,20,,,0,0,,,,,,,,,\n"
        );
        let Ok(rows) = parse_rows(&bad) else {
            panic!("a bad row must not reject the file")
        };
        let p0 = rows[0].problem.clone().unwrap_or_default();
        assert!(p0.contains("row 1") && p0.contains("sideways"), "{p0}");
        let p1 = rows[1].problem.clone().unwrap_or_default();
        assert!(
            p1.contains("row 2") && p1.contains("input_tokens_mean"),
            "{p1}"
        );
        assert_eq!(rows[1].id, "X2");
        let res = calibrate(&rows);
        assert!(res[0].predicted.as_ref().is_err_and(|e| *e == p0));
    }

    /// `calibrate --out` output: the six `pred_*` columns once each, and the file reads back as
    /// the same rows (unknown columns are ignored), so it can be fed in again.
    #[test]
    fn predictions_csv_has_the_pred_columns_and_round_trips() {
        let text = format!(
            "{HEADER},notes\n\
             R1,src,rtx-5090,qwen3-8b,bf16,vllm,random,64,8,burst,4,4,,,0,0,,500,40,60,8,8,9,,,first\n\
             R2,src,tpu-v9,qwen3-8b,bf16,vllm,random,64,8,burst,4,4,,,0,0,,,,,,,,,,second\n"
        );
        let Ok(rows) = parse_rows(&text) else {
            panic!("extra column refused")
        };
        let res = calibrate(&rows);
        let out = match predictions_csv(&text, &res) {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        };
        let mut reader = csv::Reader::from_reader(out.as_bytes());
        let Ok(header) = reader.headers().cloned() else {
            panic!("header")
        };
        let preds = [
            "pred_output_tok_s",
            "pred_ttft_mean_ms",
            "pred_ttft_p99_ms",
            "pred_tpot_mean_ms",
            "pred_itl_p50_ms",
            "pred_itl_p99_ms",
        ];
        for p in preds {
            assert_eq!(
                header.iter().filter(|h| *h == p).count(),
                1,
                "{p}: {header:?}"
            );
        }
        let records: Vec<csv::StringRecord> = reader.records().filter_map(Result::ok).collect();
        assert_eq!(records.len(), 2);
        let col = |name: &str| header.iter().position(|h| h == name).unwrap_or(usize::MAX);
        let tok_s = records[0]
            .get(col("pred_output_tok_s"))
            .and_then(|v| v.parse::<f64>().ok());
        let Ok(p) = &res[0].predicted else {
            panic!("{:?}", res[0].predicted)
        };
        assert!(
            tok_s
                .zip(p.output_tok_s)
                .is_some_and(|(a, b)| (a - b).abs() < 1e-3),
            "{tok_s:?}"
        );
        assert_eq!(
            records[1].get(col("pred_output_tok_s")),
            Some(""),
            "not run: empty"
        );

        let Ok(again) = parse_rows(&out) else {
            panic!("--out output refused as input")
        };
        assert_eq!(again, rows);
        let Ok(twice) = predictions_csv(&out, &res) else {
            panic!("second pass")
        };
        assert_eq!(twice, out, "pred_* columns are replaced, not duplicated");
    }

    /// The ShareGPT-like draws keep the row's means and have the shapes `lengths` documents.
    /// The bounds come from the distributions, not from one sample: Gamma(shape 2) has
    /// median / mean = 0.839 and log-normal(σ = 1) has exp(−σ²/2) = 0.607 (before the cut at
    /// 1,024 and the rescale, which move them by a few per cent). With 20,000 draws the sample
    /// median's standard error is under 1 % of the mean, so ±0.06 around those ratios holds
    /// for any seed, while a symmetric (ratio ≈ 1) or much heavier tail fails.
    #[test]
    fn sharegpt_lengths_are_wide_but_keep_the_means() {
        let text = format!(
            "{HEADER}\nS,src,rtx-4090,llama-3-8b-instruct,fp16,vllm,sharegpt,206,210,poisson_rps,1,20000,,,0,0,,,,,,,,,\n"
        );
        let Ok(rows) = parse_rows(&text) else {
            panic!("parse")
        };
        for seed in [1, 2, 3] {
            let mut rng = StdRng::seed_from_u64(seed);
            let Ok(l) = lengths(&rows[0], &mut rng) else {
                panic!("lengths")
            };
            let n = l.len() as f64;
            let mi = l.iter().map(|x| f64::from(x.0)).sum::<f64>() / n;
            let mo = l.iter().map(|x| f64::from(x.1)).sum::<f64>() / n;
            assert!(
                (mi - 206.0).abs() < 2.0 && (mo - 210.0).abs() < 2.0,
                "seed {seed}: means {mi} {mo}"
            );
            let median = |mut v: Vec<u32>| {
                v.sort_unstable();
                f64::from(v[v.len() / 2])
            };
            let out_ratio = median(l.iter().map(|x| x.1).collect()) / mo;
            let in_ratio = median(l.iter().map(|x| x.0).collect()) / mi;
            assert!(
                (0.78..=0.90).contains(&out_ratio),
                "seed {seed}: output median/mean {out_ratio:.3}, Gamma(2) gives 0.839"
            );
            assert!(
                (0.55..=0.72).contains(&in_ratio),
                "seed {seed}: prompt median/mean {in_ratio:.3}, log-normal(1) gives 0.607"
            );
            assert!(
                l.iter()
                    .all(|(p, o)| *p >= 4 && *o >= 4 && *p <= 1024 && p + o <= 2048)
            );
        }
    }

    #[test]
    fn an_unknown_gpu_is_reported_and_the_other_rows_still_run() {
        let text = format!(
            "{HEADER}\nA,src,tpu-v9,qwen3-8b,bf16,vllm,random,100,20,burst,10,10,,,0,0,,,,,,,,,\n\
             B,src,rtx-5090,qwen3-8b,bf16,vllm,random,100,20,burst,10,10,,,0,0,,,,,,,,,\n\
             C,src,rtx-5090,llama-9-400b,bf16,vllm,random,100,20,burst,10,10,,,0,0,,,,,,,,,\n"
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
        assert!(
            res[2]
                .predicted
                .as_ref()
                .is_err_and(|e| e.contains("unknown model") && e.contains("llama-9-400b")),
            "{:?}",
            res[2].predicted
        );
        assert!(render_table(&res).contains("not run: column `gpu`: unknown gpu `tpu-v9`"));
    }
}
