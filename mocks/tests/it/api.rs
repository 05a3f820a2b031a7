//! The HTTP API: byte layout of streams, bodies, models, errors, adapters, metrics.

use serde_json::{Value, json};

use crate::common::{Sim, json as parse, sse};
use mocks::{EngineConfig, LoraModule};

fn lora_cfg(names: &[&str], max_loras: u32) -> EngineConfig {
    EngineConfig {
        enable_lora: true,
        max_loras,
        lora_modules: names
            .iter()
            .map(|n| LoraModule {
                name: n.to_string(),
                path: format!("/adapters/{n}"),
                rank: None,
            })
            .collect(),
        ..Default::default()
    }
}

fn chat_body(model: &str, max_tokens: u32, stream: bool, usage: bool) -> Value {
    let mut b = json!({
        "model": model,
        "messages": [{"role": "system", "content": "You are a support bot."},
                     {"role": "user", "content": "Where is my invoice?"}],
        "max_tokens": max_tokens,
        "stream": stream,
    });
    if usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

/// The exact SSE layout of a streamed chat completion, as vLLM writes it
/// (`vllm/entrypoints/openai/serving_chat.py`).
#[tokio::test]
async fn streamed_chat_has_vllms_byte_layout_with_usage() {
    let sim = Sim::start(EngineConfig::default()).await;
    let resp = sim
        .client
        .post(sim.url("/v1/chat/completions"))
        .header("x-request-id", "req-42")
        .json(&chat_body("mistral-7b-instruct", 5, true, true))
        .send()
        .await;
    let Ok(resp) = resp else { panic!("send") };
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-42")
    );
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let (raw, events) = sse(resp).await;

    // Every event is exactly `data: <payload>\n\n` and the events tile the body.
    let rebuilt: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
    assert_eq!(rebuilt, raw);
    for e in &events {
        assert!(
            e.raw.starts_with(b"data: ") && e.raw.ends_with(b"\n\n"),
            "{:?}",
            e.raw
        );
        assert_eq!(e.raw.iter().filter(|b| **b == b'\n').count(), 2);
    }
    // role chunk + 5 token chunks + usage chunk + [DONE]
    assert_eq!(events.len(), 8);
    assert!(events[7].is_done());
    let chunks: Vec<Value> = events[..7].iter().map(|e| parse(&e.data)).collect();
    for c in &chunks {
        assert_eq!(c["id"], "chatcmpl-req-42");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "mistral-7b-instruct");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chunks[0]["choices"][0]["finish_reason"], Value::Null);
    let mut text = String::new();
    for (i, c) in chunks[1..6].iter().enumerate() {
        let choice = &c["choices"][0];
        assert!(choice["delta"].get("role").is_none());
        let t = choice["delta"]["content"].as_str().unwrap_or("");
        assert_eq!(wire::tokens::count(t), 1, "one token per chunk: {t:?}");
        text.push_str(t);
        let want = if i == 4 { json!("length") } else { Value::Null };
        assert_eq!(choice["finish_reason"], want);
        assert!(c.get("usage").is_none(), "content chunks carry no usage");
    }
    assert_eq!(wire::tokens::count(&text), 5);
    let usage_chunk = &chunks[6];
    assert_eq!(usage_chunk["choices"], json!([]));
    let prompt =
        wire::tokens::count_chat(["You are a support bot.", "Where is my invoice?"]) as u64;
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": prompt, "total_tokens": prompt + 5, "completion_tokens": 5})
    );
    let tl = sim.handle.timelines();
    assert_eq!(tl.len(), 1);
    assert_eq!(tl[0].request_id, "req-42");
    assert_eq!(tl[0].token_times.len(), 5);
    assert!(tl[0].finished);
    sim.stop().await;
}

#[tokio::test]
async fn streamed_chat_without_include_usage_has_no_usage_chunk() {
    let sim = Sim::start(EngineConfig::default()).await;
    let (_, events) = sse(sim
        .post(
            "/v1/chat/completions",
            chat_body("mistral-7b-instruct", 3, true, false),
        )
        .await)
    .await;
    assert_eq!(events.len(), 1 + 3 + 1);
    assert!(events[4].is_done());
    for e in &events[..4] {
        let c = parse(&e.data);
        assert!(c.get("usage").is_none());
        assert_eq!(c["choices"].as_array().map(Vec::len), Some(1));
    }
    sim.stop().await;
}

