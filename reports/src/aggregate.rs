//! Per-scope accumulation of request records, and the statistics object read from it.
//!
//! An [`Aggregate`] holds everything a scope (a tenant, a group, the whole run, one interval of
//! one tenant) needs: outcome counts, token sums and one [`Distribution`] per latency metric.
//! Aggregates merge exactly, so groups and the overall figures are built by merging tenants'
//! histograms, never by averaging their percentiles. [`Statistics`] is the JSON shape of a scope
//! in `summary.json` (DESIGN §6); its field names are a contract.

use serde::{Deserialize, Serialize};

use crate::distribution::{Distribution, LatencyStats, round_to};
use crate::record::{Outcome, RequestRecord};

/// Requests per outcome, serialised as an object keyed by [`Outcome::as_str`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Complete responses.
    pub ok: u64,
    /// 429s for rate limits.
    pub rate_limited: u64,
    /// Refused for budget.
    pub budget_exceeded: u64,
    /// Other 4xx.
    pub client_error: u64,
    /// 5xx and connection failures.
    pub server_error: u64,
    /// Client-side timeouts.
    pub timeout: u64,
    /// Error events inside a 200 stream.
    pub stream_error: u64,
    /// Streams without `[DONE]`.
    pub truncated: u64,
}

impl OutcomeCounts {
    /// The count for one outcome.
    pub fn get(&self, outcome: Outcome) -> u64 {
        match outcome {
            Outcome::Ok => self.ok,
            Outcome::RateLimited => self.rate_limited,
            Outcome::BudgetExceeded => self.budget_exceeded,
            Outcome::ClientError => self.client_error,
            Outcome::ServerError => self.server_error,
            Outcome::Timeout => self.timeout,
            Outcome::StreamError => self.stream_error,
            Outcome::Truncated => self.truncated,
        }
    }

    fn slot(&mut self, outcome: Outcome) -> &mut u64 {
        match outcome {
            Outcome::Ok => &mut self.ok,
            Outcome::RateLimited => &mut self.rate_limited,
            Outcome::BudgetExceeded => &mut self.budget_exceeded,
            Outcome::ClientError => &mut self.client_error,
            Outcome::ServerError => &mut self.server_error,
            Outcome::Timeout => &mut self.timeout,
            Outcome::StreamError => &mut self.stream_error,
            Outcome::Truncated => &mut self.truncated,
        }
    }

    /// Adds `n` requests with `outcome`.
    pub fn add(&mut self, outcome: Outcome, n: u64) {
        *self.slot(outcome) += n;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &OutcomeCounts) {
        for o in Outcome::ALL {
            self.add(o, other.get(o));
        }
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        Outcome::ALL.iter().map(|o| self.get(*o)).sum()
    }

    /// Every request that did not succeed.
    pub fn failed(&self) -> u64 {
        self.total() - self.ok
    }
}

/// The latency metrics an [`Aggregate`] keeps, by their `summary.json` names. Used to name the
/// interval-log files and to keep the list in one place.
pub const METRICS: [&str; 10] = [
    "ttft_ms",
    "ttfc_ms",
    "tpot_ms",
    "itl_ms",
    "inter_chunk_ms",
    "e2e_ms",
    "ttft_raw_ms",
    "e2e_raw_ms",
    "schedule_lateness_ms",
    "client_queue_ms",
];

/// Everything measured in one scope, in mergeable form.
#[derive(Debug, Clone, Default)]
pub struct Aggregate {
    /// Requests per outcome (warm-up excluded).
    pub outcomes: OutcomeCounts,
    /// Prompt tokens of successful requests.
    pub input_tokens: u64,
    /// Generated tokens of successful requests.
    pub output_tokens: u64,
    /// Successful requests whose output tokens were estimated by a tokenizer.
    pub estimated_output_requests: u64,
    /// Time to first token, from the intended start (successes only).
    pub ttft: Distribution,
    /// Time to first content token, from the intended start (successes only).
    pub ttfc: Distribution,
    /// Time per output token after the first (successes only).
    pub tpot: Distribution,
    /// Per-token inter-token latency (successes only; one value per token gap).
    pub itl: Distribution,
    /// Inter-chunk latency (successes only; one value per chunk gap).
    pub inter_chunk: Distribution,
    /// End-to-end latency, from the intended start (successes only).
    pub e2e: Distribution,
    /// Time to first token from the actual send (successes only).
    pub ttft_raw: Distribution,
    /// End-to-end latency from the actual send (successes only).
    pub e2e_raw: Distribution,
    /// How late each request was sent, whatever its outcome (early sends count as 0).
    pub schedule_lateness: Distribution,
    /// Client-side queueing: scheduler release to the start of the send, every outcome.
    pub client_queue: Distribution,
    /// Requests judged against an SLO (warm-up excluded, all outcomes).
    pub slo_judged: u64,
    /// Of those, the requests that met every per-request SLO threshold.
    pub slo_met: u64,
}

