//! Service-level objectives and goodput.
//!
//! An [`SloSpec`] sets thresholds on TTFT, TPOT, ITL and E2E (and a maximum error rate). It is
//! read two ways, as DistServe and `vllm bench serve --goodput` do:
//! - per request: a request *meets* the SLO when it succeeded, its TTFT, TPOT and E2E are within
//!   their thresholds and the `percentile`-th of its own token gaps is within the ITL threshold;
//!   goodput is the number of such requests per second of the measured window;
//! - per scope (tenant, group, overall): the scope's `percentile`-th TTFT, TPOT, ITL and E2E and
//!   its error rate against the same thresholds, as a pass/fail [`SloVerdict`].

use serde::{Deserialize, Serialize};

use crate::aggregate::Statistics;
use crate::distribution::{LatencyStats, round_to};
use crate::record::{Outcome, RequestRecord};

/// Thresholds for one scope; absent thresholds are not checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloSpec {
    /// Which percentile the scope verdicts read (50, 90 or 99).
    pub percentile: u8,
    /// Time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Time per output token, ms.
    pub tpot_ms: Option<f64>,
    /// Per-token inter-token latency, ms.
    pub itl_ms: Option<f64>,
    /// End-to-end latency, ms.
    pub e2e_ms: Option<f64>,
    /// Failed ÷ all requests (scope verdicts only).
    pub max_error_rate: Option<f64>,
}

impl Default for SloSpec {
    fn default() -> Self {
        Self {
            percentile: 99,
            ttft_ms: None,
            tpot_ms: None,
            itl_ms: None,
            e2e_ms: None,
            max_error_rate: None,
        }
    }
}

/// One threshold checked against a scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloCheck {
    /// `ttft_ms.p99`, `error_rate`, ...
    pub metric: String,
    /// The threshold (observed must be at most this).
    pub threshold: f64,
    /// What the scope showed; `null` when it had no data (which fails).
    pub observed: Option<f64>,
    pub passed: bool,
}

/// A scope's SLO verdict, as `summary.json` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloVerdict {
    /// The SLO that applied.
    pub spec: SloSpec,
    /// Each threshold against the scope.
    pub checks: Vec<SloCheck>,
    /// Every check passed.
    pub passed: bool,
}

fn pick(stats: &LatencyStats, percentile: u8) -> Option<f64> {
    match percentile {
        50 => stats.p50,
        90 => stats.p90,
        _ => stats.p99,
    }
}

impl SloSpec {
    /// Checks the percentile is one `summary.json` reports.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.percentile, 50 | 90 | 99) {
            return Err(format!(
                "percentile must be 50, 90 or 99, got {}",
                self.percentile
            ));
        }
        for (name, v) in [
            ("ttft_ms", self.ttft_ms),
            ("tpot_ms", self.tpot_ms),
            ("itl_ms", self.itl_ms),
            ("e2e_ms", self.e2e_ms),
            ("max_error_rate", self.max_error_rate),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(format!("{name} must be zero or more, got {v}"));
            }
        }
        Ok(())
    }

    /// Whether one request meets every per-request threshold (failures never do).
    pub fn met_by(&self, r: &RequestRecord) -> bool {
        if r.outcome != Outcome::Ok {
            return false;
        }
        let within = |limit: Option<f64>, v: Option<f64>| match limit {
            None => true,
            Some(l) => v.is_some_and(|v| v <= l),
        };
        if !(within(self.ttft_ms, r.ttft_ms)
            && within(self.e2e_ms, r.e2e_ms)
            && (self.tpot_ms.is_none() || r.output_tokens <= 1 || within(self.tpot_ms, r.tpot_ms)))
        {
            return false;
        }
        match self.itl_ms {
            Some(limit) if !r.itl_ms.is_empty() => {
                // The request's own percentile of its token gaps, by nearest rank.
                let over = r.itl_ms.iter().filter(|v| **v > limit).count();
                let allowed =
                    (r.itl_ms.len() as f64 * (1.0 - f64::from(self.percentile) / 100.0)).floor();
                over as f64 <= allowed
            }
            _ => true,
        }
    }

    /// The scope verdict over its statistics.
    pub fn verdict(&self, stats: &Statistics) -> SloVerdict {
        let p = self.percentile;
        let mut checks = Vec::new();
        for (name, limit, observed) in [
            ("ttft_ms", self.ttft_ms, &stats.ttft_ms),
            ("tpot_ms", self.tpot_ms, &stats.tpot_ms),
            ("itl_ms", self.itl_ms, &stats.itl_ms),
            ("e2e_ms", self.e2e_ms, &stats.e2e_ms),
        ] {
            if let Some(limit) = limit {
                let observed = pick(observed, p);
                checks.push(SloCheck {
                    metric: format!("{name}.p{p}"),
                    threshold: limit,
                    observed,
                    passed: observed.is_some_and(|v| v <= limit),
                });
            }
        }
        if let Some(limit) = self.max_error_rate {
            checks.push(SloCheck {
                metric: "error_rate".into(),
                threshold: limit,
                observed: stats.error_rate,
                passed: stats.error_rate.is_some_and(|v| v <= limit),
            });
        }
        SloVerdict {
            spec: self.clone(),
            passed: checks.iter().all(|c| c.passed),
            checks,
        }
    }
}

/// Goodput in requests per second, rounded like the other rates.
pub(crate) fn goodput(met: u64, duration_s: f64) -> Option<f64> {
    (duration_s > 0.0).then(|| round_to(met as f64 / duration_s, 6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tests::ok_record;

    fn spec() -> SloSpec {
        SloSpec {
            ttft_ms: Some(200.0),
            itl_ms: Some(50.0),
            e2e_ms: Some(2000.0),
            ..SloSpec::default()
        }
    }

    #[test]
    fn a_request_meets_the_slo_only_within_every_threshold() {
        let mut good = ok_record("a", 0.0, 150.0, 1000.0);
        good.itl_ms = vec![10.0; 9];
        assert!(spec().met_by(&good));
        let slow_first = ok_record("a", 0.0, 250.0, 1000.0);
        assert!(!spec().met_by(&slow_first));
        let mut gappy = good.clone();
        gappy.itl_ms = vec![10.0; 99];
        gappy.itl_ms.push(400.0); // 1 of 100 over: allowed at p99
        assert!(spec().met_by(&gappy));
        gappy.itl_ms.push(400.0); // 2 of 101 over: not
        assert!(!spec().met_by(&gappy));
        let mut failed = good;
        failed.outcome = Outcome::Timeout;
        assert!(!spec().met_by(&failed));
    }

    #[test]
    fn a_scope_with_no_data_fails_its_verdict() {
        let v = spec().verdict(&Statistics::default());
        assert!(!v.passed);
        assert_eq!(v.checks.len(), 3);
        assert_eq!(v.checks[0].metric, "ttft_ms.p99");
        assert!(
            SloSpec {
                percentile: 95,
                ..SloSpec::default()
            }
            .validate()
            .is_err()
        );
    }
}
