//! A whole run: start the stack (or use an external target), drive every tenant's open-loop
//! schedule, collect one record per request, and hand them to `reports`.
//!
//! One dispatcher walks the merged plan in time order and spawns each request at its intended
//! time; the requests report back over a channel to a collector that feeds the progress bar.
//! Nothing is shared per request but that channel, so the harness adds no lock contention to
//! what it measures.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
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
/// This is the one dispatch engine for every arrival mode: it always sends the earliest pending
/// request, taken either from the open-loop plan or from the closed-loop users whose previous
/// request has finished (they report back over `done`). Open-loop bodies are built before the
/// wait, so building them never makes a send late.
pub async fn drive(
    s: &Scenario,
    target: &Target,
    progress: Option<&ProgressBar>,
    shutdown: &CancellationToken,
) -> Result<Driven, RunError> {
    let schedule::Plan { open, mut users } = schedule::build_plan(s);
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

    // Closed-loop users waiting for their next send, earliest first: (time, user index).
    let mut waiting: BinaryHeap<Reverse<(Instant, usize)>> = users
        .iter()
        .enumerate()
        .map(|(i, u)| Reverse((at(u.first_at_s), i)))
        .collect();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut in_flight_users = 0usize;
    let mut next_id = open.len() as u64;
    let horizon = at(s.duration_s);
    let mut open = open.into_iter().peekable();
    // The open-loop head, prepared before its wait.
    let mut ready: Option<RequestSpec> = None;
    let mut interrupted = false;

    loop {
        if ready.is_none()
            && let Some(p) = open.peek()
        {
            ready = Some(request_spec(
                s,
                target,
                &url,
                &systems,
                p,
                t0,
                at(p.at_s),
                timeout,
            ));
        }
        let open_at = ready.as_ref().map(|r| r.intended);
        let user_at = waiting.peek().map(|Reverse((t, _))| *t);
        let (intended, from_user) = match (open_at, user_at) {
            (Some(o), Some(u)) if u < o => (u, true),
            (Some(o), _) => (o, false),
            (None, Some(u)) => (u, true),
            (None, None) if in_flight_users == 0 => break,
            (None, None) => {
                tokio::select! {
                    d = done_rx.recv() => {
                        if let Some((u, end)) = d {
                            in_flight_users -= 1;
                            requeue(&mut waiting, &users, u, end, horizon);
                        }
                    }
                    _ = shutdown.cancelled() => { interrupted = true; break; }
                }
                continue;
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => { interrupted = true; break; }
            d = done_rx.recv() => {
                // A user finished while we waited: its next send may come first.
                if let Some((u, end)) = d {
                    in_flight_users -= 1;
                    requeue(&mut waiting, &users, u, end, horizon);
                }
                continue;
            }
            _ = wire::pacer::wait_until(intended) => {}
        }
        let (spec, user) = if from_user {
            let Some(Reverse((_, u))) = waiting.pop() else {
                continue;
            };
            let p = users[u].next(
                s,
                intended.saturating_duration_since(t0).as_secs_f64(),
                next_id,
            );
            next_id += 1;
            in_flight_users += 1;
            if let Some(pb) = progress {
                pb.inc_length(1);
            }
            let spec = request_spec(s, target, &url, &systems, &p, t0, intended, timeout);
            (spec, Some(u))
        } else {
            open.next();
            match ready.take() {
                Some(spec) => (spec, None),
                None => continue,
            }
        };
        let mut spec = spec;
        spec.dispatched = Some(Instant::now());
        let client = client.clone();
        let tx = tx.clone();
        let done = done_tx.clone();
        let cancel = shutdown.clone();
        tracker.spawn(async move {
            tokio::select! {
                rec = execute(&client, spec) => {
                    let _ = tx.send(rec).await;
                    if let Some(u) = user {
                        let _ = done.send((u, Instant::now()));
                    }
                }
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

/// Puts a closed-loop user back in line after its think time, unless that is past the run.
fn requeue(
    waiting: &mut BinaryHeap<Reverse<(Instant, usize)>>,
    users: &[schedule::ClosedUser],
    u: usize,
    finished: Instant,
    horizon: Instant,
) {
    let Some(user) = users.get(u) else { return };
    let next = finished + Duration::from_secs_f64(user.think_time_s);
    if next < horizon {
        waiting.push(Reverse((next, u)));
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
    std::fs::create_dir_all(&dir).map_err(|e| RunError::Results {
        dir: dir.display().to_string(),
        message: e.to_string(),
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
