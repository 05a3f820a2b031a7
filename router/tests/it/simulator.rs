//! The router in front of the real simulator (`mocks`): adapters, usage and token timing.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::*;

async fn simulator(token: &CancellationToken) -> mocks::SimHandle {
    let cfg = mocks::EngineConfig {
        enable_lora: true,
        lora_modules: vec![mocks::LoraModule {
            name: "tenant-01-fast".into(),
            path: "/adapters/tenant-01-fast".into(),
            rank: None,
        }],
        max_loras: 4,
        ..mocks::EngineConfig::default()
    };
    mocks::spawn(cfg, token.clone())
        .await
        .expect("simulator starts")
}

#[tokio::test]
async fn adapter_usage_and_token_timing_survive_the_router() {
    let sim_token = CancellationToken::new();
    let sim = simulator(&sim_token).await;
    let mut s = Stack::with(Opts {
        fast_base: Some(sim.base_url()),
        ..Opts::default()
    })
    .await;
    let mut itl_error_ms = Vec::new();
    for i in 0..4 {
        let rid = format!("sim-{i}");
        let mut body = chat_body("chat-fast", true);
        body["max_tokens"] = json!(24);
        let r = s
            .client
            .post(s.url("/chat/completions"))
            .bearer_auth(T1)
            .header("x-request-id", &rid)
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        let mut stream = r.bytes_stream();
        let mut parser = wire::sse::SseParser::new();
        let mut token_at = Vec::new();
        let mut saw_usage = false;
        let mut done = false;
        while let Some(chunk) = stream.next().await {
            let now = Instant::now();
            for ev in parser.push(&chunk.expect("chunk")) {
                if ev.is_done() {
                    done = true;
                    continue;
                }
                let c: wire::openai::StreamChunk =
                    serde_json::from_str(&ev.data).unwrap_or_default();
                saw_usage |= c.usage.is_some();
                if !c.generated_text().is_empty() {
                    token_at.push(now);
                }
            }
        }
        assert!(done && !saw_usage, "stripped usage, kept [DONE]");
        let tl = sim
            .timelines()
            .into_iter()
            .find(|t| t.request_id == rid)
            .expect("the simulator saw our x-request-id");
        assert_eq!(tl.lora.as_deref(), Some("tenant-01-fast"));
        assert_eq!(tl.token_times.len(), token_at.len());
        // Gaps between tokens as the client saw them vs as the engine sent them.
        for (client, engine) in token_at.windows(2).zip(tl.itls()) {
            let c = client[1].duration_since(client[0]);
            itl_error_ms.push((c.as_secs_f64() - engine.as_secs_f64()).abs() * 1e3);
        }
    }
    itl_error_ms.sort_by(f64::total_cmp);
    let median = itl_error_ms[itl_error_ms.len() / 2];
    eprintln!(
        "client vs engine ITL through the router: median |error| {median:.3} ms over {} gaps",
        itl_error_ms.len()
    );
    assert!(median < 2.0, "median ITL error {median} ms");

    let lines = s.stop().await;
    assert_eq!(lines.len(), 4);
    for l in &lines {
        assert_eq!(l["outcome"], "ok");
        assert_eq!(l["completion_tokens"], 24, "{l}");
        assert_eq!(l["tokens_estimated"], false);
        assert!(l["prompt_tokens"].as_u64().is_some_and(|p| p > 0));
    }
    sim_token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), sim.stopped()).await;
}

