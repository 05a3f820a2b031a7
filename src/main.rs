//! The `tenantbench` binary: parses the command line, sets up logging and shutdown, and calls the
//! library that owns each subcommand. Only this file writes to stdout.

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command, MockVllmArgs};

/// Exit codes (DESIGN §6).
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_GATE: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        // The embedded stack runs one router of ours: its start-up warning that limits are per
        // process (true, and vital for replicas) is noise above the run's own table.
        Command::Run(_) => "warn,router::server=error",
        Command::Check(_) => "warn",
        Command::MockVllm(_) | Command::Router(_) => "info",
        Command::Calibrate(_) | Command::Report(_) => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> ExitCode {
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    match command {
        Command::Check(args) => match loadgen::load(&args.scenario)
            .map_err(loadgen::RunError::from)
            .and_then(|s| loadgen::check::check(&s))
        {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string(), e.exit_code()),
        },
        Command::Run(args) => run(args, shutdown).await,
        Command::Report(cli::ReportCommand::Merge(args)) => {
            // Reading, summarising and writing are synchronous and CPU-bound.
            match tokio::task::spawn_blocking(move || merge(args)).await {
                Ok(code) => code,
                Err(e) => fail(&format!("merge failed: {e}"), i32::from(EXIT_RUNTIME)),
            }
        }
        Command::MockVllm(args) => match mock_vllm(args, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}"), i32::from(EXIT_USAGE)),
        },
        Command::Calibrate(args) => match calibrate(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}"), i32::from(EXIT_USAGE)),
        },
        Command::Router(args) => match router(args, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}"), i32::from(EXIT_USAGE)),
        },
    }
}

fn fail(message: &str, code: i32) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_RUNTIME))
}

async fn run(args: cli::RunArgs, shutdown: CancellationToken) -> ExitCode {
    let scenario = match loadgen::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string(), i32::from(EXIT_USAGE)),
    };
    let baseline = match read_baseline(&args.baseline) {
        Ok(b) => b,
        Err(e) => return fail(&format!("{e:#}"), i32::from(EXIT_USAGE)),
    };
    let quiet = args.output.quiet || args.output.json;
    let progress = if quiet {
        None
    } else {
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} requests  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        pb.set_style(style);
        Some(pb)
    };
    let opts = loadgen::RunOptions {
        out_dir: args.out,
        target: args.target,
        progress,
        shard: args.shard,
        baseline,
    };
    match loadgen::run(&scenario, opts, shutdown).await {
        Ok(outcome) => verdict(&outcome.summary, &outcome.dir, &args.output),
        Err(e) => fail(&e.to_string(), e.exit_code()),
    }
}

/// A run in which requests were sent and none succeeded measured nothing: that is a runtime
/// failure (exit 1) whatever the gates say, with the most common outcome named.
fn nothing_succeeded(summary: &reports::Summary) -> Option<String> {
    let o = &summary.overall.outcomes;
    if o.total() == 0 {
        // Nothing in the measured window (every request fell in the warm-up, or the rates are
        // too low for the duration): there is no result to pass a gate with.
        return Some(
            "no request was measured: none was sent after the warm-up; lengthen duration_s, \
             shorten warmup_s or raise the rates"
                .into(),
        );
    }
    if o.ok > 0 {
        return None;
    }
    let mut counts: Vec<(&str, u64)> = reports::Outcome::ALL
        .iter()
        .map(|k| (k.as_str(), o.get(*k)))
        .filter(|(_, n)| *n > 0)
        .collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    let listed: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    Some(format!(
        "no request succeeded ({}); the results directory still holds every request and its error",
        listed.join(", ")
    ))
}

