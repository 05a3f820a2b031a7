//! The async driver: runs the pure engine core in real (tokio) time for the HTTP server.
//!
//! One task owns the stepping. It keeps a logical clock: step k+1 starts at step k's logical
//! end, or at the moment work arrives when the engine was idle, and it waits (with the precise
//! pacer of `wire::pacer`) until each step's end before handing the step's tokens to the
//! request streams, so timer jitter delays an emission but never accumulates into drift. The
//! hand-off wakes streams [`HANDOFF_CHUNK`] at a time and yields in between, and the latency
//! histograms are updated only after every stream has its token. Requests talk to the driver
//! through [`Shared`]: a short `std::sync::Mutex` section (no `.await` inside) to queue or
//! abort sequences, and an unbounded channel per request on which the driver sends that
//! request's tokens (the driver must never block on a slow client; a request holds at most
//! `max_tokens × n` events).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::EngineSpec;
use crate::engine::{AdmitError, Emitted, Engine, SeqId, SeqRequest};
use crate::memory::MemoryPlan;
use crate::metrics::ServerMetrics;
use crate::timeline::RequestTimeline;

/// One token for a request's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenEvent {
    /// The choice index in the response.
    pub choice: u32,
    pub finished: bool,
    /// The logical end of the step that produced it.
    pub at: Instant,
}

/// Hashes the engine's sequence ids (sequential, never chosen by a client) with one multiply:
/// the step loop looks up every running sequence, and SipHash showed up in its profile.
#[derive(Default)]
struct SeqIdHasher(u64);

impl Hasher for SeqIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type SeqMap<V> = HashMap<SeqId, V, BuildHasherDefault<SeqIdHasher>>;

struct Sink {
    tx: mpsc::UnboundedSender<TokenEvent>,
    choice: u32,
    arrival: Instant,
    last: Option<Instant>,
}

/// Engine state behind the lock.
pub(crate) struct Core {
    pub engine: Engine,
    sinks: SeqMap<Sink>,
    next_seq: SeqId,
    pub request_counter: u64,
    pub metrics: ServerMetrics,
    /// Runtime adapter loads in progress (`/v1/load_lora_adapter` waits out the disk load
    /// before registering), by adapter name. Reserved under this lock together with the
    /// registry check, so two concurrent loads of one name cannot both pass the check.
    pub adapter_loads: HashMap<String, AdapterLoad>,
    /// Identifies each reservation, so a finished load removes only its own entry.
    pub next_adapter_load: u64,
}

/// One runtime adapter load in progress.
pub(crate) struct AdapterLoad {
    pub id: u64,
    pub path: String,
    /// Closed when the load ends (registered, or abandoned because its client went away), so
    /// concurrent calls for the same name can wait for the outcome and then decide.
    pub done: watch::Receiver<()>,
}

/// State shared by the driver task and the HTTP handlers.
pub(crate) struct Shared {
    pub spec: EngineSpec,
    pub plan: MemoryPlan,
    pub epoch: Instant,
    core: Mutex<Core>,
    notify: Notify,
    /// Every request's timeline, each behind its own lock: a token's stream updates only its
    /// own, so thousands of streams do not contend on one lock every step.
    timelines: Mutex<Vec<Timeline>>,
    /// Unix time at start-up, for `created` fields.
    pub created: u64,
}

/// A sequence to submit: choice index, prompt length, output length, adapter, block hashes.
pub(crate) struct SeqSpec {
    pub choice: u32,
    pub prompt_tokens: u32,
    pub max_tokens: u32,
    pub lora: Option<String>,
    pub block_hashes: Vec<u64>,
}

/// One request's timeline, shared by the driver's list and the request's stream.
pub(crate) type Timeline = Arc<Mutex<RequestTimeline>>;

