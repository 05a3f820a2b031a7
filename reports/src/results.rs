//! The results directory (DESIGN §6): `summary.json`, `requests.csv`, `tenants.csv`,
//! `histograms/*.hlog`, `plots/*.svg`, `report.html`, and `run.json` (the raw run, for merging).
//!
//! CSV rows are typed ([`RequestRow`], [`TenantRow`]) so the columns are declared once and a
//! consumer can read the files back with the same types. Empty cells mean "no value" (`None`),
//! never zero.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ReportError;
use crate::html::render_html;
use crate::interval_log::write_interval_logs;
use crate::plot::render_plots;
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

/// Writes the whole results directory, creating it (and its parents) if needed. Files already
/// there with the same names are replaced.
pub fn write_results(dir: &Path, run: &RunData, summary: &Summary) -> Result<(), ReportError> {
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
