//! Isolation verdicts: does one tenant's flood hurt the others, and do its limits hold?
//!
//! A scenario declares phases (e.g. `baseline`, then `flood` while an aggressor tenant sends far
//! above its limits). For each victim (every tenant that is not an aggressor) the report compares
//! a latency percentile in the test phase with the same percentile in the baseline phase; the
//! ratio must stay under a threshold. For each aggressor it counts the requests and tokens the
//! stack *accepted* (successful requests) in the busiest 60-second window of the test phase and
//! compares them with the aggressor's configured RPM and TPM limits. Phases are selected by each
//! request's intended start, so a slow response cannot move a request into another phase.
//!
//! A high percentile of a few dozen samples is mostly noise: with 40 requests a phase, "p99" is
//! the slowest request, and runs with no aggressor at all showed single victims' p99 doubling
//! between two identical phases. So a ratio is only *judged* when both phases hold at least
//! `min_samples` values (by default enough that 5 values lie beyond the percentile: 10 for p50,
//! 50 for p90, 500 for p99). Every victim's ratio is reported; victims with fewer samples are
//! marked as not judged. All victims together (their samples pooled per phase) are judged the
//! same way, and the verdict needs the pooled ratio and every judged victim within the
//! threshold. A check that could judge nothing does not pass.

use serde::{Deserialize, Serialize};

use crate::distribution::{Distribution, round_to};
use crate::record::{Outcome, RequestRecord};

/// A named span of the run, seconds since t0 (the start of the warm-up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub start_s: f64,
    pub end_s: f64,
}

/// An aggressor and the limits it was configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggressor {
    pub tenant: String,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
}

/// What the scenario asks to check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationSpec {
    pub baseline: Phase,
    pub test: Phase,
    pub aggressors: Vec<Aggressor>,
    /// Latency metric compared: `ttft_ms`, `tpot_ms`, `itl_ms` or `e2e_ms`.
    pub metric: String,
    /// Percentile compared (50, 90 or 99).
    pub percentile: u8,
    /// A victim passes when test ÷ baseline is at most this.
    pub max_ratio: f64,
    /// Accepted traffic may exceed a limit by this fraction before the limit counts as broken
    /// (limiters count in windows that need not line up with ours).
    pub limit_tolerance: f64,
    /// Fewest values a phase needs for its percentile to be judged; `None`: 5 ÷ (1 − q).
    #[serde(default)]
    pub min_samples: Option<u64>,
}

impl IsolationSpec {
    /// The sample count below which a ratio is reported but not judged.
    pub fn min_samples(&self) -> u64 {
        // 5 values beyond the percentile: 5 ÷ (1 − q), in whole percent to stay exact.
        self.min_samples.unwrap_or_else(|| {
            let tail_percent = u64::from(100 - self.percentile.min(99));
            500_u64.div_ceil(tail_percent)
        })
    }
}

/// One victim's figures (or all victims pooled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VictimResult {
    pub tenant: String,
    pub baseline_ms: Option<f64>,
    pub test_ms: Option<f64>,
    /// test ÷ baseline; `null` without data in both phases.
    pub ratio: Option<f64>,
    /// Values behind each phase's percentile.
    #[serde(default)]
    pub baseline_samples: u64,
    #[serde(default)]
    pub test_samples: u64,
    /// Whether both phases had enough samples for the ratio to count in the verdict.
    #[serde(default = "judged_default")]
    pub judged: bool,
    /// Within the ratio (always true when not judged).
    pub passed: bool,
}

fn judged_default() -> bool {
    true
}

/// One aggressor's figures in the test phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggressorResult {
    pub tenant: String,
    /// Requests it sent per second.
    pub offered_per_s: f64,
    /// Requests the stack served successfully per second.
    pub accepted_per_s: f64,
    /// Requests refused for rate limits or budget.
    pub refused: u64,
    /// Most successful requests in any 60 s window (the phase if shorter).
    pub max_accepted_requests_per_min: u64,
    /// Most tokens (prompt + output) of successful requests in any 60 s window.
    pub max_accepted_tokens_per_min: u64,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    /// Whether the accepted traffic stayed within the limits (`true` when it has none).
    pub limits_held: bool,
}

