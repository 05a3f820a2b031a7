//! Shared fixtures: a router in front of two wiremock engines, vLLM-shaped bodies, and a
//! scripted slow SSE engine for timing and cancellation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const T1: &str = "sk-tenant-01-abc";
pub const T2: &str = "sk-tenant-02-xyz";
pub const MASTER: &str = "sk-master-123";

/// Tenants every stack has: tenant-01 with an adapter per model; tenant-02 limited to
/// chat-fast with no adapter.
pub const BASE_TENANTS: &str = r#"
  - id: tenant-01
    keys: [sk-tenant-01-abc]
    lora: { chat-fast: tenant-01-fast, chat-strong: tenant-01-strong }
  - id: tenant-02
    keys: [sk-tenant-02-xyz]
    models: [chat-fast]
"#;

/// How to build a stack.
pub struct Opts {
    /// Extra `tenants:` entries (YAML list items, indented by two spaces).
    pub tenants: String,
    /// `api_base` of chat-strong; default: the second wiremock server.
    pub strong_base: Option<String>,
    /// `api_base` of chat-fast; default: the first wiremock server.
    pub fast_base: Option<String>,
    pub strong_timeout_s: f64,
    pub fast_prices: (f64, f64),
    /// Extra `model_info` entries of chat-fast (`, max_input_tokens: 64`).
    pub fast_info: String,
    pub settings: String,
    pub router_settings: String,
    /// Extra `general_settings` entries (`, database_url: ...`).
    pub general: String,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            tenants: String::new(),
            strong_base: None,
            fast_base: None,
            strong_timeout_s: 30.0,
            fast_prices: (0.0000002, 0.0000006),
            fast_info: String::new(),
            settings: String::new(),
            router_settings: String::new(),
            general: String::new(),
        }
    }
}

pub struct Stack {
    pub fast: MockServer,
    pub strong: MockServer,
    pub router: Option<router::RouterHandle>,
    pub token: CancellationToken,
    /// Keeps the audit log's directory alive.
    pub _dir: tempfile::TempDir,
    pub audit: PathBuf,
    pub client: reqwest::Client,
    pub base: String,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

pub fn yaml(fast: &str, strong: &str, audit: &std::path::Path, o: &Opts) -> String {
    format!(
        r#"
model_list:
  - model_name: chat-fast
    litellm_params: {{ model: hosted_vllm/mistral-7b-instruct, api_base: "{fast}", api_key: "none", rpm: 10000, timeout: 30 }}
    model_info: {{ id: fast-a, input_cost_per_token: {}, output_cost_per_token: {} {} }}
  - model_name: chat-strong
    litellm_params: {{ model: hosted_vllm/qwen2.5-32b-instruct, api_base: "{strong}", api_key: sk-upstream-secret, timeout: {} }}
    model_info: {{ id: strong-a, input_cost_per_token: 0.000001, output_cost_per_token: 0.000003 }}
router_settings: {{ routing_strategy: simple-shuffle, fallbacks: [{{chat-strong: [chat-fast]}}], num_retries: 0 {} }}
general_settings: {{ master_key: {MASTER} {} }}
tenantbench_settings: {{ audit_log: "{}" {} }}
tenants:{BASE_TENANTS}{}
"#,
        o.fast_prices.0,
        o.fast_prices.1,
        o.fast_info,
        o.strong_timeout_s,
        o.router_settings,
        o.general,
        audit.display(),
        o.settings,
        o.tenants,
    )
}

impl Stack {
    pub async fn start() -> Stack {
        Self::with(Opts::default()).await
    }

