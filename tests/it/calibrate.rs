//! `tenantbench calibrate` as a user runs it: the published runs replayed with `--out`, a file
//! with bad rows next to a good one, and a file that is not there. Outputs are parsed (the
//! terminal table by its row ids, the CSV with the csv crate), never compared as strings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::{root, tenantbench, text};

/// The columns `--out` appends, in order.
const PRED_COLUMNS: [&str; 6] = [
    "pred_output_tok_s",
    "pred_ttft_mean_ms",
    "pred_ttft_p99_ms",
    "pred_tpot_mean_ms",
    "pred_itl_p50_ms",
    "pred_itl_p99_ms",
];

/// The repository's copy of `shared/calibration/published-runs.csv` (a clean clone has no
/// `../shared`). Its absence is a broken checkout, not a reason to skip: the test fails and
/// says where it looked.
const PUBLISHED_RUNS: &str = "mocks/tests/data/published-runs.csv";

fn published_runs() -> PathBuf {
    let path = root().join(PUBLISHED_RUNS);
    assert!(
        path.is_file(),
        "calibration data missing: expected {} (a copy of shared/calibration/published-runs.csv); \
         this test does not skip without it",
        path.display()
    );
    path
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

/// A CSV file as a header and rows of (column → cell).
struct Table {
    header: Vec<String>,
    rows: Vec<HashMap<String, String>>,
}

fn read_csv(path: &Path) -> Table {
    let mut reader =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Vec<String> = reader
        .headers()
        .unwrap_or_else(|e| panic!("{}: header: {e}", path.display()))
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .enumerate()
        .map(|(i, rec)| {
            let rec = rec.unwrap_or_else(|e| panic!("{} row {}: {e}", path.display(), i + 1));
            assert_eq!(
                rec.len(),
                header.len(),
                "{} row {}: {} cells for {} columns",
                path.display(),
                i + 1,
                rec.len(),
                header.len()
            );
            header
                .iter()
                .cloned()
                .zip(rec.iter().map(str::to_string))
                .collect()
        })
        .collect();
    Table { header, rows }
}

fn cell<'a>(row: &'a HashMap<String, String>, column: &str) -> &'a str {
    row.get(column)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no column {column} in {row:?}"))
}

/// A cell as a number; `None` when empty.
fn number(row: &HashMap<String, String>, column: &str) -> Option<f64> {
    let v = cell(row, column).trim();
    (!v.is_empty()).then(|| {
        v.parse()
            .unwrap_or_else(|e| panic!("{column} = {v:?} is not a number: {e}"))
    })
}

/// The stdout table's line for row `id` (the first word of a line is the row id).
fn lines_for<'a>(stdout: &'a str, id: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(id))
        .collect()
}

