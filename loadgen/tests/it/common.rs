//! A fake upstream that replays a scripted HTTP response: status, headers, then body pieces
//! written at scripted offsets from the moment the request was read, each in its own HTTP chunk
//! and its own TCP segment (TCP_NODELAY), so the client sees exactly the reads the script asks
//! for. It serves a bounded number of connections and then stops.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// One piece of the body: written `at_ms` after the request arrived.
#[derive(Debug, Clone)]
pub struct Piece {
    pub at_ms: u64,
    pub bytes: Vec<u8>,
}

/// A scripted response.
#[derive(Debug, Clone)]
pub struct Script {
    pub status: u16,
    pub pieces: Vec<Piece>,
    /// After the last piece, close the TCP connection without the terminating zero-length
    /// chunk: the HTTP body is cut, as when a server or proxy dies mid-stream.
    pub cut: bool,
}

impl Script {
    pub fn sse(pieces: Vec<Piece>) -> Self {
        Self {
            status: 200,
            pieces,
            cut: false,
        }
    }

    /// A 200 stream whose connection drops after the last piece.
    pub fn cut_after(pieces: Vec<Piece>) -> Self {
        Self {
            cut: true,
            ..Self::sse(pieces)
        }
    }
}

pub fn piece(at_ms: u64, bytes: impl Into<Vec<u8>>) -> Piece {
    Piece {
        at_ms,
        bytes: bytes.into(),
    }
}

/// A `data:` event carrying one content delta.
pub fn content(text: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    )
}

/// A `data:` event whose delta carries `text` in the field `channel` (`reasoning_content`,
/// `reasoning`, `content`).
pub fn delta(channel: &str, text: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {channel: text}, "finish_reason": null}]})
    )
}

/// A `data:` event carrying one tool-call delta: the call's `name` (first fragment, as vLLM
/// sends it with empty arguments) and an `arguments` fragment.
pub fn tool_call(name: Option<&str>, arguments: &str) -> String {
    let mut function = serde_json::json!({ "arguments": arguments });
    if let Some(n) = name {
        function["name"] = serde_json::json!(n);
    }
    format!(
        "data: {}\n\n",
        serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_0",
            "type": "function", "function": function}]}, "finish_reason": null}]})
    )
}

/// The final usage chunk vLLM sends with `include_usage`.
pub fn usage(prompt: u64, completion: u64) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}})
    )
}

pub const DONE: &str = "data: [DONE]\n\n";

/// Starts the fake upstream on 127.0.0.1:0; it serves `connections` requests, one script each
/// (the last script repeats), then exits.
pub async fn serve(scripts: Vec<Script>, connections: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        for i in 0..connections {
            let Ok(Ok((sock, _))) =
                tokio::time::timeout(Duration::from_secs(20), listener.accept()).await
            else {
                return;
            };
            let script = scripts
                .get(i)
                .or(scripts.last())
                .cloned()
                .unwrap_or_else(|| Script::sse(Vec::new()));
            tokio::spawn(respond(sock, script));
        }
    });
    addr
}

/// Reads one request (head and content-length body); returns its head, lower-cased, or `None`
/// when the connection ends first.
pub async fn read_request(sock: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return Some(head);
        }
    }
}

async fn respond(mut sock: TcpStream, script: Script) {
    let _ = sock.set_nodelay(true);
    if read_request(&mut sock).await.is_none() {
        return;
    }
    let start = Instant::now();
    let kind = if script.status == 200 {
        "text/event-stream"
    } else {
        "application/json"
    };
    let head = format!(
        "HTTP/1.1 {} X\r\ncontent-type: {kind}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        script.status
    );
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for p in script.pieces {
        tokio::time::sleep_until(start + Duration::from_millis(p.at_ms)).await;
        let mut frame = format!("{:x}\r\n", p.bytes.len()).into_bytes();
        frame.extend_from_slice(&p.bytes);
        frame.extend_from_slice(b"\r\n");
        if sock.write_all(&frame).await.is_err() {
            return;
        }
    }
    if script.cut {
        // Dropping the socket closes it with the body unfinished: no terminating chunk.
        return;
    }
    // The terminating chunk: a clean end of the HTTP body, whatever the SSE said.
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let _ = sock.shutdown().await;
}

/// A request spec aimed at `addr`, intended now.
pub fn spec(addr: SocketAddr) -> loadgen::client::RequestSpec {
    let now = Instant::now();
    loadgen::client::RequestSpec {
        id: 1,
        tenant: "t-01".into(),
        group: "t".into(),
        model: "m".into(),
        warmup: false,
        url: format!("http://{addr}/v1/chat/completions"),
        api_key: Some("sk-test".into()),
        body: bytes::Bytes::from_static(b"{\"model\":\"m\",\"stream\":true}"),
        planned_prompt_tokens: 10,
        t0: now,
        intended: now,
        dispatched: None,
        timeout: Duration::from_secs(10),
    }
}

pub fn client() -> loadgen::client::HttpClient {
    loadgen::client::HttpClient::new().unwrap_or_else(|e| panic!("client: {e}"))
}

static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serialises the tests that measure real time: on two cores, parallel tests would measure
/// each other's scheduling delays instead of the script's.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    TIMING.lock().await
}

/// Runs one scripted exchange and returns what the load generator recorded.
pub async fn replay(
    script: Script,
) -> (reports::RequestRecord, loadgen::client::StreamObservation) {
    replay_with(script, |_| {}).await
}

/// As [`replay`], with the request spec changed by `adjust` first (e.g. a shorter timeout).
pub async fn replay_with(
    script: Script,
    adjust: impl FnOnce(&mut loadgen::client::RequestSpec),
) -> (reports::RequestRecord, loadgen::client::StreamObservation) {
    let _guard = exclusive().await;
    // Every script runs through both send paths (the plain HTTP/1.1 client and reqwest), which
    // must agree on everything but the exact microseconds. Clients first: building one loads
    // the TLS root store, which must not fall between a request's intended time and its send.
    let plain_client = client();
    let other =
        loadgen::client::HttpClient::reqwest_only().unwrap_or_else(|e| panic!("client: {e}"));
    let addr = serve(vec![script.clone()], 1).await;
    let mut plain_spec = spec(addr);
    adjust(&mut plain_spec);
    let mut reqwest_spec = plain_spec.clone();
    let plain = loadgen::client::execute_observed(&plain_client, plain_spec).await;
    reqwest_spec.url = format!(
        "http://{}/v1/chat/completions",
        serve(vec![script], 1).await
    );
    let now = Instant::now();
    reqwest_spec.t0 = now;
    reqwest_spec.intended = now;
    let via_reqwest = loadgen::client::execute_observed(&other, reqwest_spec).await;
    let (a, b) = (&plain.0, &via_reqwest.0);
    assert_eq!(
        (
            a.outcome,
            a.status,
            a.output_tokens,
            a.itl_ms.len(),
            &plain.1.text
        ),
        (
            b.outcome,
            b.status,
            b.output_tokens,
            b.itl_ms.len(),
            &via_reqwest.1.text
        ),
        "the plain client and reqwest disagree ({:?} / {:?})",
        a.error,
        b.error
    );
    plain
}
