//! Sends one streaming request and turns what comes back into a [`reports::RequestRecord`].
//!
//! Timing rules (DESIGN §7, defined in `docs/metrics.md`):
//! - every latency is measured from the request's *intended* send time, so a late scheduler or a
//!   saturated client shows up as latency instead of hiding it (no coordinated omission);
//! - a chunk's arrival time is taken when its bytes come off the socket, before parsing;
//! - TTFT is the first chunk that carries generated text on any channel (content, reasoning,
//!   tool-call arguments); role-only and empty chunks do not count;
//! - a chunk carrying k tokens after a gap g contributes k inter-token latencies of g/k, and one
//!   inter-chunk latency of g;
//! - output tokens come from the server's `usage`; without it they are counted with the
//!   tokenizer and marked as estimated;
//! - a stream that carries an error event, ends without `[DONE]`, or never carries a token is a
//!   failure and contributes no latency.
//! - once `[DONE]` has arrived the response is complete: a connection dropped or held open
//!   after it (before the body's last HTTP chunk) changes nothing.

use std::time::Duration;

use futures_util::StreamExt;
use reports::{Outcome, RequestRecord};
use tokio::time::Instant;
use wire::openai::{ErrorBody, StreamChunk, Usage};
use wire::sse::SseParser;

/// What the caller knows about the request before it is sent.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub id: u64,
    pub tenant: String,
    pub group: String,
    pub model: String,
    pub warmup: bool,
    pub url: String,
    pub api_key: Option<String>,
    pub body: bytes::Bytes,
    /// Prompt tokens as planned, used when the server reports no usage.
    pub planned_prompt_tokens: u64,
    /// Run start: all `*_start_ms` fields are measured from here.
    pub t0: Instant,
    /// When the schedule wanted the request sent.
    pub intended: Instant,
    /// When the scheduler released it (its pacer woke); the send starts when a runtime worker
    /// picks the request's task up. `None` when the caller sends it directly.
    pub dispatched: Option<Instant>,
    /// Deadline for the whole request, counted from `intended`.
    pub timeout: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Everything observed while reading a stream.
#[derive(Debug, Default)]
pub struct StreamObservation {
    pub first_token: Option<Instant>,
    pub first_content: Option<Instant>,
    pub last_token: Option<Instant>,
    pub done_at: Option<Instant>,
    pub itl_ms: Vec<f64>,
    pub chunk_gaps_ms: Vec<f64>,
    pub counted_tokens: u64,
    pub usage: Option<Usage>,
    pub saw_done: bool,
    pub error: Option<String>,
    /// Every generated character on every channel, in order: the exact text the stream carried.
    pub text: String,
}

impl StreamObservation {
    /// Feeds the events completed by one read that arrived at `now`.
    pub fn observe(&mut self, parser: &mut SseParser, bytes: &[u8], now: Instant) {
        for ev in parser.push(bytes) {
            if !ev.has_data {
                continue; // comments, keep-alives, id/retry-only blocks
            }
            if ev.is_done() {
                self.saw_done = true;
                self.done_at = Some(now);
                continue;
            }
            if self.saw_done {
                continue;
            }
            match ev.event.as_deref() {
                None | Some("message") => {}
                Some("error") => {
                    self.error
                        .get_or_insert_with(|| format!("error event: {}", truncate(&ev.data)));
                    continue;
                }
                // Named events other than errors (`ping`, proxies' heartbeats) carry no tokens:
                // reading them as chunks would turn a keep-alive into a parse failure.
                Some(_) => continue,
            }
            let chunk: StreamChunk = match serde_json::from_str(&ev.data) {
                Ok(c) => c,
                Err(e) => {
                    self.error.get_or_insert_with(|| {
                        format!("unparseable chunk ({e}): {}", truncate(&ev.data))
                    });
                    continue;
                }
            };
            if let Some(err) = &chunk.error {
                self.error.get_or_insert_with(|| {
                    format!("error in stream: {}", truncate(&err.to_string()))
                });
                continue;
            }
            if let Some(u) = chunk.usage {
                self.usage = Some(u);
            }
            let text = chunk.generated_text();
            if text.is_empty() {
                continue;
            }
            let k = wire::tokens::count(&text).max(1) as u64;
            match self.last_token {
                None => self.first_token = Some(now),
                Some(prev) => {
                    let gap = ms(now.saturating_duration_since(prev));
                    self.chunk_gaps_ms.push(gap);
                    let per = gap / k as f64;
                    self.itl_ms.extend(std::iter::repeat_n(per, k as usize));
                }
            }
            if self.first_content.is_none() && !chunk.content_text().is_empty() {
                self.first_content = Some(now);
            }
            self.last_token = Some(now);
            self.counted_tokens += k;
            self.text.push_str(&text);
        }
    }
}

fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(300).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Sends the request at once (the caller has waited for its intended time) and measures it.
pub async fn execute(client: &reqwest::Client, spec: RequestSpec) -> RequestRecord {
    execute_observed(client, spec).await.0
}

/// As [`execute`], also returning what was observed on the stream (its exact text, for tests
/// and for callers that want the generated output).
pub async fn execute_observed(
    client: &reqwest::Client,
    spec: RequestSpec,
) -> (RequestRecord, StreamObservation) {
    let actual = Instant::now();
    let mut rec = RequestRecord {
        id: spec.id,
        tenant: spec.tenant.clone(),
        group: spec.group.clone(),
        model: spec.model.clone(),
        outcome: Outcome::ServerError,
        status: 0,
        warmup: spec.warmup,
        intended_start_ms: ms(spec.intended.saturating_duration_since(spec.t0)),
        actual_start_ms: ms(actual.saturating_duration_since(spec.t0)),
        dispatched_ms: spec
            .dispatched
            .map(|d| ms(d.saturating_duration_since(spec.t0))),
        ttft_ms: None,
        ttfc_ms: None,
        tpot_ms: None,
        e2e_ms: None,
        itl_ms: Vec::new(),
        chunk_gaps_ms: Vec::new(),
        input_tokens: spec.planned_prompt_tokens,
        output_tokens: 0,
        output_tokens_estimated: true,
        error: None,
    };
    let deadline = spec.intended + spec.timeout;
    let mut obs = StreamObservation::default();
    let result =
        tokio::time::timeout_at(deadline, send_and_read(client, &spec, &mut rec, &mut obs)).await;
    let since = |t: Instant| ms(t.saturating_duration_since(spec.intended));
    let read_to_end = match result {
        Ok(Ok(())) => true,
        Ok(Err(())) => false, // outcome and error already set
        // `[DONE]` arrived before the deadline: the response finished then, even though the
        // server held the connection open without ending the body.
        Err(_) if obs.saw_done => true,
        Err(_) => {
            rec.outcome = Outcome::Timeout;
            rec.error = Some(format!(
                "no complete response within {:.0} s",
                spec.timeout.as_secs_f64()
            ));
            false
        }
    };
    if read_to_end {
        rec.outcome = if let Some(e) = obs.error.take() {
            rec.error = Some(e);
            Outcome::StreamError
        } else if !obs.saw_done {
            rec.error
                .get_or_insert_with(|| "stream ended without [DONE]".into());
            Outcome::Truncated
        } else if obs.first_token.is_none() {
            rec.error = Some("stream carried no generated token".into());
            Outcome::StreamError
        } else {
            Outcome::Ok
        };
    }
    // Token counts are recorded for failures too (they were delivered and billed).
    match obs.usage {
        Some(u) => {
            rec.output_tokens = u.completion_tokens;
            rec.input_tokens = u.prompt_tokens;
            rec.output_tokens_estimated = false;
        }
        None => rec.output_tokens = obs.counted_tokens,
    }
    if rec.outcome == Outcome::Ok {
        let end = obs.done_at.or(obs.last_token);
        rec.ttft_ms = obs.first_token.map(since);
        rec.ttfc_ms = obs.first_content.map(since);
        rec.e2e_ms = end.map(since);
        if let (Some(ttft), Some(e2e)) = (rec.ttft_ms, rec.e2e_ms)
            && rec.output_tokens > 1
        {
            rec.tpot_ms = Some((e2e - ttft) / (rec.output_tokens - 1) as f64);
        }
        rec.itl_ms = std::mem::take(&mut obs.itl_ms);
        rec.chunk_gaps_ms = std::mem::take(&mut obs.chunk_gaps_ms);
    }
    (rec, obs)
}

