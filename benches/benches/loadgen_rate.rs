//! How fast the load generator itself is (issue 5, "A benchmark"): its maximum request rate
//! against a trivial local HTTP server, compared with `wrk` against the same server in the same
//! run, and how many concurrent streams it follows while still timing tokens correctly.
//!
//! The trivial server runs in a child process (this same binary, with `TB_TRIVIAL_SERVER` set)
//! on one tokio worker, so it is the same server for both clients and neither client shares a
//! runtime with it. It answers every request at once with one small SSE body (one content
//! chunk, a usage chunk and `[DONE]`) — the load generator needs a stream to call a request a
//! success — and, under `/slow/`, streams `SLOW_TOKENS` tokens `SLOW_GAP_MS` apart.
//!
//! The load generator is driven through its real dispatch engine (`loadgen::drive`) with a
//! closed-loop scenario: `CONNS` users per tenant and no think time, the same concurrency as
//! `wrk -c CONNS`. Both clients get one thread (`wrk -t1`, a current-thread tokio runtime), the
//! server the other core.
//!
//! A third part paces an open-loop constant arrival of `PACE_RATE` requests/s (2,000) and
//! reports the scheduler's lateness against the intended send times (target: p99 < 1 ms).
//!
//! `cargo bench -p tb-benches --bench loadgen_rate` (env `CONNS` (64), `SECS` (5), `ROUNDS` (3),
//! `PACE_RATE`,
//! `STREAMS` (comma-separated stream counts, default `500,1000,2000`), `SLOW_TOKENS` (40),
//! `SLOW_GAP_MS` (50)).

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, header};
use tokio_util::sync::CancellationToken;

