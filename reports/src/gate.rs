//! CI gates: thresholds on any number in a scope's statistics, evaluated on the summary.
//!
//! A gate's metric is a dotted path into the scope's `summary.json` object (`ttft_ms.p99`,
//! `outcomes.rate_limited`, `error_rate`, `requests_per_s`, and `cost.…` with the scope's cost
//! lines). Looking metrics up in the serialised statistics instead of a hand-kept list
//! means every field `summary.json` gains is gateable at once, and a gate can never read a
//! different number from the one the file shows. A metric with no data (`null`) fails its gate:
//! "no successful request" must not pass "p99 < 800 ms".

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::aggregate::Statistics;
use crate::cost::{CostSummary, TenantCost};

/// Which statistics a gate reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateScope {
    /// The whole run.
    Overall,
    /// One tenant group.
    Group(String),
    /// One tenant.
    Tenant(String),
    /// Every tenant on its own; fails if any tenant fails.
    EachTenant,
}

impl fmt::Display for GateScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateScope::Overall => f.write_str("overall"),
            GateScope::Group(g) => write!(f, "group {g}"),
            GateScope::Tenant(t) => write!(f, "tenant {t}"),
            GateScope::EachTenant => f.write_str("each tenant"),
        }
    }
}

/// The comparison a gate's observed value must satisfy against its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateOp {
    /// observed < threshold
    Lt,
    /// observed ≤ threshold
    Le,
    /// observed > threshold
    Gt,
    /// observed ≥ threshold
    Ge,
}

impl GateOp {
    /// The operator as written in a scenario (`<`, `<=`, `>`, `>=`).
    pub fn symbol(&self) -> &'static str {
        match self {
            GateOp::Lt => "<",
            GateOp::Le => "<=",
            GateOp::Gt => ">",
            GateOp::Ge => ">=",
        }
    }

    /// Parses `<`, `<=`, `>`, `>=` (or `lt`, `le`, `gt`, `ge`).
    pub fn parse(s: &str) -> Option<GateOp> {
        match s.trim() {
            "<" | "lt" => Some(GateOp::Lt),
            "<=" | "le" => Some(GateOp::Le),
            ">" | "gt" => Some(GateOp::Gt),
            ">=" | "ge" => Some(GateOp::Ge),
            _ => None,
        }
    }

    /// Whether `observed op threshold` holds.
    pub fn holds(&self, observed: f64, threshold: f64) -> bool {
        match self {
            GateOp::Lt => observed < threshold,
            GateOp::Le => observed <= threshold,
            GateOp::Gt => observed > threshold,
            GateOp::Ge => observed >= threshold,
        }
    }

    /// Of two observations, the one further from passing (the larger for `<`, `<=`).
    fn worse(&self, a: f64, b: f64) -> f64 {
        match self {
            GateOp::Lt | GateOp::Le => a.max(b),
            GateOp::Gt | GateOp::Ge => a.min(b),
        }
    }
}

/// A gate from the scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSpec {
    /// Shown in verdicts and CI output.
    pub name: String,
    /// Which statistics it reads.
    pub scope: GateScope,
    /// Dotted path into the scope's statistics, e.g. `ttft_ms.p99`.
    pub metric: String,
    /// The comparison.
    pub op: GateOp,
    /// The threshold, in the metric's unit.
    pub threshold: f64,
}

impl GateSpec {
    /// Checks that the metric names a number in its scope, so a scenario can be refused before a
    /// run instead of failing its gate afterwards. The error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !self.threshold.is_finite() {
            return Err(format!(
                "gate `{}`: threshold must be a finite number",
                self.name
            ));
        }
        let stats = Statistics::default();
        let template = match self.scope {
            GateScope::Overall => scope_value(&stats, Some(&CostSummary::default())),
            GateScope::Group(_) | GateScope::Tenant(_) | GateScope::EachTenant => {
                scope_value(&stats, Some(&TenantCost::default()))
            }
        };
        lookup(&template, &self.metric)
            .map(|_| ())
            .map_err(|e| format!("gate `{}`: {e}", self.name))
    }
}

