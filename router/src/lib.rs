//! tenantbench's reference router: the OpenAI API in, vLLM (or any OpenAI-compatible engine)
//! out, with the multi-tenant controls a chatbot SaaS puts in front of its GPUs.
//!
//! It reads a LiteLLM proxy `config.yaml` plus a `tenants:` section ([`config`]), resolves
//! bearer keys to tenants ([`tenant`], keys kept only as SHA-256 digests, [`key`]), maps a
//! virtual model to a deployment ([`balancer`]) and rewrites `model` to the tenant's LoRA
//! adapter, enforces per-tenant RPM/TPM/parallel limits ([`limiter`]) and budgets ([`ledger`]),
//! streams SSE through event by event while reading usage ([`relay`], [`proxy`]), falls back to
//! other groups when a deployment fails before any byte reached the client, writes one audit
//! line per request ([`audit`]) and serves `/metrics` ([`metrics`]). Errors become
//! OpenAI-shaped responses in one place ([`error`]); response headers are listed in
//! [`headers`].
//!
//! Every served request leaves a durable row in the spend log ([`store`]: SQLite by default,
//! PostgreSQL with `general_settings.database_url`) before its last byte is released, and
//! budgets resume from it on restart. Limits and budget holds live in process memory
//! ([`limiter::MemoryLimiter`], [`ledger::MemoryLedger`]) or, with a Redis URL, in Redis
//! ([`redis_state`]) so that several router processes enforce one allowance. Keys can be made
//! and managed through LiteLLM's admin API under the master key.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = router::config::load(std::path::Path::new("router.yaml"))?;
//! let token = tokio_util::sync::CancellationToken::new();
//! let handle = router::spawn(cfg, token.clone()).await?;
//! println!("OpenAI base URL: {}", handle.base_url());
//! token.cancel();
//! handle.wait().await?;
//! # Ok(()) }
//! ```

mod admin;
pub mod audit;
pub mod balancer;
pub mod clock;
pub mod config;
pub mod error;
pub mod headers;
pub mod key;
pub mod ledger;
pub mod limiter;
pub mod metrics;
mod proxy;
pub mod redis_state;
pub mod relay;
pub mod scope;
mod server;
pub mod store;
pub mod tenant;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{ConfigError, RouterConfig};
pub use error::ApiError;

use crate::server::{AppState, Writers};

/// Failures of the server itself (not of a request).
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the audit log {path}: {source}")]
    Audit {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the spend database: {0}")]
    Store(String),
    #[error("cannot connect to redis: {0}")]
    Redis(String),
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("the router task failed: {0}")]
    Task(String),
}

/// Serves the router on `listener` until `shutdown` completes, then waits for requests in
/// flight (streams included) to finish and for the audit log to be flushed.
pub async fn serve(
    listener: TcpListener,
    cfg: RouterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RouterError> {
    let (state, writers) = AppState::build(cfg).await?;
    serve_state(listener, state, writers, shutdown).await
}

async fn serve_state(
    listener: TcpListener,
    state: Arc<AppState>,
    writers: Writers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RouterError> {
    let tasks = state.tasks.clone();
    let app = server::app(state.clone());
    // Streams are many small writes: without TCP_NODELAY, Nagle's algorithm holds them back
    // and adds tens of milliseconds to what clients measure.
    axum::serve(
        axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        app,
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(RouterError::Serve)?;
    tasks.close();
    tasks.wait().await;
    // The last AuditLog and SpendLog senders live in the state; dropping it lets the writers
    // drain and stop.
    drop(state);
    writers.spend.finish().await;
    if let Some(w) = writers.audit {
        w.finish().await.map_err(|source| RouterError::Audit {
            path: "(audit log)".into(),
            source,
        })?;
    }
    Ok(())
}

/// Binds `host:port` and serves until `shutdown` (what `tenantbench router` runs).
pub async fn run(
    cfg: RouterConfig,
    host: &str,
    port: u16,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RouterError> {
    let addr = format!("{host}:{port}");
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| RouterError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(RouterError::Serve)?;
    tracing::info!(%local, tenants = cfg.tenants.len(), groups = cfg.groups.len(), "router listening");
    serve(listener, cfg, shutdown).await
}

/// A router started by [`spawn`].
#[derive(Debug)]
pub struct RouterHandle {
    addr: SocketAddr,
    join: JoinHandle<Result<(), RouterError>>,
}

impl RouterHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Waits for the router to stop (after its shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), RouterError> {
        self.join
            .await
            .map_err(|e| RouterError::Task(e.to_string()))?
    }
}

/// Starts the router on `127.0.0.1:0` in a background task; cancel `shutdown` to stop it.
/// Everything that can fail at start-up (binding, opening the audit log) fails here.
pub async fn spawn(
    cfg: RouterConfig,
    shutdown: CancellationToken,
) -> Result<RouterHandle, RouterError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| RouterError::Bind {
            addr: "127.0.0.1:0".into(),
            source,
        })?;
    let addr = listener.local_addr().map_err(RouterError::Serve)?;
    let (state, writers) = AppState::build(cfg).await?;
    let join = tokio::spawn(serve_state(
        listener,
        state,
        writers,
        shutdown.cancelled_owned(),
    ));
    Ok(RouterHandle { addr, join })
}
