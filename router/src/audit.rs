//! The audit log: one JSON line per model request, and the outcome vocabulary it shares with
//! the metrics.
//!
//! Lines are serialised on the request's task and handed to a single writer task through a
//! bounded channel, so a slow disk applies back-pressure instead of growing memory, and no
//! request ever waits on a file lock. The writer batches whatever is queued into one write and
//! one flush; on shutdown it drains the queue before the server future returns.
//!
//! A line never contains a raw key: `key_hash` is the SHA-256 hex digest.

use std::path::Path;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How a request ended. The names are stable: the audit log, `/metrics` labels and the load
/// generator use them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Served completely (a stream ended with `[DONE]`).
    #[default]
    Ok,
    /// 400 from the router or passed through from the engine.
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    BudgetExceeded,
    /// 502: connection failure, upstream 5xx, unreadable upstream body.
    UpstreamError,
    UpstreamTimeout,
    /// 503: every deployment cooling down, or the engine overloaded.
    Unavailable,
    /// The client went away before the response ended; what was generated is still billed.
    ClientAborted,
    /// The upstream stream ended or broke without `[DONE]`.
    Truncated,
    /// The upstream sent an error event inside a 200 stream.
    StreamError,
    Internal,
}

impl Outcome {
    pub const ALL: [Outcome; 15] = [
        Outcome::Ok,
        Outcome::InvalidRequest,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::NotFound,
        Outcome::TooLarge,
        Outcome::RateLimited,
        Outcome::BudgetExceeded,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::Unavailable,
        Outcome::ClientAborted,
        Outcome::Truncated,
        Outcome::StreamError,
        Outcome::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::InvalidRequest => "invalid_request",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::NotFound => "not_found",
            Outcome::TooLarge => "too_large",
            Outcome::RateLimited => "rate_limited",
            Outcome::BudgetExceeded => "budget_exceeded",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::Unavailable => "unavailable",
            Outcome::ClientAborted => "client_aborted",
            Outcome::Truncated => "truncated",
            Outcome::StreamError => "stream_error",
            Outcome::Internal => "internal",
        }
    }

    /// Position in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// One audit line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditRecord {
    /// Wall-clock time the request arrived, Unix milliseconds.
    pub ts_ms: u64,
    /// The client's `x-request-id`, forwarded upstream unchanged.
    pub request_id: Option<String>,
    /// `chat` or `completions`.
    pub endpoint: &'static str,
    /// `null` when the key was missing or unknown; `_master` for the master key.
    pub tenant_id: Option<String>,
    /// SHA-256 hex of the presented key (of known keys only).
    pub key_hash: Option<String>,
    /// The virtual model the client asked for.
    pub model: Option<String>,
    /// The group that served it (differs from `model` after a fallback).
    pub model_group: Option<String>,
    /// `model_info.id` of the deployment that served (or last failed).
    pub deployment: Option<String>,
    pub api_base: Option<String>,
    /// LoRA adapter sent upstream as `model`, if any.
    pub adapter: Option<String>,
    /// The `model` value sent upstream (adapter or base model).
    pub upstream_model: Option<String>,
    pub stream: bool,
    /// HTTP status sent to the client.
    pub status: u16,
    pub outcome: Outcome,
    /// `error.type` of an error response.
    pub error_type: Option<&'static str>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// True when the upstream sent no usage and the counts are the router's estimate.
    pub tokens_estimated: bool,
    /// Spend charged, in `model_info` price units.
    pub cost: f64,
    /// Arrival to the first generated token forwarded (streams) or to the response (non-stream).
    pub ttft_ms: Option<f64>,
    /// Arrival to the last byte handed to the client.
    pub e2e_ms: f64,
    /// Router time before the upstream request went out (auth, parsing, token count,
    /// admission), plus, for non-streamed responses, the time from the upstream body to ours.
    pub overhead_ms: Option<f64>,
    /// Upstream attempts made (retries and fallbacks included).
    pub attempts: u32,
    /// Fallback groups tried.
    pub fallbacks: u32,
}

/// Lines queued before writers wait for the disk.
const QUEUE: usize = 16_384;

/// The sending side; cheap to share.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<Vec<u8>>>,
}

/// The background writer; await it after every [`AuditLog`] clone is dropped.
#[derive(Debug)]
pub struct AuditWriter {
    join: JoinHandle<std::io::Result<()>>,
}

impl AuditWriter {
    /// Waits until every queued line is written and flushed.
    pub async fn finish(self) -> std::io::Result<()> {
        self.join.await.map_err(std::io::Error::other)?
    }
}

impl AuditLog {
    /// A log that drops every line (no `audit_log` configured).
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// Opens `path` for appending (creating it and its directory) and starts the writer.
    pub async fn open(path: &Path) -> std::io::Result<(Self, AuditWriter)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let join = tokio::spawn(async move {
            let mut out = tokio::io::BufWriter::with_capacity(1 << 16, file);
            let mut batch = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                for line in batch.drain(..) {
                    out.write_all(&line).await?;
                }
                if rx.is_empty() {
                    out.flush().await?;
                }
            }
            out.flush().await?;
            out.into_inner().sync_data().await
        });
        Ok((Self { tx: Some(tx) }, AuditWriter { join }))
    }

    /// Queues one line (waits only when the queue is full).
    pub async fn write(&self, rec: &AuditRecord) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_vec(rec) else {
            return;
        };
        line.push(b'\n');
        if tx.send(line).await.is_err() {
            tracing::warn!("audit writer has stopped; audit line dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_appended_and_flushed_on_finish() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let path = dir.path().join("sub/audit.jsonl");
        let Ok((log, writer)) = AuditLog::open(&path).await else {
            panic!("open")
        };
        for i in 0..3 {
            let rec = AuditRecord {
                tenant_id: Some(format!("t{i}")),
                outcome: Outcome::ClientAborted,
                ..Default::default()
            };
            log.write(&rec).await;
        }
        drop(log);
        assert!(writer.finish().await.is_ok());
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["tenant_id"], "t2");
        assert_eq!(lines[0]["outcome"], "client_aborted");
    }

    #[test]
    fn outcome_names_match_serde() {
        for o in Outcome::ALL {
            let s = serde_json::to_value(o).unwrap_or_default();
            assert_eq!(s.as_str(), Some(o.as_str()));
            assert_eq!(Outcome::ALL[o.index()], o);
        }
    }
}
