//! `Db` (a pooled connection to one database) and `Table` (the record face of one table).

use crate::config::ConnectOptions;
use crate::error::{redact_url, DbcError, Result};
use crate::record::{check_def, check_token, Layout, ScanCursor, ScanPage};
use crate::sql::dialect::Dialect;
use crate::sql::table::SqlTable;
use crate::sql::SqlPool;
use crate::table::{Key, Record, TableDef};
use crate::value::{FieldType, Value};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The kind of database behind a [`Db`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Sqlite,
    Postgres,
    Mysql,
    Mongodb,
    Scylla,
}

/// What a backend can do, so that callers choose a path without matching on backend names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Multi-statement transactions with commit and rollback on the native face.
    pub transactions: bool,
    /// The native face speaks SQL.
    pub sql: bool,
    /// Atomic conditional writes (fencing and compare_and_put are always available; this says
    /// whether they are native conditional statements rather than emulated).
    pub conditional_writes: bool,
    /// `scan` returns records in key order (otherwise in an order of the backend's choosing).
    pub ordered_scan: bool,
    pub secondary_indexes: bool,
}

/// A connection pool's figures at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections, idle or in use.
    pub size: u32,
    pub idle: u32,
    /// The configured limit.
    pub max: u32,
}

pub(crate) enum Backend {
    Sql {
        pool: SqlPool,
        dialect: Dialect,
    },
    Mongo {
        db: mongodb::Database,
    },
    Scylla {
        session: Arc<scylla::client::session::Session>,
    },
}

pub(crate) struct DbInner {
    pub backend: Backend,
    pub kind: BackendKind,
    pub opts: ConnectOptions,
    pub id: OnceCell<uuid::Uuid>,
}

/// A pooled connection to one database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<DbInner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("kind", &self.inner.kind)
            .finish()
    }
}

/// Bounds `fut` by `limit`, naming `operation` in the error.
pub(crate) async fn timed<T>(
    limit: Duration,
    operation: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(DbcError::Timeout {
            operation: operation.to_string(),
            after_ms: limit.as_millis() as u64,
        }),
    }
}

pub(crate) fn kind_of_url(url: &str) -> Result<BackendKind> {
    let Some((scheme, _)) = url.split_once(':') else {
        return Err(DbcError::InvalidUrl {
            url: redact_url(url),
            reason: "no scheme".into(),
        });
    };
    let scheme = scheme.to_ascii_lowercase();
    let bad = |reason: &str| DbcError::InvalidUrl {
        url: redact_url(url),
        reason: reason.to_string(),
    };
    let kind =
        match scheme.as_str() {
            "sqlite" => BackendKind::Sqlite,
            "postgres" | "postgresql" => BackendKind::Postgres,
            "mysql" | "mariadb" => BackendKind::Mysql,
            "mongodb" | "mongodb+srv" => BackendKind::Mongodb,
            "scylla" | "cassandra" => BackendKind::Scylla,
            _ => return Err(bad(
                "unknown scheme (expected sqlite:, postgres://, mysql://, mongodb:// or scylla://)",
            )),
        };
    if kind != BackendKind::Sqlite {
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if u.host_str().is_none_or(str::is_empty) {
            return Err(bad("missing host"));
        }
    }
    Ok(kind)
}

impl Db {
    /// Connects with default pool limits and timeouts.
    pub async fn connect(url: &str) -> Result<Db> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    pub async fn connect_with(url: &str, opts: ConnectOptions) -> Result<Db> {
        let kind = kind_of_url(url)?;
        let backend = match kind {
            BackendKind::Sqlite | BackendKind::Postgres | BackendKind::Mysql => {
                let url = if kind == BackendKind::Mysql && url.starts_with("mariadb:") {
                    url.replacen("mariadb:", "mysql:", 1)
                } else {
                    url.to_string()
                };
                let pool = SqlPool::connect(kind, &url, &opts).await?;
                let mysql_collation = if kind == BackendKind::Mysql {
                    let rows = timed(
                        opts.call_timeout,
                        "reading the server version",
                        pool.fetch("SELECT VERSION()", &[], &[FieldType::Text]),
                    )
                    .await?;
                    let version = match rows.first().and_then(|r| r.first()) {
                        Some(Value::Text(v)) => v.clone(),
                        _ => String::new(),
                    };
                    if version.contains("MariaDB") {
                        "utf8mb4_nopad_bin".to_string()
                    } else {
                        "utf8mb4_0900_bin".to_string()
                    }
                } else {
                    String::new()
                };
                Backend::Sql {
                    pool,
                    dialect: Dialect {
                        kind,
                        mysql_collation,
                    },
                }
            }
            BackendKind::Mongodb => Backend::Mongo {
                db: crate::mongo::connect(url, &opts).await?,
            },
            BackendKind::Scylla => Backend::Scylla {
                session: crate::scylla::connect(url, &opts).await?.0,
            },
        };
        tracing::debug!(url = %redact_url(url), ?kind, "dbc connected");
        Ok(Db {
            inner: Arc::new(DbInner {
                backend,
                kind,
                opts,
                id: OnceCell::new(),
            }),
        })
    }

