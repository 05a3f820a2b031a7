//! Token timing: ITL at batch 1 equals the model's step time, and continuous batching makes
//! steps slower as more requests share them. Runs on tokio's paused clock, so the simulated
//! times are exact while the HTTP traffic is real.

use std::time::Duration;

use serde_json::json;

use crate::common::{Sim, sse};
use mocks::EngineConfig;
use mocks::catalog::Catalog;
use mocks::cost::{BatchShape, StepCostModel};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn decode_step(cfg: &EngineConfig, ctx: u64) -> Duration {
    let spec = cfg.resolve();
    let Ok(spec) = spec else {
        panic!("{:?}", spec.err())
    };
    let Ok(cat) = Catalog::get() else {
        panic!("catalogue")
    };
    let m = StepCostModel::new(&spec, cat.lora);
    m.step_time(&BatchShape {
        seqs: 1,
        new_tokens: 1,
        kv_read_tokens: ctx + 1,
        attn_pairs: ctx as f64 + 0.5,
        sampled: 1,
        ..Default::default()
    })
}

fn body(max_tokens: u32, salt: usize) -> serde_json::Value {
    json!({
        "model": "mistral-7b-instruct",
        "messages": [{"role": "user", "content": format!("request number {salt} about the invoice")}],
        "max_tokens": max_tokens,
        "stream": true,
    })
}

#[tokio::test(start_paused = true)]
async fn itl_at_batch_one_is_the_models_step_time() {
    let cfg = EngineConfig::default();
    let sim = Sim::start(cfg.clone()).await;
    let (_, events) = sse(sim.post("/v1/chat/completions", body(40, 0)).await).await;
    assert_eq!(events.len(), 1 + 40 + 1);
    let tl = sim.handle.timelines();
    let itl = median(tl[0].itls());
    let expected = decode_step(&cfg, u64::from(tl[0].prompt_tokens) + 20);
    let diff = itl.abs_diff(expected);
    assert!(
        diff < Duration::from_millis(1),
        "ITL {itl:?} vs step {expected:?}"
    );
    // Mistral-7B bf16 on a 5090: ~14 GB per step over 1.79 TB/s, plus overheads.
    assert!(
        (Duration::from_millis(8)..Duration::from_millis(16)).contains(&itl),
        "{itl:?}"
    );
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn more_concurrent_requests_make_each_step_slower_but_batch() {
    let cfg = EngineConfig::default();
    let sim = Sim::start(cfg.clone()).await;
    let (_, _) = sse(sim.post("/v1/chat/completions", body(30, 0)).await).await;
    let single = median(sim.handle.timelines()[0].itls());

    let n = 32;
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = sim.client.clone();
        let url = sim.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&body(30, i + 1)).send().await;
            match r {
                Ok(r) => r.bytes().await.map(|b| b.len()).unwrap_or(0),
                Err(_) => 0,
            }
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap_or(0) > 0);
    }
    let tls = sim.handle.timelines();
    let batched: Vec<Duration> = tls[1..].iter().flat_map(|t| t.itls()).collect();
    assert_eq!(batched.len(), n * 29);
    let batched = median(batched);
    assert!(batched > single, "batched {batched:?} vs single {single:?}");
    // Continuous batching: 32 streams share each step, far from 32× the single-stream time.
    assert!(
        batched < single * 3,
        "batched {batched:?} vs single {single:?}"
    );
    sim.stop().await;
}
