//! `/metrics`: per-tenant counters and histograms in the Prometheus text format.
//!
//! Every series is preallocated from the config (tenants × models × status codes), so
//! recording is a handful of relaxed atomic adds with no lock and no allocation, and label
//! cardinality is bounded: the first `metrics_max_tenants` tenants of the config get their own
//! `tenant` label, the rest share `tenant="other"`; requests with an unknown or missing key count
//! under `tenant="_unauthenticated"`, the master key under `tenant="_master"` (tenant ids cannot
//! start with `_`), and unknown models under `model="_unknown"`. Zero-valued request/outcome
//! series are left out of the output to keep scrapes small.
//!
//! For dashboards built for LiteLLM, the same numbers are also exported under LiteLLM's names
//! where it has one, with the tenant as LiteLLM's `team` label:
//! `litellm_proxy_total_requests_metric`, `litellm_spend_metric`,
//! `litellm_remaining_team_budget_metric`, `litellm_overhead_latency_metric` and
//! `litellm_llm_api_time_to_first_token_metric` (histograms).
//!
//! Names (prefix `tenantbench_router_`): `requests_total{tenant,model,code}`,
//! `request_outcomes_total{tenant,outcome}`, `tokens_total{tenant,direction}` (`prompt` /
//! `completion`), `spend_total{tenant}`, `remaining_budget{tenant}`,
//! `rate_limit_rejections_total{tenant,limit}` (`requests`, `tokens`, `parallel_requests`,
//! `budget`), and histograms `ttft_seconds`, `e2e_seconds`, `overhead_seconds` by tenant.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::audit::{AuditRecord, Outcome};
use crate::ledger::BudgetStatus;
use crate::limiter::LimitKind;

const PREFIX: &str = "tenantbench_router_";
const CODES: [u16; 13] = [
    200, 400, 401, 403, 404, 405, 413, 422, 429, 500, 502, 503, 504,
];
const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const OVERHEAD_BOUNDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
];
const REJECTIONS: [&str; 4] = ["requests", "tokens", "parallel_requests", "budget"];

/// Who a request is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Tenant(usize),
    Master,
    Anonymous,
}

/// Which rejection counter to bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Limit(LimitKind),
    Budget,
}

#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus `+Inf`; not cumulative (made cumulative when rendered).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, tenant: &str) {
        let mut acc = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{PREFIX}{name}_bucket{{tenant=\"{tenant}\",le=\"{le}\"}} {acc}"
            );
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{PREFIX}{name}_sum{{tenant=\"{tenant}\"}} {sum}");
        let _ = writeln!(
            out,
            "{PREFIX}{name}_count{{tenant=\"{tenant}\"}} {}",
            self.count.load(Relaxed)
        );
    }
}

#[derive(Debug)]
struct Series {
    label: String,
    /// `[model][code]`; the last code slot is "other".
    requests: Vec<Vec<AtomicU64>>,
    outcomes: Vec<AtomicU64>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    spend_nanos: AtomicU64,
    rejections: Vec<AtomicU64>,
    ttft: Histogram,
    e2e: Histogram,
    overhead: Histogram,
}

impl Series {
    fn new(label: String, models: usize) -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Self {
            label,
            requests: (0..models).map(|_| zeros(CODES.len() + 1)).collect(),
            outcomes: zeros(Outcome::ALL.len()),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            spend_nanos: AtomicU64::new(0),
            rejections: zeros(REJECTIONS.len()),
            ttft: Histogram::new(LATENCY_BOUNDS),
            e2e: Histogram::new(LATENCY_BOUNDS),
            overhead: Histogram::new(OVERHEAD_BOUNDS),
        }
    }
}

