//! Command-line interface: structs only (clap derive). `main.rs` dispatches them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Load-testing and capacity planning for multi-tenant LLM chatbot stacks
/// (router → vLLM with one LoRA per tenant).
#[derive(Debug, Parser)]
#[command(name = "tenantbench", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario end to end on the embedded stack (or an external target) and write results.
    Run(RunArgs),
    /// Validate a scenario and show the GPU memory each engine needs; binds no port.
    Check(CheckArgs),
    /// Serve the simulated vLLM (same flags and API as `vllm serve`).
    MockVllm(MockVllmArgs),
    /// Serve the reference router from a LiteLLM-style config.yaml with a `tenants:` section.
    Router(RouterArgs),
    /// Work with results directories (`report merge`).
    #[command(subcommand)]
    Report(ReportCommand),
    /// Replay published vLLM benchmark runs against the simulator (in simulated time) and print
    /// predicted vs measured with the error per metric.
    Calibrate(CalibrateArgs),
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Merge the results directories of `run --shard i/n` into one, exactly (from every shard's
    /// raw records in run.json), and evaluate gates, SLOs and isolation on the merged result.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Results directories of the shards (each holds run.json).
    #[arg(required = true, num_args = 1..)]
    pub shards: Vec<PathBuf>,
    /// Where to write the merged results directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Merge even when some of the scenario's tenants are in no shard given (a shard is
    /// missing). Without it such a merge is refused: gates judged on part of a run would pass
    /// or fail for the wrong reasons.
    #[arg(long)]
    pub allow_partial: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub baseline: BaselineArgs,
}

/// What `run` and `report merge` print.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// No progress bar and no summary table; only the results directory (and any failing
    /// gate lines, on stderr) are printed.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print summary.json on stdout (one line) instead of the table, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Regression gates against an earlier result, for `run` and `report merge`.
#[derive(Debug, Args)]
pub struct BaselineArgs {
    /// A previous run's summary.json: latency percentiles, rates and error rate must not
    /// regress by more than --max-regression (each comparison becomes a gate).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Allowed regression against --baseline, e.g. 10% (default).
    #[arg(long, default_value = "10%")]
    pub max_regression: String,
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// CSV in the format of shared/calibration/published-runs.csv.
    pub file: PathBuf,
    /// Write the input rows with pred_* columns added to this CSV file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario file (TOML, see scenarios/README.md).
    pub scenario: PathBuf,
    /// Results directory (default: results/<scenario>-<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Send the traffic to this OpenAI-compatible base URL (e.g. http://host:4000/v1) instead of
    /// starting the embedded stack. Keys: TENANTBENCH_KEY_<TENANT_ID> or TENANTBENCH_API_KEY.
    #[arg(long)]
    pub target: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub baseline: BaselineArgs,
    /// Run only shard i of n (0-based, e.g. 0/3): every n-th tenant from i. Merge the shards'
    /// results with `tenantbench report merge`.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(u32, u32)>,
}

fn parse_shard(s: &str) -> Result<(u32, u32), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}': expected i/n, e.g. 0/2"))?;
    let i: u32 = i
        .trim()
        .parse()
        .map_err(|_| format!("'{s}': i is not a number"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("'{s}': n is not a number"))?;
    if n == 0 || i >= n {
        return Err(format!("'{s}': need 0 <= i < n"));
    }
    Ok((i, n))
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Scenario file to validate.
    pub scenario: PathBuf,
}

#[derive(Debug, Args)]
pub struct MockVllmArgs {
    /// Model to serve (as `vllm serve MODEL`); same as --model.
    pub model_tag: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Name(s) the model is served under; the first is used in responses.
    #[arg(long, num_args = 1..)]
    pub served_model_name: Vec<String>,
    /// GPU profile from the simulator's catalogue (ours; vLLM uses the real GPU).
    #[arg(long, default_value = "rtx-5090")]
    pub gpu: String,
    /// Weight dtype: auto, bfloat16, float16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Quantisation: awq, gptq, fp8, w4a16, nvfp4 (overrides --dtype for the weights).
    #[arg(long)]
    pub quantization: Option<String>,
    #[arg(long)]
    pub enable_lora: bool,
    /// Adapters as name=path (several allowed).
    #[arg(long, num_args = 1..)]
    pub lora_modules: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub max_loras: u32,
    #[arg(long, default_value_t = 16)]
    pub max_lora_rank: u32,
    #[arg(long)]
    pub max_cpu_loras: Option<u32>,
    #[arg(long)]
    pub max_num_seqs: Option<u32>,
    #[arg(long)]
    pub max_num_batched_tokens: Option<u32>,
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    #[arg(long)]
    pub max_model_len: Option<u32>,
    /// Output length when a request sets no max_tokens (a simulator has no end-of-sequence).
    #[arg(long, default_value_t = 256)]
    pub default_max_tokens: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct RouterArgs {
    /// LiteLLM-style config.yaml with our `tenants:` section.
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 4000)]
    pub port: u16,
}
