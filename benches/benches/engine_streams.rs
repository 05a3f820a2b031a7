//! One simulated engine serving 2,000 concurrent streams in real time (issue 4, "Speed").
//!
//! Starts the simulator on 127.0.0.1:0 with room for 2,000 running sequences, opens 2,000
//! streaming `/v1/completions` requests over plain TCP (the cheapest client there is: write the
//! request, read bytes until the server closes), and reads the simulator's own timelines
//! afterwards. Emission lateness of a token = when its chunk was handed to the HTTP body minus
//! the logical end of the engine step that produced it; the engine is keeping up when the mean
//! stays under 1 ms.
//!
//! It runs twice. First with in-process streams (`SimHandle::submit_in_process`) on one
//! thread (a current-thread runtime): the engine loop, its token hand-off and 2,000 stream
//! tasks that each record when their token arrived, with no HTTP in between. This is the
//! engine loop's own cost. On a 2-worker runtime the same run is slower, not faster: each
//! stream's wake-up can cross to the other vCPU, and on this VM that costs more than the
//! stream's work (see `mocks/README.md` for the numbers). Then over HTTP on a 2-worker
//! runtime, which adds axum, SSE serialisation and loopback TCP for both the server and the
//! client sharing this machine's two cores.
//!
//! `cargo bench -p tb-benches --bench engine_streams` (env `STREAMS`, `MAX_TOKENS` to vary;
//! `TRANSPORT=in-process` or `TRANSPORT=http` to run one half; `WORKERS=n` for an n-worker
//! runtime, 0 for one thread).

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use mocks::EngineConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends one streaming request and reads the response to the end; returns whether it ended
/// with `[DONE]`.
async fn stream_one(addr: std::net::SocketAddr, body: &str) -> std::io::Result<bool> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        // Keep only the last bytes: enough to find `[DONE]` across a read boundary.
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
    Ok(tail.windows(6).any(|w| w == b"[DONE]"))
}

/// How a stream reaches the engine.
#[derive(Clone, Copy, PartialEq)]
enum Transport {
    /// Streaming `/v1/completions` over loopback TCP: the engine plus HTTP, SSE and the kernel.
    Http,
    /// [`mocks::SimHandle::submit_in_process`]: the engine loop and its token hand-off alone.
    InProcess,
}

fn main() {
    let streams = env_or("STREAMS", 2000);
    let max_tokens = env_or("MAX_TOKENS", 128);
    // `TRANSPORT=in-process` or `TRANSPORT=http` runs one of the two (for profiling).
    let only = std::env::var("TRANSPORT").unwrap_or_default();
    for (transport, name, default_workers) in [
        (Transport::InProcess, "in-process", 0),
        (Transport::Http, "http", 2),
    ] {
        if !only.is_empty() && only != name {
            continue;
        }
        let workers = env_or("WORKERS", default_workers);
        let rt = if workers == 0 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
        };
        match rt {
            Ok(rt) => rt.block_on(measure(transport, workers, streams, max_tokens)),
            Err(e) => eprintln!("runtime: {e}"),
        }
    }
}

async fn measure(transport: Transport, workers: usize, streams: usize, max_tokens: usize) {
    // An H200 (141 GB) holds the KV of 2,000 short streams of a 7B model many times over;
    // max_num_seqs lets all of them decode in every step.
    let cfg = EngineConfig {
        gpu: "h200".into(),
        model: "mistral-7b-instruct".into(),
        max_num_seqs: Some(2048),
        max_num_batched_tokens: Some(8192),
        max_model_len: Some(4096),
        ..Default::default()
    };
    let stop = CancellationToken::new();
    let sim = mocks::spawn(cfg, stop.clone()).await;
    let sim = match sim {
        Ok(s) => s,
        Err(e) => {
            eprintln!("simulator: {e}");
            return;
        }
    };
    let addr = sim.addr();
    let body = format!(
        r#"{{"model":"mistral-7b-instruct","prompt":"Tell me about the weather today.","max_tokens":{max_tokens},"stream":true}}"#
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for i in 0..streams {
        match transport {
            Transport::Http => {
                let body = body.clone();
                tasks.push(tokio::spawn(async move { stream_one(addr, &body).await }));
            }
            Transport::InProcess => {
                // The same prompt length the HTTP request's text tokenises to.
                let Ok(mut s) = sim.submit_in_process(&format!("bench-{i}"), 8, max_tokens as u32)
                else {
                    eprintln!("the engine refused an in-process request");
                    return;
                };
                tasks.push(tokio::spawn(async move {
                    while let Some(last) = s.next().await {
                        if last {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }));
            }
        }
    }
    let mut ok = 0usize;
    for t in tasks {
        if let Ok(Ok(true)) = t.await {
            ok += 1;
        }
    }
    let wall = started.elapsed();
    let timelines = sim.timelines();
    stop.cancel();
    let _ = sim.stopped().await;

    let mut late: Vec<Duration> = timelines.iter().flat_map(|t| t.lateness()).collect();
    // Per engine step: how late its first and its last token reached their streams. The first
    // is the hand-off's fixed cost, the spread is what each further stream adds.
    let mut steps: std::collections::HashMap<tokio::time::Instant, (Duration, Duration)> =
        std::collections::HashMap::new();
    for t in &timelines {
        for (s, l) in t.scheduled_times.iter().zip(t.lateness()) {
            let e = steps.entry(*s).or_insert((l, l));
            e.0 = e.0.min(l);
            e.1 = e.1.max(l);
        }
    }
    let mut firsts: Vec<Duration> = steps.values().map(|v| v.0).collect();
    let mut lasts: Vec<Duration> = steps.values().map(|v| v.1).collect();
    firsts.sort();
    lasts.sort();
    late.sort();
    let tokens = late.len();
    let first = timelines.iter().map(|t| t.arrival).min();
    let last = timelines
        .iter()
        .filter_map(|t| t.token_times.last().copied())
        .max();
    let span = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = late.iter().map(|d| us(*d)).sum::<f64>() / tokens.max(1) as f64;
    let pct = |p: f64| {
        late.get(((tokens as f64 - 1.0) * p).round().max(0.0) as usize)
            .map_or(0.0, |d| us(*d))
    };
    let name = match transport {
        Transport::Http => "over HTTP (client in this process)",
        Transport::InProcess => "engine loop alone (in-process streams)",
    };
    let threads = if workers == 0 {
        "one thread".to_owned()
    } else {
        format!("{workers} worker threads")
    };
    println!(
        "engine_streams {name}, {threads}: {streams} streams x {max_tokens} tokens, {ok} finished"
    );
    println!(
        "  wall {:.2} s, {tokens} tokens, {:.0} tokens/s",
        wall.as_secs_f64(),
        tokens as f64 / span.max(1e-9)
    );
    println!(
        "  emission lateness: mean {mean:.0} us, p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    let median = |v: &[Duration]| v.get(v.len() / 2).map_or(0.0, |d| us(*d));
    println!(
        "  per step ({}): first token after {:.0} us, last after {:.0} us (medians); last p90 {:.0} us",
        steps.len(),
        median(&firsts),
        median(&lasts),
        lasts.get(lasts.len() * 9 / 10).map_or(0.0, |d| us(*d))
    );
    println!(
        "  verdict: {}",
        if mean < 1000.0 && ok == streams {
            "keeps up (mean < 1 ms)"
        } else {
            "FALLS BEHIND"
        }
    );
}
