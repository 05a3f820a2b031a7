//! The HTTP face of the simulator: vLLM's OpenAI-compatible routes on axum.
//!
//! Handlers validate in vLLM's order (body types and values → 400 naming the field; unknown
//! model → 404; prompt + `max_tokens` over `max_model_len` → 400 with vLLM's context-length
//! message), then hand one engine sequence per choice to the driver and turn its tokens into
//! vLLM's bodies: for a stream, a role chunk, one chunk per token carrying the text that the
//! token completed ([`crate::detokenizer`]; possibly empty mid-character), the last one carrying
//! `finish_reason`, as vLLM sends it), the usage chunk with `choices: []` when
//! `stream_options.include_usage` is set, and `data: [DONE]`. Dropping the body (the client went
//! away) drops the request's abort guard, which frees its sequences and KV blocks.
//!
//! Anything axum answers on its own is given FastAPI's or vLLM's body too: unknown paths and
//! wrong methods get `{"detail": …}`, an over-long body a JSON error.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use wire::openai::{
    ChatRequest, CompletionRequest, ErrorBody, Prompt, Usage, parse_body, parse_value,
};
use wire::sse::{data_event, done_event};
use wire::tokens;

use crate::detokenizer::{Detokenizer, TokenSource, token_bytes};
use crate::driver::{AdapterLoad, Core, SeqSpec, Shared, Submission, TokenEvent};
use crate::kv_cache::{PromptSegment, block_hashes};
use crate::lora::Adapter;
use crate::request::{Endpoint, Fields, take_fields, usage_flags};
use crate::responses::*;
use crate::timeline::RequestTimeline;

/// The vLLM release whose API the simulator follows (reported by `/version`).
pub const VLLM_VERSION: &str = "0.12.0";

/// The largest request body the server reads. vLLM (FastAPI) sets no limit of its own, and
/// long-context prompts are megabytes of JSON, so this only stops a runaway client; axum's
/// default of 2 MB would refuse requests vLLM serves.
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024 * 1024;

/// An error response in vLLM's shape.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
        }
    }
    fn bad_request(message: impl Into<String>, param: Option<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param,
        }
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "BadRequestError",
            StatusCode::NOT_FOUND => "NotFoundError",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLargeError",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
            _ => "InternalServerError",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody::new(
            self.message.clone(),
            self.kind(),
            self.param.clone(),
            serde_json::Value::from(self.status.as_u16()),
        );
        json_response(self.status, &body)
    }
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Builds the router over the shared engine state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut r = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics));
    if shared.spec.enable_lora && shared.spec.allow_runtime_lora_updating {
        r = r
            .route("/v1/load_lora_adapter", post(load_lora))
            .route("/v1/unload_lora_adapter", post(unload_lora));
    }
    // FastAPI's bodies for what its router refuses (axum's own are empty); axum still adds
    // the `Allow` header to a 405, as Starlette does.
    r.fallback(|| async { detail(StatusCode::NOT_FOUND, r#"{"detail":"Not Found"}"#) })
        .method_not_allowed_fallback(|| async {
            detail(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"detail":"Method Not Allowed"}"#,
            )
        })
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY_BYTES))
        .with_state(shared)
}

fn detail(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The request body, or the refusal in vLLM's error shape (axum's own is plain text).
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "The request body is larger than this server accepts ({MAX_REQUEST_BODY_BYTES} \
                 bytes)."
            ),
        ),
        status => ApiError::new(status, e.body_text()),
    })
}

