//! TTFT on every channel and output-token accounting, replayed byte for byte with their timing.
//!
//! `docs/metrics.md`: TTFT is the first chunk carrying generated text on any channel (`content`,
//! `reasoning_content`/`reasoning`, tool-call `arguments`); TTFC waits for `content`. Reasoning
//! models (vLLM's `--reasoning-parser`) stream thinking first, so a client that waits for
//! `content` reports the whole reasoning phase as TTFT (AIPerf and vLLM's benchmark discussions
//! of reasoning models). Output tokens come from `usage`, else the tokenizer, marked estimated.

use reports::Outcome;

use crate::common::{DONE, Script, content, delta, piece, replay, tool_call, usage};

fn near(observed: Option<f64>, expected: f64, tolerance: f64) -> bool {
    observed.is_some_and(|v| (v - expected).abs() <= tolerance)
}

/// Reasoning on `channel` at 100 and 200 ms, content at 300 and 320 ms.
async fn reasoning_then_content(channel: &str) {
    let pieces = vec![
        piece(100, delta(channel, " Let")),
        piece(200, delta(channel, " me think")),
        piece(300, content(" The")),
        piece(320, content(" answer")),
        piece(330, usage(10, 5)),
        piece(330, DONE),
    ];
    let (rec, obs) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::Ok, "{channel}: {:?}", rec.error);
    assert!(
        near(rec.ttft_ms, 100.0, 5.0),
        "{channel}: ttft {:?}",
        rec.ttft_ms
    );
    assert!(
        near(rec.ttfc_ms, 300.0, 5.0),
        "{channel}: ttfc {:?}",
        rec.ttfc_ms
    );
    assert_eq!(obs.text, " Let me think The answer", "{channel}");
    // Every channel's chunks are token chunks: three gaps after the first.
    assert_eq!(
        rec.chunk_gaps_ms.len(),
        3,
        "{channel}: {:?}",
        rec.chunk_gaps_ms
    );
}

#[tokio::test]
async fn reasoning_content_starts_ttft_and_content_starts_ttfc() {
    reasoning_then_content("reasoning_content").await;
}

#[tokio::test]
async fn the_newer_reasoning_field_starts_ttft_too() {
    reasoning_then_content("reasoning").await;
}

#[tokio::test]
async fn a_tool_call_arguments_fragment_starts_ttft_and_its_name_alone_does_not() {
    let pieces = vec![
        // The first tool-call delta names the function with empty arguments: no token yet.
        piece(50, tool_call(Some("get_weather"), "")),
        piece(100, tool_call(None, "{\"city\":")),
        piece(150, tool_call(None, " \"Paris\"}")),
        piece(160, usage(10, 6)),
        piece(160, DONE),
    ];
    let (rec, obs) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::Ok, "{:?}", rec.error);
    assert!(near(rec.ttft_ms, 100.0, 5.0), "ttft {:?}", rec.ttft_ms);
    assert_eq!(rec.ttfc_ms, None, "no content arrived, so no TTFC");
    assert_eq!(obs.text, "{\"city\": \"Paris\"}");
    assert_eq!(rec.output_tokens, 6);
}

fn ten_words_at_20_ms() -> Vec<crate::common::Piece> {
    let words = wire::tokens::Vocabulary::get();
    (0..10u64)
        .map(|i| piece(50 + 20 * i, content(words.word(i as usize))))
        .collect()
}

#[tokio::test]
async fn without_usage_output_tokens_are_counted_by_the_tokenizer_and_marked_estimated() {
    let mut pieces = ten_words_at_20_ms();
    pieces.push(piece(240, DONE));
    let (rec, obs) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::Ok, "{:?}", rec.error);
    assert_eq!(wire::tokens::count(&obs.text), 10, "{:?}", obs.text);
    assert_eq!(rec.output_tokens, 10);
    assert!(rec.output_tokens_estimated);
    // The prompt stays as planned: nothing reported it.
    assert_eq!(rec.input_tokens, 10);
}

#[tokio::test]
async fn with_usage_output_tokens_are_the_servers_and_not_estimated() {
    let mut pieces = ten_words_at_20_ms();
    // The server's count wins even where it differs from the tokenizer's.
    pieces.push(piece(240, usage(33, 12)));
    pieces.push(piece(240, DONE));
    let (rec, _) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::Ok, "{:?}", rec.error);
    assert_eq!((rec.output_tokens, rec.input_tokens), (12, 33));
    assert!(!rec.output_tokens_estimated);
}