/// Issue 4, case 3: a stream whose text contains "数据🙂ok", with the emoji spanning two
/// cl100k tokens, arrives as the exact text with no U+FFFD; the chunk that ends inside the
/// emoji carries an empty delta, and usage counts tokens, not chunks.
#[tokio::test]
async fn a_character_split_across_tokens_is_never_broken_in_the_stream() {
    const TEXT: &str = "数据🙂ok";
    let sim = Sim::start(EngineConfig::default()).await;
    let Some(tokens) = mocks::detokenizer::token_bytes(TEXT) else {
        panic!("no tokens")
    };
    let n = tokens.len() as u32;
    assert!(
        tokens
            .iter()
            .filter(|t| std::str::from_utf8(t).is_err())
            .count()
            >= 2,
        "the emoji must span tokens: {tokens:?}"
    );
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let mut body = if path.contains("chat") {
            chat_body("mistral-7b-instruct", 2 * n, true, true)
        } else {
            json!({"model": "mistral-7b-instruct", "prompt": "Say it", "max_tokens": 2 * n,
                   "stream": true, "stream_options": {"include_usage": true}})
        };
        body["mock_output_text"] = json!(TEXT);
        let (_, events) = sse(sim.post(path, body).await).await;
        assert!(events.last().is_some_and(|e| e.is_done()), "{path}");
        let mut text = String::new();
        let mut content_chunks = 0;
        let mut empty = 0;
        let mut usage = Value::Null;
        for e in events.iter().filter(|e| !e.is_done()) {
            let c = parse(&e.data);
            if c["choices"] == json!([]) {
                usage = c["usage"].clone();
                continue;
            }
            let ch = &c["choices"][0];
            if ch["delta"].get("role").is_some() {
                continue;
            }
            let t = ch["delta"]["content"]
                .as_str()
                .or(ch["text"].as_str())
                .unwrap_or_else(|| panic!("{path}: no text in {c}"));
            content_chunks += 1;
            empty += usize::from(t.is_empty());
            text.push_str(t);
        }
        assert_eq!(text, TEXT.repeat(2), "{path}");
        assert!(!text.contains('\u{FFFD}'));
        assert_eq!(content_chunks, 2 * n, "{path}: one chunk per token");
        assert!(
            empty >= 2,
            "{path}: the emoji's first token has an empty delta"
        );
        assert_eq!(usage["completion_tokens"], 2 * n, "{path}");
    }
    // Non-streaming: the same text, whole.
    let mut body = chat_body("mistral-7b-instruct", n, false, false);
    body["mock_output_text"] = json!(TEXT);
    let Ok(b) = sim
        .post("/v1/chat/completions", body)
        .await
        .json::<Value>()
        .await
    else {
        panic!("json")
    };
    assert_eq!(b["choices"][0]["message"]["content"], TEXT);
    assert_eq!(b["usage"]["completion_tokens"], n);
    sim.stop().await;
}

