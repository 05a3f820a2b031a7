//! Scenario files through the public parser: `[[phases]]` and `[isolation]` (valid ones parse,
//! bad ones are errors naming the field), `Scenario::shard`, and the keys an external target
//! gets (`run::external_keys`, with the environment passed in as a lookup so no test touches
//! the process environment).

use std::collections::{BTreeMap, HashMap};

use loadgen::scenario::{Scenario, parse};
use loadgen::{RunError, ScenarioError};

/// Two groups (victims `v-01`…`v-04`, aggressors `a-01`…`a-03`) over a 60 s run, then `extra`.
fn scenario_text(extra: &str) -> String {
    format!(
        r#"
version = 1
name = "phases"
seed = 5
duration_s = 60
warmup_s = 5

[[engines]]
name = "e"
gpu = "rtx-5090"
model = "mistral-7b-instruct"
max_loras = 8

[[models]]
name = "m"
engine = "e"

[[groups]]
name = "v"
count = 4
model = "m"
arrival = {{ kind = "poisson", rate_per_s = 1.0 }}
prompt_tokens = {{ kind = "fixed", value = 64 }}
output_tokens = {{ kind = "fixed", value = 8 }}

[[groups]]
name = "a"
count = 3
model = "m"
arrival = {{ kind = "poisson", rate_per_s = 4.0 }}
prompt_tokens = {{ kind = "fixed", value = 64 }}
output_tokens = {{ kind = "fixed", value = 8 }}
rpm_limit = 60
tpm_limit = 9000

[cost]
server_gbp_per_month = 399
api_input_gbp_per_mtok = 0.5
api_output_gbp_per_mtok = 1.5
{extra}
"#
    )
}

const PHASES: &str = r#"
[[phases]]
name = "baseline"
duration_s = 30

[[phases]]
name = "flood"
duration_s = 30
"#;