async fn health() -> StatusCode {
    StatusCode::OK
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({ "version": VLLM_VERSION }),
    )
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let text = {
        let core = s.lock_core();
        crate::metrics::render(
            &s.spec.served_model_name,
            s.spec.max_loras,
            &core.engine.stats(),
            &core.metrics,
            unix_now(),
        )
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn permission(created: u64, n: u64) -> ModelPermission {
    ModelPermission {
        id: format!("modelperm-{n:032x}"),
        object: "model_permission",
        created,
        allow_create_engine: false,
        allow_sampling: true,
        allow_logprobs: true,
        allow_search_indices: false,
        allow_view: true,
        allow_fine_tuning: false,
        organization: "*",
        group: None,
        is_blocking: false,
    }
}

async fn models(State(s): State<Arc<Shared>>) -> Response {
    let created = s.created;
    let base = s.spec.served_model_name.clone();
    // One card per served name, as vLLM's `show_available_models` lists every base model
    // path; adapters name the first as their parent.
    let mut data: Vec<ModelCardOut> = s
        .spec
        .served_model_names
        .iter()
        .map(|name| ModelCardOut {
            id: name.clone(),
            object: "model",
            created,
            owned_by: "vllm",
            root: s.spec.model.hf_id.clone(),
            parent: None,
            max_model_len: Some(s.spec.max_model_len),
            permission: Vec::new(),
        })
        .collect();
    let adapters: Vec<Adapter> = s.lock_core().engine.adapters().list().cloned().collect();
    for a in adapters {
        data.push(ModelCardOut {
            id: a.name,
            object: "model",
            created,
            owned_by: "vllm",
            root: a.path,
            parent: Some(base.clone()),
            max_model_len: None,
            permission: Vec::new(),
        });
    }
    for (i, card) in data.iter_mut().enumerate() {
        card.permission = vec![permission(created, i as u64)];
    }
    json_response(
        StatusCode::OK,
        &ModelListOut {
            object: "list",
            data,
        },
    )
}

/// Whether `name` is one of the base model's served names.
fn is_base_name(s: &Shared, name: &str) -> bool {
    s.spec.served_model_names.iter().any(|n| n == name)
}

/// Resolves the requested model name to its adapter (`None` for the base model) or 404.
fn resolve_model(s: &Shared, model: &str) -> Result<Option<String>, ApiError> {
    if is_base_name(s, model) {
        return Ok(None);
    }
    if s.spec.enable_lora && s.lock_core().engine.adapters().get(model).is_some() {
        return Ok(Some(model.to_string()));
    }
    Err(ApiError::not_found(format!(
        "The model `{model}` does not exist."
    )))
}

fn hash_of<T: Hash>(v: T) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// A request ready for the engine.
struct Plan {
    request_id: String,
    /// The `model` of the response: the adapter's name, or for the base model its first
    /// served name whichever alias the request used (vLLM's `OpenAIServingModels.model_name`).
    model: String,
    lora: Option<String>,
    /// (prompt tokens, prompt segments) per prompt.
    prompts: Vec<(u32, Vec<PromptSegment>)>,
    n: u32,
    max_tokens: u32,
    stream: bool,
    include_usage: bool,
    /// `stream_options.continuous_usage_stats` (with `include_usage`): usage on every chunk.
    continuous_usage: bool,
    seed: u64,
    /// Token bytes of the `mock_output_text` extension, when the request gave one.
    output_tokens: Option<Arc<Vec<Vec<u8>>>>,
}

fn output_tokens(text: Option<&str>) -> Option<Arc<Vec<Vec<u8>>>> {
    text.and_then(token_bytes).map(Arc::new)
}

fn request_id(s: &Shared, headers: &HeaderMap, number: u64) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let mut rng = StdRng::seed_from_u64(s.spec.seed ^ number.rotate_left(17));
            format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
        })
}

/// Parses a request body: the fields of [`crate::request`] first, then `wire`'s type for the
/// rest. `model` is optional, as in vLLM 0.12: absent, null or empty means the base model.
fn parse_request<T: serde::de::DeserializeOwned>(
    s: &Shared,
    body: &[u8],
    endpoint: Endpoint,
) -> Result<(T, Fields), ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Request body is not valid JSON: {e}"), None))?;
    let fields = take_fields(&mut value, endpoint, s.spec.max_num_seqs).map_err(field_error)?;
    if let Some(obj) = value.as_object_mut() {
        let unnamed = match obj.get("model") {
            None | Some(serde_json::Value::Null) => true,
            Some(serde_json::Value::String(m)) => m.is_empty(),
            Some(_) => false,
        };
        if unnamed {
            obj.insert("model".into(), s.spec.served_model_name.clone().into());
        }
    }
    let req = parse_value::<T>(value).map_err(field_error)?;
    Ok((req, fields))
}

