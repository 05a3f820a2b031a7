//! `summary.json`: the run's statistics per tenant, per group and overall, its cost section and
//! its gate verdicts.
//!
//! Summarising goes records → one [`Aggregate`] per tenant → groups and overall by merging those
//! aggregates (histograms, never percentiles of percentiles) → [`Summary`]. The two halves are
//! public apart ([`aggregate_tenants`], [`build_summary`]) so other inputs can reuse the second
//! half unchanged; `tenantbench report merge` instead concatenates the shards' records (see
//! [`crate::merge`]), which is exact by construction. Field names
//! listed in DESIGN §6 are a contract; `reports/schema/summary.schema.json` describes them all.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Statistics};
use crate::cost::{CostSummary, TenantCost};
use crate::gate::{self, GateResult, GateScopes};
use crate::isolation::IsolationReport;
use crate::run::{EngineInfo, RunData, TenantInfo};
use crate::slo::SloVerdict;

/// Version of the `summary.json` layout; bumped only when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// The contents of `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Layout version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Scenario name.
    pub scenario: String,
    /// The run's seed.
    pub seed: u64,
    /// Wall-clock time of t0 (start of warm-up), ms since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// The measured window, warm-up excluded, s.
    pub duration_s: f64,
    /// The warm-up before it, s.
    pub warmup_s: f64,
    /// `embedded` or the target URL.
    pub target: String,
    /// Requests sent during warm-up (in `requests.csv`, in no statistic).
    pub warmup_requests: u64,
    /// Engines that served the run.
    pub engines: Vec<EngineInfo>,
    /// The whole run.
    pub overall: Statistics,
    /// One entry per tenant group, in scenario order.
    pub groups: Vec<GroupSummary>,
    /// One entry per tenant, in scenario order.
    pub tenants: Vec<TenantSummary>,
    /// Cost per tenant and break-even.
    pub cost: CostSummary,
    /// Gate verdicts, in scenario order.
    pub gates: Vec<GateResult>,
    /// Remarks from the run and from summarising it.
    pub notes: Vec<String>,
    /// The scenario-wide SLO verdict on the overall statistics.
    #[serde(default)]
    pub slo: Option<SloVerdict>,
    /// Isolation verdicts, when the scenario declares phases to compare.
    #[serde(default)]
    pub isolation: Option<IsolationReport>,
}

impl Summary {
    /// True when no gate failed (also when there are none). Skipped gates do not fail the run:
    /// a shard cannot judge tenants it does not hold, and the merged result judges them.
    pub fn gates_passed(&self) -> bool {
        self.gates.iter().all(|g| g.passed)
    }

    /// True when every SLO verdict (overall, groups, tenants) and the isolation verdict passed.
    pub fn slos_passed(&self) -> bool {
        let ok = |v: &Option<SloVerdict>| v.as_ref().is_none_or(|v| v.passed);
        ok(&self.slo)
            && self.groups.iter().all(|g| ok(&g.slo))
            && self.tenants.iter().all(|t| ok(&t.slo))
            && self.isolation.as_ref().is_none_or(|i| i.passed)
    }

    /// The gates that failed.
    pub fn failed_gates(&self) -> impl Iterator<Item = &GateResult> {
        self.gates.iter().filter(|g| !g.passed)
    }

    /// The gates that were not evaluated (their tenant or group ran in another shard). They
    /// carry `passed: true` so they do not fail the run, but no report may count them as passed.
    pub fn skipped_gates(&self) -> impl Iterator<Item = &GateResult> {
        self.gates
            .iter()
            .filter(|g| g.passed && g.skipped.is_some())
    }

    /// The gates that were evaluated and held.
    pub fn passed_gates(&self) -> impl Iterator<Item = &GateResult> {
        self.gates
            .iter()
            .filter(|g| g.passed && g.skipped.is_none())
    }

    /// One tenant's entry.
    pub fn tenant(&self, id: &str) -> Option<&TenantSummary> {
        self.tenants.iter().find(|t| t.tenant == id)
    }
}

/// One tenant group: its members' records merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group's name.
    pub group: String,
    /// How many tenants it has.
    pub tenant_count: u64,
    /// Statistics of all its tenants together.
    #[serde(flatten)]
    pub stats: Statistics,
    /// Its tenants' cost lines summed.
    pub cost: TenantCost,
    /// The group SLO's verdict on its merged statistics (the scenario's SLO when the group has
    /// none of its own).
    #[serde(default)]
    pub slo: Option<SloVerdict>,
}

