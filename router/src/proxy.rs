//! The model-request pipeline: one exchange from client request to upstream and back.
//!
//! Order of work, cheapest refusal first, nothing moved before it is needed:
//! 1. `Content-Length` against `max_body_bytes` (413) — before the body is read;
//! 2. the bearer key → tenant (401);
//! 3. the body, read with the size cap (413), parsed and validated (400 naming the field);
//! 4. the virtual model → group (404), the tenant's access to it (403), and the group's context
//!    window (`model_info.max_input_tokens`: 400 `context_length_exceeded`), so a request no
//!    engine could serve takes no RPM entry, no tokens and no budget hold;
//! 5. admission: the worst-case cost is held against the budget, then RPM/TPM/parallel limits
//!    are taken (a limit refusal releases the hold);
//! 6. attempts: a deployment of the group (retries: another one), then each fallback group,
//!    each time with the tenant's adapter for that group, until one answers 2xx;
//! 7. the answer: a non-streamed body is forwarded whole; a stream is relayed event by event;
//! 8. settlement: the spend row is committed to the spend log *before the last byte is
//!    released* (the whole body of a non-streamed answer; the `[DONE]` event of a stream), then
//!    usage replaces the TPM estimate and the budget hold, then one audit line and the metrics.
//!    So a response the client saw complete always has its row on disk, even if the router is
//!    killed the next instant.
//!
//! Each exchange runs on its own task (tracked, so shutdown waits for it) and hands the response
//! head to the connection through a oneshot channel. If the client disconnects, the connection
//! drops its end; the exchange sees that, cancels the upstream request, and still settles and
//! audits what was generated — accounting never depends on the client staying.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, header};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use wire::openai::{
    ChatRequest, CompletionRequest, FieldError, Prompt, Usage, ValidChat, ValidCompletion,
};
use wire::sse::SseParser;

use crate::audit::{AuditRecord, Outcome};
use crate::balancer::Group;
use crate::config::Deployment;
use crate::error::ApiError;
use crate::headers;
use crate::ledger::{Hold, Money, ReserveError};
use crate::limiter::{Allowance, Grant, ParallelSlot, Refused, Ticket};
use crate::metrics::{Refusal, Who};
use crate::relay::Tally;
use crate::scope::Scope;
use crate::server::AppState;
use crate::store::SpendRow;
use crate::tenant::Principal;
use crate::upstream::{self, UpstreamError};

/// The two OpenAI generation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Self::Chat => "/chat/completions",
            Self::Completions => "/completions",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Completions => "completions",
        }
    }
}

/// Events buffered between the relay and the client connection: enough to ride out a
/// scheduling hiccup, small enough that a slow client slows the upstream read instead of
/// growing memory.
const STREAM_QUEUE: usize = 64;

/// Entry point for `POST /v1/chat/completions` and `POST /v1/completions`.
pub(crate) async fn handle(state: Arc<AppState>, endpoint: Endpoint, req: Request) -> Response {
    let arrived = Instant::now();
    let (tx, rx) = oneshot::channel();
    let st = state.clone();
    state.tasks.spawn(async move {
        Exchange::new(st, endpoint, arrived).run(req, tx).await;
    });
    match rx.await {
        Ok(r) => r,
        Err(_) => {
            ApiError::Internal("the request task ended without a response".into()).into_response()
        }
    }
}

/// A request that passed every check up to admission.
struct Prepared {
    principal: Principal,
    /// What admission checks: the tenant, and the key when it has limits of its own.
    scopes: Vec<Scope>,
    group: usize,
    /// The client's JSON object; `model` is overwritten per attempt.
    body: Map<String, Value>,
    stream: bool,
    /// The router added `stream_options.include_usage` and must strip the usage chunk.
    strip_usage: bool,
    prompt_estimate: u64,
    completion_estimate: u64,
    request_id: Option<HeaderValue>,
}