/// vLLM's context-length check, and its default for an absent `max_tokens`. `requested` is
/// as large as the client sent it: comparing in u128 means no value wraps into range.
fn check_context(
    s: &Shared,
    prompt: u32,
    requested: Option<u128>,
    where_: &str,
) -> Result<u32, ApiError> {
    let limit = s.spec.max_model_len;
    if prompt >= limit {
        return Err(ApiError::bad_request(
            format!(
                "This model's maximum context length is {limit} tokens. However, you requested \
                 {prompt} tokens in the {where_}, Please reduce the length of the {where_}."
            ),
            None,
        ));
    }
    let max_tokens =
        requested.unwrap_or_else(|| u128::from(s.spec.default_max_tokens.min(limit - prompt)));
    let total = u128::from(prompt).saturating_add(max_tokens);
    if total > u128::from(limit) {
        return Err(ApiError::bad_request(
            format!(
                "This model's maximum context length is {limit} tokens. However, you requested \
                 {total} tokens ({prompt} in the {where_}, {max_tokens} in the completion). \
                 Please reduce the length of the {where_} or completion."
            ),
            None,
        ));
    }
    // Within `limit` by the check above, so it fits.
    Ok(u32::try_from(max_tokens).unwrap_or(limit))
}

fn field_error(e: wire::openai::FieldError) -> ApiError {
    ApiError::bad_request(e.message, e.param)
}

async fn chat(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrival = Instant::now();
    let plan = match body_bytes(body).and_then(|b| plan_chat(&s, &headers, &b)) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    run(s, plan, arrival, Kind::Chat).await
}

fn plan_chat(s: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Plan, ApiError> {
    let (req, fields) = parse_request::<ChatRequest>(s, body, Endpoint::Chat)?;
    let so = fields.stream_options;
    let req = req.validate().map_err(field_error)?;
    let lora = resolve_model(s, &req.model)?;
    let mut segments = Vec::with_capacity(req.messages.len() + 1);
    let mut prompt = 0u32;
    for m in &req.messages {
        let text = m.text();
        let t = (tokens::count(&text) + tokens::PER_MESSAGE_OVERHEAD) as u32;
        prompt = prompt.saturating_add(t);
        segments.push(PromptSegment {
            id: hash_of((&lora, &m.role, &text)),
            tokens: t,
        });
    }
    prompt = prompt.saturating_add(tokens::PER_CHAT_OVERHEAD as u32);
    segments.push(PromptSegment {
        id: hash_of("assistant-turn"),
        tokens: tokens::PER_CHAT_OVERHEAD as u32,
    });
    let max_tokens = check_context(s, prompt, fields.max_tokens, "messages")?;
    let (include_usage, continuous_usage) = usage_flags(req.stream, so.as_ref());
    let number = s.next_request_number();
    Ok(Plan {
        request_id: request_id(s, headers, number),
        model: lora
            .clone()
            .unwrap_or_else(|| s.spec.served_model_name.clone()),
        lora,
        prompts: vec![(prompt, segments)],
        n: fields.n,
        max_tokens,
        stream: req.stream,
        include_usage,
        continuous_usage,
        seed: fields
            .seed
            .map_or_else(|| s.spec.seed.wrapping_add(number), |v| v as u64),
        output_tokens: output_tokens(fields.mock_output_text.as_deref()),
    })
}

async fn completions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrival = Instant::now();
    let plan = match body_bytes(body).and_then(|b| plan_completion(&s, &headers, &b)) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    run(s, plan, arrival, Kind::Completion).await
}