fn parsed(extra: &str) -> Scenario {
    parse(&scenario_text(extra), "phases.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// The field a validation error names, or a description of what happened instead.
fn err_field(extra: &str) -> String {
    match parse(&scenario_text(extra), "phases.toml") {
        Err(ScenarioError::Invalid { field, file, .. }) => {
            assert_eq!(file, "phases.toml");
            field
        }
        Err(e) => format!("other error: {e}"),
        Ok(_) => "parsed".into(),
    }
}

#[test]
fn phases_and_an_isolation_check_parse_with_defaults_and_resolved_aggressors() {
    let s = parsed(&format!("{PHASES}\n[isolation]\naggressor_group = \"a\"\n"));
    let spans: Vec<(&str, f64, f64)> = s
        .phases
        .iter()
        .map(|p| (p.name.as_str(), p.start_s, p.end_s))
        .collect();
    assert_eq!(spans, [("baseline", 0.0, 30.0), ("flood", 30.0, 60.0)]);
    let iso = s.isolation.unwrap_or_else(|| panic!("no isolation spec"));
    // Defaults: first and second phase, TTFT p99, ratio 1.5, tolerance 0.1.
    assert_eq!(
        (iso.baseline.name.as_str(), iso.test.name.as_str()),
        ("baseline", "flood")
    );
    assert_eq!((iso.metric.as_str(), iso.percentile), ("ttft_ms", 99));
    assert_eq!((iso.max_ratio, iso.limit_tolerance), (1.5, 0.1));
    let aggressors: Vec<(&str, Option<u64>, Option<u64>)> = iso
        .aggressors
        .iter()
        .map(|a| (a.tenant.as_str(), a.rpm_limit, a.tpm_limit))
        .collect();
    assert_eq!(
        aggressors,
        [
            ("a-01", Some(60), Some(9000)),
            ("a-02", Some(60), Some(9000)),
            ("a-03", Some(60), Some(9000)),
        ]
    );
}

#[test]
fn isolation_with_named_phases_and_tenant_aggressors_parses() {
    let s = parsed(&format!(
        "{PHASES}\n[isolation]\nbaseline = \"flood\"\ntest = \"baseline\"\naggressors = [\"a-02\", \"v-04\"]\nmetric = \"e2e_ms\"\npercentile = 90\nmax_ratio = 2.0\nlimit_tolerance = 0\n"
    ));
    let iso = s.isolation.unwrap_or_else(|| panic!("no isolation spec"));
    assert_eq!((iso.baseline.start_s, iso.test.start_s), (30.0, 0.0));
    assert_eq!((iso.metric.as_str(), iso.percentile), ("e2e_ms", 90));
    assert_eq!((iso.max_ratio, iso.limit_tolerance), (2.0, 0.0));
    let ids: Vec<&str> = iso.aggressors.iter().map(|a| a.tenant.as_str()).collect();
    assert_eq!(ids, ["a-02", "v-04"]);
    assert_eq!(
        iso.aggressors[1].rpm_limit, None,
        "a victim-group tenant has no limit"
    );
}

#[test]
fn phases_longer_than_the_run_are_an_error_naming_phases() {
    let long = PHASES.replace(
        "duration_s = 30\n\n[[phases]]",
        "duration_s = 31\n\n[[phases]]",
    );
    assert_eq!(err_field(&long), "phases");
}

#[test]
fn bad_phase_entries_name_their_index() {
    assert_eq!(
        err_field(&PHASES.replace("name = \"flood\"", "name = \"baseline\"")),
        "phases[1].name"
    );
    assert_eq!(
        err_field(&PHASES.replace("name = \"flood\"", "name = \"\"")),
        "phases[1].name"
    );
    assert_eq!(
        err_field(&PHASES.replacen("duration_s = 30", "duration_s = 0", 1)),
        "phases[0].duration_s"
    );
    assert_eq!(
        err_field(&PHASES.replacen("duration_s = 30", "duration_s = -5", 1)),
        "phases[0].duration_s"
    );
}

#[test]
fn isolation_naming_an_unknown_phase_is_an_error_naming_the_field() {
    let with = |iso: &str| err_field(&format!("{PHASES}\n[isolation]\n{iso}\n"));
    assert_eq!(
        with("test = \"storm\"\naggressor_group = \"a\""),
        "isolation.test"
    );
    assert_eq!(
        with("baseline = \"calm\"\naggressor_group = \"a\""),
        "isolation.baseline"
    );
    assert_eq!(
        with("test = \"baseline\"\naggressor_group = \"a\""),
        "isolation.test",
        "the test phase must differ from the baseline"
    );
    // Without [[phases]] there is nothing to compare.
    assert_eq!(
        err_field("[isolation]\naggressor_group = \"a\"\n"),
        "isolation.baseline"
    );
    // With one phase the default test phase (the second) does not exist.
    let one =
        "[[phases]]\nname = \"only\"\nduration_s = 60\n[isolation]\naggressor_group = \"a\"\n";
    assert_eq!(err_field(one), "isolation.test");
}

#[test]
fn isolation_naming_an_unknown_aggressor_is_an_error_naming_the_field() {
    let with = |iso: &str| err_field(&format!("{PHASES}\n[isolation]\n{iso}\n"));
    assert_eq!(
        with("aggressor_group = \"noisy\""),
        "isolation.aggressor_group"
    );
    assert_eq!(
        with("aggressors = [\"a-01\", \"a-09\"]"),
        "isolation.aggressors[1]"
    );
    assert_eq!(with(""), "isolation", "an aggressor must be named");
    assert_eq!(
        with("aggressor_group = \"a\"\nmetric = \"ttfc_ms\""),
        "isolation.metric"
    );
    assert_eq!(
        with("aggressor_group = \"a\"\npercentile = 95"),
        "isolation.percentile"
    );
    assert_eq!(
        with("aggressor_group = \"a\"\nmax_ratio = 0"),
        "isolation.max_ratio"
    );
}

#[test]
fn an_unknown_isolation_key_is_a_syntax_error_naming_it() {
    let text = scenario_text(&format!(
        "{PHASES}\n[isolation]\naggressor_group = \"a\"\nmax_ratoi = 2\n"
    ));
    match parse(&text, "phases.toml") {
        Err(ScenarioError::Syntax { message, .. }) => {
            assert!(message.contains("max_ratoi"), "{message}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

fn ids(s: &Scenario) -> Vec<String> {
    s.tenants.iter().map(|t| t.id.clone()).collect()
}

fn shard_of(s: &Scenario, i: u32, n: u32) -> Result<Scenario, String> {
    let mut part = s.clone();
    part.shard(i, n).map(|()| part)
}

#[test]
fn shards_split_the_tenants_deterministically_disjointly_and_completely() {
    let s = parsed("");
    let all = ids(&s);
    assert_eq!(all.len(), 7);
    for n in 1..=7u32 {
        let mut seen: Vec<String> = Vec::new();
        for i in 0..n {
            let part = shard_of(&s, i, n).unwrap_or_else(|e| panic!("{i}/{n}: {e}"));
            let again = shard_of(&s, i, n).unwrap_or_else(|e| panic!("{i}/{n}: {e}"));
            assert_eq!(ids(&part), ids(&again), "{i}/{n} is deterministic");
            for id in ids(&part) {
                assert!(!seen.contains(&id), "{id} is in two shards of {n}");
                seen.push(id);
            }
        }
        seen.sort();
        let mut want = all.clone();
        want.sort();
        assert_eq!(seen, want, "the {n} shards together hold every tenant");
    }
}

#[test]
fn a_sharded_tenant_sends_exactly_its_unsharded_traffic() {
    let s = parsed("");
    let times = |s: &Scenario| -> BTreeMap<String, Vec<(f64, u64, u64)>> {
        let mut by: BTreeMap<String, Vec<(f64, u64, u64)>> = BTreeMap::new();
        for p in loadgen::schedule::build(s) {
            by.entry(s.tenants[p.tenant].id.clone()).or_default().push((
                p.at_s,
                p.prompt_tokens,
                p.text_seed,
            ));
        }
        by
    };
    let whole = times(&s);
    for i in 0..3 {
        let part = shard_of(&s, i, 3).unwrap_or_else(|e| panic!("{e}"));
        for (id, sends) in times(&part) {
            assert_eq!(Some(&sends), whole.get(&id), "{id} in shard {i}/3");
        }
    }
}

#[test]
fn invalid_shards_are_refused() {
    let s = parsed("");
    for (i, n) in [(0, 0), (3, 3), (4, 3), (u32::MAX, 2)] {
        let e = shard_of(&s, i, n).err();
        assert!(
            e.as_deref()
                .is_some_and(|m| m.contains(&format!("{i}/{n}"))),
            "{i}/{n}: {e:?}"
        );
    }
    // More shards than tenants would leave a machine with nothing to send.
    let e = shard_of(&s, 7, 8).err();
    assert!(
        e.as_deref().is_some_and(|m| m.contains("no tenants")),
        "{e:?}"
    );
    assert!(
        shard_of(&s, 6, 8).is_ok(),
        "shard 6/8 holds the seventh tenant"
    );
}

/// The scenario with `api_key_env` on the `v` group and an override for `v-02`.
fn keyed(group_var: &str, override_var: &str) -> Scenario {
    let text = scenario_text(&format!(
        "[[overrides]]\ntenant = \"v-02\"\napi_key_env = \"{override_var}\"\n"
    ))
    .replace(
        "rate_per_s = 1.0 }",
        &format!("rate_per_s = 1.0 }}\napi_key_env = \"{group_var}\""),
    );
    parse(&text, "keys.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn api_key_env_names_the_variable_a_tenants_key_is_read_from() {
    let s = keyed("VICTIM_KEY", "V02_KEY");
    let keys = loadgen::run::external_keys(
        &s,
        lookup(&[
            ("VICTIM_KEY", "sk-victims"),
            ("V02_KEY", "sk-v02"),
            // Per-tenant and shared fallbacks never override an explicit api_key_env.
            ("TENANTBENCH_KEY_V_01", "sk-ignored"),
            ("TENANTBENCH_API_KEY", "sk-shared"),
            ("TENANTBENCH_KEY_A_02", "sk-a02"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let by_tenant: Vec<(String, Option<String>)> = ids(&s).into_iter().zip(keys).collect();
    let want = [
        ("v-01", "sk-victims"),
        ("v-02", "sk-v02"),
        ("v-03", "sk-victims"),
        ("v-04", "sk-victims"),
        ("a-01", "sk-shared"),
        ("a-02", "sk-a02"),
        ("a-03", "sk-shared"),
    ];
    let want: Vec<(String, Option<String>)> = want
        .iter()
        .map(|(t, k)| (t.to_string(), Some(k.to_string())))
        .collect();
    assert_eq!(by_tenant, want);
}

#[test]
fn an_unset_api_key_env_variable_is_an_error_naming_it_and_the_tenant() {
    let s = keyed("VICTIM_KEY", "V02_KEY_NOT_SET");
    // The shared fallback does not stand in for a variable the scenario names.
    let e = loadgen::run::external_keys(
        &s,
        lookup(&[("VICTIM_KEY", "sk-victims"), ("TENANTBENCH_API_KEY", "sk")]),
    )
    .err();
    match e {
        Some(e @ RunError::Target(_)) => {
            let m = e.to_string();
            assert!(m.contains("V02_KEY_NOT_SET") && m.contains("v-02"), "{m}");
            assert_eq!(e.exit_code(), 2, "bad input");
        }
        other => panic!("expected a target error, got {other:?}"),
    }
}

#[test]
fn without_api_key_env_keys_fall_back_per_tenant_then_shared_then_none() {
    let s = parsed("");
    let keys = |vars: &[(&str, &str)]| {
        loadgen::run::external_keys(&s, lookup(vars)).unwrap_or_else(|e| panic!("{e}"))
    };
    let per_tenant = keys(&[
        ("TENANTBENCH_KEY_V_03", "sk-v03"),
        ("TENANTBENCH_KEY_A_01", "sk-a01"),
    ]);
    assert_eq!(per_tenant[2].as_deref(), Some("sk-v03"));
    assert_eq!(per_tenant[4].as_deref(), Some("sk-a01"));
    assert_eq!(
        per_tenant.iter().filter(|k| k.is_none()).count(),
        5,
        "{per_tenant:?}"
    );
    let shared = keys(&[
        ("TENANTBENCH_KEY_V_03", "sk-v03"),
        ("TENANTBENCH_API_KEY", "sk-all"),
    ]);
    assert_eq!(shared[2].as_deref(), Some("sk-v03"));
    assert!(
        shared
            .iter()
            .enumerate()
            .all(|(i, k)| i == 2 || k.as_deref() == Some("sk-all")),
        "{shared:?}"
    );
    assert!(keys(&[]).iter().all(Option::is_none), "no key: no header");
}

/// A one-tenant scenario replaying `trace.csv` (with `csv` as its bytes) from a fresh
/// directory, whose group's own output distribution is a fixed 20 tokens. The directory is
/// returned so it outlives the checks.
fn trace_scenario(csv: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("trace.csv"), csv).unwrap_or_else(|e| panic!("{e}"));
    let scenario = dir.path().join("replay.toml");
    let text = r#"
version = 1
name = "replay"
duration_s = 60

[[engines]]
name = "e"
gpu = "rtx-5090"
model = "mistral-7b-instruct"

[[models]]
name = "m"
engine = "e"

[[groups]]
name = "t"
count = 1
model = "m"
lora = false
arrival = { kind = "trace", file = "trace.csv" }
prompt_tokens = { kind = "fixed", value = 64 }
output_tokens = { kind = "fixed", value = 20 }

[cost]
server_gbp_per_month = 399
api_input_gbp_per_mtok = 0.5
api_output_gbp_per_mtok = 1.5
"#;
    std::fs::write(&scenario, text).unwrap_or_else(|e| panic!("{e}"));
    (dir, scenario)
}

/// What `tenantbench check` does with a scenario file: load (which reads the trace), then
/// the capacity check.
fn check(path: &std::path::Path) -> Result<loadgen::check::CheckReport, RunError> {
    loadgen::load(path)
        .map_err(RunError::from)
        .and_then(|s| loadgen::check::check(&s))
}

/// The message of the `groups[0].arrival` error `check` gives for a trace, asserting it is a
/// bad-input error (exit code 2) naming the scenario file and that field.
fn trace_check_error(csv: &[u8]) -> String {
    let (_dir, path) = trace_scenario(csv);
    let e = match check(&path) {
        Ok(report) => panic!("check accepted the trace:\n{report}"),
        Err(e) => e,
    };
    assert_eq!(e.exit_code(), 2, "{e}");
    match e {
        RunError::Scenario(ScenarioError::Invalid {
            file,
            field,
            message,
        }) => {
            assert_eq!(file, path.display().to_string());
            assert_eq!(field, "groups[0].arrival");
            message
        }
        e => panic!("expected an invalid-field error, got: {e}"),
    }
}

/// `(at_s, prompt_tokens, output_tokens)` of every planned request.
fn planned(path: &std::path::Path) -> Vec<(f64, u64, u64)> {
    let s = loadgen::load(path).unwrap_or_else(|e| panic!("{e}"));
    loadgen::schedule::build(&s)
        .iter()
        .map(|p| (p.at_s, p.prompt_tokens, p.output_tokens))
        .collect()
}

#[test]
fn trace_lengths_replace_the_groups_distributions() {
    let (_dir, path) = trace_scenario(b"timestamp_s,output_tokens\n1,5\n2,7\n");
    check(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(planned(&path), [(1.0, 64, 5), (2.0, 64, 7)]);
}

#[test]
fn a_misspelt_trace_column_is_an_error_naming_it_the_file_and_the_accepted_columns() {
    // The tester's case: `output_token` used to be skipped, so the run sent 20 tokens, not 5.
    let m = trace_check_error(b"timestamp_s,output_token\n1,5\n");
    for want in [
        "trace.csv",
        "line 1",
        "unknown column 'output_token'",
        "`timestamp_s`, `prompt_tokens`, `output_tokens`",
        "did you mean `output_tokens`?",
    ] {
        assert!(m.contains(want), "missing {want:?} in: {m}");
    }
}

#[test]
fn an_unknown_trace_column_far_from_every_known_one_gets_no_did_you_mean() {
    let m = trace_check_error(b"timestamp_s,tenant\n1,a\n");
    assert!(m.contains("unknown column 'tenant'"), "{m}");
    assert!(m.contains("`prompt_tokens`"), "{m}");
    assert!(!m.contains("did you mean"), "{m}");
}

#[test]
fn an_empty_trace_length_cell_is_an_error_naming_the_file_line_and_column() {
    // Line 3 is `2,`: it used to fall back to the group's 64-token prompts.
    let m = trace_check_error(b"timestamp_s,prompt_tokens\n1,40\n2,\n");
    for want in ["trace.csv", "line 3", "`prompt_tokens`", "empty"] {
        assert!(m.contains(want), "missing {want:?} in: {m}");
    }
}

#[test]
fn a_non_numeric_trace_length_cell_is_an_error_naming_the_file_line_and_column() {
    let m = trace_check_error(b"timestamp_s,output_tokens\n\n1,5\n2,five\n");
    for want in ["trace.csv", "line 4", "`output_tokens`", "'five'"] {
        assert!(m.contains(want), "missing {want:?} in: {m}");
    }
}

#[test]
fn a_trace_header_with_a_utf8_bom_is_read_as_if_it_had_none() {
    // Excel's "CSV UTF-8" writes EF BB BF before the header.
    let (_dir, path) = trace_scenario(b"\xef\xbb\xbftimestamp_s,output_tokens\r\n1,5\r\n");
    check(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(planned(&path), [(1.0, 64, 5)]);
}