/// The registry.
#[derive(Debug)]
pub struct Metrics {
    models: Vec<String>,
    /// Labelled tenants, then `other`, `_master`, `_unauthenticated`.
    series: Vec<Series>,
    /// Tenants with a label of their own.
    labelled: usize,
    /// For each config tenant, the series it counts under.
    slot: Vec<usize>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Series for the first `max_tenants` tenant ids and each model group name, plus
    /// `other`, `_master`, `_unauthenticated` and `_unknown`.
    pub fn new(tenant_ids: &[&str], models: &[&str], max_tenants: usize) -> Self {
        let mut names: Vec<String> = models.iter().map(|m| escape(m)).collect();
        names.push("_unknown".into());
        let labelled = tenant_ids.len().min(max_tenants);
        let mut series: Vec<Series> = tenant_ids[..labelled]
            .iter()
            .map(|t| Series::new(escape(t), names.len()))
            .collect();
        series.push(Series::new("other".into(), names.len()));
        series.push(Series::new("_master".into(), names.len()));
        series.push(Series::new("_unauthenticated".into(), names.len()));
        let slot = (0..tenant_ids.len()).map(|i| i.min(labelled)).collect();
        Self {
            models: names,
            series,
            labelled,
            slot,
        }
    }

    fn index(&self, who: Who) -> usize {
        match who {
            Who::Tenant(i) => self.slot.get(i).copied().unwrap_or(self.labelled + 2),
            Who::Master => self.labelled + 1,
            Who::Anonymous => self.labelled + 2,
        }
    }

    fn series(&self, who: Who) -> Option<&Series> {
        self.series.get(self.index(who))
    }

    /// Counts a finished request. `model` indexes the config's groups (`None`: unknown).
    pub fn observe(&self, who: Who, model: Option<usize>, rec: &AuditRecord) {
        let Some(s) = self.series(who) else { return };
        let m = model
            .filter(|m| *m < self.models.len() - 1)
            .unwrap_or(self.models.len() - 1);
        let code = CODES
            .iter()
            .position(|c| *c == rec.status)
            .unwrap_or(CODES.len());
        s.requests[m][code].fetch_add(1, Relaxed);
        s.outcomes[rec.outcome.index()].fetch_add(1, Relaxed);
        s.prompt_tokens.fetch_add(rec.prompt_tokens, Relaxed);
        s.completion_tokens
            .fetch_add(rec.completion_tokens, Relaxed);
        let nanos = crate::ledger::Money::from_f64(rec.cost).nanos();
        s.spend_nanos
            .fetch_add(u64::try_from(nanos).unwrap_or(0), Relaxed);
        if let Some(t) = rec.ttft_ms {
            s.ttft.observe(Duration::from_secs_f64(t.max(0.0) / 1e3));
        }
        if rec.outcome == Outcome::Ok {
            s.e2e
                .observe(Duration::from_secs_f64(rec.e2e_ms.max(0.0) / 1e3));
        }
        if let Some(o) = rec.overhead_ms {
            s.overhead
                .observe(Duration::from_secs_f64(o.max(0.0) / 1e3));
        }
    }

    /// Counts a refusal by a limit or the budget.
    pub fn refused(&self, who: Who, why: Refusal) {
        let Some(s) = self.series(who) else { return };
        let i = match why {
            Refusal::Limit(LimitKind::Requests) => 0,
            Refusal::Limit(LimitKind::Tokens) => 1,
            Refusal::Limit(LimitKind::ParallelRequests) => 2,
            Refusal::Budget => 3,
        };
        s.rejections[i].fetch_add(1, Relaxed);
    }

