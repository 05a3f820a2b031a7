//! Tenants at run time and the key directory that resolves a bearer key to one.
//!
//! A [`Tenant`] is a validated [`TenantConfig`] plus its position in the tenant list (the
//! metrics use it as an index) and its limit [`Scope`]. The [`Directory`] maps SHA-256 key
//! digests to [`KeyEntry`]s: the config's keys at start-up, plus keys made, changed and deleted
//! through the admin API (kept in the database, see [`crate::admin`]). A key may carry limits
//! and a budget of its own, enforced together with its tenant's.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use http::{HeaderMap, header};

use crate::config::{RouterConfig, TenantConfig};
use crate::error::ApiError;
use crate::key::{KeyHash, KeyRecord, KeySource};
use crate::ledger::Money;
use crate::scope::Scope;

/// A tenant of the running router.
#[derive(Debug)]
pub struct Tenant {
    /// Position in the config's tenant list.
    pub index: usize,
    pub config: TenantConfig,
    /// The tenant's limits and budget, shared by all its keys.
    pub scope: Scope,
}

impl Tenant {
    pub fn new(index: usize, config: TenantConfig) -> Self {
        let scope = Scope {
            id: format!("tenant:{}", config.id).into(),
            rpm: config.rpm_limit,
            tpm: config.tpm_limit,
            max_parallel: config.max_parallel_requests,
            budget: config.max_budget.map(Money::from_f64),
            budget_period: config.budget_duration,
        };
        Self {
            index,
            config,
            scope,
        }
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }
}

/// A key the router accepts.
#[derive(Debug)]
pub struct KeyEntry {
    pub hash: KeyHash,
    pub record: KeyRecord,
    pub tenant: Arc<Tenant>,
    /// The key's own limits, when it has any.
    pub scope: Option<Scope>,
}

impl KeyEntry {
    fn new(hash: KeyHash, record: KeyRecord, tenant: Arc<Tenant>) -> Self {
        let scope = record.scope();
        Self {
            hash,
            record,
            tenant,
            scope,
        }
    }

    /// The scopes a request with this key is admitted against: tenant, then key.
    pub fn scopes(&self) -> Vec<Scope> {
        let mut v = Vec::with_capacity(2);
        v.push(self.tenant.scope.clone());
        if let Some(s) = &self.scope {
            v.push(s.clone());
        }
        v
    }

    pub fn may_use(&self, model: &str) -> bool {
        self.tenant.config.may_use(model)
            && (self.record.models.is_empty() || self.record.models.iter().any(|m| m == model))
    }
}

/// Who a request is from.
#[derive(Debug, Clone)]
pub enum Principal {
    Key(Arc<KeyEntry>),
    /// `general_settings.master_key`: every model, no limits, no budget, no adapter.
    Master,
}

impl Principal {
    pub fn tenant(&self) -> Option<&Arc<Tenant>> {
        match self {
            Self::Key(k) => Some(&k.tenant),
            Self::Master => None,
        }
    }

    pub fn key(&self) -> Option<&Arc<KeyEntry>> {
        match self {
            Self::Key(k) => Some(k),
            Self::Master => None,
        }
    }

    pub fn may_use(&self, model: &str) -> bool {
        match self {
            Self::Key(k) => k.may_use(model),
            Self::Master => true,
        }
    }

    pub fn adapter(&self, model: &str) -> Option<&str> {
        match self {
            Self::Key(k) => k.tenant.config.adapter(model),
            Self::Master => None,
        }
    }
}

/// What a key digest resolves to in the directory's memory.
#[derive(Debug, Clone)]
pub enum Lookup {
    Master,
    Key(Arc<KeyEntry>),
    Unknown,
}

/// Key digest → principal.
#[derive(Debug)]
pub struct Directory {
    tenants: Vec<Arc<Tenant>>,
    by_id: HashMap<String, Arc<Tenant>>,
    master: Option<KeyHash>,
    /// Read on every request, written only by the admin API: a std `RwLock` held for a map
    /// lookup or insert, never across an `.await`.
    keys: RwLock<HashMap<KeyHash, Arc<KeyEntry>>>,
}

impl Directory {
    pub fn new(cfg: &RouterConfig) -> Self {
        let tenants: Vec<Arc<Tenant>> = cfg
            .tenants
            .iter()
            .enumerate()
            .map(|(index, c)| Arc::new(Tenant::new(index, c.clone())))
            .collect();
        let mut keys = HashMap::new();
        for t in &tenants {
            for k in &t.config.keys {
                let record = KeyRecord {
                    token: k.to_hex(),
                    key_name: format!("config:{}", &k.to_hex()[..8]),
                    key_alias: None,
                    tenant_id: t.id().to_string(),
                    models: Vec::new(),
                    max_budget: None,
                    budget_duration: None,
                    rpm_limit: None,
                    tpm_limit: None,
                    max_parallel_requests: None,
                    expires_ms: None,
                    blocked: false,
                    metadata: serde_json::Value::Null,
                    created_ms: 0,
                    source: KeySource::Config,
                };
                keys.insert(*k, Arc::new(KeyEntry::new(*k, record, t.clone())));
            }
        }
        let by_id = tenants
            .iter()
            .map(|t| (t.id().to_string(), t.clone()))
            .collect();
        Self {
            tenants,
            by_id,
            master: cfg.master_key,
            keys: RwLock::new(keys),
        }
    }

    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.by_id.get(id)
    }

    /// What the directory holds for this digest now.
    pub fn lookup(&self, hash: &KeyHash) -> Lookup {
        if Some(*hash) == self.master {
            return Lookup::Master;
        }
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.get(hash)
            .map_or(Lookup::Unknown, |k| Lookup::Key(k.clone()))
    }

    /// Adds or replaces a key; `None` when its tenant does not exist.
    pub fn insert(&self, record: KeyRecord) -> Option<Arc<KeyEntry>> {
        let hash = KeyHash::from_hex(&record.token)?;
        let tenant = self.by_id.get(&record.tenant_id)?.clone();
        let entry = Arc::new(KeyEntry::new(hash, record, tenant));
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        keys.insert(hash, entry.clone());
        Some(entry)
    }

    /// Removes a key; whether it was there.
    pub fn remove(&self, hash: &KeyHash) -> bool {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        keys.remove(hash).is_some()
    }

    /// Keys of one tenant (or all), sorted by digest.
    pub fn keys_of(&self, tenant: Option<&str>) -> Vec<Arc<KeyEntry>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Arc<KeyEntry>> = keys
            .values()
            .filter(|k| tenant.is_none_or(|t| k.tenant.id() == t))
            .cloned()
            .collect();
        v.sort_by_key(|k| k.hash);
        v
    }

    /// Model names a set of tenants may use (for `/v1/models`).
    pub fn allowed(&self, who: &Principal, names: &[&str]) -> BTreeSet<String> {
        names
            .iter()
            .filter(|n| who.may_use(n))
            .map(|n| n.to_string())
            .collect()
    }
}

/// The digest of the bearer key of a request: 401 when the header is missing or malformed.
/// The raw key is hashed at once and not kept.
pub fn presented_key(h: &HeaderMap) -> Result<KeyHash, ApiError> {
    let raw = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or(ApiError::MissingKey)?;
    Ok(KeyHash::of(raw))
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

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer("bearer  sk-1 "), Some("sk-1"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("sk-1"), None);
    }
}