/// `tenantbench report merge`: shards → one run → the same summary, files and verdicts as `run`.
fn merge(args: cli::MergeArgs) -> ExitCode {
    let baseline = match read_baseline(&args.baseline) {
        Ok(b) => b,
        Err(e) => return fail(&format!("{e:#}"), i32::from(EXIT_USAGE)),
    };
    let data = match reports::merge::merge_dirs(&args.shards) {
        Ok(d) => d,
        Err(e) => return fail(&e.to_string(), i32::from(EXIT_USAGE)),
    };
    let missing = reports::merge::missing_tenants(&data);
    if !missing.is_empty() && !args.allow_partial {
        return fail(
            &format!(
                "{} of the scenario's tenants are in no shard given (is a shard missing?): {}; \
                 pass --allow-partial to merge anyway",
                missing.len(),
                missing.join(", ")
            ),
            i32::from(EXIT_USAGE),
        );
    }
    let mut summary = reports::summarize(&data);
    if let Some((before, max)) = &baseline {
        summary
            .gates
            .extend(reports::baseline::compare(&summary, before, *max));
    }
    // After the shards are read, so `--out` may name one of them.
    if let Err(e) = reports::prepare_results_dir(&args.out) {
        return fail(&e.to_string(), prepare_exit_code(&e));
    }
    if let Err(e) = reports::write_results(&args.out, &data, &summary) {
        return fail(&e.to_string(), i32::from(EXIT_RUNTIME));
    }
    verdict(&summary, &args.out, &args.output)
}

/// A `--out` naming someone else's directory is bad usage; failing to clear or create it is not.
fn prepare_exit_code(e: &reports::ReportError) -> i32 {
    match e {
        reports::ReportError::NotAResultsDir { .. } => i32::from(EXIT_USAGE),
        _ => i32::from(EXIT_RUNTIME),
    }
}

/// The `--baseline` summary and the allowed regression, when one was given.
fn read_baseline(args: &cli::BaselineArgs) -> anyhow::Result<Option<(reports::Summary, f64)>> {
    let Some(path) = &args.baseline else {
        return Ok(None);
    };
    let max = reports::baseline::parse_regression(&args.max_regression)
        .map_err(|e| anyhow::anyhow!("--max-regression: {e}"))?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--baseline {}: cannot read", path.display()))?;
    let summary: reports::Summary = serde_json::from_str(&text).with_context(|| {
        format!(
            "--baseline {}: not a tenantbench summary.json",
            path.display()
        )
    })?;
    Ok(Some((summary, max)))
}

/// Prints the outcome and picks the exit code: 1 when no request succeeded, 3 when a gate, an
/// SLO or isolation failed, with one line per failure on stderr.
fn verdict(
    summary: &reports::Summary,
    dir: &std::path::Path,
    output: &cli::OutputArgs,
) -> ExitCode {
    let (quiet, json) = (output.quiet || output.json, output.json);
    if json {
        match serde_json::to_string(summary) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(&format!("cannot serialise the summary: {e}"), 1),
        }
    } else {
        if !quiet {
            println!("{}", reports::render_table(summary));
        }
        println!("results: {}", dir.display());
    }
    let mut failures: Vec<String> = summary.failed_gates().map(|g| g.describe()).collect();
    let mut slo = |scope: String, v: &Option<reports::SloVerdict>| {
        for c in v.iter().flat_map(|v| &v.checks).filter(|c| !c.passed) {
            failures.push(format!(
                "FAIL slo {scope}: {} = {} (must be <= {})",
                c.metric,
                c.observed
                    .map_or_else(|| "no data".into(), |v| format!("{v:.3}")),
                c.threshold
            ));
        }
    };
    slo("overall".into(), &summary.slo);
    for g in &summary.groups {
        slo(format!("group {}", g.group), &g.slo);
    }
    for t in &summary.tenants {
        slo(format!("tenant {}", t.tenant), &t.slo);
    }
    if let Some(i) = &summary.isolation {
        if !i.victims_passed && i.victims.iter().chain(i.pooled.iter()).all(|v| !v.judged) {
            failures.push(format!(
                "FAIL isolation: no victim ratio could be judged (each phase needs {} {} values)",
                i.min_samples, i.metric
            ));
        }
        for v in i
            .victims
            .iter()
            .chain(i.pooled.iter())
            .filter(|v| !v.passed)
        {
            failures.push(format!(
                "FAIL isolation: victim {} {} ratio {} (must be <= {})",
                v.tenant,
                i.metric,
                v.ratio
                    .map_or_else(|| "no data".into(), |r| format!("{r:.2}")),
                i.max_ratio
            ));
        }
        for a in i.aggressors.iter().filter(|a| !a.limits_held) {
            failures.push(format!(
                "FAIL isolation: aggressor {} exceeded its limits ({} requests/min accepted, rpm_limit {:?}; {} tokens/min, tpm_limit {:?})",
                a.tenant, a.max_accepted_requests_per_min, a.rpm_limit, a.max_accepted_tokens_per_min, a.tpm_limit
            ));
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    if let Some(why) = nothing_succeeded(summary) {
        fail(&why, i32::from(EXIT_RUNTIME))
    } else if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_GATE)
    }
}

