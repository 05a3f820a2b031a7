//! The command line as a CI pipeline meets it: failed gates and regressions exit 3 with the
//! failing lines, JUnit XML, `--json`, `--shard` + `report merge`, and `--target` against an
//! external OpenAI-compatible server instead of the embedded stack.

use std::path::Path;

use serde_json::Value;

use crate::common::{fixture, free_port, start, tenantbench, text, wait_ready};

fn tiny_with(dir: &Path, name: &str, extra: &str) -> String {
    let body = std::fs::read_to_string(fixture("tiny.toml")).unwrap_or_default() + extra;
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap_or_else(|e| panic!("{e}"));
    path.to_string_lossy().into_owned()
}

fn read_json(path: &Path) -> Value {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tenant_ids(summary: &Value) -> Vec<String> {
    summary["tenants"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["tenant"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn csv_rows(path: &Path) -> usize {
    csv::Reader::from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .records()
        .count()
}

/// Asserts the run exited 3 and printed a `FAIL` line on stderr that contains `needle`.
fn assert_failed_gate(out: &std::process::Output, needle: &str) {
    assert_eq!(out.status.code(), Some(3), "{}", text(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains(needle)),
        "a FAIL line naming `{needle}` is printed: {stderr}"
    );
}

fn outcome_total(stats: &Value) -> u64 {
    stats["outcomes"]
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

#[test]
fn a_failed_gate_exits_3_prints_the_failing_line_and_writes_junit() {
    let _exclusive = crate::common::exclusive();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let scenario = tiny_with(
        dir.path(),
        "gated.toml",
        "\n[[gates]]\nname = \"impossible ttft\"\ncondition = \"ttft_ms.p50 < 0.001\"\n",
    );
    let out_dir = dir.path().join("out");
    let out = tenantbench(
        &[
            "run",
            &scenario,
            "--out",
            out_dir.to_str().unwrap_or_default(),
            "--json",
        ],
        dir.path(),
    );
    assert_failed_gate(&out, "impossible ttft");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.lines().any(|l| l.contains("ttft_ms.p99 < 5000")),
        "passing gates are not printed as failures: {stderr}"
    );
    // --json: stdout is exactly one line, the summary.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    let summary: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("--json output: {e}"));
    let gates = summary["gates"].as_array().cloned().unwrap_or_default();
    let failed: Vec<&Value> = gates.iter().filter(|g| g["passed"] == false).collect();
    assert_eq!(failed.len(), 1, "{gates:?}");
    assert_eq!(failed[0]["name"], "impossible ttft");
    // The same summary is on disk, and the JUnit file reports the failure.
    assert_eq!(
        read_json(&out_dir.join("summary.json"))["gates"],
        summary["gates"]
    );
    let junit = std::fs::read_to_string(out_dir.join("junit.xml")).unwrap_or_default();
    assert!(junit.contains("<testsuite"), "{junit}");
    assert_eq!(junit.matches("<failure").count(), 1, "{junit}");
    assert!(junit.contains("impossible ttft"), "{junit}");
    let bench = read_json(&out_dir.join("vllm-bench.json"));
    assert!(bench["completed"].as_u64().unwrap_or(0) > 0, "{bench}");
}

/// Scales every latency statistic of a summary by `factor` (a faster "previous" run).
fn scale_latencies(v: &mut Value, factor: f64) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k.ends_with("_ms") && child.is_object() {
                    for stat in ["p50", "p90", "p99", "max", "mean"] {
                        if let Some(x) = child[stat].as_f64() {
                            child[stat] = Value::from(x * factor);
                        }
                    }
                } else {
                    scale_latencies(child, factor);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| scale_latencies(i, factor)),
        _ => {}
    }
}

#[test]
fn a_regression_against_the_baseline_exits_3_naming_the_metric() {
    let _exclusive = crate::common::exclusive();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let scenario = fixture("tiny.toml");
    let first = dir.path().join("first");
    let out = tenantbench(
        &[
            "run",
            scenario.to_str().unwrap_or_default(),
            "--out",
            first.to_str().unwrap_or_default(),
            "--quiet",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    // A baseline ten times faster than anything this machine can do: the run regresses.
    let mut baseline = read_json(&first.join("summary.json"));
    scale_latencies(&mut baseline, 0.1);
    let baseline_path = dir.path().join("baseline.json");
    std::fs::write(&baseline_path, baseline.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let second = dir.path().join("second");
    let out = tenantbench(
        &[
            "run",
            scenario.to_str().unwrap_or_default(),
            "--out",
            second.to_str().unwrap_or_default(),
            "--quiet",
            "--baseline",
            baseline_path.to_str().unwrap_or_default(),
            "--max-regression",
            "10%",
        ],
        dir.path(),
    );
    assert_failed_gate(&out, "_ms");
    let junit = std::fs::read_to_string(second.join("junit.xml")).unwrap_or_default();
    assert!(junit.contains("<failure"), "{junit}");
    // A baseline that is not a summary is a usage error, before anything runs.
    std::fs::write(&baseline_path, "{\"not\": \"a summary\"}").unwrap_or_else(|e| panic!("{e}"));
    let out = tenantbench(
        &[
            "run",
            scenario.to_str().unwrap_or_default(),
            "--quiet",
            "--baseline",
            baseline_path.to_str().unwrap_or_default(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("baseline.json"), "{}", text(&out));
}

/// Runs the binary off the async workers (it may run for seconds).
async fn tenantbench_blocking(args: Vec<String>, cwd: &Path) -> std::process::Output {
    let cwd = cwd.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tenantbench(&args, &cwd)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `tenantbench mock-vllm` serving `chat-fast` on a free port, ready; returns it and `/v1`.
async fn external_mock() -> (crate::common::Server, String) {
    let port = free_port();
    let server = start(&[
        "mock-vllm",
        "mistral-7b-instruct",
        "--served-model-name",
        "chat-fast",
        "--gpu",
        "rtx-5090",
        "--port",
        &port.to_string(),
    ]);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&reqwest::Client::new(), &format!("{base}/health")).await;
    (server, format!("{base}/v1"))
}

#[tokio::test]
#[expect(
    clippy::await_holding_lock,
    reason = "the guard serialises whole tests across threads; it is never taken inside a runtime"
)]
async fn shards_split_the_tenants_and_merge_back_into_one_result() {
    let _exclusive = crate::common::exclusive();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let scenario = fixture("tiny.toml").to_string_lossy().into_owned();
    // On the embedded stack every shard would simulate its own GPU: refused before any run.
    let out = tenantbench_blocking(
        vec![
            "run".into(),
            scenario.clone(),
            "--quiet".into(),
            "--shard".into(),
            "0/2".into(),
        ],
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--target"), "{}", text(&out));

    // Shards of one system under test: both drive the same external server.
    let (_server, target) = external_mock().await;
    let mut shard_dirs = Vec::new();
    let mut shard_tenants = Vec::new();
    let mut shard_requests = 0;
    let mut shard_rows = 0;
    for i in 0..2 {
        let d = dir.path().join(format!("shard-{i}"));
        let out = tenantbench_blocking(
            vec![
                "run".into(),
                scenario.clone(),
                "--out".into(),
                d.to_string_lossy().into_owned(),
                "--quiet".into(),
                "--shard".into(),
                format!("{i}/2"),
                "--target".into(),
                target.clone(),
            ],
            dir.path(),
        )
        .await;
        assert!(out.status.success(), "shard {i}: {}", text(&out));
        let s = read_json(&d.join("summary.json"));
        let ids = tenant_ids(&s);
        assert_eq!(ids.len(), 2, "shard {i} holds half the tenants: {ids:?}");
        shard_requests += outcome_total(&s["overall"]);
        shard_rows += csv_rows(&d.join("requests.csv"));
        shard_tenants.extend(ids);
        shard_dirs.push(d);
    }
    shard_tenants.sort();
    assert_eq!(
        shard_tenants,
        ["t-01", "t-02", "t-03", "t-04"],
        "disjoint and complete"
    );

    let merged = dir.path().join("merged");
    let out = tenantbench_blocking(
        vec![
            "report".into(),
            "merge".into(),
            shard_dirs[0].to_string_lossy().into_owned(),
            shard_dirs[1].to_string_lossy().into_owned(),
            "--out".into(),
            merged.to_string_lossy().into_owned(),
            "--json".into(),
        ],
        dir.path(),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let s = read_json(&merged.join("summary.json"));
    assert_eq!(
        tenant_ids(&s),
        ["t-01", "t-02", "t-03", "t-04"],
        "scenario order"
    );
    assert_eq!(outcome_total(&s["overall"]), shard_requests);
    assert_eq!(
        csv_rows(&merged.join("requests.csv")),
        shard_rows,
        "every shard's requests (warm-up included), once"
    );
    // One shard alone is a partial run: refused (exit 2, naming the missing tenants) unless
    // --allow-partial.
    let partial = |allow: bool| {
        let mut args: Vec<String> = vec![
            "report".into(),
            "merge".into(),
            shard_dirs[0].to_string_lossy().into_owned(),
            "--out".into(),
            dir.path()
                .join(format!("partial-{allow}"))
                .to_string_lossy()
                .into_owned(),
            "--quiet".into(),
        ];
        if allow {
            args.push("--allow-partial".into());
        }
        tenantbench_blocking(args, dir.path())
    };
    let out = partial(false).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--allow-partial") && text(&out).contains("t-0"),
        "{}",
        text(&out)
    );
    let out = partial(true).await;
    assert!(out.status.success(), "{}", text(&out));
    // The same shard twice is refused, naming the problem.
    let out = tenantbench_blocking(
        vec![
            "report".into(),
            "merge".into(),
            shard_dirs[0].to_string_lossy().into_owned(),
            shard_dirs[0].to_string_lossy().into_owned(),
            "--out".into(),
            dir.path().join("twice").to_string_lossy().into_owned(),
        ],
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
#[expect(
    clippy::await_holding_lock,
    reason = "the guard serialises whole tests across threads; it is never taken inside a runtime"
)]
async fn run_drives_an_external_target_without_the_embedded_stack() {
    let _exclusive = crate::common::exclusive();
    let (_server, target) = external_mock().await;
    let base = target.trim_end_matches("/v1").to_owned();
    let client = reqwest::Client::new();

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out_dir = dir.path().join("out");
    let scenario = fixture("tiny.toml");
    let out = tenantbench_blocking(
        vec![
            "run".into(),
            scenario.to_string_lossy().into_owned(),
            "--out".into(),
            out_dir.to_string_lossy().into_owned(),
            "--quiet".into(),
            "--target".into(),
            target.clone(),
        ],
        dir.path(),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let s = read_json(&out_dir.join("summary.json"));
    assert_eq!(tenant_ids(&s).len(), 4);
    // No router in front: t-04's rpm_limit is the router's to enforce, so nothing is refused.
    assert_eq!(
        s["tenants"][3]["outcomes"]["rate_limited"].as_u64(),
        Some(0)
    );
    assert!(
        !out_dir.join("router-config.yaml").exists(),
        "no embedded router ran"
    );
    // Every request the load generator counted reached the external server.
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    let served: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("vllm:request_success_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let ok = s["overall"]["outcomes"]["ok"].as_u64().unwrap_or(0);
    assert!(ok > 0);
    assert!(
        served >= ok as f64,
        "the server finished {served} requests, the run counted {ok} successes"
    );

    // Nobody listening: every request fails, so the run measured nothing and exits 1 (not 0,
    // whatever the gates say), naming what happened.
    let nobody = format!("http://127.0.0.1:{}/v1", free_port());
    let out = tenantbench_blocking(
        vec![
            "run".into(),
            scenario.to_string_lossy().into_owned(),
            "--out".into(),
            dir.path().join("nobody").to_string_lossy().into_owned(),
            "--quiet".into(),
            "--target".into(),
            nobody,
        ],
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no request succeeded") && text(&out).contains("server_error"),
        "{}",
        text(&out)
    );

    // Rates too low for the duration: nothing lands in the measured window, so there is no
    // result to pass a gate with — exit 1, saying so.
    let idle = dir.path().join("idle.toml");
    let body = std::fs::read_to_string(&scenario)
        .unwrap_or_default()
        .replace("rate_per_s = 2.0", "rate_per_s = 0.001")
        .replace("rate_per_s = 3.0", "rate_per_s = 0.001");
    std::fs::write(&idle, body).unwrap_or_else(|e| panic!("{e}"));
    let out = tenantbench_blocking(
        vec![
            "run".into(),
            idle.to_string_lossy().into_owned(),
            "--out".into(),
            dir.path().join("idle").to_string_lossy().into_owned(),
            "--quiet".into(),
            "--target".into(),
            target,
        ],
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no request was measured"),
        "{}",
        text(&out)
    );
}