impl Aggregate {
    /// An empty aggregate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an aggregate from records; warm-up records are skipped.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a RequestRecord>) -> Self {
        let mut agg = Self::new();
        for r in records {
            agg.record(r);
        }
        agg
    }

    /// Adds one record. Warm-up records are ignored; failures are counted but never enter a
    /// latency distribution.
    pub fn record(&mut self, r: &RequestRecord) {
        if r.warmup {
            return;
        }
        self.outcomes.add(r.outcome, 1);
        self.schedule_lateness.record_ms(r.lateness_ms());
        self.client_queue.record_ms(r.client_queue_ms());
        if r.outcome != Outcome::Ok {
            return;
        }
        self.input_tokens += r.input_tokens;
        self.output_tokens += r.output_tokens;
        if r.output_tokens_estimated {
            self.estimated_output_requests += 1;
        }
        if let Some(v) = r.ttft_ms {
            self.ttft.record_ms(v);
            self.ttft_raw.record_ms(r.raw_ms(v));
        }
        if let Some(v) = r.ttfc_ms {
            self.ttfc.record_ms(v);
        }
        if let Some(v) = r.tpot_ms {
            self.tpot.record_ms(v);
        }
        if let Some(v) = r.e2e_ms {
            self.e2e.record_ms(v);
            self.e2e_raw.record_ms(r.raw_ms(v));
        }
        for v in &r.itl_ms {
            self.itl.record_ms(*v);
        }
        for v in &r.chunk_gaps_ms {
            self.inter_chunk.record_ms(*v);
        }
    }

    /// Adds everything of `other`.
    pub fn merge(&mut self, other: &Aggregate) {
        self.outcomes.merge(&other.outcomes);
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.estimated_output_requests += other.estimated_output_requests;
        self.slo_judged += other.slo_judged;
        self.slo_met += other.slo_met;
        for (mine, theirs) in self
            .distributions_mut()
            .into_iter()
            .zip(other.distributions())
        {
            mine.1.merge(theirs.1);
        }
    }

    /// The distributions by metric name, in [`METRICS`] order.
    pub fn distributions(&self) -> [(&'static str, &Distribution); 10] {
        [
            (METRICS[0], &self.ttft),
            (METRICS[1], &self.ttfc),
            (METRICS[2], &self.tpot),
            (METRICS[3], &self.itl),
            (METRICS[4], &self.inter_chunk),
            (METRICS[5], &self.e2e),
            (METRICS[6], &self.ttft_raw),
            (METRICS[7], &self.e2e_raw),
            (METRICS[8], &self.schedule_lateness),
            (METRICS[9], &self.client_queue),
        ]
    }

    /// The distributions by metric name, mutable, in [`METRICS`] order.
    pub fn distributions_mut(&mut self) -> [(&'static str, &mut Distribution); 10] {
        [
            (METRICS[0], &mut self.ttft),
            (METRICS[1], &mut self.ttfc),
            (METRICS[2], &mut self.tpot),
            (METRICS[3], &mut self.itl),
            (METRICS[4], &mut self.inter_chunk),
            (METRICS[5], &mut self.e2e),
            (METRICS[6], &mut self.ttft_raw),
            (METRICS[7], &mut self.e2e_raw),
            (METRICS[8], &mut self.schedule_lateness),
            (METRICS[9], &mut self.client_queue),
        ]
    }

    /// Values refused by any distribution (NaN or infinite latencies in the input).
    pub fn dropped_values(&self) -> u64 {
        self.distributions().iter().map(|(_, d)| d.dropped()).sum()
    }

    /// The statistics object for a measured window of `duration_s` seconds.
    pub fn statistics(&self, duration_s: f64) -> Statistics {
        let offered = self.outcomes.total();
        let per_s = |n: u64| (duration_s > 0.0).then(|| round_to(n as f64 / duration_s, 6));
        Statistics {
            requests: offered,
            outcomes: self.outcomes,
            requests_per_s: per_s(self.outcomes.ok),
            offered_requests_per_s: per_s(offered),
            output_tokens_per_s: per_s(self.output_tokens),
            input_tokens_per_s: per_s(self.input_tokens),
            error_rate: (offered > 0)
                .then(|| round_to(self.outcomes.failed() as f64 / offered as f64, 6)),
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            estimated_output_requests: self.estimated_output_requests,
            ttft_ms: self.ttft.stats(),
            ttfc_ms: self.ttfc.stats(),
            tpot_ms: self.tpot.stats(),
            itl_ms: self.itl.stats(),
            inter_chunk_ms: self.inter_chunk.stats(),
            e2e_ms: self.e2e.stats(),
            ttft_raw_ms: self.ttft_raw.stats(),
            e2e_raw_ms: self.e2e_raw.stats(),
            schedule_lateness_ms: self.schedule_lateness.stats(),
            client_queue_ms: self.client_queue.stats(),
            slo_met_requests: self.slo_met,
            goodput_per_s: if self.slo_judged > 0 {
                crate::slo::goodput(self.slo_met, duration_s)
            } else {
                None
            },
        }
    }
}

/// The statistics of one scope as `summary.json` holds them (`overall`, each group, each tenant).
/// Rates are per second of the measured window; `null` when there is no window or no request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Statistics {
    /// Requests sent in the measured window, all outcomes.
    pub requests: u64,
    /// Requests per outcome.
    pub outcomes: OutcomeCounts,
    /// Successful requests per second.
    pub requests_per_s: Option<f64>,
    /// All requests per second, whatever their outcome.
    pub offered_requests_per_s: Option<f64>,
    /// Generated tokens of successful requests per second.
    pub output_tokens_per_s: Option<f64>,
    /// Prompt tokens of successful requests per second.
    pub input_tokens_per_s: Option<f64>,
    /// Failed requests ÷ all requests.
    pub error_rate: Option<f64>,
    /// Prompt tokens of successful requests.
    pub input_tokens: u64,
    /// Generated tokens of successful requests.
    pub output_tokens: u64,
    /// Successful requests whose output tokens were estimated (no usage from the server).
    pub estimated_output_requests: u64,
    /// Time to first token on any channel, from the intended start.
    pub ttft_ms: LatencyStats,
    /// Time to first content token, from the intended start.
    pub ttfc_ms: LatencyStats,
    /// Time per output token after the first.
    pub tpot_ms: LatencyStats,
    /// Per-token inter-token latency.
    pub itl_ms: LatencyStats,
    /// Inter-chunk latency.
    pub inter_chunk_ms: LatencyStats,
    /// End-to-end latency, from the intended start.
    pub e2e_ms: LatencyStats,
    /// Time to first token from the actual send (not corrected for coordinated omission).
    pub ttft_raw_ms: LatencyStats,
    /// End-to-end latency from the actual send (not corrected).
    pub e2e_raw_ms: LatencyStats,
    /// How late the scheduler released requests.
    pub schedule_lateness_ms: LatencyStats,
    /// Client-side queueing: from the scheduler's release to the start of the send.
    #[serde(default)]
    pub client_queue_ms: LatencyStats,
    /// Requests that met every per-request threshold of their tenant's SLO.
    #[serde(default)]
    pub slo_met_requests: u64,
    /// Those requests per second of the measured window; `null` when no SLO applies.
    #[serde(default)]
    pub goodput_per_s: Option<f64>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Histogram figures are the top of a bucket: equal to 0.1 %.
    pub(crate) fn approx(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() <= b.abs() * 1e-3 + 1e-9)
    }

    /// A successful streamed request at `start_ms` with the given TTFT and E2E.
    pub(crate) fn ok_record(tenant: &str, start_ms: f64, ttft: f64, e2e: f64) -> RequestRecord {
        RequestRecord {
            id: 0,
            tenant: tenant.to_owned(),
            group: "g".to_owned(),
            model: "m".to_owned(),
            outcome: Outcome::Ok,
            status: 200,
            warmup: false,
            intended_start_ms: start_ms,
            actual_start_ms: start_ms + 1.0,
            dispatched_ms: None,
            ttft_ms: Some(ttft),
            ttfc_ms: Some(ttft),
            tpot_ms: Some((e2e - ttft) / 9.0),
            e2e_ms: Some(e2e),
            itl_ms: vec![(e2e - ttft) / 9.0; 9],
            chunk_gaps_ms: vec![(e2e - ttft) / 9.0; 9],
            input_tokens: 100,
            output_tokens: 10,
            output_tokens_estimated: false,
            error: None,
        }
    }

    pub(crate) fn failed_record(tenant: &str, outcome: Outcome) -> RequestRecord {
        RequestRecord {
            outcome,
            status: 429,
            // Failures may carry partial timings; they must still be kept out of distributions.
            ttft_ms: Some(1.0),
            e2e_ms: Some(2.0),
            error: Some("rate limited".to_owned()),
            ..ok_record(tenant, 0.0, 1.0, 2.0)
        }
    }

    #[test]
    fn failures_are_counted_but_excluded_from_latencies() {
        let records = [
            ok_record("a", 0.0, 100.0, 1000.0),
            failed_record("a", Outcome::RateLimited),
            failed_record("a", Outcome::Truncated),
        ];
        let s = Aggregate::from_records(&records).statistics(10.0);
        assert_eq!(s.requests, 3);
        assert_eq!(s.outcomes.ok, 1);
        assert_eq!(s.outcomes.rate_limited, 1);
        assert_eq!(s.outcomes.truncated, 1);
        assert_eq!(s.ttft_ms.count, 1);
        assert_eq!(s.e2e_ms.count, 1);
        assert!(approx(s.ttft_ms.p50, 100.0), "{:?}", s.ttft_ms);
        assert_eq!(s.output_tokens, 10);
        assert_eq!(s.requests_per_s, Some(0.1));
        assert_eq!(s.offered_requests_per_s, Some(0.3));
        assert_eq!(s.error_rate, Some(0.666667));
        // Lateness is about the scheduler, so every outcome counts there.
        assert_eq!(s.schedule_lateness_ms.count, 3);
    }

    #[test]
    fn warmup_records_are_excluded_from_everything() {
        let mut warm = ok_record("a", 0.0, 5000.0, 9000.0);
        warm.warmup = true;
        let records = [warm, ok_record("a", 10.0, 100.0, 1000.0)];
        let s = Aggregate::from_records(&records).statistics(1.0);
        assert_eq!(s.requests, 1);
        assert!(approx(s.ttft_ms.max, 100.0), "{:?}", s.ttft_ms);
        assert_eq!(s.schedule_lateness_ms.count, 1);
        assert_eq!(s.output_tokens, 10);
    }

    #[test]
    fn empty_scope_has_null_rates_and_percentiles() {
        let s = Aggregate::new().statistics(10.0);
        assert_eq!(s.requests, 0);
        assert_eq!(s.error_rate, None);
        assert_eq!(s.ttft_ms.p99, None);
        assert_eq!(s.requests_per_s, Some(0.0));
        assert_eq!(Aggregate::new().statistics(0.0).requests_per_s, None);
    }

    #[test]
    fn raw_latencies_are_measured_from_the_actual_send() {
        let mut r = ok_record("a", 1000.0, 300.0, 800.0);
        r.actual_start_ms = 1200.0; // sent 200 ms late
        let s = Aggregate::from_records([&r]).statistics(1.0);
        assert!(approx(s.ttft_ms.p50, 300.0));
        assert!(approx(s.ttft_raw_ms.p50, 100.0));
        assert!(approx(s.e2e_raw_ms.p50, 600.0));
        assert!(approx(s.schedule_lateness_ms.p50, 200.0));
    }

    #[test]
    fn merge_of_tenants_equals_aggregate_of_all_records() {
        let mut records = Vec::new();
        for i in 0..600u32 {
            let tenant = format!("t{}", i % 7);
            let ttft = 20.0 + f64::from((i * 37) % 500);
            let mut r = ok_record(&tenant, f64::from(i) * 10.0, ttft, ttft + 400.0);
            if i % 11 == 0 {
                r.outcome = Outcome::ServerError;
            }
            records.push(r);
        }
        let whole = Aggregate::from_records(&records).statistics(60.0);
        let mut merged = Aggregate::new();
        for t in 0..7 {
            let name = format!("t{t}");
            merged.merge(&Aggregate::from_records(
                records.iter().filter(|r| r.tenant == name),
            ));
        }
        assert_eq!(merged.statistics(60.0), whole);
    }
}