/// Limits and budget taken at admission (none for the master key).
#[derive(Default)]
struct Admission {
    hold: Option<Hold>,
    grant: Option<Grant>,
}

/// The answer of the attempt that succeeded.
enum Answer {
    Whole {
        content_type: HeaderValue,
        body: Bytes,
    },
    Stream(reqwest::Response),
}

/// Which deployment answered, and when (the head for streams, the whole body otherwise).
struct Served {
    deployment: Arc<Deployment>,
    answered: Instant,
}

/// What a finished request is billed.
#[derive(Debug, Clone, Copy)]
struct Bill {
    prompt: u64,
    completion: u64,
    estimated: bool,
    cost: Money,
}

impl Bill {
    fn new((prompt, completion, estimated): (u64, u64, bool), dep: &Deployment) -> Self {
        let cost = Money::for_tokens(
            prompt,
            completion,
            dep.input_cost_per_token,
            dep.output_cost_per_token,
        );
        Self {
            prompt,
            completion,
            estimated,
            cost,
        }
    }
}

struct Exchange {
    state: Arc<AppState>,
    endpoint: Endpoint,
    arrived: Instant,
    rec: AuditRecord,
    who: Who,
    model: Option<usize>,
    allowance: Option<Allowance>,
    /// Response headers gathered along the way (deployment, request id).
    extra: HeaderMap,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Exchange {
    fn new(state: Arc<AppState>, endpoint: Endpoint, arrived: Instant) -> Self {
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            state,
            endpoint,
            arrived,
            rec: AuditRecord {
                ts_ms,
                endpoint: endpoint.name(),
                ..Default::default()
            },
            who: Who::Anonymous,
            model: None,
            allowance: None,
            extra: HeaderMap::new(),
        }
    }

    async fn run(mut self, req: Request, mut reply: oneshot::Sender<Response>) {
        let mut prepared = match self.prepare(req).await {
            Ok(p) => p,
            Err(e) => return self.refuse(e, None, reply).await,
        };
        let admission = match self.admit(&prepared).await {
            Ok(a) => a,
            Err(e) => {
                return self.refuse(e, Some(prepared.scopes.clone()), reply).await;
            }
        };
        let (served, answer) = match self.dispatch(&mut prepared, &mut reply).await {
            Ok(s) => s,
            Err(e) => {
                self.release(&prepared, admission).await;
                return self.refuse(e, Some(prepared.scopes.clone()), reply).await;
            }
        };
        self.rec.stream = prepared.stream;
        match answer {
            Answer::Whole { content_type, body } => {
                self.respond_whole(prepared, admission, served, content_type, body, reply)
                    .await;
            }
            Answer::Stream(resp) => {
                self.relay(prepared, admission, served, resp, reply).await;
            }
        }
    }

    // ---- 1-4: checks -------------------------------------------------------------------