/// One subject that failed a gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateFailure {
    /// `overall`, `group <id>` or `tenant <id>`.
    pub subject: String,
    /// What it showed (`null`: no data).
    pub observed: Option<f64>,
}

/// A gate's verdict, as `summary.json` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// The gate's name.
    pub name: String,
    /// Its scope.
    pub scope: GateScope,
    /// Its metric path.
    pub metric: String,
    /// Its comparison.
    pub op: GateOp,
    /// Its threshold.
    pub threshold: f64,
    /// The observed value; for `each_tenant` the worst tenant's. `null` when there was no data.
    pub observed: Option<f64>,
    /// Whether the gate held.
    pub passed: bool,
    /// The subjects that failed it.
    pub failures: Vec<GateFailure>,
    /// Why the gate could not be evaluated (unknown metric, group or tenant), if so.
    pub error: Option<String>,
    /// Why the gate was not evaluated at all: in a shard, its tenant or group ran elsewhere.
    /// A skipped gate has `passed: true` so it does not fail the shard (the merged result
    /// evaluates it); the table and `junit.xml` still show it as skipped, not passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl GateResult {
    /// One line for a terminal or CI log: `PASS name: tenant t1 ttft_ms.p99 = 512.3 < 800`.
    pub fn describe(&self) -> String {
        // `passed` guards against a hand-edited summary with both set: a failure is shown as one.
        if let Some(why) = &self.skipped
            && self.passed
        {
            return format!("SKIP {}: {} {}; {why}", self.name, self.scope, self.metric);
        }
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let observed = self
            .observed
            .map_or_else(|| "no data".to_owned(), crate::table::number);
        let mut line = format!(
            "{verdict} {}: {} {} = {observed} (must be {} {})",
            self.name,
            self.scope,
            self.metric,
            self.op.symbol(),
            crate::table::number(self.threshold)
        );
        if let Some(e) = &self.error {
            line.push_str(&format!("; {e}"));
        }
        if matches!(self.scope, GateScope::EachTenant) && !self.failures.is_empty() {
            let names: Vec<_> = self.failures.iter().map(|f| f.subject.as_str()).collect();
            line.push_str(&format!("; failing: {}", names.join(", ")));
        }
        line
    }
}

/// The scopes gates read, each already serialised to the JSON object `summary.json` holds.
pub(crate) struct GateScopes {
    pub overall: Value,
    pub groups: Vec<(String, Value)>,
    pub tenants: Vec<(String, Value)>,
    /// The run holds only part of the scenario's tenants (a shard): a gate whose tenant or
    /// group is absent ran on another machine, so it is skipped instead of failed.
    pub partial: bool,
}

/// A scope's statistics as JSON, with its cost section under `cost` where it has one.
pub(crate) fn scope_value<C: Serialize>(stats: &Statistics, cost: Option<&C>) -> Value {
    let mut value = serde_json::to_value(stats).unwrap_or(Value::Null);
    if let (Value::Object(map), Some(cost)) = (&mut value, cost) {
        map.insert(
            "cost".to_owned(),
            serde_json::to_value(cost).unwrap_or(Value::Null),
        );
    }
    value
}

