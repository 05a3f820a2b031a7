//! A whole run: start the stack (or use an external target), drive every tenant's open-loop
//! schedule, collect one record per request, and hand them to `reports`.
//!
//! One dispatcher walks the merged open-loop plan in time order and spawns each request at its
//! intended time; each closed-loop user is a task that sends, reads to the end, thinks and
//! sends again. Requests report back over a channel to a collector that feeds the progress
//! bar. Nothing is shared per request but that channel (and, for closed-loop users, one atomic
//! id counter), so the harness adds no lock contention to what it measures.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::ProgressBar;
use reports::{Outcome, RequestRecord};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{HttpClient, RequestSpec, execute};
use crate::error::RunError;
use crate::prompt::{ChatBody, system_prompt};
use crate::scenario::Scenario;
use crate::schedule::{self, PlannedRequest};

/// Where the requests go.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL of an OpenAI-compatible API, ending in `/v1`.
    pub base_url: String,
    /// One API key per tenant, in scenario order (`None`: send no Authorization header).
    pub keys: Vec<Option<String>>,
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Results directory; default `results/<scenario>-<UTC timestamp>`.
    pub out_dir: Option<PathBuf>,
    /// An external OpenAI-compatible base URL instead of the embedded stack.
    pub target: Option<String>,
    /// Progress bar to drive (the binary decides whether it is visible).
    pub progress: Option<ProgressBar>,
    /// Run only shard `(i, n)` of the tenants (see [`Scenario::shard`]).
    pub shard: Option<(u32, u32)>,
    /// A previous summary and the allowed regression (0.1 = 10 %): comparisons become gates.
    pub baseline: Option<(reports::Summary, f64)>,
}

/// What a finished run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub dir: PathBuf,
    pub summary: reports::Summary,
}

/// Wall-clock time as `YYYYMMDD-HHMMSS` (UTC), for directory names.
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's public-domain derivation.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What [`drive`] measured.
#[derive(Debug)]
pub struct Driven {
    /// One record per planned request, in completion order.
    pub records: Vec<RequestRecord>,
    /// Wall-clock time of the schedule's t0 (every `*_start_ms` is relative to it).
    pub t0_wall: SystemTime,
}

