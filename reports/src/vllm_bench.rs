//! `vllm-bench.json`: the run's measured window in the layout of the JSON that
//! `vllm bench serve --save-result` writes, so users can put our numbers next to their existing
//! vLLM benchmark results with the same scripts. Times in the per-request lists are seconds and
//! the summary figures milliseconds, as vLLM's are. vLLM's `itls` are inter-chunk gaps, so ours
//! are filled from the chunk gaps too (our per-token ITL stays in `summary.json`).

use serde_json::{Value, json};

use crate::record::{Outcome, RequestRecord};
use crate::run::RunData;

fn stats(prefix: &str, mut xs: Vec<f64>, out: &mut serde_json::Map<String, Value>) {
    xs.retain(|x| x.is_finite());
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let mean = if n > 0 {
        xs.iter().sum::<f64>() / n as f64
    } else {
        0.0
    };
    let std = if n > 0 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
    } else {
        0.0
    };
    // Linear interpolation between ranks, as numpy.percentile (which vLLM uses) does.
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let rank = p / 100.0 * (n - 1) as f64;
        let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
        xs[lo] + (xs[hi] - xs[lo]) * (rank - lo as f64)
    };
    out.insert(format!("mean_{prefix}_ms"), json!(mean));
    out.insert(format!("median_{prefix}_ms"), json!(pct(50.0)));
    out.insert(format!("std_{prefix}_ms"), json!(std));
    for p in [90.0, 99.0] {
        out.insert(format!("p{p}_{prefix}_ms"), json!(pct(p)));
    }
}

/// The vllm-bench-compatible JSON value for a run.
pub fn vllm_bench_json(run: &RunData) -> Value {
    let measured: Vec<&RequestRecord> = run.measured().collect();
    let ok: Vec<&&RequestRecord> = measured
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .collect();
    let duration = run.duration_s;
    let input: u64 = ok.iter().map(|r| r.input_tokens).sum();
    let output: u64 = ok.iter().map(|r| r.output_tokens).sum();
    let per_s = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
    let mut m = serde_json::Map::new();
    m.insert("backend".into(), json!("openai-chat"));
    m.insert(
        "label".into(),
        json!(format!("tenantbench {}", run.scenario)),
    );
    m.insert(
        "model_id".into(),
        json!(run.tenants.first().map(|t| t.model.clone())),
    );
    m.insert("num_prompts".into(), json!(measured.len()));
    m.insert("duration".into(), json!(duration));
    m.insert("completed".into(), json!(ok.len()));
    m.insert("total_input_tokens".into(), json!(input));
    m.insert("total_output_tokens".into(), json!(output));
    m.insert("request_throughput".into(), json!(per_s(ok.len() as f64)));
    m.insert("output_throughput".into(), json!(per_s(output as f64)));
    m.insert(
        "total_token_throughput".into(),
        json!(per_s((input + output) as f64)),
    );
    stats(
        "ttft",
        ok.iter().filter_map(|r| r.ttft_ms).collect(),
        &mut m,
    );
    stats(
        "tpot",
        ok.iter().filter_map(|r| r.tpot_ms).collect(),
        &mut m,
    );
    stats(
        "itl",
        ok.iter()
            .flat_map(|r| r.chunk_gaps_ms.iter().copied())
            .collect(),
        &mut m,
    );
    stats("e2el", ok.iter().filter_map(|r| r.e2e_ms).collect(), &mut m);
    let secs = |v: Option<f64>| v.map_or(0.0, |x| x / 1000.0);
    m.insert(
        "input_lens".into(),
        json!(measured.iter().map(|r| r.input_tokens).collect::<Vec<_>>()),
    );
    m.insert(
        "output_lens".into(),
        json!(
            measured
                .iter()
                .map(|r| if r.outcome == Outcome::Ok {
                    r.output_tokens
                } else {
                    0
                })
                .collect::<Vec<_>>()
        ),
    );
    m.insert(
        "ttfts".into(),
        json!(
            measured
                .iter()
                .map(|r| if r.outcome == Outcome::Ok {
                    secs(r.ttft_ms)
                } else {
                    0.0
                })
                .collect::<Vec<_>>()
        ),
    );
    m.insert(
        "itls".into(),
        json!(
            measured
                .iter()
                .map(|r| r
                    .chunk_gaps_ms
                    .iter()
                    .map(|g| g / 1000.0)
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()
        ),
    );
    m.insert(
        "errors".into(),
        json!(
            measured
                .iter()
                .map(|r| r.error.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        ),
    );
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::small_run;

    #[test]
    fn fields_vllm_bench_readers_expect_are_present_and_consistent() {
        let v = vllm_bench_json(&small_run());
        assert_eq!(v["completed"], json!(20));
        assert_eq!(v["num_prompts"], json!(21));
        assert_eq!(v["ttfts"].as_array().map(Vec::len), Some(21));
        // a's TTFTs are 100..109 and b's 300..309: the median of the 20 is (109 + 300) / 2.
        assert_eq!(v["median_ttft_ms"], json!(204.5));
        for k in [
            "mean_tpot_ms",
            "p99_itl_ms",
            "std_e2el_ms",
            "request_throughput",
        ] {
            assert!(v[k].is_number(), "{k}");
        }
    }
}