#[tokio::test]
async fn router_and_engine_agree_on_the_context_window() {
    // The embedded stack gives the router the engine's max_model_len as max_input_tokens: the
    // router must then refuse what vLLM would refuse, with the same words, before the engine
    // (or any counter) sees it.
    let sim_token = CancellationToken::new();
    let sim = mocks::spawn(
        mocks::EngineConfig {
            max_model_len: Some(512),
            ..mocks::EngineConfig::default()
        },
        sim_token.clone(),
    )
    .await
    .expect("simulator starts");
    let s = Stack::with(Opts {
        fast_base: Some(sim.base_url()),
        fast_info: ", max_input_tokens: 512".into(),
        ..Opts::default()
    })
    .await;
    let mut body = chat_body("chat-fast", false);
    body["max_tokens"] = json!(500);
    let r = s.chat(T2, &body).await;
    assert_eq!(r.status(), 400);
    let routed: serde_json::Value = r.json().await.expect("json");
    assert_eq!(routed["error"]["code"], "context_length_exceeded");
    assert!(sim.timelines().is_empty(), "the engine saw nothing");
    // The engine, asked directly, refuses the same request the same way.
    body["model"] = json!("mistral-7b-instruct");
    let direct = s
        .client
        .post(format!("{}/chat/completions", sim.base_url()))
        .json(&body)
        .send()
        .await
        .expect("simulator");
    assert_eq!(direct.status(), 400);
    let direct: serde_json::Value = direct.json().await.expect("json");
    let head = "This model's maximum context length is 512 tokens. However, you requested";
    for v in [&routed, &direct] {
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.starts_with(head) && m.contains("500 in the completion"),
            "{m}"
        );
    }
    // Within the window, the router passes it on and the engine serves it.
    body["model"] = json!("chat-fast");
    body["max_tokens"] = json!(8);
    let r = s.chat(T2, &body).await;
    assert_eq!(r.status(), 200);
    sim_token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), sim.stopped()).await;
}

/// Issue 3 case 4 against the real simulator: a client reads 5 chunks of a 500-token stream
/// and hangs up. The router cancels the upstream request (the simulator counts an abort and
/// stops generating), and still bills the tokens it delivered, as `client_aborted`.
#[tokio::test]
async fn a_client_leaving_after_five_chunks_is_billed_and_the_simulator_sees_the_cancel() {
    let sim_token = CancellationToken::new();
    let sim = simulator(&sim_token).await;
    let mut s = Stack::with(Opts {
        fast_base: Some(sim.base_url()),
        fast_prices: (0.001, 0.002),
        ..Opts::default()
    })
    .await;
    let mut body = chat_body("chat-fast", true);
    body["max_tokens"] = json!(500);
    let r = s
        .client
        .post(s.url("/chat/completions"))
        .bearer_auth(T1)
        .header("x-request-id", "leaves-early")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut parser = wire::sse::SseParser::new();
    let mut content_chunks = 0;
    while content_chunks < 5 {
        let Some(Ok(bytes)) = stream.next().await else {
            panic!("the stream ended before 5 chunks")
        };
        for ev in parser.push(&bytes) {
            let c: wire::openai::StreamChunk = serde_json::from_str(&ev.data).unwrap_or_default();
            if !c.generated_text().is_empty() {
                content_chunks += 1;
            }
        }
    }
    drop(stream);

    let aborted = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("vllm:request_success_total") && l.contains("\"abort\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let metrics_url = format!("http://{}/metrics", sim.addr());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0.0;
    while Instant::now() < deadline {
        let text = s
            .client
            .get(&metrics_url)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        seen = aborted(&text);
        if seen >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen, 1.0,
        "the simulator counts the cancelled request as aborted"
    );
    let tl = sim
        .timelines()
        .into_iter()
        .find(|t| t.request_id == "leaves-early")
        .expect("the simulator saw our x-request-id");
    assert!(!tl.finished, "generation stopped before 500 tokens");
    assert!(
        tl.token_times.len() < 500,
        "{} tokens generated",
        tl.token_times.len()
    );

    let lines = s.stop().await;
    let l = &lines[0];
    assert_eq!(l["outcome"], "client_aborted", "{l}");
    let completion = l["completion_tokens"].as_u64().unwrap_or(0);
    assert!(
        (5..500).contains(&completion),
        "billed for what was delivered: {l}"
    );
    assert!(l["cost"].as_f64().unwrap_or(0.0) > 0.0, "{l}");
    sim_token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), sim.stopped()).await;
}
