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
use wire::openai::{ChunkView, ErrorBody, Usage};
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
    /// Per-token inter-token latencies; filled in by [`StreamObservation::finish`].
    pub itl_ms: Vec<f64>,
    pub chunk_gaps_ms: Vec<f64>,
    /// Generated tokens as counted on the client; filled in by [`StreamObservation::finish`].
    pub counted_tokens: u64,
    pub usage: Option<Usage>,
    pub saw_done: bool,
    /// `data:` events seen (`[DONE]` included).
    pub data_events: u64,
    pub error: Option<String>,
    /// Every generated character on every channel, in order: the exact text the stream carried.
    pub text: String,
    /// Each chunk that carried text: its gap to the previous such chunk (none for the first)
    /// and where its text lies in `text`.
    chunks: Vec<(Option<f64>, usize, usize)>,
}

impl StreamObservation {
    /// Feeds the events completed by one read that arrived at `now`.
    pub fn observe(&mut self, parser: &mut SseParser, bytes: &[u8], now: Instant) {
        for ev in parser.push(bytes) {
            if !ev.has_data {
                continue; // comments, keep-alives, id/retry-only blocks
            }
            self.data_events += 1;
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
            let chunk: ChunkView<'_> = match serde_json::from_str(&ev.data) {
                Ok(c) => c,
                Err(e) => {
                    self.error.get_or_insert_with(|| {
                        format!("unparseable chunk ({e}): {}", truncate(&ev.data))
                    });
                    continue;
                }
            };
            if let Some(err) = chunk.error_text() {
                self.error
                    .get_or_insert_with(|| format!("error in stream: {}", truncate(&err)));
                continue;
            }
            if let Some(u) = chunk.usage {
                self.usage = Some(u);
            }
            let start = self.text.len();
            chunk.generated_text(&mut self.text);
            if self.text.len() == start {
                continue;
            }
            let gap = self
                .last_token
                .map(|prev| ms(now.saturating_duration_since(prev)));
            match gap {
                None => self.first_token = Some(now),
                Some(g) => self.chunk_gaps_ms.push(g),
            }
            if self.first_content.is_none() && chunk.has_content() {
                self.first_content = Some(now);
            }
            self.last_token = Some(now);
            self.chunks.push((gap, start, self.text.len()));
        }
    }

    /// Counts the tokens of each chunk and splits every chunk gap into per-token ITLs (a chunk
    /// of k tokens after a gap g gives k ITLs of g/k). When the server's usage says there were
    /// exactly as many tokens as text chunks, every chunk carried one token (each carries at
    /// least one) and the tokenizer is not needed; its counts would only be an estimate of the
    /// server's. Otherwise each chunk is counted with the tokenizer.
    pub fn finish(&mut self) {
        let one_each = self
            .usage
            .as_ref()
            .is_some_and(|u| u.completion_tokens == self.chunks.len() as u64);
        self.itl_ms.clear();
        self.counted_tokens = 0;
        for &(gap, start, end) in &self.chunks {
            let k = if one_each {
                1
            } else {
                wire::tokens::count(&self.text[start..end]).max(1) as u64
            };
            if let Some(g) = gap {
                let per = g / k as f64;
                self.itl_ms.extend(std::iter::repeat_n(per, k as usize));
            }
            self.counted_tokens += k;
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

/// The HTTP clients a run sends with: the lean [`crate::http1`] client for plain `http://`
/// targets, reqwest for everything else (TLS, and any target when the environment configures
/// a proxy, which reqwest honours). Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    reqwest: reqwest::Client,
    plain: Option<crate::http1::Client>,
}

impl HttpClient {
    /// Both clients, with the plain one disabled when a proxy variable is set.
    pub fn new() -> Result<Self, String> {
        let proxied = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
        Self::build(!proxied)
    }

    /// Only reqwest, whatever the URL (to compare the two paths).
    pub fn reqwest_only() -> Result<Self, String> {
        Self::build(false)
    }

    fn build(plain: bool) -> Result<Self, String> {
        let reqwest = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            reqwest,
            plain: plain.then(crate::http1::Client::new),
        })
    }
}

/// Sends the request at once (the caller has waited for its intended time) and measures it.
pub async fn execute(client: &HttpClient, spec: RequestSpec) -> RequestRecord {
    execute_observed(client, spec).await.0
}

