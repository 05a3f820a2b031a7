//! Deployment choice within a model group, deployment health, and fallback chains.
//!
//! `simple-shuffle` (LiteLLM's default): a weighted random pick among the group's healthy
//! deployments, weights from `weight`, else `rpm`, else `tpm`, else equal; the RNG is seeded
//! from `tenantbench_settings.seed`, so runs repeat. A deployment that fails more than
//! `allowed_fails` times within a minute is skipped for `cooldown_time` (LiteLLM's cooldown).
//! A group's only deployment is never cooled down: with nothing to shift load to, skipping it
//! would turn one blip into `cooldown_time` of errors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::config::{Deployment, RouterConfig};

/// A model group at run time.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub deployments: Vec<Arc<Deployment>>,
    /// Indices of the groups tried after this one, in order.
    pub fallbacks: Vec<usize>,
    /// Highest per-token prices over this group and its fallbacks: the worst case a request
    /// can cost, whichever deployment ends up serving it.
    pub max_input_price: f64,
    pub max_output_price: f64,
    /// The largest context window among the deployments, when every one declares one: a
    /// request over it fits none of them. A request between a smaller deployment's window and
    /// this one is left to the engine that gets it.
    pub context_window: Option<u64>,
    health: Vec<Mutex<Health>>,
}

#[derive(Debug, Default)]
struct Health {
    window_start: Option<Instant>,
    fails: u32,
    cooldown_until: Option<Instant>,
}

/// All groups, and the picker.
#[derive(Debug)]
pub struct Balancer {
    groups: Vec<Group>,
    rng: Mutex<SmallRng>,
    allowed_fails: u32,
    cooldown: Duration,
}

const FAIL_WINDOW: Duration = Duration::from_secs(60);