#[tokio::test]
async fn non_streaming_chat_and_completion_bodies() {
    let sim = Sim::start(EngineConfig::default()).await;
    let resp = sim
        .post(
            "/v1/chat/completions",
            chat_body("mistral-7b-instruct", 7, false, false),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let Ok(b) = resp.json::<Value>().await else {
        panic!("json")
    };
    assert_eq!(b["object"], "chat.completion");
    assert!(b["id"].as_str().is_some_and(|s| s.starts_with("chatcmpl-")));
    let msg = &b["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    assert_eq!(
        wire::tokens::count(msg["content"].as_str().unwrap_or("")),
        7
    );
    assert_eq!(b["choices"][0]["finish_reason"], "length");
    assert_eq!(b["usage"]["completion_tokens"], 7);

    let resp = sim
        .post("/v1/completions", json!({"model": "mistral-7b-instruct", "prompt": "Once upon a time", "max_tokens": 4, "n": 2}))
        .await;
    let Ok(b) = resp.json::<Value>().await else {
        panic!("json")
    };
    assert_eq!(b["object"], "text_completion");
    assert_eq!(b["choices"].as_array().map(Vec::len), Some(2));
    assert_eq!(b["usage"]["completion_tokens"], 8);
    assert_eq!(
        b["usage"]["prompt_tokens"],
        wire::tokens::count("Once upon a time") as u64
    );
    sim.stop().await;
}

#[tokio::test]
async fn n_greater_than_one_streams_every_choice() {
    let sim = Sim::start(EngineConfig::default()).await;
    let mut body = chat_body("mistral-7b-instruct", 4, true, true);
    body["n"] = json!(3);
    let (_, events) = sse(sim.post("/v1/chat/completions", body).await).await;
    let mut per_choice = [0usize; 3];
    let mut finished = 0;
    for e in events.iter().filter(|e| !e.is_done()) {
        let c = parse(&e.data);
        for ch in c["choices"].as_array().into_iter().flatten() {
            let i = ch["index"].as_u64().unwrap_or(99) as usize;
            if ch["delta"].get("role").is_none() {
                per_choice[i] += 1;
            }
            if ch["finish_reason"] == "length" {
                finished += 1;
            }
        }
    }
    assert_eq!(per_choice, [4, 4, 4]);
    assert_eq!(finished, 3);
    let last = parse(&events[events.len() - 2].data);
    assert_eq!(last["usage"]["completion_tokens"], 12);
    sim.stop().await;
}

#[tokio::test]
async fn models_lists_adapters_with_their_parent() {
    let sim = Sim::start(lora_cfg(&["tenant-a", "tenant-b"], 2)).await;
    let Ok(b) = sim.get("/v1/models").await.json::<Value>().await else {
        panic!("json")
    };
    let data = b["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.len(), 3);
    assert_eq!(data[0]["id"], "mistral-7b-instruct");
    assert_eq!(data[0]["parent"], Value::Null);
    assert_eq!(data[1]["id"], "tenant-a");
    assert_eq!(data[1]["parent"], "mistral-7b-instruct");
    assert_eq!(data[1]["root"], "/adapters/tenant-a");
    let ok = sim
        .post(
            "/v1/chat/completions",
            chat_body("tenant-b", 2, false, false),
        )
        .await;
    assert_eq!(ok.status(), 200);
    sim.stop().await;
}

#[tokio::test]
async fn error_bodies_have_vllms_shape() {
    let sim = Sim::start(EngineConfig::default()).await;
    let resp = sim
        .post("/v1/chat/completions", chat_body("gpt-9", 2, false, false))
        .await;
    assert_eq!(resp.status(), 404);
    let Ok(b) = resp.json::<Value>().await else {
        panic!("json")
    };
    assert_eq!(
        b,
        json!({"error": {"message": "The model `gpt-9` does not exist.", "type": "NotFoundError", "param": null, "code": 404}})
    );

    let resp = sim.post("/v1/chat/completions", json!({"model": "mistral-7b-instruct", "messages": [{"role":"user","content":"x"}], "max_tokens": 0})).await;
    assert_eq!(resp.status(), 400);
    let Ok(b) = resp.json::<Value>().await else {
        panic!("json")
    };
    assert_eq!(b["error"]["type"], "BadRequestError");
    assert_eq!(b["error"]["param"], "max_tokens");
    assert_eq!(b["error"]["code"], 400);

    let resp = sim.post("/v1/chat/completions", json!({"model": "mistral-7b-instruct", "messages": [{"role":"user","content":"x"}], "temperature": "hot"})).await;
    assert_eq!(resp.status(), 400);

    let resp = sim
        .client
        .post(sim.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await;
    assert_eq!(resp.map(|r| r.status().as_u16()).ok(), Some(400));

    // max_tokens: null is "unset", not an error.
    let resp = sim.post("/v1/chat/completions", json!({"model": "mistral-7b-instruct", "messages": [{"role":"user","content":"x"}], "max_tokens": null})).await;
    assert_eq!(resp.status(), 200);
    sim.stop().await;
}

#[tokio::test]
async fn over_long_requests_get_the_context_length_message() {
    let sim = Sim::start(EngineConfig {
        max_model_len: Some(256),
        ..Default::default()
    })
    .await;
    let long = " data".repeat(200);
    let resp = sim
        .post("/v1/chat/completions", json!({"model": "mistral-7b-instruct", "messages": [{"role":"user","content": long}], "max_tokens": 100}))
        .await;
    assert_eq!(resp.status(), 400);
    let Ok(b) = resp.json::<Value>().await else {
        panic!("json")
    };
    let msg = b["error"]["message"].as_str().unwrap_or("");
    assert!(msg.starts_with("This model's maximum context length is 256 tokens. However, you requested 307 tokens (207 in the messages, 100 in the completion)."), "{msg}");
    // A prompt alone over the limit: the same message family, never a negative max_tokens.
    let resp = sim
        .post("/v1/chat/completions", json!({"model": "mistral-7b-instruct", "messages": [{"role":"user","content": " data".repeat(300)}]}))
        .await;
    let Ok(b) = resp.json::<Value>().await else {
        panic!("json")
    };
    let msg = b["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("maximum context length is 256 tokens"),
        "{msg}"
    );
    assert!(!msg.contains('-'), "{msg}");
    sim.stop().await;
}

#[tokio::test]
async fn health_version_and_metrics() {
    let sim = Sim::start(EngineConfig::default()).await;
    let h = sim.get("/health").await;
    assert_eq!(h.status(), 200);
    assert_eq!(h.bytes().await.map(|b| b.len()).ok(), Some(0));
    let Ok(v) = sim.get("/version").await.json::<Value>().await else {
        panic!("json")
    };
    assert!(v["version"].is_string());
    let _ = sse(sim
        .post(
            "/v1/chat/completions",
            chat_body("mistral-7b-instruct", 3, true, false),
        )
        .await)
    .await;
    let Ok(text) = sim.get("/metrics").await.text().await else {
        panic!("text")
    };
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:num_preemptions_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:lora_requests_info",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert!(
        text.contains(
            "vllm:generation_tokens_total{engine=\"0\",model_name=\"mistral-7b-instruct\"} 3"
        ),
        "{text}"
    );
    sim.stop().await;
}

/// Dropping a stream mid-way aborts the request in the engine and frees its KV blocks.
#[tokio::test]
async fn client_disconnect_frees_the_request() {
    let sim = Sim::start(EngineConfig::default()).await;
    let mut resp = sim
        .post(
            "/v1/chat/completions",
            chat_body("mistral-7b-instruct", 2000, true, false),
        )
        .await;
    for _ in 0..3 {
        let _ = resp.chunk().await;
    }
    let running = |t: &str| {
        t.lines()
            .any(|l| l.starts_with("vllm:num_requests_running{") && l.ends_with(" 1"))
    };
    let Ok(text) = sim.get("/metrics").await.text().await else {
        panic!("text")
    };
    assert!(running(&text), "{text}");
    drop(resp);
    let mut freed = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let Ok(text) = sim.get("/metrics").await.text().await else {
            panic!("text")
        };
        if text.contains(
            "vllm:num_requests_running{engine=\"0\",model_name=\"mistral-7b-instruct\"} 0",
        ) && text.contains(
            "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"mistral-7b-instruct\"} 0\n",
        ) {
            freed = true;
            break;
        }
    }
    assert!(freed, "request not aborted");
    let tl = sim.handle.timelines();
    assert!(!tl[0].finished);
    sim.stop().await;
}

/// Issue 4 case 1 and vLLM's runtime adapter semantics: idempotent load, unload removes the
/// adapter from /v1/models and later requests get 404, ranks over --max-lora-rank refused.
#[tokio::test(start_paused = true)]
async fn runtime_adapters_load_unload_and_queue_under_max_loras() {
    let sim = Sim::start(EngineConfig {
        max_cpu_loras: Some(4),
        ..lora_cfg(&["a0", "a1", "a2", "a3"], 1)
    })
    .await;
    for a in ["a0", "a1", "a2", "a3"] {
        let r = sim
            .post("/v1/chat/completions", chat_body(a, 3, false, false))
            .await;
        assert_eq!(r.status(), 200, "{a}");
    }
    let (r0, r1, r2) = tokio::join!(
        sim.post("/v1/chat/completions", chat_body("a0", 20, true, false)),
        sim.post("/v1/chat/completions", chat_body("a1", 20, true, false)),
        sim.post("/v1/chat/completions", chat_body("a0", 20, true, false)),
    );
    assert_eq!(
        [r0.status(), r1.status(), r2.status()].map(|s| s.as_u16()),
        [200; 3],
        "queued, not refused"
    );
    let ((_, e0), (_, e1), (_, e2)) = tokio::join!(sse(r0), sse(r1), sse(r2));
    for e in [&e0, &e1, &e2] {
        assert!(e.last().is_some_and(|e| e.is_done()));
    }
    // The active-adapter count never exceeds --max-loras 1, from the engine's own record: the
    // steps that produced each request's tokens (their logical end times). Two requests on
    // different adapters never have tokens from overlapping spans of steps, and no step emits
    // tokens for two adapters. The two a0 requests may share steps.
    let timelines = sim.handle.timelines();
    assert_eq!(timelines.len(), 7);
    let mut spans = Vec::new();
    for t in &timelines {
        assert!(t.finished, "{}", t.request_id);
        let (Some(lora), Some(first), Some(last)) = (
            t.lora.clone(),
            t.scheduled_times.first().copied(),
            t.scheduled_times.last().copied(),
        ) else {
            panic!("{t:?}")
        };
        spans.push((lora, first, last));
    }
    for (i, (la, fa, ta)) in spans.iter().enumerate() {
        for (lb, fb, tb) in &spans[i + 1..] {
            if la != lb {
                assert!(ta < fb || tb < fa, "{la} and {lb} were active at once");
            }
        }
    }
    let mut per_step: std::collections::BTreeMap<
        tokio::time::Instant,
        std::collections::BTreeSet<&str>,
    > = Default::default();
    for t in &timelines {
        for at in &t.scheduled_times {
            per_step
                .entry(*at)
                .or_default()
                .insert(t.lora.as_deref().unwrap_or(""));
        }
    }
    assert!(per_step.values().all(|s| s.len() == 1), "{per_step:?}");
    // And the concurrent a0 pair did share steps: queueing is per adapter, not per request.
    let a0s: Vec<_> = timelines[4..]
        .iter()
        .filter(|t| t.lora.as_deref() == Some("a0"))
        .collect();
    assert_eq!(a0s.len(), 2);
    let shared = a0s[0]
        .scheduled_times
        .iter()
        .filter(|t| a0s[1].scheduled_times.contains(t))
        .count();
    assert!(
        shared > 0,
        "the two a0 requests should batch together: {a0s:?}"
    );

    let load = json!({"lora_name": "t9", "lora_path": "/adapters/t9"});
    assert_eq!(
        sim.post("/v1/load_lora_adapter", load.clone())
            .await
            .status(),
        200
    );
    assert_eq!(
        sim.post("/v1/load_lora_adapter", load).await.status(),
        200,
        "idempotent"
    );
    let big = json!({"lora_name": "big", "lora_path": "/adapters/big", "rank": 64});
    assert_eq!(sim.post("/v1/load_lora_adapter", big).await.status(), 400);
    assert_eq!(
        sim.post("/v1/chat/completions", chat_body("t9", 2, false, false))
            .await
            .status(),
        200
    );
    assert_eq!(
        sim.post("/v1/unload_lora_adapter", json!({"lora_name": "t9"}))
            .await
            .status(),
        200
    );
    assert_eq!(
        sim.post("/v1/unload_lora_adapter", json!({"lora_name": "t9"}))
            .await
            .status(),
        404
    );
    assert_eq!(
        sim.post("/v1/chat/completions", chat_body("t9", 2, false, false))
            .await
            .status(),
        404
    );
    let Ok(models) = sim.get("/v1/models").await.json::<Value>().await else {
        panic!("json")
    };
    assert!(
        models["data"]
            .as_array()
            .is_some_and(|d| d.iter().all(|m| m["id"] != "t9"))
    );
    sim.stop().await;
}

#[tokio::test]
async fn starting_with_only_max_loras_two_works() {
    let sim = Sim::start(lora_cfg(&["a0", "a1", "a2"], 2)).await;
    assert_eq!(
        sim.post("/v1/chat/completions", chat_body("a2", 2, false, false))
            .await
            .status(),
        200
    );
    sim.stop().await;
}

/// Unloading an adapter while a stream for it is in flight. vLLM removes the adapter from the
/// serving layer (new requests get 404, `/v1/models` drops it) but does not abort running
/// requests: each carries its own `LoRARequest` (name and path), and the worker reloads the
/// weights for the batch if they were evicted (`vllm/lora/worker_manager.py`,
/// `_apply_adapters`). So the in-flight stream runs to its normal end: every token, a finish
/// chunk with `finish_reason`, the usage chunk, then `[DONE]`.
#[tokio::test(start_paused = true)]
async fn unloading_an_adapter_lets_in_flight_streams_finish_and_404s_new_requests() {
    let sim = Sim::start(EngineConfig {
        allow_runtime_lora_updating: true,
        ..lora_cfg(&["a0", "a1"], 1)
    })
    .await;
    let mut resp = sim
        .post("/v1/chat/completions", chat_body("a0", 40, true, true))
        .await;
    assert_eq!(resp.status(), 200);
    // Read until a few tokens have arrived, so the request is running when the unload comes.
    let mut parser = wire::sse::SseParser::new();
    let mut events = Vec::new();
    while events.len() < 4 {
        match resp.chunk().await {
            Ok(Some(b)) => events.extend(parser.push(&b)),
            other => panic!("stream ended early: {other:?}"),
        }
    }
    assert_eq!(
        sim.post("/v1/unload_lora_adapter", json!({"lora_name": "a0"}))
            .await
            .status(),
        200
    );
    assert_eq!(
        sim.post("/v1/chat/completions", chat_body("a0", 2, false, false))
            .await
            .status(),
        404,
        "new requests for an unloaded adapter"
    );
    loop {
        match resp.chunk().await {
            Ok(Some(b)) => events.extend(parser.push(&b)),
            Ok(None) => break,
            Err(e) => panic!("the in-flight stream broke: {e}"),
        }
    }
    assert!(
        events.last().is_some_and(|e| e.is_done()),
        "ends with [DONE]"
    );
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| !e.is_done())
        .map(|e| parse(&e.data))
        .collect();
    assert!(
        chunks.iter().all(|c| c.get("error").is_none()),
        "no error event"
    );
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("length")], "one finish chunk");
    let usage = chunks
        .last()
        .map(|c| c["usage"]["completion_tokens"].clone());
    assert_eq!(usage, Some(json!(40)), "every token was generated");
    let Ok(models) = sim.get("/v1/models").await.json::<Value>().await else {
        panic!("json")
    };
    assert!(
        models["data"]
            .as_array()
            .is_some_and(|d| d.iter().all(|m| m["id"] != "a0")),
        "{models}"
    );
    // The other adapter is unaffected.
    assert_eq!(
        sim.post("/v1/chat/completions", chat_body("a1", 2, false, false))
            .await
            .status(),
        200
    );
    sim.stop().await;
}

