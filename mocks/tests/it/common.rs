//! Helpers: start a simulator, read an SSE body into events.

use mocks::{EngineConfig, SimHandle};
use tokio_util::sync::CancellationToken;
use wire::sse::{SseEvent, SseParser};

pub struct Sim {
    pub handle: SimHandle,
    pub stop: CancellationToken,
    pub client: reqwest::Client,
}

impl Sim {
    pub async fn start(cfg: EngineConfig) -> Sim {
        let stop = CancellationToken::new();
        let handle = mocks::spawn(cfg, stop.clone()).await;
        let handle = match handle {
            Ok(h) => h,
            Err(e) => panic!("simulator did not start: {e}"),
        };
        Sim {
            handle,
            stop,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.handle.addr(), path)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        match self.client.post(self.url(path)).json(&body).send().await {
            Ok(r) => r,
            Err(e) => panic!("POST {path}: {e}"),
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        match self.client.get(self.url(path)).send().await {
            Ok(r) => r,
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.stopped().await;
    }
}

/// Reads a whole body and returns its raw bytes and SSE events.
pub async fn sse(resp: reqwest::Response) -> (Vec<u8>, Vec<SseEvent>) {
    let bytes = match resp.bytes().await {
        Ok(b) => b.to_vec(),
        Err(e) => panic!("body: {e}"),
    };
    let mut p = SseParser::new();
    let events = p.push(&bytes);
    (bytes, events)
}

pub fn json(s: &str) -> serde_json::Value {
    match serde_json::from_str(s) {
        Ok(v) => v,
        Err(e) => panic!("not JSON ({e}): {s}"),
    }
}
