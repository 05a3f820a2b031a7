//! `tenantbench report merge`: one result from the shards of a run made on several machines.
//!
//! Every results directory holds `run.json`, the run's [`RunData`] with every request record.
//! Merging concatenates the shards' records and tenants (put back in scenario order) into one
//! `RunData`, which then goes through the same [`crate::summarize`] and
//! [`crate::write_results`] as a single run. Percentiles are therefore computed from the union of
//! the raw records, exactly as if one machine had sent all the traffic: never percentiles of
//! percentiles, and no histogram re-binning either. Gates, SLOs and isolation are evaluated on
//! the merged run.
//!
//! Shards must come from the same scenario (name, seed, window, tenant list) and may not share
//! a tenant; anything else is refused with a [`MergeError`] naming the directories.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::results::RUN_JSON;
use crate::run::{RunData, ShardInfo};

/// Why shards could not be merged. Every variant names the directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// No directory was given.
    #[error("give at least one shard results directory")]
    NoShards,
    /// `run.json` could not be read.
    #[error(
        "{}: cannot read {RUN_JSON} ({source}); is it a results directory written by `tenantbench run`?",
        dir.display()
    )]
    Read {
        /// The results directory.
        dir: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// `run.json` is not a run.
    #[error("{}/{RUN_JSON}: not a tenantbench run: {source}", dir.display())]
    Parse {
        /// The results directory.
        dir: PathBuf,
        /// What serde reported (with line and column).
        source: serde_json::Error,
    },
    /// Two shards disagree about what they ran.
    #[error(
        "{} and {}: {field} differs ({a} vs {b}); only shards of the same scenario and seed can be merged",
        first.display(),
        other.display()
    )]
    Mismatch {
        /// The first shard.
        first: PathBuf,
        /// The shard that differs from it.
        other: PathBuf,
        /// What differs (`scenario`, `seed`, ...).
        field: &'static str,
        /// The first shard's value.
        a: String,
        /// The other's.
        b: String,
    },
    /// A tenant appears in two shards.
    #[error(
        "tenant `{tenant}` is in both {} and {}; each tenant may come from one shard only (was a shard given twice?)",
        first.display(),
        other.display()
    )]
    Overlap {
        /// The tenant's id.
        tenant: String,
        /// The first shard holding it.
        first: PathBuf,
        /// The second.
        other: PathBuf,
    },
    /// A shard holds a tenant the scenario does not declare.
    #[error("{}: tenant `{tenant}` is not in the scenario's tenant list", dir.display())]
    Foreign {
        /// The shard.
        dir: PathBuf,
        /// The tenant's id.
        tenant: String,
    },
}