    async fn prepare(&mut self, req: Request) -> Result<Prepared, ApiError> {
        let limit = self.state.settings.max_body_bytes;
        let (parts, body) = req.into_parts();
        let request_id = parts.headers.get(headers::REQUEST_ID).cloned();
        if let Some(id) = &request_id {
            self.rec.request_id = id.to_str().ok().map(str::to_string);
            self.extra.insert(headers::REQUEST_ID, id.clone());
        }
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::BodyTooLarge { limit });
        }
        let principal = self.authenticate(&parts.headers).await?;
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
            if is_length_limit(&e) {
                ApiError::BodyTooLarge { limit }
            } else {
                ApiError::InvalidRequest(FieldError {
                    param: None,
                    message: format!("Could not read the request body: {e}"),
                })
            }
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::InvalidRequest(FieldError {
                param: None,
                message: format!("Request body is not valid JSON: {e}"),
            })
        })?;
        if !value.is_object() {
            return Err(ApiError::InvalidRequest(FieldError {
                param: None,
                message: "Request body must be a JSON object.".into(),
            }));
        }
        let valid = match self.endpoint {
            Endpoint::Chat => typed::<ChatRequest>(&value)
                .and_then(ChatRequest::validate)
                .map(Valid::Chat),
            Endpoint::Completions => typed::<CompletionRequest>(&value)
                .and_then(CompletionRequest::validate)
                .map(Valid::Completion),
        }
        .map_err(ApiError::InvalidRequest)?;
        let (model, stream, client_usage) = match &valid {
            Valid::Chat(c) => (c.model.clone(), c.stream, c.include_usage),
            Valid::Completion(c) => (c.model.clone(), c.stream, c.include_usage),
        };
        self.rec.model = Some(model.clone());
        let group =
            self.state
                .balancer
                .group_index(&model)
                .ok_or_else(|| ApiError::UnknownModel {
                    model: model.clone(),
                })?;
        self.model = Some(group);
        if !principal.may_use(&model) {
            return Err(ApiError::ModelNotAllowed { model });
        }
        let est = estimate(&valid, self.state.settings.default_max_tokens_estimate);
        if let Some(limit) = self
            .state
            .balancer
            .group(group)
            .and_then(|g| g.context_window)
        {
            check_context(limit, &est, self.endpoint)?;
        }
        let (prompt_estimate, completion_estimate) = (est.prompt, est.completion);
        let Value::Object(mut body) = value else {
            return Err(ApiError::Internal("request body changed shape".into()));
        };
        let strip_usage = stream && !client_usage;
        if strip_usage {
            let opts = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !opts.is_object() {
                *opts = Value::Object(Map::new());
            }
            if let Value::Object(o) = opts {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        let scopes = principal.key().map(|k| k.scopes()).unwrap_or_default();
        Ok(Prepared {
            principal,
            scopes,
            group,
            body,
            stream,
            strip_usage,
            prompt_estimate,
            completion_estimate,
            request_id,
        })
    }

    async fn authenticate(&mut self, h: &HeaderMap) -> Result<Principal, ApiError> {
        let (hash, principal) = self.state.authenticate(h).await?;
        self.rec.key_hash = Some(hash.to_hex());
        match &principal {
            Principal::Key(k) => {
                self.rec.tenant_id = Some(k.tenant.id().to_string());
                self.who = Who::Tenant(k.tenant.index);
            }
            Principal::Master => {
                self.rec.tenant_id = Some("_master".into());
                self.who = Who::Master;
            }
        }
        Ok(principal)
    }

    // ---- 5: admission ------------------------------------------------------------------

    async fn admit(&mut self, p: &Prepared) -> Result<Admission, ApiError> {
        if p.principal.tenant().is_none() {
            return Ok(Admission::default());
        }
        let Some(group) = self.state.balancer.group(p.group) else {
            return Err(ApiError::Internal("group index out of range".into()));
        };
        let worst = Money::for_tokens(
            p.prompt_estimate,
            p.completion_estimate,
            group.max_input_price,
            group.max_output_price,
        );
        let hold = match self.state.ledger.reserve(&p.scopes, worst).await {
            Ok(h) => h,
            Err(ReserveError::Exceeded(detail)) => {
                self.state.metrics.refused(self.who, Refusal::Budget);
                return Err(ApiError::BudgetExceeded {
                    detail: Box::new(detail),
                    status: self.state.settings.budget_exceeded_status,
                });
            }
            Err(ReserveError::Backend(e)) => {
                tracing::error!(error = %e, "budget backend unavailable");
                return Err(ApiError::StateUnavailable(e));
            }
        };
        let tokens = p.prompt_estimate + p.completion_estimate;
        match self.state.limiter.admit(&p.scopes, tokens).await {
            Ok(grant) => {
                self.allowance = Some(grant.allowance);
                Ok(Admission {
                    hold: Some(hold),
                    grant: Some(grant),
                })
            }
            Err(Refused::Limit(rejection)) => {
                self.state.ledger.release(&p.scopes, hold).await;
                self.state
                    .metrics
                    .refused(self.who, Refusal::Limit(rejection.kind));
                self.allowance = Some(rejection.allowance);
                Err(ApiError::RateLimited(Box::new(rejection)))
            }
            Err(Refused::Backend(e)) => {
                self.state.ledger.release(&p.scopes, hold).await;
                tracing::error!(error = %e, "limits backend unavailable");
                Err(ApiError::StateUnavailable(e))
            }
        }
    }

    /// Gives back what admission took when nothing was served.
    async fn release(&self, p: &Prepared, a: Admission) {
        if let Some(h) = a.hold {
            self.state.ledger.release(&p.scopes, h).await;
        }
        if let Some(g) = a.grant {
            self.state.limiter.reconcile(&p.scopes, g.ticket, 0).await;
        }
    }

    // ---- 6: attempts -------------------------------------------------------------------

    async fn dispatch(
        &mut self,
        p: &mut Prepared,
        reply: &mut oneshot::Sender<Response>,
    ) -> Result<(Served, Answer), ApiError> {
        let state = self.state.clone();
        let Some(first) = state.balancer.group(p.group) else {
            return Err(ApiError::Internal("group index out of range".into()));
        };
        let chain: Vec<usize> = std::iter::once(p.group)
            .chain(first.fallbacks.iter().copied().filter(|g| {
                state
                    .balancer
                    .group(*g)
                    .is_some_and(|gr| p.principal.may_use(&gr.name))
            }))
            .collect();
        let mut last: Option<ApiError> = None;
        let mut cooling: Option<Duration> = None;
        let mut retries = 0u32;
        for (hop, &gi) in chain.iter().enumerate() {
            let Some(group) = state.balancer.group(gi) else {
                continue;
            };
            let mut tried = Vec::new();
            for _ in 0..=state.routing.num_retries {
                let di = match state.balancer.pick(gi, &tried) {
                    Ok(d) => d,
                    Err(wait) => {
                        cooling = Some(cooling.map_or(wait, |c| c.min(wait)));
                        break;
                    }
                };
                if !tried.is_empty() {
                    retries += 1;
                }
                tried.push(di);
                let Some(dep) = group.deployments.get(di).cloned() else {
                    continue;
                };
                self.note_attempt(group, &dep, p, hop as u32, retries);
                let body = Bytes::from(serde_json::to_vec(&p.body).unwrap_or_default());
                let attempt = self.attempt(&dep, body, p.stream, p.request_id.as_ref());
                let result = tokio::select! {
                    r = attempt => r,
                    () = reply.closed() => return Err(ApiError::ClientClosed),
                };
                match result {
                    Ok(answer) => {
                        let served = Served {
                            deployment: dep,
                            answered: Instant::now(),
                        };
                        return Ok((served, answer));
                    }
                    Err(e) if e.retriable() => {
                        state.balancer.failed(gi, di);
                        tracing::debug!(deployment = %dep.id, error = %e, "upstream attempt failed");
                        last = Some(e.into_api(&dep.id));
                    }
                    Err(e) => return Err(e.into_api(&dep.id)),
                }
            }
        }
        Err(last.unwrap_or_else(|| ApiError::NoDeployment {
            model: first.name.clone(),
            retry_after: cooling.unwrap_or(Duration::from_secs(1)),
        }))
    }

    /// Records which deployment this attempt goes to and sets its `model`.
    fn note_attempt(
        &mut self,
        group: &Group,
        dep: &Deployment,
        p: &mut Prepared,
        hop: u32,
        retries: u32,
    ) {
        let adapter = p.principal.adapter(&group.name).map(str::to_string);
        let upstream_model = adapter
            .clone()
            .unwrap_or_else(|| dep.upstream_model.clone());
        p.body
            .insert("model".into(), Value::String(upstream_model.clone()));
        self.rec.attempts += 1;
        self.rec.fallbacks = hop;
        if self.rec.overhead_ms.is_none() {
            self.rec.overhead_ms = Some(ms(self.arrived.elapsed()));
        }
        self.rec.model_group = Some(group.name.clone());
        self.rec.deployment = Some(dep.id.clone());
        self.rec.api_base = Some(dep.api_base.to_string());
        self.rec.adapter = adapter;
        self.rec.upstream_model = Some(upstream_model);
        let h = &mut self.extra;
        headers::put_str(h, headers::MODEL_ID, &dep.id);
        headers::put_str(h, headers::MODEL_API_BASE, dep.api_base.as_str());
        headers::put_str(h, headers::MODEL_GROUP, &group.name);
        match &self.rec.adapter {
            Some(a) => headers::put_str(h, headers::ADAPTER, a),
            None => {
                h.remove(headers::ADAPTER);
            }
        }
        headers::put_str(h, headers::ATTEMPTED_FALLBACKS, &hop.to_string());
        headers::put_str(h, headers::ATTEMPTED_RETRIES, &retries.to_string());
    }

    /// One upstream attempt: the head for a stream, the whole body otherwise (so that a body
    /// cut short can still fall back: nothing has reached the client yet).
    async fn attempt(
        &self,
        dep: &Deployment,
        body: Bytes,
        stream: bool,
        request_id: Option<&HeaderValue>,
    ) -> Result<Answer, UpstreamError> {
        let deadline = Instant::now() + dep.timeout;
        let resp = self
            .state
            .upstream
            .send(dep, self.endpoint.path(), body, request_id)
            .await?;
        if stream {
            return Ok(Answer::Stream(resp));
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/json"));
        let body =
            upstream::read_capped(resp, upstream::RESPONSE_LIMIT, deadline, dep.timeout).await?;
        Ok(Answer::Whole { content_type, body })
    }

    // ---- 7-8: answers and settlement ---------------------------------------------------

    fn success_headers(&self, h: &mut HeaderMap) {
        for (k, v) in &self.extra {
            h.insert(k.clone(), v.clone());
        }
        if let Some(a) = &self.allowance {
            headers::put_allowance(h, a);
        }
        if let Some(o) = self.rec.overhead_ms {
            headers::put_str(h, headers::OVERHEAD_MS, &format!("{o:.3}"));
        }
    }

    async fn respond_whole(
        mut self,
        p: Prepared,
        admission: Admission,
        served: Served,
        content_type: HeaderValue,
        body: Bytes,
        reply: oneshot::Sender<Response>,
    ) {
        let dep = served.deployment;
        let bill = Bill::new(whole_usage(&body, p.prompt_estimate), &dep);
        let mut resp = Response::new(Body::from(body));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, content_type);
        self.success_headers(h);
        headers::put_str(h, headers::RESPONSE_COST, &bill.cost.to_string());
        if let Some(o) = self.rec.overhead_ms.as_mut() {
            *o += ms(served.answered.elapsed());
        }
        let mut outcome = if reply.is_closed() {
            Outcome::ClientAborted
        } else {
            Outcome::Ok
        };
        let Admission { hold, grant } = admission;
        let reserved = grant.as_ref().map(|g| g.ticket);
        // The row is committed before the body is handed over (see the module docs).
        self.account(&p, hold, reserved, &dep, bill, outcome).await;
        if reply.send(resp).is_err() {
            outcome = Outcome::ClientAborted;
        }
        let elapsed = ms(self.arrived.elapsed());
        self.rec.ttft_ms = Some(elapsed);
        self.rec.e2e_ms = elapsed;
        self.rec.outcome = outcome;
        self.record().await;
        // The parallel slot (in `grant`) is held until the response was handed over.
        drop(grant);
    }

    async fn relay(
        mut self,
        p: Prepared,
        admission: Admission,
        served: Served,
        resp: reqwest::Response,
        reply: oneshot::Sender<Response>,
    ) {
        let dep = served.deployment;
        let Admission { hold, grant } = admission;
        let (reserved, slot) = match grant {
            Some(g) => (Some(g.ticket), g.slot),
            None => (None, None),
        };
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_QUEUE);
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("text/event-stream"));
        let mut out = Response::new(Body::from_stream(client_stream(rx, slot)));
        let h = out.headers_mut();
        h.insert(header::CONTENT_TYPE, content_type);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        self.success_headers(h);
        let mut tally = Tally::default();
        let mut outcome = Outcome::Ok;
        // `[DONE]` is the last byte of a complete stream: it is held back until the spend row
        // is committed.
        let mut done_event: Option<Bytes> = None;
        if reply.send(out).is_err() {
            outcome = Outcome::ClientAborted;
        } else {
            let mut upstream = resp.bytes_stream();
            let mut parser = SseParser::new();
            'read: loop {
                let next = tokio::select! {
                    biased;
                    () = tx.closed() => {
                        outcome = Outcome::ClientAborted;
                        break 'read;
                    }
                    n = tokio::time::timeout(dep.timeout, upstream.next()) => n,
                };
                let bytes = match next {
                    Ok(Some(Ok(b))) => b,
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        outcome = Outcome::Truncated;
                        let msg = upstream::describe(&e);
                        let _ = tx.send(Err(std::io::Error::other(msg))).await;
                        break;
                    }
                    Err(_) => {
                        outcome = Outcome::Truncated;
                        let _ = tx
                            .send(Err(std::io::Error::other("upstream stream stalled")))
                            .await;
                        break;
                    }
                };
                let now = Instant::now();
                for ev in parser.push(&bytes) {
                    let forward = tally.inspect(&ev, p.strip_usage, now);
                    if ev.is_done() {
                        done_event = Some(ev.raw);
                        continue;
                    }
                    if forward && tx.send(Ok(ev.raw)).await.is_err() {
                        outcome = Outcome::ClientAborted;
                        break 'read;
                    }
                }
            }
            // Leaving the loop drops the upstream body; on an abort that closes the upstream
            // connection, which is how vLLM learns to stop generating.
        }
        if outcome == Outcome::Ok {
            if tally.error_event {
                outcome = Outcome::StreamError;
            } else if !tally.saw_done {
                outcome = Outcome::Truncated;
            }
        }
        self.rec.ttft_ms = tally.first_token.map(|t| ms(t - self.arrived));
        let bill = Bill::new(tally.billed(p.prompt_estimate), &dep);
        self.account(&p, hold, reserved, &dep, bill, outcome).await;
        if let Some(done) = done_event
            && outcome != Outcome::ClientAborted
            && tx.send(Ok(done)).await.is_err()
        {
            outcome = Outcome::ClientAborted;
        }
        drop(tx);
        self.rec.e2e_ms = ms(self.arrived.elapsed());
        self.rec.outcome = outcome;
        self.record().await;
    }

    /// Commits the spend row (waiting for the database), then replaces the admission
    /// estimates with what was billed. The caller releases the last byte and then records.
    async fn account(
        &mut self,
        p: &Prepared,
        hold: Option<Hold>,
        reserved_tokens: Option<Ticket>,
        dep: &Deployment,
        bill: Bill,
        outcome: Outcome,
    ) {
        let (tenant_id, key_alias) = match &p.principal {
            Principal::Key(k) => (k.tenant.id().to_string(), k.record.key_alias.clone()),
            Principal::Master => ("_master".to_string(), None),
        };
        let row = SpendRow {
            request_id: format!("{:032x}", rand::random::<u128>()),
            ts_ms: self.rec.ts_ms,
            tenant_id,
            key_hash: self.rec.key_hash.clone().unwrap_or_default(),
            key_alias,
            model: self.rec.model.clone().unwrap_or_default(),
            deployment: dep.id.clone(),
            adapter: self.rec.adapter.clone(),
            prompt_tokens: bill.prompt,
            completion_tokens: bill.completion,
            cost: bill.cost,
            status: outcome.as_str().to_string(),
        };
        if !self.state.spend.record(row).await {
            tracing::error!("a spend row was not committed; the audit log still has the request");
        }
        if let Some(reserved) = reserved_tokens {
            self.state
                .limiter
                .reconcile(&p.scopes, reserved, bill.prompt + bill.completion)
                .await;
        }
        if let Some(hold) = hold {
            self.state.ledger.settle(&p.scopes, hold, bill.cost).await;
        }
        self.rec.prompt_tokens = bill.prompt;
        self.rec.completion_tokens = bill.completion;
        self.rec.tokens_estimated = bill.estimated;
        self.rec.cost = bill.cost.as_f64();
        self.rec.status = 200;
        self.rec.outcome = outcome;
    }

    /// Answers with an error (the single place errors become responses is
    /// [`ApiError::into_response`]; this adds the tenant's headers) and records it.
    async fn refuse(
        mut self,
        e: ApiError,
        scopes: Option<Vec<Scope>>,
        reply: oneshot::Sender<Response>,
    ) {
        if self.allowance.is_none()
            && let Some(s) = scopes.filter(|s| !s.is_empty())
        {
            self.allowance = Some(self.state.limiter.allowance(&s).await);
        }
        self.rec.status = e.status().as_u16();
        self.rec.outcome = e.outcome();
        self.rec.error_type = Some(e.kind());
        let mut resp = e.into_response();
        let h = resp.headers_mut();
        for (k, v) in &self.extra {
            h.insert(k.clone(), v.clone());
        }
        if let Some(a) = &self.allowance {
            let retry = h.get(header::RETRY_AFTER).cloned();
            headers::put_allowance(h, a);
            if let Some(r) = retry {
                h.insert(header::RETRY_AFTER, r);
            }
        }
        let _ = reply.send(resp);
        self.rec.e2e_ms = ms(self.arrived.elapsed());
        self.record().await;
    }

    async fn record(self) {
        self.state.metrics.observe(self.who, self.model, &self.rec);
        self.state.audit.write(&self.rec).await;
    }
}

