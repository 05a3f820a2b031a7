//! The HTTP surface: routes, shared state, and the non-proxy endpoints.
//!
//! Routes (LiteLLM serves each with and without the `/v1` prefix, so do we):
//! `POST /v1/chat/completions`, `POST /v1/completions` (see [`crate::proxy`]),
//! `GET /v1/models` (only the models the caller's key may use), `GET /health/liveliness`
//! (also `/health/liveness`), `GET /health/readiness`, `GET /metrics`. Anything else gets an
//! OpenAI-shaped 404 or 405.

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
use crate::audit::{AuditLog, AuditWriter};
use crate::balancer::Balancer;
use crate::config::{RouterConfig, RoutingSettings, Settings};
use crate::error::ApiError;
use crate::headers;
use crate::ledger::{Ledger, MemoryLedger};
use crate::limiter::{Limiter, MemoryLimiter};
use crate::metrics::Metrics;
use crate::proxy::{self, Endpoint};
use crate::tenant::Directory;
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
    pub audit: AuditLog,
    pub metrics: Metrics,
    /// Exchange tasks; shutdown waits for them so every audit line is written.
    pub tasks: TaskTracker,
    pub started_unix: u64,
}

impl AppState {
    /// Builds the state, opening the audit log.
    pub(crate) async fn build(
        cfg: RouterConfig,
    ) -> Result<(Arc<Self>, Option<AuditWriter>), RouterError> {
        let directory = Directory::new(&cfg);
        let balancer = Balancer::new(&cfg);
        let upstream = Upstream::new().map_err(RouterError::Client)?;
        let (audit, writer) = match &cfg.settings.audit_log {
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
        let ids: Vec<&str> = cfg.tenants.iter().map(|t| t.id.as_str()).collect();
        let models: Vec<&str> = cfg.groups.iter().map(|g| g.name.as_str()).collect();
        let metrics = Metrics::new(&ids, &models);
        let limiter: Arc<dyn Limiter> = Arc::new(MemoryLimiter::new(directory.tenants()));
        let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new(directory.tenants()));
        // The BPE table takes ~100 ms to load; do it now rather than on the first request.
        wire::tokens::warm_up();
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let state = Self {
            settings: cfg.settings,
            routing: cfg.routing,
            directory,
            balancer,
            upstream,
            limiter,
            ledger,
            audit,
            metrics,
            tasks: TaskTracker::new(),
            started_unix,
        };
        Ok((Arc::new(state), writer))
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
    let who = match state.directory.authenticate(&h) {
        Ok((_, p)) => p.clone(),
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
    if let Some(t) = who.tenant() {
        let a = state.limiter.allowance(t).await;
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
        "db": "in-memory",
        "tenants": state.directory.tenants().len(),
        "model_groups": state.balancer.groups().len(),
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut budgets = Vec::with_capacity(state.directory.tenants().len());
    for t in state.directory.tenants() {
        budgets.push(state.ledger.status(t).await);
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
