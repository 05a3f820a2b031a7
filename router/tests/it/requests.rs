//! Bad requests: 400 naming the field, 413 before any upstream call or counter change.

use serde_json::{Value, json};

use crate::common::*;

async fn error_of(s: &Stack, key: &str, raw: &str) -> (u16, Value) {
    let r = s
        .client
        .post(s.url("/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(raw.to_string())
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn malformed_requests_get_400_naming_the_field() {
    let s = Stack::start().await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let msgs = r#"[{"role":"user","content":"hi"}]"#;
    let cases = [
        ("{not json".to_string(), None),
        ("[1,2]".to_string(), None),
        (
            format!(r#"{{"model":"chat-fast","messages":{msgs},"temperature":"hot"}}"#),
            Some("temperature"),
        ),
        (
            format!(r#"{{"model":"chat-fast","messages":{msgs},"max_tokens":0}}"#),
            Some("max_tokens"),
        ),
        (
            format!(r#"{{"model":"chat-fast","messages":{msgs},"max_tokens":-3}}"#),
            Some("max_tokens"),
        ),
        (
            format!(r#"{{"model":"chat-fast","messages":{msgs},"n":0}}"#),
            Some("n"),
        ),
        (
            r#"{"model":"chat-fast","messages":[]}"#.to_string(),
            Some("messages"),
        ),
        (r#"{"model":"chat-fast"}"#.to_string(), Some("messages")),
        (format!(r#"{{"messages":{msgs}}}"#), Some("model")),
    ];
    for (raw, field) in cases {
        let (status, v) = error_of(&s, T1, &raw).await;
        assert_eq!(status, 400, "{raw}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{raw}");
        assert_eq!(v["error"]["param"].as_str(), field, "{raw}: {v}");
    }
    assert!(Stack::received(&s.fast).await.is_empty());
    // `max_tokens: null` means unset.
    let (status, _) = error_of(
        &s,
        T1,
        &format!(r#"{{"model":"chat-fast","messages":{msgs},"max_tokens":null}}"#),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn huge_body_is_413_before_anything_moves() {
    let s = Stack::with(Opts {
        tenants: "  - id: limited\n    keys: [sk-limited]\n    rpm_limit: 5\n".into(),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let big = "x".repeat(20 * 1024 * 1024);
    let body = json!({"model": "chat-fast", "messages": [{"role": "user", "content": big}]});
    let r = s.chat("sk-limited", &body).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "request_too_large");

    // A chunked body (no Content-Length) is cut off at the limit as well.
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024 * 1024])),
    );
    let r = s
        .client
        .post(s.url("/chat/completions"))
        .bearer_auth("sk-limited")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    assert!(
        Stack::received(&s.fast).await.is_empty(),
        "no upstream call"
    );
    // No request token was spent: all 5 remain.
    let m = s
        .client
        .get(s.url("/models"))
        .bearer_auth("sk-limited")
        .send()
        .await
        .expect("models");
    assert_eq!(header(&m, "x-ratelimit-remaining-requests"), Some("5"));
}

#[tokio::test]
async fn legacy_completions_are_served_too() {
    let s = Stack::start().await;
    wiremock::Mock::given(wiremock::matchers::path("/v1/completions"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({
            "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": " world", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 2, "total_tokens": 3, "completion_tokens": 1},
        })))
        .mount(&s.fast)
        .await;
    let r = s
        .client
        .post(s.url("/completions"))
        .bearer_auth(T1)
        .json(&json!({"model": "chat-fast", "prompt": "Hello", "max_tokens": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let got = Stack::received(&s.fast).await;
    assert_eq!(got[0]["model"], "tenant-01-fast");
    assert_eq!(got[0]["prompt"], "Hello");
}

#[tokio::test]
async fn model_named_in_the_query_or_a_header_changes_nothing() {
    let mut s = Stack::start().await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    mount_json(&s.strong, vllm_json("hi", (5, 1))).await;
    let r = s
        .client
        .post(format!("{}?model=chat-strong", s.url("/chat/completions")))
        .bearer_auth(T1)
        .header("x-model", "chat-strong")
        .header("model", "chat-strong")
        .json(&chat_body("chat-fast", false))
        .send()
        .await
        .expect("router");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-litellm-model-group"), Some("chat-fast"));
    assert_eq!(Stack::received(&s.fast).await.len(), 1);
    assert!(Stack::received(&s.strong).await.is_empty());
    let (_, rows) = s.admin_get(MASTER, "/spend/logs").await;
    assert_eq!(rows[0]["model"], "chat-fast");
    assert_eq!(rows[0]["model_id"], "fast-a");
    let lines = s.stop().await;
    assert_eq!(lines[0]["model_group"], "chat-fast");
}