fn lock_timeline(t: &Timeline) -> MutexGuard<'_, RequestTimeline> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a handler gets back for a submitted request.
pub(crate) struct Submission {
    pub rx: mpsc::UnboundedReceiver<TokenEvent>,
    pub _abort_on_drop: AbortGuard,
    pub timeline: Timeline,
}

/// Aborts a request's sequences in the engine when dropped (client disconnect drops the body).
pub(crate) struct AbortGuard {
    shared: Arc<Shared>,
    seqs: Vec<SeqId>,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let mut core = self.shared.lock_core();
        let mut aborted = false;
        for id in &self.seqs {
            core.sinks.remove(id);
            aborted |= core.engine.abort(*id);
        }
        if aborted {
            core.metrics.aborted += 1;
        }
    }
}

impl Shared {
    pub fn new(spec: EngineSpec, plan: MemoryPlan, engine: Engine, created: u64) -> Self {
        Self {
            spec,
            plan,
            epoch: Instant::now(),
            core: Mutex::new(Core {
                engine,
                sinks: SeqMap::default(),
                next_seq: 0,
                request_counter: 0,
                metrics: ServerMetrics::default(),
                adapter_loads: HashMap::new(),
                next_adapter_load: 0,
            }),
            notify: Notify::new(),
            timelines: Mutex::new(Vec::new()),
            created,
        }
    }

    /// The engine lock. A poisoned lock still holds consistent state for our purposes (every
    /// section leaves the engine valid between statements), so recover it instead of panicking.
    pub fn lock_core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_timelines(&self) -> MutexGuard<'_, Vec<Timeline>> {
        self.timelines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Next request number (seeds and generated ids).
    pub fn next_request_number(&self) -> u64 {
        let mut core = self.lock_core();
        core.request_counter += 1;
        core.request_counter
    }

    /// Queues a request's sequences and wakes the driver.
    pub fn submit(
        self: &Arc<Self>,
        seqs: Vec<SeqSpec>,
        mut timeline: RequestTimeline,
    ) -> Result<Submission, AdmitError> {
        // Room for every token up front (bounded, for huge max_tokens), so streams do not
        // reallocate their timelines while thousands of them run in one step's hand-off.
        let expected: u64 = seqs.iter().map(|s| u64::from(s.max_tokens)).sum();
        let room = expected.min(4096) as usize;
        timeline.token_times.reserve(room);
        timeline.scheduled_times.reserve(room);
        let (tx, rx) = mpsc::unbounded_channel();
        let arrival = timeline.arrival;
        let at = arrival.saturating_duration_since(self.epoch);
        let mut ids = Vec::with_capacity(seqs.len());
        {
            let mut core = self.lock_core();
            for s in seqs {
                let id = core.next_seq;
                core.next_seq += 1;
                let req = SeqRequest {
                    id,
                    prompt_tokens: s.prompt_tokens,
                    max_tokens: s.max_tokens,
                    lora: s.lora,
                    block_hashes: s.block_hashes,
                    arrival: at,
                };
                if let Err(e) = core.engine.add(req) {
                    for id in &ids {
                        core.engine.abort(*id);
                        core.sinks.remove(id);
                    }
                    return Err(e);
                }
                core.sinks.insert(
                    id,
                    Sink {
                        tx: tx.clone(),
                        choice: s.choice,
                        arrival,
                        last: None,
                    },
                );
                ids.push(id);
            }
        }
        let timeline = Arc::new(Mutex::new(timeline));
        self.lock_timelines().push(Arc::clone(&timeline));
        self.notify.notify_one();
        Ok(Submission {
            rx,
            _abort_on_drop: AbortGuard {
                shared: Arc::clone(self),
                seqs: ids,
            },
            timeline,
        })
    }

    /// Records that a token of request `timeline`, produced by the step that logically ended
    /// at `scheduled`, was handed to its body now.
    pub fn record_token(&self, timeline: &Timeline, finished: bool, scheduled: Instant) {
        let now = Instant::now();
        let mut t = lock_timeline(timeline);
        t.token_times.push(now);
        t.scheduled_times.push(scheduled);
        t.finished |= finished;
    }