    /// The exposition text. `budgets[i]` is config tenant `i`'s budget position.
    pub fn render(&self, budgets: &[BudgetStatus]) -> String {
        // Remaining budget per series: tenants folded into `other` add up.
        let mut remaining: Vec<Option<f64>> = vec![None; self.series.len()];
        for (i, b) in budgets.iter().enumerate() {
            if let (Some(r), Some(&slot)) = (b.remaining(), self.slot.get(i)) {
                let cur = remaining[slot].unwrap_or(0.0);
                remaining[slot] = Some(cur + r.as_f64());
            }
        }
        let mut out = String::with_capacity(16 * 1024);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
            let _ = writeln!(out, "# TYPE {PREFIX}{name} {kind}");
        };
        head(
            &mut out,
            "requests_total",
            "counter",
            "Model requests by tenant, virtual model and HTTP status.",
        );
        for s in &self.series {
            for (mi, codes) in s.requests.iter().enumerate() {
                for (ci, c) in codes.iter().enumerate() {
                    let v = c.load(Relaxed);
                    if v == 0 {
                        continue;
                    }
                    let code = CODES
                        .get(ci)
                        .map_or_else(|| "other".to_string(), u16::to_string);
                    let _ = writeln!(
                        out,
                        "{PREFIX}requests_total{{tenant=\"{}\",model=\"{}\",code=\"{code}\"}} {v}",
                        s.label, self.models[mi]
                    );
                }
            }
        }
        head(
            &mut out,
            "request_outcomes_total",
            "counter",
            "Model requests by tenant and outcome.",
        );
        for s in &self.series {
            for (o, c) in Outcome::ALL.iter().zip(&s.outcomes) {
                let v = c.load(Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "{PREFIX}request_outcomes_total{{tenant=\"{}\",outcome=\"{}\"}} {v}",
                        s.label,
                        o.as_str()
                    );
                }
            }
        }
        head(
            &mut out,
            "tokens_total",
            "counter",
            "Tokens billed, by tenant and direction (prompt = in, completion = out).",
        );
        for s in &self.series {
            for (dir, c) in [
                ("prompt", &s.prompt_tokens),
                ("completion", &s.completion_tokens),
            ] {
                let _ = writeln!(
                    out,
                    "{PREFIX}tokens_total{{tenant=\"{}\",direction=\"{dir}\"}} {}",
                    s.label,
                    c.load(Relaxed)
                );
            }
        }
        head(
            &mut out,
            "spend_total",
            "counter",
            "Spend charged since start, in model_info price units.",
        );
        for s in &self.series {
            let v = s.spend_nanos.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{PREFIX}spend_total{{tenant=\"{}\"}} {v}", s.label);
        }
        head(
            &mut out,
            "remaining_budget",
            "gauge",
            "Budget left in the current period after spend and in-flight holds.",
        );
        for (s, r) in self.series.iter().zip(&remaining) {
            if let Some(r) = r {
                let _ = writeln!(
                    out,
                    "{PREFIX}remaining_budget{{tenant=\"{}\"}} {r}",
                    s.label
                );
            }
        }
        head(
            &mut out,
            "rate_limit_rejections_total",
            "counter",
            "Requests refused by a tenant limit or budget.",
        );
        for s in &self.series[..=self.labelled] {
            for (name, c) in REJECTIONS.iter().zip(&s.rejections) {
                let _ = writeln!(
                    out,
                    "{PREFIX}rate_limit_rejections_total{{tenant=\"{}\",limit=\"{name}\"}} {}",
                    s.label,
                    c.load(Relaxed)
                );
            }
        }
        for (name, help, pick) in [
            (
                "ttft_seconds",
                "Arrival to first generated token forwarded.",
                0,
            ),
            (
                "e2e_seconds",
                "Arrival to last byte, successful requests.",
                1,
            ),
            (
                "overhead_seconds",
                "Router time before the upstream request went out.",
                2,
            ),
        ] {
            head(&mut out, name, "histogram", help);
            for s in &self.series {
                let h = match pick {
                    0 => &s.ttft,
                    1 => &s.e2e,
                    _ => &s.overhead,
                };
                h.render(&mut out, name, &s.label);
            }
        }
        self.render_litellm(&mut out, &remaining);
        out
    }

    /// The LiteLLM-named copies (label `team` = tenant).
    fn render_litellm(&self, out: &mut String, remaining: &[Option<f64>]) {
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        head(
            out,
            "litellm_proxy_total_requests_metric",
            "counter",
            "Requests made to the proxy (LiteLLM name).",
        );
        for s in &self.series {
            let total: u64 = s.requests.iter().flatten().map(|c| c.load(Relaxed)).sum();
            let _ = writeln!(
                out,
                "litellm_proxy_total_requests_metric{{team=\"{}\"}} {total}",
                s.label
            );
        }
        head(
            out,
            "litellm_spend_metric",
            "counter",
            "Spend (LiteLLM name).",
        );
        for s in &self.series {
            let v = s.spend_nanos.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "litellm_spend_metric{{team=\"{}\"}} {v}", s.label);
        }
        head(
            out,
            "litellm_remaining_team_budget_metric",
            "gauge",
            "Remaining budget of the team, i.e. the tenant (LiteLLM name).",
        );
        for (s, r) in self.series.iter().zip(remaining) {
            if let Some(r) = r {
                let _ = writeln!(
                    out,
                    "litellm_remaining_team_budget_metric{{team=\"{}\"}} {r}",
                    s.label
                );
            }
        }
        for (name, help, ttft) in [
            (
                "litellm_overhead_latency_metric",
                "Router overhead in seconds (LiteLLM name).",
                false,
            ),
            (
                "litellm_llm_api_time_to_first_token_metric",
                "Time to first token in seconds (LiteLLM name).",
                true,
            ),
        ] {
            head(out, name, "histogram", help);
            for s in &self.series {
                let h = if ttft { &s.ttft } else { &s.overhead };
                let mut text = String::new();
                h.render(&mut text, "", &s.label);
                // Reuse the histogram's lines with LiteLLM's name and label.
                for line in text.lines() {
                    let line = line
                        .replacen(PREFIX, name, 1)
                        .replacen("{tenant=", "{team=", 1);
                    let _ = writeln!(out, "{line}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_per_tenant_series() {
        let m = Metrics::new(&["a", "b"], &["chat-fast"], 10);
        let rec = AuditRecord {
            status: 200,
            prompt_tokens: 10,
            completion_tokens: 5,
            cost: 0.25,
            ttft_ms: Some(12.0),
            e2e_ms: 40.0,
            overhead_ms: Some(0.2),
            ..Default::default()
        };
        m.observe(Who::Tenant(1), Some(0), &rec);
        m.observe(
            Who::Anonymous,
            None,
            &AuditRecord {
                status: 401,
                outcome: Outcome::Unauthorized,
                ..Default::default()
            },
        );
        m.refused(Who::Tenant(0), Refusal::Limit(LimitKind::Requests));
        let text = m.render(&[]);
        for line in [
            "tenantbench_router_requests_total{tenant=\"b\",model=\"chat-fast\",code=\"200\"} 1",
            "tenantbench_router_requests_total{tenant=\"_unauthenticated\",model=\"_unknown\",code=\"401\"} 1",
            "tenantbench_router_tokens_total{tenant=\"b\",direction=\"completion\"} 5",
            "tenantbench_router_spend_total{tenant=\"b\"} 0.25",
            "tenantbench_router_rate_limit_rejections_total{tenant=\"a\",limit=\"requests\"} 1",
            "tenantbench_router_ttft_seconds_bucket{tenant=\"b\",le=\"0.025\"} 1",
            "tenantbench_router_ttft_seconds_bucket{tenant=\"b\",le=\"0.01\"} 0",
            "tenantbench_router_overhead_seconds_count{tenant=\"b\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(!text.contains("tenant=\"a\",model=\"chat-fast\",code=\"200\""));
    }

    #[test]
    fn tenants_beyond_the_cap_are_labelled_other() {
        let m = Metrics::new(&["a", "b", "c"], &["chat-fast"], 1);
        let rec = AuditRecord {
            status: 200,
            cost: 0.5,
            ..Default::default()
        };
        m.observe(Who::Tenant(1), Some(0), &rec);
        m.observe(Who::Tenant(2), Some(0), &rec);
        m.refused(Who::Tenant(2), Refusal::Budget);
        let text = m.render(&[]);
        assert!(text.contains(
            "tenantbench_router_requests_total{tenant=\"other\",model=\"chat-fast\",code=\"200\"} 2"
        ));
        assert!(text.contains("tenantbench_router_spend_total{tenant=\"other\"} 1"));
        assert!(text.contains("litellm_spend_metric{team=\"other\"} 1"));
        assert!(text.contains(
            "tenantbench_router_rate_limit_rejections_total{tenant=\"other\",limit=\"budget\"} 1"
        ));
        assert!(!text.contains("tenant=\"b\"") && !text.contains("tenant=\"c\""));
        assert!(text.contains("litellm_overhead_latency_metric_count{team=\"a\"} 0"));
    }
}
