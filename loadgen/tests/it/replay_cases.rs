//! The six "cases from public reports" of issue 5, each replayed byte for byte with its timing
//! by the fake upstream in `common`. Timing tolerances are a few milliseconds: the bytes cross a
//! real loopback socket.
//!
//! Public reports behind them: benchmark clients that time TTFT from a role-only first chunk
//! (vLLM's `benchmark_serving` and GuideLLM both had to skip empty deltas), that count a
//! multi-token chunk as one token (GuideLLM and AIPerf discussions of inter-chunk vs per-token
//! latency), that choke on SSE comments and named events (OpenAI-compatible proxies send
//! `: keep-alive` and `event: ping`), that report error events inside a 200 stream as successes,
//! that accept a stream cut before `[DONE]`, and that decode each network read on its own and
//! print U+FFFD for characters split across reads.

use reports::Outcome;

use crate::common::{DONE, Script, content, piece, replay, usage};

fn near(observed: Option<f64>, expected: f64, tolerance: f64) -> bool {
    observed.is_some_and(|v| (v - expected).abs() <= tolerance)
}

fn role_chunk() -> String {
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n".into()
}

#[tokio::test]
async fn role_only_and_null_content_chunks_do_not_start_ttft() {
    let words = wire::tokens::Vocabulary::get();
    let mut pieces = vec![
        piece(50, role_chunk()),
        piece(
            60,
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":null}}]}\n\n",
        ),
        piece(400, content(words.word(0))),
    ];
    for i in 1..=9u64 {
        pieces.push(piece(400 + 20 * i, content(words.word(i as usize))));
    }
    pieces.push(piece(590, usage(10, 10)));
    pieces.push(piece(590, DONE));
    let (rec, _) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::Ok, "{:?}", rec.error);
    assert!(near(rec.ttft_ms, 400.0, 5.0), "ttft {:?}", rec.ttft_ms);
    assert_eq!(rec.itl_ms.len(), 9, "{:?}", rec.itl_ms);
    assert!(
        rec.itl_ms.iter().all(|v| (v - 20.0).abs() < 10.0),
        "{:?}",
        rec.itl_ms
    );
    let mean = rec.itl_ms.iter().sum::<f64>() / 9.0;
    assert!((mean - 20.0).abs() < 1.0, "mean ITL {mean}");
}

#[tokio::test]
async fn a_stream_without_content_has_no_ttft_and_fails() {
    let pieces = vec![
        piece(50, role_chunk()),
        piece(60, usage(10, 0)),
        piece(61, DONE),
    ];
    let (rec, _) = replay(Script::sse(pieces)).await;
    assert_ne!(rec.outcome, Outcome::Ok);
    assert_eq!(rec.ttft_ms, None, "no TTFT, not 0");
    assert_eq!(rec.e2e_ms, None);
}

#[tokio::test]
async fn four_token_chunks_split_the_gap_per_token_and_report_chunks_apart() {
    let words = wire::tokens::Vocabulary::get();
    let mut pieces = Vec::new();
    for c in 0..25usize {
        let text: String = (0..4).map(|k| words.word(c * 4 + k)).collect();
        assert_eq!(wire::tokens::count(&text), 4, "{text:?}");
        pieces.push(piece(200 + 40 * c as u64, content(&text)));
    }
    pieces.push(piece(1160, usage(10, 100)));
    pieces.push(piece(1160, DONE));
    let (rec, _) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::Ok, "{:?}", rec.error);
    assert_eq!(rec.output_tokens, 100);
    assert!(!rec.output_tokens_estimated);
    assert!(near(rec.ttft_ms, 200.0, 5.0), "ttft {:?}", rec.ttft_ms);
    // (1160 − 200) / 99 ≈ 9.7 ms.
    assert!(
        near(rec.tpot_ms, 960.0 / 99.0, 0.3),
        "tpot {:?}",
        rec.tpot_ms
    );
    assert_eq!(rec.chunk_gaps_ms.len(), 24);
    // Each gap is 40 ms give or take the loopback's scheduling; their mean is exact.
    assert!(
        rec.chunk_gaps_ms.iter().all(|g| (g - 40.0).abs() < 15.0),
        "{:?}",
        rec.chunk_gaps_ms
    );
    let mean_gap = rec.chunk_gaps_ms.iter().sum::<f64>() / 24.0;
    assert!((mean_gap - 40.0).abs() < 1.0, "mean chunk gap {mean_gap}");
    assert_eq!(rec.itl_ms.len(), 96);
    let mean = rec.itl_ms.iter().sum::<f64>() / rec.itl_ms.len() as f64;
    assert!((mean - 10.0).abs() < 1.0, "mean ITL {mean}");
}