fn engine_config(a: &MockVllmArgs) -> anyhow::Result<mocks::EngineConfig> {
    let model = a
        .model
        .clone()
        .or_else(|| a.model_tag.clone())
        .context("give the model to serve: `tenantbench mock-vllm MODEL` or --model MODEL")?;
    let precision = match (&a.quantization, a.dtype.as_str()) {
        (Some(q), _) => q.clone(),
        (None, "auto" | "bfloat16" | "bf16") => "bf16".to_string(),
        (None, "float16" | "half" | "fp16") => "fp16".to_string(),
        (None, other) => {
            anyhow::bail!("--dtype: unsupported value '{other}' (auto, bfloat16, float16)")
        }
    };
    let lora_modules = a
        .lora_modules
        .iter()
        .map(|m| mocks::LoraModule::parse(m).map_err(|e| anyhow::anyhow!("--lora-modules: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(mocks::EngineConfig {
        gpu: a.gpu.clone(),
        model,
        precision,
        served_model_name: a.served_model_name.first().cloned(),
        served_model_aliases: a.served_model_name.iter().skip(1).cloned().collect(),
        enable_lora: a.enable_lora,
        lora_modules,
        max_loras: a.max_loras,
        max_lora_rank: a.max_lora_rank,
        max_cpu_loras: a.max_cpu_loras,
        max_num_seqs: a.max_num_seqs,
        max_num_batched_tokens: a.max_num_batched_tokens,
        gpu_memory_utilization: a.gpu_memory_utilization,
        max_model_len: a.max_model_len,
        seed: a.seed,
        default_max_tokens: a.default_max_tokens,
        ..mocks::EngineConfig::default()
    })
}

async fn mock_vllm(args: MockVllmArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = engine_config(&args)?;
    if !cfg.lora_modules.is_empty() && !cfg.enable_lora {
        anyhow::bail!("--lora-modules needs --enable-lora (as with vllm serve)");
    }
    mocks::plan_memory(&cfg)?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    mocks::serve(listener, cfg, async move { shutdown.cancelled().await }).await?;
    Ok(())
}

async fn router(args: cli::RouterArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = router::config::load(&args.config)?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    router::serve(listener, cfg, async move { shutdown.cancelled().await }).await?;
    Ok(())
}

async fn calibrate(args: cli::CalibrateArgs) -> anyhow::Result<()> {
    let file = args.file.display().to_string();
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("{file}: cannot read"))?;
    let rows = mocks::calibration::parse_rows(&text).with_context(|| file.clone())?;
    // The replay runs in simulated time and is CPU-bound: keep it off the async workers.
    let results = tokio::task::spawn_blocking(move || mocks::calibration::calibrate(&rows)).await?;
    print!("{}", mocks::calibration::render_table(&results));
    // A file none of whose rows could run is the wrong file (or not a calibration CSV at all):
    // a usage error, not a calibration with nothing to say.
    if !results.iter().any(|r| r.predicted.is_ok()) {
        anyhow::bail!(
            "{file}: no row could be replayed ({} rows; see the reasons above); the columns are \
             documented in shared/calibration/README.md",
            results.len()
        );
    }
    if let Some(out) = &args.out {
        let csv =
            mocks::calibration::predictions_csv(&text, &results).with_context(|| file.clone())?;
        std::fs::write(out, csv).with_context(|| format!("{}: cannot write", out.display()))?;
        println!("predictions: {}", out.display());
    }
    Ok(())
}

/// Cancels `token` on Ctrl-C or SIGTERM.
async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    token.cancel();
}