    pub fn kind(&self) -> BackendKind {
        self.inner.kind
    }

    /// Connections the pool holds right now, and how many of them are idle; `None` where the
    /// driver keeps its pool to itself (MongoDB, Scylla). For metrics.
    pub fn pool_stats(&self) -> Option<PoolStats> {
        let Backend::Sql { pool, .. } = &self.inner.backend else {
            return None;
        };
        let (size, idle) = match pool {
            SqlPool::Sqlite(p) => (p.size(), p.num_idle()),
            SqlPool::Postgres(p) => (p.size(), p.num_idle()),
            SqlPool::Mysql(p) => (p.size(), p.num_idle()),
        };
        Some(PoolStats {
            size,
            idle: idle as u32,
            max: self.inner.opts.max_connections,
        })
    }

    pub fn capabilities(&self) -> Capabilities {
        match self.inner.kind {
            BackendKind::Sqlite | BackendKind::Postgres | BackendKind::Mysql => Capabilities {
                transactions: true,
                sql: true,
                conditional_writes: true,
                ordered_scan: true,
                secondary_indexes: true,
            },
            BackendKind::Mongodb => Capabilities {
                transactions: false,
                sql: false,
                conditional_writes: true,
                ordered_scan: true,
                secondary_indexes: true,
            },
            BackendKind::Scylla => Capabilities {
                transactions: false,
                sql: false,
                conditional_writes: true,
                ordered_scan: false,
                secondary_indexes: false,
            },
        }
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.inner.opts.call_timeout
    }

    async fn ensure_meta(&self) -> Result<()> {
        match &self.inner.backend {
            Backend::Sql { pool, dialect } => {
                for ddl in dialect.meta_tables() {
                    pool.exec_ddl(&ddl).await?;
                }
                Ok(())
            }
            Backend::Mongo { .. } => Ok(()),
            Backend::Scylla { session } => crate::scylla::ensure_meta(session).await,
        }
    }

    async fn meta_get(&self, table: &str, name: &str) -> Result<Option<String>> {
        match &self.inner.backend {
            Backend::Sql { pool, dialect } => {
                let n = Value::Text(name.to_string());
                let rows = pool
                    .fetch(
                        &dialect.meta_get(table),
                        &[(&n, FieldType::Text)],
                        &[FieldType::Text],
                    )
                    .await?;
                Ok(
                    match rows.into_iter().next().and_then(|r| r.into_iter().next()) {
                        Some(Value::Text(s)) => Some(s),
                        _ => None,
                    },
                )
            }
            Backend::Mongo { db } => crate::mongo::meta_get(db, table, name).await,
            Backend::Scylla { session } => crate::scylla::meta_get(session, table, name).await,
        }
    }

    /// Inserts unless present; returns the value now stored.
    async fn meta_put_if_absent(&self, table: &str, name: &str, value: &str) -> Result<String> {
        match &self.inner.backend {
            Backend::Sql { pool, dialect } => {
                let n = Value::Text(name.to_string());
                let v = Value::Text(value.to_string());
                pool.exec(
                    &dialect.meta_insert(table),
                    &[(&n, FieldType::Text), (&v, FieldType::Text)],
                )
                .await?;
            }
            Backend::Mongo { db } => crate::mongo::meta_insert(db, table, name, value).await?,
            Backend::Scylla { session } => {
                crate::scylla::meta_insert(session, table, name, value).await?
            }
        }
        self.meta_get(table, name)
            .await?
            .ok_or_else(|| DbcError::NotFound {
                what: format!("metadata {name} just written"),
            })
    }

