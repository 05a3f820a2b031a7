//! Request validation as vLLM does it: which values are refused (400 naming the field), which
//! are accepted, and what `stream_options` turns on.

use serde_json::{Value, json};

use crate::common::{Sim, json as parse, sse};
use mocks::EngineConfig;

const MODEL: &str = "mistral-7b-instruct";

fn chat(extra: Value) -> Value {
    let mut b = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Where is my invoice?"}],
        "max_tokens": 3,
    });
    if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            b.insert(k.clone(), v.clone());
        }
    }
    b
}

/// Status and body of a POST.
async fn post(sim: &Sim, path: &str, body: Value) -> (u16, Value) {
    let resp = sim.post(path, body).await;
    let status = resp.status().as_u16();
    let Ok(b) = resp.json::<Value>().await else {
        panic!("{path}: body is not JSON")
    };
    (status, b)
}

/// Asserts a 400 in vLLM's shape whose `param` is `field`; returns the message.
fn refused(status: u16, b: &Value, field: &str) -> String {
    assert_eq!(status, 400, "{b}");
    assert_eq!(b["error"]["type"], "BadRequestError", "{b}");
    assert_eq!(b["error"]["code"], 400, "{b}");
    assert_eq!(b["error"]["param"], field, "{b}");
    b["error"]["message"].as_str().unwrap_or("").to_string()
}

/// Issue: `"n": 4294967295` made the server allocate one sequence per choice and abort. `n` is
/// checked first (at least 1, at most max_num_seqs, since the choices of one request must be
/// able to run together), and the server keeps serving.
#[tokio::test]
async fn huge_n_is_refused_naming_n_before_anything_is_allocated() {
    let max_num_seqs = 8u32;
    let sim = Sim::start(EngineConfig {
        max_num_seqs: Some(max_num_seqs),
        ..Default::default()
    })
    .await;
    for n in [
        json!(4_294_967_295u64),
        json!(1e30),
        json!(max_num_seqs + 1),
    ] {
        let (status, b) = post(
            &sim,
            "/v1/completions",
            json!({"model": MODEL, "prompt": "hi", "max_tokens": 1, "n": n}),
        )
        .await;
        let msg = refused(status, &b, "n");
        assert!(
            msg.contains(&format!("at most {max_num_seqs}")) && msg.contains("max_num_seqs"),
            "{msg}"
        );
        let (status, b) = post(&sim, "/v1/chat/completions", chat(json!({"n": n}))).await;
        refused(status, &b, "n");
    }
    for n in [json!(0), json!(-3)] {
        let (status, b) = post(&sim, "/v1/chat/completions", chat(json!({"n": n}))).await;
        let msg = refused(status, &b, "n");
        assert!(msg.contains("at least 1"), "{msg}");
    }
    assert_eq!(sim.get("/health").await.status(), 200, "still serving");
    // The largest n that can run together is served.
    let (status, b) = post(
        &sim,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "hi", "max_tokens": 1, "n": max_num_seqs}),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        b["choices"].as_array().map(Vec::len),
        Some(max_num_seqs as usize)
    );
    sim.stop().await;
}

/// Issue: `max_tokens` above 2^32 - 1 was reported as "must be at least 1". Every large value,
/// on both endpoints and in both chat fields, gets vLLM's context-length message with the
/// number as sent.
#[tokio::test]
async fn max_tokens_beyond_u32_get_the_context_length_message() {
    let sim = Sim::start(EngineConfig::default()).await;
    let cases = [
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 1_000_000_000_000u64})),
            "1000000000000",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_completion_tokens": 4_294_967_296u64})),
            "4294967296",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": u64::MAX})),
            "18446744073709551615",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 1e20})),
            "100000000000000000000",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "hi", "max_tokens": 1_000_000_000_000u64}),
            "1000000000000",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "hi", "max_tokens": 4_294_967_295u64}),
            "4294967295",
        ),
    ];
    for (path, body, number) in cases {
        let (status, b) = post(&sim, path, body).await;
        assert_eq!(status, 400, "{path}: {b}");
        assert_eq!(b["error"]["param"], Value::Null, "{b}");
        let msg = b["error"]["message"].as_str().unwrap_or("");
        assert!(
            msg.starts_with("This model's maximum context length is ")
                && msg.contains(&format!(", {number} in the completion)")),
            "{path}: {msg}"
        );
    }
    sim.stop().await;
}

