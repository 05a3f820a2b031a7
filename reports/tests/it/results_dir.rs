//! The results directory of a synthetic 30-tenant run, checked by parsing every file back:
//! `summary.json` against the committed JSON Schema, the CSVs with their row types, the interval
//! logs with the HdrHistogram decoder, and `report.html` for self-containment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use reports::aggregate::METRICS;
use reports::distribution::Distribution;
use reports::interval_log::read_interval_log;
use reports::{Outcome, RequestRow, Summary, TenantRow, render_table, summarize, write_results};
use serde_json::Value;

use crate::common::{STARVED, TENANTS, THROTTLED, synthetic_run};

fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/summary.schema.json")
}

/// Compiles the committed schema and validates `instance`; `Err` carries boon's explanation.
fn validate(instance: &Value) -> Result<(), String> {
    let text = std::fs::read_to_string(schema_path()).map_err(|e| e.to_string())?;
    let schema: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let url = "file:///reports/schema/summary.schema.json";
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource(url, schema)
        .map_err(|e| e.to_string())?;
    let mut schemas = boon::Schemas::new();
    let index = compiler
        .compile(url, &mut schemas)
        .map_err(|e| format!("{e:#}"))?;
    schemas
        .validate(instance, index)
        .map_err(|e| format!("{e:#}"))
}

struct Written {
    _dir: tempfile::TempDir,
    path: PathBuf,
    run: reports::RunData,
    summary: Summary,
}