fn plan_completion(s: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Plan, ApiError> {
    let (req, fields) = parse_request::<CompletionRequest>(s, body, Endpoint::Completion)?;
    let so = fields.stream_options;
    let req = req.validate().map_err(field_error)?;
    let lora = resolve_model(s, &req.model)?;
    let one = |id: u64, t: usize| {
        (
            t as u32,
            vec![PromptSegment {
                id,
                tokens: t as u32,
            }],
        )
    };
    let prompts: Vec<(u32, Vec<PromptSegment>)> = match &req.prompt {
        Prompt::Text(t) => vec![one(hash_of((&lora, t)), tokens::count(t))],
        Prompt::Texts(ts) => ts
            .iter()
            .map(|t| one(hash_of((&lora, t)), tokens::count(t)))
            .collect(),
        Prompt::Tokens(ids) => vec![one(hash_of((&lora, ids)), ids.len())],
        Prompt::TokenBatches(b) => b
            .iter()
            .map(|ids| one(hash_of((&lora, ids)), ids.len()))
            .collect(),
    };
    // `max_tokens` absent means OpenAI's legacy default of 16.
    let requested = fields
        .max_tokens
        .unwrap_or(u128::from(wire::openai::COMPLETIONS_DEFAULT_MAX_TOKENS));
    let mut max_tokens = 0;
    for (p, _) in &prompts {
        if *p == 0 {
            return Err(ApiError::bad_request(
                "'prompt' must not be empty",
                Some("prompt".into()),
            ));
        }
        max_tokens = check_context(s, *p, Some(requested), "prompt")?;
    }
    // Every choice is one sequence and carries a u32 index.
    if u32::try_from(prompts.len())
        .ok()
        .and_then(|p| p.checked_mul(fields.n))
        .is_none()
    {
        return Err(ApiError::bad_request(
            "Too many prompts and choices in one request.",
            Some("prompt".into()),
        ));
    }
    let (include_usage, continuous_usage) = usage_flags(req.stream, so.as_ref());
    let number = s.next_request_number();
    Ok(Plan {
        request_id: request_id(s, headers, number),
        model: lora
            .clone()
            .unwrap_or_else(|| s.spec.served_model_name.clone()),
        lora,
        prompts,
        n: fields.n,
        max_tokens,
        stream: req.stream,
        include_usage,
        continuous_usage,
        seed: fields
            .seed
            .map_or_else(|| s.spec.seed.wrapping_add(number), |v| v as u64),
        output_tokens: output_tokens(fields.mock_output_text.as_deref()),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

async fn run(s: Arc<Shared>, plan: Plan, arrival: Instant, kind: Kind) -> Response {
    let mut seqs = Vec::new();
    let mut prompt_total = 0u64;
    let bs = crate::config::BLOCK_SIZE;
    for (p_idx, (prompt, segments)) in plan.prompts.iter().enumerate() {
        prompt_total += u64::from(*prompt);
        let hashes = if s.spec.enable_prefix_caching {
            block_hashes(segments, bs)
        } else {
            Vec::new()
        };
        for i in 0..plan.n {
            seqs.push(SeqSpec {
                choice: p_idx as u32 * plan.n + i,
                prompt_tokens: *prompt,
                max_tokens: plan.max_tokens,
                lora: plan.lora.clone(),
                block_hashes: hashes.clone(),
            });
        }
    }
    let choices = seqs.len() as u32;
    let timeline = RequestTimeline {
        request_id: plan.request_id.clone(),
        model: plan.model.clone(),
        lora: plan.lora.clone(),
        prompt_tokens: prompt_total.min(u64::from(u32::MAX)) as u32,
        arrival,
        token_times: Vec::new(),
        scheduled_times: Vec::new(),
        finished: false,
    };
    let sub = match s.submit(seqs, timeline) {
        Ok(sub) => sub,
        Err(e) => {
            return ApiError::bad_request(e.to_string(), None).into_response();
        }
    };
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{}", plan.request_id),
        Kind::Completion => format!("cmpl-{}", plan.request_id),
    };
    let header_id = HeaderValue::from_str(&plan.request_id).ok();
    let mut resp = if plan.stream {
        stream_response(s, plan, sub, id, kind, choices, prompt_total)
    } else {
        whole_response(s, plan, sub, id, kind, choices, prompt_total).await
    };
    if let Some(v) = header_id {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn whole_response(
    s: Arc<Shared>,
    plan: Plan,
    mut sub: Submission,
    id: String,
    kind: Kind,
    choices: u32,
    prompt_total: u64,
) -> Response {
    let mut sources = TokenSource::for_choices(plan.seed, choices, plan.output_tokens.as_ref());
    let mut detoks = vec![Detokenizer::default(); choices as usize];
    let mut texts = vec![String::new(); choices as usize];
    let mut done = 0;
    let mut completion = 0u64;
    while done < choices {
        let Some(ev) = sub.rx.recv().await else {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The engine is shutting down.",
            )
            .into_response();
        };
        completion += 1;
        let c = ev.choice as usize;
        if let (Some(src), Some(d), Some(t)) =
            (sources.get_mut(c), detoks.get_mut(c), texts.get_mut(c))
        {
            t.push_str(&d.push(src.next_token()));
            if ev.finished {
                t.push_str(&d.finish());
            }
        }
        if ev.finished {
            done += 1;
        }
        s.record_token(&sub.timeline, done == choices, ev.at);
    }
    let usage: UsageFull = Usage::new(prompt_total, completion).into();
    let model = plan.model.as_str();
    match kind {
        Kind::Chat => json_response(
            StatusCode::OK,
            &ChatResponse {
                id: &id,
                object: "chat.completion",
                created: unix_seconds(),
                model,
                choices: texts
                    .into_iter()
                    .enumerate()
                    .map(|(i, content)| ChatChoice {
                        index: i as u32,
                        message: ChatMessageOut {
                            role: "assistant",
                            content,
                            refusal: None,
                            annotations: None,
                            audio: None,
                            function_call: None,
                            tool_calls: [],
                            reasoning_content: None,
                        },
                        logprobs: None,
                        finish_reason: "length",
                        stop_reason: None,
                    })
                    .collect(),
                service_tier: None,
                system_fingerprint: None,
                usage,
                prompt_logprobs: None,
                kv_transfer_params: None,
            },
        ),
        Kind::Completion => json_response(
            StatusCode::OK,
            &CompletionResponse {
                id: &id,
                object: "text_completion",
                created: unix_seconds(),
                model,
                choices: texts
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| CompletionChoice {
                        index: i as u32,
                        text,
                        logprobs: None,
                        finish_reason: "length",
                        stop_reason: None,
                        prompt_logprobs: None,
                    })
                    .collect(),
                usage,
                kv_transfer_params: None,
            },
        ),
    }
}

/// Unix time in seconds, for the `created` field of a response.
fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// State of one streamed response.
struct StreamState {
    shared: Arc<Shared>,
    /// Unix seconds when the request arrived; every chunk of one response carries the same
    /// value, as vLLM's do.
    created: u64,
    sub: Submission,
    id: String,
    model: String,
    kind: Kind,
    sources: Vec<TokenSource>,
    detoks: Vec<Detokenizer>,
    choices: u32,
    done: u32,
    completion: u64,
    prompt_total: u64,
    include_usage: bool,
    /// Usage on every chunk (`continuous_usage_stats`), counted per choice as vLLM counts it:
    /// the choice's prompt and the tokens that choice has generated so far.
    continuous_usage: bool,
    choice_prompt: Vec<u64>,
    choice_tokens: Vec<u64>,
    pending: VecDeque<Bytes>,
    started: bool,
    ended: bool,
}

impl StreamState {
    /// The running usage of one choice, when the request asked for it on every chunk.
    fn choice_usage(&self, choice: u32) -> Option<Usage> {
        if !self.continuous_usage {
            return None;
        }
        let c = choice as usize;
        let prompt = self.choice_prompt.get(c).copied().unwrap_or(0);
        let generated = self.choice_tokens.get(c).copied().unwrap_or(0);
        Some(Usage::new(prompt, generated))
    }

    fn chunk(&self, choice: u32, text: &str, role: bool, finish: bool) -> Bytes {
        let finish_reason = finish.then_some("length");
        let usage = self.choice_usage(choice);
        let json = match self.kind {
            Kind::Chat => serde_json::to_string(&ChatChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: vec![ChatChunkChoice {
                    index: choice,
                    delta: ChatDelta {
                        role: role.then_some("assistant"),
                        content: text,
                    },
                    logprobs: None,
                    finish_reason,
                    stop_reason: finish.then_some(None),
                }],
                usage,
            }),
            Kind::Completion => serde_json::to_string(&CompletionChunk {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                choices: vec![CompletionChunkChoice {
                    index: choice,
                    text,
                    logprobs: None,
                    finish_reason,
                    stop_reason: None,
                }],
                usage,
            }),
        };
        data_event(&json.unwrap_or_default())
    }

    fn usage_chunk(&self) -> Bytes {
        let usage = Some(Usage::new(self.prompt_total, self.completion));
        let json = match self.kind {
            Kind::Chat => serde_json::to_string(&ChatChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: Vec::new(),
                usage,
            }),
            Kind::Completion => serde_json::to_string(&CompletionChunk {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                choices: Vec::new(),
                usage,
            }),
        };
        data_event(&json.unwrap_or_default())
    }

    fn on_token(&mut self, ev: TokenEvent) -> Bytes {
        self.completion += 1;
        if ev.finished {
            self.done += 1;
        }
        // One chunk per token, carrying the text that became complete with it (vLLM sends the
        // chunk even when that is empty).
        let c = ev.choice as usize;
        if let Some(t) = self.choice_tokens.get_mut(c) {
            *t += 1;
        }
        let mut text = String::new();
        if let (Some(src), Some(d)) = (self.sources.get_mut(c), self.detoks.get_mut(c)) {
            text = d.push(src.next_token());
            if ev.finished {
                text.push_str(&d.finish());
            }
        }
        let bytes = self.chunk(ev.choice, &text, false, ev.finished);
        self.shared
            .record_token(&self.sub.timeline, self.done == self.choices, ev.at);
        bytes
    }
}

fn stream_response(
    s: Arc<Shared>,
    plan: Plan,
    sub: Submission,
    id: String,
    kind: Kind,
    choices: u32,
    prompt_total: u64,
) -> Response {
    let choice_prompt: Vec<u64> = plan
        .prompts
        .iter()
        .flat_map(|(p, _)| std::iter::repeat_n(u64::from(*p), plan.n as usize))
        .collect();
    let state = StreamState {
        shared: s,
        created: unix_seconds(),
        sub,
        id,
        model: plan.model,
        kind,
        sources: TokenSource::for_choices(plan.seed, choices, plan.output_tokens.as_ref()),
        detoks: vec![Detokenizer::default(); choices as usize],
        choices,
        done: 0,
        completion: 0,
        prompt_total,
        include_usage: plan.include_usage,
        continuous_usage: plan.continuous_usage,
        choice_prompt,
        choice_tokens: vec![0; choices as usize],
        pending: VecDeque::new(),
        started: false,
        ended: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                return Some((Ok::<Bytes, std::io::Error>(b), st));
            }
            if st.ended {
                return None;
            }
            if !st.started {
                st.started = true;
                if st.kind == Kind::Chat {
                    for c in 0..st.choices {
                        let b = st.chunk(c, "", true, false);
                        st.pending.push_back(b);
                    }
                }
                continue;
            }
            if st.done < st.choices {
                match st.sub.rx.recv().await {
                    Some(ev) => {
                        let b = st.on_token(ev);
                        return Some((Ok(b), st));
                    }
                    None => {
                        // The engine stopped (shutdown): end the body without `[DONE]`, so the
                        // client sees a truncated stream rather than a short success.
                        return Some((Err(std::io::Error::other("engine stopped")), st));
                    }
                }
            }
            if st.include_usage {
                let b = st.usage_chunk();
                st.pending.push_back(b);
            }
            st.pending.push_back(done_event());
            st.ended = true;
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    resp
}

#[derive(Deserialize)]
struct LoadLora {
    lora_name: Option<String>,
    lora_path: Option<String>,
    #[serde(default)]
    load_inplace: Option<bool>,
    /// Ours: the adapter's rank (a real server reads it from `adapter_config.json`).
    #[serde(default)]
    rank: Option<u32>,
}

fn text_ok(msg: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

async fn load_lora(State(s): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Response {
    match load_adapter(&s, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// What a load request finds when it looks at the registry and the loads in progress.
enum LoadStep {
    /// Nothing to do: the adapter is already loaded from this path.
    Loaded,
    /// Another load of this name is in progress: wait for it to end, then look again.
    Wait(watch::Receiver<()>),
    /// This request reserved the name and loads the adapter.
    Load(Reservation),
}

/// A runtime adapter load in progress, reserved under the engine lock. Dropping it (the load
/// finished, or its client went away mid-load) releases the name and wakes the calls that wait
/// on it.
struct Reservation {
    shared: Arc<Shared>,
    name: String,
    id: u64,
    _done: watch::Sender<()>,
}

impl Reservation {
    /// Removes this reservation's entry (only its own: a later load of the name may hold one).
    fn release(&self, core: &mut Core) {
        if core
            .adapter_loads
            .get(&self.name)
            .is_some_and(|l| l.id == self.id)
        {
            core.adapter_loads.remove(&self.name);
        }
    }

    /// Registers the adapter and ends the reservation in one critical section, so a waiting
    /// call that wakes up finds the adapter registered.
    fn finish(self, adapter: Adapter) {
        let mut core = self.shared.lock_core();
        self.release(&mut core);
        let ad = core.engine.adapters_mut();
        ad.unregister(&adapter.name);
        ad.register(adapter);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut core = self.shared.lock_core();
        self.release(&mut core);
    }
}

fn already_loaded(name: &str) -> ApiError {
    ApiError::bad_request(
        format!("The lora adapter '{name}' has already been loaded."),
        None,
    )
}

async fn load_adapter(
    s: &Arc<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let req: LoadLora = parse_body(&body).map_err(field_error)?;
    let (Some(name), Some(path)) = (
        req.lora_name.filter(|n| !n.is_empty()),
        req.lora_path.filter(|p| !p.is_empty()),
    ) else {
        return Err(ApiError::bad_request(
            "Both 'lora_name' and 'lora_path' must be provided.",
            None,
        ));
    };
    if is_base_name(s, &name) {
        return Err(ApiError::bad_request(
            format!("The lora adapter '{name}' has the base model's name."),
            Some("lora_name".into()),
        ));
    }
    let rank = req.rank.unwrap_or(crate::config::DEFAULT_ADAPTER_RANK);
    if rank == 0 {
        return Err(ApiError::bad_request(
            "LoRA rank must be at least 1, got 0.",
            Some("rank".into()),
        ));
    }
    if rank > s.spec.max_lora_rank {
        return Err(ApiError::bad_request(
            format!(
                "LoRA rank {rank} is greater than max_lora_rank {}.",
                s.spec.max_lora_rank
            ),
            Some("rank".into()),
        ));
    }
    let inplace = req.load_inplace == Some(true);
    let reservation = loop {
        let step = {
            let mut core = s.lock_core();
            let loaded = core.engine.adapters().get(&name).map(|a| a.path == path);
            if let Some(pending) = core.adapter_loads.get(&name) {
                // The same load again waits for the first one and then succeeds with it; an
                // in-place reload waits its turn; any other path loses to the first.
                if pending.path == path || inplace {
                    LoadStep::Wait(pending.done.clone())
                } else {
                    return Err(already_loaded(&name));
                }
            } else {
                match loaded {
                    // Loading the same adapter again is a no-op (idempotent).
                    Some(true) => LoadStep::Loaded,
                    // Another path under a loaded name needs `load_inplace`.
                    Some(false) if !inplace => return Err(already_loaded(&name)),
                    _ => {
                        let id = core.next_adapter_load;
                        core.next_adapter_load += 1;
                        let (tx, rx) = watch::channel(());
                        core.adapter_loads.insert(
                            name.clone(),
                            AdapterLoad {
                                id,
                                path: path.clone(),
                                done: rx,
                            },
                        );
                        LoadStep::Load(Reservation {
                            shared: Arc::clone(s),
                            name: name.clone(),
                            id,
                            _done: tx,
                        })
                    }
                }
            }
        };
        match step {
            LoadStep::Loaded => {
                return Ok(text_ok(format!(
                    "Success: LoRA adapter '{name}' added successfully."
                )));
            }
            // Returns once the other load's reservation is dropped, whatever its outcome.
            LoadStep::Wait(mut done) => {
                let _ = done.changed().await;
            }
            LoadStep::Load(r) => break r,
        }
    };
    // Reading the adapter from disk takes time; the engine keeps stepping meanwhile.
    let load_ms = crate::catalog::Catalog::get()
        .map(|c| c.lora.disk_load_ms)
        .unwrap_or(0.0);
    tokio::time::sleep(std::time::Duration::from_secs_f64(load_ms / 1e3)).await;
    reservation.finish(Adapter {
        name: name.clone(),
        path,
        rank,
    });
    Ok(text_ok(format!(
        "Success: LoRA adapter '{name}' added successfully."
    )))
}

#[derive(Deserialize)]
struct UnloadLora {
    lora_name: Option<String>,
}

async fn unload_lora(
    State(s): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body_bytes(body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req: UnloadLora = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return field_error(e).into_response(),
    };
    let Some(name) = req.lora_name.filter(|n| !n.is_empty()) else {
        return ApiError::bad_request("'lora_name' must be provided.", Some("lora_name".into()))
            .into_response();
    };
    // As in vLLM, unloading removes the adapter from the serving layer only: new requests for
    // it get 404, but requests already running keep their adapter (a vLLM request carries its
    // own LoRARequest and the worker reloads the weights for its batch), so in-flight streams
    // run to their normal end with a finish chunk and `[DONE]` (tests/it/api.rs,
    // `unloading_an_adapter_lets_in_flight_streams_finish_and_404s_new_requests`).
    let removed = s.lock_core().engine.adapters_mut().unregister(&name);
    match removed {
        Some(_) => text_ok(format!(
            "Success: LoRA adapter '{name}' removed successfully."
        )),
        None => ApiError::not_found(format!("The lora adapter '{name}' cannot be found."))
            .into_response(),
    }
}
