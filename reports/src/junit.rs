//! `junit.xml`: every gate, SLO and isolation verdict as a JUnit test case, the format CI
//! systems (GitHub Actions reporters, GitLab, Jenkins) display. One test suite per kind.
//!
//! A gate a shard could not judge (its tenant ran elsewhere) is a `<skipped/>` case: CI must
//! not show as passed a check that never ran.

use crate::html::escape;
use crate::summary::Summary;

struct Case {
    name: String,
    failure: Option<String>,
    /// Why the case was not run; only read when `failure` is `None`.
    skipped: Option<String>,
}

fn suite(out: &mut String, name: &str, cases: &[Case]) {
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let skipped = cases
        .iter()
        .filter(|c| c.failure.is_none() && c.skipped.is_some())
        .count();
    out.push_str(&format!(
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">\n",
        escape(name),
        cases.len()
    ));
    for c in cases {
        out.push_str(&format!(
            "    <testcase classname=\"tenantbench.{}\" name=\"{}\"",
            escape(name),
            escape(&c.name)
        ));
        match (&c.failure, &c.skipped) {
            (Some(msg), _) => out.push_str(&format!(
                ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                escape(msg),
                escape(msg)
            )),
            (None, Some(why)) => out.push_str(&format!(
                ">\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                escape(why)
            )),
            (None, None) => out.push_str("/>\n"),
        }
    }
    out.push_str("  </testsuite>\n");
}

fn observed(v: Option<f64>) -> String {
    v.map_or_else(|| "no data".into(), crate::table::number)
}

/// The JUnit XML text for a summary.
pub fn render_junit(summary: &Summary) -> String {
    let gates: Vec<Case> = summary
        .gates
        .iter()
        .map(|g| Case {
            name: g.name.clone(),
            failure: (!g.passed).then(|| g.describe()),
            skipped: g.skipped.clone(),
        })
        .collect();
    let mut slos = Vec::new();
    let mut add = |scope: String, v: &Option<crate::slo::SloVerdict>| {
        if let Some(v) = v {
            for c in &v.checks {
                slos.push(Case {
                    name: format!(
                        "{scope} {} <= {}",
                        c.metric,
                        crate::table::number(c.threshold)
                    ),
                    failure: (!c.passed).then(|| {
                        format!(
                            "{scope} {} = {} over {}",
                            c.metric,
                            observed(c.observed),
                            c.threshold
                        )
                    }),
                    skipped: None,
                });
            }
        }
    };
    add("overall".into(), &summary.slo);
    for g in &summary.groups {
        add(format!("group {}", g.group), &g.slo);
    }
    for t in &summary.tenants {
        add(format!("tenant {}", t.tenant), &t.slo);
    }
    let mut iso = Vec::new();
    if let Some(i) = &summary.isolation {
        for v in i.victims.iter().chain(i.pooled.iter()) {
            iso.push(Case {
                name: format!("victim {} {} ratio <= {}", v.tenant, i.metric, i.max_ratio),
                failure: (!v.passed).then(|| {
                    format!(
                        "ratio {} (baseline {}, test {})",
                        observed(v.ratio),
                        observed(v.baseline_ms),
                        observed(v.test_ms)
                    )
                }),
                skipped: None,
            });
        }
        for a in &i.aggressors {
            iso.push(Case {
                name: format!("aggressor {} within its limits", a.tenant),
                failure: (!a.limits_held).then(|| {
                    format!(
                        "accepted {} requests/min (limit {:?}), {} tokens/min (limit {:?})",
                        a.max_accepted_requests_per_min,
                        a.rpm_limit,
                        a.max_accepted_tokens_per_min,
                        a.tpm_limit
                    )
                }),
                skipped: None,
            });
        }
    }
    let total = gates.len() + slos.len() + iso.len();
    let failures = [&gates, &slos, &iso]
        .iter()
        .flat_map(|v| v.iter())
        .filter(|c| c.failure.is_some())
        .count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"tenantbench {}\" tests=\"{total}\" failures=\"{failures}\">\n",
        escape(&summary.scenario)
    );
    suite(&mut out, "gates", &gates);
    suite(&mut out, "slos", &slos);
    suite(&mut out, "isolation", &iso);
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::summarize;
    use crate::summary::tests::small_run;

    #[test]
    fn failed_gates_become_failures_and_names_are_escaped() {
        let mut run = small_run();
        run.gates[0].name = "ttft <800 & \"fast\"".into();
        let xml = render_junit(&summarize(&run));
        assert!(xml.contains("tests=\"2\" failures=\"1\""), "{xml}");
        assert!(xml.contains("ttft &lt;800 &amp; &quot;fast&quot;"), "{xml}");
        assert_eq!(xml.matches("<failure ").count(), 1);
        assert!(!xml.contains("<skipped"), "{xml}");
    }

    #[test]
    fn skipped_gates_become_skipped_cases_not_passes() {
        let run = crate::summary::tests::shard_with_a_gate_on_an_absent_tenant(
            1,
            "z <fast>",
            "error_rate",
            crate::gate::GateOp::Lt,
            0.1,
        );
        let xml = render_junit(&summarize(&run));
        assert!(
            xml.contains("<testsuite name=\"gates\" tests=\"3\" failures=\"1\" skipped=\"1\">"),
            "{xml}"
        );
        let case = xml
            .split("<testcase ")
            .find(|c| c.contains("name=\"z &lt;fast&gt;\""))
            .unwrap_or_else(|| panic!("no case for the skipped gate:\n{xml}"));
        assert!(
            case.contains("<skipped message=\"tenant z is not in this shard"),
            "{case}"
        );
        assert!(
            case.contains("</testcase>") && !case.contains("<failure"),
            "{case}"
        );
        assert_eq!(xml.matches("<skipped ").count(), 1, "{xml}");
    }
}
