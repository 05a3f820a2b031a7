//! What the router reads from a stream it forwards: usage, generated tokens, `[DONE]`, error
//! events — without holding on to the stream.
//!
//! Each SSE event is parsed by `wire::sse::SseParser`, which keeps the event's raw bytes, so the
//! router forwards exactly what the engine sent, one event at a time, as soon as the event is
//! complete. [`Tally::inspect`] looks at each event on the way through (a borrowed, partial
//! JSON parse of a few hundred bytes) and decides whether to forward it: the only event ever
//! withheld is the usage-only chunk (`choices: []` + `usage`) that the router itself asked for
//! with `stream_options.include_usage` on behalf of a client that did not.
//!
//! Usage handling follows vLLM and OpenAI: the last `usage` seen wins (servers that report
//! cumulative usage on every chunk are billed once, not summed). When no usage arrives (client
//! gone, stream cut), completion tokens are estimated as the number of chunks that carried
//! generated text — vLLM streams one token per chunk — and marked as estimated.

use tokio::time::Instant;
use wire::openai::{ChunkView, Usage};
use wire::sse::SseEvent;

/// What one stream has shown so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// The last usage reported.
    pub usage: Option<Usage>,
    /// Chunks that carried generated text on any channel.
    pub token_chunks: u64,
    pub saw_done: bool,
    /// The upstream reported an error inside the stream.
    pub error_event: bool,
    /// When the first generated token passed through.
    pub first_token: Option<Instant>,
    /// Events withheld from the client (the injected usage chunk).
    pub withheld: u64,
}

impl Tally {
    /// Looks at one event; returns whether to forward it. `strip_usage` is true when the
    /// router added `include_usage` on the client's behalf.
    pub fn inspect(&mut self, ev: &SseEvent, strip_usage: bool, now: Instant) -> bool {
        if !ev.has_data {
            return true; // comments and keep-alives pass through
        }
        if ev.is_done() {
            self.saw_done = true;
            return true;
        }
        let Ok(chunk) = serde_json::from_str::<ChunkView<'_>>(&ev.data) else {
            return true; // not ours to judge: forward unchanged
        };
        if chunk.is_error() {
            self.error_event = true;
        }
        if chunk.generates() {
            self.token_chunks += 1;
            self.first_token.get_or_insert(now);
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
            if strip_usage && chunk.is_usage_only() {
                self.withheld += 1;
                return false;
            }
        }
        true
    }

    /// `(prompt, completion, estimated)`, with `prompt_estimate` standing in when no usage came.
    pub fn billed(&self, prompt_estimate: u64) -> (u64, u64, bool) {
        match self.usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens, false),
            None => (prompt_estimate, self.token_chunks, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::sse::SseParser;

    const VLLM: &str = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" Hello\"}}]}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"finish_reason\":\"length\"}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"total_tokens\":9,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(stream: &str, strip: bool) -> (Tally, String) {
        let mut p = SseParser::new();
        let mut t = Tally::default();
        let mut out = String::new();
        for ev in p.push(stream.as_bytes()) {
            if t.inspect(&ev, strip, Instant::now()) {
                out.push_str(&String::from_utf8_lossy(&ev.raw));
            }
        }
        (t, out)
    }

    #[test]
    fn injected_usage_chunk_is_withheld_and_read() {
        let (t, out) = run(VLLM, true);
        assert_eq!(t.usage.map(|u| u.completion_tokens), Some(2));
        assert_eq!(t.token_chunks, 2);
        assert!(t.saw_done && !t.error_event);
        assert!(!out.contains("usage"));
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert!(out.contains(": keep-alive\n\n"));
    }

    #[test]
    fn requested_usage_chunk_is_kept_byte_for_byte() {
        let (t, out) = run(VLLM, false);
        assert_eq!(out, VLLM);
        assert_eq!(t.billed(99), (7, 2, false));
    }

    #[test]
    fn cumulative_usage_is_billed_once() {
        // Issue 3 case 5: usage 1, 2, 3 on each chunk then a final 3: completion is 3, not 6.
        let s = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":4,\"total_tokens\":5,\"completion_tokens\":1}}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":4,\"total_tokens\":6,\"completion_tokens\":2}}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"c\"}}],\"usage\":{\"prompt_tokens\":4,\"total_tokens\":7,\"completion_tokens\":3}}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"total_tokens\":7,\"completion_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        );
        let (t, out) = run(s, true);
        assert_eq!(t.billed(0), (4, 3, false));
        // Only the usage-only chunk is withheld; the per-chunk usage stays on its chunk.
        assert_eq!(t.withheld, 1);
        assert_eq!(out.matches("usage").count(), 3);
    }

    #[test]
    fn no_usage_means_estimate_and_error_events_are_flagged() {
        let s = concat!(
            "data: {\"choices\":[{\"index\":0,\"text\":\" a\"}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"text\":\" b\"}]}\n\n",
            "data: {\"error\":{\"message\":\"engine died\",\"type\":\"InternalServerError\",\"code\":500}}\n\n",
        );
        let (t, out) = run(s, true);
        assert_eq!(t.billed(11), (11, 2, true));
        assert!(t.error_event && !t.saw_done);
        assert_eq!(out, s, "error events pass through unchanged");
    }
}
