//! Criterion benchmarks of the per-request hot paths: parsing a streamed response (what the
//! load generator and the router do for every chunk) and counting tokens.
//!
//! `cargo bench -p tb-benches`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// A vLLM-shaped stream of `n` one-token chunks plus the usage chunk and `[DONE]`.
fn stream(n: usize) -> Vec<u8> {
    let mut s = String::from(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" w{i}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"total_tokens\":210,\"completion_tokens\":200}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn sse(c: &mut Criterion) {
    let bytes = stream(200);
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    // As TCP tends to deliver them: a few hundred bytes per read.
    g.bench_function("parse_200_chunks_in_256_byte_reads", |b| {
        b.iter(|| {
            let mut p = wire::sse::SseParser::new();
            let mut n = 0;
            for piece in bytes.chunks(256) {
                n += p.push(black_box(piece)).len();
            }
            n
        })
    });
    g.bench_function("parse_and_decode_200_chunks", |b| {
        b.iter(|| {
            let mut p = wire::sse::SseParser::new();
            let mut tokens = 0usize;
            for piece in bytes.chunks(256) {
                for ev in p.push(piece) {
                    if ev.has_data
                        && !ev.is_done()
                        && let Ok(c) = serde_json::from_str::<wire::openai::StreamChunk>(&ev.data)
                    {
                        tokens += c.generated_text().len();
                    }
                }
            }
            tokens
        })
    });
    g.finish();
}

fn tokens(c: &mut Criterion) {
    wire::tokens::warm_up();
    let text = " the customer asked for a refund on the invoice".repeat(50);
    let mut g = c.benchmark_group("tokens");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("count_500_tokens", |b| {
        b.iter(|| wire::tokens::count(black_box(&text)))
    });
    g.bench_function("count_one_token_chunk", |b| {
        b.iter(|| wire::tokens::count(black_box(" refund")))
    });
    g.finish();
}

criterion_group!(benches, sse, tokens);
criterion_main!(benches);
