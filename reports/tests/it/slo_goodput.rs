//! Goodput and SLO verdicts through `reports::summarize`: a small run whose records are chosen
//! by hand, so every expected figure can be counted on one's fingers.
//!
//! Goodput is `vllm bench serve --goodput`'s: requests per second of the measured window that
//! met every per-request threshold of their tenant's SLO (`docs/metrics.md`).

use reports::{Outcome, RequestRecord, RunData, SloSpec, Summary, TenantInfo, summarize};

use crate::common::synthetic_run;

const WINDOW_S: f64 = 10.0;
const WARMUP_S: f64 = 2.0;

fn tenant(id: &str, group: &str, slo: Option<SloSpec>) -> TenantInfo {
    TenantInfo {
        id: id.to_owned(),
        group: group.to_owned(),
        model: "chat-fast".to_owned(),
        lora: None,
        slo,
    }
}

/// A successful request of 11 tokens at `at_s` with the given TTFT and E2E (10 token gaps
/// splitting the rest evenly).
fn ok(tenant: &str, at_s: f64, ttft_ms: f64, e2e_ms: f64) -> RequestRecord {
    let gap = (e2e_ms - ttft_ms) / 10.0;
    RequestRecord {
        id: 0,
        tenant: tenant.to_owned(),
        group: String::new(),
        model: "chat-fast".to_owned(),
        outcome: Outcome::Ok,
        status: 200,
        warmup: at_s < WARMUP_S,
        intended_start_ms: at_s * 1000.0,
        actual_start_ms: at_s * 1000.0,
        dispatched_ms: None,
        ttft_ms: Some(ttft_ms),
        ttfc_ms: Some(ttft_ms),
        tpot_ms: Some(gap),
        e2e_ms: Some(e2e_ms),
        itl_ms: vec![gap; 10],
        chunk_gaps_ms: vec![gap; 10],
        input_tokens: 100,
        output_tokens: 11,
        output_tokens_estimated: false,
        error: None,
    }
}

fn failed(tenant: &str, at_s: f64, outcome: Outcome) -> RequestRecord {
    RequestRecord {
        outcome,
        status: 0,
        ttft_ms: None,
        ttfc_ms: None,
        tpot_ms: None,
        e2e_ms: None,
        itl_ms: Vec::new(),
        chunk_gaps_ms: Vec::new(),
        output_tokens: 0,
        error: Some(format!("{outcome}")),
        ..ok(tenant, at_s, 0.0, 0.0)
    }
}

fn slo(percentile: u8) -> SloSpec {
    SloSpec {
        percentile,
        ttft_ms: Some(200.0),
        e2e_ms: Some(1000.0),
        ..SloSpec::default()
    }
}

/// Tenant `a` (SLO: TTFT ≤ 200 ms, E2E ≤ 1 s) sends, in the measured window, 16 requests that
/// meet it, 2 with a 300 ms TTFT, 1 with a 1.5 s E2E and 1 timeout; in the warm-up, one that
/// meets it (never counted). Tenant `b` has no SLO and 5 fast requests. Goodput: a 16 / 10 s.
fn run(slo_a: SloSpec) -> RunData {
    let mut records = Vec::new();
    for i in 0..16 {
        records.push(ok("a", 2.0 + 0.5 * f64::from(i), 100.0, 500.0));
    }
    records.push(ok("a", 3.1, 300.0, 700.0));
    records.push(ok("a", 4.1, 300.0, 700.0));
    records.push(ok("a", 5.1, 150.0, 1500.0));
    records.push(failed("a", 6.1, Outcome::Timeout));
    records.push(ok("a", 1.0, 100.0, 500.0));
    for i in 0..5 {
        records.push(ok("b", 3.0 + f64::from(i), 50.0, 300.0));
    }
    for (i, r) in records.iter_mut().enumerate() {
        r.id = i as u64;
        r.group = if r.tenant == "a" { "ga" } else { "gb" }.to_owned();
    }
    RunData {
        duration_s: WINDOW_S,
        warmup_s: WARMUP_S,
        tenants: vec![tenant("a", "ga", Some(slo_a)), tenant("b", "gb", None)],
        records,
        gates: Vec::new(),
        slo: None,
        group_slos: Vec::new(),
        isolation: None,
        ..synthetic_run(1)
    }
}

fn stats_of<'a>(s: &'a Summary, id: &str) -> &'a reports::Statistics {
    &s.tenant(id)
        .unwrap_or_else(|| panic!("no tenant {id}"))
        .stats
}

#[test]
fn goodput_counts_only_measured_requests_meeting_every_threshold() {
    let s = summarize(&run(slo(99)));
    let a = stats_of(&s, "a");
    assert_eq!(a.requests, 20, "warm-up excluded");
    assert_eq!(a.outcomes.ok, 19);
    assert_eq!(a.slo_met_requests, 16);
    assert_eq!(a.goodput_per_s, Some(1.6));
    assert_eq!(a.requests_per_s, Some(1.9), "goodput is below throughput");
    // No SLO applies to b: no goodput at all rather than 0 or its throughput.
    let b = stats_of(&s, "b");
    assert_eq!((b.slo_met_requests, b.goodput_per_s), (0, None));
    // Groups and overall merge the tenants' counts over the same window.
    assert_eq!(s.overall.slo_met_requests, 16);
    assert_eq!(s.overall.goodput_per_s, Some(1.6));
    let gb = s.groups.iter().find(|g| g.group == "gb");
    assert_eq!(gb.map(|g| g.stats.goodput_per_s), Some(None));
}

