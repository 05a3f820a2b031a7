//! The HTTP surface: routes, shared state, and the non-proxy endpoints.
//!
//! Routes (LiteLLM serves each with and without the `/v1` prefix, so do we):
//! `POST /v1/chat/completions`, `POST /v1/completions` (see [`crate::proxy`]),
//! `GET /v1/models` (only the models the caller's key may use), `GET /health/liveliness`
//! (also `/health/liveness`), `GET /health/readiness`, `GET /metrics`, and the admin API
//! ([`crate::admin`]). Anything else gets an OpenAI-shaped 404 or 405.
//!
//! [`AppState::build`] opens the database, loads the keys made through the admin API, picks
//! the limits backend (Redis when configured, else process memory, said loudly at start-up)
//! and resumes every budget from the spend log.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, header};
use tokio_util::task::TaskTracker;
use wire::openai::{ModelCard, ModelList};

use crate::RouterError;
use crate::admin;
use crate::audit::{AuditLog, AuditWriter};
use crate::balancer::Balancer;
use crate::clock::Clock;
use crate::config::{RouterConfig, RoutingSettings, Settings};
use crate::error::ApiError;
use crate::headers;
use crate::key::{KeyHash, KeyRecord};
use crate::ledger::{Ledger, MemoryLedger};
use crate::limiter::{Limiter, MemoryLimiter};
use crate::metrics::Metrics;
use crate::proxy::{self, Endpoint};
use crate::redis_state::RedisState;
use crate::scope::Scope;
use crate::store::{RowFilter, SpendLog, SpendWriter, Store};
use crate::tenant::{Directory, KeyEntry, Lookup, Principal, presented_key};
use crate::upstream::Upstream;

/// Everything a request needs, shared by all of them.
pub(crate) struct AppState {
    pub settings: Settings,
    pub routing: RoutingSettings,
    pub directory: Directory,
    pub balancer: Balancer,
    pub upstream: Upstream,
    pub limiter: Arc<dyn Limiter>,
    pub ledger: Arc<dyn Ledger>,
    /// Whether limits and budgets are shared through Redis.
    pub shared: bool,
    pub store: Store,
    pub spend: SpendLog,
    pub clock: Clock,
    pub audit: AuditLog,
    pub metrics: Metrics,
    /// Exchange tasks; shutdown waits for them so every audit line is written.
    pub tasks: TaskTracker,
    pub started_unix: u64,
}

/// Background writers that `serve` waits for after the last request.
pub(crate) struct Writers {
    pub audit: Option<AuditWriter>,
    pub spend: SpendWriter,
}