/// vLLM 0.12 serves a request without `model` (absent, null or empty) with its first base
/// model, and reports that name.
#[tokio::test]
async fn a_missing_or_empty_model_is_served_by_the_base_model() {
    let sim = Sim::start(EngineConfig::default()).await;
    for model in [None, Some(Value::Null), Some(json!(""))] {
        let mut c = chat(json!({}));
        let mut p = json!({"prompt": "Once upon a time", "max_tokens": 2});
        match &model {
            None => {
                if let Some(o) = c.as_object_mut() {
                    o.remove("model");
                }
            }
            Some(m) => {
                c["model"] = m.clone();
                p["model"] = m.clone();
            }
        }
        for (path, body) in [("/v1/chat/completions", c), ("/v1/completions", p)] {
            let (status, b) = post(&sim, path, body).await;
            assert_eq!(status, 200, "{path} {model:?}: {b}");
            assert_eq!(b["model"], MODEL, "{path} {model:?}");
        }
    }
    sim.stop().await;
}

/// vLLM's checks that the simulator lacked, each naming its field.
#[tokio::test]
async fn vllms_sampling_and_stream_checks_name_the_field() {
    let sim = Sim::start(EngineConfig::default()).await;
    // stream_options without stream: refused before anything else, with vLLM's message.
    for stream in [json!({}), json!({"stream": false}), json!({"stream": null})] {
        let mut extra = stream.clone();
        extra["stream_options"] = json!({"include_usage": true});
        for (path, mut body) in [
            ("/v1/chat/completions", chat(extra.clone())),
            (
                "/v1/completions",
                json!({"model": MODEL, "prompt": "hi", "max_tokens": 2}),
            ),
        ] {
            if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
                for (k, v) in e {
                    b.insert(k.clone(), v.clone());
                }
            }
            let (status, b) = post(&sim, path, body).await;
            let msg = refused(status, &b, "stream_options");
            assert_eq!(
                msg, "Stream options can only be defined when `stream=True`.",
                "{path}"
            );
        }
    }
    // Python truthiness, as vLLM's validator tests it: empty or null options are no options.
    for so in [json!({}), Value::Null] {
        let (status, b) = post(
            &sim,
            "/v1/chat/completions",
            chat(json!({"stream": false, "stream_options": so})),
        )
        .await;
        assert_eq!(status, 200, "{b}");
    }
    for (extra, field, want) in [
        (
            json!({"presence_penalty": 2.5}),
            "presence_penalty",
            "presence_penalty must be in [-2, 2], got 2.5.",
        ),
        (
            json!({"frequency_penalty": -3}),
            "frequency_penalty",
            "frequency_penalty must be in [-2, 2], got -3.0.",
        ),
        (
            json!({"top_k": -2}),
            "top_k",
            "top_k must be 0 (disable), or at least 1, got -2.",
        ),
        (
            json!({"max_tokens": -5, "max_completion_tokens": 3}),
            "max_tokens",
            "max_tokens must be at least 1, got -5.",
        ),
        (
            json!({"max_tokens": 3, "max_completion_tokens": 0}),
            "max_completion_tokens",
            "max_completion_tokens must be at least 1, got 0.",
        ),
    ] {
        let (status, b) = post(&sim, "/v1/chat/completions", chat(extra.clone())).await;
        assert_eq!(refused(status, &b, field), want, "{extra}");
    }
    // Fractions are not integers.
    for (extra, field) in [
        (json!({"max_tokens": 5.5}), "max_tokens"),
        (json!({"n": 1.5}), "n"),
        (json!({"top_k": 2.5}), "top_k"),
        (json!({"max_tokens": "5"}), "max_tokens"),
    ] {
        let (status, b) = post(&sim, "/v1/chat/completions", chat(extra.clone())).await;
        let msg = refused(status, &b, field);
        assert!(msg.contains(field), "{extra}: {msg}");
    }
    // Accepted: penalties at the bounds, top_k disabled (-1 or 0) or positive, and whole
    // floats wherever an integer goes.
    for extra in [
        json!({"presence_penalty": 2, "frequency_penalty": -2.0}),
        json!({"top_k": -1}),
        json!({"top_k": 0}),
        json!({"top_k": 40.0}),
        json!({"n": 1.0, "seed": 7.0}),
    ] {
        let (status, b) = post(&sim, "/v1/chat/completions", chat(extra.clone())).await;
        assert_eq!(status, 200, "{extra}: {b}");
    }
    let (status, b) = post(
        &sim,
        "/v1/chat/completions",
        chat(json!({"max_tokens": 5.0, "n": 2.0})),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["usage"]["completion_tokens"], 10);
    let (status, b) = post(
        &sim,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "hi", "max_tokens": 4.0, "n": 1.0}),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["usage"]["completion_tokens"], 4);
    sim.stop().await;
}