/// Reads `run.json` from a results directory.
pub fn read_run(dir: &Path) -> Result<RunData, MergeError> {
    let text = fs::read_to_string(dir.join(RUN_JSON)).map_err(|source| MergeError::Read {
        dir: dir.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| MergeError::Parse {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Reads every directory's `run.json` and merges them.
pub fn merge_dirs(dirs: &[PathBuf]) -> Result<RunData, MergeError> {
    let runs = dirs
        .iter()
        .map(|d| read_run(d).map(|r| (d.clone(), r)))
        .collect::<Result<Vec<_>, _>>()?;
    merge(runs)
}

/// Merges shards (each with the directory it came from, for messages) into one run.
pub fn merge(runs: Vec<(PathBuf, RunData)>) -> Result<RunData, MergeError> {
    let mut runs = runs.into_iter();
    let (first_dir, mut merged) = runs.next().ok_or(MergeError::NoShards)?;
    let mut dirs = vec![first_dir.clone()];
    let mut owner: HashMap<String, PathBuf> = HashMap::new();
    for t in &merged.tenants {
        owner.insert(t.id.clone(), first_dir.clone());
    }
    check_foreign(&first_dir, &merged)?;
    let suffix = engine_label(merged.shard.as_ref());
    for e in &mut merged.engines {
        e.name = format!("{}{suffix}", e.name);
    }
    let mut targets = vec![merged.target.clone()];
    let mut id_base = next_id(&merged);
    for (dir, run) in runs {
        compare(&first_dir, &merged, &dir, &run)?;
        check_foreign(&dir, &run)?;
        for t in &run.tenants {
            if let Some(prev) = owner.insert(t.id.clone(), dir.clone()) {
                return Err(MergeError::Overlap {
                    tenant: t.id.clone(),
                    first: prev,
                    other: dir,
                });
            }
        }
        // Record ids are unique within a shard only; renumber so they stay unique.
        let offset = id_base;
        id_base += next_id(&run);
        let suffix = engine_label(run.shard.as_ref());
        merged.records.extend(run.records.into_iter().map(|mut r| {
            r.id += offset;
            r
        }));
        merged.tenants.extend(run.tenants);
        merged.engines.extend(run.engines.into_iter().map(|mut e| {
            e.name = format!("{}{suffix}", e.name);
            e
        }));
        merged.started_at_unix_ms = merged.started_at_unix_ms.min(run.started_at_unix_ms);
        if !targets.contains(&run.target) {
            targets.push(run.target);
        }
        for n in run.notes {
            if !merged.notes.contains(&n) {
                merged.notes.push(n);
            }
        }
        dirs.push(dir);
    }
    merged.target = targets.join(", ");

    // Back to scenario order, so the tables read as an unsharded run's would.
    let scenario_tenants = merged
        .shard
        .as_ref()
        .map(|s| s.scenario_tenants.clone())
        .unwrap_or_default();
    let position: HashMap<&str, usize> = scenario_tenants
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    merged
        .tenants
        .sort_by_key(|t| position.get(t.id.as_str()).copied().unwrap_or(usize::MAX));

    // The shard's own "shard i/n" remarks describe one part; the merge note replaces them.
    merged.notes.retain(|n| !n.starts_with("shard "));
    merged.notes.push(format!(
        "merged from {} results directories ({}): records concatenated, every statistic computed \
         over their union; each shard's times are relative to its own start",
        dirs.len(),
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let missing: Vec<&str> = scenario_tenants
        .iter()
        .filter(|id| !owner.contains_key(id.as_str()))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        merged.shard = None;
    } else {
        merged.notes.push(format!(
            "{} of the scenario's {} tenants are in no merged shard (missing shards?): {}",
            missing.len(),
            scenario_tenants.len(),
            missing.join(", ")
        ));
    }
    Ok(merged)
}

/// The scenario's tenants that a (merged) run does not hold, in scenario order; empty for a
/// whole run.
pub fn missing_tenants(run: &RunData) -> Vec<String> {
    let Some(shard) = &run.shard else {
        return Vec::new();
    };
    shard
        .scenario_tenants
        .iter()
        .filter(|id| !run.tenants.iter().any(|t| &t.id == *id))
        .cloned()
        .collect()
}

/// One more than the largest record id (0 for no records).
fn next_id(run: &RunData) -> u64 {
    run.records.iter().map(|r| r.id + 1).max().unwrap_or(0)
}

/// Engines of different shards share names (each shard started its own stack): tell them apart.
fn engine_label(shard: Option<&ShardInfo>) -> String {
    shard.map_or_else(String::new, |s| format!(" (shard {}/{})", s.index, s.count))
}

fn check_foreign(dir: &Path, run: &RunData) -> Result<(), MergeError> {
    let Some(shard) = &run.shard else {
        return Ok(());
    };
    match run
        .tenants
        .iter()
        .find(|t| !shard.scenario_tenants.contains(&t.id))
    {
        Some(t) => Err(MergeError::Foreign {
            dir: dir.to_path_buf(),
            tenant: t.id.clone(),
        }),
        None => Ok(()),
    }
}

/// Refuses shards that did not run the same scenario with the same seed.
fn compare(first_dir: &Path, first: &RunData, dir: &Path, run: &RunData) -> Result<(), MergeError> {
    let mismatch = |field: &'static str, a: String, b: String| MergeError::Mismatch {
        first: first_dir.to_path_buf(),
        other: dir.to_path_buf(),
        field,
        a,
        b,
    };
    if first.scenario != run.scenario {
        return Err(mismatch(
            "scenario",
            first.scenario.clone(),
            run.scenario.clone(),
        ));
    }
    if first.seed != run.seed {
        return Err(mismatch(
            "seed",
            first.seed.to_string(),
            run.seed.to_string(),
        ));
    }
    if first.duration_s != run.duration_s || first.warmup_s != run.warmup_s {
        return Err(mismatch(
            "duration_s/warmup_s",
            format!("{}/{}", first.duration_s, first.warmup_s),
            format!("{}/{}", run.duration_s, run.warmup_s),
        ));
    }
    let tenants = |r: &RunData| r.shard.as_ref().map(|s| s.scenario_tenants.clone());
    if let (Some(a), Some(b)) = (tenants(first), tenants(run))
        && a != b
    {
        return Err(mismatch(
            "the scenario's tenant list",
            format!("{} tenants", a.len()),
            format!("{} tenants", b.len()),
        ));
    }
    let count = |r: &RunData| r.shard.as_ref().map(|s| s.count);
    if let (Some(a), Some(b)) = (count(first), count(run))
        && a != b
    {
        return Err(mismatch("shard count n", a.to_string(), b.to_string()));
    }
    if first.gates != run.gates || first.isolation != run.isolation || first.slo != run.slo {
        return Err(mismatch(
            "gates, SLOs or isolation",
            "the first shard's".to_owned(),
            "different ones".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{summarize, tests::small_run};

    /// `small_run` split like `--shard i/2` would split it (tenants a, b, c → {a, c}, {b}).
    fn shards() -> Vec<(PathBuf, RunData)> {
        let whole = small_run();
        let ids: Vec<String> = whole.tenants.iter().map(|t| t.id.clone()).collect();
        (0..2u32)
            .map(|i| {
                let mut run = whole.clone();
                let keep: Vec<String> = ids
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k as u32 % 2 == i)
                    .map(|(_, id)| id.clone())
                    .collect();
                run.tenants.retain(|t| keep.contains(&t.id));
                run.records.retain(|r| keep.contains(&r.tenant));
                run.shard = Some(ShardInfo {
                    index: i,
                    count: 2,
                    scenario_tenants: ids.clone(),
                });
                run.notes.push(format!("shard {i}/2: part"));
                (PathBuf::from(format!("shard{i}")), run)
            })
            .collect()
    }

    #[test]
    fn merged_shards_summarise_like_the_whole_run() {
        let mut sharded = shards();
        sharded.reverse(); // order of the arguments must not matter
        let merged = merge(sharded).unwrap_or_else(|e| panic!("{e}"));
        assert!(merged.shard.is_none(), "all tenants present");
        let ids: Vec<_> = merged.tenants.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"], "scenario order");
        let mut record_ids: Vec<u64> = merged.records.iter().map(|r| r.id).collect();
        record_ids.sort_unstable();
        record_ids.dedup();
        assert_eq!(record_ids.len(), merged.records.len(), "ids stay unique");
        let (m, w) = (summarize(&merged), summarize(&small_run()));
        assert_eq!(m.overall, w.overall);
        assert_eq!(m.groups, w.groups);
        assert_eq!(m.tenants, w.tenants);
        assert_eq!(m.gates, w.gates);
        assert!(
            !m.notes.iter().any(|n| n.starts_with("shard ")),
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn a_shard_alone_skips_gates_on_tenants_elsewhere() {
        let mut run = shards().remove(1).1; // holds only b
        run.gates[0].scope = crate::GateScope::Tenant("a".into());
        let s = summarize(&run);
        assert!(s.gates[0].skipped.is_some(), "{:?}", s.gates[0]);
        assert!(s.gates[0].passed);
    }

    #[test]
    fn shards_of_different_runs_or_repeated_shards_are_refused() {
        let mut other = shards();
        other[1].1.seed += 1;
        let e = merge(other).map(|_| ()).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("seed")), "{e:?}");

        let mut other = shards();
        other[1].1.scenario = "another".into();
        let e = merge(other).map(|_| ()).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("scenario")),
            "{e:?}"
        );

        let s = shards();
        let twice = vec![s[0].clone(), (PathBuf::from("copy"), s[0].1.clone())];
        let e = merge(twice).map(|_| ()).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("tenant `a`") && e.contains("copy")),
            "{e:?}"
        );
        assert!(matches!(merge(Vec::new()), Err(MergeError::NoShards)));
    }

    #[test]
    fn a_partial_merge_says_what_is_missing_and_stays_partial() {
        let one = vec![shards().remove(0)];
        let merged = merge(one).unwrap_or_else(|e| panic!("{e}"));
        assert!(merged.shard.is_some());
        assert_eq!(missing_tenants(&merged), ["b"]);
        let whole = merge(shards()).unwrap_or_else(|e| panic!("{e}"));
        assert!(missing_tenants(&whole).is_empty());
        assert!(
            merged
                .notes
                .iter()
                .any(|n| n.contains("in no merged shard") && n.contains('b')),
            "{:?}",
            merged.notes
        );
    }
}
