//! Integration tests of the reports crate: one binary, modules under `tests/it/`.

#[path = "it/common.rs"]
mod common;
#[path = "it/results_dir.rs"]
mod results_dir;
#[path = "it/slo_goodput.rs"]
mod slo_goodput;
