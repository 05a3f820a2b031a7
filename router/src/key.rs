//! API keys: only their SHA-256 digests are kept.
//!
//! Raw keys are hashed the moment they are read (from the config file or an `Authorization`
//! header) and never stored, logged or exported; the hex digest is what the audit log and the
//! ledger carry, as LiteLLM stores `hashed_token`s. A [`KeyRecord`] is what the router knows
//! about a key (its tenant, its own limits, expiry, blocked flag); keys made through the admin
//! API are stored as records in the database, never with the raw key.

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ledger::Money;
use crate::scope::Scope;

/// SHA-256 of a raw API key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a raw key.
    pub fn of(raw: &str) -> Self {
        Self(Sha256::digest(raw.as_bytes()).into())
    }

    /// Parses a 64-character hex digest (as `/key/info?key=<hash>` may pass it).
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// A key given by a caller: its hex digest, or the raw key (hashed at once).
    pub fn of_given(s: &str) -> Self {
        Self::from_hex(s).unwrap_or_else(|| Self::of(s))
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        let mut s = String::with_capacity(64);
        for b in self.0 {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", &self.to_hex()[..12])
    }
}

/// A credential sent upstream (a deployment's `api_key`): kept, but never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a key was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// In the config file's `tenants:` section (read-only through the API).
    Config,
    /// Made with `POST /key/generate`.
    Api,
}

/// Everything the router keeps about a key (stored as JSON in `api_keys.record`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// SHA-256 hex of the key (LiteLLM's `token`).
    pub token: String,
    /// A redacted form for people (`sk-...abcd`), as LiteLLM's `key_name`.
    pub key_name: String,
    pub key_alias: Option<String>,
    pub tenant_id: String,
    /// Virtual models this key may use, within its tenant's; empty means the tenant's.
    pub models: Vec<String>,
    /// The key's own budget per period, on top of its tenant's.
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub max_parallel_requests: Option<u32>,
    /// Unix ms after which the key is refused.
    pub expires_ms: Option<u64>,
    pub blocked: bool,
    pub metadata: serde_json::Value,
    pub created_ms: u64,
    pub source: KeySource,
}

impl KeyRecord {
    /// The key's own limit scope, when it has any limit or budget.
    pub fn scope(&self) -> Option<Scope> {
        let s = Scope {
            id: format!("key:{}", self.token).into(),
            rpm: self.rpm_limit.and_then(NonZeroU64::new),
            tpm: self.tpm_limit.and_then(NonZeroU64::new),
            max_parallel: self.max_parallel_requests.and_then(NonZeroU32::new),
            budget: self.max_budget.map(Money::from_f64),
            budget_period: self
                .budget_duration
                .as_deref()
                .and_then(crate::config::parse_duration),
        };
        (s.has_limits() || s.budget.is_some()).then_some(s)
    }

    /// Whether the key is past its expiry at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }
}

/// `sk-...abcd`: enough to recognise a key, not enough to use it.
pub fn redact(raw: &str) -> String {
    let tail: String = raw
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("sk-...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_hex() {
        // sha256("abc") from FIPS 180-2, appendix B.1.
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trips_and_raw_keys_are_hashed() {
        let h = KeyHash::of("sk-1");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::of_given(&h.to_hex()), h);
        assert_eq!(KeyHash::of_given("sk-1"), h);
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert_eq!(redact("sk-abcdef"), "sk-...cdef");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let s = Secret::new("sk-upstream-123");
        assert!(!format!("{s:?}").contains("sk-upstream"));
        assert!(!format!("{:?}", KeyHash::of("x")).is_empty());
    }
}