/// The chunks of a stream, without `[DONE]` (which must end it).
async fn chunks(sim: &Sim, path: &str, body: Value) -> Vec<Value> {
    let resp = sim.post(path, body).await;
    assert_eq!(resp.status(), 200);
    let (_, events) = sse(resp).await;
    assert!(events.last().is_some_and(|e| e.is_done()), "{path}");
    events
        .iter()
        .filter(|e| !e.is_done())
        .map(|e| parse(&e.data))
        .collect()
}

/// `stream_options.continuous_usage_stats` puts `usage` on every chunk, counted per choice as
/// vLLM counts it (the choice's prompt, the tokens that choice has generated so far), and the
/// final `choices: []` usage chunk still follows. vLLM's `StreamOptions` defaults
/// `include_usage` to true, so the flag alone is enough; with `include_usage: false` it does
/// nothing. `include_usage` alone gives exactly one usage chunk, the last.
#[tokio::test]
async fn continuous_usage_stats_put_usage_on_every_chunk() {
    let sim = Sim::start(EngineConfig::default()).await;
    let prompt = wire::tokens::count_chat(["Where is my invoice?"]) as u64;
    for so in [
        json!({"continuous_usage_stats": true}),
        json!({"include_usage": true, "continuous_usage_stats": true}),
    ] {
        let cs = chunks(
            &sim,
            "/v1/chat/completions",
            chat(json!({"stream": true, "n": 2, "stream_options": so})),
        )
        .await;
        // 2 role chunks, 2 × 3 token chunks, the usage chunk.
        assert_eq!(cs.len(), 9, "{so}");
        let mut generated = [0u64; 2];
        for c in &cs[..8] {
            let choice = &c["choices"][0];
            let i = choice["index"].as_u64().unwrap_or(9) as usize;
            if choice["delta"].get("role").is_none() {
                generated[i] += 1;
            }
            assert_eq!(
                c["usage"],
                json!({"prompt_tokens": prompt, "total_tokens": prompt + generated[i],
                       "completion_tokens": generated[i]}),
                "{so}: {c}"
            );
        }
        assert_eq!(cs[8]["choices"], json!([]));
        assert_eq!(
            cs[8]["usage"],
            json!({"prompt_tokens": prompt, "total_tokens": prompt + 6, "completion_tokens": 6})
        );
    }
    // Completions: no role chunk; each chunk's usage is its own prompt's.
    let cs = chunks(
        &sim,
        "/v1/completions",
        json!({"model": MODEL, "prompt": ["one", "one two three"], "max_tokens": 2,
               "stream": true, "stream_options": {"continuous_usage_stats": true}}),
    )
    .await;
    assert_eq!(cs.len(), 5);
    let prompts = [
        wire::tokens::count("one") as u64,
        wire::tokens::count("one two three") as u64,
    ];
    for c in &cs[..4] {
        let i = c["choices"][0]["index"].as_u64().unwrap_or(9) as usize;
        assert_eq!(c["usage"]["prompt_tokens"], prompts[i], "{c}");
    }
    assert_eq!(cs[4]["usage"]["completion_tokens"], 4);
    // Without include_usage the flag does nothing; include_usage alone (or options left at
    // vLLM's defaults) gives exactly one usage chunk, the last.
    for (so, usage_chunks) in [
        (
            json!({"include_usage": false, "continuous_usage_stats": true}),
            0,
        ),
        (json!({"include_usage": true}), 1),
        (json!({}), 1),
    ] {
        let cs = chunks(
            &sim,
            "/v1/chat/completions",
            chat(json!({"stream": true, "stream_options": so})),
        )
        .await;
        let with_usage: Vec<&Value> = cs.iter().filter(|c| c.get("usage").is_some()).collect();
        assert_eq!(with_usage.len(), usage_chunks, "{so}");
        if usage_chunks == 1 {
            assert_eq!(cs.last().map(|c| &c["choices"]), Some(&json!([])), "{so}");
        }
    }
    sim.stop().await;
}