const FAST_BODY: &str = concat!(
    "data: {\"id\":\"b\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",",
    "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"ok\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"b\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",",
    "\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":1,\"total_tokens\":9}}\n\n",
    "data: [DONE]\n\n"
);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var_os("TB_TRIVIAL_SERVER").is_some() {
        serve_trivial();
        return;
    }
    let conns: usize = env_or("CONNS", 64);
    let secs: u64 = env_or("SECS", 5);
    let streams: Vec<usize> = std::env::var("STREAMS")
        .unwrap_or_else(|_| "500,1000,2000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let slow_tokens: usize = env_or("SLOW_TOKENS", 40);
    let slow_gap_ms: u64 = env_or("SLOW_GAP_MS", 50);

    let (mut child, port) = match start_server(slow_tokens, slow_gap_ms) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("loadgen_rate: cannot start the trivial server: {e}");
            std::process::exit(1);
        }
    };
    let base = format!("http://127.0.0.1:{port}");

    // The clients take turns, ROUNDS times, and the verdict compares medians: on this noisy
    // 2-vCPU machine one run of each can differ by 20 % from the next.
    let rounds: usize = env_or("ROUNDS", 3).max(1);
    println!(
        "loadgen_rate: trivial server (1 worker) on 127.0.0.1:{port}, {conns} connections, \
         {secs} s per run, {rounds} rounds taking turns"
    );
    let (mut wrk, mut ours, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    let mut failures = (0usize, 0usize);
    for round in 1..=rounds {
        let w = wrk_rate(&base, conns, secs);
        let o = loadgen_rate(&base, conns, secs);
        let b = bare_client_rate(&base, conns, secs);
        let show = |r: &Result<f64, String>| match r {
            Ok(v) => format!("{v:>7.0}"),
            Err(e) => format!("failed ({e})"),
        };
        println!(
            "  round {round}: wrk -t1 -c{conns} {}, tenantbench (1 thread) {}, its HTTP client alone {} requests/s",
            show(&w),
            show(&o.as_ref().map(|r| r.rate).map_err(Clone::clone)),
            show(&b)
        );
        if let Ok(r) = &o {
            failures.0 += r.ok;
            failures.1 += r.failed;
        }
        wrk.extend(w.ok());
        ours.extend(o.ok().map(|r| r.rate));
        bare.extend(b.ok());
    }
    let (w, o, b) = (
        percentile(&mut wrk, 0.5),
        percentile(&mut ours, 0.5),
        percentile(&mut bare, 0.5),
    );
    println!(
        "  medians: wrk {w:.0}, tenantbench {o:.0} ({} ok, {} failed in all), its HTTP client alone {b:.0} requests/s",
        failures.0, failures.1
    );
    if !wrk.is_empty() && !ours.is_empty() {
        let ratio = o / w;
        println!(
            "  ratio {:.0} % of wrk: {}",
            ratio * 100.0,
            if ratio >= 0.8 {
                "PASS (target >= 80 %)"
            } else {
                "FAIL (target >= 80 %)"
            }
        );
    } else {
        println!("  ratio: not measured (wrk or tenantbench did not run; apt-get install wrk)");
    }

    let pace_rate: f64 = env_or("PACE_RATE", 2000.0);
    match pacing(&base, pace_rate, secs) {
        Ok(p) => println!(
            "pacing: open loop, constant {pace_rate:.0} requests/s for {secs} s: {} sent; \
             scheduler lateness p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; client queueing p99 {:.3} ms: {}",
            p.sent,
            p.late_p50,
            p.late_p99,
            p.late_max,
            p.queue_p99,
            if p.late_p99 < 1.0 {
                "PASS (target p99 < 1 ms)"
            } else {
                "FAIL (target p99 < 1 ms)"
            }
        ),
        Err(e) => println!("pacing: failed ({e})"),
    }

    println!("streams: {slow_tokens} chunks {slow_gap_ms} ms apart per stream");
    for n in streams {
        match follow_streams(&base, n, slow_tokens, slow_gap_ms) {
            Ok(s) => println!(
                "  {n:>5} concurrent streams: {} ok, {} failed; measured chunk gap p50 {:.1} ms, p99 {:.1} ms; \
                 TTFT p50 {:.1} ms; send lateness p99 {:.2} ms: {}",
                s.ok,
                s.failed,
                s.itl_p50,
                s.itl_p99,
                s.ttft_p50,
                s.lateness_p99,
                if s.failed == 0 && (s.itl_p99 - slow_gap_ms as f64).abs() < 5.0 {
                    "followed"
                } else {
                    "NOT followed (p99 chunk gap off by >= 5 ms or failures)"
                }
            ),
            Err(e) => println!("  {n:>5} concurrent streams: failed ({e})"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts this binary as the trivial server and reads its port from its first stdout line.
fn start_server(slow_tokens: usize, slow_gap_ms: u64) -> std::io::Result<(Child, u16)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .env("TB_TRIVIAL_SERVER", "1")
        .env("SLOW_TOKENS", slow_tokens.to_string())
        .env("SLOW_GAP_MS", slow_gap_ms.to_string())
        // Held open by `child` for as long as this process lives: the server exits when it
        // reads end-of-file, so it cannot outlive a benchmark that died early (a closed pipe
        // on stdout, a panic) without reaching `child.kill()`.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("bad port line {line:?}")))?;
    Ok((child, port))
}

/// The child: a one-worker axum server answering at once, or streaming slowly under `/slow/`.
fn serve_trivial() {
    std::thread::spawn(|| {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
        std::process::exit(0);
    });
    let tokens: usize = env_or("SLOW_TOKENS", 40);
    let gap = Duration::from_millis(env_or("SLOW_GAP_MS", 50));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("server runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bind: {e}");
                return;
            }
        };
        match listener.local_addr() {
            Ok(a) => println!("{}", a.port()),
            Err(e) => {
                eprintln!("addr: {e}");
                return;
            }
        }
        let app = axum::Router::new().fallback(move |req: Request<Body>| async move {
            let body = if req.uri().path().starts_with("/slow/") {
                Body::from_stream(slow_stream(tokens, gap))
            } else {
                Body::from(FAST_BODY)
            };
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(body)
                .unwrap_or_default()
        });
        let _ = axum::serve(listener, app).await;
    });
}

