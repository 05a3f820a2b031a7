//! A simulated vLLM server: vLLM's OpenAI-compatible API with token timing from an engine model
//! of vLLM V1 on a given GPU.
//!
//! Layers, from the bottom:
//! - [`catalog`]: GPU, model and precision data (`mocks/catalog/*.toml`, sources cited there);
//! - [`config`]: one `vllm serve` instance's flags ([`EngineConfig`]) and their resolution;
//! - [`memory`]: the start-up memory plan — KV cache size, or vLLM's refusal to start;
//! - [`cost`]: the step-time roofline; [`kv_cache`]: paged blocks with prefix caching;
//!   [`lora`]: adapter registry and caches;
//! - [`engine`]: the pure scheduler core (no tokio, no clock), modelled on vLLM V1;
//! - `driver` + `server`: the core in real time behind axum, streaming vLLM's exact bodies;
//!   [`detokenizer`]: token bytes to text deltas that never split a character;
//! - [`calibration`]: the same core in virtual time, replaying published benchmark runs.
//!
//! Entry points: [`serve`] (a listener and a shutdown future, as every tenantbench server) and
//! [`spawn`] (binds `127.0.0.1:0` for tests and the embedded stack, returns a [`SimHandle`]).

pub mod calibration;
pub mod catalog;
pub mod config;
pub mod cost;
pub mod detokenizer;
mod driver;
pub mod engine;
mod error;
pub mod kv_cache;
pub mod lora;
pub mod memory;
pub mod metrics;
mod request;
mod responses;
mod server;
pub mod timeline;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{EngineConfig, EngineSpec, LoraModule};
pub use error::SimError;
pub use memory::{MemoryNeeds, MemoryPlan, memory_needs, plan_memory, plan_shared_gpu};
pub use server::{MAX_REQUEST_BODY_BYTES, VLLM_VERSION};
pub use timeline::RequestTimeline;

use driver::Shared;

/// A configured engine, planned and ready to serve.
pub struct Simulator {
    shared: Arc<Shared>,
}

impl Simulator {
    /// Resolves the configuration and plans memory (refusing, like vLLM, when the model does
    /// not fit), and logs the KV-cache size as vLLM does.
    pub fn new(cfg: EngineConfig) -> Result<Self, SimError> {
        let spec = cfg.resolve()?;
        let plan = memory::plan_spec(&spec)?;
        let catalog = catalog::Catalog::get()?;
        let engine = engine::Engine::new(&spec, &plan, catalog.lora);
        tracing::info!(
            gpu = %spec.gpu.id,
            model = %spec.model.id,
            precision = %spec.precision.id,
            "Chunked prefill is enabled with max_num_batched_tokens={}.",
            spec.max_num_batched_tokens
        );
        for line in plan.startup_log_lines() {
            tracing::info!("{line}");
        }
        // Load the tokenizer table now, not on the first request (~100 ms).
        wire::tokens::warm_up();
        let _ = wire::tokens::Vocabulary::get();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Self {
            shared: Arc::new(Shared::new(spec, plan, engine, created)),
        })
    }

    pub fn plan(&self) -> &MemoryPlan {
        &self.shared.plan
    }

    pub fn spec(&self) -> &EngineSpec {
        &self.shared.spec
    }

    /// Every request's timeline so far.
    pub fn timelines(&self) -> Vec<RequestTimeline> {
        self.shared.timelines()
    }

    /// Serves on `listener` until `shutdown` completes (in-flight responses then finish).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SimError> {
        let stop_engine = CancellationToken::new();
        let engine_task = tokio::spawn(driver::run(Arc::clone(&self.shared), stop_engine.clone()));
        let app = server::router(Arc::clone(&self.shared));
        // Streams are many small writes: without TCP_NODELAY, Nagle's algorithm holds them back
        // and adds tens of milliseconds to what clients measure.
        let result = axum::serve(
            axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            app,
        )
        .with_graceful_shutdown(shutdown)
        .await;
        stop_engine.cancel();
        let _ = engine_task.await;
        result.map_err(SimError::Io)
    }
}

/// Serves one simulated engine on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    cfg: EngineConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    Simulator::new(cfg)?.serve(listener, shutdown).await
}

/// A running simulator started by [`spawn`].
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<Result<(), SimError>>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn plan(&self) -> &MemoryPlan {
        &self.shared.plan
    }

    /// Every request's timeline so far.
    pub fn timelines(&self) -> Vec<RequestTimeline> {
        self.shared.timelines()
    }

    /// Submits one base-model request in process, without HTTP: the engine schedules it exactly
    /// as a `/v1/completions` request of the same lengths, and its timeline is recorded the same
    /// way (a token counts as handed over when [`InProcessStream::next`] returns it). This
    /// measures the engine loop apart from the HTTP transport.
    pub fn submit_in_process(
        &self,
        request_id: &str,
        prompt_tokens: u32,
        max_tokens: u32,
    ) -> Result<InProcessStream, SimError> {
        let timeline = RequestTimeline {
            request_id: request_id.to_owned(),
            model: "in-process".to_owned(),
            lora: None,
            prompt_tokens,
            arrival: tokio::time::Instant::now(),
            token_times: Vec::new(),
            scheduled_times: Vec::new(),
            finished: false,
        };
        let seq = driver::SeqSpec {
            choice: 0,
            prompt_tokens,
            max_tokens,
            lora: None,
            block_hashes: Vec::new(),
        };
        let sub = self
            .shared
            .submit(vec![seq], timeline)
            .map_err(|e| SimError::Refused(e.to_string()))?;
        Ok(InProcessStream {
            shared: Arc::clone(&self.shared),
            sub,
        })
    }

    /// Waits for the server to stop (after its shutdown token is cancelled).
    pub async fn stopped(self) -> Result<(), SimError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(SimError::Io(std::io::Error::other(e.to_string()))),
        }
    }
}

/// A request submitted with [`SimHandle::submit_in_process`]. Dropping it aborts the request,
/// as a client hanging up does.
pub struct InProcessStream {
    shared: Arc<Shared>,
    sub: driver::Submission,
}

impl InProcessStream {
    /// Waits for the next token: `Some(true)` for the last one, `None` once there are no more.
    pub async fn next(&mut self) -> Option<bool> {
        let ev = self.sub.rx.recv().await?;
        self.shared
            .record_token(&self.sub.timeline, ev.finished, ev.at);
        Some(ev.finished)
    }
}

/// Starts a simulator on `127.0.0.1:0`; returns once it is listening.
pub async fn spawn(cfg: EngineConfig, shutdown: CancellationToken) -> Result<SimHandle, SimError> {
    let sim = Simulator::new(cfg)?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::clone(&sim.shared);
    let task = tokio::spawn(sim.serve(listener, shutdown.cancelled_owned()));
    Ok(SimHandle { addr, shared, task })
}
