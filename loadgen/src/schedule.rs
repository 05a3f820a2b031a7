//! Per-tenant arrival schedules merged into one time-ordered plan, plus the closed-loop users
//! whose send times are decided during the run.
//!
//! The run's single dispatch engine (`run::drive`) consumes both: the open-loop plan in time
//! order, and each closed-loop user's next request once its previous one finished.
//!
//! Every tenant draws from its own RNG, seeded from the scenario seed and its id, so adding or
//! removing a tenant leaves the others' traffic unchanged and a run is reproducible from the
//! scenario file alone.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::distribution::{Arrival, TracePoint};
use crate::scenario::{Scenario, Tenant};

/// One request the run will send.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRequest {
    /// Position in the merged plan (0-based); also the request's id.
    pub id: u64,
    /// Index into `Scenario::tenants`.
    pub tenant: usize,
    /// Intended send time in seconds from the run's start.
    pub at_s: f64,
    /// Virtual model to call.
    pub model: String,
    /// Prompt tokens as the server counts them (template included).
    pub prompt_tokens: u64,
    /// Output tokens to ask for (`max_tokens`).
    pub output_tokens: u64,
    /// Seed for this request's prompt text.
    pub text_seed: u64,
    /// The closed-loop user that sends it (`None`: open loop).
    pub user: Option<u32>,
}

/// A closed-loop user: sends a request, waits for it to finish, thinks, sends the next.
#[derive(Debug, Clone)]
pub struct ClosedUser {
    /// Index into `Scenario::tenants`.
    pub tenant: usize,
    /// The user's number within its tenant.
    pub user: u32,
    /// Seconds between a response's end and the next send.
    pub think_time_s: f64,
    /// When the first request goes out, s from the run's start.
    pub first_at_s: f64,
    rng: ChaCha8Rng,
}

impl ClosedUser {
    /// The user's next request, intended at `at_s`, with id `id`.
    pub fn next(&mut self, s: &Scenario, at_s: f64, id: u64) -> PlannedRequest {
        let t = &s.tenants[self.tenant];
        let (model, prompt_tokens, output_tokens) = sample_request(t, None, &mut self.rng);
        PlannedRequest {
            id,
            tenant: self.tenant,
            at_s,
            model,
            prompt_tokens,
            output_tokens,
            text_seed: self.rng.random(),
            user: Some(self.user),
        }
    }
}

/// Everything the dispatch engine drives.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Open-loop requests, sorted by intended time, ids 0..len.
    pub open: Vec<PlannedRequest>,
    /// Closed-loop users; their requests get ids from `open.len()` on.
    pub users: Vec<ClosedUser>,
}

fn sample_request<R: Rng + ?Sized>(
    t: &Tenant,
    point: Option<&TracePoint>,
    rng: &mut R,
) -> (String, u64, u64) {
    let model = pick_model(t, rng);
    let prompt = t.prompt_tokens.sample(rng);
    let output = t.output_tokens.sample(rng);
    // A trace's own lengths win; the samples are still drawn so the RNG stream is the same.
    let prompt = point.and_then(|p| p.prompt_tokens).unwrap_or(prompt);
    let output = point.and_then(|p| p.output_tokens).unwrap_or(output);
    (model, prompt, output)
}

/// FNV-1a, to turn a tenant id into a stable seed component.
pub(crate) fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The RNG for one tenant and one purpose.
pub(crate) fn tenant_rng(seed: u64, tenant: &str, purpose: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ stable_hash(tenant) ^ stable_hash(purpose).rotate_left(17))
}

fn pick_model<R: Rng + ?Sized>(t: &Tenant, rng: &mut R) -> String {
    if t.models.len() == 1 {
        return t.models[0].0.clone();
    }
    let mut x: f64 = rng.random();
    for (m, w) in &t.models {
        if x < *w {
            return m.clone();
        }
        x -= w;
    }
    t.models.last().map(|(m, _)| m.clone()).unwrap_or_default()
}

/// The open-loop part of the plan, sorted by intended send time.
pub fn build(s: &Scenario) -> Vec<PlannedRequest> {
    build_plan(s).open
}

/// The whole plan: open-loop requests and closed-loop users.
pub fn build_plan(s: &Scenario) -> Plan {
    let mut plan = Vec::new();
    let mut users = Vec::new();
    for (ti, t) in s.tenants.iter().enumerate() {
        let mut rng = tenant_rng(s.seed, &t.id, "schedule");
        if let Arrival::ClosedLoop {
            users: n,
            think_time_s,
        } = t.arrival
        {
            for u in 0..n {
                users.push(ClosedUser {
                    tenant: ti,
                    user: u,
                    think_time_s,
                    // Staggered over one think time (at most 1 s) so the users do not all fire
                    // in the same instant.
                    first_at_s: think_time_s.min(1.0) * f64::from(u) / f64::from(n),
                    rng: tenant_rng(s.seed, &format!("{}#{u}", t.id), "closed-loop"),
                });
            }
            continue;
        }
        for point in t.arrival.points(s.duration_s, &mut rng) {
            let (model, prompt_tokens, output_tokens) = sample_request(t, Some(&point), &mut rng);
            plan.push(PlannedRequest {
                id: 0,
                tenant: ti,
                at_s: point.at_s,
                model,
                prompt_tokens,
                output_tokens,
                text_seed: rng.random(),
                user: None,
            });
        }
    }
    plan.sort_by(|a, b| a.at_s.total_cmp(&b.at_s).then(a.tenant.cmp(&b.tenant)));
    for (i, p) in plan.iter_mut().enumerate() {
        p.id = i as u64;
    }
    Plan { open: plan, users }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    #[test]
    fn plan_is_sorted_reproducible_and_per_tenant_stable() {
        let text = crate::scenario::MINIMAL_FOR_TESTS;
        let s = parse(text, "s.toml").expect("valid");
        let a = build(&s);
        let b = build(&s);
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].at_s <= w[1].at_s));
        // ~1 req/s per tenant for 10 s, 3 tenants.
        assert!((15..=50).contains(&a.len()), "{}", a.len());
        // Adding a group must not change the first group's requests.
        let more = text.replace("[[overrides]]", "[[groups]]\nname = \"extra\"\ncount = 2\nmodel = \"chat-fast\"\narrival = { kind = \"poisson\", rate_per_s = 3.0 }\nprompt_tokens = { kind = \"fixed\", value = 64 }\noutput_tokens = { kind = \"fixed\", value = 8 }\n\n[[overrides]]");
        let s2 = parse(&more, "s.toml").expect("valid");
        let c = build(&s2);
        let first: Vec<_> = a.iter().filter(|p| p.tenant == 0).map(|p| p.at_s).collect();
        let first2: Vec<_> = c.iter().filter(|p| p.tenant == 0).map(|p| p.at_s).collect();
        assert_eq!(first, first2);
    }
}