/// Reads a number by dotted path: `Ok(None)` for `null`, `Err` for a missing or non-numeric field.
fn lookup(value: &Value, metric: &str) -> Result<Option<f64>, String> {
    let mut at = value;
    for (i, key) in metric.split('.').enumerate() {
        at = match at.get(key) {
            Some(v) => v,
            None => {
                let known = match at {
                    Value::Object(map) => map.keys().cloned().collect::<Vec<_>>().join(", "),
                    _ => String::new(),
                };
                let prefix = metric.split('.').take(i).collect::<Vec<_>>().join(".");
                return Err(if prefix.is_empty() {
                    format!("unknown metric `{metric}` (known: {known})")
                } else {
                    format!("unknown metric `{metric}`: `{prefix}` has {known}")
                });
            }
        };
    }
    match at {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64()),
        Value::Object(map) => Err(format!(
            "metric `{metric}` is an object; name one of its fields: {}",
            map.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
        _ => Err(format!("metric `{metric}` is not a number")),
    }
}

/// Evaluates one gate.
pub(crate) fn evaluate(spec: &GateSpec, scopes: &GateScopes) -> GateResult {
    let mut result = GateResult {
        name: spec.name.clone(),
        scope: spec.scope.clone(),
        metric: spec.metric.clone(),
        op: spec.op,
        threshold: spec.threshold,
        observed: None,
        passed: false,
        failures: Vec::new(),
        error: None,
        skipped: None,
    };
    let subjects: Vec<(String, &Value)> = match &spec.scope {
        GateScope::Overall => vec![("overall".to_owned(), &scopes.overall)],
        GateScope::Group(g) => scopes
            .groups
            .iter()
            .filter(|(id, _)| id == g)
            .map(|(id, v)| (format!("group {id}"), v))
            .collect(),
        GateScope::Tenant(t) => scopes
            .tenants
            .iter()
            .filter(|(id, _)| id == t)
            .map(|(id, v)| (format!("tenant {id}"), v))
            .collect(),
        GateScope::EachTenant => scopes
            .tenants
            .iter()
            .map(|(id, v)| (format!("tenant {id}"), v))
            .collect(),
    };
    if subjects.is_empty() {
        if scopes.partial && matches!(spec.scope, GateScope::Group(_) | GateScope::Tenant(_)) {
            result.passed = true;
            result.skipped = Some(format!(
                "{} is not in this shard; `tenantbench report merge` evaluates it",
                spec.scope
            ));
            return result;
        }
        result.error = Some(format!("the run has no {}", spec.scope));
        return result;
    }
    for (subject, value) in subjects {
        match lookup(value, &spec.metric) {
            Err(e) => {
                result.error = Some(e);
                return result;
            }
            Ok(observed) => {
                if let Some(v) = observed {
                    result.observed = Some(match result.observed {
                        Some(w) => spec.op.worse(w, v),
                        None => v,
                    });
                }
                if !observed.is_some_and(|v| spec.op.holds(v, spec.threshold)) {
                    result.failures.push(GateFailure { subject, observed });
                }
            }
        }
    }
    result.passed = result.failures.is_empty();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregate;
    use crate::aggregate::tests::{approx, failed_record, ok_record};
    use crate::record::Outcome;

    fn scopes() -> GateScopes {
        let fast = Aggregate::from_records(&[
            ok_record("a", 0.0, 100.0, 900.0),
            ok_record("a", 0.0, 200.0, 900.0),
        ])
        .statistics(10.0);
        let slow = Aggregate::from_records(&[
            ok_record("b", 0.0, 900.0, 1900.0),
            failed_record("b", Outcome::RateLimited),
        ])
        .statistics(10.0);
        let empty = Aggregate::new().statistics(10.0);
        let no_cost = None::<&()>;
        GateScopes {
            overall: scope_value(&fast, Some(&CostSummary::default())),
            groups: vec![("g".to_owned(), scope_value(&fast, no_cost))],
            tenants: vec![
                ("a".to_owned(), scope_value(&fast, no_cost)),
                ("b".to_owned(), scope_value(&slow, no_cost)),
                ("c".to_owned(), scope_value(&empty, no_cost)),
            ],
            partial: false,
        }
    }

    fn spec(scope: GateScope, metric: &str, op: GateOp, threshold: f64) -> GateSpec {
        GateSpec {
            name: "g1".to_owned(),
            scope,
            metric: metric.to_owned(),
            op,
            threshold,
        }
    }

    #[test]
    fn operators_compare_as_written() {
        assert!(GateOp::Lt.holds(1.0, 2.0));
        assert!(!GateOp::Lt.holds(2.0, 2.0));
        assert!(GateOp::Le.holds(2.0, 2.0));
        assert!(GateOp::Gt.holds(3.0, 2.0));
        assert!(!GateOp::Ge.holds(1.0, 2.0));
        assert_eq!(GateOp::parse(">="), Some(GateOp::Ge));
        assert_eq!(GateOp::parse("=="), None);
    }

    #[test]
    fn tenant_gate_reads_that_tenant() {
        let s = scopes();
        let pass = evaluate(
            &spec(
                GateScope::Tenant("a".into()),
                "ttft_ms.p99",
                GateOp::Lt,
                800.0,
            ),
            &s,
        );
        assert!(pass.passed, "{pass:?}");
        assert!(approx(pass.observed, 200.0));
        let fail = evaluate(
            &spec(
                GateScope::Tenant("b".into()),
                "ttft_ms.p99",
                GateOp::Lt,
                800.0,
            ),
            &s,
        );
        assert!(!fail.passed);
        assert!(approx(fail.observed, 900.0));
        let rl = evaluate(
            &spec(
                GateScope::Tenant("b".into()),
                "outcomes.rate_limited",
                GateOp::Ge,
                1.0,
            ),
            &s,
        );
        assert!(rl.passed, "{rl:?}");
    }

    #[test]
    fn each_tenant_reports_the_worst_and_every_failure() {
        let r = evaluate(
            &spec(GateScope::EachTenant, "ttft_ms.p99", GateOp::Lt, 800.0),
            &scopes(),
        );
        assert!(!r.passed);
        assert!(approx(r.observed, 900.0));
        let failing: Vec<_> = r.failures.iter().map(|f| f.subject.as_str()).collect();
        // b is too slow; c has no data at all, which must not pass.
        assert_eq!(failing, ["tenant b", "tenant c"]);
        assert!(r.describe().starts_with("FAIL"));
    }

    #[test]
    fn unknown_metric_scope_or_subject_fails_with_a_reason() {
        let s = scopes();
        let r = evaluate(
            &spec(GateScope::Overall, "ttft_ms.p77", GateOp::Lt, 1.0),
            &s,
        );
        assert!(!r.passed);
        assert!(
            r.error.as_deref().is_some_and(|e| e.contains("p99")),
            "{r:?}"
        );
        let r = evaluate(
            &spec(
                GateScope::Group("nope".into()),
                "error_rate",
                GateOp::Lt,
                1.0,
            ),
            &s,
        );
        assert!(!r.passed);
        assert!(r.error.is_some());
        let r = evaluate(&spec(GateScope::Overall, "ttft_ms", GateOp::Lt, 1.0), &s);
        assert!(
            r.error.as_deref().is_some_and(|e| e.contains("object")),
            "{r:?}"
        );
    }

    #[test]
    fn a_shard_skips_gates_on_tenants_it_does_not_hold() {
        let mut s = scopes();
        let gate = spec(
            GateScope::Tenant("elsewhere".into()),
            "error_rate",
            GateOp::Lt,
            1.0,
        );
        assert!(
            !evaluate(&gate, &s).passed,
            "unsharded: a missing tenant fails"
        );
        s.partial = true;
        let r = evaluate(&gate, &s);
        assert!(r.passed && r.skipped.is_some(), "{r:?}");
        assert!(r.describe().starts_with("SKIP"), "{}", r.describe());
        // A tenant the shard does hold is still evaluated.
        let held = spec(
            GateScope::Tenant("b".into()),
            "ttft_ms.p99",
            GateOp::Lt,
            800.0,
        );
        let r = evaluate(&held, &s);
        assert!(!r.passed && r.skipped.is_none(), "{r:?}");
    }

    #[test]
    fn overall_gate_can_read_cost() {
        let r = evaluate(
            &spec(
                GateScope::Overall,
                "cost.server_gbp_per_month",
                GateOp::Le,
                0.0,
            ),
            &scopes(),
        );
        assert!(r.passed, "{r:?}");
    }

    #[test]
    fn validate_accepts_known_paths_only() {
        let valid = |scope: GateScope, metric: &str| {
            spec(scope, metric, GateOp::Lt, 1.0).validate().is_ok()
        };
        let group = || GateScope::Group("g".into());
        assert!(valid(GateScope::Overall, "error_rate"));
        assert!(valid(GateScope::Overall, "cost.breakeven_tenants"));
        assert!(valid(GateScope::EachTenant, "cost.api_gbp_per_month"));
        assert!(valid(group(), "cost.api_gbp_per_month"));
        assert!(!valid(group(), "cost.per_tenant_month"));
        assert!(!valid(GateScope::Overall, "ttft"));
        assert!(!valid(GateScope::Overall, "ttft_ms.p42"));
        let nan = spec(GateScope::Overall, "error_rate", GateOp::Lt, f64::NAN);
        assert!(nan.validate().is_err());
    }
}
