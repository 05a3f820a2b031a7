//! Rate limits and budgets through the HTTP surface.

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::common::*;
use crate::services;

fn limited(extra: &str) -> String {
    format!("  - id: limited\n    keys: [sk-limited]\n{extra}")
}

#[tokio::test]
async fn rpm_limit_gives_429_with_retry_after_and_headers() {
    let s = Stack::with(Opts {
        tenants: limited("    rpm_limit: 2\n"),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let body = chat_body("chat-fast", false);
    let r1 = s.chat("sk-limited", &body).await;
    assert_eq!(r1.status(), 200);
    assert_eq!(header(&r1, "x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(header(&r1, "x-ratelimit-limit-requests"), Some("2"));
    let r2 = s.chat("sk-limited", &body).await;
    assert_eq!(header(&r2, "x-ratelimit-remaining-requests"), Some("0"));
    let r3 = s.chat("sk-limited", &body).await;
    assert_eq!(r3.status(), 429);
    // 2 per minute in a sliding window: the next request fits when the first admission
    // leaves the window, 60 s after it.
    let retry: u64 = header(&r3, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((55..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&r3, "x-ratelimit-remaining-requests"), Some("0"));
    let v: Value = r3.json().await.expect("json");
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("RPM"))
    );
    // Other tenants are not affected.
    assert_eq!(s.chat(T1, &body).await.status(), 200);
    assert_eq!(Stack::received(&s.fast).await.len(), 3);
    let m = s
        .client
        .get(format!("{}/metrics", s.root()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(m.lines().any(|l| l
        == "tenantbench_router_rate_limit_rejections_total{tenant=\"limited\",limit=\"requests\"} 1"));
}

#[tokio::test]
async fn tpm_reserves_estimates_and_reconciles_streams_with_usage() {
    // Issue 3 case 3: tpm_limit 100, streams whose usage is 80 tokens each: the counter moves by
    // 80 per stream, and the third stream is refused.
    let s = Stack::with(Opts {
        tenants: limited("    tpm_limit: 100\n"),
        ..Opts::default()
    })
    .await;
    mount_sse(&s.fast, vllm_sse(&[" a"], Some((70, 10)))).await;
    let mut body = chat_body("chat-fast", true);
    body["max_tokens"] = json!(200);
    let r1 = s.chat("sk-limited", &body).await;
    assert_eq!(r1.status(), 200);
    // At admission the estimate (prompt + 200) overdraws the bucket.
    assert_eq!(header(&r1, "x-ratelimit-remaining-tokens"), Some("0"));
    let _ = r1.text().await;
    // After the stream, usage (80) replaced the estimate: about 20 tokens are left.
    let models = s
        .client
        .get(s.url("/models"))
        .bearer_auth("sk-limited")
        .send()
        .await
        .expect("models");
    let left: u64 = header(&models, "x-ratelimit-remaining-tokens")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((20..=23).contains(&left), "{left} tokens left");
    let r2 = s.chat("sk-limited", &body).await;
    assert_eq!(r2.status(), 200);
    let _ = r2.text().await;
    let r3 = s.chat("sk-limited", &body).await;
    assert_eq!(r3.status(), 429);
    let v: Value = r3.json().await.expect("json");
    assert_eq!(v["error"]["type"], "tokens");
}

/// The `general_settings` and `tenantbench_settings` additions that put limits and budget
/// holds in Redis (`Some((url, key prefix))`), or nothing for the in-process state.
fn shared_state(shared: Option<&(String, String)>) -> (String, String) {
    match shared {
        Some((url, prefix)) => (
            format!(", redis_url: \"{url}\""),
            format!(", redis_prefix: \"{prefix}\""),
        ),
        None => (String::new(), String::new()),
    }
}

/// One stream at a time: a second request while the first streams is refused; once the
/// client has read the last byte, the slot is free again. `shared` puts the slot in Redis.
async fn parallel_slot_is_held_until_the_last_byte(shared: Option<(String, String)>) {
    let engine = SlowEngine::start(SlowEngine::vllm_events(4), Duration::from_millis(150)).await;
    let (general, settings) = shared_state(shared.as_ref());
    let s = Stack::with(Opts {
        fast_base: Some(engine.base.clone()),
        tenants: limited("    max_parallel_requests: 1\n"),
        general,
        settings,
        ..Opts::default()
    })
    .await;
    let (_, ready) = s.admin_get(MASTER, "/health/readiness").await;
    let want = if shared.is_some() {
        "redis"
    } else {
        "per-process"
    };
    assert_eq!(ready["limits"], want, "{ready}");
    let body = chat_body("chat-fast", true);
    let first = s.chat("sk-limited", &body).await;
    assert_eq!(first.status(), 200);
    let second = s.chat("sk-limited", &body).await;
    assert_eq!(second.status(), 429);
    let v: Value = second.json().await.expect("json");
    assert_eq!(v["error"]["type"], "parallel_requests");
    let text = first.text().await.expect("stream");
    assert!(text.ends_with("data: [DONE]\n\n"));
    // Give the router a moment to see the body finished.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = s.chat("sk-limited", &body).await;
    assert_eq!(third.status(), 200);
    let _ = third.text().await;
    engine.token.cancel();
}

#[tokio::test]
async fn parallel_slot_is_held_until_the_stream_ends() {
    parallel_slot_is_held_until_the_last_byte(None).await;
}

#[tokio::test]
async fn parallel_slot_is_held_until_the_stream_ends_on_redis() {
    parallel_slot_is_held_until_the_last_byte(Some(services::redis_url())).await;
}

#[tokio::test]
async fn a_tenants_rpm_limit_is_shared_by_its_keys() {
    let s = Stack::with(Opts {
        tenants: "  - id: two-keys\n    keys: [sk-two-1, sk-two-2]\n    rpm_limit: 2\n".into(),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let body = chat_body("chat-fast", false);
    let r1 = s.chat("sk-two-1", &body).await;
    assert_eq!(r1.status(), 200);
    let r2 = s.chat("sk-two-2", &body).await;
    assert_eq!(r2.status(), 200);
    assert_eq!(header(&r2, "x-ratelimit-remaining-requests"), Some("0"));
    for key in ["sk-two-1", "sk-two-2"] {
        let r = s.chat(key, &body).await;
        assert_eq!(r.status(), 429, "{key}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["type"], "requests");
    }
    assert_eq!(Stack::received(&s.fast).await.len(), 2);
}

/// `"12.5s"` → 12.5.
fn reset_of(r: &reqwest::Response, name: &str) -> f64 {
    header(r, name)
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name}: {:?}", header(r, name)))
}

#[tokio::test]
async fn reset_headers_count_down_to_the_oldest_entry_leaving_the_window() {
    let s = Stack::with(Opts {
        tenants: limited("    rpm_limit: 5\n    tpm_limit: 10000\n"),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let body = chat_body("chat-fast", false);
    let r1 = s.chat("sk-limited", &body).await;
    assert_eq!(r1.status(), 200);
    // Just admitted: the entry leaves the 60 s window in (almost) 60 s.
    for name in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
        let reset = reset_of(&r1, name);
        assert!((59.0..=60.0).contains(&reset), "{name}: {reset}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The second request's headers still count down to the first entry, 1.5 s older.
    let r2 = s.chat("sk-limited", &body).await;
    assert_eq!(r2.status(), 200);
    for name in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
        let reset = reset_of(&r2, name);
        assert!((57.0..=58.6).contains(&reset), "{name}: {reset}");
    }
}

#[tokio::test]
async fn default_max_tokens_estimate_is_reserved_when_max_tokens_is_absent() {
    let s = Stack::with(Opts {
        tenants: limited("    tpm_limit: 10000\n"),
        settings: ", default_max_tokens_estimate: 100".into(),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let mut body = chat_body("chat-fast", false);
    body.as_object_mut().map(|o| o.remove("max_tokens"));
    let prompt = wire::tokens::count_chat(["Say hello to the world."]) as u64;
    let remaining = |r: &reqwest::Response| -> u64 {
        header(r, "x-ratelimit-remaining-tokens")
            .and_then(|v| v.parse().ok())
            .expect("remaining tokens")
    };
    // At admission the window holds the prompt and the configured 100, not 256.
    let r1 = s.chat("sk-limited", &body).await;
    assert_eq!(r1.status(), 200);
    assert_eq!(remaining(&r1), 10_000 - (prompt + 100));
    // Then usage (6) replaced it; with n = 2 the default counts once per choice.
    body["n"] = json!(2);
    let r2 = s.chat("sk-limited", &body).await;
    assert_eq!(r2.status(), 200);
    assert_eq!(remaining(&r2), 10_000 - 6 - (prompt + 200));
}

#[tokio::test]
async fn spend_is_usage_times_the_deployments_prices() {
    let mut s = Stack::with(Opts {
        fast_prices: (0.001, 0.002),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (10, 5))).await;
    let r = s.chat(T1, &chat_body("chat-fast", false)).await;
    assert_eq!(r.status(), 200);
    let cost: f64 = header(&r, "x-litellm-response-cost")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!((cost - 0.02).abs() < 1e-9, "cost {cost}");
    let m = s
        .client
        .get(format!("{}/metrics", s.root()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        m.contains("tenantbench_router_spend_total{tenant=\"tenant-01\"} 0.02"),
        "{m}"
    );
    let lines = s.stop().await;
    assert!((lines[0]["cost"].as_f64().unwrap_or(0.0) - 0.02).abs() < 1e-9);
}

#[tokio::test]
async fn budget_exceeded_is_refused_with_its_own_type() {
    let s = Stack::with(Opts {
        fast_prices: (0.001, 0.002),
        tenants: limited("    max_budget: 0.05\n    budget_duration: 1h\n"),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (10, 5))).await;
    let mut body = chat_body("chat-fast", false);
    body["max_tokens"] = json!(1);
    let mut ok = 0;
    let mut refused = None;
    for _ in 0..5 {
        let r = s.chat("sk-limited", &body).await;
        if r.status() == 200 {
            ok += 1;
        } else {
            refused = Some(r);
            break;
        }
    }
    // Each request costs 0.02: two fit in 0.05, the third's worst case does not.
    assert_eq!(ok, 2);
    let r = refused.expect("a refusal");
    assert_eq!(r.status(), 400);
    assert!(
        header(&r, "retry-after").is_some(),
        "budget resets within the hour"
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "budget_exceeded");
}

#[tokio::test]
async fn racing_requests_cannot_overspend_the_budget() {
    // Issue 3 case 1: budget 0.010, each request's worst case 0.004 (40 tokens × 0.0001),
    // 10 requests released together: at most 2 succeed.
    let s = Stack::with(Opts {
        fast_prices: (0.0, 0.0001),
        tenants: limited("    max_budget: 0.010\n"),
        settings: ", budget_exceeded_status: 429".into(),
        ..Opts::default()
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(vllm_json("hi", (10, 35)))
                .set_delay(Duration::from_millis(300)),
        )
        .mount(&s.fast)
        .await;
    let mut body = chat_body("chat-fast", false);
    body["max_tokens"] = json!(40);
    let all = futures_util::future::join_all((0..10).map(|_| s.chat("sk-limited", &body))).await;
    let ok = all.iter().filter(|r| r.status() == 200).count();
    let refused = all.iter().filter(|r| r.status() == 429).count();
    assert_eq!((ok, refused), (2, 8));
    // Spent 0.007; the next worst case (0.004) no longer fits.
    let r = s.chat("sk-limited", &body).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "budget_exceeded");
    // The promise itself: what was spent never passes the budget by more than one request's
    // cost (35 completion tokens × 0.0001), in the ledger and in the metrics.
    let one_request = 0.0035;
    let (_, rows) = s.admin_get(MASTER, "/spend/logs?tenant_id=limited").await;
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), ok);
    let spent: f64 = rows.iter().filter_map(|r| r["spend"].as_f64()).sum();
    assert!(spent <= 0.010 + one_request + 1e-12, "spent {spent}");
    assert!((spent - 0.007).abs() < 1e-9, "spent {spent}");
    let m = s.metrics_text().await;
    let exported = metric(&m, "tenantbench_router_spend_total{tenant=\"limited\"}");
    assert!((exported - spent).abs() < 1e-9, "metrics say {exported}");
}

#[tokio::test]
async fn budget_resets_when_its_period_ends() {
    budget_resets_at_the_period_end(None).await;
}

#[tokio::test]
async fn budget_resets_when_its_period_ends_on_redis() {
    budget_resets_at_the_period_end(Some(services::redis_url())).await;
}

async fn budget_resets_at_the_period_end(shared: Option<(String, String)>) {
    // budget_duration 2s: periods start at multiples of 2 s since the epoch, so once refused
    // the tenant is served again within Retry-After.
    let (general, settings) = shared_state(shared.as_ref());
    let s = Stack::with(Opts {
        fast_prices: (0.001, 0.002),
        tenants: limited("    max_budget: 0.05\n    budget_duration: 2s\n"),
        general,
        settings,
        ..Opts::default()
    })
    .await;
    let (_, ready) = s.admin_get(MASTER, "/health/readiness").await;
    if shared.is_some() {
        assert_eq!(ready["limits"], "redis", "{ready}");
    }
    mount_json(&s.fast, vllm_json("hi", (10, 5))).await;
    let mut body = chat_body("chat-fast", false);
    body["max_tokens"] = json!(1);
    // Each request costs 0.02: two fit a period (more if the burst straddles a boundary).
    let mut ok = 0;
    let refused = loop {
        let r = s.chat("sk-limited", &body).await;
        if r.status() == 200 {
            ok += 1;
            assert!(ok <= 6, "the budget never refused");
            continue;
        }
        break r;
    };
    assert!(ok >= 2, "{ok} served before the refusal");
    assert_eq!(refused.status(), 400);
    let wait_ms: u64 = header(&refused, "retry-after-ms")
        .and_then(|v| v.parse().ok())
        .expect("a 2s budget period says when it resets");
    assert!((1..=2000).contains(&wait_ms), "retry-after-ms {wait_ms}");
    let v: Value = refused.json().await.expect("json");
    assert_eq!(v["error"]["type"], "budget_exceeded");
    tokio::time::sleep(Duration::from_millis(wait_ms + 50)).await;
    let r = s.chat("sk-limited", &body).await;
    assert_eq!(r.status(), 200, "a new period has its whole budget");
    // The ledger keeps every period's rows: 0.02 per served request.
    let (_, rows) = s.admin_get(MASTER, "/spend/logs?tenant_id=limited").await;
    assert_eq!(rows.as_array().map(Vec::len), Some(ok + 1));
}
