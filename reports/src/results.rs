//! The results directory (DESIGN §6): `summary.json`, `requests.csv`, `tenants.csv`,
//! `histograms/*.hlog`, `plots/*.svg`, `report.html`, and `run.json` (the raw run, for merging).
//!
//! A directory is reused only when it holds a previous result: its tenantbench files are removed
//! first, so no file of an earlier run (an embedded run's audit log next to an external run's
//! summary, a plot or histogram no longer drawn) passes for part of the new one. Files
//! tenantbench does not write are never removed, and a non-empty directory that is not a
//! previous result is refused. [`prepare_results_dir`] does this before a run starts, because
//! the embedded stack writes [`STACK_FILES`] while the run is on; [`write_results`] clears a
//! previous result's own files only, since by then the stack files are the current run's.
//!
//! CSV rows are typed ([`RequestRow`], [`TenantRow`]) so the columns are declared once and a
//! consumer can read the files back with the same types. Empty cells mean "no value" (`None`),
//! never zero.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aggregate::METRICS;
use crate::error::ReportError;
use crate::html::render_html;
use crate::interval_log::write_interval_logs;
use crate::plot::{PLOT_FILES, render_plots};
use crate::record::{Outcome, RequestRecord};
use crate::run::RunData;
use crate::summary::{Summary, TenantSummary};

/// File names inside the results directory.
pub const SUMMARY_JSON: &str = "summary.json";
/// One row per request.
pub const REQUESTS_CSV: &str = "requests.csv";
/// One row per tenant.
pub const TENANTS_CSV: &str = "tenants.csv";
/// The self-contained report.
pub const REPORT_HTML: &str = "report.html";
/// Gate, SLO and isolation verdicts as JUnit XML, for CI systems to display.
pub const JUNIT_XML: &str = "junit.xml";
/// The measured window in the layout of `vllm bench serve --save-result`.
pub const VLLM_BENCH_JSON: &str = "vllm-bench.json";
/// Interval logs, one per metric.
pub const HISTOGRAMS_DIR: &str = "histograms";
/// Plots as SVG.
pub const PLOTS_DIR: &str = "plots";
/// The run's [`RunData`] (every record), so `tenantbench report merge` can merge shards from
/// the raw records instead of from percentiles.
pub const RUN_JSON: &str = "run.json";
/// The embedded router's configuration, keys redacted. Written by the load generator
/// (`loadgen/src/run.rs`) once the embedded stack is up, not by [`write_results`].
pub const ROUTER_CONFIG_YAML: &str = "router-config.yaml";
/// The embedded router's audit log. The router opens it for appending as the embedded stack
/// starts (`loadgen/src/stack.rs` points it here), so a previous run's log must be gone by then.
pub const AUDIT_JSONL: &str = "audit.jsonl";
/// What the embedded stack writes into the results directory during the run.
pub const STACK_FILES: [&str; 2] = [ROUTER_CONFIG_YAML, AUDIT_JSONL];
/// What [`write_results`] writes at the top of the directory (besides `histograms/`, `plots/`).
pub const OUTPUT_FILES: [&str; 7] = [
    SUMMARY_JSON,
    RUN_JSON,
    REQUESTS_CSV,
    TENANTS_CSV,
    JUNIT_XML,
    VLLM_BENCH_JSON,
    REPORT_HTML,
];

/// One row of `requests.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRow {
    /// Request id.
    pub id: u64,
    /// Tenant id.
    pub tenant: String,
    /// Tenant group.
    pub group: String,
    /// Model asked for.
    pub model: String,
    /// How it ended.
    pub outcome: Outcome,
    /// HTTP status (0: none).
    pub status: u16,
    /// Sent during warm-up (excluded from every statistic).
    pub warmup: bool,
    /// Intended send time, ms since t0.
    pub intended_start_ms: f64,
    /// Actual send time, ms since t0.
    pub actual_start_ms: f64,
    /// Scheduler lateness: release − intended, ms.
    pub schedule_lateness_ms: f64,
    /// Client-side queueing: actual send − release, ms.
    pub client_queue_ms: f64,
    /// Time to first token from the intended start, ms.
    pub ttft_ms: Option<f64>,
    /// Time to first content token from the intended start, ms.
    pub ttfc_ms: Option<f64>,
    /// Time per output token after the first, ms.
    pub tpot_ms: Option<f64>,
    /// End-to-end latency from the intended start, ms.
    pub e2e_ms: Option<f64>,
    /// Number of chunks with content (inter-chunk gaps + 1; empty when none).
    pub chunks: Option<u64>,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Output tokens counted by tokenizer (no usage from the server).
    pub output_tokens_estimated: bool,
    /// What went wrong.
    pub error: Option<String>,
}