fn slow_stream(
    tokens: usize,
    gap: Duration,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> {
    futures_util::stream::unfold(0usize, move |i| async move {
        if i > tokens + 1 {
            return None;
        }
        let chunk = if i < tokens {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            format!(
                "data: {{\"id\":\"s\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\
                 \"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n"
            )
        } else if i == tokens {
            format!(
                "data: {{\"id\":\"s\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\",\
                 \"choices\":[],\"usage\":{{\"prompt_tokens\":8,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
                tokens + 8
            )
        } else {
            "data: [DONE]\n\n".to_string()
        };
        Some((Ok(bytes::Bytes::from(chunk)), i + 1))
    })
}

fn wrk_rate(base: &str, conns: usize, secs: u64) -> Result<f64, String> {
    // wrk sends what the load generator sends: a POST with a small JSON chat body.
    let script = std::env::temp_dir().join(format!("tb-wrk-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.body = '{\"model\":\"m\",\"stream\":true,\"max_tokens\":1,\
         \"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}]}'\n",
    )
    .map_err(|e| format!("cannot write the wrk script: {e}"))?;
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "-s",
            &script.to_string_lossy(),
            &format!("{base}/v1/chat/completions"),
        ])
        .output()
        .map_err(|e| format!("cannot run wrk ({e}); apt-get install wrk"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk output: {text}"))
}

fn scenario(users: usize, secs: u64, output_tokens: usize) -> Result<loadgen::Scenario, String> {
    let arrival = format!("{{ kind = \"closed_loop\", users = {users}, think_time_s = 0 }}");
    scenario_with(&arrival, secs, output_tokens)
}

fn scenario_with(
    arrival: &str,
    secs: u64,
    output_tokens: usize,
) -> Result<loadgen::Scenario, String> {
    let text = format!(
        r#"
version = 1
name = "loadgen-rate"
seed = 1
duration_s = {secs}
warmup_s = 1
request_timeout_s = 60
ignore_eos = false

[[engines]]
name = "e"
gpu = "rtx-5090"
model = "mistral-7b-instruct"

[[models]]
name = "m"
engine = "e"

[[groups]]
name = "g"
count = 1
model = "m"
lora = false
arrival = {arrival}
prompt_tokens = {{ kind = "fixed", value = 16 }}
output_tokens = {{ kind = "fixed", value = {output_tokens} }}

[cost]
server_gbp_per_month = 1
api_input_gbp_per_mtok = 1
api_output_gbp_per_mtok = 1
"#
    );
    loadgen::scenario::parse(&text, "loadgen-rate").map_err(|e| e.to_string())
}

struct Rate {
    rate: f64,
    ok: usize,
    failed: usize,
}

/// Requests/s of the load generator's plain HTTP/1.1 client on its own: `conns` tasks sending
/// wrk's body back to back on one thread, reading each response to its end. The gap between
/// this and [`loadgen_rate`] is what scenarios, prompts, SSE parsing and records cost.
fn bare_client_rate(base: &str, conns: usize, secs: u64) -> Result<f64, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{base}/v1/chat/completions");
    rt.block_on(async move {
        let client = loadgen::http1::Client::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::with_capacity(conns);
        for _ in 0..conns {
            let client = client.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let body = br#"{"model":"m","stream":true,"max_tokens":1,"messages":[{"role":"user","content":"hello there"}]}"#;
                let mut done = 0u64;
                while tokio::time::Instant::now() < end {
                    let req = loadgen::http1::Request {
                        url: &url,
                        body,
                        bearer: None,
                        request_id: done,
                    };
                    let mut resp = client.post(&req).await.map_err(|e| e.to_string())?;
                    while resp.next_bytes().await.map_err(|e| e.to_string())?.is_some() {}
                    done += 1;
                }
                Ok::<u64, String>(done)
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.map_err(|e| e.to_string())??;
        }
        Ok(total as f64 / secs as f64)
    })
}

/// Requests/s the load generator completes, counted over the measured window (after warm-up).
fn loadgen_rate(base: &str, conns: usize, secs: u64) -> Result<Rate, String> {
    let s = scenario(conns, secs + 1, 1)?;
    let driven = drive_on_one_thread(&s, &format!("{base}/v1"))?;
    let measured: Vec<_> = driven.records.iter().filter(|r| !r.warmup).collect();
    let ok = measured
        .iter()
        .filter(|r| r.outcome == reports::Outcome::Ok)
        .count();
    Ok(Rate {
        rate: ok as f64 / secs as f64,
        ok,
        failed: measured.len() - ok,
    })
}

struct Followed {
    ok: usize,
    failed: usize,
    itl_p50: f64,
    itl_p99: f64,
    ttft_p50: f64,
    lateness_p99: f64,
}

fn follow_streams(base: &str, n: usize, tokens: usize, gap_ms: u64) -> Result<Followed, String> {
    // Long enough for every user to finish about two streams.
    let stream_s = (tokens as u64 * gap_ms).div_ceil(1000);
    let s = scenario(n, 2 * stream_s + 1, tokens)?;
    let driven = drive_on_one_thread(&s, &format!("{base}/slow/v1"))?;
    let ok: Vec<_> = driven
        .records
        .iter()
        .filter(|r| r.outcome == reports::Outcome::Ok)
        .collect();
    // The slow server sends one chunk every gap; its text is several cl100k tokens, so the
    // per-token ITL is the gap divided among them. Following the stream means the chunk gaps.
    let mut itl: Vec<f64> = ok
        .iter()
        .flat_map(|r| r.chunk_gaps_ms.iter().copied())
        .collect();
    let mut ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_ms).collect();
    let mut late: Vec<f64> = driven
        .records
        .iter()
        .map(reports::RequestRecord::lateness_ms)
        .collect();
    Ok(Followed {
        ok: ok.len(),
        failed: driven.records.len() - ok.len(),
        itl_p50: percentile(&mut itl, 0.5),
        itl_p99: percentile(&mut itl, 0.99),
        ttft_p50: percentile(&mut ttft, 0.5),
        lateness_p99: percentile(&mut late, 0.99),
    })
}