    /// The database's stable id, kept in its `_kw_meta` table (created on first use).
    pub async fn database_id(&self) -> Result<uuid::Uuid> {
        let this = self.clone();
        let id = self
            .inner
            .id
            .get_or_try_init(|| {
                timed(self.call_timeout(), "database_id", async move {
                    this.ensure_meta().await?;
                    let fresh = uuid::Uuid::new_v4().to_string();
                    let s = this
                        .meta_put_if_absent("_kw_meta", "database_id", &fresh)
                        .await?;
                    uuid::Uuid::parse_str(&s).map_err(|e| {
                        DbcError::backend(
                            this.kind(),
                            format!("stored database id is not a uuid: {e}"),
                        )
                    })
                })
            })
            .await?;
        Ok(*id)
    }

    /// Creates the table if missing (idempotent); refuses a definition that differs from the
    /// one the table was created with.
    pub async fn define_table(&self, def: TableDef) -> Result<Table> {
        check_def(&def)?;
        timed(self.call_timeout(), "define_table", async {
            self.ensure_meta().await?;
            let json = serde_json::to_string(&def)
                .map_err(|e| DbcError::invalid(format!("table definition: {e}")))?;
            let stored = self
                .meta_put_if_absent("_kw_tables", &def.name.to_ascii_lowercase(), &json)
                .await?;
            let stored: TableDef = serde_json::from_str(&stored).map_err(|e| {
                DbcError::backend(self.kind(), format!("stored definition unreadable: {e}"))
            })?;
            if stored != def {
                return Err(DbcError::invalid(format!(
                    "table {} already exists with a different definition: {stored:?}",
                    def.name
                )));
            }
            let layout = Layout::new(def);
            let imp = match &self.inner.backend {
                Backend::Sql { pool, dialect } => {
                    pool.exec_ddl(&dialect.create_table(&layout)).await?;
                    let t = SqlTable::new(pool.clone(), dialect, layout.clone());
                    let marker = format!("f64_real/{}", layout.def.name.to_ascii_lowercase());
                    if t.needs_f64_upgrade() && self.meta_get("_kw_meta", &marker).await?.is_none()
                    {
                        t.upgrade_f64().await?;
                        self.meta_put_if_absent("_kw_meta", &marker, "1").await?;
                    }
                    TableImpl::Sql(Box::new(t))
                }
                Backend::Mongo { db } => {
                    let name = layout.def.name.clone();
                    if let Err(e) = db.create_collection(&name).await {
                        // 48: NamespaceExists, the idempotent case.
                        let exists = e.to_string().contains("already exists")
                            || matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 48);
                        if !exists {
                            return Err(crate::mongo::err(e));
                        }
                    }
                    TableImpl::Mongo(crate::mongo::MongoTable {
                        coll: db.collection(&name),
                        layout: layout.clone(),
                    })
                }
                Backend::Scylla { session } => TableImpl::Scylla(Box::new(
                    crate::scylla::ScyllaTable::define(session.clone(), layout.clone()).await?,
                )),
            };
            Ok(Table {
                inner: Arc::new(TableInner {
                    layout,
                    imp,
                    timeout: self.call_timeout(),
                }),
            })
        })
        .await
    }

    /// Looks up a table defined earlier (by any process) without redefining it.
    pub async fn table(&self, name: &str) -> Result<Table> {
        let def = timed(self.call_timeout(), "table", async {
            self.ensure_meta().await?;
            self.meta_get("_kw_tables", &name.to_ascii_lowercase())
                .await
        })
        .await?
        .ok_or_else(|| DbcError::NotFound {
            what: format!("table {name}"),
        })?;
        let def: TableDef = serde_json::from_str(&def).map_err(|e| {
            DbcError::backend(self.kind(), format!("stored definition unreadable: {e}"))
        })?;
        if def.name != name {
            return Err(DbcError::NotFound {
                what: format!("table {name}"),
            });
        }
        self.define_table(def).await
    }

    pub async fn close(&self) {
        match &self.inner.backend {
            Backend::Sql { pool, .. } => pool.close().await,
            Backend::Mongo { .. } | Backend::Scylla { .. } => {}
        }
    }
}

