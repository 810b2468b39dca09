//! The SQL backends (SQLite, PostgreSQL, MySQL/MariaDB) over sqlx: pools, statement
//! execution with the value codecs, the native face and the record face.

pub(crate) mod codec;
pub(crate) mod copy;
pub(crate) mod dialect;
pub(crate) mod native;
pub(crate) mod table;

use crate::config::ConnectOptions;
use crate::error::{from_sqlx, redact_url, DbcError, Result};
use crate::value::{FieldType, Value};
use crate::BackendKind;
use futures::TryStreamExt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Clone, Debug)]
pub(crate) enum SqlPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    Mysql(sqlx::MySqlPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool and `$codec` to its codec module.
macro_rules! with_pool {
    ($self:expr, $pool:ident, $codec:ident => $body:expr) => {
        match $self {
            SqlPool::Sqlite($pool) => {
                use $crate::sql::codec::sqlite as $codec;
                $body
            }
            SqlPool::Postgres($pool) => {
                use $crate::sql::codec::postgres as $codec;
                $body
            }
            SqlPool::Mysql($pool) => {
                use $crate::sql::codec::mysql as $codec;
                $body
            }
        }
    };
}
pub(crate) use with_pool;

impl SqlPool {
    pub(crate) fn kind(&self) -> BackendKind {
        match self {
            SqlPool::Sqlite(_) => BackendKind::Sqlite,
            SqlPool::Postgres(_) => BackendKind::Postgres,
            SqlPool::Mysql(_) => BackendKind::Mysql,
        }
    }

    pub(crate) async fn connect(kind: BackendKind, url: &str, o: &ConnectOptions) -> Result<Self> {
        let bad = |e: sqlx::Error| DbcError::InvalidUrl {
            url: redact_url(url),
            reason: scrub(&e.to_string(), url),
        };
        let conn = |e: sqlx::Error| DbcError::Connection {
            url: redact_url(url),
            message: scrub(&e.to_string(), url),
        };
        fn pool_opts<DB: sqlx::Database>(o: &ConnectOptions) -> sqlx::pool::PoolOptions<DB> {
            sqlx::pool::PoolOptions::<DB>::new()
                .max_connections(o.max_connections.max(1))
                .min_connections(o.min_connections)
                .acquire_timeout(o.connect_timeout)
        }
        let fut = async {
            Ok::<_, DbcError>(match kind {
                BackendKind::Sqlite => {
                    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                        .map_err(bad)?
                        .busy_timeout(o.call_timeout)
                        .foreign_keys(true)
                        // sqlx's SQLite worker thread hands rows over one by one through a
                        // channel (50 by default); a deeper one lets it run ahead of the
                        // reader instead of waking it at every row of a large scan.
                        .row_buffer_size(1024);
                    let memory = url.contains(":memory:") || url.contains("mode=memory");
                    let opts = if memory {
                        opts
                    } else {
                        opts.journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    };
                    // An in-memory database lives and dies with its one connection.
                    let po = if memory {
                        pool_opts::<sqlx::Sqlite>(o)
                            .max_connections(1)
                            .idle_timeout(None)
                            .max_lifetime(None)
                    } else {
                        pool_opts::<sqlx::Sqlite>(o)
                    };
                    // Two processes opening a new database at once can see SQLITE_BUSY from
                    // the switch to WAL without the busy handler being called (SQLite returns
                    // it at once to avoid a deadlock): retry until the connect timeout.
                    let mut pause = Duration::from_millis(10);
                    loop {
                        match po.clone().connect_with(opts.clone()).await {
                            Ok(p) => break SqlPool::Sqlite(p),
                            Err(e) if sqlite_busy(&e) => {
                                tokio::time::sleep(pause).await;
                                pause = (pause * 2).min(Duration::from_millis(200));
                            }
                            Err(e) => return Err(conn(e)),
                        }
                    }
                }
                BackendKind::Postgres => {
                    let opts = sqlx::postgres::PgConnectOptions::from_str(url).map_err(bad)?;
                    SqlPool::Postgres(pool_opts(o).connect_with(opts).await.map_err(conn)?)
                }
                _ => {
                    let opts = sqlx::mysql::MySqlConnectOptions::from_str(url)
                        .map_err(bad)?
                        .charset("utf8mb4");
                    SqlPool::Mysql(pool_opts(o).connect_with(opts).await.map_err(conn)?)
                }
            })
        };
        match tokio::time::timeout(o.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(DbcError::Timeout {
                operation: format!("connecting to {}", redact_url(url)),
                after_ms: o.connect_timeout.as_millis() as u64,
            }),
        }
    }

    /// Executes one statement; returns the rows affected (MySQL: rows matched).
    pub(crate) async fn exec(&self, sql: &str, binds: &[(&Value, FieldType)]) -> Result<u64> {
        let kind = self.kind();
        with_pool!(self, pool, codec => {
            let q = codec::query(sql, binds)?;
            q.execute(pool).await.map(|r| r.rows_affected()).map_err(|e| from_sqlx(kind, e))
        })
    }

    /// Executes one statement; returns the rows affected and, on MySQL, the insert id the
    /// server reported (fenced writes report a refused row's token through it; 0 elsewhere).
    pub(crate) async fn exec_id(
        &self,
        sql: &str,
        binds: &[(&Value, FieldType)],
    ) -> Result<(u64, u64)> {
        let kind = self.kind();
        with_pool!(self, pool, codec => {
            let q = codec::query(sql, binds)?;
            q.execute(pool).await.map(|r| codec::ids(&r)).map_err(|e| from_sqlx(kind, e))
        })
    }

    /// Runs a `CREATE … IF NOT EXISTS`. In PostgreSQL that is not atomic: two sessions
    /// creating the same table at once can both pass the check, and one then fails on the
    /// catalog (duplicate type 42710, duplicate table 42P07, or a unique violation 23505 in
    /// pg_type), as two `keyward migrate up` runs on a fresh database showed. The object
    /// exists once the other session commits, so trying again is enough.
    pub(crate) async fn exec_ddl(&self, sql: &str) -> Result<()> {
        let kind = self.kind();
        let mut pause = Duration::from_millis(10);
        let mut attempt = 0;
        loop {
            let q = || sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()));
            let r = match self {
                SqlPool::Sqlite(p) => q().execute(p).await.map(drop),
                SqlPool::Postgres(p) => q().execute(p).await.map(drop),
                SqlPool::Mysql(p) => q().execute(p).await.map(drop),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 8 && kind == BackendKind::Postgres && ddl_race(&e) => {
                    tracing::debug!(error = %e, "concurrent CREATE, trying again");
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => return Err(from_sqlx(kind, e)),
            }
        }
    }

    /// Fetches rows decoded by the given column types.
    pub(crate) async fn fetch(
        &self,
        sql: &str,
        binds: &[(&Value, FieldType)],
        types: &[FieldType],
    ) -> Result<Vec<Vec<Value>>> {
        let kind = self.kind();
        with_pool!(self, pool, codec => {
            let q = codec::query(sql, binds)?;
            let mut rows = q.fetch(pool);
            let mut out = Vec::new();
            let mut decode: fn(&_, usize, FieldType) -> Result<Value> = codec::decode;
            while let Some(row) = rows.try_next().await.map_err(|e| from_sqlx(kind, e))? {
                if out.is_empty() && codec::trusts_columns(&row, types) {
                    // The column types hold for the whole result (PostgreSQL only); a result
                    // that fails this check is decoded value by value, for precise errors.
                    decode = codec::decode_trusted;
                }
                let mut rec = Vec::with_capacity(types.len());
                for (i, t) in types.iter().enumerate() {
                    rec.push(decode(&row, i, *t)?);
                }
                out.push(rec);
            }
            Ok(out)
        })
    }

    pub(crate) async fn close(&self) {
        match self {
            SqlPool::Sqlite(p) => p.close().await,
            SqlPool::Postgres(p) => p.close().await,
            SqlPool::Mysql(p) => p.close().await,
        }
    }
}

/// PostgreSQL's errors of two sessions creating the same object at once.
fn ddl_race(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| matches!(&*c, "42710" | "42P07" | "23505")),
        _ => false,
    }
}

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6), extended codes included.
fn sqlite_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

/// Removes the password of `url` from a driver message, in case the driver quoted it.
pub(crate) fn scrub(message: &str, url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => match u.password() {
            Some(p) if !p.is_empty() => message.replace(p, "***"),
            _ => message.to_string(),
        },
        Err(_) => message.to_string(),
    }
}
