//! Keys → tenants, 401s, and `/v1/models` per key.

use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn keys_resolve_to_tenants_and_bad_keys_get_401() {
    let mut s = Stack::start().await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let body = chat_body("chat-fast", false);

    let ok = s.chat(T1, &body).await;
    assert_eq!(ok.status(), 200);

    let missing = s
        .client
        .post(s.url("/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status(), 401);
    let v: Value = missing.json().await.expect("json");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(v["error"]["code"], "invalid_api_key");

    let wrong = s.chat("sk-not-a-key", &body).await;
    assert_eq!(wrong.status(), 401);
    let basic = s
        .client
        .post(s.url("/chat/completions"))
        .header("authorization", format!("Basic {T1}"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(basic.status(), 401, "only Bearer keys are accepted");

    // Only the authenticated request reached the engine.
    assert_eq!(Stack::received(&s.fast).await.len(), 1);
    let lines = s.stop().await;
    let tenants: Vec<&Value> = lines.iter().map(|l| &l["tenant_id"]).collect();
    assert_eq!(tenants.iter().filter(|t| **t == "tenant-01").count(), 1);
    assert_eq!(tenants.iter().filter(|t| t.is_null()).count(), 3);
}

#[tokio::test]
async fn models_lists_only_what_the_key_may_use() {
    let s = Stack::start().await;
    let list = |key: &'static str| {
        let req = s.client.get(s.url("/models")).bearer_auth(key);
        async move {
            let r = req.send().await.expect("send");
            let status = r.status();
            let v: Value = r.json().await.expect("json");
            let mut ids: Vec<String> = v["data"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m["id"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            ids.sort();
            (status.as_u16(), ids)
        }
    };
    assert_eq!(
        list(T1).await,
        (200, vec!["chat-fast".into(), "chat-strong".into()])
    );
    assert_eq!(list(T2).await, (200, vec!["chat-fast".into()]));
    assert_eq!(list(MASTER).await.1.len(), 2);
    assert_eq!(list("sk-nope").await.0, 401);
}

#[tokio::test]
async fn health_endpoints_answer() {
    let s = Stack::start().await;
    for p in ["/health/liveliness", "/health/readiness"] {
        let r = s
            .client
            .get(format!("{}{p}", s.root()))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{p}");
    }
    let r = s
        .client
        .get(format!("{}/nope", s.root()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.expect("json");
    assert!(v["error"]["message"].is_string());
}
