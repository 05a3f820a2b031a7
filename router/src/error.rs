//! Errors of the request path, and the one place that turns them into HTTP responses.
//!
//! Every refusal the router makes is an [`ApiError`]; [`ApiError::status`], [`ApiError::kind`]
//! and [`ApiError::into_response`] decide the status, the OpenAI-shaped body
//! `{"error":{"message","type","param","code"}}` and the headers. Choices worth knowing:
//!
//! - Budget exhausted: `type: "budget_exceeded"` with status 400 (LiteLLM's long-standing
//!   behaviour, so SDKs do not retry) unless `tenantbench_settings.budget_exceeded_status` is
//!   429; `Retry-After` says when the budget period resets, when it does.
//! - Rate limited: 429, `type` names the limit as OpenAI does (`requests`, `tokens`, or our
//!   `parallel_requests`), `code: "rate_limit_exceeded"`, with `Retry-After`.
//! - Upstream trouble after every attempt and fallback failed: connection failure or 5xx → 502,
//!   upstream 503 or 429 (the engine is overloaded, not the tenant over its limit) → 503,
//!   timeout → 504. Upstream 400/413/422 are the client's fault and pass through unchanged
//!   (vLLM's context-length message reaches the client); other upstream 4xx mean the router is
//!   misconfigured for that deployment and become 502.
//! - Context length: when the deployments declare `model_info.max_input_tokens`, the router
//!   refuses an oversized request itself, before admission, with OpenAI's
//!   `context_length_exceeded` code and vLLM's wording.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::Value;
use wire::openai::{ErrorBody, FieldError};

use crate::audit::Outcome;
use crate::headers;
use crate::ledger::BudgetExceeded;
use crate::limiter::{LimitKind, Rejection};

/// Why a request was not served normally.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Request body is larger than the {limit} bytes this router accepts.")]
    BodyTooLarge { limit: usize },
    #[error("{}", .0.message)]
    InvalidRequest(FieldError),
    /// Prompt (+ `max_tokens`) over the group's context window, refused before admission so
    /// that a request no engine can serve moves no counter.
    #[error("{}", context_message(*.limit, *.prompt, *.completion, .part))]
    ContextLengthExceeded {
        limit: u64,
        /// The router's prompt estimate (the one TPM uses).
        prompt: u64,
        /// The client's `max_tokens`, when it gave one.
        completion: Option<u64>,
        /// Where the prompt is: `messages` (chat) or `prompt` (completions).
        part: &'static str,
    },
    #[error("Missing API key: send `Authorization: Bearer <key>`.")]
    MissingKey,
    #[error("Invalid API key.")]
    InvalidKey,
    #[error("Authentication Error: this key is blocked.")]
    KeyBlocked,
    #[error("Authentication Error: this key expired.")]
    KeyExpired,
    /// A caller asked for something it may not see or do (admin endpoints).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The shared limits backend (Redis) could not be asked.
    #[error("Limits are unavailable: {0}")]
    StateUnavailable(String),
    #[error("The model `{model}` does not exist.")]
    UnknownModel { model: String },
    #[error("This key may not use the model `{model}`.")]
    ModelNotAllowed { model: String },
    #[error("{}", rate_message(.0))]
    RateLimited(Box<Rejection>),
    #[error("{}", budget_message(.detail))]
    BudgetExceeded {
        detail: Box<BudgetExceeded>,
        status: StatusCode,
    },
    #[error("No deployment of `{model}` or its fallbacks is available (all cooling down).")]
    NoDeployment {
        model: String,
        retry_after: Duration,
    },
    #[error("Upstream deployment `{deployment}` is unreachable: {message}")]
    UpstreamUnreachable { deployment: String, message: String },
    #[error("Upstream deployment `{deployment}` did not answer within {timeout:?}.")]
    UpstreamTimeout {
        deployment: String,
        timeout: Duration,
    },
    #[error("Upstream deployment `{deployment}` answered {status}: {}", upstream_message(.body))]
    UpstreamStatus {
        deployment: String,
        status: StatusCode,
        body: Bytes,
    },
    #[error("Upstream deployment `{deployment}` sent an unreadable response: {message}")]
    UpstreamBody { deployment: String, message: String },
    /// The client went away before the response head; never sent, but audited (as nginx's 499).
    #[error("The client closed the request before the response.")]
    ClientClosed,
    #[error("No route for {0}.")]
    NoRoute(String),
    #[error("Internal error: {0}")]
    Internal(String),
}

