//! LiteLLM's key-management and spend API, under the master key.
//!
//! `POST /key/generate`, `GET /key/info`, `POST /key/update`, `POST /key/delete`,
//! `GET /key/list`, `GET /spend/logs`. Generated keys are returned once and stored only as
//! SHA-256 digests (with their settings as a [`KeyRecord`]) in the database, so they survive a
//! restart and other replicas sharing the database accept them.
//!
//! Who sees what: the master key may do everything. A tenant key may only read — its own
//! key's info, its tenant's key list, its tenant's spend rows — and gets 403 for anything
//! naming another tenant or another tenant's key (whether or not that key exists, so ids of
//! other tenants cannot be probed), and for every write.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use wire::openai::FieldError;

use crate::config::parse_duration;
use crate::error::ApiError;
use crate::key::{KeyHash, KeyRecord, KeySource, redact};
use crate::server::AppState;
use crate::store::RowFilter;
use crate::tenant::{KeyEntry, Lookup, Principal};

/// Largest admin request body.
const BODY_LIMIT: usize = 64 * 1024;
/// Most spend rows one `/spend/logs` call returns.
const MAX_ROWS: u32 = 10_000;

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(FieldError::new(param, message.into()))
}

fn forbidden() -> ApiError {
    ApiError::Forbidden("This key may not see or change that: only the master key may, and a tenant key only its own tenant's data.".into())
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "admin: database error");
    ApiError::Internal("the database failed; see the router log".into())
}

/// Fields of `/key/generate` and `/key/update` (LiteLLM's names). Other fields are ignored, as
/// LiteLLM clients send more than we implement, except near-misses of these names
/// ([`refuse_typos`]): `rpm_limt` silently making a key with no limit would be worse than a 400.
#[derive(Debug, Default, Deserialize)]
struct KeyFields {
    key: Option<String>,
    key_alias: Option<String>,
    tenant_id: Option<String>,
    /// LiteLLM groups keys by team; here a team is a tenant.
    team_id: Option<String>,
    metadata: Option<Value>,
    models: Option<Vec<String>>,
    max_budget: Option<f64>,
    budget_duration: Option<String>,
    rpm_limit: Option<u64>,
    tpm_limit: Option<u64>,
    max_parallel_requests: Option<u32>,
    /// Lifetime of the key (`30s`, `1h`, `30d`).
    duration: Option<String>,
    blocked: Option<bool>,
}

async fn body(req: Request) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|_| ApiError::BodyTooLarge { limit: BODY_LIMIT })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::InvalidRequest(FieldError {
            param: None,
            message: format!("Request body is not valid JSON: {e}"),
        })
    })?;
    if !v.is_object() {
        return Err(bad("body", "Request body must be a JSON object."));
    }
    Ok(v)
}

/// The names [`KeyFields`] reads.
const KEY_FIELDS: [&str; 13] = [
    "key",
    "key_alias",
    "tenant_id",
    "team_id",
    "metadata",
    "models",
    "max_budget",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "duration",
    "blocked",
];

/// Refuses a field that is not one of [`KEY_FIELDS`] but is within two edits of one.
fn refuse_typos(v: &Value) -> Result<(), ApiError> {
    let Some(obj) = v.as_object() else {
        return Ok(());
    };
    for name in obj.keys() {
        if KEY_FIELDS.contains(&name.as_str()) {
            continue;
        }
        if let Some(known) = KEY_FIELDS.iter().find(|k| edit_distance(name, k) <= 2) {
            return Err(bad(
                name,
                format!("Unknown field '{name}'; did you mean '{known}'?"),
            ));
        }
    }
    Ok(())
}

/// Levenshtein distance over bytes (field names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        bad(
            &path,
            format!("Invalid value for '{path}': {}", e.into_inner()),
        )
    })
}

async fn caller(state: &AppState, h: &http::HeaderMap) -> Result<Principal, ApiError> {
    state.authenticate(h).await.map(|(_, p)| p)
}

fn master_only(p: &Principal) -> Result<(), ApiError> {
    match p {
        Principal::Master => Ok(()),
        Principal::Key(_) => Err(forbidden()),
    }
}

