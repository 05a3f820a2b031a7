//! Response header names the router sets, and the helpers that fill them.
//!
//! Rate limits use OpenAI's names (`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`),
//! which LiteLLM also returns. `reset` is the time until the oldest entry leaves the 60 s
//! window, written as seconds with a unit (`"12.5s"`), as OpenAI writes durations. The
//! deployment that served a request is named with LiteLLM's headers (`x-litellm-model-id`,
//! `x-litellm-model-api-base`, `x-litellm-model-group`); `x-tenantbench-adapter` names the LoRA
//! adapter sent upstream.
//! Headers for a dimension without a limit are left out, as LiteLLM leaves them out when a key
//! has no limit and the backend sends none.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::limiter::{Allowance, Window};

pub const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
pub const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
pub const REMAINING_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-requests");
pub const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
pub const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
pub const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
/// Milliseconds form of `Retry-After` (OpenAI's clients read it).
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
/// `model_info.id` of the deployment that served the request.
pub const MODEL_ID: HeaderName = HeaderName::from_static("x-litellm-model-id");
/// `api_base` of the deployment that served the request.
pub const MODEL_API_BASE: HeaderName = HeaderName::from_static("x-litellm-model-api-base");
/// The virtual model (group) that served the request: differs from the one asked for after a
/// fallback.
pub const MODEL_GROUP: HeaderName = HeaderName::from_static("x-litellm-model-group");
/// The LoRA adapter sent upstream as `model` (absent when the base model served).
pub const ADAPTER: HeaderName = HeaderName::from_static("x-tenantbench-adapter");
pub const ATTEMPTED_RETRIES: HeaderName = HeaderName::from_static("x-litellm-attempted-retries");
pub const ATTEMPTED_FALLBACKS: HeaderName =
    HeaderName::from_static("x-litellm-attempted-fallbacks");
/// Cost of a non-streamed response (a stream's cost is known only after its head is sent).
pub const RESPONSE_COST: HeaderName = HeaderName::from_static("x-litellm-response-cost");
/// Router time before the upstream request was sent, in milliseconds.
pub const OVERHEAD_MS: HeaderName = HeaderName::from_static("x-litellm-overhead-duration-ms");
/// Forwarded upstream unchanged and echoed back.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `"1.25s"`.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.3}s")
    }
}

fn put(h: &mut HeaderMap, name: HeaderName, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(name, v);
    }
}

/// Sets a text header, skipping values that are not valid header text.
pub fn put_str(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// Sets the `x-ratelimit-*` headers of every limited dimension.
pub fn put_allowance(h: &mut HeaderMap, a: &Allowance) {
    let dims: [(&Option<Window>, [HeaderName; 3]); 2] = [
        (
            &a.requests,
            [LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS],
        ),
        (&a.tokens, [LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS]),
    ];
    for (w, [limit, remaining, reset]) in dims {
        if let Some(w) = w {
            put(h, limit, w.limit.to_string());
            put(h, remaining, w.remaining.to_string());
            put(h, reset, seconds(w.reset));
        }
    }
}

/// `Retry-After` in whole seconds (rounded up, at least 1) and `retry-after-ms`.
pub fn put_retry_after(h: &mut HeaderMap, d: Duration) {
    let secs = d.as_secs_f64().ceil().max(1.0) as u64;
    put(h, http::header::RETRY_AFTER, secs.to_string());
    put(h, RETRY_AFTER_MS, d.as_millis().max(1).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_headers() {
        let mut h = HeaderMap::new();
        put_allowance(
            &mut h,
            &Allowance {
                requests: Some(Window {
                    limit: 120,
                    remaining: 7,
                    reset: Duration::from_millis(56_500),
                }),
                tokens: None,
            },
        );
        assert_eq!(
            h.get(REMAINING_REQUESTS).and_then(|v| v.to_str().ok()),
            Some("7")
        );
        assert_eq!(
            h.get(RESET_REQUESTS).and_then(|v| v.to_str().ok()),
            Some("56.500s")
        );
        assert!(h.get(REMAINING_TOKENS).is_none());
        put_retry_after(&mut h, Duration::from_millis(300));
        assert_eq!(
            h.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
        assert_eq!(
            h.get("retry-after-ms").and_then(|v| v.to_str().ok()),
            Some("300")
        );
    }
}