fn rate_message(r: &Rejection) -> String {
    let what = match r.kind {
        LimitKind::Requests => "requests per minute (RPM)",
        LimitKind::Tokens => "tokens per minute (TPM)",
        LimitKind::ParallelRequests => "parallel requests",
    };
    format!(
        "Rate limit reached on {what}: limit {}. Retry after {}.",
        r.limit,
        headers::seconds(r.retry_after)
    )
}

/// OpenAI's and vLLM's wording, so clients that match on it (LangChain, LiteLLM's
/// `ContextWindowExceededError` mapping) recognise the router's refusal as the engine's.
fn context_message(limit: u64, prompt: u64, completion: Option<u64>, part: &str) -> String {
    match completion {
        Some(c) if prompt < limit => format!(
            "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({prompt} in the {part}, {c} in the completion). Please reduce the length of the {part} or completion.",
            prompt + c
        ),
        _ => format!(
            "This model's maximum context length is {limit} tokens. However, you requested {prompt} tokens in the {part}. Please reduce the length of the {part}."
        ),
    }
}

fn budget_message(b: &BudgetExceeded) -> String {
    let whose = if b.scope.starts_with("key:") {
        "this key's"
    } else {
        "the tenant's"
    };
    let mut m = format!(
        "Budget has been exceeded: {whose} spend {} + in flight {} + this request's worst case {} > max budget {}.",
        b.spent, b.reserved, b.requested, b.budget
    );
    if let Some(r) = b.resets_in {
        m.push_str(&format!(" The budget resets in {}.", headers::seconds(r)));
    }
    m
}

/// The `error.message` of an upstream error body, or its text.
fn upstream_message(body: &Bytes) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let msg = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    msg.chars().take(500).collect()
}

