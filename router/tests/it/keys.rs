//! The admin API: keys made, read, changed, blocked, expired and deleted under the master
//! key, per-key limits, and what a tenant key may see (issue 3 case 6).

use serde_json::{Value, json};

use crate::common::*;
use router::store::{Database, RowFilter, Store};

async fn generate(s: &Stack, body: Value) -> Value {
    let (status, v) = s.admin_post(MASTER, "/key/generate", &body).await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn generated_keys_are_stored_hashed_and_managed_by_the_master_key() {
    let s = Stack::start().await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let v = generate(
        &s,
        json!({"key_alias": "bot", "metadata": {"tenant_id": "tenant-01"}, "models": ["chat-fast"]}),
    )
    .await;
    let key = v["key"]
        .as_str()
        .expect("raw key returned once")
        .to_string();
    let token = v["token"].as_str().expect("hash").to_string();
    assert_eq!(token.len(), 64);
    assert_ne!(token, key);
    assert_eq!(
        s.chat(&key, &chat_body("chat-fast", false)).await.status(),
        200
    );
    // The key's own model list narrows its tenant's.
    assert_eq!(
        s.chat(&key, &chat_body("chat-strong", false))
            .await
            .status(),
        403
    );
    let (st, info) = s.admin_get(MASTER, &format!("/key/info?key={key}")).await;
    assert_eq!(st, 200);
    assert_eq!(info["info"]["key_alias"], "bot");
    assert!(
        !info.to_string().contains(&key),
        "info never shows the raw key"
    );
    let (st, list) = s.admin_get(MASTER, "/key/list?tenant_id=tenant-01").await;
    assert_eq!(st, 200);
    assert!(
        list["keys"]
            .as_array()
            .is_some_and(|k| k.contains(&json!(token)))
    );
    // Blocked keys are refused, unblocked keys work again.
    let (st, _) = s
        .admin_post(
            MASTER,
            "/key/update",
            &json!({"key": token, "blocked": true}),
        )
        .await;
    assert_eq!(st, 200);
    let r = s.chat(&key, &chat_body("chat-fast", false)).await;
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["code"], "key_blocked");
    s.admin_post(
        MASTER,
        "/key/update",
        &json!({"key": key, "blocked": false}),
    )
    .await;
    assert_eq!(
        s.chat(&key, &chat_body("chat-fast", false)).await.status(),
        200
    );
    // Deleted keys are gone.
    let (st, d) = s
        .admin_post(MASTER, "/key/delete", &json!({"keys": [key]}))
        .await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(
        s.chat(&key, &chat_body("chat-fast", false)).await.status(),
        401
    );
    // Config keys are read-only through the API, unknown tenants are refused.
    let (st, _) = s
        .admin_post(MASTER, "/key/delete", &json!({"keys": [T1]}))
        .await;
    assert_eq!(st, 400);
    let (st, e) = s
        .admin_post(MASTER, "/key/generate", &json!({"tenant_id": "nobody"}))
        .await;
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("tenant_id")));
    let (st, e) = s
        .admin_post(
            MASTER,
            "/key/generate",
            &json!({"tenant_id": "tenant-01", "rpm_limit": "many"}),
        )
        .await;
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("rpm_limit")));
    // A typo of a known field is refused naming it (it would otherwise make a key with no
    // limit); fields LiteLLM has and we do not implement are still ignored.
    let (st, e) = s
        .admin_post(
            MASTER,
            "/key/generate",
            &json!({"tenant_id": "tenant-01", "rpm_limt": 5}),
        )
        .await;
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("rpm_limt")));
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("did you mean 'rpm_limit'")),
        "{e}"
    );
    let (st, _) = s
        .admin_post(
            MASTER,
            "/key/generate",
            &json!({"tenant_id": "tenant-01", "send_invite_email": false}),
        )
        .await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let s = Stack::start().await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let v = generate(&s, json!({"tenant_id": "tenant-02", "duration": "1s"})).await;
    let key = v["key"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        s.chat(&key, &chat_body("chat-fast", false)).await.status(),
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = s.chat(&key, &chat_body("chat-fast", false)).await;
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["code"], "key_expired");
}

