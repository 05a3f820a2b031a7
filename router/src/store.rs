//! The database: the spend log (one row per served request) and the keys made through the
//! admin API.
//!
//! Two backends behind one type: SQLite (the embedded default, a file next to the config, or
//! in memory for configs built in code) and PostgreSQL (`general_settings.database_url`, for
//! several replicas). Both hold the same two tables:
//! - `spend_logs`: request id, time, tenant, key hash (never the key), key alias, model,
//!   deployment, adapter, prompt/completion tokens, cost in nano-units, status (`ok`,
//!   `client_aborted`, `truncated`, `stream_error`);
//! - `api_keys`: key hash → the key's settings as JSON ([`crate::key::KeyRecord`]).
//!
//! Durability: rows go through [`SpendLog`], a single writer task that commits whatever is
//! queued in one transaction (group commit: one fsync for many requests) and only then
//! acknowledges each row. The proxy waits for that acknowledgement before it releases the last
//! byte of a response (the `[DONE]` event of a stream, the whole body otherwise), so a router
//! killed with SIGKILL has every completed response's row on disk. SQLite runs in WAL mode with
//! `synchronous=FULL` (each commit is fsynced); PostgreSQL commits with its default
//! `synchronous_commit=on`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::ledger::Money;

/// Where the database is.
#[derive(Debug, Clone, PartialEq)]
pub enum Database {
    /// SQLite in process memory: rows last as long as the process (configs built in code).
    Memory,
    /// A SQLite file.
    Sqlite(PathBuf),
    /// `postgres://user:pass@host:port/db`.
    Postgres(String),
}

impl Database {
    /// How start-up logs describe it (no credentials).
    pub fn describe(&self) -> String {
        match self {
            Self::Memory => "sqlite (in memory)".into(),
            Self::Sqlite(p) => format!("sqlite {}", p.display()),
            Self::Postgres(url) => match url.rsplit_once('@') {
                Some((_, host)) => format!("postgresql {host}"),
                None => "postgresql".into(),
            },
        }
    }
}

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgresql: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the database task failed: {0}")]
    Task(String),
    #[error("cannot create the directory of {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One served request, as the spend log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRow {
    pub request_id: String,
    /// Unix milliseconds when the request arrived.
    pub ts_ms: u64,
    pub tenant_id: String,
    /// SHA-256 hex of the key.
    pub key_hash: String,
    pub key_alias: Option<String>,
    /// The virtual model asked for.
    pub model: String,
    /// `model_info.id` of the deployment that served.
    pub deployment: String,
    pub adapter: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: Money,
    /// `ok`, `client_aborted`, `truncated` or `stream_error`.
    pub status: String,
}

/// Which rows a query is about.
#[derive(Debug, Clone, Default)]
pub struct RowFilter {
    pub tenant_id: Option<String>,
    pub key_hash: Option<String>,
}

const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS spend_logs (
        request_id TEXT PRIMARY KEY, ts_ms BIGINT NOT NULL, tenant_id TEXT NOT NULL,
        key_hash TEXT NOT NULL, key_alias TEXT, model TEXT NOT NULL, deployment TEXT NOT NULL,
        adapter TEXT, prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
        cost_nanos BIGINT NOT NULL, status TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS spend_logs_tenant ON spend_logs (tenant_id, ts_ms)",
    "CREATE INDEX IF NOT EXISTS spend_logs_key ON spend_logs (key_hash, ts_ms)",
    "CREATE TABLE IF NOT EXISTS api_keys (
        key_hash TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, record TEXT NOT NULL)",
];

const COLUMNS: &str = "request_id, ts_ms, tenant_id, key_hash, key_alias, model, deployment, \
                       adapter, prompt_tokens, completion_tokens, cost_nanos, status";

#[derive(Clone)]
enum Backend {
    /// rusqlite is synchronous: every call runs on the blocking pool, one at a time.
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(Arc<tokio_postgres::Client>),
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            Backend::Sqlite(_) => "Store(sqlite)",
            Backend::Postgres(_) => "Store(postgresql)",
        })
    }
}

