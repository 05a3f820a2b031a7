//! The plain-text summary the binary prints at the end of a run: one row per tenant, the groups,
//! the overall row, the cost and break-even lines, the gate and SLO verdicts.
//!
//! The verdict lines must tell the same story as the exit code: a reader who sees no failure
//! here must not get exit 3, and a gate a shard could not judge is shown as skipped, not passed.

use std::fmt::Write as _;

use crate::aggregate::Statistics;
use crate::cost::{CostSummary, TenantCost};
use crate::slo::SloVerdict;
use crate::summary::Summary;

/// Column headings; the first two (tenant and group) are left-aligned and sized to the data.
const NUMERIC_HEADINGS: [&str; 12] = [
    "ok",
    "429",
    "budget",
    "errors",
    "req/s",
    "TTFT p50",
    "TTFT p99",
    "ITL p50",
    "ITL p99",
    "E2E p99",
    "£/mo self",
    "£/mo API",
];

/// Renders the terminal summary (times in ms, money in £ per month).
pub fn render_table(summary: &Summary) -> String {
    let mut rows: Vec<(String, String, Vec<String>)> = Vec::new();
    for t in &summary.tenants {
        rows.push((
            t.tenant.clone(),
            t.group.clone(),
            cells(&t.stats, Some(&t.cost)),
        ));
    }
    if summary.groups.len() > 1 {
        for g in &summary.groups {
            let label = format!("[{} tenants]", g.tenant_count);
            rows.push((label, g.group.clone(), cells(&g.stats, Some(&g.cost))));
        }
    }
    rows.push(("overall".to_owned(), String::new(), overall_cells(summary)));

    let name_w = width("tenant", rows.iter().map(|r| r.0.as_str()));
    let group_w = width("group", rows.iter().map(|r| r.1.as_str()));
    let num_w: Vec<usize> = NUMERIC_HEADINGS
        .iter()
        .enumerate()
        .map(|(i, h)| width(h, rows.iter().map(|r| r.2[i].as_str())))
        .collect();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {} · seed {} · {} s measured after {} s warm-up · target {}",
        summary.scenario, summary.seed, summary.duration_s, summary.warmup_s, summary.target
    );
    let mut line = format!("{:<name_w$}  {:<group_w$}", "tenant", "group");
    for (h, w) in NUMERIC_HEADINGS.iter().zip(&num_w) {
        let _ = write!(line, "  {h:>w$}");
    }
    let rule = "-".repeat(line.chars().count());
    let _ = writeln!(out, "{line}\n{rule}");
    let last = rows.len() - 1;
    for (i, (name, group, nums)) in rows.iter().enumerate() {
        if i == last {
            let _ = writeln!(out, "{rule}");
        }
        let mut line = format!("{name:<name_w$}  {group:<group_w$}");
        for (v, w) in nums.iter().zip(&num_w) {
            let _ = write!(line, "  {v:>w$}");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }

    let _ = writeln!(out);
    out.push_str(&cost_lines(&summary.cost));
    if !summary.gates.is_empty() {
        let _ = write!(
            out,
            "gates: {} passed, {} failed",
            summary.passed_gates().count(),
            summary.failed_gates().count()
        );
        let skipped = summary.skipped_gates().count();
        if skipped > 0 {
            let _ = write!(out, ", {skipped} skipped");
        }
        let _ = writeln!(out);
        for g in &summary.gates {
            let _ = writeln!(out, "  {}", g.describe());
        }
    }
    out.push_str(&slo_lines(summary));
    if let Some(i) = &summary.isolation {
        out.push_str(&isolation_lines(i));
    }
    for n in &summary.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// The SLO verdicts: how many scopes met theirs and how many missed, then one line per miss
/// (every verdict would be a line per tenant; the misses are what explain an exit 3).
fn slo_lines(summary: &Summary) -> String {
    let mut verdicts: Vec<(String, &SloVerdict)> = Vec::new();
    if let Some(v) = &summary.slo {
        verdicts.push(("overall".to_owned(), v));
    }
    for g in &summary.groups {
        if let Some(v) = &g.slo {
            verdicts.push((format!("group {}", g.group), v));
        }
    }
    for t in &summary.tenants {
        if let Some(v) = &t.slo {
            verdicts.push((format!("tenant {}", t.tenant), v));
        }
    }
    let mut out = String::new();
    if verdicts.is_empty() {
        return out;
    }
    let missed = verdicts.iter().filter(|(_, v)| !v.passed).count();
    let _ = writeln!(
        out,
        "SLOs: {} met, {missed} missed",
        verdicts.len() - missed
    );
    for (scope, v) in verdicts.iter().filter(|(_, v)| !v.passed) {
        let checks: Vec<String> = v
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| {
                format!(
                    "{} = {} (must be <= {})",
                    c.metric,
                    c.observed.map_or_else(|| "no data".to_owned(), number),
                    number(c.threshold)
                )
            })
            .collect();
        let _ = writeln!(out, "  MISS {scope}: {}", checks.join("; "));
    }
    out
}