#[tokio::test]
async fn per_key_rpm_and_parallel_limits_apply_beside_the_tenants() {
    let s = Stack::start().await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let limited = generate(
        &s,
        json!({"tenant_id": "tenant-01", "rpm_limit": 2, "max_parallel_requests": 1}),
    )
    .await;
    let key = limited["key"].as_str().unwrap_or_default().to_string();
    let body = chat_body("chat-fast", false);
    for _ in 0..2 {
        assert_eq!(s.chat(&key, &body).await.status(), 200);
    }
    let r = s.chat(&key, &body).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("2"));
    // The tenant's other key is not limited by this key's limit.
    assert_eq!(s.chat(T1, &body).await.status(), 200);
}

#[tokio::test]
async fn tenant_keys_see_only_their_own_tenants_data() {
    // Issue 3 case 6 (LiteLLM #28864: spend endpoints showing other keys).
    let s = Stack::start().await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let b = generate(
        &s,
        json!({"tenant_id": "tenant-02", "key_alias": "b-secret-alias", "max_budget": 7.25}),
    )
    .await;
    let b_key = b["key"].as_str().unwrap_or_default().to_string();
    let b_hash = b["token"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        s.chat(&b_key, &chat_body("chat-fast", false))
            .await
            .status(),
        200
    );
    assert_eq!(
        s.chat(T2, &chat_body("chat-fast", false)).await.status(),
        200
    );
    assert_eq!(
        s.chat(T1, &chat_body("chat-fast", false)).await.status(),
        200
    );
    let t2_hash = sha256_hex(T2);
    let reads = [
        "/key/info".to_string(),
        format!("/key/info?key={b_hash}"),
        format!("/key/info?key={b_key}"),
        format!("/key/info?key={t2_hash}"),
        "/key/list".to_string(),
        "/key/list?tenant_id=tenant-02".to_string(),
        "/key/list?team_id=tenant-02&return_full_object=true".to_string(),
        "/spend/logs".to_string(),
        "/spend/logs?tenant_id=tenant-02".to_string(),
        format!("/spend/logs?api_key={b_hash}"),
        format!("/spend/logs?api_key={b_key}"),
    ];
    let mut own_rows = 0;
    for path in &reads {
        let (status, v) = s.admin_get(T1, path).await;
        assert!(status == 200 || status == 403, "{path}: {status} {v}");
        let text = v.to_string();
        for secret in [
            &b_hash,
            &t2_hash,
            "b-secret-alias",
            "7.25",
            "tenant-02",
            &b_key,
        ] {
            assert!(!text.contains(secret), "{path} leaked {secret}: {text}");
        }
        if path == "/spend/logs" {
            own_rows = v.as_array().map_or(0, Vec::len);
        }
    }
    assert_eq!(own_rows, 1, "tenant-01 sees its own row");
    // Writes are master-only.
    for (path, body) in [
        ("/key/generate", json!({"tenant_id": "tenant-01"})),
        ("/key/update", json!({"key": b_hash, "blocked": true})),
        ("/key/delete", json!({"keys": [b_hash]})),
    ] {
        let (status, _) = s.admin_post(T1, path, &body).await;
        assert_eq!(status, 403, "{path}");
    }
    assert_eq!(
        s.chat(&b_key, &chat_body("chat-fast", false))
            .await
            .status(),
        200
    );
    // The master key sees everything.
    let (_, all) = s.admin_get(MASTER, "/spend/logs").await;
    assert_eq!(all.as_array().map_or(0, Vec::len), 4);
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn raw_keys_never_reach_metrics_or_the_spend_database() {
    // Only hashes may be stored or exported: read the SQLite files byte for byte (rows, key
    // records, WAL) and the metrics text, after traffic under config and generated keys.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("spend.sqlite");
    let mut s = Stack::with(Opts {
        settings: format!(", spend_db: \"{}\"", db.display()),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (5, 1))).await;
    let custom = "sk-custom-raw-key-0042";
    let made = generate(
        &s,
        json!({"tenant_id": "tenant-01", "key": custom, "key_alias": "custom"}),
    )
    .await;
    assert_eq!(made["key"], custom);
    let random = generate(&s, json!({"tenant_id": "tenant-02", "max_budget": 5.0})).await;
    let random = random["key"].as_str().expect("raw key").to_string();
    for key in [T1, T2, custom, random.as_str(), "sk-not-a-key-9"] {
        let r = s.chat(key, &chat_body("chat-fast", false)).await;
        let _ = r.bytes().await;
    }
    let metrics = s.metrics_text().await;
    s.stop().await;
    let secrets = [
        T1,
        T2,
        MASTER,
        custom,
        random.as_str(),
        "sk-not-a-key-9",
        "sk-upstream-secret",
    ];
    for secret in secrets {
        assert!(!metrics.contains(secret), "{secret} in /metrics");
    }
    // The rows are there (so the search below is not vacuous), keyed by hash.
    let store = Store::open(&Database::Sqlite(db.clone()))
        .await
        .expect("open");
    let rows = store.rows(&RowFilter::default(), 100).await.expect("rows");
    assert_eq!(rows.len(), 4, "{rows:?}");
    for key in [T1, T2, custom, random.as_str()] {
        assert!(
            rows.iter().any(|r| r.key_hash == sha256_hex(key)),
            "{key}'s row"
        );
    }
    let keys = store.keys(None).await.expect("key records");
    assert_eq!(keys.len(), 2);
    drop(store);
    let mut files = 0;
    for e in std::fs::read_dir(dir.path()).expect("dir").flatten() {
        let bytes = std::fs::read(e.path()).expect("read");
        files += 1;
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in {}",
                e.path().display()
            );
        }
    }
    assert!(files >= 1);
}