pub(crate) enum TableImpl {
    Sql(Box<SqlTable>),
    Mongo(crate::mongo::MongoTable),
    Scylla(Box<crate::scylla::ScyllaTable>),
}

pub(crate) struct TableInner {
    layout: Layout,
    imp: TableImpl,
    timeout: Duration,
}

/// The record face of one table. Cheap to clone.
#[derive(Clone)]
pub struct Table {
    inner: Arc<TableInner>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("def", &self.inner.layout.def)
            .finish()
    }
}

macro_rules! call {
    ($self:expr, $op:literal, $t:ident => $body:expr) => {
        timed($self.inner.timeout, $op, async {
            match &$self.inner.imp {
                TableImpl::Sql($t) => $body.await,
                TableImpl::Mongo($t) => $body.await,
                TableImpl::Scylla($t) => $body.await,
            }
        })
        .await
    };
}

impl Table {
    pub fn def(&self) -> &TableDef {
        &self.inner.layout.def
    }

    pub async fn get(&self, key: &[Value]) -> Result<Option<Record>> {
        call!(self, "get", t => t.get(key))
    }

    /// One result per key, in order; on SQL backends a few hundred keys per statement.
    pub async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Record>>> {
        if let TableImpl::Sql(t) = &self.inner.imp {
            return t.get_many(keys, self.inner.timeout).await;
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }

    /// Upsert; leaves the stored fencing token as it is.
    pub async fn put(&self, rec: &Record) -> Result<()> {
        call!(self, "put", t => t.put(rec))
    }

    /// One result per record. On SQL backends the batch is one transaction of multi-row
    /// statements (a failing item fails alone; `Err` as a whole means nothing was written).
    pub async fn put_many(&self, recs: &[Record]) -> Result<Vec<Result<()>>> {
        if let TableImpl::Sql(t) = &self.inner.imp {
            return t.put_many(recs, self.inner.timeout).await;
        }
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            out.push(self.put(r).await);
        }
        Ok(out)
    }

    /// Writes only if `token` is at least the stored token, else `Err(DbcError::Fenced)`.
    pub async fn put_fenced(&self, rec: &Record, token: i64) -> Result<()> {
        check_token(token)?;
        call!(self, "put_fenced", t => t.put_fenced(rec, token))
    }

    /// One result per item; batched like [`Table::put_many`] where the backend allows.
    pub async fn put_fenced_many(&self, items: &[(Record, i64)]) -> Result<Vec<Result<()>>> {
        if let TableImpl::Sql(t) = &self.inner.imp {
            return t.put_fenced_many(items, self.inner.timeout).await;
        }
        let mut out = Vec::with_capacity(items.len());
        for (r, tok) in items {
            out.push(self.put_fenced(r, *tok).await);
        }
        Ok(out)
    }

    /// Removes a live record (its fencing token stays); true if there was one.
    pub async fn delete(&self, key: &[Value]) -> Result<bool> {
        call!(self, "delete", t => t.delete(key))
    }

    /// Deletes if `token` is at least the stored token, keeping a tombstone with the token
    /// so that a stale `put_fenced` is still refused. True if a live record was there.
    pub async fn delete_fenced(&self, key: &[Value], token: i64) -> Result<bool> {
        check_token(token)?;
        call!(self, "delete_fenced", t => t.delete_fenced(key, token))
    }

    /// One result per item; on SQL backends one transaction for the whole batch.
    pub async fn delete_fenced_many(&self, items: &[(Key, i64)]) -> Result<Vec<Result<bool>>> {
        if let TableImpl::Sql(t) = &self.inner.imp {
            return t.delete_fenced_many(items, self.inner.timeout).await;
        }
        let mut out = Vec::with_capacity(items.len());
        for (k, tok) in items {
            out.push(self.delete_fenced(k, *tok).await);
        }
        Ok(out)
    }

    /// Atomically replaces `expected` (None: must be absent) by `new` (None: delete).
    /// True if the swap happened.
    pub async fn compare_and_put(
        &self,
        key: &[Value],
        expected: Option<&Record>,
        new: Option<&Record>,
    ) -> Result<bool> {
        call!(self, "compare_and_put", t => t.compare_and_put(key, expected, new))
    }

    pub async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        call!(self, "scan", t => t.scan(cursor, limit))
    }

    pub async fn count(&self) -> Result<u64> {
        call!(self, "count", t => t.count())
    }
}
