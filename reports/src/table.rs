//! The plain-text summary the binary prints at the end of a run: one row per tenant, the groups,
//! the overall row, the cost and break-even lines, and the gate verdicts.

use std::fmt::Write as _;

use crate::aggregate::Statistics;
use crate::cost::{CostSummary, TenantCost};
use crate::summary::Summary;

/// Column headings; the first two (tenant and group) are left-aligned and sized to the data.
const NUMERIC_HEADINGS: [&str; 11] = [
    "ok",
    "429",
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
        let failed = summary.failed_gates().count();
        let _ = writeln!(
            out,
            "gates: {} passed, {failed} failed",
            summary.gates.len() - failed
        );
        for g in &summary.gates {
            let _ = writeln!(out, "  {}", g.describe());
        }
    }
    if let Some(i) = &summary.isolation {
        out.push_str(&isolation_lines(i));
    }
    for n in &summary.notes {
        let _ = writeln!(out, "note: {n}");
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
        (s.outcomes.failed() - s.outcomes.rate_limited).to_string(),
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
    v[9] = gbp_bare(summary.cost.per_tenant_month);
    v[10] = gbp_bare(summary.cost.api_per_tenant_month);
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
        // tenant, group, ok, 429, errors …
        assert_eq!(&b[..5], ["b", "pair", "10", "1", "0"], "{text}");
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
