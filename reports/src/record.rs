//! One request as the load generator saw it: its outcome and its timings.
//!
//! The load generator fills a [`RequestRecord`] per request it sends (warm-up included) and hands
//! them all over in a [`crate::RunData`]. Everything else in this crate is derived from these
//! records, so they hold raw measurements only, never aggregates.

use serde::{Deserialize, Serialize};

/// How a request ended. Only [`Outcome::Ok`] requests enter latency distributions; every other
/// outcome is counted and nothing more, so a fast failure can never flatter a percentile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A complete response (for streams: content, then `[DONE]`).
    Ok,
    /// HTTP 429 for a rate limit (RPM, TPM or parallel requests).
    RateLimited,
    /// Refused because the tenant's budget is spent.
    BudgetExceeded,
    /// Any other 4xx.
    ClientError,
    /// 5xx, or no HTTP response at all (connection refused or reset).
    ServerError,
    /// The client gave up waiting.
    Timeout,
    /// An error event inside a 200 stream.
    StreamError,
    /// The stream closed without `[DONE]`.
    Truncated,
}

impl Outcome {
    /// Every outcome, in the order tables and CSV columns list them.
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::RateLimited,
        Outcome::BudgetExceeded,
        Outcome::ClientError,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::StreamError,
        Outcome::Truncated,
    ];

    /// The snake_case name used in `summary.json`, the CSV files and gate metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::RateLimited => "rate_limited",
            Outcome::BudgetExceeded => "budget_exceeded",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::StreamError => "stream_error",
            Outcome::Truncated => "truncated",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request. Times are milliseconds since the run's t0 (the start of the warm-up); latencies
/// are milliseconds measured from the *intended* start, so a late scheduler shows up as latency
/// instead of hiding it (coordinated-omission correction, as wrk2 does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Unique within the run.
    pub id: u64,
    /// The tenant's id.
    pub tenant: String,
    /// The tenant's group in the scenario.
    pub group: String,
    /// The model name the request asked for.
    pub model: String,
    /// How it ended.
    pub outcome: Outcome,
    /// HTTP status; 0 when there was none (connect failure, timeout before headers).
    pub status: u16,
    /// Sent during warm-up: listed in `requests.csv`, excluded from every statistic.
    pub warmup: bool,
    /// When the schedule wanted it sent, ms since t0.
    pub intended_start_ms: f64,
    /// When the send actually began, ms since t0.
    pub actual_start_ms: f64,
    /// When the scheduler released the request (its pacer woke), ms since t0. Scheduler
    /// lateness = dispatched − intended; client-side queueing = actual − dispatched (waiting for
    /// a runtime worker to start the send). Absent in records written before it existed.
    #[serde(default)]
    pub dispatched_ms: Option<f64>,
    /// Time to the first generated token on any channel, from the intended start.
    pub ttft_ms: Option<f64>,
    /// Time to the first content token, from the intended start.
    pub ttfc_ms: Option<f64>,
    /// (e2e − ttft) / (output_tokens − 1).
    pub tpot_ms: Option<f64>,
    /// Time to the last byte, from the intended start.
    pub e2e_ms: Option<f64>,
    /// Per-token inter-token latencies (a chunk of k tokens contributes k gaps).
    pub itl_ms: Vec<f64>,
    /// Gaps between chunks, apart from the per-token figures.
    pub chunk_gaps_ms: Vec<f64>,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens (from the server's usage when it sent one).
    pub output_tokens: u64,
    /// True when `output_tokens` was counted with a tokenizer because usage was missing.
    pub output_tokens_estimated: bool,
    /// What went wrong, for failures.
    pub error: Option<String>,
}

impl RequestRecord {
    /// How late the scheduler released this request, in ms (negative when early).
    pub fn lateness_ms(&self) -> f64 {
        self.dispatched_ms.unwrap_or(self.actual_start_ms) - self.intended_start_ms
    }

    /// Client-side queueing: from the scheduler's release to the start of the send, in ms.
    pub fn client_queue_ms(&self) -> f64 {
        self.dispatched_ms
            .map_or(0.0, |d| (self.actual_start_ms - d).max(0.0))
    }

    /// A latency re-based from the intended start to the actual send: the uncorrected figure a
    /// closed-loop tool would have reported.
    pub fn raw_ms(&self, corrected_ms: f64) -> f64 {
        corrected_ms - (self.actual_start_ms - self.intended_start_ms)
    }
}
