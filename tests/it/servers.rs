//! `tenantbench mock-vllm` and `tenantbench router` as standalone servers, started the way a user
//! starts them (vLLM's and LiteLLM's flags), talked to over HTTP.

use crate::common::{free_port, root, start, text, wait_ready};

#[tokio::test]
async fn mock_vllm_serves_the_base_model_and_adapters_with_vllms_flags() {
    let port = free_port();
    let _server = start(&[
        "mock-vllm",
        "mistral-7b-instruct",
        "--port",
        &port.to_string(),
        "--gpu",
        "rtx-5090",
        "--enable-lora",
        "--lora-modules",
        "acme=/adapters/acme",
        "globex=/adapters/globex",
        "--max-loras",
        "2",
        "--max-num-seqs",
        "64",
        "--served-model-name",
        "mistral-7b-instruct",
        "chat-fast",
    ]);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &format!("{base}/health")).await;
    let models: serde_json::Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    let data = models["data"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
    assert!(
        ids.contains(&"mistral-7b-instruct")
            && ids.contains(&"chat-fast")
            && ids.contains(&"acme")
            && ids.contains(&"globex"),
        "{models}"
    );
    for m in &data {
        if m["id"] == "acme" {
            assert_eq!(m["parent"], "mistral-7b-instruct");
        }
    }
    // A streamed chat completion for an adapter, with usage.
    let body = serde_json::json!({"model": "acme", "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}});
    let resp = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap_or_default();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("\"completion_tokens\":5"), "{text}");
    // Every served name is the base model, as in vLLM; responses carry the first name.
    let resp = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "chat-fast", "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 2}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    let reply: serde_json::Value = resp.json().await.unwrap_or_default();
    assert_eq!(reply["model"], "mistral-7b-instruct", "{reply}");
    // Unknown model: vLLM's 404.
    let resp = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 404);
}

#[test]
fn mock_vllm_refuses_to_start_when_the_weights_do_not_fit() {
    let out = crate::common::tenantbench(
        &[
            "mock-vllm",
            "qwen2.5-32b-instruct",
            "--gpu",
            "rtx-4090",
            "--dtype",
            "bfloat16",
            "--port",
            "0",
        ],
        &root(),
    );
    assert!(!out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("GiB") && t.contains("rtx-4090"),
        "says what does not fit and by how much: {t}"
    );
}

#[test]
fn router_refuses_a_bad_config_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("config.yaml");
    let yaml = "model_list:\n  - model_name: chat-fast\n    litellm_params:\n      model: hosted_vllm/m\n      api_base: \"http://127.0.0.1:9/v1\"\ntenants:\n  - id: acme\n    keys: [sk-acme]\n    rpm_limit: -5\n";
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{e}"));
    let out = crate::common::tenantbench(
        &[
            "router",
            "--config",
            path.to_str().unwrap_or_default(),
            "--port",
            "0",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("config.yaml") && t.contains("rpm_limit"), "{t}");
}

#[tokio::test]
async fn router_binary_fronts_mock_vllm_with_keys_and_openai_errors() {
    let vllm_port = free_port();
    let _vllm = start(&[
        "mock-vllm",
        "mistral-7b-instruct",
        "--port",
        &vllm_port.to_string(),
        "--enable-lora",
        "--lora-modules",
        "acme-fast=/a",
        "--max-loras",
        "2",
    ]);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("config.yaml");
    let yaml = format!(
        "model_list:\n  - model_name: chat-fast\n    litellm_params:\n      model: hosted_vllm/mistral-7b-instruct\n      api_base: \"http://127.0.0.1:{vllm_port}/v1\"\n    model_info:\n      input_cost_per_token: 0.0000002\n      output_cost_per_token: 0.0000006\ngeneral_settings:\n  master_key: sk-master-test\ntenants:\n  - id: acme\n    keys: [sk-acme-123]\n    rpm_limit: 100\n    lora: {{chat-fast: acme-fast}}\n"
    );
    std::fs::write(&config, yaml).unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let _router = start(&[
        "router",
        "--config",
        config.to_str().unwrap_or_default(),
        "--port",
        &port.to_string(),
    ]);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &format!("http://127.0.0.1:{vllm_port}/health")).await;
    wait_ready(&client, &format!("{base}/health/liveliness")).await;
    let chat = |key: &str, body: String| {
        client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let ok = chat("sk-acme-123", r#"{"model":"chat-fast","messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true}"#.into())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().contains_key("x-ratelimit-remaining-requests"));
    let streamed = ok.text().await.unwrap_or_default();
    assert!(streamed.trim_end().ends_with("data: [DONE]"), "{streamed}");
    assert!(
        !streamed.contains("\"usage\""),
        "the usage chunk the router added is stripped: {streamed}"
    );

    let cases = [
        (
            "sk-wrong",
            r#"{"model":"chat-fast","messages":[{"role":"user","content":"hi"}]}"#,
            401,
        ),
        (
            "sk-acme-123",
            r#"{"model":"chat-nope","messages":[{"role":"user","content":"hi"}]}"#,
            404,
        ),
        ("sk-acme-123", r#"{"model":"chat-fast","messages":"#, 400),
    ];
    for (key, body, status) in cases {
        let r = chat(key, body.to_string())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status().as_u16(), status, "{body}");
        let err: serde_json::Value = r.json().await.unwrap_or_default();
        assert!(
            err["error"]["message"].is_string() && err["error"]["type"].is_string(),
            "OpenAI-shaped: {err}"
        );
    }
}