impl From<&RequestRecord> for RequestRow {
    fn from(r: &RequestRecord) -> Self {
        RequestRow {
            id: r.id,
            tenant: r.tenant.clone(),
            group: r.group.clone(),
            model: r.model.clone(),
            outcome: r.outcome,
            status: r.status,
            warmup: r.warmup,
            intended_start_ms: r.intended_start_ms,
            actual_start_ms: r.actual_start_ms,
            schedule_lateness_ms: r.lateness_ms(),
            client_queue_ms: r.client_queue_ms(),
            ttft_ms: r.ttft_ms,
            ttfc_ms: r.ttfc_ms,
            tpot_ms: r.tpot_ms,
            e2e_ms: r.e2e_ms,
            chunks: r.ttft_ms.map(|_| r.chunk_gaps_ms.len() as u64 + 1),
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            output_tokens_estimated: r.output_tokens_estimated,
            error: r.error.clone(),
        }
    }
}

/// One row of `tenants.csv`: the headline statistics and cost of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRow {
    /// Tenant id.
    pub tenant: String,
    /// Group.
    pub group: String,
    /// Model.
    pub model: String,
    /// LoRA adapter.
    pub lora: Option<String>,
    /// Requests in the measured window.
    pub requests: u64,
    /// Successful.
    pub ok: u64,
    /// 429 rate limited.
    pub rate_limited: u64,
    /// Budget refusals.
    pub budget_exceeded: u64,
    /// Other 4xx.
    pub client_error: u64,
    /// 5xx and connection failures.
    pub server_error: u64,
    /// Client timeouts.
    pub timeout: u64,
    /// Error events in streams.
    pub stream_error: u64,
    /// Streams without `[DONE]`.
    pub truncated: u64,
    /// Failed ÷ all.
    pub error_rate: Option<f64>,
    /// Successful requests per second.
    pub requests_per_s: Option<f64>,
    /// Output tokens per second.
    pub output_tokens_per_s: Option<f64>,
    /// TTFT median, ms.
    pub ttft_p50_ms: Option<f64>,
    /// TTFT p90, ms.
    pub ttft_p90_ms: Option<f64>,
    /// TTFT p99, ms.
    pub ttft_p99_ms: Option<f64>,
    /// TPOT median, ms.
    pub tpot_p50_ms: Option<f64>,
    /// TPOT p99, ms.
    pub tpot_p99_ms: Option<f64>,
    /// ITL median, ms.
    pub itl_p50_ms: Option<f64>,
    /// ITL p99, ms.
    pub itl_p99_ms: Option<f64>,
    /// E2E median, ms.
    pub e2e_p50_ms: Option<f64>,
    /// E2E p99, ms.
    pub e2e_p99_ms: Option<f64>,
    /// Prompt tokens per month at the measured rate.
    pub input_tokens_per_month: f64,
    /// Generated tokens per month at the measured rate.
    pub output_tokens_per_month: f64,
    /// Self-hosted share, £ per month.
    pub self_hosted_gbp_per_month: f64,
    /// API equivalent, £ per month.
    pub api_gbp_per_month: f64,
}

impl From<&TenantSummary> for TenantRow {
    fn from(t: &TenantSummary) -> Self {
        let s = &t.stats;
        let o = &s.outcomes;
        TenantRow {
            tenant: t.tenant.clone(),
            group: t.group.clone(),
            model: t.model.clone(),
            lora: t.lora.clone(),
            requests: s.requests,
            ok: o.ok,
            rate_limited: o.rate_limited,
            budget_exceeded: o.budget_exceeded,
            client_error: o.client_error,
            server_error: o.server_error,
            timeout: o.timeout,
            stream_error: o.stream_error,
            truncated: o.truncated,
            error_rate: s.error_rate,
            requests_per_s: s.requests_per_s,
            output_tokens_per_s: s.output_tokens_per_s,
            ttft_p50_ms: s.ttft_ms.p50,
            ttft_p90_ms: s.ttft_ms.p90,
            ttft_p99_ms: s.ttft_ms.p99,
            tpot_p50_ms: s.tpot_ms.p50,
            tpot_p99_ms: s.tpot_ms.p99,
            itl_p50_ms: s.itl_ms.p50,
            itl_p99_ms: s.itl_ms.p99,
            e2e_p50_ms: s.e2e_ms.p50,
            e2e_p99_ms: s.e2e_ms.p99,
            input_tokens_per_month: t.cost.input_tokens_per_month,
            output_tokens_per_month: t.cost.output_tokens_per_month,
            self_hosted_gbp_per_month: t.cost.self_hosted_gbp_per_month,
            api_gbp_per_month: t.cost.api_gbp_per_month,
        }
    }
}