impl AppState {
    /// Builds the state: audit log, database, keys, limits backend, budgets resumed.
    pub(crate) async fn build(cfg: RouterConfig) -> Result<(Arc<Self>, Writers), RouterError> {
        let clock = Clock::new();
        let directory = Directory::new(&cfg);
        let balancer = Balancer::new(&cfg);
        let upstream = Upstream::new().map_err(RouterError::Client)?;
        let (audit, audit_writer) = match &cfg.settings.audit_log {
            None => (AuditLog::disabled(), None),
            Some(path) => {
                let (log, w) = AuditLog::open(path)
                    .await
                    .map_err(|source| RouterError::Audit {
                        path: path.display().to_string(),
                        source,
                    })?;
                (log, Some(w))
            }
        };
        let db = cfg.settings.database.describe();
        let store = Store::open(&cfg.settings.database)
            .await
            .map_err(|e| RouterError::Store(format!("{db}: {e}")))?;
        for json in store
            .keys(None)
            .await
            .map_err(|e| RouterError::Store(e.to_string()))?
        {
            match serde_json::from_str::<KeyRecord>(&json) {
                Ok(rec) => {
                    let tenant = rec.tenant_id.clone();
                    if directory.insert(rec).is_none() {
                        tracing::warn!(tenant = %tenant, "a stored key belongs to a tenant that is no longer configured; it is refused");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable key record in the database; skipped")
                }
            }
        }
        let (limiter, ledger, shared): (Arc<dyn Limiter>, Arc<dyn Ledger>, bool) = match &cfg
            .settings
            .redis_url
        {
            Some(url) => {
                let r = RedisState::connect(url, &cfg.settings.redis_prefix, clock)
                    .await
                    .map_err(|e| RouterError::Redis(e.to_string()))?;
                let r = Arc::new(r);
                tracing::info!(prefix = %cfg.settings.redis_prefix, "limits and budget holds are shared through redis by every router using this prefix");
                (r.clone(), r, true)
            }
            None => {
                tracing::warn!(
                    "no redis configured: rate limits, parallel-request limits and budget holds are enforced PER ROUTER PROCESS; several replicas would each allow the full limit"
                );
                (
                    Arc::new(MemoryLimiter::new()),
                    Arc::new(MemoryLedger::new(clock)),
                    false,
                )
            }
        };
        let ids: Vec<&str> = cfg.tenants.iter().map(|t| t.id.as_str()).collect();
        let models: Vec<&str> = cfg.groups.iter().map(|g| g.name.as_str()).collect();
        let metrics = Metrics::new(&ids, &models, cfg.settings.metrics_max_tenants);
        // The BPE table takes ~100 ms to load; do it now rather than on the first request.
        wire::tokens::warm_up();
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (spend, spend_writer) = SpendLog::start(store.clone());
        let state = Self {
            settings: cfg.settings,
            routing: cfg.routing,
            directory,
            balancer,
            upstream,
            limiter,
            ledger,
            shared,
            store,
            spend,
            clock,
            audit,
            metrics,
            tasks: TaskTracker::new(),
            started_unix,
        };
        for t in state.directory.tenants() {
            let f = RowFilter {
                tenant_id: Some(t.id().to_string()),
                key_hash: None,
            };
            state.resume(&t.scope, &f).await?;
        }
        for k in state.directory.keys_of(None) {
            state.resume_key(&k).await?;
        }
        tracing::info!(database = %db, "spend log open; budgets resumed from it");
        Ok((
            Arc::new(state),
            Writers {
                audit: audit_writer,
                spend: spend_writer,
            },
        ))
    }

    /// Seeds a scope's budget with its spend in the current period, from the spend log.
    async fn resume(&self, scope: &Scope, f: &RowFilter) -> Result<(), RouterError> {
        if scope.budget.is_none() {
            return Ok(());
        }
        let since = scope.period_start_ms(self.clock.now_ms());
        let spent = self
            .store
            .spent_since(f, since)
            .await
            .map_err(|e| RouterError::Store(e.to_string()))?;
        self.ledger.resume(scope, spent).await;
        Ok(())
    }

    /// Seeds the budget of a key with its own budget.
    pub(crate) async fn resume_key(&self, k: &KeyEntry) -> Result<(), RouterError> {
        if let Some(s) = &k.scope {
            let f = RowFilter {
                tenant_id: None,
                key_hash: Some(k.record.token.clone()),
            };
            self.resume(s, &f).await?;
        }
        Ok(())
    }

    /// The caller of a request, from its bearer key: 401 when the key is missing, unknown,
    /// blocked or expired. A key unknown here but present in the database (made through
    /// another replica) is loaded.
    pub(crate) async fn authenticate(
        &self,
        h: &HeaderMap,
    ) -> Result<(KeyHash, Principal), ApiError> {
        let hash = presented_key(h)?;
        let entry = match self.directory.lookup(&hash) {
            Lookup::Master => return Ok((hash, Principal::Master)),
            Lookup::Key(k) => k,
            Lookup::Unknown => self.load_key(&hash).await.ok_or(ApiError::InvalidKey)?,
        };
        if entry.record.blocked {
            return Err(ApiError::KeyBlocked);
        }
        if entry.record.expired(self.clock.now_ms()) {
            return Err(ApiError::KeyExpired);
        }
        Ok((hash, Principal::Key(entry)))
    }

    async fn load_key(&self, hash: &KeyHash) -> Option<Arc<KeyEntry>> {
        let json = self.store.keys(Some(&hash.to_hex())).await.ok()?;
        let rec: KeyRecord = serde_json::from_str(json.first()?).ok()?;
        let entry = self.directory.insert(rec)?;
        if let Err(e) = self.resume_key(&entry).await {
            tracing::warn!(error = %e, "key budget not resumed");
        }
        Some(entry)
    }
}

/// The axum application.
pub(crate) fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/health/liveliness", get(liveliness))
        .route("/health/liveness", get(liveliness))
        .route("/health/readiness", get(readiness))
        .route("/metrics", get(metrics))
        .route("/key/generate", post(admin::generate))
        .route("/key/info", get(admin::info))
        .route("/key/update", post(admin::update))
        .route("/key/delete", post(admin::delete))
        .route("/key/list", get(admin::list))
        .route("/spend/logs", get(admin::spend_logs))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn chat(State(state): State<Arc<AppState>>, req: Request) -> Response {
    proxy::handle(state, Endpoint::Chat, req).await
}

async fn completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    proxy::handle(state, Endpoint::Completions, req).await
}

async fn models(State(state): State<Arc<AppState>>, h: HeaderMap) -> Response {
    let who = match state.authenticate(&h).await {
        Ok((_, p)) => p,
        Err(e) => return e.into_response(),
    };
    let data = state
        .balancer
        .groups()
        .iter()
        .filter(|g| who.may_use(&g.name))
        .map(|g| ModelCard {
            id: g.name.clone(),
            object: "model".into(),
            created: state.started_unix,
            owned_by: "tenantbench".into(),
            root: None,
            parent: None,
            max_model_len: None,
        })
        .collect();
    let mut resp = axum::Json(ModelList {
        object: "list".into(),
        data,
    })
    .into_response();
    if let Some(k) = who.key() {
        let a = state.limiter.allowance(&k.scopes()).await;
        headers::put_allowance(resp.headers_mut(), &a);
    }
    resp
}

async fn liveliness() -> Response {
    axum::Json("I'm alive!").into_response()
}

async fn readiness(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "healthy",
        "db": state.settings.database.describe(),
        "limits": if state.shared { "redis" } else { "per-process" },
        "tenants": state.directory.tenants().len(),
        "model_groups": state.balancer.groups().len(),
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut budgets = Vec::with_capacity(state.directory.tenants().len());
    for t in state.directory.tenants() {
        budgets.push(state.ledger.status(&t.scope).await);
    }
    let text = state.metrics.render(&budgets);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn no_route(req: Request) -> Response {
    ApiError::NoRoute(format!("{} {}", req.method(), req.uri().path())).into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    let mut r = ApiError::NoRoute(format!("{} {}", req.method(), req.uri().path())).into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}