/// `--served-model-name mist alias2`: vLLM serves the base model under every name, lists each
/// in `/v1/models`, reports the first in responses, and keeps all of them from adapters.
#[tokio::test(start_paused = true)]
async fn every_served_model_name_is_a_base_model_name() {
    let sim = Sim::start(EngineConfig {
        served_model_name: Some("mist".into()),
        served_model_aliases: vec!["alias2".into()],
        ..lora_cfg(&["tenant-a"], 1)
    })
    .await;
    let Ok(b) = sim.get("/v1/models").await.json::<Value>().await else {
        panic!("json")
    };
    let data = b["data"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["mist", "alias2", "tenant-a"]);
    for base in &data[..2] {
        assert_eq!(base["parent"], Value::Null, "{base}");
        assert_eq!(base["root"], data[0]["root"], "{base}");
        assert!(base["max_model_len"].is_u64(), "{base}");
    }
    assert_eq!(data[2]["parent"], "mist");
    for name in ["mist", "alias2"] {
        let resp = sim
            .post("/v1/chat/completions", chat_body(name, 2, false, false))
            .await;
        assert_eq!(resp.status(), 200, "{name}");
        let Ok(b) = resp.json::<Value>().await else {
            panic!("json")
        };
        assert_eq!(b["model"], "mist", "responses report the first name");
        let resp = sim
            .post(
                "/v1/completions",
                json!({"model": name, "prompt": "hi", "max_tokens": 2}),
            )
            .await;
        assert_eq!(resp.status(), 200, "{name}");
        // An adapter may not take a base model's name.
        let resp = sim
            .post(
                "/v1/load_lora_adapter",
                json!({"lora_name": name, "lora_path": "/adapters/x"}),
            )
            .await;
        assert_eq!(resp.status(), 400, "{name}");
        let Ok(b) = resp.json::<Value>().await else {
            panic!("json")
        };
        assert_eq!(b["error"]["param"], "lora_name");
    }
    let bad = EngineConfig {
        served_model_name: Some("mist".into()),
        served_model_aliases: vec!["alias2".into()],
        ..lora_cfg(&["alias2"], 1)
    };
    match bad.resolve() {
        Err(mocks::SimError::Config { field, message }) => {
            assert_eq!(field, "lora_modules");
            assert!(message.contains("alias2"), "{message}");
        }
        other => panic!(
            "expected a refusal, got {:?}",
            other.map(|s| s.served_model_names)
        ),
    }
    sim.stop().await;
}

