//! Results and reports of a tenantbench run: statistics, the cost and break-even model, CI
//! gates, and the results directory (`summary.json`, CSV files, HdrHistogram interval logs,
//! SVG plots and a self-contained `report.html`).
//!
//! This crate is plain synchronous code and depends on no other workspace crate: the load
//! generator fills a [`RunData`] with one [`RequestRecord`] per request and calls
//!
//! ```text
//! reports::prepare_results_dir(&dir)?; // before the run: clears a previous result's files
//! // ... the run ...
//! let summary = reports::summarize(&run);
//! reports::write_results(&dir, &run, &summary)?;
//! print!("{}", reports::render_table(&summary));
//! if !summary.gates_passed() { /* exit 3 */ }
//! ```
//!
//! Modules, in the order data flows through them:
//! - [`record`], [`run`] — the input types.
//! - [`distribution`] — HdrHistogram-backed latency distributions and their percentiles.
//! - [`aggregate`] — per-scope accumulation (tenant, group, overall) and the statistics object.
//! - [`cost`] — self-hosted vs API cost per tenant and break-even.
//! - [`gate`] — CI gates over any number in the statistics.
//! - [`slo`] — SLO verdicts and goodput; [`isolation`] — noisy-neighbour verdicts.
//! - [`summary`] — `summary.json`.
//! - [`table`] — the terminal summary.
//! - [`interval_log`], [`plot`], [`html`], [`results`] — the files of the results directory.
//! - [`merge`] — one result from the shards of a multi-machine run (`tenantbench report merge`).

pub mod aggregate;
pub mod baseline;
pub mod cost;
pub mod distribution;
pub mod error;
pub mod gate;
pub mod html;
pub mod interval_log;
pub mod isolation;
pub mod junit;
pub mod merge;
pub mod plot;
pub mod record;
pub mod results;
pub mod run;
pub mod slo;
pub mod summary;
pub mod table;
pub mod vllm_bench;

pub use aggregate::{Aggregate, OutcomeCounts, Statistics};
pub use cost::{CostModel, CostSummary, TenantCost, breakeven_tenants};
pub use distribution::{Distribution, LatencyStats};
pub use error::ReportError;
pub use gate::{GateFailure, GateOp, GateResult, GateScope, GateSpec};
pub use isolation::{IsolationReport, IsolationSpec};
pub use merge::MergeError;
pub use record::{Outcome, RequestRecord};
pub use results::{RequestRow, TenantRow, prepare_results_dir, write_results};
pub use run::{EngineInfo, RunData, ShardInfo, TenantInfo};
pub use slo::{SloSpec, SloVerdict};
pub use summary::{GroupSummary, Summary, TenantSummary, summarize};
pub use table::render_table;

/// The JSON Schema (draft 2020-12) of `summary.json`, as committed in
/// `reports/schema/summary.schema.json`.
pub const SUMMARY_SCHEMA: &str = include_str!("../schema/summary.schema.json");