/// One tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantSummary {
    /// The tenant's id.
    pub tenant: String,
    /// Its group.
    pub group: String,
    /// The model it calls.
    pub model: String,
    /// Its LoRA adapter.
    pub lora: Option<String>,
    /// Its statistics.
    #[serde(flatten)]
    pub stats: Statistics,
    /// Its cost lines.
    pub cost: TenantCost,
    /// Its SLO's verdict on its statistics.
    #[serde(default)]
    pub slo: Option<SloVerdict>,
}

/// Builds the whole summary of a run.
pub fn summarize(run: &RunData) -> Summary {
    let (tenants, mut notes) = aggregate_tenants(run);
    let mut summary = build_summary(run, &tenants);
    notes.append(&mut summary.notes);
    summary.notes = notes;
    summary
}

/// One aggregate per tenant: the scenario's tenants in order, then any tenant that appears only
/// in the records (reported, with a note, rather than silently dropped). Also returns notes about
/// inconsistencies found.
pub fn aggregate_tenants(run: &RunData) -> (Vec<(TenantInfo, Aggregate)>, Vec<String>) {
    let mut notes = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut tenants: Vec<(TenantInfo, Aggregate)> = Vec::new();
    for t in &run.tenants {
        if index.contains_key(t.id.as_str()) {
            notes.push(format!(
                "tenant `{}` is declared twice; its first declaration is used",
                t.id
            ));
            continue;
        }
        index.insert(&t.id, tenants.len());
        tenants.push((t.clone(), Aggregate::new()));
    }
    let mut undeclared = Vec::new();
    for r in &run.records {
        let i = match index.get(r.tenant.as_str()) {
            Some(i) => *i,
            None => {
                let i = tenants.len();
                index.insert(&r.tenant, i);
                undeclared.push(r.tenant.clone());
                let info = TenantInfo {
                    id: r.tenant.clone(),
                    group: r.group.clone(),
                    model: r.model.clone(),
                    lora: None,
                    slo: None,
                };
                tenants.push((info, Aggregate::new()));
                i
            }
        };
        if let Some((info, agg)) = tenants.get_mut(i) {
            agg.record(r);
            if let Some(slo) = &info.slo
                && !r.warmup
            {
                agg.slo_judged += 1;
                agg.slo_met += u64::from(slo.met_by(r));
            }
        }
    }
    if !undeclared.is_empty() {
        notes.push(format!(
            "records name tenants the scenario does not declare: {}",
            undeclared.join(", ")
        ));
    }
    (tenants, notes)
}

