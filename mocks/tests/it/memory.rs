//! Memory plans against vLLM's logged KV-cache sizes, refusals, and shared-GPU planning.

use mocks::{EngineConfig, SimError, plan_memory, plan_shared_gpu};

fn cfg(gpu: &str, model: &str, precision: &str, util: f64) -> EngineConfig {
    EngineConfig {
        gpu: gpu.into(),
        model: model.into(),
        precision: precision.into(),
        gpu_memory_utilization: util,
        ..Default::default()
    }
}

fn within(actual: u64, expected: u64, frac: f64) -> bool {
    (actual as f64 - expected as f64).abs() <= expected as f64 * frac
}

/// vLLM logs "GPU KV cache size: 84,368 tokens" for Qwen3-8B bf16 on an RTX 5090 at 0.9
/// (the checked cases in `mocks/README.md`, "Paged KV cache and the memory plan").
#[test]
fn qwen3_8b_on_rtx_5090_matches_vllms_logged_kv_size() {
    let plan = plan_memory(&cfg("rtx-5090", "qwen3-8b", "bf16", 0.9));
    let Ok(plan) = plan else {
        panic!("{:?}", plan.err())
    };
    eprintln!(
        "qwen3-8b/5090: {} KV tokens (vLLM: 84,368)",
        plan.kv_cache_tokens
    );
    assert_eq!(plan.kv_bytes_per_token, 2 * 36 * 8 * 128 * 2);
    assert!(
        within(plan.kv_cache_tokens, 84_368, 0.03),
        "{} tokens",
        plan.kv_cache_tokens
    );
    assert_eq!(plan.kv_cache_tokens % 16, 0);
    assert_eq!(plan.max_model_len, 40_960);
    let conc = plan.kv_cache_tokens as f64 / 40_960.0;
    assert!((plan.max_concurrency - conc).abs() < 1e-9);
}

/// vLLM logs 464,848 tokens for Qwen2-7B bf16 on an A100-80GB at 0.5 (`mocks/README.md`,
/// "Paged KV cache and the memory plan").
#[test]
fn qwen2_7b_on_a100_at_half_matches_vllms_logged_kv_size() {
    let plan = plan_memory(&cfg("a100-80gb", "qwen2-7b-instruct", "bf16", 0.5));
    let Ok(plan) = plan else {
        panic!("{:?}", plan.err())
    };
    assert!(
        within(plan.kv_cache_tokens, 464_848, 0.05),
        "{} tokens",
        plan.kv_cache_tokens
    );
}

#[test]
fn the_default_engine_and_a_4bit_32b_fit_a_5090_alone() {
    let m = plan_memory(&EngineConfig::default());
    assert!(m.is_ok(), "{:?}", m.err());
    let q = plan_memory(&cfg("rtx-5090", "qwen2.5-32b-instruct", "awq", 0.9));
    let Ok(q) = q else { panic!("{:?}", q.err()) };
    // 4-bit blocks + 16-bit embeddings ≈ 19 GB of weights.
    assert!(
        (17.0e9..21.0e9).contains(&(q.weights_bytes as f64)),
        "{}",
        q.weights_bytes
    );
}