/// Applies `f` onto `rec`, validating each value.
fn apply(state: &AppState, rec: &mut KeyRecord, f: &KeyFields) -> Result<(), ApiError> {
    if let Some(a) = &f.key_alias {
        rec.key_alias = Some(a.clone());
    }
    if let Some(m) = &f.metadata {
        if !m.is_object() {
            return Err(bad("metadata", "metadata must be an object"));
        }
        rec.metadata = m.clone();
    }
    let Some(tenant) = state.directory.tenant(&rec.tenant_id).cloned() else {
        return Err(bad(
            "tenant_id",
            format!("no tenant `{}` is configured", rec.tenant_id),
        ));
    };
    if let Some(models) = &f.models {
        for (i, m) in models.iter().enumerate() {
            if state.balancer.group_index(m).is_none() || !tenant.config.may_use(m) {
                return Err(bad(
                    &format!("models[{i}]"),
                    format!("`{m}` is not a model tenant `{}` may use", tenant.id()),
                ));
            }
        }
        rec.models = models.clone();
    }
    if let Some(b) = f.max_budget {
        if !(b.is_finite() && b >= 0.0) {
            return Err(bad("max_budget", "max_budget must be a number ≥ 0"));
        }
        rec.max_budget = Some(b);
    }
    if let Some(d) = &f.budget_duration {
        if parse_duration(d).is_none() {
            return Err(bad(
                "budget_duration",
                format!("`{d}` is not a duration (30s, 15m, 1h, 30d, 1mo)"),
            ));
        }
        rec.budget_duration = Some(d.clone());
    }
    for (name, v, slot) in [
        ("rpm_limit", f.rpm_limit, &mut rec.rpm_limit),
        ("tpm_limit", f.tpm_limit, &mut rec.tpm_limit),
    ] {
        if let Some(x) = v {
            if x == 0 {
                return Err(bad(name, "0 is not a limit"));
            }
            *slot = Some(x);
        }
    }
    if let Some(x) = f.max_parallel_requests {
        if x == 0 {
            return Err(bad("max_parallel_requests", "0 is not a limit"));
        }
        rec.max_parallel_requests = Some(x);
    }
    if let Some(d) = &f.duration {
        let d = parse_duration(d).ok_or_else(|| {
            bad(
                "duration",
                format!("`{d}` is not a duration (30s, 15m, 1h, 30d)"),
            )
        })?;
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        rec.expires_ms = Some(state.clock.now_ms().saturating_add(ms));
    }
    if let Some(b) = f.blocked {
        rec.blocked = b;
    }
    Ok(())
}

fn key_json(rec: &KeyRecord) -> Value {
    json!({
        "token": rec.token,
        "key_name": rec.key_name,
        "key_alias": rec.key_alias,
        "tenant_id": rec.tenant_id,
        "team_id": rec.tenant_id,
        "models": rec.models,
        "max_budget": rec.max_budget,
        "budget_duration": rec.budget_duration,
        "rpm_limit": rec.rpm_limit,
        "tpm_limit": rec.tpm_limit,
        "max_parallel_requests": rec.max_parallel_requests,
        "expires_ms": rec.expires_ms,
        "blocked": rec.blocked,
        "metadata": rec.metadata,
        "created_ms": rec.created_ms,
        "source": rec.source,
    })
}

/// Stores a record and makes it live.
async fn save(state: &AppState, rec: KeyRecord) -> Result<Arc<KeyEntry>, ApiError> {
    let json = serde_json::to_string(&rec).map_err(store_error)?;
    state
        .store
        .put_key(&rec.token, &rec.tenant_id, &json)
        .await
        .map_err(store_error)?;
    let entry = state
        .directory
        .insert(rec)
        .ok_or_else(|| bad("tenant_id", "the tenant is not configured"))?;
    state.resume_key(&entry).await.map_err(store_error)?;
    Ok(entry)
}

