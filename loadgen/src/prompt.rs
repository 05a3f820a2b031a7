//! Synthetic prompts of an exact token count.
//!
//! A tenant's system prompt is fixed for the run (seeded by its id), so every request of a
//! tenant shares that prefix, as real chatbots do and as prefix caching exploits. The user
//! message fills the rest of the requested prompt length. Words come from
//! [`wire::tokens::Vocabulary`], one token each, so the server counts exactly what was asked for.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::Value;
use wire::tokens::{PER_CHAT_OVERHEAD, PER_MESSAGE_OVERHEAD, Vocabulary};

use crate::schedule::tenant_rng;

/// The fixed system prompt of one tenant.
pub fn system_prompt(seed: u64, tenant: &str, tokens: u32) -> String {
    let mut rng = tenant_rng(seed, tenant, "system-prompt");
    Vocabulary::get().text(tokens as usize, &mut rng)
}

/// Tokens left for the user message once the system prompt and template are counted.
pub fn user_tokens(prompt_tokens: u64, system_tokens: u32) -> u64 {
    let fixed =
        2 * PER_MESSAGE_OVERHEAD as u64 + PER_CHAT_OVERHEAD as u64 + u64::from(system_tokens);
    prompt_tokens.saturating_sub(fixed).max(1)
}

/// The JSON body of one streaming chat request.
pub struct ChatBody<'a> {
    pub model: &'a str,
    pub system: &'a str,
    pub system_tokens: u32,
    pub prompt_tokens: u64,
    pub max_tokens: u64,
    pub text_seed: u64,
    pub ignore_eos: bool,
}

/// The wire shape of a [`ChatBody`], serialised straight to bytes: building a
/// `serde_json::Value` first copied the system prompt and built maps for every request, which
/// showed in the load generator's profile at tens of thousands of requests a second.
#[derive(Serialize)]
struct WireBody<'a> {
    model: &'a str,
    messages: [WireMessage<'a>; 2],
    max_tokens: u64,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

impl ChatBody<'_> {
    /// The request body as JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.text_seed);
        let user = Vocabulary::get().text(
            user_tokens(self.prompt_tokens, self.system_tokens) as usize,
            &mut rng,
        );
        let body = WireBody {
            model: self.model,
            messages: [
                WireMessage {
                    role: "system",
                    content: self.system,
                },
                WireMessage {
                    role: "user",
                    content: &user,
                },
            ],
            max_tokens: self.max_tokens,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            ignore_eos: self.ignore_eos,
        };
        let mut out = Vec::with_capacity(self.system.len() + user.len() + 192);
        // Strings and numbers always serialise; the error arm cannot happen.
        if serde_json::to_writer(&mut out, &body).is_err() {
            out.clear();
        }
        out
    }

    /// The request body as a JSON value (for tests and inspection).
    pub fn to_json(&self) -> Value {
        serde_json::from_slice(&self.to_bytes()).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_has_exactly_the_requested_tokens() {
        let system = system_prompt(1, "t-01", 50);
        for total in [70_u64, 400, 2000] {
            let body = ChatBody {
                model: "m",
                system: &system,
                system_tokens: 50,
                prompt_tokens: total,
                max_tokens: 10,
                text_seed: total,
                ignore_eos: true,
            }
            .to_json();
            let texts: Vec<String> = body["messages"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m["content"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let counted = wire::tokens::count_chat(texts.iter().map(String::as_str));
            assert_eq!(counted as u64, total);
        }
        assert_eq!(system, system_prompt(1, "t-01", 50));
        assert_ne!(system, system_prompt(1, "t-02", 50));
    }
}