/// The body stream handed to the client connection. It owns the parallel-request slot, so the
/// slot is released exactly when the connection has taken the last byte (or dropped the body).
fn client_stream(
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    slot: Option<ParallelSlot>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        rx.recv().await.map(|item| (item, (rx, slot)))
    })
}

/// A validated request of either endpoint.
enum Valid {
    Chat(ValidChat),
    Completion(ValidCompletion),
}

/// Tokens a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Estimate {
    /// Prompt tokens of the whole request (every prompt of a batch), for TPM and budget.
    prompt: u64,
    /// Completion tokens of the whole request: `max_tokens` (or the default) × `n`.
    completion: u64,
    /// The longest single prompt, for the context-window check.
    longest_prompt: u64,
    /// The client's `max_tokens` for one sequence, when it gave one.
    max_tokens: Option<u64>,
}

/// What a request may use, for admission: prompt counted with the shared cl100k counter (chat
/// template overhead included), completion from `max_tokens` (or the configured default for
/// chat) times `n`.
fn estimate(v: &Valid, default_max_tokens: u32) -> Estimate {
    match v {
        Valid::Chat(c) => {
            let texts: Vec<String> = c.messages.iter().map(|m| m.text()).collect();
            let prompt = wire::tokens::count_chat(texts.iter().map(String::as_str)) as u64;
            let completion = c.max_tokens.unwrap_or(default_max_tokens);
            Estimate {
                prompt,
                completion: u64::from(completion) * u64::from(c.n),
                longest_prompt: prompt,
                max_tokens: c.max_tokens.map(u64::from),
            }
        }
        Valid::Completion(c) => {
            let each: Vec<usize> = match &c.prompt {
                Prompt::Text(t) => vec![wire::tokens::count(t)],
                Prompt::Texts(ts) => ts.iter().map(|t| wire::tokens::count(t)).collect(),
                Prompt::Tokens(t) => vec![t.len()],
                Prompt::TokenBatches(b) => b.iter().map(Vec::len).collect(),
            };
            Estimate {
                prompt: each.iter().sum::<usize>() as u64,
                completion: u64::from(c.max_tokens) * u64::from(c.n),
                longest_prompt: each.iter().copied().max().unwrap_or(0) as u64,
                max_tokens: Some(u64::from(c.max_tokens)),
            }
        }
    }
}