/// As [`execute`], also returning what was observed on the stream (its exact text, for tests
/// and for callers that want the generated output).
pub async fn execute_observed(
    client: &HttpClient,
    mut spec: RequestSpec,
) -> (RequestRecord, StreamObservation) {
    let actual = Instant::now();
    // The record takes the spec's names (the send needs only its URL, key and body).
    let mut rec = RequestRecord {
        id: spec.id,
        tenant: std::mem::take(&mut spec.tenant),
        group: std::mem::take(&mut spec.group),
        model: std::mem::take(&mut spec.model),
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
        } else if obs.data_events == 0 && rec.error.is_none() {
            // A complete 200 body with no event in it: the server did not stream at all (a
            // plain JSON completion, an HTML page), which is not a cut-off stream.
            rec.error =
                Some("the 200 response carried no server-sent events (not a stream)".into());
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
    obs.finish();
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
    client: &HttpClient,
    spec: &RequestSpec,
    rec: &mut RequestRecord,
    obs: &mut StreamObservation,
) -> Result<(), ()> {
    match &client.plain {
        Some(plain) if spec.url.starts_with("http://") => {
            send_and_read_plain(plain, spec, rec, obs).await
        }
        // Boxed: reqwest's futures are large, and every request task would otherwise carry
        // (and copy when spawned) room for them even on the plain path.
        _ => Box::pin(send_and_read_reqwest(&client.reqwest, spec, rec, obs)).await,
    }
}

/// [`send_and_read`] over the lean HTTP/1.1 client.
async fn send_and_read_plain(
    client: &crate::http1::Client,
    spec: &RequestSpec,
    rec: &mut RequestRecord,
    obs: &mut StreamObservation,
) -> Result<(), ()> {
    let req = crate::http1::Request {
        url: &spec.url,
        body: &spec.body,
        bearer: spec.api_key.as_deref(),
        request_id: spec.id,
    };
    let mut resp = match client.post(&req).await {
        Ok(r) => r,
        Err(e) => {
            rec.outcome = Outcome::ServerError;
            rec.error = Some(format!("request failed: {e}"));
            return Err(());
        }
    };
    rec.status = resp.status;
    if !(200..300).contains(&resp.status) {
        let body = resp
            .read_to_limit(ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        let (outcome, message) = classify_error(resp.status, &body);
        rec.outcome = outcome;
        rec.error = Some(message);
        return Err(());
    }
    let mut parser = SseParser::new();
    loop {
        match resp.next_bytes().await {
            Ok(Some((bytes, at))) => obs.observe(&mut parser, &bytes, at),
            Ok(None) => break,
            // After `[DONE]` the stream has said everything (as in the reqwest path).
            Err(_) if obs.saw_done => break,
            Err(e) => {
                rec.error = Some(format!("connection error mid-stream: {e}"));
                break;
            }
        }
    }
    Ok(())
}

/// How much of an error response's body is kept to classify it.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// [`send_and_read`] over reqwest.
async fn send_and_read_reqwest(
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
        o.finish();
        assert_eq!(o.first_token, Some(t0 + Duration::from_millis(400)));
        assert_eq!(o.itl_ms, vec![20.0, 20.0]);
        assert_eq!(o.chunk_gaps_ms, vec![40.0]);
        assert_eq!(o.counted_tokens, 3);
        assert!(o.saw_done);
    }

    #[tokio::test(start_paused = true)]
    async fn usage_equal_to_the_chunk_count_means_one_token_per_chunk() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let usage = |n: u64| {
            format!(
                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
                n + 5
            )
        };
        // " the cat" is two tokens to the client's tokenizer, but the server says the three
        // chunks were three tokens: its count wins, one ITL per chunk gap.
        for (reported, itls) in [(3_u64, vec![10.0, 30.0]), (4, vec![10.0, 15.0, 15.0])] {
            let mut p = SseParser::new();
            let mut o = StreamObservation::default();
            o.observe(&mut p, chunk("a").as_bytes(), at(100));
            o.observe(&mut p, chunk(" dog").as_bytes(), at(110));
            o.observe(&mut p, chunk(" the cat").as_bytes(), at(140));
            o.observe(&mut p, usage(reported).as_bytes(), at(141));
            o.finish();
            assert_eq!(o.itl_ms, itls, "usage {reported}");
            assert_eq!(o.chunk_gaps_ms, vec![10.0, 30.0]);
        }
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
