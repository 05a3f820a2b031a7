//! Generated text as tokens of bytes, and the incremental detokenizer that turns them into
//! stream deltas without ever splitting a character.
//!
//! A byte-level BPE tokenizer (cl100k, Llama-3's, Qwen's) does not respect character
//! boundaries: an emoji of four UTF-8 bytes can be two or three tokens. vLLM decodes each new
//! token together with the ones before it and only sends text once it forms complete
//! characters (`vllm/v1/engine/detokenizer.py`, `detokenize_incrementally` in
//! `vllm/transformers_utils/detokenizer_utils.py`): a chunk may carry an empty delta while a
//! character is incomplete, and the next one carries the text of several tokens. At the end of
//! a sequence whatever is still incomplete is decoded lossily, as a U+FFFD. [`Detokenizer`] does
//! exactly this per choice.
//!
//! Where the tokens come from ([`TokenSource`]):
//! - by default, seeded words of [`wire::tokens::Vocabulary`] (each one cl100k token);
//! - when a request carries the simulator extension field `"mock_output_text": "..."`, that
//!   text tokenized with cl100k, repeated until `max_tokens` tokens. Tests use it to make an
//!   output contain given characters (`"数据🙂ok"`, whose emoji is two cl100k tokens). Real vLLM
//!   ignores unknown request fields, so the field is harmless when the same request goes to a
//!   real server.

use std::sync::{Arc, OnceLock};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tiktoken_rs::CoreBPE;
use wire::tokens::Vocabulary;

static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();

/// The cl100k table, built on first use (only requests with `mock_output_text` need it).
fn bpe() -> Option<&'static CoreBPE> {
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok()).as_ref()
}

/// The bytes of each cl100k token of `text`; `None` for empty text.
pub fn token_bytes(text: &str) -> Option<Vec<Vec<u8>>> {
    if text.is_empty() {
        return None;
    }
    let tokens: Vec<Vec<u8>> = match bpe() {
        Some(b) => b
            .encode_ordinary(text)
            .into_iter()
            .map(|t| b.decode_bytes(&[t]).unwrap_or_default())
            .collect(),
        // Without the table (it is compiled in, so not in practice) fall back to one token per
        // character: still a valid token stream, just not BPE's split.
        None => text.chars().map(|c| c.to_string().into_bytes()).collect(),
    };
    (!tokens.is_empty()).then_some(tokens)
}

/// What one choice generates, token by token.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// Seeded vocabulary words.
    Words(Box<StdRng>),
    /// A fixed token sequence, repeated; the index of the next token.
    Fixed(Arc<Vec<Vec<u8>>>, usize),
}

impl TokenSource {
    /// One source per choice: fixed text when given, else words seeded by `seed` and the choice.
    pub fn for_choices(seed: u64, choices: u32, fixed: Option<&Arc<Vec<Vec<u8>>>>) -> Vec<Self> {
        (0..u64::from(choices))
            .map(|c| match fixed {
                Some(f) => TokenSource::Fixed(Arc::clone(f), 0),
                None => TokenSource::Words(Box::new(StdRng::seed_from_u64(
                    seed ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ))),
            })
            .collect()
    }

    /// The bytes of the next token.
    pub fn next_token(&mut self) -> &[u8] {
        match self {
            TokenSource::Words(rng) => {
                let v = Vocabulary::get();
                v.word((rng.next_u64() % v.len().max(1) as u64) as usize)
                    .as_bytes()
            }
            TokenSource::Fixed(tokens, next) => {
                let i = *next % tokens.len().max(1);
                *next = next.wrapping_add(1);
                tokens.get(i).map_or(&[][..], Vec::as_slice)
            }
        }
    }
}

/// Incremental UTF-8 decoding of one choice's token bytes.
#[derive(Debug, Clone, Default)]
pub struct Detokenizer {
    /// Bytes of a character that is not complete yet (at most 3).
    pending: Vec<u8>,
}

impl Detokenizer {
    /// Adds a token's bytes; returns the text that became complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by construction.
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            rest = after;
                            break;
                        }
                        // Bytes that can never become a character: decoded lossily now.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Ends the sequence: whatever is still incomplete, decoded lossily.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emoji_split_across_tokens_is_held_back_until_complete() {
        let Some(tokens) = token_bytes("数据🙂ok") else {
            panic!("no tokens")
        };
        // cl100k splits the emoji (4 bytes) over more than one token.
        let emoji = "🙂".as_bytes();
        let split = tokens
            .iter()
            .filter(|t| t.iter().any(|b| emoji.contains(b)) && std::str::from_utf8(t).is_err())
            .count();
        assert!(split >= 2, "{tokens:?}");
        let mut d = Detokenizer::default();
        let deltas: Vec<String> = tokens.iter().map(|t| d.push(t)).collect();
        assert!(deltas.iter().any(String::is_empty), "{deltas:?}");
        assert_eq!(deltas.concat() + &d.finish(), "数据🙂ok");
        assert!(deltas.iter().all(|s| !s.contains('\u{FFFD}')));
    }

    #[test]
    fn a_sequence_that_ends_mid_character_ends_with_a_replacement() {
        let mut d = Detokenizer::default();
        assert_eq!(d.push(&[b'a', 0xF0, 0x9F]), "a");
        assert_eq!(d.finish(), "\u{FFFD}");
        // Bytes that can never start a character are replaced at once.
        assert_eq!(d.push(&[0xFF, b'b']), "\u{FFFD}b");
    }

    #[test]
    fn fixed_text_repeats_and_words_are_seeded() {
        let Some(t) = token_bytes("ab") else {
            panic!("no tokens")
        };
        let n = t.len();
        let mut src = TokenSource::for_choices(1, 1, Some(&Arc::new(t)));
        let mut d = Detokenizer::default();
        let text: String = (0..2 * n).map(|_| d.push(src[0].next_token())).collect();
        assert_eq!(text, "abab");
        let mut a = TokenSource::for_choices(7, 2, None);
        let mut b = TokenSource::for_choices(7, 2, None);
        let wa: Vec<Vec<u8>> = (0..5).map(|_| a[1].next_token().to_vec()).collect();
        let wb: Vec<Vec<u8>> = (0..5).map(|_| b[1].next_token().to_vec()).collect();
        assert_eq!(wa, wb);
        assert_ne!(
            wa,
            (0..5)
                .map(|_| a[0].next_token().to_vec())
                .collect::<Vec<_>>()
        );
    }
}