/// vLLM's context check, made by the router before admission: a prompt that fills the window,
/// or a prompt plus the requested `max_tokens` over it, is refused (a request without
/// `max_tokens` gets what is left of the window, as vLLM does). The prompt is the router's
/// cl100k estimate, not the engine's tokenizer: near the edge the two can disagree, and
/// whichever refuses first answers.
fn check_context(limit: u64, e: &Estimate, endpoint: Endpoint) -> Result<(), ApiError> {
    let over = e.longest_prompt >= limit
        || e.max_tokens
            .is_some_and(|m| e.longest_prompt.saturating_add(m) > limit);
    if !over {
        return Ok(());
    }
    Err(ApiError::ContextLengthExceeded {
        limit,
        prompt: e.longest_prompt,
        completion: e.max_tokens,
        part: match endpoint {
            Endpoint::Chat => "messages",
            Endpoint::Completions => "prompt",
        },
    })
}

/// Reads the typed request out of the JSON without copying it (the body is kept for
/// forwarding), naming the field whose type is wrong as `wire::openai::parse_value` does.
fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != "." && !path.is_empty()).then_some(path);
        let inner = e.into_inner();
        FieldError {
            message: match &param {
                Some(p) => format!("Invalid value for '{p}': {inner}"),
                None => format!("Invalid request body: {inner}"),
            },
            param,
        }
    })
}