/// Sends and reads; `Err(())` means `rec` already holds the failure.
async fn send_and_read(
    client: &reqwest::Client,
    spec: &RequestSpec,
    rec: &mut RequestRecord,
    obs: &mut StreamObservation,
) -> Result<(), ()> {
    let mut req = client
        .post(&spec.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-request-id", format!("tb-{}", spec.id))
        .body(spec.body.clone());
    if let Some(k) = &spec.api_key {
        req = req.bearer_auth(k);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            rec.outcome = Outcome::ServerError;
            rec.error = Some(format!("request failed: {}", error_chain(&e)));
            return Err(());
        }
    };
    let status = resp.status();
    rec.status = status.as_u16();
    if !status.is_success() {
        let body = resp.bytes().await.unwrap_or_default();
        let (outcome, message) = classify_error(status.as_u16(), &body);
        rec.outcome = outcome;
        rec.error = Some(message);
        return Err(());
    }
    let mut parser = SseParser::new();
    let mut stream = resp.bytes_stream();
    while let Some(item) = stream.next().await {
        let now = Instant::now();
        match item {
            Ok(bytes) => obs.observe(&mut parser, &bytes, now),
            // After `[DONE]` the stream has said everything; a connection closed before the
            // body's last HTTP chunk loses nothing, so the response stays complete.
            Err(_) if obs.saw_done => break,
            Err(e) => {
                // The connection broke mid-stream: whatever arrived is kept; no [DONE] means
                // the request is recorded as truncated (an error event already seen still
                // makes it a stream error). Not an error from the server, so not `obs.error`.
                rec.error = Some(format!("connection error mid-stream: {}", error_chain(&e)));
                break;
            }
        }
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Maps a non-2xx response to an outcome. A budget refusal is recognised by its error type
/// (LiteLLM and our router say `budget_exceeded`), whatever the status.
pub fn classify_error(status: u16, body: &[u8]) -> (Outcome, String) {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (kind, message) = match &parsed {
        Some(b) => (b.error.kind.clone(), b.error.message.clone()),
        None => (String::new(), truncate(&String::from_utf8_lossy(body))),
    };
    let budget = kind.contains("budget")
        || (parsed.is_some() && message.to_lowercase().contains("budget exceeded"));
    let outcome = if budget {
        Outcome::BudgetExceeded
    } else if status == 429 {
        Outcome::RateLimited
    } else if (400..500).contains(&status) {
        Outcome::ClientError
    } else {
        Outcome::ServerError
    };
    (outcome, format!("HTTP {status}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(content: &str) -> String {
        format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}}}}]}}\n\n",
            serde_json::json!(content)
        )
    }

    #[tokio::test(start_paused = true)]
    async fn role_only_chunks_do_not_count_and_gaps_split_per_token() {
        let t0 = Instant::now();
        let mut p = SseParser::new();
        let mut o = StreamObservation::default();
        let role = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        o.observe(&mut p, role.as_bytes(), t0 + Duration::from_millis(50));
        assert!(o.first_token.is_none());
        o.observe(
            &mut p,
            chunk(" the").as_bytes(),
            t0 + Duration::from_millis(400),
        );
        // Two tokens in one chunk, 40 ms later: two ITLs of 20 ms, one chunk gap of 40 ms.
        o.observe(
            &mut p,
            chunk(" the cat").as_bytes(),
            t0 + Duration::from_millis(440),
        );
        o.observe(&mut p, b"data: [DONE]\n\n", t0 + Duration::from_millis(441));
        assert_eq!(o.first_token, Some(t0 + Duration::from_millis(400)));
        assert_eq!(o.itl_ms, vec![20.0, 20.0]);
        assert_eq!(o.chunk_gaps_ms, vec![40.0]);
        assert_eq!(o.counted_tokens, 3);
        assert!(o.saw_done);
    }

    #[test]
    fn errors_are_classified_by_status_and_type() {
        let budget = br#"{"error":{"message":"Budget has been exceeded","type":"budget_exceeded","param":null,"code":"400"}}"#;
        assert_eq!(classify_error(400, budget).0, Outcome::BudgetExceeded);
        // The router can be configured to refuse budgets with 429: the type still decides.
        assert_eq!(classify_error(429, budget).0, Outcome::BudgetExceeded);
        let limited = br#"{"error":{"message":"Rate limit reached: rpm","type":"rate_limit_error","param":null,"code":"429"}}"#;
        assert_eq!(classify_error(429, limited).0, Outcome::RateLimited);
        assert_eq!(classify_error(429, b"{}").0, Outcome::RateLimited);
        assert_eq!(classify_error(404, b"nope").0, Outcome::ClientError);
        assert_eq!(classify_error(503, b"").0, Outcome::ServerError);
    }
}
