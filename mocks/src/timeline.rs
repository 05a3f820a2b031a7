//! Per-request timelines: when each request arrived and when each of its tokens was handed to
//! the HTTP body. A test matches the load generator's measurements against these (issue 2:
//! "the harness itself must not distort latency").

use std::time::Duration;

use tokio::time::Instant;

/// What the simulator did for one HTTP request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestTimeline {
    /// The `X-Request-Id` header when the client sent one, else a generated id.
    pub request_id: String,
    /// The `model` of the request (base model or adapter name).
    pub model: String,
    /// The adapter, when the request used one.
    pub lora: Option<String>,
    pub prompt_tokens: u32,
    /// When the request was handed to the engine.
    pub arrival: Instant,
    /// When each generated token's chunk was handed to the HTTP body (for `n > 1`, all
    /// choices' tokens in the order they were sent; for a non-streaming request, when the
    /// engine emitted them).
    pub token_times: Vec<Instant>,
    /// For each entry of `token_times`, the logical end of the engine step that produced the
    /// token: when the simulated GPU finished it. `token_times[i] - scheduled_times[i]` is how
    /// late the simulator itself was in emitting it (timer wake-up, lock waits, a busy runtime).
    pub scheduled_times: Vec<Instant>,
    /// All tokens were sent (false while running, or when the client went away).
    pub finished: bool,
}

impl RequestTimeline {
    /// Time to first token.
    pub fn ttft(&self) -> Option<Duration> {
        self.token_times
            .first()
            .map(|t| t.duration_since(self.arrival))
    }

    /// Emission lateness of each token: when its chunk was handed to the body minus when the
    /// engine's step logically ended.
    pub fn lateness(&self) -> Vec<Duration> {
        self.token_times
            .iter()
            .zip(&self.scheduled_times)
            .map(|(t, s)| t.saturating_duration_since(*s))
            .collect()
    }

    /// Gaps between consecutive tokens.
    pub fn itls(&self) -> Vec<Duration> {
        self.token_times
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttft_and_itls_from_token_times() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let tl = RequestTimeline {
            request_id: "r".into(),
            model: "m".into(),
            lora: None,
            prompt_tokens: 3,
            arrival: t0,
            token_times: vec![t0 + ms(50), t0 + ms(60), t0 + ms(75)],
            scheduled_times: vec![t0 + ms(49), t0 + ms(60), t0 + ms(70)],
            finished: true,
        };
        assert_eq!(tl.lateness(), vec![ms(1), ms(0), ms(5)]);
        assert_eq!(tl.ttft(), Some(ms(50)));
        assert_eq!(tl.itls(), vec![ms(10), ms(15)]);
    }
}