    pub async fn with(o: Opts) -> Stack {
        let fast = MockServer::start().await;
        let strong = MockServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = dir.path().join("audit.jsonl");
        let fast_base = o.fast_base.clone().unwrap_or(format!("{}/v1", fast.uri()));
        let strong_base = o
            .strong_base
            .clone()
            .unwrap_or(format!("{}/v1", strong.uri()));
        let text = yaml(&fast_base, &strong_base, &audit, &o);
        let cfg = match router::config::parse(&text, "test.yaml") {
            Ok(c) => c,
            Err(e) => panic!("{e}\n{text}"),
        };
        let token = CancellationToken::new();
        let handle = router::spawn(cfg, token.clone()).await.expect("router");
        let base = handle.base_url();
        Stack {
            fast,
            strong,
            router: Some(handle),
            token,
            _dir: dir,
            audit,
            client: client(),
            base,
        }
    }

    pub fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }

    pub fn root(&self) -> String {
        self.base.trim_end_matches("/v1").to_string()
    }

    /// `GET` an admin path (`/key/list?...`) with `key`; status and JSON.
    pub async fn admin_get(&self, key: &str, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.root()))
            .bearer_auth(key)
            .send()
            .await
            .expect("router reachable");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST` an admin path with `key` and a JSON body; status and JSON.
    pub async fn admin_post(&self, key: &str, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.root()))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("router reachable");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn chat(&self, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/chat/completions"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("router reachable")
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.root()))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// `x-ratelimit-remaining-{requests,tokens}` of `key` now, read from `GET /v1/models`
    /// (which takes nothing from the allowance).
    pub async fn remaining(&self, key: &str) -> (Option<u64>, Option<u64>) {
        let r = self
            .client
            .get(self.url("/models"))
            .bearer_auth(key)
            .send()
            .await
            .expect("models");
        let n = |h: &str| header(&r, h).and_then(|v| v.parse().ok());
        (
            n("x-ratelimit-remaining-requests"),
            n("x-ratelimit-remaining-tokens"),
        )
    }

    /// Stops the router (waiting for requests in flight) and returns the audit lines.
    pub async fn stop(&mut self) -> Vec<Value> {
        self.token.cancel();
        if let Some(r) = self.router.take() {
            r.wait().await.expect("router stops cleanly");
        }
        audit_lines(&self.audit)
    }

    /// Bodies of the requests an engine received, as JSON.
    pub async fn received(server: &MockServer) -> Vec<Value> {
        server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    }
}

pub fn audit_lines(p: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

pub fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the world."}],
        "max_tokens": 16,
        "stream": stream,
    })
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    format!("data: {c}\n\n")
}

/// A vLLM-shaped stream: role chunk, one chunk per word, finish chunk, usage chunk when
/// `usage` is given, `[DONE]`.
pub fn vllm_sse(words: &[&str], usage: Option<(u64, u64)>) -> String {
    let mut s = chunk(json!({"role": "assistant", "content": ""}), None);
    for w in words {
        s.push_str(&chunk(json!({"content": w}), None));
    }
    s.push_str(&chunk(json!({"content": ""}), Some("stop")));
    if let Some((p, c)) = usage {
        let u = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c},
        });
        s.push_str(&format!("data: {u}\n\n"));
    }
    s.push_str("data: [DONE]\n\n");
    s
}

/// A vLLM-shaped non-streamed chat completion.
pub fn vllm_json(text: &str, usage: (u64, u64)) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": usage.0, "total_tokens": usage.0 + usage.1, "completion_tokens": usage.1},
    })
}

/// Mounts a 200 answer on both endpoints of `server`: `sse` for every request (the router
/// always streams when the client does).
pub async fn mount_sse(server: &MockServer, sse: String) {
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(sse, "text/event-stream"))
        .mount(server)
        .await;
}

pub async fn mount_json(server: &MockServer, body: Value) {
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

pub async fn mount_status(server: &MockServer, status: u16, body: &str) {
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(status)
                .set_body_raw(body.as_bytes().to_vec(), "application/json"),
        )
        .mount(server)
        .await;
}

/// A scripted engine that streams `events` with `gap` between them, and notices when the
/// client (the router) hangs up early.
pub struct SlowEngine {
    pub base: String,
    pub cancelled: Arc<AtomicBool>,
    pub completed: Arc<AtomicBool>,
    pub requests: Arc<AtomicUsize>,
    pub bodies: Arc<Mutex<Vec<Value>>>,
    pub token: CancellationToken,
}

struct Watch {
    cancelled: Arc<AtomicBool>,
    completed: Arc<AtomicBool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.completed.load(Ordering::SeqCst) {
            self.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

impl SlowEngine {
    pub async fn start(events: Vec<String>, gap: Duration) -> SlowEngine {
        let cancelled = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (c1, c2, r1, b1) = (
            cancelled.clone(),
            completed.clone(),
            requests.clone(),
            bodies.clone(),
        );
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (cancelled, completed, events) = (c1.clone(), c2.clone(), events.clone());
                r1.fetch_add(1, Ordering::SeqCst);
                if let Ok(v) = serde_json::from_slice(&body) {
                    b1.lock().expect("lock").push(v);
                }
                async move {
                    let watch = Watch {
                        cancelled,
                        completed,
                    };
                    let s = futures_util::stream::unfold(
                        (0usize, events, watch),
                        move |(i, events, watch)| async move {
                            if i >= events.len() {
                                watch.completed.store(true, Ordering::SeqCst);
                                return None;
                            }
                            if i > 0 {
                                tokio::time::sleep(gap).await;
                            }
                            let item: Result<String, std::io::Error> = Ok(events[i].clone());
                            Some((item, (i + 1, events, watch)))
                        },
                    );
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from_stream(s))
                        .expect("response")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(t.cancelled_owned())
                .await;
        });
        SlowEngine {
            base: format!("http://{addr}/v1"),
            cancelled,
            completed,
            requests,
            bodies,
            token,
        }
    }

    /// vLLM-shaped events: role, `n` single-word chunks, finish, usage, `[DONE]`.
    pub fn vllm_events(n: usize) -> Vec<String> {
        let words: Vec<String> = (0..n).map(|i| format!(" w{i}")).collect();
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        let whole = vllm_sse(&refs, Some((9, n as u64)));
        whole.split_inclusive("\n\n").map(str::to_string).collect()
    }
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The value of the series `name{labels}` (written exactly as rendered) in a `/metrics` text;
/// absent series (the router leaves zero request counters out) read as 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).filter(|rest| rest.starts_with(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The `tenantbench` binary, built and newer than the router's sources.
pub fn binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/tenantbench");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!(
            "{} is missing: build it with `cargo build --bin tenantbench` (`cargo test --workspace` does)",
            bin.display()
        )
    });
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let newest = walk(&src).into_iter().max();
    assert!(
        newest.is_none_or(|n| n <= built),
        "{} is older than the router's sources: rebuild it with `cargo build --bin tenantbench`",
        bin.display()
    );
    bin
}

fn walk(dir: &Path) -> Vec<std::time::SystemTime> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
            v.push(t);
        }
    }
    v
}

/// A child process killed and reaped when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tenantbench router` on `port` with its stderr in `<cfg>.<port>.log` (see
/// [`binary_log`]) and waits until it answers readiness.
pub async fn start_binary(bin: &Path, cfg: &Path, port: u16) -> Child {
    let log = binary_log(cfg, port);
    let err = std::fs::File::create(&log).expect("log file");
    let mut child = Child(
        std::process::Command::new(bin)
            .arg("router")
            .arg("--config")
            .arg(cfg)
            .args(["--port", &port.to_string()])
            // The router's own default level, whatever the test's environment says.
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start tenantbench router"),
    );
    let c = client();
    for _ in 0..200 {
        if c.get(format!("http://127.0.0.1:{port}/health/readiness"))
            .send()
            .await
            .is_ok()
        {
            return child;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the router binary exited ({status}): {text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the router binary did not come up");
}

/// Where [`start_binary`] writes the router's stderr.
pub fn binary_log(cfg: &Path, port: u16) -> PathBuf {
    cfg.with_extension(format!("{port}.log"))
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}
