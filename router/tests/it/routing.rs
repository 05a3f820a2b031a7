//! Model → deployment, LoRA rewrite, fallbacks, upstream failures, request ids.

use std::time::Duration;

use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::common::*;

#[tokio::test]
async fn model_is_rewritten_to_the_tenants_adapter() {
    let s = Stack::start().await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    mount_json(&s.strong, vllm_json("hi", (5, 1))).await;

    let r = s.chat(T1, &chat_body("chat-fast", false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tenantbench-adapter"), Some("tenant-01-fast"));
    assert_eq!(header(&r, "x-litellm-model-id"), Some("fast-a"));
    assert_eq!(header(&r, "x-litellm-model-group"), Some("chat-fast"));
    let base = header(&r, "x-litellm-model-api-base").unwrap_or_default();
    assert!(base.starts_with(&s.fast.uri()), "{base}");

    let r = s.chat(T1, &chat_body("chat-strong", false)).await;
    assert_eq!(r.status(), 200);
    // tenant-02 has no adapter: the deployment's base model is sent.
    let r2 = s.chat(T2, &chat_body("chat-fast", false)).await;
    assert_eq!(r2.status(), 200);
    assert!(r2.headers().get("x-tenantbench-adapter").is_none());

    let fast: Vec<Value> = Stack::received(&s.fast).await;
    let models: Vec<&str> = fast.iter().filter_map(|b| b["model"].as_str()).collect();
    assert_eq!(models, vec!["tenant-01-fast", "mistral-7b-instruct"]);
    let strong = Stack::received(&s.strong).await;
    assert_eq!(strong[0]["model"], "tenant-01-strong");
    // The rest of the client's body is forwarded as sent.
    assert_eq!(
        strong[0]["messages"][0]["content"],
        "Say hello to the world."
    );
    assert_eq!(strong[0]["max_tokens"], 16);
}

#[tokio::test]
async fn upstream_gets_its_own_key_and_the_clients_request_id() {
    let s = Stack::start().await;
    mount_json(&s.strong, vllm_json("hi", (5, 1))).await;
    let r = s
        .client
        .post(s.url("/chat/completions"))
        .bearer_auth(T1)
        .header("x-request-id", "req-42-abc")
        .json(&chat_body("chat-strong", false))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-request-id"), Some("req-42-abc"));
    let got = s.strong.received_requests().await.unwrap_or_default();
    let h = |n: &str| {
        got[0]
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(h("x-request-id").as_deref(), Some("req-42-abc"));
    // The deployment's key goes upstream, never the tenant's.
    assert_eq!(
        h("authorization").as_deref(),
        Some("Bearer sk-upstream-secret")
    );
}

#[tokio::test]
async fn unknown_model_is_404_and_forbidden_model_is_403() {
    let s = Stack::start().await;
    let r = s.chat(T1, &chat_body("chat-huge", false)).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(v["error"]["code"], "model_not_found");

    let r = s.chat(T2, &chat_body("chat-strong", false)).await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["param"], "model");
    assert!(Stack::received(&s.strong).await.is_empty());
}

#[tokio::test]
async fn failing_group_falls_back_with_the_fallback_groups_adapter() {
    let mut s = Stack::start().await;
    mount_status(
        &s.strong,
        500,
        r#"{"error":{"message":"CUDA out of memory"}}"#,
    )
    .await;
    mount_sse(&s.fast, vllm_sse(&[" hi"], Some((5, 1)))).await;

    let r = s.chat(T1, &chat_body("chat-strong", true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-litellm-model-group"), Some("chat-fast"));
    assert_eq!(header(&r, "x-litellm-attempted-fallbacks"), Some("1"));
    assert_eq!(header(&r, "x-tenantbench-adapter"), Some("tenant-01-fast"));
    let text = r.text().await.expect("body");
    assert!(text.ends_with("data: [DONE]\n\n"));

    assert_eq!(Stack::received(&s.strong).await.len(), 1);
    let fast = Stack::received(&s.fast).await;
    assert_eq!(fast[0]["model"], "tenant-01-fast");

    let lines = s.stop().await;
    assert_eq!(lines[0]["model"], "chat-strong");
    assert_eq!(lines[0]["model_group"], "chat-fast");
    assert_eq!(lines[0]["fallbacks"], 1);
    assert_eq!(lines[0]["attempts"], 2);
    assert_eq!(lines[0]["outcome"], "ok");
}

#[tokio::test]
async fn connect_errors_and_timeouts_fall_back_too() {
    // chat-strong points at a closed port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let s = Stack::with(Opts {
        strong_base: Some(format!("http://{closed}/v1")),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let r = s.chat(T1, &chat_body("chat-strong", false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-litellm-model-group"), Some("chat-fast"));

    // chat-strong answers too slowly for its 0.3 s timeout.
    let slow = Stack::with(Opts {
        strong_timeout_s: 0.3,
        ..Opts::default()
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(vllm_json("late", (5, 1)))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&slow.strong)
        .await;
    mount_json(&slow.fast, vllm_json("hi", (5, 1))).await;
    let t0 = std::time::Instant::now();
    let r = slow.chat(T1, &chat_body("chat-strong", false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-litellm-model-group"), Some("chat-fast"));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn upstream_trouble_maps_to_502_503_504() {
    let cases = [(500, 502), (503, 503), (429, 503)];
    for (upstream, want) in cases {
        let s = Stack::start().await;
        // tenant-02 may not use chat-strong, so chat-fast has no fallback for it.
        mount_status(
            &s.fast,
            upstream,
            r#"{"error":{"message":"engine trouble"}}"#,
        )
        .await;
        let r = s.chat(T2, &chat_body("chat-fast", false)).await;
        assert_eq!(r.status().as_u16(), want, "upstream {upstream}");
        let v: Value = r.json().await.expect("json");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("engine trouble")),
            "{v}"
        );
    }
    let s = Stack::with(Opts {
        strong_timeout_s: 0.2,
        fast_base: Some("http://127.0.0.1:9/v1".into()),
        ..Opts::default()
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&s.strong)
        .await;
    // Strong times out, then its fallback (fast) is unreachable: the last failure decides.
    let r = s.chat(T1, &chat_body("chat-strong", false)).await;
    assert_eq!(r.status(), 502);
}

#[tokio::test]
async fn engine_400_passes_through_without_fallback() {
    let s = Stack::start().await;
    let body = r#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 9000 tokens.","type":"BadRequestError","param":null,"code":400}"#;
    mount_status(&s.strong, 400, body).await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let r = s.chat(T1, &chat_body("chat-strong", false)).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["type"], "BadRequestError");
    assert!(
        Stack::received(&s.fast).await.is_empty(),
        "a 400 must not fall back"
    );
}