#[test]
fn an_slo_missed_at_its_percentile_fails_the_verdict_and_the_run() {
    // a's TTFT p99 is 300 ms: over the 200 ms threshold; p50 (100 ms) is within it.
    let strict = summarize(&run(slo(99)));
    let verdict = strict
        .tenant("a")
        .and_then(|t| t.slo.clone())
        .unwrap_or_else(|| panic!("a has an SLO, so a verdict"));
    assert!(!verdict.passed);
    let ttft = verdict.checks.iter().find(|c| c.metric == "ttft_ms.p99");
    assert!(
        ttft.is_some_and(|c| !c.passed && c.observed.is_some_and(|v| v > 200.0)),
        "{verdict:?}"
    );
    let e2e = verdict.checks.iter().find(|c| c.metric == "e2e_ms.p99");
    assert!(e2e.is_some_and(|c| !c.passed), "{verdict:?}");
    assert!(!strict.slos_passed());
    assert_eq!(strict.tenant("b").map(|t| t.slo.is_none()), Some(true));

    let lenient = summarize(&run(slo(50)));
    let verdict = lenient.tenant("a").and_then(|t| t.slo.clone());
    assert!(verdict.as_ref().is_some_and(|v| v.passed), "{verdict:?}");
    assert!(lenient.slos_passed());
    // The percentile changes scope verdicts only: per request, the thresholds are the same.
    assert_eq!(stats_of(&lenient, "a").slo_met_requests, 16);
}

#[test]
fn error_rate_group_and_scenario_slos_give_their_own_verdicts() {
    let spec = |max_error_rate: f64| SloSpec {
        percentile: 50,
        ttft_ms: Some(200.0),
        max_error_rate: Some(max_error_rate),
        ..SloSpec::default()
    };
    // a: 1 timeout in 20 measured requests; overall: 1 in 25.
    let mut data = run(spec(0.1));
    data.group_slos = vec![("ga".to_owned(), spec(0.04))];
    data.slo = Some(spec(0.04));
    let s = summarize(&data);
    let passed = |v: &Option<reports::SloVerdict>| v.as_ref().map(|v| v.passed);
    assert_eq!(
        passed(&s.tenant("a").and_then(|t| t.slo.clone())),
        Some(true)
    );
    let ga = s.groups.iter().find(|g| g.group == "ga");
    assert_eq!(ga.map(|g| passed(&g.slo)), Some(Some(false)), "5 % > 4 %");
    // gb has no SLO of its own: the scenario's judges it (no errors, 50 ms TTFTs).
    assert_eq!(
        s.groups
            .iter()
            .find(|g| g.group == "gb")
            .map(|g| passed(&g.slo)),
        Some(Some(true))
    );
    assert_eq!(passed(&s.slo), Some(true), "4 % ≤ 4 %");
    let rate = s
        .slo
        .as_ref()
        .and_then(|v| v.checks.iter().find(|c| c.metric == "error_rate"))
        .and_then(|c| c.observed);
    assert_eq!(rate, Some(0.04));
    assert!(!s.slos_passed(), "one failed verdict fails the run");
}

#[test]
fn a_group_without_its_own_slo_is_judged_by_the_scenarios() {
    // a's TTFT p99 is 300 ms, b's 50 ms; the scenario allows 200 ms at p99.
    let scenario_slo = slo(99);
    let mut data = run(slo(99));
    data.slo = Some(scenario_slo.clone());
    let s = summarize(&data);
    let group = |name: &str| {
        s.groups
            .iter()
            .find(|g| g.group == name)
            .and_then(|g| g.slo.clone())
            .unwrap_or_else(|| panic!("group {name} has no verdict: {:?}", s.groups))
    };
    let (ga, gb) = (group("ga"), group("gb"));
    assert_eq!(ga.spec, scenario_slo);
    assert!(!ga.passed, "ga holds a's 300 ms TTFTs: {ga:?}");
    assert!(gb.passed, "{gb:?}");
    assert!(!s.slos_passed());

    // A group's own SLO still wins over the scenario's.
    let mut own = data.clone();
    own.group_slos = vec![("ga".to_owned(), slo(50))];
    let s = summarize(&own);
    let ga = s
        .groups
        .iter()
        .find(|g| g.group == "ga")
        .and_then(|g| g.slo.clone());
    assert!(ga.is_some_and(|v| v.spec.percentile == 50 && v.passed));

    // No SLO anywhere: no group verdict at all.
    let s = summarize(&run(slo(99)));
    assert!(s.groups.iter().all(|g| g.slo.is_none()), "{:?}", s.groups);
}
