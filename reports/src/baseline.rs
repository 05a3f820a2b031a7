//! Regression gates against a previous run's `summary.json`.
//!
//! For the whole run, each group and each tenant present in both summaries, every latency
//! percentile (p50, p90, p99 of TTFT, TPOT, ITL, E2E) may grow, and the success and goodput
//! rates may shrink, by at most `max_regression` (0.10 = 10 %) relative to the baseline; the
//! error rate may grow by at most that fraction or 0.001 absolute, whichever is larger, so a
//! baseline with no errors does not fail on the first one in a thousand. Each comparison is a
//! [`GateResult`], so CI sees regressions exactly like scenario gates.
//!
//! A percentile is compared only when both runs hold enough values for it: at least five beyond
//! it (10 for p50, 50 for p90, 500 for p99), the rule the isolation verdict uses. Below that a
//! "p99" is the slowest request or two, and identical re-runs of a small scenario moved it by
//! 40 % (36 to 51 ms TTFT over seven runs), so a 10 % gate on it would fail CI by chance.

use serde_json::Value;

use crate::aggregate::Statistics;
use crate::gate::{GateOp, GateResult, GateScope};
use crate::summary::Summary;

const LATENCIES: [&str; 4] = ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"];
/// Each compared percentile and the fewest values both runs need for it (5 ÷ (1 − q)).
const PERCENTILES: [(&str, u64); 3] = [("p50", 10), ("p90", 50), ("p99", 500)];

fn number(v: &Value, path: &str) -> Option<f64> {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
}

fn compare_scope(
    scope: GateScope,
    now: &Statistics,
    before: &Statistics,
    max_regression: f64,
    out: &mut Vec<GateResult>,
) {
    let (Ok(now), Ok(before)) = (serde_json::to_value(now), serde_json::to_value(before)) else {
        return;
    };
    let mut push = |metric: String, op: GateOp, threshold: f64, observed: f64| {
        let passed = op.holds(observed, threshold);
        out.push(GateResult {
            name: format!("regression {scope} {metric}"),
            scope: scope.clone(),
            metric,
            op,
            threshold,
            observed: Some(observed),
            passed,
            failures: Vec::new(),
            error: None,
            skipped: None,
        });
    };
    for lat in LATENCIES {
        let count = |v: &Value| number(v, &format!("{lat}.count")).unwrap_or(0.0);
        let samples = count(&now).min(count(&before));
        for (p, min_samples) in PERCENTILES {
            if samples < min_samples as f64 {
                continue;
            }
            let path = format!("{lat}.{p}");
            if let (Some(x), Some(b)) = (number(&now, &path), number(&before, &path)) {
                push(path, GateOp::Le, b * (1.0 + max_regression), x);
            }
        }
    }
    for rate in ["requests_per_s", "goodput_per_s"] {
        if let (Some(x), Some(b)) = (number(&now, rate), number(&before, rate)) {
            push(rate.to_owned(), GateOp::Ge, b * (1.0 - max_regression), x);
        }
    }
    if let (Some(x), Some(b)) = (number(&now, "error_rate"), number(&before, "error_rate")) {
        let limit = (b * (1.0 + max_regression)).max(b + 0.001);
        push("error_rate".to_owned(), GateOp::Le, limit, x);
    }
}

/// Regression gates of `now` against `baseline`.
pub fn compare(now: &Summary, baseline: &Summary, max_regression: f64) -> Vec<GateResult> {
    let mut out = Vec::new();
    compare_scope(
        GateScope::Overall,
        &now.overall,
        &baseline.overall,
        max_regression,
        &mut out,
    );
    for g in &now.groups {
        if let Some(b) = baseline.groups.iter().find(|b| b.group == g.group) {
            let scope = GateScope::Group(g.group.clone());
            compare_scope(scope, &g.stats, &b.stats, max_regression, &mut out);
        }
    }
    for t in &now.tenants {
        if let Some(b) = baseline.tenant(&t.tenant) {
            let scope = GateScope::Tenant(t.tenant.clone());
            compare_scope(scope, &t.stats, &b.stats, max_regression, &mut out);
        }
    }
    out
}

/// Parses `10%`, `10` (percent) or `0.1` (a fraction below 1) into a fraction.
pub fn parse_regression(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, percent) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), true),
        None => (t, false),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a percentage like 10%"))?;
    let frac = if percent || v >= 1.0 { v / 100.0 } else { v };
    if frac.is_finite() && frac >= 0.0 {
        Ok(frac)
    } else {
        Err(format!("'{s}' must be zero or more"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::summarize;
    use crate::summary::tests::small_run;

    #[test]
    fn a_slower_run_fails_and_an_equal_one_passes() {
        let before = summarize(&small_run());
        let same = compare(&before, &before, 0.1);
        assert!(!same.is_empty());
        assert!(same.iter().all(|g| g.passed));
        let mut slow = small_run();
        for r in slow.records.iter_mut().filter(|r| r.tenant == "b") {
            r.ttft_ms = r.ttft_ms.map(|v| v * 1.5);
        }
        let after = summarize(&slow);
        let res = compare(&after, &before, 0.1);
        let failed: Vec<_> = res
            .iter()
            .filter(|g| !g.passed)
            .map(|g| g.name.as_str())
            .collect();
        assert!(
            failed.contains(&"regression tenant b ttft_ms.p50"),
            "{failed:?}"
        );
        assert!(!failed.iter().any(|n| n.contains("tenant a")), "{failed:?}");
        // Ten TTFTs a tenant: enough for a p50, far too few for a p90 or p99 (ITL, with a
        // value per token, has enough for its p90).
        assert!(
            !res.iter().any(|g| g.name.contains("ttft_ms.p9")),
            "{:?}",
            res.iter().map(|g| &g.name).collect::<Vec<_>>()
        );
    }

    #[test]
    fn regression_limits_parse() {
        assert_eq!(parse_regression("10%"), Ok(0.1));
        assert_eq!(parse_regression("0.25"), Ok(0.25));
        assert_eq!(parse_regression("5"), Ok(0.05));
        assert!(parse_regression("ten").is_err());
    }
}