fn write(seed: u64) -> Written {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("results").join("synthetic");
    let run = synthetic_run(seed);
    let summary = summarize(&run);
    write_results(&path, &run, &summary).unwrap_or_else(|e| panic!("write_results: {e}"));
    Written {
        _dir: dir,
        path,
        run,
        summary,
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn summary_json_matches_the_committed_schema_and_the_contract() {
    let w = write(42);
    let json: Value = serde_json::from_str(&read(&w.path.join("summary.json")))
        .unwrap_or_else(|e| panic!("summary.json is not JSON: {e}"));
    if let Err(e) = validate(&json) {
        panic!("summary.json does not match the schema: {e}");
    }

    // DESIGN §6 field names, read as a CI script would.
    for key in [
        "scenario",
        "seed",
        "duration_s",
        "overall",
        "tenants",
        "groups",
        "cost",
        "gates",
    ] {
        assert!(json.get(key).is_some(), "summary.json lacks `{key}`");
    }
    let tenants = json["tenants"].as_array().cloned().unwrap_or_default();
    assert_eq!(tenants.len(), TENANTS);
    for t in &tenants {
        assert!(t["tenant"].is_string() && t["group"].is_string(), "{t}");
        for o in Outcome::ALL {
            assert!(
                t["outcomes"][o.as_str()].is_u64(),
                "{} lacks outcomes.{o}",
                t["tenant"]
            );
        }
        for m in ["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"] {
            for p in ["p50", "p90", "p99", "max", "mean"] {
                assert!(t[m].get(p).is_some(), "{} lacks {m}.{p}", t["tenant"]);
            }
        }
    }
    assert!(json["cost"]["per_tenant_month"].is_f64());
    assert!(json["cost"].get("breakeven_tenants").is_some());
    for g in json["gates"].as_array().cloned().unwrap_or_default() {
        for key in ["name", "passed", "observed", "threshold"] {
            assert!(g.get(key).is_some(), "gate lacks `{key}`: {g}");
        }
    }

    // The starved tenant has no success: null percentiles, never zeros.
    let starved = tenants
        .iter()
        .find(|t| t["tenant"] == STARVED)
        .cloned()
        .unwrap_or_default();
    assert_eq!(starved["outcomes"]["ok"], 0);
    assert!(starved["outcomes"]["rate_limited"].as_u64() > Some(0));
    assert!(
        starved["ttft_ms"]["p99"].is_null(),
        "{}",
        starved["ttft_ms"]
    );
    // The throttled tenant's 429s are counted apart from its successes.
    let throttled = w.summary.tenant(THROTTLED).map(|t| t.stats.outcomes);
    assert!(
        throttled.is_some_and(|o| o.rate_limited > 0 && o.ok > 0),
        "{throttled:?}"
    );

    // The file reads back into the same summary.
    let back: Summary = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, w.summary);
}

#[test]
fn the_schema_rejects_broken_summaries() {
    let w = write(7);
    let good = serde_json::to_value(&w.summary).unwrap_or(Value::Null);
    assert_eq!(validate(&good), Ok(()));

    let mut zero_for_no_data = good.clone();
    // A tenant with no successes reporting 0 ms instead of null.
    if let Some(t) = zero_for_no_data["tenants"]
        .as_array_mut()
        .and_then(|ts| ts.iter_mut().find(|t| t["tenant"] == STARVED))
    {
        t["ttft_ms"]["p99"] = Value::from(0.0);
    }
    assert!(
        validate(&zero_for_no_data).is_err(),
        "0 for no data must be refused"
    );

    let mut missing = good.clone();
    if let Some(o) = missing["overall"].as_object_mut() {
        o.remove("e2e_ms");
    }
    assert!(
        validate(&missing).is_err(),
        "a missing contract field must be refused"
    );

    let mut renamed = good;
    if let Some(t) = renamed["tenants"][0].as_object_mut() {
        let id = t.remove("tenant").unwrap_or(Value::Null);
        t.insert("tenant_id".to_owned(), id);
    }
    assert!(
        validate(&renamed).is_err(),
        "a renamed field must be refused"
    );
}

#[test]
fn csv_files_parse_back_into_their_rows() {
    let w = write(42);

    let mut reader = csv::Reader::from_path(w.path.join("requests.csv"))
        .unwrap_or_else(|e| panic!("requests.csv: {e}"));
    let headers = reader.headers().cloned().unwrap_or_default();
    for col in [
        "tenant",
        "group",
        "model",
        "outcome",
        "status",
        "warmup",
        "intended_start_ms",
        "actual_start_ms",
        "ttft_ms",
        "ttfc_ms",
        "tpot_ms",
        "e2e_ms",
        "input_tokens",
        "output_tokens",
        "output_tokens_estimated",
        "error",
    ] {
        assert!(headers.iter().any(|h| h == col), "requests.csv lacks {col}");
    }
    let rows: Vec<RequestRow> = reader
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("requests.csv row: {e}"));
    assert_eq!(rows.len(), w.run.records.len());
    for (row, record) in rows.iter().zip(&w.run.records) {
        assert_eq!(row, &RequestRow::from(record));
    }
    assert!(
        rows.iter().any(|r| r.warmup),
        "warm-up requests belong in requests.csv"
    );
    // None is an empty cell, not 0 or "null".
    let raw = read(&w.path.join("requests.csv"));
    let failed = raw
        .lines()
        .find(|l| l.contains(",rate_limited,"))
        .unwrap_or_default();
    assert!(failed.contains(",,"), "{failed}");
    assert!(!raw.contains("null") && !raw.contains("None"));

    let mut reader = csv::Reader::from_path(w.path.join("tenants.csv"))
        .unwrap_or_else(|e| panic!("tenants.csv: {e}"));
    let rows: Vec<TenantRow> = reader
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("tenants.csv row: {e}"));
    assert_eq!(rows.len(), TENANTS);
    for (row, t) in rows.iter().zip(&w.summary.tenants) {
        assert_eq!(row.tenant, t.tenant);
        assert_eq!(row.ok, t.stats.outcomes.ok);
        assert_eq!(row.rate_limited, t.stats.outcomes.rate_limited);
        assert_eq!(row.ttft_p99_ms, t.stats.ttft_ms.p99);
        assert_eq!(row.api_gbp_per_month, t.cost.api_gbp_per_month);
    }
    let starved = rows.iter().find(|r| r.tenant == STARVED);
    assert!(starved.is_some_and(|r| r.ttft_p50_ms.is_none() && r.requests_per_s == Some(0.0)));
}