/// Readies `dir` for a new run, before anything of the run is written into it: creates it if
/// needed; if it holds a previous result, removes every file a tenantbench run writes there
/// ([`OUTPUT_FILES`], the histograms and plots, [`STACK_FILES`]) and nothing else. A non-empty
/// directory that is not a previous result is refused with [`ReportError::NotAResultsDir`], so
/// the refusal comes before any load is sent.
pub fn prepare_results_dir(dir: &Path) -> Result<(), ReportError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e));
        }
        Err(e) => return Err(ReportError::io(dir, e)),
    };
    let mut foreign = None;
    for entry in entries {
        let name = entry.map_err(|e| ReportError::io(dir, e))?.file_name();
        if !is_tenantbench_name(&name) {
            foreign = Some(name);
            break;
        }
    }
    // A directory holding only tenantbench's names is a run that stopped before its results
    // (the embedded stack writes its files first): as much ours as a finished one.
    if let Some(name) = foreign
        && !holds_previous_result(dir)
    {
        return Err(ReportError::NotAResultsDir {
            path: dir.to_path_buf(),
            example: PathBuf::from(name),
        });
    }
    remove_tenantbench_files(dir, Clear::WithStackFiles)
}

/// Writes the whole results directory, creating it (and its parents) if needed.
///
/// If `dir` holds a previous result, that result's files are removed first, so a write that
/// fails half-way leaves no earlier run's file beside this one's. [`STACK_FILES`] are kept: by
/// now they may be this run's. Clearing those and refusing a directory that is not a previous
/// result is [`prepare_results_dir`]'s job, before the run; refusing here would throw away a
/// finished run, and would refuse a prepared directory in which the user's own files were kept.
pub fn write_results(dir: &Path, run: &RunData, summary: &Summary) -> Result<(), ReportError> {
    if holds_previous_result(dir) {
        remove_tenantbench_files(dir, Clear::OutputsOnly)?;
    }
    fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;

    let path = dir.join(SUMMARY_JSON);
    let mut json = serde_json::to_vec_pretty(summary).map_err(|source| ReportError::Json {
        path: path.clone(),
        source,
    })?;
    json.push(b'\n');
    fs::write(&path, json).map_err(|e| ReportError::io(&path, e))?;

    // Compact and buffered: it holds every record with its token gaps, the largest file here.
    let path = dir.join(RUN_JSON);
    let file = fs::File::create(&path).map_err(|e| ReportError::io(&path, e))?;
    let mut w = std::io::BufWriter::new(file);
    serde_json::to_writer(&mut w, run).map_err(|source| ReportError::Json {
        path: path.clone(),
        source,
    })?;
    std::io::Write::flush(&mut w).map_err(|e| ReportError::io(&path, e))?;

    write_csv(
        &dir.join(REQUESTS_CSV),
        run.records.iter().map(RequestRow::from),
    )?;
    write_csv(
        &dir.join(TENANTS_CSV),
        summary.tenants.iter().map(TenantRow::from),
    )?;

    let path = dir.join(JUNIT_XML);
    fs::write(&path, crate::junit::render_junit(summary)).map_err(|e| ReportError::io(&path, e))?;
    let path = dir.join(VLLM_BENCH_JSON);
    let bench = serde_json::to_vec(&crate::vllm_bench::vllm_bench_json(run)).map_err(|source| {
        ReportError::Json {
            path: path.clone(),
            source,
        }
    })?;
    fs::write(&path, bench).map_err(|e| ReportError::io(&path, e))?;

    let tenants: Vec<String> = summary.tenants.iter().map(|t| t.tenant.clone()).collect();
    write_interval_logs(&dir.join(HISTOGRAMS_DIR), run, &tenants)?;

    // Plots are drawn once and used twice: as files and inline in the report.
    let plots = render_plots(run, summary).map_err(|e| match e {
        ReportError::Plot { path, message } => ReportError::Plot {
            path: dir.join(path),
            message,
        },
        other => other,
    })?;
    let plots_dir = dir.join(PLOTS_DIR);
    fs::create_dir_all(&plots_dir).map_err(|e| ReportError::io(&plots_dir, e))?;
    for p in &plots {
        let path = plots_dir.join(p.file);
        fs::write(&path, &p.svg).map_err(|e| ReportError::io(&path, e))?;
    }

    let path = dir.join(REPORT_HTML);
    fs::write(&path, render_html(summary, &plots)).map_err(|e| ReportError::io(&path, e))?;
    Ok(())
}