/// Builds the summary from per-tenant aggregates; `run` supplies the metadata, cost model and
/// gates (its records are not read).
pub fn build_summary(run: &RunData, tenants: &[(TenantInfo, Aggregate)]) -> Summary {
    let duration = run.duration_s;
    let mut notes = run.notes.clone();
    if !(duration > 0.0 && duration.is_finite()) {
        notes.push(format!(
            "the measured window is {duration} s, so no rate or monthly volume can be computed"
        ));
    }

    let tenant_costs: Vec<TenantCost> = tenants
        .iter()
        .map(|(info, agg)| {
            run.cost.tenant_cost(
                info.lora.is_some(),
                tenants.len(),
                agg.input_tokens,
                agg.output_tokens,
                duration,
            )
        })
        .collect();
    let cost = run.cost.summarize(&tenant_costs);

    // Groups in order of first appearance, each merged from its tenants' histograms.
    let mut groups: Vec<(String, u64, Aggregate, TenantCost)> = Vec::new();
    for ((info, agg), tc) in tenants.iter().zip(&tenant_costs) {
        let slot = match groups.iter().position(|(g, ..)| *g == info.group) {
            Some(i) => i,
            None => {
                groups.push((
                    info.group.clone(),
                    0,
                    Aggregate::new(),
                    TenantCost::default(),
                ));
                groups.len() - 1
            }
        };
        if let Some((_, count, group_agg, group_cost)) = groups.get_mut(slot) {
            *count += 1;
            group_agg.merge(agg);
            group_cost.add(tc);
        }
    }
    let mut overall = Aggregate::new();
    for (_, _, agg, _) in &groups {
        overall.merge(agg);
    }

    let dropped = overall.dropped_values();
    if dropped > 0 {
        notes.push(format!(
            "{dropped} latency values were not finite numbers and were left out"
        ));
    }
    if overall.estimated_output_requests > 0 {
        notes.push(format!(
            "{} successful requests had no usage from the server; their output tokens were \
             counted with a tokenizer (estimated)",
            overall.estimated_output_requests
        ));
    }

    let tenant_summaries: Vec<TenantSummary> = tenants
        .iter()
        .zip(tenant_costs)
        .map(|((info, agg), cost)| TenantSummary {
            tenant: info.id.clone(),
            group: info.group.clone(),
            model: info.model.clone(),
            lora: info.lora.clone(),
            slo: info
                .slo
                .as_ref()
                .map(|s| s.verdict(&agg.statistics(duration))),
            stats: agg.statistics(duration),
            cost,
        })
        .collect();
    let group_summaries: Vec<GroupSummary> = groups
        .into_iter()
        .map(|(group, tenant_count, agg, cost)| {
            let stats = agg.statistics(duration);
            // A group without its own `slo` takes the scenario's (scenarios/README.md); the
            // scenario loader lists only explicit group SLOs, so the default is applied here.
            let slo = run
                .group_slos
                .iter()
                .find(|(g, _)| *g == group)
                .map(|(_, s)| s)
                .or(run.slo.as_ref())
                .map(|s| s.verdict(&stats));
            GroupSummary {
                group,
                tenant_count,
                stats,
                cost,
                slo,
            }
        })
        .collect();
    let overall = overall.statistics(duration);

    let scopes = GateScopes {
        overall: gate::scope_value(&overall, Some(&cost)),
        groups: group_summaries
            .iter()
            .map(|g| (g.group.clone(), gate::scope_value(&g.stats, Some(&g.cost))))
            .collect(),
        tenants: tenant_summaries
            .iter()
            .map(|t| (t.tenant.clone(), gate::scope_value(&t.stats, Some(&t.cost))))
            .collect(),
        partial: run.shard.is_some(),
    };
    let gates = run
        .gates
        .iter()
        .map(|g| gate::evaluate(g, &scopes))
        .collect();

    let slo = run.slo.as_ref().map(|s| s.verdict(&overall));
    Summary {
        schema_version: SCHEMA_VERSION,
        scenario: run.scenario.clone(),
        seed: run.seed,
        started_at_unix_ms: run.started_at_unix_ms,
        duration_s: duration,
        warmup_s: run.warmup_s,
        target: run.target.clone(),
        warmup_requests: run.records.iter().filter(|r| r.warmup).count() as u64,
        engines: run.engines.clone(),
        overall,
        groups: group_summaries,
        tenants: tenant_summaries,
        cost,
        gates,
        notes,
        slo,
        isolation: run.isolation.as_ref().map(|spec| {
            let ids: Vec<String> = tenants.iter().map(|(t, _)| t.id.clone()).collect();
            crate::isolation::evaluate(spec, &ids, &run.records)
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::aggregate::tests::{approx, failed_record, ok_record};
    use crate::cost::CostModel;
    use crate::gate::{GateOp, GateScope, GateSpec};
    use crate::record::Outcome;

    /// [`small_run`] as shard `index` of 2 of a scenario that also has tenant `z`, with one
    /// more gate scoped to `z`: a gate this shard must skip.
    pub(crate) fn shard_with_a_gate_on_an_absent_tenant(
        index: u32,
        name: &str,
        metric: &str,
        op: GateOp,
        threshold: f64,
    ) -> RunData {
        let mut run = small_run();
        run.shard = Some(crate::run::ShardInfo {
            index,
            count: 2,
            scenario_tenants: vec!["a".into(), "b".into(), "c".into(), "z".into()],
        });
        run.gates.push(GateSpec {
            name: name.to_owned(),
            scope: GateScope::Tenant("z".to_owned()),
            metric: metric.to_owned(),
            op,
            threshold,
        });
        run
    }

    pub(crate) fn small_run() -> RunData {
        let tenant = |id: &str, group: &str| TenantInfo {
            id: id.to_owned(),
            group: group.to_owned(),
            model: "chat-fast".to_owned(),
            lora: Some(format!("{id}-lora")),
            slo: None,
        };
        let mut records = Vec::new();
        for i in 0..10u32 {
            let t = f64::from(i) * 100.0 + 5000.0;
            records.push(ok_record("a", t, 100.0 + f64::from(i), 1000.0));
            records.push(ok_record("b", t, 300.0 + f64::from(i), 2000.0));
        }
        records.push(failed_record("b", Outcome::RateLimited));
        let mut warm = ok_record("a", 10.0, 9000.0, 9999.0);
        warm.warmup = true;
        records.push(warm);
        for (i, r) in records.iter_mut().enumerate() {
            r.id = i as u64;
            r.group = if r.tenant == "c" { "solo" } else { "pair" }.to_owned();
        }
        RunData {
            scenario: "unit".to_owned(),
            seed: 7,
            started_at_unix_ms: 1_700_000_000_000,
            duration_s: 10.0,
            warmup_s: 5.0,
            target: "embedded".to_owned(),
            tenants: vec![
                tenant("a", "pair"),
                tenant("b", "pair"),
                tenant("c", "solo"),
            ],
            records,
            cost: CostModel {
                server_gbp_per_month: 300.0,
                lora_training_gbp_per_tenant: 0.0,
                lora_amortisation_months: 12.0,
                api_input_gbp_per_mtok: 0.0,
                api_output_gbp_per_mtok: 1.0,
                active_hours_per_month: 730.0,
            },
            gates: vec![
                GateSpec {
                    name: "fast-ttft".to_owned(),
                    scope: GateScope::Group("pair".to_owned()),
                    metric: "ttft_ms.p99".to_owned(),
                    op: GateOp::Lt,
                    threshold: 800.0,
                },
                GateSpec {
                    name: "no-429".to_owned(),
                    scope: GateScope::EachTenant,
                    metric: "outcomes.rate_limited".to_owned(),
                    op: GateOp::Le,
                    threshold: 0.0,
                },
            ],
            engines: Vec::new(),
            notes: vec!["from a unit test".to_owned()],
            slo: None,
            group_slos: Vec::new(),
            isolation: None,
            shard: None,
        }
    }

    #[test]
    fn tenants_groups_and_overall_line_up() {
        let s = summarize(&small_run());
        let ids: Vec<_> = s.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(s.warmup_requests, 1);
        assert_eq!(s.overall.requests, 21);
        assert_eq!(s.overall.outcomes.ok, 20);
        assert_eq!(s.overall.outcomes.rate_limited, 1);
        // The warm-up record's 9 s TTFT must not appear anywhere.
        assert!(s.overall.ttft_ms.max.is_some_and(|m| m < 1000.0));
        let pair = &s.groups[0];
        assert_eq!((pair.group.as_str(), pair.tenant_count), ("pair", 2));
        assert_eq!(pair.stats, s.overall);
        let c = s.tenant("c").map(|t| t.stats.ttft_ms.p50);
        assert_eq!(
            c,
            Some(None),
            "a tenant with no requests has null percentiles"
        );
    }

    #[test]
    fn group_percentiles_come_from_merged_histograms() {
        let s = summarize(&small_run());
        // a's TTFTs are 100..109 ms, b's 300..309 ms; the merged median is a's top value,
        // which no average of the two tenants' medians would give.
        assert!(approx(
            s.tenant("a").and_then(|t| t.stats.ttft_ms.p50),
            104.0
        ));
        assert!(approx(
            s.tenant("b").and_then(|t| t.stats.ttft_ms.p50),
            304.0
        ));
        assert!(approx(s.groups[0].stats.ttft_ms.p50, 109.0));
    }

    #[test]
    fn cost_and_gates_are_filled() {
        let s = summarize(&small_run());
        assert_eq!(s.cost.tenants, 3);
        assert_eq!(s.cost.per_tenant_month, Some(100.0));
        // a and b each: 100 output tokens in 10 s → 26,280,000 a month → £26.28; c: £0.
        let api = s.tenant("a").map(|t| t.cost.api_gbp_per_month);
        assert!(api.is_some_and(|v| (v - 26.28).abs() < 1e-9), "{api:?}");
        // Average £17.52 a tenant: 300 / n < 17.52 ⇔ n > 17.12… → 18.
        assert_eq!(s.cost.breakeven_tenants, Some(18));
        assert!(s.gates[0].passed, "{:?}", s.gates[0]);
        assert!(!s.gates[1].passed);
        assert_eq!(s.gates[1].failures.len(), 1);
        assert!(!s.gates_passed());
        assert_eq!(s.failed_gates().count(), 1);
    }

    #[test]
    fn undeclared_tenants_are_reported_with_a_note() {
        let mut run = small_run();
        run.records.push(ok_record("ghost", 6000.0, 50.0, 60.0));
        let s = summarize(&run);
        assert!(s.tenant("ghost").is_some());
        assert!(s.notes.iter().any(|n| n.contains("ghost")), "{:?}", s.notes);
    }

    #[test]
    fn summary_round_trips_through_json() {
        let s = summarize(&small_run());
        let text = serde_json::to_string(&s).unwrap_or_default();
        let back: Summary = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(back, s);
    }
}