fn i64_of(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

fn u64_of(x: i64) -> u64 {
    u64::try_from(x).unwrap_or(0)
}

impl Store {
    /// Opens (creating when needed) the database and its tables.
    pub async fn open(db: &Database) -> Result<Store, StoreError> {
        match db {
            Database::Memory | Database::Sqlite(_) => {
                let db = db.clone();
                let conn = tokio::task::spawn_blocking(move || open_sqlite(&db))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))??;
                Ok(Store {
                    backend: Backend::Sqlite(Arc::new(Mutex::new(conn))),
                })
            }
            Database::Postgres(url) => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::error!(error = %e, "postgresql connection closed");
                    }
                });
                for stmt in SCHEMA {
                    client.batch_execute(stmt).await?;
                }
                Ok(Store {
                    backend: Backend::Postgres(Arc::new(client)),
                })
            }
        }
    }

    async fn sqlite<R: Send + 'static>(
        conn: &Arc<Mutex<rusqlite::Connection>>,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<R, rusqlite::Error> + Send + 'static,
    ) -> Result<R, StoreError> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            // The connection is only used inside this blocking closure, never across an await.
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .map_err(StoreError::from)
    }

    /// Inserts rows in one transaction; returns once they are committed.
    pub async fn insert(&self, rows: Vec<SpendRow>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    let tx = c.transaction()?;
                    {
                        let mut st = tx.prepare_cached(&format!(
                            "INSERT OR IGNORE INTO spend_logs ({COLUMNS}) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                        ))?;
                        for r in &rows {
                            st.execute(rusqlite::params![
                                r.request_id,
                                i64_of(r.ts_ms),
                                r.tenant_id,
                                r.key_hash,
                                r.key_alias,
                                r.model,
                                r.deployment,
                                r.adapter,
                                i64_of(r.prompt_tokens),
                                i64_of(r.completion_tokens),
                                r.cost.nanos(),
                                r.status,
                            ])?;
                        }
                    }
                    tx.commit()
                })
                .await
            }
            Backend::Postgres(client) => {
                // One multi-row INSERT is one atomic statement and one commit.
                let mut sql = format!("INSERT INTO spend_logs ({COLUMNS}) VALUES ");
                let mut owned: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> =
                    Vec::with_capacity(rows.len() * 12);
                for (i, r) in rows.into_iter().enumerate() {
                    if i > 0 {
                        sql.push(',');
                    }
                    let b = i * 12;
                    sql.push('(');
                    for j in 1..=12 {
                        if j > 1 {
                            sql.push(',');
                        }
                        sql.push_str(&format!("${}", b + j));
                    }
                    sql.push(')');
                    owned.push(Box::new(r.request_id));
                    owned.push(Box::new(i64_of(r.ts_ms)));
                    owned.push(Box::new(r.tenant_id));
                    owned.push(Box::new(r.key_hash));
                    owned.push(Box::new(r.key_alias));
                    owned.push(Box::new(r.model));
                    owned.push(Box::new(r.deployment));
                    owned.push(Box::new(r.adapter));
                    owned.push(Box::new(i64_of(r.prompt_tokens)));
                    owned.push(Box::new(i64_of(r.completion_tokens)));
                    owned.push(Box::new(r.cost.nanos()));
                    owned.push(Box::new(r.status));
                }
                sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = owned
                    .iter()
                    .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                client.execute(sql.as_str(), &params).await?;
                Ok(())
            }
        }
    }

    /// Sum of the cost of matching rows at or after `since_ms`.
    pub async fn spent_since(&self, f: &RowFilter, since_ms: u64) -> Result<Money, StoreError> {
        let (t, k, since) = (f.tenant_id.clone(), f.key_hash.clone(), i64_of(since_ms));
        let nanos = match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.query_row(
                        "SELECT COALESCE(SUM(cost_nanos), 0) FROM spend_logs \
                         WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR key_hash = ?2) \
                         AND ts_ms >= ?3",
                        rusqlite::params![t, k, since],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .await?
            }
            Backend::Postgres(client) => {
                let row = client
                    .query_one(
                        "SELECT COALESCE(SUM(cost_nanos), 0)::BIGINT FROM spend_logs \
                         WHERE ($1::TEXT IS NULL OR tenant_id = $1) \
                         AND ($2::TEXT IS NULL OR key_hash = $2) AND ts_ms >= $3",
                        &[&t, &k, &since],
                    )
                    .await?;
                row.try_get::<_, i64>(0)?
            }
        };
        Ok(Money::from_nanos(nanos))
    }

    /// The newest `limit` matching rows, newest first.
    pub async fn rows(&self, f: &RowFilter, limit: u32) -> Result<Vec<SpendRow>, StoreError> {
        let (t, k, limit) = (f.tenant_id.clone(), f.key_hash.clone(), i64::from(limit));
        match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    let mut st = c.prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM spend_logs \
                         WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR key_hash = ?2) \
                         ORDER BY ts_ms DESC, request_id LIMIT ?3"
                    ))?;
                    let rows = st.query_map(rusqlite::params![t, k, limit], |r| {
                        Ok(SpendRow {
                            request_id: r.get(0)?,
                            ts_ms: u64_of(r.get(1)?),
                            tenant_id: r.get(2)?,
                            key_hash: r.get(3)?,
                            key_alias: r.get(4)?,
                            model: r.get(5)?,
                            deployment: r.get(6)?,
                            adapter: r.get(7)?,
                            prompt_tokens: u64_of(r.get(8)?),
                            completion_tokens: u64_of(r.get(9)?),
                            cost: Money::from_nanos(r.get(10)?),
                            status: r.get(11)?,
                        })
                    })?;
                    rows.collect()
                })
                .await
            }
            Backend::Postgres(client) => {
                let rows = client
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM spend_logs \
                             WHERE ($1::TEXT IS NULL OR tenant_id = $1) \
                             AND ($2::TEXT IS NULL OR key_hash = $2) \
                             ORDER BY ts_ms DESC, request_id LIMIT $3"
                        ),
                        &[&t, &k, &limit],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(SpendRow {
                            request_id: r.try_get(0)?,
                            ts_ms: u64_of(r.try_get(1)?),
                            tenant_id: r.try_get(2)?,
                            key_hash: r.try_get(3)?,
                            key_alias: r.try_get(4)?,
                            model: r.try_get(5)?,
                            deployment: r.try_get(6)?,
                            adapter: r.try_get(7)?,
                            prompt_tokens: u64_of(r.try_get(8)?),
                            completion_tokens: u64_of(r.try_get(9)?),
                            cost: Money::from_nanos(r.try_get(10)?),
                            status: r.try_get(11)?,
                        })
                    })
                    .collect::<Result<_, tokio_postgres::Error>>()
                    .map_err(StoreError::from)
            }
        }
    }

    /// Inserts or replaces a key's record (JSON).
    pub async fn put_key(
        &self,
        key_hash: &str,
        tenant_id: &str,
        record: &str,
    ) -> Result<(), StoreError> {
        let (h, t, r) = (
            key_hash.to_string(),
            tenant_id.to_string(),
            record.to_string(),
        );
        match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.execute(
                        "INSERT INTO api_keys (key_hash, tenant_id, record) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (key_hash) DO UPDATE SET tenant_id = ?2, record = ?3",
                        rusqlite::params![h, t, r],
                    )
                    .map(|_| ())
                })
                .await
            }
            Backend::Postgres(client) => {
                client
                    .execute(
                        "INSERT INTO api_keys (key_hash, tenant_id, record) VALUES ($1, $2, $3) \
                         ON CONFLICT (key_hash) DO UPDATE SET tenant_id = $2, record = $3",
                        &[&h, &t, &r],
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// Deletes a key; whether it existed.
    pub async fn delete_key(&self, key_hash: &str) -> Result<bool, StoreError> {
        let h = key_hash.to_string();
        match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.execute("DELETE FROM api_keys WHERE key_hash = ?1", [h])
                        .map(|n| n > 0)
                })
                .await
            }
            Backend::Postgres(client) => Ok(client
                .execute("DELETE FROM api_keys WHERE key_hash = $1", &[&h])
                .await?
                > 0),
        }
    }

    /// The stored record of one key, or of all keys (`None`).
    pub async fn keys(&self, key_hash: Option<&str>) -> Result<Vec<String>, StoreError> {
        let h = key_hash.map(str::to_string);
        match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    let mut st = c.prepare_cached(
                        "SELECT record FROM api_keys WHERE (?1 IS NULL OR key_hash = ?1) \
                         ORDER BY key_hash",
                    )?;
                    let rows = st.query_map([h], |r| r.get::<_, String>(0))?;
                    rows.collect()
                })
                .await
            }
            Backend::Postgres(client) => {
                let rows = client
                    .query(
                        "SELECT record FROM api_keys WHERE ($1::TEXT IS NULL OR key_hash = $1) \
                         ORDER BY key_hash",
                        &[&h],
                    )
                    .await?;
                rows.iter()
                    .map(|r| r.try_get::<_, String>(0))
                    .collect::<Result<_, _>>()
                    .map_err(StoreError::from)
            }
        }
    }
}

