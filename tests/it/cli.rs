//! The command line as a user meets it: `check`, `run`, exit codes and the results directory.

use std::collections::HashMap;

use crate::common::{fixture, root, tenantbench, text};

#[test]
fn check_accepts_the_shipped_scenarios() {
    for s in [
        "quickstart.toml",
        "reference-architecture.toml",
        "noisy-neighbour.toml",
    ] {
        let path = root().join("scenarios").join(s);
        let out = tenantbench(&["check", path.to_str().unwrap_or_default()], &root());
        assert!(out.status.success(), "{s}: {}", text(&out));
        assert!(text(&out).contains("fits"), "{}", text(&out));
    }
}

#[test]
fn check_refuses_both_reference_models_on_one_5090_and_says_by_how_much() {
    let path = root()
        .join("scenarios")
        .join("reference-architecture-one-gpu.toml");
    let out = tenantbench(&["check", path.to_str().unwrap_or_default()], &root());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("GiB"), "the shortfall is given in GiB: {t}");
    assert!(
        t.contains("strong-5090") || t.contains("qwen2.5-32b"),
        "names what does not fit: {t}"
    );
}

#[test]
fn invalid_scenario_exits_2_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let tiny = std::fs::read_to_string(fixture("tiny.toml")).unwrap_or_default();
    let cases = [
        (
            "bad-duration.toml",
            tiny.replace("duration_s = 6", "duration_s = -6"),
            "duration_s",
        ),
        (
            "bad-key.toml",
            tiny.replace("warmup_s = 1", "warmup_s = 1\nwarmup_secs = 2"),
            "warmup_secs",
        ),
        (
            "bad-model.toml",
            tiny.replace("model = \"chat-fast\"", "model = \"chat-slow\""),
            "groups[0].model",
        ),
        (
            "bad-gpu.toml",
            tiny.replace("rtx-5090", "rtx-9090"),
            "engines[0]",
        ),
        (
            "no-request-fits.toml",
            tiny.replace("max_cpu_loras = 4", "max_cpu_loras = 4\nmax_model_len = 10"),
            "max_model_len",
        ),
    ];
    for (name, body, field) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap_or_else(|e| panic!("{e}"));
        for cmd in ["check", "run"] {
            let out = tenantbench(
                &[cmd, path.to_str().unwrap_or_default(), "--quiet"]
                    [..if cmd == "check" { 2 } else { 3 }],
                dir.path(),
            );
            assert_eq!(out.status.code(), Some(2), "{cmd} {name}: {}", text(&out));
            let t = text(&out);
            assert!(t.contains(name), "{cmd} {name}: names the file: {t}");
            assert!(t.contains(field), "{cmd} {name}: names `{field}`: {t}");
        }
    }
    assert!(
        !dir.path().join("results").exists(),
        "nothing is written for an invalid scenario"
    );
}

#[test]
fn check_warns_when_the_longest_requests_overflow_the_context_window() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let tiny = std::fs::read_to_string(fixture("tiny.toml")).unwrap_or_default();
    // Prompts of 100–200 tokens plus 12–24 output tokens against a 180-token window: some fit.
    let path = dir.path().join("tight.toml");
    std::fs::write(
        &path,
        tiny.replace(
            "max_cpu_loras = 4",
            "max_cpu_loras = 4\nmax_model_len = 180",
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = tenantbench(&["check", path.to_str().unwrap_or_default()], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("warning") && t.contains("max_model_len of 180") && t.contains("reach 224"),
        "{t}"
    );
}

#[test]
fn run_writes_results_and_counts_429s_apart() {
    let _exclusive = crate::common::exclusive();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out_dir = dir.path().join("out");
    let scenario = fixture("tiny.toml");
    let out = tenantbench(
        &[
            "run",
            scenario.to_str().unwrap_or_default(),
            "--out",
            out_dir.to_str().unwrap_or_default(),
            "--quiet",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));

    // summary.json parses and matches the committed schema.
    let summary_text = std::fs::read_to_string(out_dir.join("summary.json")).unwrap_or_default();
    let summary: serde_json::Value =
        serde_json::from_str(&summary_text).unwrap_or_else(|e| panic!("summary.json: {e}"));
    let schema_path = root()
        .join("reports")
        .join("schema")
        .join("summary.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap_or_default())
            .unwrap_or_else(|e| panic!("schema: {e}"));
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("summary.schema.json", schema)
        .unwrap_or_else(|e| panic!("{e}"));
    let idx = compiler
        .compile("summary.schema.json", &mut schemas)
        .unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = schemas.validate(&summary, idx) {
        panic!("summary.json does not match its schema: {e}");
    }

    let tenants = summary["tenants"].as_array().cloned().unwrap_or_default();
    assert_eq!(tenants.len(), 4);
    let by_id: HashMap<String, serde_json::Value> = tenants
        .into_iter()
        .map(|t| (t["tenant"].as_str().unwrap_or_default().to_string(), t))
        .collect();
    for id in ["t-01", "t-02", "t-03"] {
        let t = &by_id[id];
        assert!(
            t["outcomes"]["ok"].as_u64().unwrap_or(0) > 0,
            "{id} has successes"
        );
        assert_eq!(
            t["outcomes"]["rate_limited"].as_u64(),
            Some(0),
            "{id} is not limited"
        );
        for m in ["ttft_ms", "itl_ms", "e2e_ms"] {
            assert!(t[m]["p50"].as_f64().unwrap_or(0.0) > 0.0, "{id} {m}.p50");
            assert!(
                t[m]["p99"].as_f64().unwrap_or(0.0) >= t[m]["p50"].as_f64().unwrap_or(0.0),
                "{id} {m}"
            );
        }
    }
    // t-04 sends ~15 requests in the measured window with 3 allowed a minute.
    let limited = &by_id["t-04"];
    assert!(
        limited["outcomes"]["rate_limited"].as_u64().unwrap_or(0) >= 5,
        "{limited}"
    );
    assert_eq!(limited["outcomes"]["server_error"].as_u64(), Some(0));

    // requests.csv: one row per request with the contract's columns.
    let mut rdr =
        csv::Reader::from_path(out_dir.join("requests.csv")).unwrap_or_else(|e| panic!("{e}"));
    let headers = rdr.headers().cloned().unwrap_or_default();
    for col in [
        "tenant",
        "model",
        "outcome",
        "status",
        "intended_start_ms",
        "ttft_ms",
        "tpot_ms",
        "e2e_ms",
        "input_tokens",
        "output_tokens",
        "output_tokens_estimated",
    ] {
        assert!(headers.iter().any(|h| h == col), "requests.csv lacks {col}");
    }
    let rows = rdr.records().count();
    assert!(rows > 20, "{rows} rows");
    for f in [
        "tenants.csv",
        "report.html",
        "router-config.yaml",
        "audit.jsonl",
    ] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
    let audit = std::fs::read_to_string(out_dir.join("audit.jsonl")).unwrap_or_default();
    assert!(
        !audit.contains("sk-tb-"),
        "the audit log never holds a raw key"
    );
}
