//! Concurrency and replicas: one allowance however many requests race, in one process and
//! across two router processes sharing Redis (issue 3 case 2 and the 1,000-in-flight test).

use std::time::Duration;

use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::common::*;
use crate::services;

fn shared(url: &str, prefix: &str, db: &str, tenant: &str) -> Opts {
    Opts {
        fast_prices: (0.0, 0.0001),
        tenants: tenant.to_string(),
        general: format!(", redis_url: \"{url}\", database_url: \"{db}\""),
        settings: format!(", redis_prefix: \"{prefix}\", budget_exceeded_status: 429"),
        ..Opts::default()
    }
}

#[tokio::test]
async fn two_replicas_on_redis_enforce_one_rpm_allowance() {
    // Issue 3 case 2 (LiteLLM #40291, #27736): rpm 10, tpm 1000, 30 requests round-robin.
    let (url, prefix) = services::redis_url();
    let db = services::pg_database().await;
    let tenant = "  - id: shared\n    keys: [sk-shared]\n    rpm_limit: 10\n    tpm_limit: 1000\n";
    let a = Stack::with(shared(&url, &prefix, &db, tenant)).await;
    let b = Stack::with(shared(&url, &prefix, &db, tenant)).await;
    for s in [&a, &b] {
        mount_json(&s.fast, vllm_json("hi", (5, 5))).await;
    }
    let mut body = chat_body("chat-fast", false);
    body["max_tokens"] = json!(5);
    let mut ok = 0;
    for i in 0..30 {
        let s = if i % 2 == 0 { &a } else { &b };
        if s.chat("sk-shared", &body).await.status() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
    let r = b.chat("sk-shared", &body).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("0"));
}

async fn thousand_in_flight(stacks: &[Stack]) -> (usize, f64) {
    for s in stacks {
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(vllm_json("hi", (5, 10)))
                    .set_delay(Duration::from_millis(200)),
            )
            .mount(&s.fast)
            .await;
    }
    let mut body = chat_body("chat-fast", false);
    body["max_tokens"] = json!(10);
    let reqs = (0..1000).map(|i| {
        let s = &stacks[i % stacks.len()];
        let body = body.clone();
        async move { s.chat("sk-payg", &body).await.status().as_u16() }
    });
    let codes = futures_util::future::join_all(reqs).await;
    let ok = codes.iter().filter(|c| **c == 200).count();
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    let (_, rows) = stacks[0]
        .admin_get(MASTER, "/spend/logs?tenant_id=payg")
        .await;
    let sum: f64 = rows
        .as_array()
        .map_or(0.0, |r| r.iter().filter_map(|x| x["spend"].as_f64()).sum());
    (ok, sum)
}

const PAYG: &str = "  - id: payg\n    keys: [sk-payg]\n    max_budget: 0.1\n";

#[tokio::test]
async fn a_thousand_requests_in_flight_cannot_overspend_in_one_process() {
    // Each request costs 0.001 (worst case = actual): the budget allows 100.
    let s = Stack::with(Opts {
        fast_prices: (0.0, 0.0001),
        tenants: PAYG.into(),
        settings: ", budget_exceeded_status: 429".into(),
        ..Opts::default()
    })
    .await;
    let (ok, sum) = thousand_in_flight(std::slice::from_ref(&s)).await;
    assert!((1..=101).contains(&ok), "{ok} succeeded");
    assert!(sum <= 0.1 + 0.001 + 1e-9, "spent {sum}");
    assert_eq!(ok, 100);
}

#[tokio::test]
async fn a_thousand_requests_in_flight_across_two_replicas_cannot_overspend() {
    let (url, prefix) = services::redis_url();
    let db = services::pg_database().await;
    let a = Stack::with(shared(&url, &prefix, &db, PAYG)).await;
    let b = Stack::with(shared(&url, &prefix, &db, PAYG)).await;
    let (ok, sum) = thousand_in_flight(&[a, b]).await;
    assert!((1..=101).contains(&ok), "{ok} succeeded");
    assert!(sum <= 0.1 + 0.001 + 1e-9, "spent {sum}");
}

/// Starts the real binary with `general` (extra `general_settings` entries) and returns its
/// stderr once it is ready.
async fn startup_log(general: &str) -> String {
    let bin = binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("router.yaml");
    let text = format!(
        "model_list:\n  - model_name: chat-fast\n    litellm_params: {{ model: hosted_vllm/m, api_base: \"http://127.0.0.1:9/v1\" }}\ngeneral_settings: {{ master_key: {MASTER} {general} }}\ntenantbench_settings: {{ spend_db: \":memory:\" }}\ntenants:\n  - id: t\n    keys: [sk-t]\n    rpm_limit: 10\n"
    );
    std::fs::write(&cfg, text).expect("config");
    let port = free_port();
    let child = start_binary(&bin, &cfg, port).await;
    drop(child);
    std::fs::read_to_string(binary_log(&cfg, port)).expect("router log")
}

#[tokio::test]
async fn without_redis_startup_warns_that_limits_are_per_process() {
    let log = startup_log("").await;
    let line = log
        .lines()
        .find(|l| l.contains("PER ROUTER PROCESS"))
        .unwrap_or_else(|| panic!("no per-process warning in:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("no redis configured"), "{line}");
    assert!(
        !log.contains(MASTER) && !log.contains("sk-t\n"),
        "a key in the log:\n{log}"
    );
    // With Redis the same start-up says the limits are shared instead.
    let (url, _) = services::redis_url();
    let log = startup_log(&format!(", redis_url: \"{url}\"")).await;
    assert!(!log.contains("PER ROUTER PROCESS"), "{log}");
    assert!(log.contains("shared through redis"), "{log}");
}
