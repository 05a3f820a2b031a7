//! The harness must not distort what it measures: the load generator's TTFT and ITL for each
//! request agree with what the simulator scheduled for it, through the router, within 2 ms at
//! the median (issue: the main job end to end).

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use crate::common::fixture;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::await_holding_lock,
    reason = "the guard serialises whole tests across threads; it is never taken inside a runtime"
)]
async fn loadgen_latency_matches_the_simulators_schedule_within_2ms() {
    // Timing-sensitive: no other heavy test of this binary runs meanwhile.
    let _exclusive = crate::common::exclusive();
    let mut s = loadgen::load(&fixture("tiny.toml")).unwrap_or_else(|e| panic!("{e}"));
    // No limits here: every request should reach the engine.
    for t in &mut s.tenants {
        t.rpm_limit = None;
    }
    let token = CancellationToken::new();
    let stack = loadgen::stack::start(&s, &token, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let target = loadgen::Target {
        base_url: stack.router_url.clone(),
        keys: stack.keys.iter().cloned().map(Some).collect(),
    };
    let t_before = tokio::time::Instant::now();
    let records = loadgen::drive(&s, &target, None, &token)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .records;
    let timelines: HashMap<String, mocks::RequestTimeline> = stack.engines[0]
        .1
        .timelines()
        .into_iter()
        .map(|t| (t.request_id.clone(), t))
        .collect();
    token.cancel();

    let mut ttft_diffs = Vec::new();
    let mut sim_itl = Vec::new();
    let mut gen_itl = Vec::new();
    let mut inbound = Vec::new();
    for r in records.iter().filter(|r| r.outcome == reports::Outcome::Ok) {
        let Some(tl) = timelines.get(&format!("tb-{}", r.id)) else {
            panic!("request {} has no simulator timeline", r.id);
        };
        let sim_ttft = tl
            .ttft()
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN);
        let gen_ttft = r.ttft_ms.unwrap_or(f64::NAN);
        ttft_diffs.push(gen_ttft - sim_ttft);
        // drive() puts t0 100 ms after it starts: close enough to split the difference into
        // the way in (client → router → simulator) and the way out, for the failure message.
        inbound.push(
            tl.arrival.duration_since(t_before).as_secs_f64() * 1000.0
                - 100.0
                - r.intended_start_ms,
        );
        sim_itl.extend(tl.itls().iter().map(|d| d.as_secs_f64() * 1000.0));
        gen_itl.extend(r.itl_ms.iter().copied());
    }
    let lateness = median(
        records
            .iter()
            .map(|r| r.actual_start_ms - r.intended_start_ms)
            .collect(),
    );
    let inbound = median(inbound);
    assert!(
        ttft_diffs.len() > 30,
        "only {} successful requests",
        ttft_diffs.len()
    );
    let ttft_gap = median(ttft_diffs);
    // TTFT from the client includes the trip through the router; the simulator's starts when
    // the request reaches it. Their difference is what the harness adds.
    assert!(
        ttft_gap.abs() < 2.0,
        "median TTFT difference {ttft_gap:.3} ms (send lateness {lateness:.3} ms, way in {inbound:.3} ms)"
    );
    let (s_itl, g_itl) = (median(sim_itl), median(gen_itl));
    assert!(
        (s_itl - g_itl).abs() < 2.0,
        "median ITL: simulator {s_itl:.3} ms, load generator {g_itl:.3} ms"
    );
    assert!(
        s_itl > 5.0,
        "a 7B model on a 5090 takes several ms per token, got {s_itl:.3}"
    );
}
