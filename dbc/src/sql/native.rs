//! The native SQL face: one portable placeholder style (`$1`, `$2`, ... as in PostgreSQL)
//! rewritten per backend, rows streamed as `Vec<Value>`, and transactions.

use super::{with_pool, SqlPool};
use crate::error::{from_sqlx, DbcError, Result};
use crate::value::{FieldType, Value};
use crate::BackendKind;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::Row;
use std::time::Duration;

/// SQL rewritten for one backend, with the parameters in binding order.
pub(crate) struct Prepared {
    pub sql: String,
    pub order: Vec<usize>,
}

/// Rewrites `$N` placeholders outside quotes and comments into `?` (SQLite, MySQL),
/// recording which parameter each `?` takes. PostgreSQL keeps the text as it is.
pub(crate) fn rewrite(kind: BackendKind, sql: &str, nparams: usize) -> Result<Prepared> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut order = Vec::new();
    let mut i = 0;
    let mut max_seen = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' | b'`' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && kind == BackendKind::Mysql {
                        i += 1;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push_str(&sql[start..i]);
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let start = i;
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                out.push_str(&sql[start..i]);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i;
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i = (i + 2).min(b.len());
                out.push_str(&sql[start..i]);
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                let n: usize = sql[start..j]
                    .parse()
                    .map_err(|_| DbcError::invalid("placeholder number too large"))?;
                if n == 0 || n > nparams {
                    return Err(DbcError::invalid(format!(
                        "placeholder ${n} but {nparams} parameters given"
                    )));
                }
                max_seen = max_seen.max(n);
                if kind == BackendKind::Postgres {
                    out.push_str(&sql[i..j]);
                } else {
                    out.push('?');
                }
                order.push(n - 1);
                i = j;
            }
            _ => {
                let ch_len = sql[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&sql[i..i + ch_len]);
                i += ch_len;
            }
        }
    }
    if max_seen != nparams {
        return Err(DbcError::invalid(format!(
            "{nparams} parameters given but the statement uses {max_seen}"
        )));
    }
    if kind == BackendKind::Postgres {
        order = (0..nparams).collect();
    }
    Ok(Prepared { sql: out, order })
}

macro_rules! run_query {
    ($codec:ident, $prep:expr, $params:expr) => {{
        // Native-face parameters are bound by their own type.
        let binds: Vec<(&Value, FieldType)> = $prep
            .order
            .iter()
            .map(|&n| {
                (
                    &$params[n],
                    $params[n].field_type().unwrap_or(FieldType::Text),
                )
            })
            .collect();
        $codec::query(&$prep.sql, &binds)
    }};
}

macro_rules! decode_row {
    ($codec:ident, $row:expr) => {{
        let row = $row;
        (0..row.len())
            .map(|i| $codec::decode_native(&row, i))
            .collect::<Result<Vec<Value>>>()
    }};
}

impl SqlPool {
    pub(crate) async fn native_execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let kind = self.kind();
        let prep = rewrite(kind, sql, params.len())?;
        with_pool!(self, pool, codec => {
            run_query!(codec, prep, params)?
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| from_sqlx(kind, e))
        })
    }

    /// Streams rows through a bounded channel, so that a large result is never held whole.
    pub(crate) fn native_stream(
        &self,
        sql: &str,
        params: Vec<Value>,
        call_timeout: Duration,
    ) -> BoxStream<'static, Result<Vec<Value>>> {
        let kind = self.kind();
        let prep = match rewrite(kind, sql, params.len()) {
            Ok(p) => p,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<Value>>>(256);
        let pool = self.clone();
        tokio::spawn(async move {
            with_pool!(&pool, pool, codec => {
                let q = match run_query!(codec, prep, params) {
                    Ok(q) => q,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let mut rows = q.fetch(pool);
                loop {
                    let item = match rows.try_next().await {
                        Ok(Some(row)) => decode_row!(codec, row),
                        Ok(None) => break,
                        Err(e) => Err(from_sqlx(kind, e)),
                    };
                    let stop = item.is_err();
                    if tx.send(item).await.is_err() || stop {
                        break;
                    }
                }
            })
        });
        futures::stream::unfold(rx, move |mut rx| async move {
            match tokio::time::timeout(call_timeout, rx.recv()).await {
                Ok(Some(item)) => Some((item, rx)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(DbcError::Timeout {
                        operation: "reading the next row".into(),
                        after_ms: call_timeout.as_millis() as u64,
                    }),
                    rx,
                )),
            }
        })
        .boxed()
    }

    pub(crate) async fn begin(&self) -> Result<SqlTx> {
        let kind = self.kind();
        Ok(match self {
            SqlPool::Sqlite(p) => SqlTx::Sqlite(p.begin().await.map_err(|e| from_sqlx(kind, e))?),
            SqlPool::Postgres(p) => {
                SqlTx::Postgres(p.begin().await.map_err(|e| from_sqlx(kind, e))?)
            }
            SqlPool::Mysql(p) => SqlTx::Mysql(p.begin().await.map_err(|e| from_sqlx(kind, e))?),
        })
    }
}

pub(crate) enum SqlTx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Mysql(sqlx::Transaction<'static, sqlx::MySql>),
}

macro_rules! with_tx {
    ($self:expr, $tx:ident, $codec:ident, $kind:ident => $body:expr) => {
        match $self {
            SqlTx::Sqlite($tx) => {
                use crate::sql::codec::sqlite as $codec;
                let $kind = BackendKind::Sqlite;
                $body
            }
            SqlTx::Postgres($tx) => {
                use crate::sql::codec::postgres as $codec;
                let $kind = BackendKind::Postgres;
                $body
            }
            SqlTx::Mysql($tx) => {
                use crate::sql::codec::mysql as $codec;
                let $kind = BackendKind::Mysql;
                $body
            }
        }
    };
}

impl SqlTx {
    fn kind(&self) -> BackendKind {
        match self {
            SqlTx::Sqlite(_) => BackendKind::Sqlite,
            SqlTx::Postgres(_) => BackendKind::Postgres,
            SqlTx::Mysql(_) => BackendKind::Mysql,
        }
    }

    pub(crate) async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let prep = rewrite(self.kind(), sql, params.len())?;
        with_tx!(self, tx, codec, kind => {
            run_query!(codec, prep, params)?
                .execute(&mut **tx)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| from_sqlx(kind, e))
        })
    }

    pub(crate) async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>> {
        let prep = rewrite(self.kind(), sql, params.len())?;
        with_tx!(self, tx, codec, kind => {
            let rows = run_query!(codec, prep, params)?
                .fetch_all(&mut **tx)
                .await
                .map_err(|e| from_sqlx(kind, e))?;
            rows.into_iter().map(|r| decode_row!(codec, r)).collect()
        })
    }

    /// Executes one record-face statement with typed binds inside the transaction; returns
    /// the rows affected and MySQL's reported insert id (0 elsewhere).
    pub(crate) async fn exec_id(
        &mut self,
        sql: &str,
        binds: &[(&Value, FieldType)],
        persistent: bool,
    ) -> Result<(u64, u64)> {
        with_tx!(self, tx, codec, kind => {
            let q = codec::query(sql, binds)?.persistent(persistent);
            q.execute(&mut **tx)
                .await
                .map(|r| codec::ids(&r))
                .map_err(|e| from_sqlx(kind, e))
        })
    }

    /// Fetches rows decoded by the given column types inside the transaction.
    pub(crate) async fn fetch_typed(
        &mut self,
        sql: &str,
        binds: &[(&Value, FieldType)],
        types: &[FieldType],
    ) -> Result<Vec<Vec<Value>>> {
        with_tx!(self, tx, codec, kind => {
            let q = codec::query(sql, binds)?;
            let rows = q.fetch_all(&mut **tx).await.map_err(|e| from_sqlx(kind, e))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut rec = Vec::with_capacity(types.len());
                for (i, t) in types.iter().enumerate() {
                    rec.push(codec::decode(row, i, *t)?);
                }
                out.push(rec);
            }
            Ok(out)
        })
    }

    /// Runs a statement without parameters (savepoints) through the simple protocol, so that
    /// it takes no slot in the prepared-statement cache.
    pub(crate) async fn exec_plain(&mut self, sql: &'static str) -> Result<()> {
        let kind = self.kind();
        match self {
            SqlTx::Sqlite(t) => sqlx::raw_sql(sql).execute(&mut **t).await.map(|_| ()),
            SqlTx::Postgres(t) => sqlx::raw_sql(sql).execute(&mut **t).await.map(|_| ()),
            SqlTx::Mysql(t) => sqlx::raw_sql(sql).execute(&mut **t).await.map(|_| ()),
        }
        .map_err(|e| from_sqlx(kind, e))
    }

    /// Runs `COPY … FROM STDIN` with `data` (PostgreSQL only); returns the rows copied.
    pub(crate) async fn copy_in(&mut self, statement: &str, data: &[u8]) -> Result<u64> {
        let kind = self.kind();
        let SqlTx::Postgres(t) = self else {
            return Err(DbcError::unsupported(kind, "COPY"));
        };
        let conn: &mut sqlx::PgConnection = t;
        let mut copy = conn
            .copy_in_raw(statement)
            .await
            .map_err(|e| from_sqlx(kind, e))?;
        if let Err(e) = copy.send(data).await {
            let _ = copy.abort("keyward: sending the rows failed").await;
            return Err(from_sqlx(kind, e));
        }
        copy.finish().await.map_err(|e| from_sqlx(kind, e))
    }

    pub(crate) async fn commit(self) -> Result<()> {
        let kind = self.kind();
        match self {
            SqlTx::Sqlite(t) => t.commit().await,
            SqlTx::Postgres(t) => t.commit().await,
            SqlTx::Mysql(t) => t.commit().await,
        }
        .map_err(|e| from_sqlx(kind, e))
    }

    pub(crate) async fn rollback(self) -> Result<()> {
        let kind = self.kind();
        match self {
            SqlTx::Sqlite(t) => t.rollback().await,
            SqlTx::Postgres(t) => t.rollback().await,
            SqlTx::Mysql(t) => t.rollback().await,
        }
        .map_err(|e| from_sqlx(kind, e))
    }
}

/// Introspection queries: (list tables, columns of table `$1`), each returning text columns.
pub(crate) fn introspection(kind: BackendKind) -> (&'static str, &'static str) {
    match kind {
        BackendKind::Sqlite => (
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            "SELECT name, type, CASE WHEN \"notnull\" = 0 THEN 1 ELSE 0 END FROM pragma_table_info($1) ORDER BY cid",
        ),
        BackendKind::Postgres => (
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1",
            "SELECT column_name::text, data_type::text, CASE WHEN is_nullable = 'YES' THEN 1 ELSE 0 END FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        ),
        _ => (
            "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY 1",
            "SELECT CAST(column_name AS CHAR), CAST(column_type AS CHAR), CASE WHEN is_nullable = 'YES' THEN 1 ELSE 0 END FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = $1 ORDER BY ordinal_position",
        ),
    }
}