#[test]
fn interval_logs_hold_every_tenants_histograms() {
    let w = write(42);
    for metric in METRICS {
        assert!(
            w.path
                .join("histograms")
                .join(format!("{metric}.hlog"))
                .is_file(),
            "{metric}"
        );
    }
    let bytes = std::fs::read(w.path.join("histograms/ttft_ms.hlog")).unwrap_or_default();
    let intervals = read_interval_log(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let mut per_tenant: HashMap<String, Distribution> = HashMap::new();
    for i in &intervals {
        assert!(
            i.start.as_secs_f64() < w.run.duration_s,
            "interval at {:?}",
            i.start
        );
        let tag = i.tag.clone().unwrap_or_default();
        per_tenant
            .entry(tag)
            .or_default()
            .merge_histogram(&i.histogram);
    }
    // Summing a tenant's intervals gives exactly its summary figures.
    for t in &w.summary.tenants {
        let stats = per_tenant
            .get(&t.tenant)
            .map(Distribution::stats)
            .unwrap_or_default();
        assert_eq!(stats, t.stats.ttft_ms, "{}", t.tenant);
    }
    assert!(
        !per_tenant.contains_key(STARVED),
        "a tenant with no success has no TTFT lines"
    );
}

#[test]
fn report_html_is_self_contained_with_every_plot() {
    let w = write(42);
    let html = read(&w.path.join("report.html"));
    assert!(html.starts_with("<!DOCTYPE html>"));
    for forbidden in [
        "src=\"http",
        "src='http",
        "<script",
        "<link",
        "@import",
        "url(",
    ] {
        assert!(
            !html.contains(forbidden),
            "report.html contains {forbidden}"
        );
    }
    let plot_files: Vec<String> = std::fs::read_dir(w.path.join("plots"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(plot_files.len() >= 3, "{plot_files:?}");
    for file in &plot_files {
        assert!(file.ends_with(".svg"));
        let svg = read(&w.path.join("plots").join(file));
        assert!(svg.starts_with("<svg"), "{file}");
        let stem = file.trim_end_matches(".svg");
        // Each plot is inlined in its own figure.
        let at = html
            .find(&format!("<figure id=\"{stem}\">"))
            .unwrap_or_else(|| panic!("no figure for {file}"));
        assert!(html[at..].contains("<svg"), "{file} not inlined");
    }
    assert_eq!(html.matches("<svg").count(), plot_files.len());
    for required in [
        "latency_by_tenant",
        "ttft_over_time",
        "throughput_over_time",
    ] {
        assert!(
            plot_files.iter().any(|f| f.starts_with(required)),
            "missing {required}"
        );
    }
    for t in &w.summary.tenants {
        assert!(
            html.contains(&format!(">{}<", t.tenant)),
            "no row for {}",
            t.tenant
        );
    }
    // The stream error text with a quote and a newline reaches no attribute unescaped.
    assert!(!html.contains("\"retry\""));
    assert!(html.contains("Break-even"));
}

#[test]
fn table_and_gates_tell_the_same_story() {
    let w = write(42);
    let table = render_table(&w.summary);
    for t in &w.summary.tenants {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().next() == Some(t.tenant.as_str())),
            "no row for {}",
            t.tenant
        );
    }
    // The starved tenant fails "every tenant served", and nothing else fails.
    assert!(!w.summary.gates_passed());
    let failed: Vec<&str> = w.summary.failed_gates().map(|g| g.name.as_str()).collect();
    assert_eq!(failed, ["every-tenant-served"]);
    assert!(table.contains("FAIL every-tenant-served"), "{table}");
    assert!(table.contains(STARVED));
    assert!(table.contains("PASS ttft-p99-small"));
    assert!(table.contains("gates: 2 passed, 1 failed\n"), "{table}");
    // No SLO in this run: no SLO line to contradict the exit code.
    assert!(w.summary.slos_passed());
    assert!(!table.contains("SLOs:"), "{table}");

    // A scenario SLO the strong group (three times slower) misses: the overall run, the group
    // and its tenants get verdicts, and the table counts them as the exit code does.
    let mut run = synthetic_run(42);
    run.slo = Some(reports::SloSpec {
        percentile: 50,
        ttft_ms: Some(150.0),
        ..reports::SloSpec::default()
    });
    for t in &mut run.tenants {
        t.slo = run.slo.clone();
    }
    let s = summarize(&run);
    let table = render_table(&s);
    let verdicts: Vec<(String, bool)> = s
        .slo
        .iter()
        .map(|v| ("overall".to_owned(), v.passed))
        .chain(s.groups.iter().filter_map(|g| {
            g.slo
                .as_ref()
                .map(|v| (format!("group {}", g.group), v.passed))
        }))
        .chain(s.tenants.iter().filter_map(|t| {
            t.slo
                .as_ref()
                .map(|v| (format!("tenant {}", t.tenant), v.passed))
        }))
        .collect();
    assert_eq!(verdicts.len(), 1 + 3 + TENANTS, "every scope is judged");
    let missed: Vec<&str> = verdicts
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(scope, _)| scope.as_str())
        .collect();
    assert!(missed.contains(&"group strong"), "{missed:?}");
    assert!(!missed.contains(&"group small"), "{missed:?}");
    assert!(!s.slos_passed(), "a missed SLO exits 3");
    let line = format!(
        "SLOs: {} met, {} missed\n",
        verdicts.len() - missed.len(),
        missed.len()
    );
    assert!(table.contains(&line), "want {line:?} in\n{table}");
    for scope in &missed {
        assert!(
            table.contains(&format!("  MISS {scope}: ttft_ms.p50 = ")),
            "{scope}:\n{table}"
        );
    }
}