/// The isolation section of `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationReport {
    pub baseline: Phase,
    pub test: Phase,
    /// e.g. `ttft_ms.p99`.
    pub metric: String,
    pub max_ratio: f64,
    pub victims: Vec<VictimResult>,
    /// All victims' samples pooled per phase (tenant `(all victims)`).
    #[serde(default)]
    pub pooled: Option<VictimResult>,
    /// Fewest samples a phase needed for its ratio to be judged.
    #[serde(default)]
    pub min_samples: u64,
    pub aggressors: Vec<AggressorResult>,
    /// The worst ratio among judged victims (and the pool).
    pub worst_ratio: Option<f64>,
    /// The pooled ratio and every judged victim within the threshold, and at least one judged.
    pub victims_passed: bool,
    /// Every aggressor's accepted traffic within its limits.
    pub limits_held: bool,
    /// Both.
    pub passed: bool,
}

fn in_phase(r: &RequestRecord, p: &Phase) -> bool {
    let t = r.intended_start_ms / 1000.0;
    t >= p.start_s && t < p.end_s
}

fn metric_values<'a>(r: &'a RequestRecord, metric: &str) -> Box<dyn Iterator<Item = f64> + 'a> {
    match metric {
        "ttft_ms" => Box::new(r.ttft_ms.into_iter()),
        "tpot_ms" => Box::new(r.tpot_ms.into_iter()),
        "e2e_ms" => Box::new(r.e2e_ms.into_iter()),
        _ => Box::new(r.itl_ms.iter().copied()),
    }
}

/// The phase's percentile and how many values it was taken from.
fn percentile(records: &[&RequestRecord], p: &Phase, metric: &str, q: u8) -> (Option<f64>, u64) {
    let mut d = Distribution::new();
    let mut n = 0u64;
    for r in records
        .iter()
        .filter(|r| r.outcome == Outcome::Ok && in_phase(r, p))
    {
        for v in metric_values(r, metric) {
            d.record_ms(v);
            n += 1;
        }
    }
    (d.quantile_ms(f64::from(q) / 100.0), n)
}

/// Compares one set of records' percentile across the two phases.
fn compare(spec: &IsolationSpec, name: &str, rs: &[&RequestRecord]) -> VictimResult {
    let (baseline_ms, baseline_samples) =
        percentile(rs, &spec.baseline, &spec.metric, spec.percentile);
    let (test_ms, test_samples) = percentile(rs, &spec.test, &spec.metric, spec.percentile);
    let ratio = match (baseline_ms, test_ms) {
        (Some(b), Some(x)) if b > 0.0 => Some(round_to(x / b, 4)),
        _ => None,
    };
    let min = spec.min_samples();
    let judged = ratio.is_some() && baseline_samples >= min && test_samples >= min;
    VictimResult {
        tenant: name.to_string(),
        baseline_ms,
        test_ms,
        ratio,
        baseline_samples,
        test_samples,
        judged,
        passed: !judged || ratio.is_some_and(|r| r <= spec.max_ratio),
    }
}

/// Most of `weight` in any window of `window_ms` over sorted `(time_ms, weight)` points.
fn busiest_window(points: &[(f64, u64)], window_ms: f64) -> u64 {
    let (mut best, mut sum, mut lo) = (0u64, 0u64, 0usize);
    for hi in 0..points.len() {
        sum += points[hi].1;
        while points[hi].0 - points[lo].0 >= window_ms {
            sum -= points[lo].1;
            lo += 1;
        }
        best = best.max(sum);
    }
    best
}