fn open_sqlite(db: &Database) -> Result<rusqlite::Connection, StoreError> {
    let conn = match db {
        Database::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                    path: path.display().to_string(),
                    source,
                })?;
            }
            rusqlite::Connection::open(path)?
        }
        _ => rusqlite::Connection::open_in_memory()?,
    };
    // WAL lets readers (admin API) run beside the writer; FULL fsyncs every commit, which is
    // what makes an acknowledged row survive SIGKILL and power loss alike.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    for stmt in SCHEMA {
        conn.execute_batch(stmt)?;
    }
    Ok(conn)
}

struct Job {
    row: SpendRow,
    done: oneshot::Sender<bool>,
}

/// Rows queued before requests wait for the database.
const QUEUE: usize = 8_192;
/// Most rows committed in one transaction.
const BATCH: usize = 512;

/// The spend log's writer: group commit, acknowledged per row.
#[derive(Debug, Clone)]
pub struct SpendLog {
    tx: mpsc::Sender<Job>,
}

/// The writer task; await it after every [`SpendLog`] clone is dropped.
#[derive(Debug)]
pub struct SpendWriter {
    join: JoinHandle<()>,
}

impl SpendWriter {
    /// Waits until every queued row is committed.
    pub async fn finish(self) {
        let _ = self.join.await;
    }
}

