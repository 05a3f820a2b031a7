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

/// Sends `raw` to the chat endpoint as the guarded tenant and checks that it is a 400 of type
/// `invalid_request_error` naming `field`, and that nothing moved: no upstream call, the
/// tenant's RPM and TPM untouched, no spend row, no token, spend, budget or rate-limit series
/// changed; only the request counter for code 400 counts it.
async fn refused_without_a_trace(raw: &str, field: Option<&str>) {
    let s = Stack::with(Opts {
        tenants: GUARDED.into(),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let series = untouched_series("limited");
    let text = s.metrics_text().await;
    let before = snapshot(&text, &series);
    let bad_before = count_400s(&text, "limited");
    let (status, v) = error_of(&s, "sk-limited", raw).await;
    assert_eq!(status, 400, "{raw}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{raw}: {v}");
    assert_eq!(v["error"]["param"].as_str(), field, "{raw}: {v}");
    assert!(
        Stack::received(&s.fast).await.is_empty(),
        "{raw}: upstream called"
    );
    assert_eq!(
        s.remaining("sk-limited").await,
        (Some(5), Some(10_000)),
        "{raw}: the allowance moved"
    );
    let text = s.metrics_text().await;
    assert_eq!(snapshot(&text, &series), before, "{raw}");
    assert_eq!(
        count_400s(&text, "limited") - bad_before,
        1.0,
        "{raw}: counted once as a 400"
    );
    let (_, rows) = s.admin_get(MASTER, "/spend/logs?tenant_id=limited").await;
    assert_eq!(rows.as_array().map(Vec::len), Some(0), "{raw}: {rows}");
}

/// A tenant's 400s over every model label (a request whose model never parsed counts under
/// `_unknown`).
fn count_400s(text: &str, tenant: &str) -> f64 {
    let head = format!("tenantbench_router_requests_total{{tenant=\"{tenant}\",");
    text.lines()
        .filter(|l| l.starts_with(&head) && l.contains("code=\"400\"}"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

const MSGS: &str = r#"[{"role":"user","content":"hi"}]"#;

#[tokio::test]
async fn max_tokens_null_means_unset_and_is_served() {
    let s = Stack::with(Opts {
        tenants: GUARDED.into(),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let raw = format!(r#"{{"model":"chat-fast","messages":{MSGS},"max_tokens":null}}"#);
    let (status, v) = error_of(&s, "sk-limited", &raw).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(Stack::received(&s.fast).await.len(), 1);
}

#[tokio::test]
async fn negative_max_tokens_is_400_and_moves_no_counter() {
    let raw = format!(r#"{{"model":"chat-fast","messages":{MSGS},"max_tokens":-3}}"#);
    refused_without_a_trace(&raw, Some("max_tokens")).await;
}

#[tokio::test]
async fn zero_max_tokens_is_400_and_moves_no_counter() {
    let raw = format!(r#"{{"model":"chat-fast","messages":{MSGS},"max_tokens":0}}"#);
    refused_without_a_trace(&raw, Some("max_tokens")).await;
}

#[tokio::test]
async fn zero_choices_is_400_and_moves_no_counter() {
    let raw = format!(r#"{{"model":"chat-fast","messages":{MSGS},"n":0}}"#);
    refused_without_a_trace(&raw, Some("n")).await;
}

#[tokio::test]
async fn empty_messages_is_400_and_moves_no_counter() {
    refused_without_a_trace(r#"{"model":"chat-fast","messages":[]}"#, Some("messages")).await;
}

#[tokio::test]
async fn missing_messages_is_400_and_moves_no_counter() {
    refused_without_a_trace(r#"{"model":"chat-fast"}"#, Some("messages")).await;
}

#[tokio::test]
async fn invalid_json_is_400_and_moves_no_counter() {
    refused_without_a_trace("{not json", None).await;
    refused_without_a_trace("[1,2]", None).await;
}

#[tokio::test]
async fn string_temperature_is_400_and_moves_no_counter() {
    let raw = format!(r#"{{"model":"chat-fast","messages":{MSGS},"temperature":"hot"}}"#);
    refused_without_a_trace(&raw, Some("temperature")).await;
}

#[tokio::test]
async fn missing_model_is_400_and_moves_no_counter() {
    refused_without_a_trace(&format!(r#"{{"messages":{MSGS}}}"#), Some("model")).await;
}

#[tokio::test]
async fn huge_body_is_413_before_anything_moves() {
    let mut s = Stack::with(Opts {
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
    // The router answers 413 as soon as the cap is crossed and then closes the connection
    // instead of reading the rest, so the client may see either the 413 or a send error.
    match r {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            let v: Value = r.json().await.expect("json");
            assert_eq!(v["error"]["code"], "request_too_large");
        }
        Err(e) => assert!(
            !e.is_connect() && !e.is_timeout() && !e.is_builder(),
            "the router must have taken the request before it closed: {e}"
        ),
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
    // Whatever the client saw, the router's own record says both bodies got 413.
    let lines = s.stop().await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert_eq!(
            (l["status"].as_u64(), l["outcome"].as_str()),
            (Some(413), Some("too_large")),
            "{l}"
        );
    }
    // A declared length is refused before the key is even read; the chunked body after it.
    assert_eq!(lines[0]["tenant_id"], Value::Null);
    assert_eq!(lines[1]["tenant_id"], "limited");
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

/// Series a refused request must leave alone (the request counters themselves count it).
fn untouched_series(tenant: &str) -> Vec<String> {
    let p = "tenantbench_router_";
    let mut v = vec![
        format!("{p}requests_total{{tenant=\"{tenant}\",model=\"chat-fast\",code=\"200\"}}"),
        format!("{p}request_outcomes_total{{tenant=\"{tenant}\",outcome=\"ok\"}}"),
        format!("{p}tokens_total{{tenant=\"{tenant}\",direction=\"prompt\"}}"),
        format!("{p}tokens_total{{tenant=\"{tenant}\",direction=\"completion\"}}"),
        format!("{p}spend_total{{tenant=\"{tenant}\"}}"),
        format!("{p}remaining_budget{{tenant=\"{tenant}\"}}"),
    ];
    for limit in ["requests", "tokens", "parallel_requests", "budget"] {
        v.push(format!(
            "{p}rate_limit_rejections_total{{tenant=\"{tenant}\",limit=\"{limit}\"}}"
        ));
    }
    v
}

fn snapshot(text: &str, series: &[String]) -> Vec<(String, f64)> {
    series
        .iter()
        .map(|s| (s.clone(), metric(text, s)))
        .collect()
}

const GUARDED: &str = "  - id: limited\n    keys: [sk-limited]\n    rpm_limit: 5\n    tpm_limit: 10000\n    max_budget: 1.0\n";

#[tokio::test]
async fn prompt_over_the_context_window_is_400_and_moves_no_counter() {
    // Issue: "a prompt longer than the model's context → 400 with a context-length message",
    // refused by the router itself before admission (vLLM would say the same after the router
    // had already taken an RPM entry, TPM and a budget hold).
    let mut s = Stack::with(Opts {
        tenants: GUARDED.into(),
        fast_info: ", max_input_tokens: 64".into(),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let before = snapshot(&s.metrics_text().await, &untouched_series("limited"));
    let long = json!({
        "model": "chat-fast",
        "messages": [{"role": "user", "content": "word ".repeat(200)}],
        "max_tokens": 16,
    });
    let greedy = json!({
        "model": "chat-fast",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
    });
    for (body, says) in [
        // A prompt alone over the window is named alone, as vLLM does.
        (
            &long,
            "tokens in the messages. Please reduce the length of the messages.",
        ),
        (&greedy, "100 in the completion"),
    ] {
        let r = s.chat("sk-limited", body).await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
        assert_eq!(v["error"]["param"], "messages", "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.starts_with(
                "This model's maximum context length is 64 tokens. However, you requested"
            ) && msg.contains(says),
            "{msg}"
        );
    }
    // The legacy endpoint checks its prompt the same way.
    let r = s
        .client
        .post(s.url("/completions"))
        .bearer_auth("sk-limited")
        .json(&json!({"model": "chat-fast", "prompt": "word ".repeat(200)}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["param"].as_str()),
        (Some("context_length_exceeded"), Some("prompt"))
    );

    assert!(
        Stack::received(&s.fast).await.is_empty(),
        "no upstream call"
    );
    assert_eq!(s.remaining("sk-limited").await, (Some(5), Some(10_000)));
    assert_eq!(
        snapshot(&s.metrics_text().await, &untouched_series("limited")),
        before
    );
    let (_, rows) = s.admin_get(MASTER, "/spend/logs?tenant_id=limited").await;
    assert_eq!(
        rows.as_array().map(Vec::len),
        Some(0),
        "no ledger row: {rows}"
    );
    // A request that fits (no max_tokens: the rest of the window) is the first to count.
    let r = s
        .chat(
            "sk-limited",
            &json!({"model": "chat-fast", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("4"));
    let lines = s.stop().await;
    assert_eq!(lines.len(), 4);
    for l in &lines[..3] {
        assert_eq!(
            (l["status"].as_u64(), l["outcome"].as_str()),
            (Some(400), Some("invalid_request")),
            "{l}"
        );
    }
}