/// vLLM (FastAPI) reads bodies of any size: a 3 MB chat gets the ordinary context-length 400.
/// Only past the simulator's generous cap is a body refused, with 413 in vLLM's error shape
/// rather than axum's plain text.
#[tokio::test]
async fn large_bodies_are_read_and_only_oversized_ones_get_a_json_413() {
    let sim = Sim::start(EngineConfig::default()).await;
    let big = " data".repeat(600_000);
    let body = json!({"model": "mistral-7b-instruct", "messages": [{"role": "user", "content": big}],
                      "max_tokens": 10});
    let resp = sim.post("/v1/chat/completions", body).await;
    assert_eq!(resp.status(), 400);
    let Ok(b) = resp.json::<Value>().await else {
        panic!("json")
    };
    let msg = b["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with("This model's maximum context length is "),
        "{msg}"
    );

    let resp = sim
        .client
        .post(sim.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(vec![b' '; mocks::MAX_REQUEST_BODY_BYTES + 1])
        .send()
        .await;
    let Ok(resp) = resp else {
        panic!("send: {resp:?}")
    };
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let Ok(b) = resp.json::<Value>().await else {
        panic!("json")
    };
    assert_eq!(b["error"]["code"], 413, "{b}");
    assert_eq!(b["error"]["param"], Value::Null, "{b}");
    assert!(b["error"]["type"].is_string() && b["error"]["message"].is_string());
    assert_eq!(sim.get("/health").await.status(), 200);
    sim.stop().await;
}

/// A known path with the wrong method gets FastAPI's 405 body (axum's is empty) and the
/// `Allow` header, as unknown paths get FastAPI's 404 body.
#[tokio::test]
async fn wrong_methods_get_fastapis_405_body() {
    let sim = Sim::start(EngineConfig::default()).await;
    let cases = [
        (reqwest::Method::GET, "/v1/chat/completions", "POST"),
        (reqwest::Method::GET, "/v1/completions", "POST"),
        (reqwest::Method::POST, "/v1/models", "GET"),
        (reqwest::Method::POST, "/health", "GET"),
    ];
    for (method, path, allow) in cases {
        let resp = sim
            .client
            .request(method.clone(), sim.url(path))
            .send()
            .await;
        let Ok(resp) = resp else {
            panic!("{method} {path}")
        };
        assert_eq!(resp.status(), 405, "{method} {path}");
        let allowed = resp
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            allowed.contains(allow),
            "{method} {path}: allow {allowed:?}"
        );
        let Ok(b) = resp.json::<Value>().await else {
            panic!("{method} {path}: json")
        };
        assert_eq!(
            b,
            json!({"detail": "Method Not Allowed"}),
            "{method} {path}"
        );
    }
    let resp = sim.get("/v1/nothing-here").await;
    assert_eq!(resp.status(), 404);
    let Ok(b) = resp.json::<Value>().await else {
        panic!("json")
    };
    assert_eq!(b, json!({"detail": "Not Found"}));
    sim.stop().await;
}