#[test]
fn calibrate_replays_the_published_runs_and_writes_predictions_within_2x() {
    let input = published_runs();
    let dir = tempdir();
    let out_path = dir.path().join("X.csv");
    let out_arg = out_path.to_str().unwrap_or_default();
    let out = tenantbench(&["calibrate", PUBLISHED_RUNS, "--out", out_arg], &root());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let measured = read_csv(&input);
    let ids: Vec<&str> = measured.rows.iter().map(|r| cell(r, "id")).collect();
    for i in 1..=16 {
        let id = format!("P{i:02}");
        assert!(
            ids.contains(&id.as_str()),
            "{id} not in {}",
            input.display()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    for id in &ids {
        let lines = lines_for(&stdout, id);
        assert_eq!(lines.len(), 1, "one line for {id}:\n{stdout}");
        assert!(
            !lines[0].contains("not run"),
            "{id} did not run: {}",
            lines[0]
        );
    }
    let mdae = lines_for(&stdout, "MdAE");
    assert_eq!(mdae.len(), 1, "one median-absolute-error line:\n{stdout}");
    assert!(mdae[0].contains('%'), "{}", mdae[0]);

    let predicted = read_csv(&out_path);
    for column in &measured.header {
        assert!(
            predicted.header.contains(column),
            "input column {column} missing from --out: {:?}",
            predicted.header
        );
    }
    for column in PRED_COLUMNS {
        assert_eq!(
            predicted.header.iter().filter(|h| *h == column).count(),
            1,
            "{column} once in {:?}",
            predicted.header
        );
    }
    assert_eq!(
        predicted.rows.len(),
        measured.rows.len(),
        "one row per input row"
    );
    for (m, p) in measured.rows.iter().zip(&predicted.rows) {
        let id = cell(m, "id");
        for column in &measured.header {
            assert_eq!(
                cell(m, column),
                cell(p, column),
                "{id}: {column} copied as is"
            );
        }
        for metric in ["output_tok_s", "tpot_mean_ms"] {
            let Some(want) = number(m, metric) else {
                continue;
            };
            let Some(got) = number(p, &format!("pred_{metric}")) else {
                panic!("{id}: {metric} was measured ({want}) but pred_{metric} is empty")
            };
            let ratio = got / want;
            assert!(
                (0.5..=2.0).contains(&ratio),
                "{id}: pred_{metric} {got} vs measured {want} (x{ratio:.2})"
            );
        }
    }
}

/// A row that cannot run is data, not a failure of the command (main.rs maps only unreadable
/// files to exit 2): the command exits 0, reports each bad row in place with the column at
/// fault, and predicts the good row.
#[test]
fn calibrate_reports_bad_rows_by_column_and_still_predicts_the_good_one() {
    let dir = tempdir();
    let input = dir.path().join("mixed.csv");
    let header = "id,source,gpu,model,precision,engine,dataset,input_tokens_mean,\
                  output_tokens_mean,load,load_value,num_requests,max_num_batched_tokens,\
                  max_num_seqs,lora_adapters,lora_share,max_loras,output_tok_s,ttft_mean_ms,\
                  ttft_p99_ms,tpot_mean_ms,itl_p50_ms,itl_p99_ms,gpu_memory_utilization,\
                  prefix_cache_hit_rate";
    let csv = format!(
        "{header}\n\
         GOOD,test,rtx-5090,qwen3-8b,bf16,vllm,random,128,32,burst,8,8,,,0,0,,,,,,,,,\n\
         NOGPU,test,tpu-v9,qwen3-8b,bf16,vllm,random,128,32,burst,8,8,,,0,0,,,,,,,,,\n\
         NOTNUM,test,rtx-5090,qwen3-8b,bf16,vllm,random,lots,32,burst,8,8,,,0,0,,,,,,,,,\n"
    );
    std::fs::write(&input, csv).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let out_path = dir.path().join("pred.csv");
    let out = tenantbench(
        &[
            "calibrate",
            input.to_str().unwrap_or_default(),
            "--out",
            out_path.to_str().unwrap_or_default(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);

    for (id, column, value) in [
        ("NOGPU", "`gpu`", "tpu-v9"),
        ("NOTNUM", "`input_tokens_mean`", ""),
    ] {
        let lines = lines_for(&stdout, id);
        assert_eq!(lines.len(), 1, "one line for {id}:\n{stdout}");
        let line = lines[0];
        assert!(line.contains("not run"), "{id} reported as not run: {line}");
        assert!(line.contains(column), "{id} names {column}: {line}");
        assert!(line.contains(value), "{id} names {value}: {line}");
    }
    let good = lines_for(&stdout, "GOOD");
    assert_eq!(good.len(), 1, "{stdout}");
    assert!(!good[0].contains("not run"), "{}", good[0]);

    let predicted = read_csv(&out_path);
    assert_eq!(predicted.rows.len(), 3);
    let by_id: HashMap<&str, &HashMap<String, String>> =
        predicted.rows.iter().map(|r| (cell(r, "id"), r)).collect();
    let Some(good) = by_id.get("GOOD") else {
        panic!("GOOD missing from --out")
    };
    let tok_s = number(good, "pred_output_tok_s");
    assert!(tok_s.is_some_and(|t| t > 0.0), "{good:?}");
    let tpot = number(good, "pred_tpot_mean_ms");
    assert!(tpot.is_some_and(|t| t > 0.0), "{good:?}");
    for id in ["NOGPU", "NOTNUM"] {
        let Some(row) = by_id.get(id) else {
            panic!("{id} missing from --out")
        };
        for column in PRED_COLUMNS {
            assert_eq!(
                cell(row, column),
                "",
                "{id}: {column} empty for a row that did not run"
            );
        }
    }
}

#[test]
fn calibrate_exits_2_naming_a_missing_file() {
    let dir = tempdir();
    let missing = dir.path().join("no-such-runs.csv");
    let out = tenantbench(
        &["calibrate", missing.to_str().unwrap_or_default()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&missing.display().to_string()),
        "the error names the path: {stderr}"
    );
}

#[test]
fn calibrate_exits_2_when_no_row_can_run() {
    let dir = tempdir();
    for (name, body) in [
        (
            "header-only.csv",
            std::fs::read_to_string(published_runs())
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        ("other.csv", "a,b\n1,2\n".to_owned()),
        ("scenario.toml", "version = 1\nname = \"x\"\n".to_owned()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap_or_else(|e| panic!("{e}"));
        let out = tenantbench(
            &["calibrate", path.to_str().unwrap_or_default()],
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(name) && stderr.contains("no row"),
            "{name}: {stderr}"
        );
    }
}