#[tokio::test]
async fn generated_key_budget_and_tpm_limit_are_enforced() {
    // Each request costs 0.02 (10 prompt × 0.001 + 5 completion × 0.002) and uses 15 tokens.
    let s = Stack::with(Opts {
        fast_prices: (0.001, 0.002),
        ..Opts::default()
    })
    .await;
    mount_json(&s.fast, vllm_json("hi", (10, 5))).await;
    let mut body = chat_body("chat-fast", false);
    body["max_tokens"] = json!(1);

    let budgeted = generate(
        &s,
        json!({"tenant_id": "tenant-01", "max_budget": 0.05, "budget_duration": "1h"}),
    )
    .await;
    let budgeted = budgeted["key"].as_str().unwrap_or_default().to_string();
    for _ in 0..2 {
        assert_eq!(s.chat(&budgeted, &body).await.status(), 200);
    }
    // 0.04 spent: the third's worst case no longer fits in 0.05.
    let r = s.chat(&budgeted, &body).await;
    assert_eq!(r.status(), 400);
    let retry: u64 = header(&r, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("the 1h budget period says when it resets");
    assert!((1..=3600).contains(&retry), "Retry-After {retry}");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "budget_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("this key's")),
        "{v}"
    );

    // 15 tokens per request against 40 per minute: a request is admitted while the window
    // holds fewer than 40, so the fourth is refused.
    let tpm = generate(&s, json!({"tenant_id": "tenant-01", "tpm_limit": 40})).await;
    let tpm = tpm["key"].as_str().unwrap_or_default().to_string();
    for _ in 0..3 {
        assert_eq!(s.chat(&tpm, &body).await.status(), 200);
    }
    let r = s.chat(&tpm, &body).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), Some("40"));
    assert!(header(&r, "retry-after").is_some());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["type"], "tokens");

    // Neither key's limit is its tenant's: the config key still gets through.
    assert_eq!(s.chat(T1, &body).await.status(), 200);
}