/// Drives the scenario's schedule against `target` and returns one record per request sent.
/// `t0` is placed a little in the future so the first sends are not late.
///
/// This is the one dispatch engine for every arrival mode: open-loop requests go out in plan
/// order at their intended times (each body built before its wait, so building it never makes
/// a send late), and every closed-loop user runs as its own task beside them.
pub async fn drive(
    s: &Scenario,
    target: &Target,
    progress: Option<&ProgressBar>,
    shutdown: &CancellationToken,
) -> Result<Driven, RunError> {
    let schedule::Plan { open, users } = schedule::build_plan(s);
    let client = HttpClient::new().map_err(RunError::Client)?;
    let url = format!("{}/chat/completions", target.base_url.trim_end_matches('/'));
    let systems: Vec<Arc<str>> = s
        .tenants
        .iter()
        .map(|t| Arc::from(system_prompt(s.seed, &t.id, t.system_prompt_tokens)))
        .collect();
    wire::tokens::warm_up();
    if let Some(pb) = progress {
        pb.set_length(open.len() as u64);
        pb.set_position(0);
    }

    let (tx, mut rx) = mpsc::channel::<RequestRecord>(1024);
    let collector = {
        let progress = progress.cloned();
        let expected = open.len();
        tokio::spawn(async move {
            let mut records = Vec::with_capacity(expected);
            let (mut ok, mut limited, mut failed) = (0u64, 0u64, 0u64);
            while let Some(r) = rx.recv().await {
                match r.outcome {
                    Outcome::Ok => ok += 1,
                    Outcome::RateLimited | Outcome::BudgetExceeded => limited += 1,
                    _ => failed += 1,
                }
                if let Some(pb) = &progress {
                    pb.inc(1);
                    pb.set_message(format!("ok {ok} · limited {limited} · failed {failed}"));
                }
                records.push(r);
            }
            records
        })
    };

    let tracker = TaskTracker::new();
    let lead = Duration::from_millis(100);
    let t0 = Instant::now() + lead;
    let t0_wall = SystemTime::now() + lead;
    let timeout = Duration::from_secs_f64(s.request_timeout_s);
    let at = |at_s: f64| t0 + Duration::from_secs_f64(at_s.max(0.0));

    let horizon = at(s.duration_s);
    let mut interrupted = false;

    // Closed-loop users are tasks of their own, as k6's virtual users are: each sends, reads
    // the response to its end, thinks, and sends again until the run's horizon. Routing every
    // one of their requests through the dispatcher below cost a channel hop, a task spawn and
    // a dispatcher turn per request, a third of the load generator's own time at ~100k
    // requests/s (benches/loadgen_rate).
    if !users.is_empty() {
        let shared = Arc::new(UserShared {
            scenario: s.clone(),
            target: target.clone(),
            url: url.clone(),
            systems: systems.clone(),
            client: client.clone(),
            next_id: std::sync::atomic::AtomicU64::new(open.len() as u64),
            t0,
            timeout,
            horizon,
            progress: progress.cloned(),
        });
        for user in users {
            let first = at(user.first_at_s);
            if first >= horizon {
                continue;
            }
            let shared = Arc::clone(&shared);
            let tx = tx.clone();
            let cancel = shutdown.clone();
            tracker.spawn(run_user(user, first, shared, tx, cancel));
        }
    }

    for p in open {
        // The body is built before the wait, so building it never makes a send late.
        let intended = at(p.at_s);
        let mut spec = request_spec(s, target, &url, &systems, &p, t0, intended, timeout);
        if shutdown.is_cancelled() {
            interrupted = true;
            break;
        }
        if intended > Instant::now() {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => { interrupted = true; break; }
                _ = wire::pacer::wait_until(intended) => {}
            }
        }
        spec.dispatched = Some(Instant::now());
        let client = client.clone();
        let tx = tx.clone();
        let cancel = shutdown.clone();
        tracker.spawn(async move {
            tokio::select! {
                rec = execute(&client, spec) => { let _ = tx.send(rec).await; }
                _ = cancel.cancelled() => {}
            }
        });
    }
    drop(tx);
    tracker.close();
    tracker.wait().await;
    let records = collector
        .await
        .map_err(|e| RunError::Client(format!("collector failed: {e}")))?;
    if interrupted || shutdown.is_cancelled() {
        return Err(RunError::Interrupted);
    }
    Ok(Driven { records, t0_wall })
}

/// What every closed-loop user task reads.
struct UserShared {
    scenario: Scenario,
    target: Target,
    url: String,
    systems: Vec<Arc<str>>,
    client: HttpClient,
    /// Closed-loop request ids, after the open-loop plan's.
    next_id: std::sync::atomic::AtomicU64,
    t0: Instant,
    timeout: Duration,
    /// No request is intended at or after this.
    horizon: Instant,
    progress: Option<ProgressBar>,
}

/// One closed-loop user: send at `first`, then after every response its think time later,
/// until the horizon or shutdown.
async fn run_user(
    mut user: schedule::ClosedUser,
    first: Instant,
    shared: Arc<UserShared>,
    tx: mpsc::Sender<RequestRecord>,
    cancel: CancellationToken,
) {
    let sh = &*shared;
    let think = Duration::from_secs_f64(user.think_time_s);
    let mut intended = first;
    while intended < sh.horizon && !cancel.is_cancelled() {
        if intended > Instant::now() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = wire::pacer::wait_until(intended) => {}
            }
        }
        let id = sh
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let at_s = intended.saturating_duration_since(sh.t0).as_secs_f64();
        let p = user.next(&sh.scenario, at_s, id);
        if let Some(pb) = &sh.progress {
            pb.inc_length(1);
        }
        let mut spec = request_spec(
            &sh.scenario,
            &sh.target,
            &sh.url,
            &sh.systems,
            &p,
            sh.t0,
            intended,
            sh.timeout,
        );
        spec.dispatched = Some(Instant::now());
        tokio::select! {
            rec = execute(&sh.client, spec) => {
                if tx.send(rec).await.is_err() {
                    return;
                }
            }
            _ = cancel.cancelled() => return,
        }
        intended = Instant::now() + think;
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "plain data assembled in one place"
)]
fn request_spec(
    s: &Scenario,
    target: &Target,
    url: &str,
    systems: &[Arc<str>],
    p: &PlannedRequest,
    t0: Instant,
    intended: Instant,
    timeout: Duration,
) -> RequestSpec {
    let t = &s.tenants[p.tenant];
    let body = ChatBody {
        model: &p.model,
        system: &systems[p.tenant],
        system_tokens: t.system_prompt_tokens,
        prompt_tokens: p.prompt_tokens,
        max_tokens: p.output_tokens,
        text_seed: p.text_seed,
        ignore_eos: s.ignore_eos,
    }
    .to_bytes();
    RequestSpec {
        id: p.id,
        tenant: t.id.clone(),
        group: t.group.clone(),
        model: p.model.clone(),
        warmup: p.at_s < s.warmup_s,
        url: url.to_string(),
        api_key: target.keys.get(p.tenant).cloned().flatten(),
        body: bytes::Bytes::from(body),
        planned_prompt_tokens: p.prompt_tokens,
        t0,
        intended,
        dispatched: None,
        timeout,
    }
}