/// Which of a previous run's files [`remove_tenantbench_files`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clear {
    /// What [`write_results`] writes.
    OutputsOnly,
    /// That and what the embedded stack writes during a run.
    WithStackFiles,
}

/// Every file, relative to the results directory, that a tenantbench run may have left there.
fn tenantbench_files(which: Clear) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = OUTPUT_FILES.iter().map(PathBuf::from).collect();
    files.extend(
        METRICS
            .iter()
            .map(|m| Path::new(HISTOGRAMS_DIR).join(format!("{m}.hlog"))),
    );
    files.extend(PLOT_FILES.iter().map(|f| Path::new(PLOTS_DIR).join(f)));
    if which == Clear::WithStackFiles {
        files.extend(STACK_FILES.iter().map(PathBuf::from));
    }
    files
}

/// A name tenantbench writes at the top of a results directory.
fn is_tenantbench_name(name: &OsStr) -> bool {
    OUTPUT_FILES
        .iter()
        .chain(&STACK_FILES)
        .chain(&[HISTOGRAMS_DIR, PLOTS_DIR])
        .any(|n| name == *n)
}

/// Whether `dir` holds a previous tenantbench result.
fn holds_previous_result(dir: &Path) -> bool {
    [SUMMARY_JSON, RUN_JSON]
        .iter()
        .any(|f| dir.join(f).is_file())
}

/// Removes the files of [`tenantbench_files`] from `dir`; any other file stays.
fn remove_tenantbench_files(dir: &Path, which: Clear) -> Result<(), ReportError> {
    for file in tenantbench_files(which) {
        let path = dir.join(file);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ReportError::io(path, e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A CSV row type and its columns, so a file with no rows still gets its header line.
trait CsvRow: Serialize {
    const COLUMNS: &'static [&'static str];
}

impl CsvRow for RequestRow {
    const COLUMNS: &'static [&'static str] = &REQUEST_COLUMNS;
}

impl CsvRow for TenantRow {
    const COLUMNS: &'static [&'static str] = &TENANT_COLUMNS;
}

fn write_csv<T: CsvRow>(path: &Path, rows: impl Iterator<Item = T>) -> Result<(), ReportError> {
    let csv_err = |source| ReportError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut w = csv::Writer::from_path(path).map_err(csv_err)?;
    let mut any = false;
    for row in rows {
        w.serialize(row).map_err(csv_err)?;
        any = true;
    }
    if !any {
        // serde-driven headers appear with the first row; an empty file still needs them so
        // readers see the columns.
        w.write_record(T::COLUMNS).map_err(csv_err)?;
    }
    w.flush().map_err(|e| ReportError::io(path, e))
}

/// `requests.csv` columns, in order (checked against [`RequestRow`] by a test).
pub const REQUEST_COLUMNS: [&str; 20] = [
    "id",
    "tenant",
    "group",
    "model",
    "outcome",
    "status",
    "warmup",
    "intended_start_ms",
    "actual_start_ms",
    "schedule_lateness_ms",
    "client_queue_ms",
    "ttft_ms",
    "ttfc_ms",
    "tpot_ms",
    "e2e_ms",
    "chunks",
    "input_tokens",
    "output_tokens",
    "output_tokens_estimated",
    "error",
];

