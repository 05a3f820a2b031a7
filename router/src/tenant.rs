//! Tenants at run time and the key directory that resolves a bearer key to one.
//!
//! A [`Tenant`] is a validated [`TenantConfig`] plus its position in the tenant list, which the
//! in-memory limiter, ledger and metrics use as an index (no map lookup or string hashing per
//! request). The [`Directory`] maps SHA-256 key digests to principals.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, header};

use crate::config::{RouterConfig, TenantConfig};
use crate::error::ApiError;
use crate::key::KeyHash;

/// A tenant of the running router.
#[derive(Debug)]
pub struct Tenant {
    /// Position in the config's tenant list.
    pub index: usize,
    pub config: TenantConfig,
}

impl Tenant {
    pub fn id(&self) -> &str {
        &self.config.id
    }
}

/// Who a request is from.
#[derive(Debug, Clone)]
pub enum Principal {
    Tenant(Arc<Tenant>),
    /// `general_settings.master_key`: every model, no limits, no budget, no adapter.
    Master,
}

impl Principal {
    pub fn tenant(&self) -> Option<&Arc<Tenant>> {
        match self {
            Self::Tenant(t) => Some(t),
            Self::Master => None,
        }
    }

    pub fn may_use(&self, model: &str) -> bool {
        match self {
            Self::Tenant(t) => t.config.may_use(model),
            Self::Master => true,
        }
    }

    pub fn adapter(&self, model: &str) -> Option<&str> {
        match self {
            Self::Tenant(t) => t.config.adapter(model),
            Self::Master => None,
        }
    }
}

/// Key digest → principal.
#[derive(Debug)]
pub struct Directory {
    tenants: Vec<Arc<Tenant>>,
    by_key: HashMap<KeyHash, Principal>,
}

impl Directory {
    pub fn new(cfg: &RouterConfig) -> Self {
        let tenants: Vec<Arc<Tenant>> = cfg
            .tenants
            .iter()
            .enumerate()
            .map(|(index, c)| {
                Arc::new(Tenant {
                    index,
                    config: c.clone(),
                })
            })
            .collect();
        let mut by_key = HashMap::new();
        for t in &tenants {
            for k in &t.config.keys {
                by_key.insert(*k, Principal::Tenant(t.clone()));
            }
        }
        if let Some(m) = cfg.master_key {
            by_key.insert(m, Principal::Master);
        }
        Self { tenants, by_key }
    }

    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    /// The principal holding the key with this digest.
    pub fn lookup(&self, hash: &KeyHash) -> Option<&Principal> {
        self.by_key.get(hash)
    }

    /// The caller of a request, from its `Authorization: Bearer` header: 401 when the header
    /// is missing or the key unknown. The raw key is hashed at once and not kept.
    pub fn authenticate(&self, h: &HeaderMap) -> Result<(KeyHash, &Principal), ApiError> {
        let raw = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or(ApiError::MissingKey)?;
        let hash = KeyHash::of(raw);
        let principal = self.lookup(&hash).ok_or(ApiError::InvalidKey)?;
        Ok((hash, principal))
    }
}

/// The bearer token of an `Authorization` header value (`Bearer sk-...`).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tenant with no limits, adjusted by `f`.
    pub(crate) fn tenant_with(f: impl FnOnce(&mut TenantConfig)) -> Arc<Tenant> {
        let mut config = TenantConfig {
            id: "t".into(),
            keys: vec![KeyHash::of("sk-t")],
            models: None,
            max_budget: None,
            budget_duration: None,
            rpm_limit: None,
            tpm_limit: None,
            max_parallel_requests: None,
            lora: Default::default(),
        };
        f(&mut config);
        Arc::new(Tenant { index: 0, config })
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer("bearer  sk-1 "), Some("sk-1"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("sk-1"), None);
    }
}