/// Evaluates isolation over every (non-warm-up-filtered) record of the run: phases may include
/// the warm-up if the scenario says so. `tenants` are the run's tenants: aggressors not among
/// them (in another shard) are left out of the verdict, and every other tenant is a victim.
pub fn evaluate(
    spec: &IsolationSpec,
    tenants: &[String],
    records: &[RequestRecord],
) -> IsolationReport {
    let by_tenant =
        |id: &str| -> Vec<&RequestRecord> { records.iter().filter(|r| r.tenant == id).collect() };
    let is_aggressor = |id: &str| spec.aggressors.iter().any(|a| a.tenant == id);
    let victim_ids: Vec<&String> = tenants.iter().filter(|t| !is_aggressor(t)).collect();
    let victims: Vec<VictimResult> = victim_ids
        .iter()
        .map(|t| compare(spec, t, &by_tenant(t)))
        .collect();
    let pooled = (!victim_ids.is_empty()).then(|| {
        let all: Vec<&RequestRecord> = records
            .iter()
            .filter(|r| victim_ids.iter().any(|t| **t == r.tenant))
            .collect();
        compare(spec, "(all victims)", &all)
    });
    let span_s = (spec.test.end_s - spec.test.start_s).max(f64::MIN_POSITIVE);
    let window_ms = 60_000.0_f64.min(span_s * 1000.0);
    // An aggressor the run holds no tenant for (it ran in another shard) has no traffic here to
    // judge; reporting it would claim "limits held" on nothing. The merged run judges it.
    let aggressors: Vec<AggressorResult> = spec
        .aggressors
        .iter()
        .filter(|a| tenants.contains(&a.tenant))
        .map(|a| {
            let rs: Vec<&RequestRecord> = by_tenant(&a.tenant)
                .into_iter()
                .filter(|r| in_phase(r, &spec.test))
                .collect();
            let mut ok: Vec<(f64, u64, u64)> = rs
                .iter()
                .filter(|r| r.outcome == Outcome::Ok)
                .map(|r| (r.actual_start_ms, 1, r.input_tokens + r.output_tokens))
                .collect();
            ok.sort_by(|x, y| x.0.total_cmp(&y.0));
            let reqs: Vec<(f64, u64)> = ok.iter().map(|x| (x.0, x.1)).collect();
            let toks: Vec<(f64, u64)> = ok.iter().map(|x| (x.0, x.2)).collect();
            let max_req = busiest_window(&reqs, window_ms);
            let max_tok = busiest_window(&toks, window_ms);
            let tol = 1.0 + spec.limit_tolerance;
            let within =
                |limit: Option<u64>, seen: u64| limit.is_none_or(|l| seen as f64 <= l as f64 * tol);
            AggressorResult {
                tenant: a.tenant.clone(),
                offered_per_s: round_to(rs.len() as f64 / span_s, 4),
                accepted_per_s: round_to(ok.len() as f64 / span_s, 4),
                refused: rs
                    .iter()
                    .filter(|r| matches!(r.outcome, Outcome::RateLimited | Outcome::BudgetExceeded))
                    .count() as u64,
                max_accepted_requests_per_min: max_req,
                max_accepted_tokens_per_min: max_tok,
                rpm_limit: a.rpm_limit,
                tpm_limit: a.tpm_limit,
                limits_held: within(a.rpm_limit, max_req) && within(a.tpm_limit, max_tok),
            }
        })
        .collect();
    let judged: Vec<&VictimResult> = victims
        .iter()
        .chain(pooled.iter())
        .filter(|v| v.judged)
        .collect();
    let worst_ratio = judged
        .iter()
        .filter_map(|v| v.ratio)
        .fold(None, |acc: Option<f64>, r| {
            Some(acc.map_or(r, |a| a.max(r)))
        });
    let victims_passed = !judged.is_empty() && judged.iter().all(|v| v.passed);
    let limits_held = aggressors.iter().all(|a| a.limits_held);
    IsolationReport {
        baseline: spec.baseline.clone(),
        test: spec.test.clone(),
        metric: format!("{}.p{}", spec.metric, spec.percentile),
        max_ratio: spec.max_ratio,
        victims,
        pooled,
        min_samples: spec.min_samples(),
        aggressors,
        worst_ratio,
        victims_passed,
        limits_held,
        passed: victims_passed && limits_held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tests::{failed_record, ok_record};

    fn spec() -> IsolationSpec {
        IsolationSpec {
            baseline: Phase {
                name: "baseline".into(),
                start_s: 0.0,
                end_s: 10.0,
            },
            test: Phase {
                name: "flood".into(),
                start_s: 10.0,
                end_s: 20.0,
            },
            aggressors: vec![Aggressor {
                tenant: "agg".into(),
                rpm_limit: Some(5),
                tpm_limit: None,
            }],
            metric: "ttft_ms".into(),
            percentile: 99,
            max_ratio: 1.5,
            limit_tolerance: 0.0,
            min_samples: Some(1),
        }
    }

    #[test]
    fn a_victim_slowed_past_the_ratio_fails_and_a_throttled_aggressor_holds() {
        let mut records = Vec::new();
        for i in 0..10 {
            let t = f64::from(i) * 900.0;
            records.push(ok_record("calm", t, 100.0, 500.0));
            records.push(ok_record("calm", 10_000.0 + t, 120.0, 500.0));
            records.push(ok_record("hurt", t, 100.0, 500.0));
            records.push(ok_record("hurt", 10_000.0 + t, 300.0, 900.0));
        }
        for i in 0..50 {
            let t = 10_000.0 + f64::from(i) * 150.0;
            let mut r = if i % 10 == 0 {
                ok_record("agg", t, 50.0, 60.0)
            } else {
                failed_record("agg", Outcome::RateLimited)
            };
            r.intended_start_ms = t;
            r.actual_start_ms = t;
            records.push(r);
        }
        let tenants = ["calm", "hurt", "agg"].map(String::from);
        let rep = evaluate(&spec(), &tenants, &records);
        assert_eq!(rep.victims.len(), 2);
        assert!(rep.victims[0].passed, "{:?}", rep.victims[0]);
        // 3 s ÷ 1 s, within HdrHistogram's 3 significant digits.
        assert!(
            rep.victims[1].ratio.is_some_and(|r| (r - 3.0).abs() < 0.01),
            "{:?}",
            rep.victims[1]
        );
        assert!(!rep.victims_passed);
        let a = &rep.aggressors[0];
        assert_eq!((a.max_accepted_requests_per_min, a.refused), (5, 45));
        assert!(a.limits_held);
        assert!((a.offered_per_s - 5.0).abs() < 1e-9);
        assert!(!rep.passed);
    }

    #[test]
    fn few_samples_are_reported_but_not_judged_and_the_pool_decides() {
        // 10 requests a phase per victim: far too few for a p99 (500 by default).
        let mut s = spec();
        s.min_samples = None;
        assert_eq!(s.min_samples(), 500);
        let mut records = Vec::new();
        for v in 0..60 {
            let victim = format!("v{v}");
            for i in 0..10 {
                let t = f64::from(i) * 900.0;
                // One victim's single slow request doubles its own "p99"; the pool barely moves.
                let slow = v == 0 && i == 3;
                records.push(ok_record(&victim, t, 100.0, 500.0));
                records.push(ok_record(
                    &victim,
                    10_000.0 + t,
                    if slow { 250.0 } else { 105.0 },
                    500.0,
                ));
            }
        }
        let tenants: Vec<String> = (0..60).map(|v| format!("v{v}")).collect();
        let rep = evaluate(&s, &tenants, &records);
        let v0 = &rep.victims[0];
        assert!(v0.ratio.is_some_and(|r| r > 2.0), "{v0:?}");
        assert!(!v0.judged && v0.passed, "{v0:?}");
        let pool = rep.pooled.clone().unwrap_or_else(|| panic!("no pool"));
        assert_eq!((pool.baseline_samples, pool.test_samples), (600, 600));
        assert!(pool.judged && pool.passed, "{pool:?}");
        assert!(rep.victims_passed, "{rep:?}");
        // The pool itself slowed: the verdict fails.
        for r in records
            .iter_mut()
            .filter(|r| r.intended_start_ms >= 10_000.0)
        {
            r.ttft_ms = r.ttft_ms.map(|t| t * 2.0);
        }
        let rep = evaluate(&s, &tenants, &records);
        assert!(!rep.victims_passed, "{:?}", rep.pooled);
        // Nothing judgeable at all (one victim, 10 samples): the check does not pass.
        let rep = evaluate(&s, &tenants[..1], &records);
        assert!(!rep.victims_passed && !rep.passed, "{rep:?}");
    }

    #[test]
    fn an_aggressor_over_its_rpm_breaks_the_limit() {
        let records: Vec<_> = (0..20)
            .map(|i| {
                let mut r = ok_record("agg", 10_000.0 + f64::from(i) * 100.0, 10.0, 20.0);
                r.actual_start_ms = r.intended_start_ms;
                r
            })
            .collect();
        let rep = evaluate(&spec(), &["agg".to_string()], &records);
        assert!(!rep.aggressors[0].limits_held);
        assert!(!rep.passed, "no victims and a broken limit");
    }

    #[test]
    fn aggressors_outside_the_run_are_left_out() {
        // A shard that holds only victims: the aggressor ran elsewhere.
        let records: Vec<_> = (0..10)
            .flat_map(|i| {
                let t = f64::from(i) * 900.0;
                [
                    ok_record("calm", t, 100.0, 500.0),
                    ok_record("calm", 10_000.0 + t, 110.0, 500.0),
                ]
            })
            .collect();
        let rep = evaluate(&spec(), &["calm".to_string()], &records);
        assert!(rep.aggressors.is_empty(), "{:?}", rep.aggressors);
        assert_eq!(rep.victims.len(), 1);
        assert!(rep.passed, "{rep:?}");
    }
}