impl SpendLog {
    /// Starts the writer.
    pub fn start(store: Store) -> (SpendLog, SpendWriter) {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let join = tokio::spawn(async move {
            let mut jobs = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut jobs, BATCH).await > 0 {
                let rows: Vec<SpendRow> = jobs.iter().map(|j| j.row.clone()).collect();
                let n = rows.len();
                let ok = match store.insert(rows).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, rows = n, "spend rows could not be written");
                        false
                    }
                };
                for j in jobs.drain(..) {
                    let _ = j.done.send(ok);
                }
            }
        });
        (SpendLog { tx }, SpendWriter { join })
    }

    /// Queues a row and waits until it is committed; false when it could not be written.
    pub async fn record(&self, row: SpendRow) -> bool {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job { row, done }).await.is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, tenant: &str, ts_ms: u64, cost: f64) -> SpendRow {
        SpendRow {
            request_id: id.into(),
            ts_ms,
            tenant_id: tenant.into(),
            key_hash: format!("hash-{tenant}"),
            key_alias: None,
            model: "chat-fast".into(),
            deployment: "fast-a".into(),
            adapter: Some("lora".into()),
            prompt_tokens: 3,
            completion_tokens: 4,
            cost: Money::from_f64(cost),
            status: "ok".into(),
        }
    }

    #[tokio::test]
    async fn sqlite_file_keeps_rows_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::Sqlite(dir.path().join("sub/spend.sqlite"));
        let store = Store::open(&db).await.expect("open");
        let (log, writer) = SpendLog::start(store);
        let acks = futures_util::future::join_all((0..20).map(|i| {
            let log = log.clone();
            async move {
                let t = if i % 2 == 0 { "a" } else { "b" };
                log.record(row(&format!("r{i}"), t, 1_000 + i, 0.5)).await
            }
        }))
        .await;
        assert!(acks.iter().all(|a| *a));
        drop(log);
        writer.finish().await;
        let again = Store::open(&db).await.expect("reopen");
        let a = RowFilter {
            tenant_id: Some("a".into()),
            key_hash: None,
        };
        assert_eq!(
            again.spent_since(&a, 0).await.ok(),
            Some(Money::from_f64(5.0))
        );
        assert_eq!(
            again.spent_since(&a, 1_010).await.ok(),
            Some(Money::from_f64(2.5))
        );
        let rows = again.rows(&a, 3).await.expect("rows");
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.tenant_id == "a"));
        assert_eq!(rows[0].ts_ms, 1_018);
    }

    #[tokio::test]
    async fn keys_are_put_replaced_and_deleted() {
        let store = Store::open(&Database::Memory).await.expect("open");
        assert!(store.put_key("h1", "a", "{\"v\":1}").await.is_ok());
        assert!(store.put_key("h1", "a", "{\"v\":2}").await.is_ok());
        assert_eq!(
            store.keys(Some("h1")).await.ok(),
            Some(vec!["{\"v\":2}".into()])
        );
        assert_eq!(store.delete_key("h1").await.ok(), Some(true));
        assert_eq!(store.delete_key("h1").await.ok(), Some(false));
        assert_eq!(store.keys(None).await.ok(), Some(vec![]));
    }
}