#[test]
fn a_shard_table_and_junit_show_skipped_gates_as_skipped() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut run = synthetic_run(42);
    run.shard = Some(reports::ShardInfo {
        index: 0,
        count: 2,
        scenario_tenants: run.tenants.iter().map(|t| t.id.clone()).collect(),
    });
    run.gates.push(reports::GateSpec {
        name: "elsewhere-fast".to_owned(),
        scope: reports::GateScope::Tenant("tenant-99".to_owned()),
        metric: "ttft_ms.p99".to_owned(),
        op: reports::GateOp::Lt,
        threshold: 2000.0,
    });
    let summary = summarize(&run);
    write_results(dir.path(), &run, &summary).unwrap_or_else(|e| panic!("write_results: {e}"));
    let table = render_table(&summary);
    assert!(
        table.contains("gates: 2 passed, 1 failed, 1 skipped\n"),
        "{table}"
    );
    let junit = read(&dir.path().join("junit.xml"));
    assert!(
        junit.contains("name=\"gates\" tests=\"4\" failures=\"1\" skipped=\"1\""),
        "{junit}"
    );
    assert!(
        junit.contains("name=\"elsewhere-fast\">\n      <skipped message=\""),
        "{junit}"
    );
    // summary.json keeps the contract: the skipped gate has passed = true and its reason.
    let json: Value = serde_json::from_str(&read(&dir.path().join("summary.json")))
        .unwrap_or_else(|e| panic!("summary.json: {e}"));
    if let Err(e) = validate(&json) {
        panic!("summary.json of a shard does not match the schema: {e}");
    }
    let gate = json["gates"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "elsewhere-fast"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(gate["passed"], true, "{gate}");
    assert!(gate["skipped"].is_string(), "{gate}");
}

#[test]
fn same_seed_same_files_other_seed_other_numbers() {
    let a = write(42);
    let b = write(42);
    let c = write(43);
    for file in ["summary.json", "requests.csv", "tenants.csv", "report.html"] {
        assert_eq!(
            read(&a.path.join(file)),
            read(&b.path.join(file)),
            "{file} differs"
        );
    }
    assert_ne!(
        read(&a.path.join("summary.json")),
        read(&c.path.join("summary.json"))
    );
}

#[test]
fn isolation_verdicts_reach_the_schema_the_table_and_the_report() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("results");
    let mut run = synthetic_run(7);
    let end_s = run.warmup_s + run.duration_s;
    let half = end_s / 2.0;
    run.isolation = Some(reports::IsolationSpec {
        baseline: reports::isolation::Phase {
            name: "baseline".into(),
            start_s: 0.0,
            end_s: half,
        },
        test: reports::isolation::Phase {
            name: "flood".into(),
            start_s: half,
            end_s,
        },
        aggressors: vec![reports::isolation::Aggressor {
            tenant: "tenant-20".into(),
            rpm_limit: Some(1_000),
            tpm_limit: None,
        }],
        metric: "ttft_ms".into(),
        percentile: 90,
        max_ratio: 1.5,
        limit_tolerance: 0.1,
        min_samples: None,
    });
    let summary = summarize(&run);
    write_results(&path, &run, &summary).unwrap_or_else(|e| panic!("write_results: {e}"));
    let json: Value = serde_json::from_str(&read(&path.join("summary.json")))
        .unwrap_or_else(|e| panic!("summary.json: {e}"));
    if let Err(e) = validate(&json) {
        panic!("summary.json with isolation does not match the schema: {e}");
    }
    let iso = &json["isolation"];
    assert_eq!(iso["min_samples"], 50, "5 ÷ (1 − 0.9)");
    assert_eq!(iso["victims"].as_array().map(Vec::len), Some(TENANTS - 1));
    assert_eq!(iso["pooled"]["tenant"], "(all victims)");
    assert_eq!(iso["pooled"]["judged"], true, "{}", iso["pooled"]);
    let table = render_table(&summary);
    assert!(table.contains("isolation (baseline → flood"), "{table}");
    assert!(table.contains("aggressor tenant-20"), "{table}");
    let html = read(&path.join("report.html"));
    assert!(html.contains("id=\"isolation\""));
    assert!(html.contains("(all victims)"));
}