impl Balancer {
    pub fn new(cfg: &RouterConfig) -> Self {
        let index = |name: &str| cfg.groups.iter().position(|g| g.name == name);
        let mut groups: Vec<Group> = cfg
            .groups
            .iter()
            .map(|g| Group {
                name: g.name.clone(),
                deployments: g.deployments.iter().cloned().map(Arc::new).collect(),
                fallbacks: g.fallbacks.iter().filter_map(|f| index(f)).collect(),
                max_input_price: 0.0,
                max_output_price: 0.0,
                context_window: g
                    .deployments
                    .iter()
                    .map(|d| d.context_window.map(std::num::NonZeroU64::get))
                    .collect::<Option<Vec<u64>>>()
                    .and_then(|w| w.into_iter().max()),
                health: g.deployments.iter().map(|_| Mutex::default()).collect(),
            })
            .collect();
        for gi in 0..groups.len() {
            let chain: Vec<usize> = std::iter::once(gi)
                .chain(groups[gi].fallbacks.iter().copied())
                .collect();
            let (mut inp, mut out) = (0.0f64, 0.0f64);
            for c in chain {
                for d in &groups[c].deployments {
                    inp = inp.max(d.input_cost_per_token);
                    out = out.max(d.output_cost_per_token);
                }
            }
            groups[gi].max_input_price = inp;
            groups[gi].max_output_price = out;
        }
        Self {
            groups,
            rng: Mutex::new(SmallRng::seed_from_u64(cfg.settings.seed)),
            allowed_fails: cfg.routing.allowed_fails,
            cooldown: cfg.routing.cooldown,
        }
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    pub fn group(&self, index: usize) -> Option<&Group> {
        self.groups.get(index)
    }

    /// Picks a deployment of group `g`, preferring ones not in `tried`. `Err` carries the time
    /// until the first cooled-down deployment is usable again.
    pub fn pick(&self, g: usize, tried: &[usize]) -> Result<usize, Duration> {
        let Some(group) = self.groups.get(g) else {
            return Err(Duration::ZERO);
        };
        let now = Instant::now();
        let mut soonest = None::<Duration>;
        let mut healthy = Vec::with_capacity(group.deployments.len());
        for (i, h) in group.health.iter().enumerate() {
            let h = h.lock().unwrap_or_else(|e| e.into_inner());
            match h.cooldown_until {
                Some(until) if until > now => {
                    let left = until - now;
                    soonest = Some(soonest.map_or(left, |s| s.min(left)));
                }
                _ => healthy.push(i),
            }
        }
        let fresh: Vec<usize> = healthy
            .iter()
            .copied()
            .filter(|i| !tried.contains(i))
            .collect();
        let pool = if fresh.is_empty() { healthy } else { fresh };
        match pool.as_slice() {
            [] => Err(soonest.unwrap_or(Duration::ZERO)),
            [only] => Ok(*only),
            many => {
                let total: f64 = many.iter().map(|i| group.deployments[*i].weight).sum();
                let mut r = {
                    let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                    rng.random::<f64>() * total
                };
                for i in many {
                    r -= group.deployments[*i].weight;
                    if r < 0.0 {
                        return Ok(*i);
                    }
                }
                Ok(many[many.len() - 1])
            }
        }
    }

    /// Counts a failure of deployment `d` of group `g`; may start its cooldown.
    pub fn failed(&self, g: usize, d: usize) {
        let Some(group) = self.groups.get(g) else {
            return;
        };
        if group.deployments.len() < 2 {
            return;
        }
        let Some(h) = group.health.get(d) else { return };
        let now = Instant::now();
        let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
        match h.window_start {
            Some(s) if now.duration_since(s) < FAIL_WINDOW => h.fails += 1,
            _ => {
                h.window_start = Some(now);
                h.fails = 1;
            }
        }
        if h.fails > self.allowed_fails && !self.cooldown.is_zero() {
            h.cooldown_until = Some(now + self.cooldown);
            h.fails = 0;
            h.window_start = None;
        }
    }

    /// Whether deployment `d` of group `g` is cooling down now.
    pub fn cooling(&self, g: usize, d: usize) -> bool {
        let now = Instant::now();
        self.groups
            .get(g)
            .and_then(|gr| gr.health.get(d))
            .is_some_and(|h| {
                h.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .cooldown_until
                    .is_some_and(|u| u > now)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn balancer(extra: &str) -> Option<Balancer> {
        let yaml = format!(
            r#"
model_list:
  - model_name: a
    litellm_params: {{ model: hosted_vllm/x, api_base: "http://127.0.0.1:1/v1", weight: 3 }}
    model_info: {{ id: a1, output_cost_per_token: 0.000001 }}
  - model_name: a
    litellm_params: {{ model: hosted_vllm/x, api_base: "http://127.0.0.1:2/v1", weight: 1 }}
    model_info: {{ id: a2 }}
  - model_name: b
    litellm_params: {{ model: hosted_vllm/y, api_base: "http://127.0.0.1:3/v1" }}
    model_info: {{ id: b1, input_cost_per_token: 0.000002 }}
router_settings: {{ fallbacks: [{{a: [b]}}], allowed_fails: 1, cooldown_time: 5 }}
{extra}"#
        );
        parse(&yaml, "t").ok().map(|c| Balancer::new(&c))
    }

    #[test]
    fn weighted_pick_is_seeded_and_follows_weights() {
        let (Some(b1), Some(b2)) = (balancer(""), balancer("")) else {
            panic!("config")
        };
        let picks1: Vec<_> = (0..4000).filter_map(|_| b1.pick(0, &[]).ok()).collect();
        let picks2: Vec<_> = (0..4000).filter_map(|_| b2.pick(0, &[]).ok()).collect();
        assert_eq!(picks1, picks2, "same seed, same picks");
        let first = picks1.iter().filter(|i| **i == 0).count() as f64 / 4000.0;
        assert!((first - 0.75).abs() < 0.03, "weight 3:1 gave {first}");
        let other = balancer("tenantbench_settings: { seed: 9 }");
        let picks3: Vec<_> = other
            .map(|b| (0..4000).filter_map(|_| b.pick(0, &[]).ok()).collect())
            .unwrap_or_default();
        assert_ne!(picks1, picks3);
    }

    #[test]
    fn worst_case_prices_cover_the_fallbacks() {
        let b = balancer("");
        let g = b.as_ref().and_then(|b| b.group(0));
        assert_eq!(
            g.map(|g| (g.max_input_price, g.max_output_price)),
            Some((0.000002, 0.000001))
        );
        let g = b.as_ref().and_then(|b| b.group(1));
        assert_eq!(g.map(|g| g.max_output_price), Some(0.0));
    }

    #[test]
    fn a_groups_context_window_is_its_largest_when_every_deployment_has_one() {
        let windows = |a1: &str, a2: &str| {
            let yaml = format!(
                r#"
model_list:
  - model_name: a
    litellm_params: {{ model: hosted_vllm/x, api_base: "http://127.0.0.1:1/v1" }}
    model_info: {{ id: a1 {a1} }}
  - model_name: a
    litellm_params: {{ model: hosted_vllm/x, api_base: "http://127.0.0.1:2/v1" }}
    model_info: {{ id: a2 {a2} }}
"#
            );
            parse(&yaml, "t")
                .ok()
                .map(|c| Balancer::new(&c))
                .and_then(|b| b.group(0).map(|g| g.context_window))
        };
        let w = ", max_input_tokens: 4096";
        let w2 = ", max_input_tokens: 8192";
        assert_eq!(windows(w, w2), Some(Some(8192)));
        // One deployment without a window might take anything: the engine decides.
        assert_eq!(windows(w, ""), Some(None));
        assert_eq!(windows("", ""), Some(None));
    }

    #[tokio::test(start_paused = true)]
    async fn failing_deployment_cools_down_and_comes_back() {
        let Some(b) = balancer("") else {
            panic!("config")
        };
        b.failed(0, 0);
        assert!(!b.cooling(0, 0), "one failure is allowed");
        b.failed(0, 0);
        assert!(b.cooling(0, 0));
        assert!((0..50).all(|_| b.pick(0, &[]) == Ok(1)));
        b.failed(0, 1);
        b.failed(0, 1);
        assert_eq!(b.pick(0, &[]).err(), Some(Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.pick(0, &[]).is_ok());
        // The only deployment of a group never cools down.
        b.failed(1, 0);
        b.failed(1, 0);
        b.failed(1, 0);
        assert_eq!(b.pick(1, &[]), Ok(0));
    }

    #[test]
    fn retries_prefer_untried_deployments() {
        let Some(b) = balancer("") else {
            panic!("config")
        };
        assert!((0..50).all(|_| b.pick(0, &[0]) == Ok(1)));
        assert!((0..50).all(|_| b.pick(0, &[0, 1]).is_ok()));
    }
}
