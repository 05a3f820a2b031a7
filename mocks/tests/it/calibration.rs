//! Replays the published runs (a copy of /work/shared/calibration/published-runs.csv, sources
//! in its `source` column) and holds the simulator to issue 4's error bounds.

use mocks::calibration::{calibrate, median_abs_errors, parse_rows};

const RUNS: &str = include_str!("../data/published-runs.csv");

#[test]
fn published_runs_are_reproduced_within_the_issue_bounds() {
    let rows = parse_rows(RUNS);
    let Ok(rows) = rows else {
        panic!("{:?}", rows.err())
    };
    assert_eq!(rows.len(), 16);
    let results = calibrate(&rows);
    for r in &results {
        let p = match &r.predicted {
            Ok(p) => p,
            Err(e) => panic!("{} did not run: {e}", r.id),
        };
        let cells: Vec<String> = p
            .fields()
            .iter()
            .zip(r.measured.fields())
            .zip(r.errors())
            .map(|(((name, pv), (_, mv)), (_, err))| {
                format!(
                    "{name}={:.1}/{} ({})",
                    pv.unwrap_or(f64::NAN),
                    mv.map_or("-".to_string(), |m| format!("{m:.1}")),
                    err.map_or("-".to_string(), |e| format!("{:+.0}%", e * 100.0))
                )
            })
            .collect();
        eprintln!("{} {}", r.id, cells.join(" "));
        eprintln!("    {:?}", r.engine);
    }
    let med = median_abs_errors(&results);
    eprintln!("median |error|: {med:?}");
    let get = |name: &str| {
        med.iter()
            .find(|m| m.0 == name)
            .and_then(|m| m.1)
            .unwrap_or(1.0)
    };
    assert!(get("output_tok_s") <= 0.08, "throughput {med:?}");
    assert!(get("tpot_mean_ms") <= 0.08, "tpot {med:?}");
    assert!(get("ttft_mean_ms") <= 0.20, "ttft {med:?}");
    // Every metric a row measured must be predicted (a missing prediction is a failure, not a
    // zero error), and throughput and TPOT must be within 2x of the measurement on every row.
    for r in &results {
        let Ok(p) = &r.predicted else {
            panic!("{} did not run: {:?}", r.id, r.predicted)
        };
        for ((name, pv), (_, mv)) in p.fields().into_iter().zip(r.measured.fields()) {
            let Some(m) = mv else { continue };
            let Some(pv) = pv else {
                panic!(
                    "{} measured {name} = {m} but the replay predicted nothing",
                    r.id
                )
            };
            if name == "output_tok_s" || name == "tpot_mean_ms" {
                assert!(m > 0.0, "{} measured {name} = {m}", r.id);
                let ratio = pv / m;
                assert!(
                    (0.5..=2.0).contains(&ratio),
                    "{} {name}: predicted {pv:.1} vs measured {m:.1} (x{ratio:.2})",
                    r.id
                );
            }
        }
    }
}

/// A row whose GPU cannot run its precision is reported with the reason, not replayed, and the
/// other rows still run.
#[test]
fn a_row_with_an_unsupported_precision_is_reported_not_run() {
    let header = RUNS.lines().next().unwrap_or_default();
    let text = format!(
        "{header}\n\
         U1,src,a100-80gb,qwen3-8b,nvfp4,vllm,random,100,20,burst,10,10,,,0,0,,,,,,,,,\n\
         U2,src,rtx-5090,qwen3-8b,nvfp4,vllm,random,100,20,burst,10,10,,,0,0,,,,,,,,,\n"
    );
    let Ok(rows) = parse_rows(&text) else {
        panic!("parse")
    };
    let res = calibrate(&rows);
    assert!(
        res[0]
            .predicted
            .as_ref()
            .is_err_and(|e| e.contains("a100-80gb")
                && e.contains("nvfp4")
                && e.contains("not supported")),
        "{:?}",
        res[0].predicted
    );
    assert!(res[1].predicted.is_ok(), "{:?}", res[1].predicted);
}
