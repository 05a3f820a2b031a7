//! Criterion benchmark of the router's admission path: key lookup (hash the bearer key, find
//! it in the directory), rate limits (tenant RPM/TPM/parallel) and the budget reservation,
//! then the settlement that follows every request — in process, and through Redis (the same
//! scripts N replicas share). The Redis half starts its own `redis-server` on a free loopback
//! port (and stops it); without `redis-server` installed it says so and measures only the
//! in-process path.
//!
//! `cargo bench -p tb-benches --bench admission`

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use router::clock::Clock;
use router::key::KeyHash;
use router::ledger::{Ledger, MemoryLedger, Money};
use router::limiter::{Limiter, MemoryLimiter};
use router::redis_state::RedisState;
use router::tenant::{Directory, Lookup};

const CONFIG: &str = r#"
model_list:
  - model_name: chat-fast
    litellm_params: { model: hosted_vllm/m, api_base: "http://127.0.0.1:9/v1" }
    model_info: { id: a, input_cost_per_token: 0.0000002, output_cost_per_token: 0.0000006 }
tenants:
  - id: tenant-01
    keys: [sk-tenant-01-abc]
    max_budget: 1000000000
    rpm_limit: 1000000000
    tpm_limit: 1000000000000
    max_parallel_requests: 1000000
"#;

fn directory() -> Directory {
    let cfg = router::config::parse(CONFIG, "bench.yaml").expect("bench config");
    Directory::new(&cfg)
}

fn in_process(c: &mut Criterion) {
    let dir = directory();
    let limiter = MemoryLimiter::new();
    let ledger = MemoryLedger::new(Clock::new());
    let worst = Money::for_tokens(100, 256, 0.0000002, 0.0000006);
    c.bench_function("admission/in_process", |b| {
        b.iter(|| {
            let Lookup::Key(k) = dir.lookup(&KeyHash::of(black_box("sk-tenant-01-abc"))) else {
                panic!("key not found")
            };
            let scopes = k.scopes();
            let hold = ledger.try_reserve(&scopes, worst).expect("budget");
            let grant = limiter.try_admit(&scopes, 356).expect("limits");
            // Settlement, as every request ends.
            limiter.settle_tokens(&scopes, grant.ticket, 300);
            ledger.finish(&scopes, hold, worst);
            black_box(grant.allowance);
        })
    });
}

struct RedisServer(std::process::Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(RedisServer, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = RedisServer(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((server, format!("redis://127.0.0.1:{port}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn with_redis(c: &mut Criterion) {
    let Some((_server, url)) = start_redis() else {
        eprintln!(
            "admission/redis: redis-server not available; install it (apt-get install redis-server) to measure the shared path"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let state = rt
        .block_on(RedisState::connect(&url, "bench", Clock::new()))
        .expect("redis");
    let dir = directory();
    let worst = Money::for_tokens(100, 256, 0.0000002, 0.0000006);
    c.bench_function("admission/redis", |b| {
        b.iter(|| {
            rt.block_on(async {
                let Lookup::Key(k) = dir.lookup(&KeyHash::of(black_box("sk-tenant-01-abc"))) else {
                    panic!("key not found")
                };
                let scopes = k.scopes();
                let hold = state.reserve(&scopes, worst).await.expect("budget");
                let grant = state.admit(&scopes, 356).await.expect("limits");
                black_box(&grant.allowance);
                // Settlement, as every request ends (the slot is released on drop).
                state.reconcile(&scopes, grant.ticket, 300).await;
                state.settle(&scopes, hold, worst).await;
            })
        })
    });
}

criterion_group!(benches, in_process, with_redis);
criterion_main!(benches);