#[test]
fn a_model_that_does_not_fit_is_refused_with_the_numbers() {
    let e = plan_memory(&cfg("rtx-5090", "qwen2.5-32b", "bf16", 0.9));
    match e {
        Err(SimError::DoesNotFit(msg)) => {
            assert!(
                msg.contains("No available memory for the cache blocks"),
                "{msg}"
            );
            assert!(msg.contains("GiB"), "{msg}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Fits the weights but not one max_model_len request: vLLM's other refusal.
    let e = plan_memory(&cfg("rtx-4090", "llama-3.1-8b-instruct", "bf16", 0.9));
    match e {
        Err(SimError::DoesNotFit(msg)) => {
            assert!(msg.contains("max seq len (131072)"), "{msg}");
            assert!(msg.contains("estimated maximum model length"), "{msg}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn shared_gpu_checks_the_sum_of_shares_and_the_sum_of_needs() {
    // chat-fast (mistral-7b bf16) + chat-strong (qwen2.5-32b AWQ) on one RTX 5090.
    let fast = EngineConfig {
        served_model_name: Some("chat-fast".into()),
        gpu_memory_utilization: 0.45,
        ..Default::default()
    };
    let strong = EngineConfig {
        served_model_name: Some("chat-strong".into()),
        ..cfg("rtx-5090", "qwen2.5-32b-instruct", "awq", 0.55)
    };
    match plan_shared_gpu(&[fast.clone(), strong.clone()]) {
        Err(SimError::DoesNotFit(msg)) => {
            assert!(
                msg.contains("chat-fast") && msg.contains("chat-strong"),
                "{msg}"
            );
            assert!(msg.contains("more than the GPU has"), "{msg}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Two small engines fit when their shares sum to <= 1.0, not when they exceed it.
    let small = |name: &str, u: f64| EngineConfig {
        served_model_name: Some(name.into()),
        max_model_len: Some(8192),
        ..cfg("h100-sxm", "qwen3-8b", "bf16", u)
    };
    let ok = plan_shared_gpu(&[small("a", 0.45), small("b", 0.45)]);
    let Ok(plans) = ok else {
        panic!("{:?}", ok.err())
    };
    assert_eq!(plans.len(), 2);
    let total: u64 = plans.iter().map(|p| p.budget_bytes).sum();
    assert!(total <= plans[0].gpu_memory_bytes);
    match plan_shared_gpu(&[small("a", 0.6), small("b", 0.6)]) {
        Err(SimError::DoesNotFit(msg)) => assert!(msg.contains("sum to 1.200"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A precision the GPU has no tensor cores for is refused with the GPU and the precision named,
/// wherever an engine is validated: `plan_memory` (`mock-vllm` start-up), `memory_needs` and
/// `plan_shared_gpu` (what `tenantbench check` calls), and `spawn`.
#[tokio::test]
async fn an_unsupported_precision_is_refused_naming_gpu_and_precision() {
    for (gpu, precision) in [
        ("a100-80gb", "nvfp4"),
        ("rtx-4090", "nvfp4"),
        ("a100-80gb", "fp8"),
    ] {
        let c = cfg(gpu, "qwen3-8b", precision, 0.9);
        let named = |e: SimError| {
            let m = e.to_string();
            assert!(
                matches!(
                    e,
                    SimError::Config {
                        field: "precision",
                        ..
                    }
                ) && m.contains(gpu)
                    && m.contains(precision)
                    && m.contains("not supported"),
                "{gpu} {precision}: {m}"
            );
        };
        match plan_memory(&c) {
            Ok(p) => panic!("{gpu} {precision} planned: {p:?}"),
            Err(e) => named(e),
        }
        match mocks::memory_needs(&c) {
            Ok(n) => panic!("{gpu} {precision} sized: {n:?}"),
            Err(e) => named(e),
        }
        match plan_shared_gpu(&[cfg(gpu, "qwen3-8b", "bf16", 0.4), c.clone()]) {
            Ok(p) => panic!("{gpu} {precision} shared: {p:?}"),
            Err(e) => named(e),
        }
        match mocks::spawn(c, tokio_util::sync::CancellationToken::new()).await {
            Ok(_) => panic!("{gpu} {precision} started"),
            Err(e) => named(e),
        }
    }
    // The supported pairs still plan.
    for (gpu, precision) in [
        ("rtx-5090", "nvfp4"),
        ("rtx-4090", "fp8"),
        ("a100-80gb", "awq"),
    ] {
        assert!(
            plan_memory(&cfg(gpu, "qwen3-8b", precision, 0.9)).is_ok(),
            "{gpu} {precision}"
        );
    }
}

/// One engine that cannot fit its GPU is worded in the singular.
#[test]
fn one_engine_that_does_not_fit_is_worded_in_the_singular() {
    match plan_shared_gpu(&[cfg("rtx-5090", "qwen2.5-32b-instruct", "bf16", 0.9)]) {
        Err(SimError::DoesNotFit(msg)) => {
            assert!(
                msg.starts_with("1 engine does not fit on one rtx-5090"),
                "{msg}"
            );
            assert!(msg.contains("it needs at least"), "{msg}");
            assert!(!msg.contains("engines"), "{msg}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
