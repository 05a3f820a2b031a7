//! The spend log: rows committed before the last byte, budgets resumed after a restart (and
//! after SIGKILL of the real binary), PostgreSQL as the production backend.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::*;
use crate::services;
use router::ledger::Money;
use router::store::{Database, RowFilter, Store};

fn tenant_filter(t: &str) -> RowFilter {
    RowFilter {
        tenant_id: Some(t.into()),
        key_hash: None,
    }
}

#[tokio::test]
async fn completed_responses_have_their_row_committed_before_the_last_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("spend.sqlite");
    let s = Stack::with(Opts {
        settings: format!(", spend_db: \"{}\"", db.display()),
        ..Opts::default()
    })
    .await;
    mount_sse(&s.fast, vllm_sse(&[" a", " b"], Some((7, 2)))).await;
    let r = s.chat(T1, &chat_body("chat-fast", true)).await;
    let text = r.text().await.expect("stream");
    assert!(text.ends_with("data: [DONE]\n\n"));
    // Read through a second connection, at once: the row is already on disk.
    let store = Store::open(&Database::Sqlite(db.clone()))
        .await
        .expect("open");
    let rows = store
        .rows(&tenant_filter("tenant-01"), 10)
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!((row.prompt_tokens, row.completion_tokens), (7, 2));
    assert_eq!(row.status, "ok");
    assert_eq!(row.adapter.as_deref(), Some("tenant-01-fast"));
    assert_eq!(row.deployment, "fast-a");
    assert_eq!(row.key_hash.len(), 64);
    assert!(row.cost > Money::ZERO);
}

#[tokio::test]
async fn client_abort_leaves_a_client_aborted_row_with_cost() {
    // Issue 3 case 4 (LiteLLM #14457): 5 chunks read of a 500-token stream, then hang up.
    let engine = SlowEngine::start(SlowEngine::vllm_events(500), Duration::from_millis(10)).await;
    let mut s = Stack::with(Opts {
        fast_base: Some(engine.base.clone()),
        fast_prices: (0.001, 0.002),
        tenants: "  - id: capped\n    keys: [sk-capped]\n    tpm_limit: 100000\n".into(),
        ..Opts::default()
    })
    .await;
    let r = s.chat("sk-capped", &chat_body("chat-fast", true)).await;
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\"content\":\" w").count() < 5 {
        match body.next().await {
            Some(Ok(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            _ => break,
        }
    }
    drop(body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !engine.cancelled.load(std::sync::atomic::Ordering::SeqCst)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        engine.cancelled.load(std::sync::atomic::Ordering::SeqCst),
        "the engine saw the cancel"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, rows) = s.admin_get(MASTER, "/spend/logs?tenant_id=capped").await;
    let row = &rows[0];
    assert_eq!(row["status"], "client_aborted", "{rows}");
    assert!(row["spend"].as_f64().unwrap_or(0.0) > 0.0);
    let delivered = row["completion_tokens"].as_u64().unwrap_or(0);
    assert!((5..100).contains(&delivered), "{row}");
    // The TPM counter moved by the delivered tokens, not by the 500 never generated.
    let m = s
        .client
        .get(s.url("/models"))
        .bearer_auth("sk-capped")
        .send()
        .await
        .expect("models");
    let left: u64 = header(&m, "x-ratelimit-remaining-tokens")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let prompt = row["prompt_tokens"].as_u64().unwrap_or(0);
    assert!(
        left + prompt + delivered >= 100_000 - 5 && left <= 100_000 - prompt - delivered + 50,
        "left {left}"
    );
    s.stop().await;
    engine.token.cancel();
}

fn budget_tenant(budget: f64) -> String {
    format!(
        "  - id: payg\n    keys: [sk-payg]\n    max_budget: {budget}\n    budget_duration: 30d\n"
    )
}

/// Each request: 10 completion tokens at 0.0001, prompt free: worst case = actual = 0.001.
async fn cheap_engine(server: &MockServer, delay_ms: u64) {
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(vllm_json("hi", (5, 10)))
                .set_delay(Duration::from_millis(delay_ms)),
        )
        .mount(server)
        .await;
}

fn cheap_body() -> Value {
    let mut b = chat_body("chat-fast", false);
    b["max_tokens"] = json!(10);
    b
}

#[tokio::test]
async fn budgets_resume_from_the_spend_log_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("spend.sqlite");
    let opts = || Opts {
        fast_prices: (0.0, 0.0001),
        tenants: budget_tenant(0.005),
        settings: format!(
            ", spend_db: \"{}\", budget_exceeded_status: 429",
            db.display()
        ),
        ..Opts::default()
    };
    let mut first = Stack::with(opts()).await;
    cheap_engine(&first.fast, 0).await;
    for _ in 0..3 {
        assert_eq!(first.chat("sk-payg", &cheap_body()).await.status(), 200);
    }
    first.stop().await;
    let second = Stack::with(opts()).await;
    cheap_engine(&second.fast, 0).await;
    let body = cheap_body();
    let codes: Vec<u16> =
        futures_util::future::join_all((0..5).map(|_| second.chat("sk-payg", &body)))
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 2, "{codes:?}");
    let store = Store::open(&Database::Sqlite(db)).await.expect("open");
    let spent = store
        .spent_since(&tenant_filter("payg"), 0)
        .await
        .expect("sum");
    assert_eq!(spent, Money::from_f64(0.005));
}