#[tokio::test]
async fn ids_comments_retries_and_ping_events_are_not_chunks() {
    let pieces = vec![
        piece(100, content(" Hello")),
        piece(110, "id: 17\n\n"),
        piece(120, ": keep-alive\n\n"),
        piece(130, "retry: 3000\n\n"),
        piece(140, "event: ping\n\n"),
        piece(150, "event: ping\ndata: {\"type\":\"ping\"}\n\n"),
        piece(200, content(" world")),
        piece(201, DONE),
    ];
    let (rec, obs) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::Ok, "{:?}", rec.error);
    assert_eq!(obs.text, " Hello world");
    assert!(near(rec.ttft_ms, 100.0, 5.0), "ttft {:?}", rec.ttft_ms);
    assert_eq!(rec.chunk_gaps_ms.len(), 1, "exactly two chunks");
    assert!(near(rec.chunk_gaps_ms.first().copied(), 100.0, 5.0));
    assert!(near(rec.itl_ms.first().copied(), 100.0, 5.0));
}

#[tokio::test]
async fn an_error_event_inside_a_200_stream_is_a_stream_error() {
    let pieces = vec![
        piece(50, content(" one")),
        piece(70, content(" two")),
        piece(
            90,
            "data: {\"error\":{\"message\":\"engine died\",\"type\":\"internal_error\",\"code\":500}}\n\n",
        ),
        piece(91, DONE),
    ];
    let (rec, _) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::StreamError);
    assert!(
        rec.error
            .as_deref()
            .is_some_and(|e| e.contains("engine died"))
    );
    assert_eq!(rec.ttft_ms, None, "failures enter no latency distribution");
}

#[tokio::test]
async fn vllms_older_object_error_chunk_is_a_stream_error_too() {
    let pieces = vec![
        piece(50, content(" one")),
        piece(
            70,
            "data: {\"object\":\"error\",\"message\":\"engine died\",\"type\":\"BadRequestError\",\"code\":400}\n\n",
        ),
        piece(71, DONE),
    ];
    let (rec, _) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::StreamError, "{:?}", rec.error);
    assert_eq!(rec.ttft_ms, None);
}

#[tokio::test]
async fn a_plain_json_200_is_a_stream_error_not_a_truncated_stream() {
    let pieces = vec![piece(
        50,
        "{\"id\":\"c\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"hi\"}}]}",
    )];
    let (rec, _) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::StreamError, "{:?}", rec.error);
    assert!(
        rec.error
            .as_deref()
            .is_some_and(|e| e.contains("no server-sent events")),
        "{:?}",
        rec.error
    );
}

#[tokio::test]
async fn a_clean_close_without_done_is_truncated() {
    let pieces = vec![
        piece(50, content(" one")),
        piece(70, content(" two")),
        piece(90, content(" three")),
    ];
    let (rec, _) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::Truncated, "{:?}", rec.error);
    assert_eq!(rec.e2e_ms, None);
    assert!(rec.itl_ms.is_empty());
}

#[tokio::test]
async fn multibyte_characters_split_across_reads_arrive_intact() {
    // "😀" is 4 bytes (F0 9F 98 80), "漢" is 3 (E6 BC A2): split both mid-character.
    let event = content(" 😀漢字");
    let bytes = event.as_bytes();
    let emoji = event
        .find('😀')
        .unwrap_or_else(|| panic!("no emoji in {event}"));
    let cjk = event
        .find('漢')
        .unwrap_or_else(|| panic!("no CJK in {event}"));
    let pieces = vec![
        piece(20, bytes[..emoji + 2].to_vec()),
        piece(40, bytes[emoji + 2..cjk + 1].to_vec()),
        piece(60, bytes[cjk + 1..].to_vec()),
        piece(80, DONE),
    ];
    let (rec, obs) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::Ok, "{:?}", rec.error);
    assert_eq!(obs.text, " 😀漢字");
    assert!(!obs.text.contains('\u{FFFD}'));
    // The token arrived when its last byte did.
    assert!(near(rec.ttft_ms, 60.0, 5.0), "ttft {:?}", rec.ttft_ms);
}

#[tokio::test]
async fn budget_and_rate_limit_refusals_are_classified_by_type() {
    let budget = r#"{"error":{"message":"Budget has been exceeded","type":"budget_exceeded","param":null,"code":"429"}}"#;
    let limited =
        r#"{"error":{"message":"rpm limit","type":"rate_limit_error","param":null,"code":"429"}}"#;
    for (status, body, want) in [
        (400, budget, Outcome::BudgetExceeded),
        (429, budget, Outcome::BudgetExceeded),
        (429, limited, Outcome::RateLimited),
    ] {
        let script = Script {
            status,
            pieces: vec![piece(1, body)],
            cut: false,
        };
        let (rec, _) = replay(script).await;
        assert_eq!((rec.outcome, rec.status), (want, status), "{body}");
    }
}
