//! `tenantbench check`: validate a scenario and show what it asks of each GPU, without binding
//! a port.

use std::fmt;

use crate::error::RunError;
use crate::scenario::Scenario;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// What a scenario needs, GPU by GPU.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub lines: Vec<String>,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Validates capacity and describes the scenario. An engine set that does not fit its GPU is an
/// error ([`RunError::Capacity`]) naming the GPU, the engines and the shortfall.
pub fn check(s: &Scenario) -> Result<CheckReport, RunError> {
    let plans = crate::stack::check_capacity(s)?;
    let mut lines = vec![format!(
        "{}: scenario '{}' is valid: {} tenants in {} group(s), {} engine(s) on {} GPU(s), {:.0} s ({:.0} s warm-up), seed {}",
        s.source,
        s.name,
        s.tenants.len(),
        s.tenants
            .iter()
            .map(|t| t.group.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        s.engines.len(),
        s.gpu_count,
        s.duration_s,
        s.warmup_s,
        s.seed,
    )];
    let offered: f64 = s
        .tenants
        .iter()
        .map(|t| t.arrival.mean_rate_per_s(s.duration_s).unwrap_or(0.0))
        .sum();
    lines.push(format!(
        "offered load: {offered:.2} requests/s across all tenants"
    ));
    for (gpu, plans) in plans {
        let engines: Vec<&crate::scenario::Engine> =
            s.engines.iter().filter(|e| e.gpu_index == gpu).collect();
        let total = plans.first().map_or(0, |p| p.gpu_memory_bytes) as f64 / GIB;
        let gpu_name = engines.first().map_or("?", |e| e.config.gpu.as_str());
        lines.push(format!("GPU {gpu} ({gpu_name}, {total:.1} GiB):"));
        let mut used = 0.0;
        for (e, p) in engines.iter().zip(&plans) {
            used += p.budget_bytes as f64 / GIB;
            lines.push(format!(
                "  {:<14} {} {}: budget {:.1} GiB = weights {:.1} + LoRA {:.2} + activations {:.1} + KV cache {:.1} GiB ({} tokens, {:.1}x concurrency at {} tokens)",
                e.name,
                e.config.model,
                e.config.precision,
                p.budget_bytes as f64 / GIB,
                p.weights_bytes as f64 / GIB,
                p.lora_bytes as f64 / GIB,
                p.activation_bytes as f64 / GIB,
                p.kv_cache_bytes as f64 / GIB,
                p.kv_cache_tokens,
                p.max_concurrency,
                p.max_model_len,
            ));
        }
        lines.push(format!("  total {used:.1} of {total:.1} GiB: fits"));
    }
    for c in crate::stack::context_overflows(s) {
        lines.push(format!(
            "warning: {}; the longest requests will be refused (400)",
            c.message
        ));
    }
    Ok(CheckReport { lines })
}