/// Upstream statuses that are the client's fault and pass through unchanged.
fn passes_through(s: StatusCode) -> bool {
    matches!(s.as_u16(), 400 | 413 | 422)
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidRequest(_) | Self::ContextLengthExceeded { .. } => StatusCode::BAD_REQUEST,
            Self::MissingKey | Self::InvalidKey | Self::KeyBlocked | Self::KeyExpired => {
                StatusCode::UNAUTHORIZED
            }
            Self::ModelNotAllowed { .. } | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnknownModel { .. } | Self::NoRoute(_) | Self::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::StateUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BudgetExceeded { status, .. } => *status,
            Self::NoDeployment { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnreachable { .. } | Self::UpstreamBody { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamStatus { status, .. } => match status.as_u16() {
                _ if passes_through(*status) => *status,
                429 | 503 => StatusCode::SERVICE_UNAVAILABLE,
                504 => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ClientClosed => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    /// `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BodyTooLarge { .. }
            | Self::InvalidRequest(_)
            | Self::ContextLengthExceeded { .. }
            | Self::UnknownModel { .. }
            | Self::NotFound(_)
            | Self::NoRoute(_) => "invalid_request_error",
            Self::MissingKey | Self::InvalidKey | Self::KeyBlocked | Self::KeyExpired => {
                "authentication_error"
            }
            Self::ModelNotAllowed { .. } => "key_model_access_denied",
            Self::Forbidden(_) => "permission_error",
            Self::StateUnavailable(_) => "service_unavailable",
            Self::RateLimited(r) => r.kind.as_str(),
            Self::BudgetExceeded { .. } => "budget_exceeded",
            Self::NoDeployment { .. } => "service_unavailable",
            Self::UpstreamTimeout { .. } => "timeout",
            Self::UpstreamStatus { status, .. } if passes_through(*status) => {
                "invalid_request_error"
            }
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamStatus { .. }
            | Self::UpstreamBody { .. } => "upstream_error",
            Self::Internal(_) => "internal_error",
            Self::ClientClosed => "client_closed_request",
        }
    }

    /// `error.code`.
    fn code(&self) -> Value {
        let s = match self {
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::InvalidRequest(_) => "invalid_value",
            Self::ContextLengthExceeded { .. } => "context_length_exceeded",
            Self::MissingKey | Self::InvalidKey => "invalid_api_key",
            Self::KeyBlocked => "key_blocked",
            Self::KeyExpired => "key_expired",
            Self::UnknownModel { .. } => "model_not_found",
            Self::ModelNotAllowed { .. } => "model_not_allowed",
            Self::RateLimited(_) => "rate_limit_exceeded",
            Self::BudgetExceeded { .. } => "budget_exceeded",
            _ => return Value::from(self.status().as_u16()),
        };
        Value::from(s)
    }

    fn param(&self) -> Option<String> {
        match self {
            Self::InvalidRequest(e) => e.param.clone(),
            Self::ContextLengthExceeded { part, .. } => Some((*part).to_string()),
            Self::UnknownModel { .. } | Self::ModelNotAllowed { .. } => Some("model".into()),
            _ => None,
        }
    }

    /// How the audit log and metrics count this error.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::BodyTooLarge { .. } => Outcome::TooLarge,
            Self::InvalidRequest(_) | Self::ContextLengthExceeded { .. } => Outcome::InvalidRequest,
            Self::MissingKey | Self::InvalidKey | Self::KeyBlocked | Self::KeyExpired => {
                Outcome::Unauthorized
            }
            Self::ModelNotAllowed { .. } | Self::Forbidden(_) => Outcome::Forbidden,
            Self::UnknownModel { .. } | Self::NoRoute(_) | Self::NotFound(_) => Outcome::NotFound,
            Self::StateUnavailable(_) => Outcome::Unavailable,
            Self::RateLimited(_) => Outcome::RateLimited,
            Self::BudgetExceeded { .. } => Outcome::BudgetExceeded,
            Self::NoDeployment { .. } => Outcome::Unavailable,
            Self::UpstreamTimeout { .. } => Outcome::UpstreamTimeout,
            Self::UpstreamStatus { status, .. } if passes_through(*status) => {
                Outcome::InvalidRequest
            }
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamStatus { .. }
            | Self::UpstreamBody { .. } => Outcome::UpstreamError,
            Self::Internal(_) => Outcome::Internal,
            Self::ClientClosed => Outcome::ClientAborted,
        }
    }

    /// The OpenAI-shaped body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.to_string(), self.kind(), self.param(), self.code())
    }

    /// The response, with `Retry-After` and rate-limit headers where they apply. Callers add
    /// the tenant's allowance headers on top.
    pub fn into_response(self) -> Response {
        let status = self.status();
        let mut h = HeaderMap::new();
        match &self {
            Self::RateLimited(r) => {
                headers::put_retry_after(&mut h, r.retry_after);
                headers::put_allowance(&mut h, &r.allowance);
            }
            Self::BudgetExceeded { detail, .. } => {
                if let Some(d) = detail.resets_in {
                    headers::put_retry_after(&mut h, d);
                }
            }
            Self::NoDeployment { retry_after, .. } => {
                headers::put_retry_after(&mut h, *retry_after);
            }
            _ => {}
        }
        // The engine's own 400 (context length, bad parameter) reaches the client verbatim.
        let body = match &self {
            Self::UpstreamStatus { status, body, .. }
                if passes_through(*status) && serde_json::from_slice::<Value>(body).is_ok() =>
            {
                body.clone()
            }
            _ => Bytes::from(serde_json::to_vec(&self.body()).unwrap_or_default()),
        };
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        (status, h, body).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ApiError::into_response(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Money;
    use crate::limiter::Allowance;

    async fn parts(e: ApiError) -> (StatusCode, HeaderMap, Value) {
        let r = e.into_response();
        let status = r.status();
        let h = r.headers().clone();
        let b = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (status, h, serde_json::from_slice(&b).unwrap_or_default())
    }

    #[tokio::test]
    async fn every_error_is_openai_shaped() {
        let cases = vec![
            ApiError::BodyTooLarge { limit: 10 },
            ApiError::InvalidRequest(FieldError::new("temperature", "bad")),
            ApiError::ContextLengthExceeded {
                limit: 8,
                prompt: 5,
                completion: Some(4),
                part: "messages",
            },
            ApiError::MissingKey,
            ApiError::UnknownModel { model: "x".into() },
            ApiError::ModelNotAllowed { model: "x".into() },
            ApiError::UpstreamTimeout {
                deployment: "d".into(),
                timeout: Duration::from_secs(1),
            },
            ApiError::Internal("boom".into()),
        ];
        let want = [413, 400, 400, 401, 404, 403, 504, 500];
        for (e, want) in cases.into_iter().zip(want) {
            let (s, _, v) = parts(e).await;
            assert_eq!(s.as_u16(), want);
            for f in ["message", "type", "param", "code"] {
                assert!(v["error"].get(f).is_some(), "{want}: no {f} in {v}");
            }
        }
    }

    #[tokio::test]
    async fn rate_limit_says_which_limit_and_when() {
        let (s, h, v) = parts(ApiError::RateLimited(Box::new(Rejection {
            kind: LimitKind::Tokens,
            limit: 100,
            retry_after: Duration::from_millis(2500),
            allowance: Allowance::default(),
        })))
        .await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            h.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("3")
        );
        assert_eq!(v["error"]["type"], "tokens");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("TPM"))
        );
    }

    #[tokio::test]
    async fn budget_and_upstream_mapping() {
        let (s, _, v) = parts(ApiError::BudgetExceeded {
            detail: Box::new(BudgetExceeded {
                scope: "tenant:t".into(),
                spent: Money::from_f64(1.0),
                reserved: Money::ZERO,
                budget: Money::from_f64(1.0),
                requested: Money::from_f64(0.1),
                resets_in: None,
            }),
            status: StatusCode::BAD_REQUEST,
        })
        .await;
        assert_eq!(
            (s.as_u16(), v["error"]["type"].as_str()),
            (400, Some("budget_exceeded"))
        );
        let upstream = |code: u16, body: &'static str| ApiError::UpstreamStatus {
            deployment: "d".into(),
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
            body: Bytes::from_static(body.as_bytes()),
        };
        let ctx = r#"{"error":{"message":"This model's maximum context length is 8 tokens","type":"BadRequestError","param":null,"code":400}}"#;
        let (s, _, v) = parts(upstream(400, ctx)).await;
        assert_eq!(s.as_u16(), 400);
        assert_eq!(
            v["error"]["type"], "BadRequestError",
            "passed through verbatim"
        );
        for (code, want) in [(500, 502), (503, 503), (429, 503), (504, 504), (404, 502)] {
            let (s, _, v) = parts(upstream(code, "oops")).await;
            assert_eq!(s.as_u16(), want, "upstream {code}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("oops"))
            );
        }
    }

    #[tokio::test]
    async fn context_length_refusal_speaks_like_openai_and_vllm() {
        let (s, _, v) = parts(ApiError::ContextLengthExceeded {
            limit: 100,
            prompt: 40,
            completion: Some(80),
            part: "messages",
        })
        .await;
        assert_eq!(s.as_u16(), 400);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        assert_eq!(v["error"]["param"], "messages");
        assert_eq!(
            v["error"]["message"],
            "This model's maximum context length is 100 tokens. However, you requested 120 tokens (40 in the messages, 80 in the completion). Please reduce the length of the messages or completion."
        );
        // A prompt alone over the window names only the prompt, as vLLM does.
        let (_, _, v) = parts(ApiError::ContextLengthExceeded {
            limit: 100,
            prompt: 150,
            completion: None,
            part: "prompt",
        })
        .await;
        assert_eq!(
            v["error"]["message"],
            "This model's maximum context length is 100 tokens. However, you requested 150 tokens in the prompt. Please reduce the length of the prompt."
        );
    }
}