/// Each tenant's key for an external target: the variable its `api_key_env` names (which must
/// be set), else `TENANTBENCH_KEY_<TENANT_ID>`, else `TENANTBENCH_API_KEY`, else none.
pub fn external_keys(
    s: &Scenario,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Option<String>>, RunError> {
    let shared = env("TENANTBENCH_API_KEY");
    s.tenants
        .iter()
        .map(|t| {
            if let Some(var) = &t.api_key_env {
                return env(var).map(Some).ok_or_else(|| {
                    RunError::Target(format!(
                        "tenant {}: api_key_env names ${var}, which is not set",
                        t.id
                    ))
                });
            }
            let var = format!("TENANTBENCH_KEY_{}", t.id.to_uppercase().replace('-', "_"));
            Ok(env(&var).or_else(|| shared.clone()))
        })
        .collect()
}

/// The `RunData` reports need, from a scenario and its records.
pub fn run_data(
    s: &Scenario,
    records: Vec<RequestRecord>,
    started: SystemTime,
    target: &str,
    engines: Vec<reports::EngineInfo>,
) -> reports::RunData {
    let mut cost = s.cost.clone();
    cost.server_gbp_per_month *= f64::from(s.gpu_count.max(1));
    let tenants = s
        .tenants
        .iter()
        .map(|t| reports::TenantInfo {
            id: t.id.clone(),
            group: t.group.clone(),
            model: t
                .models
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            lora: t.models.first().and_then(|(m, _)| t.adapter_for(m)),
            slo: t.slo.clone(),
        })
        .collect();
    let mut notes = Vec::new();
    if s.gpu_count > 1 {
        notes.push(format!(
            "Server cost counts {} GPUs at £{:.0}/month each.",
            s.gpu_count, s.cost.server_gbp_per_month
        ));
    }
    reports::RunData {
        scenario: s.name.clone(),
        seed: s.seed,
        started_at_unix_ms: started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        duration_s: s.duration_s - s.warmup_s,
        warmup_s: s.warmup_s,
        target: target.to_string(),
        tenants,
        records,
        cost,
        gates: s.gates.clone(),
        engines,
        notes,
        slo: s.slo.clone(),
        group_slos: s.group_slos.clone(),
        isolation: s.isolation.clone(),
        shard: None,
    }
}

/// The whole main job: validate capacity, start the stack (unless `opts.target`), drive the
/// schedule, write the results directory. The caller prints the summary.
pub async fn run(
    s: &Scenario,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunOutcome, RunError> {
    let scenario_tenants: Vec<String> = s.tenants.iter().map(|t| t.id.clone()).collect();
    if opts.shard.is_some() && opts.target.is_none() {
        // Shards split one system's load across load-generating machines. On the embedded
        // stack every shard would simulate a GPU of its own, and the merged result would
        // claim n GPUs' capacity for the price of one.
        return Err(RunError::Target(
            "--shard needs --target: shards split the tenants of one system under test across \
             machines; with the embedded stack each shard would simulate its own GPU"
                .into(),
        ));
    }
    if opts.target.is_none() {
        // Before anything is written or bound: the embedded stack must fit its GPUs and serve
        // at least some of each tenant's requests.
        crate::stack::check_capacity(s)?;
    }
    let mut sharded;
    let s = match opts.shard {
        Some((i, n)) => {
            sharded = s.clone();
            sharded.shard(i, n).map_err(RunError::Target)?;
            &sharded
        }
        None => s,
    };
    let started = SystemTime::now();
    let dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| Path::new("results").join(format!("{}-{}", s.name, utc_stamp(started))));
    // Before the stack starts, not at the run's end: the embedded stack writes its router
    // config and audit log here as it starts, so a previous run's files must be gone by then,
    // and a directory that is no previous result is refused before any load is sent. After
    // the checks above, so a refused run leaves the previous result alone.
    reports::prepare_results_dir(&dir).map_err(|e| match e {
        reports::ReportError::NotAResultsDir { .. } => RunError::OutDir(e.to_string()),
        other => RunError::Results {
            dir: dir.display().to_string(),
            message: other.to_string(),
        },
    })?;

    let stack_token = shutdown.child_token();
    // Held until the run ends; the servers stop when stack_token is cancelled.
    let mut _stack = None;
    let (target, label, engines) = match &opts.target {
        Some(url) => {
            let parsed =
                url::Url::parse(url).map_err(|e| RunError::Target(format!("'{url}': {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(RunError::Target(format!(
                    "'{url}': only http and https URLs are supported"
                )));
            }
            let keys = external_keys(s, |var| std::env::var(var).ok())?;
            (
                Target {
                    base_url: url.trim_end_matches('/').to_string(),
                    keys,
                },
                url.clone(),
                Vec::new(),
            )
        }
        None => {
            let stack = crate::stack::start(s, &stack_token, Some(&dir)).await?;
            let engines = s
                .engines
                .iter()
                .zip(&stack.engines)
                .map(|(e, (_, h))| reports::EngineInfo {
                    name: e.name.clone(),
                    gpu: e.config.gpu.clone(),
                    model: e.config.model.clone(),
                    precision: e.config.precision.clone(),
                    kv_cache_tokens: h.plan().kv_cache_tokens,
                    max_loras: e.config.max_loras,
                    url: h.base_url(),
                })
                .collect();
            let write = std::fs::write(dir.join("router-config.yaml"), &stack.router_yaml_redacted);
            write.map_err(|e| RunError::Results {
                dir: dir.display().to_string(),
                message: e.to_string(),
            })?;
            let target = Target {
                base_url: stack.router_url.clone(),
                keys: stack.keys.iter().cloned().map(Some).collect(),
            };
            _stack = Some(stack);
            (target, "embedded".to_string(), engines)
        }
    };

    let driven = drive(s, &target, opts.progress.as_ref(), &shutdown).await;
    stack_token.cancel();
    let driven = driven?;
    if let Some(pb) = &opts.progress {
        pb.finish_and_clear();
    }
    let mut data = run_data(s, driven.records, driven.t0_wall, &label, engines);
    if let Some((i, n)) = opts.shard {
        data.shard = Some(reports::ShardInfo {
            index: i,
            count: n,
            scenario_tenants,
        });
        data.notes.push(format!(
            "shard {i}/{n}: {} of the scenario's tenants; merge shards with `tenantbench report merge`",
            s.tenants.len()
        ));
    }
    let out = dir.clone();
    let baseline = opts.baseline.clone();
    let summary = tokio::task::spawn_blocking(move || {
        let mut summary = reports::summarize(&data);
        if let Some((before, max)) = &baseline {
            summary
                .gates
                .extend(reports::baseline::compare(&summary, before, *max));
        }
        reports::write_results(&out, &data, &summary).map(|()| summary)
    })
    .await
    .map_err(|e| RunError::Results {
        dir: dir.display().to_string(),
        message: e.to_string(),
    })?
    .map_err(|e| RunError::Results {
        dir: dir.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(RunOutcome { dir, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_formats_known_instants() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101-000000");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_323_899); // 2026-12-03 18:51:39 UTC
        assert_eq!(utc_stamp(t), "20261203-185139");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_stamp(leap), "20000229-000000");
    }
}
