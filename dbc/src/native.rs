//! The native face of a [`Db`]: SQL with `$1`-style placeholders (rewritten per backend),
//! streamed rows, transactions and schema introspection.

use crate::db::{timed, Backend, Db};
use crate::error::{DbcError, Result};
use crate::sql::native::{introspection, SqlTx};
use crate::value::Value;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson;
use std::time::Duration;

impl Db {
    /// The MongoDB database behind this `Db`, for filter/update documents
    /// (`db.collection::<bson::Document>(name).find(filter)` and so on).
    pub fn mongo_database(&self) -> Result<mongodb::Database> {
        match &self.inner.backend {
            Backend::Mongo { db } => Ok(db.clone()),
            _ => Err(DbcError::unsupported(self.kind(), "MongoDB documents")),
        }
    }

    /// Documents of `collection` matching a MongoDB filter document.
    pub async fn mongo_find(
        &self,
        collection: &str,
        filter: bson::Document,
    ) -> Result<Vec<bson::Document>> {
        let db = self.mongo_database()?;
        timed(self.call_timeout(), "mongo_find", async {
            db.collection::<bson::Document>(collection)
                .find(filter)
                .await
                .map_err(crate::mongo::err)?
                .try_collect()
                .await
                .map_err(crate::mongo::err)
        })
        .await
    }

    /// Applies a MongoDB update document to every match of `filter`; returns the matches.
    pub async fn mongo_update_many(
        &self,
        collection: &str,
        filter: bson::Document,
        update: bson::Document,
    ) -> Result<u64> {
        let db = self.mongo_database()?;
        timed(self.call_timeout(), "mongo_update_many", async {
            db.collection::<bson::Document>(collection)
                .update_many(filter, update)
                .await
                .map(|r| r.matched_count)
                .map_err(crate::mongo::err)
        })
        .await
    }
}

/// One column of a table as the database describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// The backend's own type name (e.g. `BIGINT`, `bytea`, `varchar(512)`).
    pub type_name: String,
    pub nullable: bool,
}

impl Db {
    fn sql_pool(&self, op: &str) -> Result<&crate::sql::SqlPool> {
        match &self.inner.backend {
            Backend::Sql { pool, .. } => Ok(pool),
            _ => Err(DbcError::unsupported(self.kind(), op)),
        }
    }

    /// Runs one SQL statement; `$1`, `$2`... are the parameters. Returns rows affected.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let pool = self.sql_pool("SQL")?;
        timed(
            self.call_timeout(),
            "execute",
            pool.native_execute(sql, params),
        )
        .await
    }

    /// Streams the rows of one SQL query; each item is bounded by the call timeout.
    pub fn query_stream(
        &self,
        sql: &str,
        params: Vec<Value>,
    ) -> BoxStream<'static, Result<Vec<Value>>> {
        match self.sql_pool("SQL") {
            Ok(pool) => pool.native_stream(sql, params, self.call_timeout()),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    /// All rows of one SQL query.
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>> {
        self.query_stream(sql, params.to_vec()).try_collect().await
    }

    /// Starts a transaction; `Err(Unsupported)` on backends without one.
    pub async fn begin(&self) -> Result<Transaction> {
        let pool = self.sql_pool("transactions")?;
        let tx = timed(self.call_timeout(), "begin", pool.begin()).await?;
        Ok(Transaction {
            tx,
            timeout: self.call_timeout(),
        })
    }

    /// Names of the tables (collections) of the database, Keyward's own included.
    pub async fn list_tables(&self) -> Result<Vec<String>> {
        if let Backend::Mongo { db } = &self.inner.backend {
            let mut names = timed(self.call_timeout(), "list_tables", async {
                db.list_collection_names().await.map_err(crate::mongo::err)
            })
            .await?;
            names.sort();
            return Ok(names);
        }
        let (q, _) = introspection(self.kind());
        let rows = self.query(q, &[]).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| match r.into_iter().next() {
                Some(Value::Text(s)) => Some(s),
                _ => None,
            })
            .collect())
    }

    /// The columns of `table` in order; empty if the table does not exist.
    pub async fn columns(&self, table: &str) -> Result<Vec<ColumnInfo>> {
        let (_, q) = introspection(self.kind());
        let rows = self.query(q, &[Value::Text(table.to_string())]).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| match r.as_slice() {
                [Value::Text(n), Value::Text(t), Value::I64(nl)] => Some(ColumnInfo {
                    name: n.clone(),
                    type_name: t.clone(),
                    nullable: *nl != 0,
                }),
                _ => None,
            })
            .collect())
    }
}

/// A native-face transaction. Dropping it without `commit` rolls it back.
pub struct Transaction {
    tx: SqlTx,
    timeout: Duration,
}

impl Transaction {
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        timed(self.timeout, "execute", self.tx.execute(sql, params)).await
    }

    pub async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>> {
        timed(self.timeout, "query", self.tx.query(sql, params)).await
    }

    pub async fn commit(self) -> Result<()> {
        timed(self.timeout, "commit", self.tx.commit()).await
    }

    pub async fn rollback(self) -> Result<()> {
        timed(self.timeout, "rollback", self.tx.rollback()).await
    }
}