/// A configured limit, or `none`.
pub(crate) fn limit(l: Option<u64>) -> String {
    l.map_or_else(|| "none".to_owned(), |l| l.to_string())
}

/// The isolation verdict: the pooled victims, each victim, each aggressor.
pub(crate) fn isolation_lines(i: &crate::IsolationReport) -> String {
    let mut out = String::new();
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "isolation ({} → {}, {} ratio <= {}): {}; victims {}, aggressor limits {}",
        i.baseline.name,
        i.test.name,
        i.metric,
        number(i.max_ratio),
        verdict(i.passed),
        verdict(i.victims_passed),
        if i.limits_held { "held" } else { "BROKEN" }
    );
    for v in i.pooled.iter().chain(&i.victims) {
        let judged = if v.judged {
            verdict(v.passed).to_owned()
        } else {
            format!("not judged (fewer than {} samples)", i.min_samples)
        };
        let _ = writeln!(
            out,
            "  victim {}: {} → {} ms, ratio {} ({} / {} samples): {judged}",
            v.tenant,
            ms(v.baseline_ms),
            ms(v.test_ms),
            v.ratio
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            v.baseline_samples,
            v.test_samples,
        );
    }
    for a in &i.aggressors {
        let _ = writeln!(
            out,
            "  aggressor {}: offered {}/s, accepted {}/s, refused {}; busiest minute {} requests \
             (rpm_limit {}), {} tokens (tpm_limit {}): {}",
            a.tenant,
            number(a.offered_per_s),
            number(a.accepted_per_s),
            a.refused,
            a.max_accepted_requests_per_min,
            limit(a.rpm_limit),
            a.max_accepted_tokens_per_min,
            limit(a.tpm_limit),
            if a.limits_held { "held" } else { "BROKEN" }
        );
    }
    out
}

/// The cost and break-even lines (also used by the HTML report's text).
pub(crate) fn cost_lines(c: &CostSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cost: self-hosted {}/month (server {} + LoRA {}) for {} tenants = {} per tenant; \
         API equivalent {} per tenant",
        gbp(Some(c.self_hosted_gbp_per_month)),
        gbp(Some(c.server_gbp_per_month)),
        gbp(Some(c.lora_gbp_per_month)),
        c.tenants,
        gbp(c.per_tenant_month),
        gbp(c.api_per_tenant_month),
    );
    let _ = writeln!(out, "break-even: {}", breakeven_sentence(c));
    out
}

/// One sentence on break-even, for the terminal and the report.
pub(crate) fn breakeven_sentence(c: &CostSummary) -> String {
    match c.breakeven_tenants {
        Some(n) if n <= c.tenants => format!(
            "self-hosting beats the API from {n} tenants like these; this run has {}, so it \
             saves {}/month",
            c.tenants,
            gbp(Some(c.savings_gbp_per_month))
        ),
        Some(n) => format!(
            "self-hosting beats the API from {n} tenants like these; this run has only {}",
            c.tenants
        ),
        None => "never: at this traffic the API costs less per tenant than a tenant's LoRA \
                 training alone"
            .to_owned(),
    }
}

fn cells(s: &Statistics, cost: Option<&TenantCost>) -> Vec<String> {
    vec![
        s.outcomes.ok.to_string(),
        s.outcomes.rate_limited.to_string(),
        s.outcomes.budget_exceeded.to_string(),
        // The router refusing for rate or budget is it doing its job, not an error.
        (s.outcomes.failed() - s.outcomes.rate_limited - s.outcomes.budget_exceeded).to_string(),
        rate(s.requests_per_s),
        ms(s.ttft_ms.p50),
        ms(s.ttft_ms.p99),
        ms(s.itl_ms.p50),
        ms(s.itl_ms.p99),
        ms(s.e2e_ms.p99),
        gbp_bare(cost.map(|c| c.self_hosted_gbp_per_month)),
        gbp_bare(cost.map(|c| c.api_gbp_per_month)),
    ]
}

fn overall_cells(summary: &Summary) -> Vec<String> {
    let mut v = cells(&summary.overall, None);
    // Per tenant on the overall row, so the column reads the same all the way down.
    v[10] = gbp_bare(summary.cost.per_tenant_month);
    v[11] = gbp_bare(summary.cost.api_per_tenant_month);
    v
}

fn width<'a>(heading: &str, cells: impl Iterator<Item = &'a str>) -> usize {
    cells
        .map(|c| c.chars().count())
        .chain(std::iter::once(heading.chars().count()))
        .max()
        .unwrap_or(0)
}

/// A latency in ms with precision that suits its size; `-` for no data.
pub(crate) fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) if v < 1000.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

pub(crate) fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

pub(crate) fn gbp(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("£{v:.2}"))
}