/// `tenants.csv` columns, in order (checked against [`TenantRow`] by a test).
pub const TENANT_COLUMNS: [&str; 29] = [
    "tenant",
    "group",
    "model",
    "lora",
    "requests",
    "ok",
    "rate_limited",
    "budget_exceeded",
    "client_error",
    "server_error",
    "timeout",
    "stream_error",
    "truncated",
    "error_rate",
    "requests_per_s",
    "output_tokens_per_s",
    "ttft_p50_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "tpot_p50_ms",
    "tpot_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "input_tokens_per_month",
    "output_tokens_per_month",
    "self_hosted_gbp_per_month",
    "api_gbp_per_month",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{summarize, tests::small_run};

    fn header_of(path: &Path) -> Vec<String> {
        let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{e}"));
        r.headers()
            .map(|h| h.iter().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    #[test]
    fn declared_columns_match_the_row_types() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let run = small_run();
        write_results(dir.path(), &run, &summarize(&run)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(header_of(&dir.path().join(REQUESTS_CSV)), REQUEST_COLUMNS);
        assert_eq!(header_of(&dir.path().join(TENANTS_CSV)), TENANT_COLUMNS);
    }

    #[test]
    fn empty_run_still_writes_headed_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut run = small_run();
        run.records.clear();
        run.tenants.clear();
        write_results(dir.path(), &run, &summarize(&run)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(header_of(&dir.path().join(REQUESTS_CSV)), REQUEST_COLUMNS);
        assert_eq!(header_of(&dir.path().join(TENANTS_CSV)), TENANT_COLUMNS);
        assert!(dir.path().join(REPORT_HTML).is_file());
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// What `tenantbench run` on the embedded stack leaves: the stack's files, then the results.
    fn embedded_run_into(dir: &Path) {
        let run = small_run();
        prepare_results_dir(dir).unwrap_or_else(|e| panic!("{e}"));
        for f in STACK_FILES {
            std::fs::write(dir.join(f), b"from the embedded run\n")
                .unwrap_or_else(|e| panic!("{e}"));
        }
        write_results(dir, &run, &summarize(&run)).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn reusing_a_results_dir_removes_the_previous_runs_files_only() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("d");
        embedded_run_into(&dir);
        for f in STACK_FILES.iter().chain(&OUTPUT_FILES) {
            assert!(dir.join(f).is_file(), "{f}");
        }
        // Files someone else put there, at the top and inside tenantbench's own folders.
        let keep = [
            dir.join("notes.txt"),
            dir.join(HISTOGRAMS_DIR).join("mine.hlog"),
            dir.join(PLOTS_DIR).join("mine.svg"),
        ];
        for k in &keep {
            std::fs::write(k, b"mine").unwrap_or_else(|e| panic!("{e}"));
        }

        // Then a run against an external target: no stack files of its own.
        prepare_results_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        let left: Vec<PathBuf> = tenantbench_files(Clear::WithStackFiles)
            .into_iter()
            .filter(|f| dir.join(f).exists())
            .collect();
        assert!(left.is_empty(), "stale: {left:?}");
        for k in &keep {
            assert!(
                k.is_file(),
                "{} was not tenantbench's to remove",
                k.display()
            );
        }
        let mut run = small_run();
        run.target = "http://127.0.0.1:4000/v1".to_owned();
        write_results(&dir, &run, &summarize(&run)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            names_in(&dir),
            [
                "histograms",
                "junit.xml",
                "notes.txt",
                "plots",
                "report.html",
                "requests.csv",
                "run.json",
                "summary.json",
                "tenants.csv",
                "vllm-bench.json",
            ]
        );
    }

    #[test]
    fn write_results_keeps_the_stack_files_of_the_run_it_writes() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("d");
        embedded_run_into(&dir);
        // A second embedded run whose caller did not prepare the directory: its stack has
        // just written these, so writing the results must not take them away.
        for f in STACK_FILES {
            std::fs::write(dir.join(f), b"from the second run\n").unwrap_or_else(|e| panic!("{e}"));
        }
        let run = small_run();
        write_results(&dir, &run, &summarize(&run)).unwrap_or_else(|e| panic!("{e}"));
        for f in STACK_FILES {
            let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            assert_eq!(text, "from the second run\n", "{f}");
        }
    }

    #[test]
    fn a_non_empty_directory_that_is_no_result_is_refused_untouched() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("documents");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("thesis.tex"), b"mine").unwrap_or_else(|e| panic!("{e}"));
        // A name tenantbench also writes, beside a file it does not: still not a result.
        std::fs::write(dir.join(REPORT_HTML), b"my own report").unwrap_or_else(|e| panic!("{e}"));
        let msg = prepare_results_dir(&dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains(&dir.display().to_string()) && msg.contains("thesis.tex"),
            "{msg}"
        );
        assert_eq!(names_in(&dir), ["report.html", "thesis.tex"]);
        assert_eq!(
            std::fs::read_to_string(dir.join(REPORT_HTML)).unwrap_or_default(),
            "my own report"
        );
    }

    #[test]
    fn an_empty_or_missing_directory_is_prepared() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        prepare_results_dir(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
        let new = tmp.path().join("a/b");
        prepare_results_dir(&new).unwrap_or_else(|e| panic!("{e}"));
        assert!(new.is_dir());
    }

    #[test]
    fn unwritable_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap_or_else(|e| panic!("{e}"));
        let run = small_run();
        let err = write_results(&blocker.join("out"), &run, &summarize(&run))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("file"), "{err}");
    }
}
