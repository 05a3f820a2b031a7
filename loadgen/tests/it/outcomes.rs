//! Failure outcomes of a 200 stream, replayed byte for byte: a stall past the request timeout,
//! a connection dropped mid-stream, and an `event: error` block. `docs/metrics.md` defines them;
//! only `ok` requests enter latency distributions, so each test also checks that a failed
//! request leaves no latency behind.
//!
//! Public reports behind them: benchmark clients that wait forever on a stalled stream or count
//! it with the latency of its partial output, that accept a body cut by a dying server or proxy
//! as a success, and that ignore `event: error` blocks (OpenAI-compatible gateways such as
//! LiteLLM and Anthropic-style streams signal mid-stream failures that way).

use std::time::Duration;

use reports::{Aggregate, Outcome, RequestRecord};

use crate::common::{DONE, Script, content, piece, replay, replay_with, usage};

/// Asserts the record contributes to no latency distribution, directly and once aggregated.
fn no_latency(rec: &RequestRecord) {
    assert_eq!(
        (rec.ttft_ms, rec.ttfc_ms, rec.tpot_ms, rec.e2e_ms),
        (None, None, None, None),
        "{rec:?}"
    );
    assert!(rec.itl_ms.is_empty() && rec.chunk_gaps_ms.is_empty());
    let agg = Aggregate::from_records([rec]);
    for (name, d) in agg.distributions() {
        if name != "schedule_lateness_ms" && name != "client_queue_ms" {
            assert_eq!(d.count(), 0, "{name} holds a failed request's value");
        }
    }
    assert_eq!(agg.outcomes.total(), 1, "the failure is still counted");
}

#[tokio::test]
async fn a_stream_stalling_past_the_request_timeout_is_a_timeout() {
    let pieces = vec![
        piece(50, content(" one")),
        piece(80, content(" two")),
        // Nothing more until long after the 400 ms deadline.
        piece(3000, content(" three")),
        piece(3000, DONE),
    ];
    let started = tokio::time::Instant::now();
    let (rec, obs) = replay_with(Script::sse(pieces), |s| {
        s.timeout = Duration::from_millis(400);
    })
    .await;
    let waited = started.elapsed();
    assert_eq!(rec.outcome, Outcome::Timeout, "{:?}", rec.error);
    assert!(
        waited < Duration::from_millis(1500),
        "gave up after {waited:?}, not at the deadline"
    );
    assert!(
        obs.first_token.is_some(),
        "tokens did arrive before the stall"
    );
    no_latency(&rec);
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_is_truncated_not_a_success() {
    let pieces = vec![
        piece(50, content(" one")),
        piece(70, content(" two")),
        piece(90, content(" three")),
    ];
    let (rec, obs) = replay(Script::cut_after(pieces)).await;
    assert_eq!(rec.outcome, Outcome::Truncated, "{:?}", rec.error);
    assert!(
        rec.error
            .as_deref()
            .is_some_and(|e| e.contains("connection error")),
        "{:?}",
        rec.error
    );
    assert_eq!(obs.text, " one two three", "what arrived is kept");
    // Tokens were delivered: counted (estimated, no usage arrived), but no latency.
    assert_eq!(rec.output_tokens, 3);
    assert!(rec.output_tokens_estimated);
    no_latency(&rec);
}

#[tokio::test]
async fn a_connection_dropped_after_done_is_still_a_complete_response() {
    // The stream said all it had to; only the HTTP framing after it is missing.
    let pieces = vec![
        piece(50, content(" one")),
        piece(70, content(" two")),
        piece(80, usage(10, 2)),
        piece(80, DONE),
    ];
    let (rec, _) = replay(Script::cut_after(pieces)).await;
    assert_eq!(rec.outcome, Outcome::Ok, "{:?}", rec.error);
    assert!(
        rec.e2e_ms.is_some_and(|v| (v - 80.0).abs() < 5.0),
        "{:?}",
        rec.e2e_ms
    );
}

#[tokio::test]
async fn a_body_held_open_after_done_past_the_timeout_is_still_a_complete_response() {
    // `[DONE]` at 80 ms finishes the response; the server then keeps the body open (a
    // keep-alive comment long after the 400 ms deadline) before ending it.
    let pieces = vec![
        piece(50, content(" one")),
        piece(70, content(" two")),
        piece(80, DONE),
        piece(3000, ": still here\n\n"),
    ];
    let (rec, _) = replay_with(Script::sse(pieces), |s| {
        s.timeout = Duration::from_millis(400);
    })
    .await;
    assert_eq!(rec.outcome, Outcome::Ok, "{:?}", rec.error);
    assert!(
        rec.e2e_ms.is_some_and(|v| (v - 80.0).abs() < 5.0),
        "{:?}",
        rec.e2e_ms
    );
}

#[tokio::test]
async fn an_event_error_block_inside_a_200_stream_is_a_stream_error() {
    let pieces = vec![
        piece(50, content(" one")),
        piece(70, content(" two")),
        piece(
            90,
            "event: error\ndata: {\"error\":{\"message\":\"upstream overloaded\",\"type\":\"overloaded_error\"}}\n\n",
        ),
        piece(91, DONE),
    ];
    let (rec, _) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::StreamError, "{:?}", rec.error);
    assert_eq!(rec.status, 200);
    assert!(
        rec.error
            .as_deref()
            .is_some_and(|e| e.contains("upstream overloaded")),
        "{:?}",
        rec.error
    );
    no_latency(&rec);
}

#[tokio::test]
async fn an_event_error_block_with_plain_text_data_is_a_stream_error() {
    // Not every server sends JSON after `event: error`.
    let pieces = vec![
        piece(50, content(" one")),
        piece(60, "event: error\ndata: internal failure\n\n"),
        piece(61, DONE),
    ];
    let (rec, _) = replay(Script::sse(pieces)).await;
    assert_eq!(rec.outcome, Outcome::StreamError, "{:?}", rec.error);
    assert!(
        rec.error
            .as_deref()
            .is_some_and(|e| e.contains("internal failure")),
        "{:?}",
        rec.error
    );
    no_latency(&rec);
}