/// A number with no more decimals than it needs (3 at most).
pub(crate) fn number(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    match s {
        "" | "-" | "-0" => "0".to_owned(),
        _ => s.to_owned(),
    }
}

fn gbp_bare(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Outcome;
    use crate::summary::{summarize, tests::small_run};

    #[test]
    fn table_has_a_row_per_tenant_and_the_verdicts() {
        let s = summarize(&small_run());
        let text = render_table(&s);
        let rows: Vec<&str> = text.lines().collect();
        for id in ["a", "b", "c", "overall"] {
            assert!(
                rows.iter().any(|l| l.split_whitespace().next() == Some(id)),
                "no row for {id}:\n{text}"
            );
        }
        let b = rows
            .iter()
            .find(|l| l.starts_with("b "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default();
        // tenant, group, ok, 429, budget, errors …
        assert_eq!(&b[..6], ["b", "pair", "10", "1", "0", "0"], "{text}");
        // c has no data: dashes, not zeros.
        let c = rows
            .iter()
            .find(|l| l.starts_with("c "))
            .copied()
            .unwrap_or("");
        assert!(c.contains(" - "), "{c}");
        assert!(text.contains("FAIL no-429"), "{text}");
        assert!(text.contains("break-even"), "{text}");
    }

    #[test]
    fn skipped_gates_are_counted_apart_from_passed_ones() {
        let unsharded = render_table(&summarize(&small_run()));
        assert!(
            unsharded.contains("gates: 1 passed, 1 failed\n"),
            "no `, 0 skipped`:\n{unsharded}"
        );

        // A shard that does not hold tenant `z`: its gate is skipped, not passed.
        let run = crate::summary::tests::shard_with_a_gate_on_an_absent_tenant(
            0,
            "z-fast",
            "ttft_ms.p99",
            crate::gate::GateOp::Lt,
            800.0,
        );
        let s = summarize(&run);
        let text = render_table(&s);
        assert!(
            text.contains("gates: 1 passed, 1 failed, 1 skipped\n"),
            "{text}"
        );
        assert!(text.contains("SKIP z-fast"), "{text}");
        // Skipping still fails nothing: the exit code follows the one real failure only.
        assert_eq!(s.failed_gates().count(), 1);
    }

    #[test]
    fn budget_refusals_have_their_own_column_not_errors() {
        let mut run = small_run();
        for i in 0..3 {
            let mut r = crate::aggregate::tests::failed_record("c", Outcome::BudgetExceeded);
            r.id = 100 + i;
            r.group = "solo".to_owned();
            run.records.push(r);
        }
        let mut timeout = crate::aggregate::tests::failed_record("c", Outcome::Timeout);
        timeout.group = "solo".to_owned();
        run.records.push(timeout);
        let text = render_table(&summarize(&run));
        let heading: Vec<&str> = text
            .lines()
            .nth(1)
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        assert_eq!(
            &heading[..6],
            ["tenant", "group", "ok", "429", "budget", "errors"]
        );
        let row = |id: &str| -> Vec<String> {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(id))
                .map(|l| l.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        // tenant, group, ok, 429, budget, errors: three refusals, one real error.
        assert_eq!(&row("c")[..6], ["c", "solo", "0", "0", "3", "1"], "{text}");
        // The overall row has no group cell: overall, ok, 429, budget, errors.
        assert_eq!(
            &row("overall")[..5],
            ["overall", "20", "1", "3", "1"],
            "{text}"
        );
    }

    #[test]
    fn no_slo_line_without_slos_and_misses_are_named() {
        let text = render_table(&summarize(&small_run()));
        assert!(!text.contains("SLOs:"), "{text}");
        let mut run = small_run();
        // a's TTFTs are 100..109 ms, b's 300..309 ms.
        run.slo = Some(crate::slo::SloSpec {
            ttft_ms: Some(200.0),
            ..crate::slo::SloSpec::default()
        });
        run.tenants[0].slo = run.slo.clone();
        let text = render_table(&summarize(&run));
        // Missed: overall and group pair (b's TTFTs are in them) and group solo (no data);
        // met: tenant a.
        assert!(text.contains("SLOs: 1 met, 3 missed\n"), "{text}");
        assert!(
            text.contains("  MISS group pair: ttft_ms.p99 = 309.247 (must be <= 200)"),
            "{text}"
        );
        assert!(
            text.contains("  MISS group solo: ttft_ms.p99 = no data"),
            "{text}"
        );
    }

    #[test]
    fn numbers_keep_only_needed_decimals() {
        assert_eq!(number(100.0), "100");
        assert_eq!(number(0.0663), "0.066");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(-0.0001), "0");
    }

    #[test]
    fn latency_precision_follows_magnitude() {
        assert_eq!(ms(None), "-");
        assert_eq!(ms(Some(1.234)), "1.23");
        assert_eq!(ms(Some(123.45)), "123.5");
        assert_eq!(ms(Some(12345.6)), "12346");
    }
}