#[tokio::test]
async fn postgres_ledger_keeps_rows_keys_and_budgets_across_restarts() {
    let url = services::pg_database().await;
    let opts = || Opts {
        fast_prices: (0.0, 0.0001),
        tenants: budget_tenant(0.004),
        general: format!(", database_url: \"{url}\""),
        settings: ", budget_exceeded_status: 429".into(),
        ..Opts::default()
    };
    let mut first = Stack::with(opts()).await;
    cheap_engine(&first.fast, 0).await;
    let (st, made) = first
        .admin_post(
            MASTER,
            "/key/generate",
            &json!({"tenant_id": "payg", "key_alias": "pg"}),
        )
        .await;
    assert_eq!(st, 200);
    let key = made["key"].as_str().unwrap_or_default().to_string();
    for k in ["sk-payg", key.as_str(), "sk-payg"] {
        assert_eq!(first.chat(k, &cheap_body()).await.status(), 200);
    }
    first.stop().await;
    let second = Stack::with(opts()).await;
    cheap_engine(&second.fast, 0).await;
    // The generated key survived; one request of budget is left.
    assert_eq!(second.chat(&key, &cheap_body()).await.status(), 200);
    assert_eq!(second.chat("sk-payg", &cheap_body()).await.status(), 429);
    let (_, rows) = second.admin_get(MASTER, "/spend/logs?tenant_id=payg").await;
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows.iter().filter(|r| r["key_alias"] == "pg").count(), 2);
    let total: f64 = rows.iter().filter_map(|r| r["spend"].as_f64()).sum();
    assert!((total - 0.004).abs() < 1e-9, "{total}");
}

#[tokio::test]
async fn sigkill_mid_load_loses_no_completed_spend_and_budgets_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("spend.sqlite");
    let settings = format!("spend_db: \"{}\", ", db.display());
    sigkill_mid_load(&dir, "", &settings, Database::Sqlite(db)).await;
}

#[tokio::test]
async fn sigkill_mid_load_on_postgres_loses_no_completed_spend_and_budgets_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = services::pg_database().await;
    let general = format!(", database_url: \"{url}\"");
    sigkill_mid_load(&dir, &general, "", Database::Postgres(url)).await;
}

/// Loads a router binary, SIGKILLs it with requests in flight, and checks the ledger (SQLite
/// file or PostgreSQL) holds a row for every response that completed and that the restarted
/// router resumes the budget from it.
async fn sigkill_mid_load(dir: &tempfile::TempDir, general: &str, settings: &str, db: Database) {
    let bin = binary();
    let engine = MockServer::start().await;
    cheap_engine(&engine, 40).await;
    let cfg = dir.path().join("router.yaml");
    let text = format!(
        "model_list:\n  - model_name: chat-fast\n    litellm_params: {{ model: hosted_vllm/m, api_base: \"{}/v1\" }}\n    model_info: {{ id: fast-a, input_cost_per_token: 0, output_cost_per_token: 0.0001 }}\ngeneral_settings: {{ master_key: {MASTER}{general} }}\ntenantbench_settings: {{ {settings}budget_exceeded_status: 429 }}\ntenants:\n{}",
        engine.uri(),
        budget_tenant(0.030)
    );
    std::fs::write(&cfg, text).expect("config");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let mut child = start_binary(&bin, &cfg, port).await;
    let c = client();
    let completed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (c, url, done) = (c.clone(), url.clone(), completed.clone());
            tokio::spawn(async move {
                loop {
                    let Ok(r) = c
                        .post(&url)
                        .bearer_auth("sk-payg")
                        .json(&cheap_body())
                        .send()
                        .await
                    else {
                        break;
                    };
                    let ok = r.status() == 200;
                    if r.bytes().await.is_ok() && ok {
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    while completed.load(std::sync::atomic::Ordering::SeqCst) < 12 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = child.0.kill(); // SIGKILL, with requests in flight
    let _ = child.0.wait();
    for w in workers {
        let _ = w.await;
    }
    let done = completed.load(std::sync::atomic::Ordering::SeqCst);
    let store = Store::open(&db).await.expect("open");
    let rows = store
        .rows(&tenant_filter("payg"), 1000)
        .await
        .expect("rows");
    assert!(
        rows.len() >= done,
        "{} rows for {done} completed responses",
        rows.len()
    );
    drop(store);
    // Restart: the budget resumes from the ledger; exactly 30 requests fit in all.
    let _child = start_binary(&bin, &cfg, port).await;
    let mut more = 0;
    for _ in 0..40 {
        let r = c
            .post(&url)
            .bearer_auth("sk-payg")
            .json(&cheap_body())
            .send()
            .await
            .expect("router");
        if r.status() == 200 {
            more += 1;
        }
    }
    assert_eq!(
        rows.len() + more,
        30,
        "{} before the kill, {more} after",
        rows.len()
    );
}