/// `POST /key/generate` (master key only).
pub(crate) async fn generate(State(state): State<Arc<AppState>>, req: Request) -> Response {
    generate_inner(&state, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn generate_inner(state: &AppState, req: Request) -> Result<Response, ApiError> {
    master_only(&caller(state, req.headers()).await?)?;
    let v = body(req).await?;
    refuse_typos(&v)?;
    let f: KeyFields = typed(&v)?;
    let tenant_id = f
        .tenant_id
        .clone()
        .or_else(|| f.team_id.clone())
        .or_else(|| {
            f.metadata
                .as_ref()
                .and_then(|m| m.get("tenant_id"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .ok_or_else(|| bad("tenant_id", "say which tenant the key is for: `tenant_id` (or `team_id`, or `metadata.tenant_id`)"))?;
    let raw = match &f.key {
        Some(k) if !k.starts_with("sk-") || k.len() < 8 => {
            return Err(bad(
                "key",
                "a custom key must start with `sk-` and be at least 8 characters",
            ));
        }
        Some(k) => k.clone(),
        None => {
            let bytes: [u8; 24] = rand::random();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("sk-tb-{hex}")
        }
    };
    let hash = KeyHash::of(&raw);
    if !matches!(state.directory.lookup(&hash), Lookup::Unknown) {
        return Err(bad("key", "this key already exists"));
    }
    let mut rec = KeyRecord {
        token: hash.to_hex(),
        key_name: redact(&raw),
        key_alias: None,
        tenant_id,
        models: Vec::new(),
        max_budget: None,
        budget_duration: None,
        rpm_limit: None,
        tpm_limit: None,
        max_parallel_requests: None,
        expires_ms: None,
        blocked: false,
        metadata: json!({}),
        created_ms: state.clock.now_ms(),
        source: KeySource::Api,
    };
    apply(state, &mut rec, &f)?;
    let entry = save(state, rec).await?;
    let mut out = key_json(&entry.record);
    if let Some(o) = out.as_object_mut() {
        // The only time the raw key leaves the router.
        o.insert("key".into(), Value::String(raw));
    }
    Ok(axum::Json(out).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct InfoQuery {
    key: Option<String>,
}

/// `GET /key/info?key=<key or hash>`: the master key sees any key; a tenant key sees keys of
/// its own tenant (its own without `key`).
pub(crate) async fn info(
    State(state): State<Arc<AppState>>,
    Query(q): Query<InfoQuery>,
    req: Request,
) -> Response {
    info_inner(&state, q, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn info_inner(state: &AppState, q: InfoQuery, req: Request) -> Result<Response, ApiError> {
    let who = caller(state, req.headers()).await?;
    let entry = match (&who, q.key.as_deref()) {
        (Principal::Key(k), None) => k.clone(),
        (_, Some(given)) => {
            let found = match state.directory.lookup(&KeyHash::of_given(given)) {
                Lookup::Key(k) => Some(k),
                _ => None,
            };
            match (&who, found) {
                (Principal::Master, Some(k)) => k,
                (Principal::Master, None) => return Err(ApiError::NotFound("No such key.".into())),
                (Principal::Key(me), Some(k)) if k.tenant.id() == me.tenant.id() => k,
                // Another tenant's key and a key that does not exist look the same.
                (Principal::Key(_), _) => return Err(forbidden()),
            }
        }
        (Principal::Master, None) => return Err(bad("key", "say which key: `?key=`")),
    };
    let f = RowFilter {
        tenant_id: None,
        key_hash: Some(entry.record.token.clone()),
    };
    let spend = state.store.spent_since(&f, 0).await.map_err(store_error)?;
    let mut info = key_json(&entry.record);
    if let Some(o) = info.as_object_mut() {
        o.insert("spend".into(), json!(spend.as_f64()));
    }
    Ok(axum::Json(json!({ "key": entry.record.token, "info": info })).into_response())
}

/// `POST /key/update` (master key only): changes the given fields of a generated key.
pub(crate) async fn update(State(state): State<Arc<AppState>>, req: Request) -> Response {
    update_inner(&state, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn update_inner(state: &AppState, req: Request) -> Result<Response, ApiError> {
    master_only(&caller(state, req.headers()).await?)?;
    let v = body(req).await?;
    refuse_typos(&v)?;
    let f: KeyFields = typed(&v)?;
    let given = f
        .key
        .as_deref()
        .ok_or_else(|| bad("key", "say which key to update"))?;
    let Lookup::Key(cur) = state.directory.lookup(&KeyHash::of_given(given)) else {
        return Err(ApiError::NotFound("No such key.".into()));
    };
    if cur.record.source == KeySource::Config {
        return Err(bad(
            "key",
            "this key is defined in the config file; change it there",
        ));
    }
    if f.tenant_id
        .as_ref()
        .or(f.team_id.as_ref())
        .is_some_and(|t| *t != cur.record.tenant_id)
    {
        return Err(bad(
            "tenant_id",
            "a key cannot move to another tenant; generate a new one",
        ));
    }
    let mut rec = cur.record.clone();
    apply(state, &mut rec, &f)?;
    let entry = save(state, rec).await?;
    Ok(axum::Json(key_json(&entry.record)).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct DeleteBody {
    #[serde(default)]
    keys: Vec<String>,
}

/// `POST /key/delete` (master key only): `{"keys": [key or hash, ...]}`.
pub(crate) async fn delete(State(state): State<Arc<AppState>>, req: Request) -> Response {
    delete_inner(&state, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn delete_inner(state: &AppState, req: Request) -> Result<Response, ApiError> {
    master_only(&caller(state, req.headers()).await?)?;
    let v = body(req).await?;
    let d: DeleteBody = typed(&v)?;
    if d.keys.is_empty() {
        return Err(bad("keys", "give the keys to delete: `{\"keys\": [...]}`"));
    }
    let mut entries = Vec::new();
    for (i, given) in d.keys.iter().enumerate() {
        match state.directory.lookup(&KeyHash::of_given(given)) {
            Lookup::Key(k) if k.record.source == KeySource::Api => entries.push(k),
            Lookup::Key(_) => {
                return Err(bad(
                    &format!("keys[{i}]"),
                    "this key is defined in the config file",
                ));
            }
            _ => return Err(ApiError::NotFound(format!("keys[{i}]: no such key."))),
        }
    }
    let mut deleted = Vec::new();
    for k in entries {
        state
            .store
            .delete_key(&k.record.token)
            .await
            .map_err(store_error)?;
        state.directory.remove(&k.hash);
        deleted.push(k.record.token.clone());
    }
    Ok(axum::Json(json!({ "deleted_keys": deleted })).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    tenant_id: Option<String>,
    team_id: Option<String>,
    #[serde(default)]
    return_full_object: bool,
}

/// `GET /key/list`: every key for the master key; the caller's tenant's keys for a tenant key.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
    req: Request,
) -> Response {
    list_inner(&state, q, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn list_inner(state: &AppState, q: ListQuery, req: Request) -> Result<Response, ApiError> {
    let who = caller(state, req.headers()).await?;
    let asked = q.tenant_id.or(q.team_id);
    let tenant = match &who {
        Principal::Master => asked,
        Principal::Key(me) => {
            if asked.as_deref().is_some_and(|t| t != me.tenant.id()) {
                return Err(forbidden());
            }
            Some(me.tenant.id().to_string())
        }
    };
    let keys = state.directory.keys_of(tenant.as_deref());
    let list: Vec<Value> = keys
        .iter()
        .map(|k| {
            if q.return_full_object {
                key_json(&k.record)
            } else {
                Value::String(k.record.token.clone())
            }
        })
        .collect();
    Ok(axum::Json(json!({
        "keys": list,
        "total_count": keys.len(),
        "current_page": 1,
        "total_pages": 1,
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SpendQuery {
    tenant_id: Option<String>,
    team_id: Option<String>,
    api_key: Option<String>,
    limit: Option<u32>,
}

/// `GET /spend/logs`: spend rows, newest first. Filters: `tenant_id` (or `team_id`),
/// `api_key` (key or hash), `limit` (default and maximum 10,000).
pub(crate) async fn spend_logs(
    State(state): State<Arc<AppState>>,
    Query(q): Query<SpendQuery>,
    req: Request,
) -> Response {
    spend_inner(&state, q, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn spend_inner(state: &AppState, q: SpendQuery, req: Request) -> Result<Response, ApiError> {
    let who = caller(state, req.headers()).await?;
    let key_hash = q.api_key.as_deref().map(|k| KeyHash::of_given(k).to_hex());
    let asked = q.tenant_id.or(q.team_id);
    let tenant_id = match &who {
        Principal::Master => asked,
        Principal::Key(me) => {
            let mine = me.tenant.id();
            if asked.as_deref().is_some_and(|t| t != mine) {
                return Err(forbidden());
            }
            if let Some(h) = &key_hash {
                let theirs = match KeyHash::from_hex(h).map(|h| state.directory.lookup(&h)) {
                    Some(Lookup::Key(k)) => k.tenant.id() != mine,
                    _ => true,
                };
                if theirs {
                    return Err(forbidden());
                }
            }
            Some(mine.to_string())
        }
    };
    let f = RowFilter {
        tenant_id,
        key_hash,
    };
    let limit = q.limit.unwrap_or(MAX_ROWS).clamp(1, MAX_ROWS);
    let rows = state.store.rows(&f, limit).await.map_err(store_error)?;
    let out: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "request_id": r.request_id,
                "api_key": r.key_hash,
                "key_alias": r.key_alias,
                "tenant_id": r.tenant_id,
                "team_id": r.tenant_id,
                "model": r.model,
                "model_id": r.deployment,
                "adapter": r.adapter,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "total_tokens": r.prompt_tokens + r.completion_tokens,
                "spend": r.cost.as_f64(),
                "status": r.status,
                "startTime_ms": r.ts_ms,
            })
        })
        .collect();
    Ok(axum::Json(out).into_response())
}
