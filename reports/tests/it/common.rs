//! A synthetic 30-tenant run built from a seeded RNG, shaped like the quickstart: three groups,
//! Poisson arrivals, a warm-up, a tenant that is rate-limited now and then and one that is
//! rate-limited always (so it has no successful request at all).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reports::{
    CostModel, EngineInfo, GateOp, GateScope, GateSpec, Outcome, RequestRecord, RunData, TenantInfo,
};

pub const TENANTS: usize = 30;
pub const WARMUP_S: f64 = 5.0;
pub const DURATION_S: f64 = 40.0;
/// Rate-limited on every request.
pub const STARVED: &str = "tenant-29";
/// Rate-limited on about a third of its requests.
pub const THROTTLED: &str = "tenant-07";

fn group_of(i: usize) -> &'static str {
    match i {
        0..=19 => "small",
        20..=27 => "heavy",
        _ => "strong",
    }
}

pub fn tenants() -> Vec<TenantInfo> {
    (0..TENANTS)
        .map(|i| TenantInfo {
            id: format!("tenant-{i:02}"),
            group: group_of(i).to_owned(),
            model: if group_of(i) == "strong" {
                "chat-strong"
            } else {
                "chat-fast"
            }
            .to_owned(),
            lora: (i % 10 != 9).then(|| format!("lora-{i:02}")),
            slo: None,
        })
        .collect()
}

/// One request's record, drawn from `rng`.
fn request(rng: &mut StdRng, id: u64, t: &TenantInfo, intended_ms: f64) -> RequestRecord {
    let lateness = rng.random::<f64>() * 2.0;
    let mut outcome = match rng.random_range(0..1000) {
        0..=9 => Outcome::ServerError,
        10..=14 => Outcome::Timeout,
        15..=19 => Outcome::Truncated,
        20..=22 => Outcome::StreamError,
        23..=25 => Outcome::ClientError,
        _ => Outcome::Ok,
    };
    if t.id == STARVED || (t.id == THROTTLED && rng.random_range(0..3) == 0) {
        outcome = Outcome::RateLimited;
    }
    let input_tokens = rng.random_range(200..1200);
    let base = RequestRecord {
        id,
        tenant: t.id.clone(),
        group: t.group.clone(),
        model: t.model.clone(),
        outcome,
        status: 200,
        warmup: intended_ms < WARMUP_S * 1000.0,
        intended_start_ms: intended_ms,
        actual_start_ms: intended_ms + lateness,
        dispatched_ms: None,
        ttft_ms: None,
        ttfc_ms: None,
        tpot_ms: None,
        e2e_ms: None,
        itl_ms: Vec::new(),
        chunk_gaps_ms: Vec::new(),
        input_tokens,
        output_tokens: 0,
        output_tokens_estimated: false,
        error: None,
    };
    match outcome {
        Outcome::Ok => {
            let slow = if t.group == "strong" { 3.0 } else { 1.0 };
            // A long right tail: most TTFTs near 80 ms, a few several times that.
            let ttft = lateness + slow * (60.0 - 40.0 * rng.random::<f64>().ln());
            let tokens: u64 = rng.random_range(20..160);
            let itl: Vec<f64> = (1..tokens)
                .map(|_| slow * (12.0 + 6.0 * rng.random::<f64>()))
                .collect();
            let e2e = ttft + itl.iter().sum::<f64>();
            RequestRecord {
                ttft_ms: Some(ttft),
                ttfc_ms: Some(ttft),
                tpot_ms: Some((e2e - ttft) / (tokens - 1) as f64),
                e2e_ms: Some(e2e),
                chunk_gaps_ms: itl.clone(),
                itl_ms: itl,
                output_tokens: tokens,
                output_tokens_estimated: id.is_multiple_of(97),
                ..base
            }
        }
        Outcome::RateLimited => RequestRecord {
            status: 429,
            error: Some("rate limit: rpm exceeded".to_owned()),
            ..base
        },
        Outcome::ServerError => RequestRecord {
            status: 503,
            error: Some("upstream unavailable, \"retry\" later".to_owned()),
            ..base
        },
        Outcome::ClientError => RequestRecord {
            status: 400,
            error: Some("bad request".to_owned()),
            ..base
        },
        Outcome::Timeout => RequestRecord {
            status: 0,
            error: Some("timed out after 30 s".to_owned()),
            ..base
        },
        // Partial streams: timings exist but must not count.
        _ => RequestRecord {
            ttft_ms: Some(50.0),
            e2e_ms: Some(90_000.0),
            output_tokens: 3,
            error: Some("stream ended without [DONE]\nafter 3 chunks".to_owned()),
            ..base
        },
    }
}

/// The synthetic run for `seed`.
pub fn synthetic_run(seed: u64) -> RunData {
    let mut rng = StdRng::seed_from_u64(seed);
    let tenants = tenants();
    let mut records = Vec::new();
    let end_ms = (WARMUP_S + DURATION_S) * 1000.0;
    for t in &tenants {
        let rate_per_s = if t.group == "heavy" { 2.0 } else { 0.8 };
        let mut at_ms = 0.0;
        loop {
            // Exponential gaps make a Poisson process.
            at_ms += -(1.0 - rng.random::<f64>()).ln() / rate_per_s * 1000.0;
            if at_ms >= end_ms {
                break;
            }
            let id = records.len() as u64;
            records.push(request(&mut rng, id, t, at_ms));
        }
    }
    RunData {
        scenario: "synthetic-30".to_owned(),
        seed,
        started_at_unix_ms: 1_767_225_600_000,
        duration_s: DURATION_S,
        warmup_s: WARMUP_S,
        target: "embedded".to_owned(),
        tenants,
        records,
        cost: CostModel {
            server_gbp_per_month: 399.0,
            lora_training_gbp_per_tenant: 30.0,
            lora_amortisation_months: 12.0,
            api_input_gbp_per_mtok: 0.4,
            api_output_gbp_per_mtok: 1.6,
            active_hours_per_month: 200.0,
        },
        gates: vec![
            GateSpec {
                name: "ttft-p99-small".to_owned(),
                scope: GateScope::Group("small".to_owned()),
                metric: "ttft_ms.p99".to_owned(),
                op: GateOp::Lt,
                threshold: 2000.0,
            },
            GateSpec {
                name: "every-tenant-served".to_owned(),
                scope: GateScope::EachTenant,
                metric: "outcomes.ok".to_owned(),
                op: GateOp::Ge,
                threshold: 1.0,
            },
            GateSpec {
                name: "error-rate".to_owned(),
                scope: GateScope::Overall,
                metric: "error_rate".to_owned(),
                op: GateOp::Lt,
                threshold: 0.5,
            },
        ],
        engines: vec![EngineInfo {
            name: "gpu0".to_owned(),
            gpu: "rtx-5090".to_owned(),
            model: "mistral-7b-instruct".to_owned(),
            precision: "bf16".to_owned(),
            kv_cache_tokens: 84_368,
            max_loras: 8,
            url: "http://127.0.0.1:40001".to_owned(),
        }],
        notes: vec!["synthetic data from the integration test".to_owned()],
        slo: None,
        group_slos: Vec::new(),
        isolation: None,
        shard: None,
    }
}