async fn model_cards(sim: &Sim) -> Vec<Value> {
    let Ok(b) = sim.get("/v1/models").await.json::<Value>().await else {
        panic!("json")
    };
    b["data"].as_array().cloned().unwrap_or_default()
}

/// Concurrent loads of one adapter name: the registry check and the reservation are one step,
/// so exactly one path wins and the others get the 400 a sequential second load gets, while
/// concurrent loads of the same name and path all succeed (idempotent) once it is loaded.
#[tokio::test(start_paused = true)]
async fn concurrent_loads_of_one_name_let_only_one_path_win() {
    let sim = Sim::start(lora_cfg(&[], 1)).await;
    let load = |name: &str, path: &str| {
        sim.post(
            "/v1/load_lora_adapter",
            json!({"lora_name": name, "lora_path": path}),
        )
    };
    let (a, b, c) = tokio::join!(
        load("x", "/adapters/x1"),
        load("x", "/adapters/x2"),
        load("x", "/adapters/x3")
    );
    let mut winners = Vec::new();
    for (resp, path) in [
        (a, "/adapters/x1"),
        (b, "/adapters/x2"),
        (c, "/adapters/x3"),
    ] {
        match resp.status().as_u16() {
            200 => winners.push(path),
            400 => {
                let Ok(b) = resp.json::<Value>().await else {
                    panic!("json")
                };
                assert_eq!(
                    b["error"]["message"], "The lora adapter 'x' has already been loaded.",
                    "{b}"
                );
            }
            other => panic!("{path}: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one load wins: {winners:?}");
    let data = model_cards(&sim).await;
    let xs: Vec<&Value> = data.iter().filter(|m| m["id"] == "x").collect();
    assert_eq!(xs.len(), 1);
    assert_eq!(
        xs[0]["root"], winners[0],
        "the winner's path is the one registered"
    );
    // A later load of another path is refused the same way; in place it replaces the adapter.
    assert_eq!(load("x", "/adapters/other").await.status(), 400);
    let inplace = sim
        .post(
            "/v1/load_lora_adapter",
            json!({"lora_name": "x", "lora_path": "/adapters/new", "load_inplace": true}),
        )
        .await;
    assert_eq!(inplace.status(), 200);

    let (a, b, c) = tokio::join!(
        load("y", "/adapters/y"),
        load("y", "/adapters/y"),
        load("y", "/adapters/y")
    );
    assert_eq!(
        [a.status(), b.status(), c.status()].map(|s| s.as_u16()),
        [200; 3],
        "same name, same path: idempotent"
    );
    let data = model_cards(&sim).await;
    let ys: Vec<&Value> = data.iter().filter(|m| m["id"] == "y").collect();
    assert_eq!(ys.len(), 1);
    assert_eq!(
        data.iter()
            .find(|m| m["id"] == "x")
            .map(|m| m["root"].clone()),
        Some(json!("/adapters/new"))
    );
    assert_eq!(
        sim.post("/v1/chat/completions", chat_body("y", 2, false, false))
            .await
            .status(),
        200
    );
    sim.stop().await;
}

/// Rank 0 is refused at run time (400 naming `rank`) as `--max-lora-rank 0` and a
/// `--lora-modules` rank of 0 are refused at start-up.
#[tokio::test(start_paused = true)]
async fn an_adapter_of_rank_zero_is_refused_naming_rank() {
    let sim = Sim::start(lora_cfg(&[], 1)).await;
    let resp = sim
        .post(
            "/v1/load_lora_adapter",
            json!({"lora_name": "z", "lora_path": "/adapters/z", "rank": 0}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let Ok(b) = resp.json::<Value>().await else {
        panic!("json")
    };
    assert_eq!(b["error"]["param"], "rank", "{b}");
    assert_eq!(
        sim.post(
            "/v1/load_lora_adapter",
            json!({"lora_name": "z", "lora_path": "/adapters/z", "rank": 1}),
        )
        .await
        .status(),
        200
    );
    sim.stop().await;
    let cfg = EngineConfig {
        lora_modules: vec![LoraModule {
            name: "z".into(),
            path: "/adapters/z".into(),
            rank: Some(0),
        }],
        ..lora_cfg(&[], 1)
    };
    assert!(
        matches!(
            cfg.resolve(),
            Err(mocks::SimError::Config {
                field: "lora_modules",
                ..
            })
        ),
        "a --lora-modules rank of 0"
    );
}