    /// A copy of every request's timeline so far.
    pub fn timelines(&self) -> Vec<RequestTimeline> {
        self.lock_timelines()
            .iter()
            .map(|t| lock_timeline(t).clone())
            .collect()
    }

    /// Hands a step's tokens to their streams and returns what the latency metrics need, so
    /// the caller can record them after the streams have run: with thousands of streams a
    /// step, histogram updates in between would delay every stream's token.
    fn deliver(&self, emitted: &[Emitted], at: Instant, observed: &mut Vec<Observation>) {
        let mut core = self.lock_core();
        let core = &mut *core;
        for e in emitted {
            let Some(sink) = core.sinks.get_mut(&e.seq) else {
                continue;
            };
            // A closed receiver means the body is being dropped; its guard aborts the sequence.
            let _ = sink.tx.send(TokenEvent {
                choice: sink.choice,
                finished: e.finished,
                at,
            });
            let gap = at.saturating_duration_since(sink.last.unwrap_or(sink.arrival));
            observed.push(Observation {
                first: sink.last.is_none(),
                gap: gap.as_secs_f64(),
                finished: e.finished,
                e2e: at.saturating_duration_since(sink.arrival).as_secs_f64(),
            });
            sink.last = Some(at);
            if e.finished {
                core.sinks.remove(&e.seq);
            }
        }
    }

    /// Records one step's latency observations in the Prometheus histograms.
    fn observe(&self, observed: &[Observation]) {
        let mut core = self.lock_core();
        for o in observed {
            if o.first {
                core.metrics.ttft.observe(o.gap);
            } else {
                core.metrics.itl.observe(o.gap);
            }
            if o.finished {
                core.metrics.e2e.observe(o.e2e);
                core.metrics.success_length += 1;
            }
        }
    }
}

/// One emitted token, as the latency histograms see it.
struct Observation {
    /// The request's first token (TTFT) rather than a later one (ITL).
    first: bool,
    /// Seconds since arrival (first token) or since the previous token.
    gap: f64,
    finished: bool,
    /// Seconds since arrival.
    e2e: f64,
}

/// How many streams a step's hand-off wakes before it lets them run. Measured with 2,000
/// streams (`benches/engine_streams`): waking all of them first made the first stream wait for
/// the last one's wake-up (mean lateness 527 us on one thread); 64 at a time gave 310 us, and
/// chunks of 16 or 256 were slower again.
const HANDOFF_CHUNK: usize = 64;

/// Runs the engine until `cancel` fires.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut logical = Instant::now();
    loop {
        // Registered before looking at the engine so a submit in between is not missed.
        let notified = shared.notify.notified();
        let outcome = {
            let mut core = shared.lock_core();
            core.engine
                .step(logical.saturating_duration_since(shared.epoch))
        };
        match outcome {
            Some(o) => {
                let end = logical + o.duration;
                tokio::select! {
                    // Precise pacing: a plain sleep wakes up to a timer tick late, and
                    // every token would reach clients later than the timeline says.
                    _ = wire::pacer::wait_until(end) => {}
                    _ = cancel.cancelled() => return,
                }
                let mut observed = Vec::with_capacity(o.emitted.len());
                for chunk in o.emitted.chunks(HANDOFF_CHUNK) {
                    shared.deliver(chunk, end, &mut observed);
                    // Let the woken streams run before waking more (and before the
                    // bookkeeping): on this worker they would otherwise wait for the whole
                    // hand-off.
                    tokio::task::yield_now().await;
                }
                shared.observe(&observed);
                logical = end;
            }
            None => {
                tokio::select! {
                    _ = notified => {}
                    _ = cancel.cancelled() => return,
                }
                logical = logical.max(Instant::now());
            }
        }
    }
}