/// Usage of a non-streamed body, or an estimate from its text.
fn whole_usage(body: &[u8], prompt_estimate: u64) -> (u64, u64, bool) {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(default)]
        usage: Option<Usage>,
        #[serde(default)]
        choices: Vec<Value>,
    }
    let Ok(peek) = serde_json::from_slice::<Peek>(body) else {
        return (prompt_estimate, 0, true);
    };
    if let Some(u) = peek.usage {
        return (u.prompt_tokens, u.completion_tokens, false);
    }
    let completion: usize = peek
        .choices
        .iter()
        .filter_map(|c| {
            c.pointer("/message/content")
                .or_else(|| c.get("text"))
                .and_then(Value::as_str)
        })
        .map(wire::tokens::count)
        .sum();
    (prompt_estimate, completion as u64, true)
}

/// Whether a body-read error is axum's length limit.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    e.to_string().contains("length limit")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(longest_prompt: u64, max_tokens: Option<u64>) -> Estimate {
        Estimate {
            prompt: longest_prompt,
            completion: max_tokens.unwrap_or(256),
            longest_prompt,
            max_tokens,
        }
    }

    #[test]
    fn context_check_follows_vllm() {
        let fits = |e: Estimate| check_context(100, &e, Endpoint::Chat).is_ok();
        assert!(fits(est(50, Some(50))), "exactly the window");
        assert!(!fits(est(50, Some(51))));
        assert!(fits(est(99, None)), "no max_tokens: the rest of the window");
        assert!(!fits(est(100, None)), "a prompt that fills the window");
        assert!(!fits(est(100, Some(1))));
        assert!(
            !fits(est(1, Some(u64::MAX))),
            "no overflow on huge max_tokens"
        );
    }
}
