//! SSE relay: usage injection and stripping, event-by-event forwarding, aborts, truncation.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn include_usage_is_added_upstream_and_stripped_for_the_client() {
    let mut s = Stack::start().await;
    let upstream = vllm_sse(&[" Hello", " world"], Some((12, 2)));
    mount_sse(&s.fast, upstream.clone()).await;

    let r = s.chat(T1, &chat_body("chat-fast", true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some("text/event-stream"));
    let text = r.text().await.expect("body");
    assert!(!text.contains("\"usage\""), "usage chunk leaked: {text}");
    // Everything else arrives byte for byte.
    let usage_event = upstream
        .split_inclusive("\n\n")
        .find(|e| e.contains("\"usage\""))
        .unwrap_or_default();
    assert_eq!(text, upstream.replace(usage_event, ""));

    let sent = Stack::received(&s.fast).await;
    assert_eq!(sent[0]["stream_options"]["include_usage"], true);

    let lines = s.stop().await;
    assert_eq!(lines[0]["prompt_tokens"], 12);
    assert_eq!(lines[0]["completion_tokens"], 2);
    assert_eq!(lines[0]["tokens_estimated"], false);
    assert_eq!(lines[0]["outcome"], "ok");
}

#[tokio::test]
async fn usage_chunk_is_kept_for_a_client_that_asked() {
    let s = Stack::start().await;
    let upstream = vllm_sse(&[" Hello"], Some((12, 1)));
    mount_sse(&s.fast, upstream.clone()).await;
    let mut body = chat_body("chat-fast", true);
    body["stream_options"] = json!({"include_usage": true});
    let r = s.chat(T1, &body).await;
    assert_eq!(r.text().await.expect("body"), upstream);
}

#[tokio::test]
async fn events_are_forwarded_as_they_arrive() {
    // The engine sends one event, then waits 400 ms between events: the client must see the
    // first events long before the stream ends.
    let engine = SlowEngine::start(SlowEngine::vllm_events(3), Duration::from_millis(400)).await;
    let s = Stack::with(Opts {
        fast_base: Some(engine.base.clone()),
        ..Opts::default()
    })
    .await;
    let t0 = Instant::now();
    let r = s.chat(T1, &chat_body("chat-fast", true)).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    let mut first_token_at = None;
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        if first_token_at.is_none() && seen.contains(" w0") {
            first_token_at = Some(t0.elapsed());
        }
    }
    let total = t0.elapsed();
    let first = first_token_at.expect("token w0 arrived");
    // Role chunk at 0 ms, w0 at ~400 ms, the end at ~2.4 s.
    assert!(
        first < Duration::from_millis(1200),
        "first token after {first:?}"
    );
    assert!(
        total >= Duration::from_millis(2000),
        "whole stream took {total:?}"
    );
    assert!(seen.ends_with("data: [DONE]\n\n"));
    assert!(engine.completed.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(engine.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    let sent = engine.bodies.lock().expect("lock").clone();
    assert_eq!(sent[0]["model"], "tenant-01-fast");
    engine.token.cancel();
}

#[tokio::test]
async fn client_abort_cancels_upstream_and_still_bills() {
    let engine = SlowEngine::start(SlowEngine::vllm_events(200), Duration::from_millis(20)).await;
    let mut s = Stack::with(Opts {
        fast_base: Some(engine.base.clone()),
        fast_prices: (0.001, 0.002),
        ..Opts::default()
    })
    .await;
    let r = s.chat(T1, &chat_body("chat-fast", true)).await;
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains(" w4\"") {
        match body.next().await {
            Some(Ok(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            _ => break,
        }
    }
    drop(body);
    // The router notices, drops the upstream connection, and the engine sees it.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !engine.cancelled.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(engine.cancelled.load(std::sync::atomic::Ordering::SeqCst));
    let lines = s.stop().await;
    let l = &lines[0];
    assert_eq!(l["outcome"], "client_aborted", "{l}");
    assert_eq!(l["tokens_estimated"], true);
    let completion = l["completion_tokens"].as_u64().unwrap_or(0);
    assert!(
        (5..60).contains(&completion),
        "billed {completion} tokens: {l}"
    );
    assert!(l["cost"].as_f64().unwrap_or(0.0) > 0.0);
    engine.token.cancel();
}

#[tokio::test]
async fn stream_without_done_is_recorded_as_truncated() {
    let mut s = Stack::start().await;
    let cut: String = vllm_sse(&[" a", " b"], None).replace("data: [DONE]\n\n", "");
    mount_sse(&s.fast, cut.clone()).await;
    let r = s.chat(T1, &chat_body("chat-fast", true)).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    assert!(
        !text.contains("[DONE]"),
        "the router must not invent a finish"
    );
    let lines = s.stop().await;
    assert_eq!(lines[0]["outcome"], "truncated");
    assert_eq!(lines[0]["completion_tokens"], 2);
    assert_eq!(lines[0]["tokens_estimated"], true);
}

#[tokio::test]
async fn error_event_inside_a_stream_passes_through() {
    let mut s = Stack::start().await;
    let err =
        r#"data: {"error":{"message":"engine died","type":"InternalServerError","code":500}}"#;
    let stream = format!(
        "{}{err}\n\ndata: [DONE]\n\n",
        vllm_sse(&[" a"], None).replace("data: [DONE]\n\n", "")
    );
    mount_sse(&s.fast, stream.clone()).await;
    let r = s.chat(T1, &chat_body("chat-fast", true)).await;
    assert_eq!(r.text().await.expect("body"), stream);
    let lines = s.stop().await;
    assert_eq!(lines[0]["outcome"], "stream_error");
    let v: Value = lines[0].clone();
    assert_eq!(v["status"], 200);
}

#[tokio::test]
async fn cumulative_usage_on_every_chunk_is_billed_once() {
    // Issue 3 case 5: engines that put running usage on every chunk (1, 2, 3) and then a
    // final usage of 3 must be billed 3 completion tokens, not 1 + 2 + 3 + 3.
    let mut s = Stack::with(Opts {
        tenants: "  - id: metered\n    keys: [sk-metered]\n    tpm_limit: 10000\n".into(),
        ..Opts::default()
    })
    .await;
    let event = |v: Value| format!("data: {v}\n\n");
    let chunk = |content: &str, finish: Value, completion: u64| {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 9, "completion_tokens": completion, "total_tokens": 9 + completion},
        })
    };
    let mut sse = String::new();
    sse.push_str(&event(chunk(" one", Value::Null, 1)));
    sse.push_str(&event(chunk(" two", Value::Null, 2)));
    sse.push_str(&event(chunk(" three", json!("stop"), 3)));
    sse.push_str(&event(json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    })));
    sse.push_str("data: [DONE]\n\n");
    mount_sse(&s.fast, sse).await;
    let r = s.chat("sk-metered", &chat_body("chat-fast", true)).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("stream");
    assert_eq!(
        text.matches("\"usage\"").count(),
        3,
        "content chunks pass unchanged"
    );
    let (_, rows) = s.admin_get(MASTER, "/spend/logs?tenant_id=metered").await;
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["prompt_tokens"], 9, "{rows}");
    assert_eq!(rows[0]["completion_tokens"], 3, "{rows}");
    // TPM holds the billed 12 tokens.
    assert_eq!(s.remaining("sk-metered").await.1, Some(10_000 - 12));
    let lines = s.stop().await;
    assert_eq!(lines[0]["completion_tokens"], 3);
    assert_eq!(lines[0]["tokens_estimated"], false);
}
