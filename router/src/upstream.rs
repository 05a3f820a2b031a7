//! The HTTP client side: sending a rewritten request to one deployment.
//!
//! One pooled `reqwest` client serves every deployment (keep-alive connections, `TCP_NODELAY`,
//! no system proxy: the engines are on the local network and an inherited `HTTP_PROXY` must
//! not capture them). Timeouts are applied with `tokio::time` so they follow a paused clock in
//! tests. A non-2xx answer is read (up to 64 KiB) and returned as [`UpstreamError::Status`] so
//! the caller can decide between fallback and pass-through.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use tokio::time::Instant;

use crate::config::Deployment;
use crate::error::ApiError;
use crate::headers;

/// Largest upstream error body kept.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Largest non-streamed upstream response accepted.
pub const RESPONSE_LIMIT: usize = 64 * 1024 * 1024;

/// A failed upstream attempt.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach the deployment: {0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {status}")]
    Status { status: StatusCode, body: Bytes },
    #[error("broken response body: {0}")]
    Body(String),
}

impl UpstreamError {
    /// Whether another deployment or a fallback group may succeed where this failed: network
    /// trouble, timeouts, 429 and 5xx. Other 4xx would fail the same way anywhere.
    pub fn retriable(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Timeout(_) | Self::Body(_) => true,
            Self::Status { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
        }
    }

    /// The client-facing error, naming the deployment.
    pub fn into_api(self, deployment: &str) -> ApiError {
        let deployment = deployment.to_string();
        match self {
            Self::Unreachable(message) => ApiError::UpstreamUnreachable {
                deployment,
                message,
            },
            Self::Timeout(timeout) => ApiError::UpstreamTimeout {
                deployment,
                timeout,
            },
            Self::Status { status, body } => ApiError::UpstreamStatus {
                deployment,
                status,
                body,
            },
            Self::Body(message) => ApiError::UpstreamBody {
                deployment,
                message,
            },
        }
    }
}

/// The shared client.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
}

impl Upstream {
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build()?;
        Ok(Self { client })
    }

    /// POSTs `body` to `path` under the deployment's `api_base` and waits for a 2xx head.
    pub async fn send(
        &self,
        d: &Deployment,
        path: &str,
        body: Bytes,
        request_id: Option<&HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let deadline = Instant::now() + d.timeout;
        let mut req = self
            .client
            .post(d.endpoint(path))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(k) = &d.api_key {
            req = req.bearer_auth(k.expose());
        }
        if let Some(id) = request_id {
            req = req.header(headers::REQUEST_ID, id.clone());
        }
        let resp = match tokio::time::timeout_at(deadline, req.send()).await {
            Err(_) => return Err(UpstreamError::Timeout(d.timeout)),
            Ok(Err(e)) => return Err(UpstreamError::Unreachable(describe(&e))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_capped(resp, ERROR_BODY_LIMIT, deadline, d.timeout)
            .await
            .unwrap_or_default();
        Err(UpstreamError::Status { status, body })
    }
}

/// The body of `resp`, at most `limit` bytes (longer bodies are an error), by `deadline`.
pub async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<Bytes, UpstreamError> {
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Err(_) => return Err(UpstreamError::Timeout(timeout)),
            Ok(Err(e)) => return Err(UpstreamError::Body(describe(&e))),
            Ok(Ok(None)) => return Ok(buf.freeze()),
            Ok(Ok(Some(c))) => {
                if buf.len() + c.len() > limit {
                    return Err(UpstreamError::Body(format!(
                        "response larger than {limit} bytes"
                    )));
                }
                buf.extend_from_slice(&c);
            }
        }
    }
}

/// An error and its causes on one line (reqwest's top-level message alone is vague).
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