struct Pacing {
    sent: usize,
    late_p50: f64,
    late_p99: f64,
    late_max: f64,
    queue_p99: f64,
}

/// Open-loop pacing at `rate` requests/s (one tenant, constant arrivals) against the fast
/// server: how late the scheduler released each request, and how long it then waited to be sent.
fn pacing(base: &str, rate: f64, secs: u64) -> Result<Pacing, String> {
    let arrival = format!("{{ kind = \"constant\", rate_per_s = {rate} }}");
    let s = scenario_with(&arrival, secs + 1, 1)?;
    let driven = drive_on_one_thread(&s, &format!("{base}/v1"))?;
    let measured: Vec<_> = driven.records.iter().filter(|r| !r.warmup).collect();
    let mut late: Vec<f64> = measured.iter().map(|r| r.lateness_ms()).collect();
    let mut queue: Vec<f64> = measured.iter().map(|r| r.client_queue_ms()).collect();
    Ok(Pacing {
        sent: measured.len(),
        late_p50: percentile(&mut late, 0.5),
        late_p99: percentile(&mut late, 0.99),
        late_max: percentile(&mut late, 1.0),
        queue_p99: percentile(&mut queue, 0.99),
    })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn drive_on_one_thread(s: &loadgen::Scenario, base_url: &str) -> Result<loadgen::Driven, String> {
    // One thread, as `wrk -t1`: a current-thread runtime (`WORKER_RUNTIME=1` for a
    // multi-thread runtime with one worker, which costs ~5 % more per request).
    let rt = if std::env::var_os("WORKER_RUNTIME").is_some() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .map_err(|e| e.to_string())?;
    let target = loadgen::Target {
        base_url: base_url.to_string(),
        keys: vec![None; s.tenants.len()],
    };
    let stop = CancellationToken::new();
    // The dispatcher runs as a task beside the request tasks, as one wrk thread does
    // everything (with a multi-thread runtime, `block_on` would put it on a second thread and
    // every request would cross threads twice).
    let s = s.clone();
    let driven = rt.block_on(async move {
        tokio::spawn(async move { loadgen::drive(&s, &target, None, &stop).await }).await
    });
    match driven {
        Ok(d) => d.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}
