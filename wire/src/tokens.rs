//! Token counting and the shared vocabulary.
//!
//! Every part of the embedded stack counts tokens with OpenAI's `cl100k_base` BPE (through
//! `tiktoken-rs`): the router to estimate a request's tokens before it is served, the simulator
//! to size prompts, the load generator to estimate output when a server sends no usage. Real
//! models use their own tokenizers; cl100k is a close stand-in for English text (within ~10 %
//! of Llama/Mistral/Qwen counts) and, above all, it is the same everywhere in one run.
//!
//! [`Vocabulary`] holds words that are exactly one cl100k token each, so that text built from
//! them has a known token count: the synthesiser makes prompts of exactly N tokens and the
//! simulator streams exactly one token per chunk.

use std::sync::OnceLock;

use rand::Rng;
use tiktoken_rs::CoreBPE;

static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();

fn bpe() -> Option<&'static CoreBPE> {
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok()).as_ref()
}

/// Loads the BPE table now rather than on the first request (it takes ~100 ms).
pub fn warm_up() {
    let _ = bpe();
}

/// Number of cl100k tokens in `text`.
pub fn count(text: &str) -> usize {
    match bpe() {
        Some(b) => b.encode_ordinary(text).len(),
        // The table is compiled into the binary, so this cannot fail in practice; if it ever
        // did, ~4 bytes per token is the usual English-text ratio.
        None => text.len().div_ceil(4),
    }
}

/// Tokens a chat template adds around each message (role markers and separators), and once for
/// the assistant's turn. Templates differ per model; 4 and 3 match Llama/Mistral-style templates
/// closely enough for admission estimates.
pub const PER_MESSAGE_OVERHEAD: usize = 4;
pub const PER_CHAT_OVERHEAD: usize = 3;

/// Prompt tokens of a chat request: each message's text plus the template overhead.
pub fn count_chat<'a>(texts: impl IntoIterator<Item = &'a str>) -> usize {
    texts
        .into_iter()
        .map(|t| count(t) + PER_MESSAGE_OVERHEAD)
        .sum::<usize>()
        + PER_CHAT_OVERHEAD
}

/// Candidate words; those that are not one cl100k token (with a leading space) are dropped
/// when the vocabulary is built. The non-ASCII entries exercise multi-byte streaming.
const CANDIDATES: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "time",
    "new",
    "people",
    "year",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "order",
    "price",
    "customer",
    "account",
    "support",
    "model",
    "data",
    "report",
    "product",
    "market",
    "value",
    "answer",
    "policy",
    "process",
    "review",
    "plan",
    "quality",
    "risk",
    "cost",
    "budget",
    "contract",
    "delivery",
    "invoice",
    "request",
    "refund",
    "ticket",
    "email",
    "password",
    "update",
    "release",
    "café",
    "résumé",
    "naïve",
    "über",
    "größe",
    "中",
    "日本",
    "東京",
    "数据",
    "é",
];

/// Words that are exactly one token each when preceded by a space.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    words: Vec<String>,
}

static VOCAB: OnceLock<Vocabulary> = OnceLock::new();

impl Vocabulary {
    /// The shared vocabulary (built once).
    pub fn get() -> &'static Vocabulary {
        VOCAB.get_or_init(|| {
            let words: Vec<String> = CANDIDATES
                .iter()
                .map(|w| format!(" {w}"))
                .filter(|w| count(w) == 1)
                .collect();
            Vocabulary { words }
        })
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Word `i` (modulo the vocabulary size), with its leading space.
    pub fn word(&self, i: usize) -> &str {
        match self.words.len() {
            0 => " the",
            n => &self.words[i % n],
        }
    }

    /// Words that contain non-ASCII characters (for multi-byte streaming tests).
    pub fn non_ascii(&self) -> impl Iterator<Item = &str> {
        self.words
            .iter()
            .map(String::as_str)
            .filter(|w| !w.is_ascii())
    }

    /// Text of exactly `n` tokens drawn from `rng`.
    pub fn text<R: Rng + ?Sized>(&self, n: usize, rng: &mut R) -> String {
        let mut s = String::with_capacity(n * 7);
        for _ in 0..n {
            s.push_str(self.word(rng.random_range(0..self.words.len().max(1))));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn vocabulary_words_are_single_tokens_and_text_has_exact_count() {
        let v = Vocabulary::get();
        assert!(v.len() > 150, "only {} single-token words", v.len());
        assert!(v.non_ascii().count() >= 2);
        let mut rng = StdRng::seed_from_u64(7);
        for n in [1, 17, 512, 3000] {
            assert_eq!(count(&v.text(n, &mut rng)), n);
        }
    }

    #[test]
    fn chat_count_adds_template_overhead() {
        assert_eq!(
            count_chat([" hello"]),
            1 + PER_MESSAGE_OVERHEAD + PER_CHAT_OVERHEAD
        );
    }
}
