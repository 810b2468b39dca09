//! The record face on SQL backends. Every fenced write is one atomic conditional statement
//! (MySQL: a conditional UPDATE and an INSERT that fails on a duplicate key, each atomic).

use super::dialect::{Dialect, Statements};
use super::SqlPool;
use crate::error::{DbcError, Result};
use crate::record::{Layout, ScanCursor, ScanPage};
use crate::table::Record;
use crate::value::{FieldType, Value};
use crate::BackendKind;

#[derive(Debug)]
pub(crate) struct SqlTable {
    pub pool: SqlPool,
    pub layout: Layout,
    pub st: Statements,
    pub kind: BackendKind,
}

const MYSQL_RETRIES: usize = 8;

impl SqlTable {
    pub fn new(pool: SqlPool, dialect: &Dialect, layout: Layout) -> Self {
        let st = dialect.statements(&layout);
        SqlTable {
            kind: pool.kind(),
            pool,
            layout,
            st,
        }
    }

    fn types(&self) -> Vec<FieldType> {
        self.layout.def.fields.iter().map(|f| f.ty).collect()
    }

    fn key_binds<'a>(&self, key: &'a [Value]) -> Vec<(&'a Value, FieldType)> {
        key.iter().zip(self.layout.key_types()).collect()
    }

    fn rec_binds<'a>(&self, rec: &'a Record) -> Vec<(&'a Value, FieldType)> {
        rec.iter().zip(self.types()).collect()
    }

    fn rest_binds<'a>(&self, rec: &'a Record) -> Vec<(&'a Value, FieldType)> {
        self.layout
            .rest_idx
            .iter()
            .map(|&i| (&rec[i], self.layout.def.fields[i].ty))
            .collect()
    }

    fn is_duplicate(e: &DbcError) -> bool {
        matches!(e, DbcError::Constraint { .. })
    }

    pub async fn get(&self, key: &[Value]) -> Result<Option<Record>> {
        self.layout.check_key(key)?;
        let mut rows = self
            .pool
            .fetch(&self.st.get, &self.key_binds(key), &self.types())
            .await?;
        Ok(rows.pop())
    }

    /// The stored token and whether the row is a tombstone.
    async fn token_of(&self, key: &[Value]) -> Result<Option<(i64, bool)>> {
        let rows = self
            .pool
            .fetch(
                &self.st.token_of,
                &self.key_binds(key),
                &[FieldType::I64, FieldType::I64],
            )
            .await?;
        Ok(rows.into_iter().next().and_then(|r| match (&r[0], &r[1]) {
            (Value::I64(t), Value::I64(d)) => Some((*t, *d != 0)),
            _ => None,
        }))
    }

    async fn fenced_error(&self, key: &[Value], token: i64) -> DbcError {
        let stored = match self.token_of(key).await {
            Ok(Some((t, _))) => t,
            _ => i64::MAX,
        };
        DbcError::Fenced {
            table: self.layout.def.name.clone(),
            stored,
            given: token,
        }
    }

    pub async fn put(&self, rec: &Record) -> Result<()> {
        self.layout.check_record(rec)?;
        self.pool.exec(&self.st.put, &self.rec_binds(rec)).await?;
        Ok(())
    }

    pub async fn put_fenced(&self, rec: &Record, token: i64) -> Result<()> {
        self.layout.check_record(rec)?;
        crate::record::check_token(token)?;
        let tokv = Value::I64(token);
        let key = self.layout.key_of(rec);
        if self.kind != BackendKind::Mysql {
            let mut binds = self.rec_binds(rec);
            binds.push((&tokv, FieldType::I64));
            return match self.pool.exec(&self.st.put_fenced, &binds).await? {
                0 => Err(self.fenced_error(&key, token).await),
                _ => Ok(()),
            };
        }
        for _ in 0..MYSQL_RETRIES {
            let mut upd = self.rest_binds(rec);
            upd.push((&tokv, FieldType::I64));
            upd.extend(self.key_binds(&key));
            upd.push((&tokv, FieldType::I64));
            if self
                .pool
                .exec(&self.st.mysql_put_fenced_update, &upd)
                .await?
                > 0
            {
                return Ok(());
            }
            let mut ins = self.rec_binds(rec);
            ins.push((&tokv, FieldType::I64));
            match self.pool.exec(&self.st.insert_with_token, &ins).await {
                Ok(_) => return Ok(()),
                Err(e) if Self::is_duplicate(&e) => {
                    // The row exists: refused unless its token is no newer than ours.
                    match self.token_of(&key).await? {
                        Some((stored, _)) if stored > token => {
                            return Err(DbcError::Fenced {
                                table: self.layout.def.name.clone(),
                                stored,
                                given: token,
                            })
                        }
                        _ => continue,
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.fenced_error(&key, token).await)
    }

    pub async fn delete(&self, key: &[Value]) -> Result<bool> {
        self.layout.check_key(key)?;
        Ok(self
            .pool
            .exec(&self.st.delete, &self.key_binds(key))
            .await?
            > 0)
    }

    pub async fn delete_fenced(&self, key: &[Value], token: i64) -> Result<bool> {
        self.layout.check_key(key)?;
        crate::record::check_token(token)?;
        let tokv = Value::I64(token);
        // Whether a live record existed is informational; the write below is what is fenced.
        let was_live = matches!(self.token_of(key).await?, Some((_, false)));
        if self.kind != BackendKind::Mysql {
            let mut binds = self.key_binds(key);
            binds.push((&tokv, FieldType::I64));
            return match self.pool.exec(&self.st.delete_fenced, &binds).await? {
                0 => Err(self.fenced_error(key, token).await),
                _ => Ok(was_live),
            };
        }
        for _ in 0..MYSQL_RETRIES {
            let mut upd = vec![(&tokv, FieldType::I64)];
            upd.extend(self.key_binds(key));
            upd.push((&tokv, FieldType::I64));
            if self
                .pool
                .exec(&self.st.mysql_delete_fenced_update, &upd)
                .await?
                > 0
            {
                return Ok(was_live);
            }
            let mut ins = self.key_binds(key);
            ins.push((&tokv, FieldType::I64));
            match self.pool.exec(&self.st.mysql_insert_tombstone, &ins).await {
                Ok(_) => return Ok(false),
                Err(e) if Self::is_duplicate(&e) => match self.token_of(key).await? {
                    Some((stored, _)) if stored > token => {
                        return Err(DbcError::Fenced {
                            table: self.layout.def.name.clone(),
                            stored,
                            given: token,
                        })
                    }
                    _ => continue,
                },
                Err(e) => return Err(e),
            }
        }
        Err(self.fenced_error(key, token).await)
    }

    pub async fn compare_and_put(
        &self,
        key: &[Value],
        expected: Option<&Record>,
        new: Option<&Record>,
    ) -> Result<bool> {
        self.layout.check_key(key)?;
        for r in expected.iter().chain(new.iter()) {
            self.layout.check_record(r)?;
            if self.layout.key_of(r) != key {
                return Err(DbcError::invalid(
                    "compare_and_put: a record's key differs from the key given",
                ));
            }
        }
        match (expected, new) {
            (None, None) => Ok(self.get(key).await?.is_none()),
            (Some(old), Some(new)) => {
                let mut b = self.rest_binds(new);
                b.extend(self.key_binds(key));
                b.extend(self.rest_binds(old));
                Ok(self.pool.exec(&self.st.cas_update, &b).await? == 1)
            }
            (Some(old), None) => {
                let mut b = self.key_binds(key);
                b.extend(self.rest_binds(old));
                Ok(self.pool.exec(&self.st.cas_delete, &b).await? == 1)
            }
            (None, Some(new)) => {
                if self.kind != BackendKind::Mysql {
                    return Ok(self
                        .pool
                        .exec(&self.st.cas_insert, &self.rec_binds(new))
                        .await?
                        == 1);
                }
                let mut b = self.rest_binds(new);
                b.extend(self.key_binds(key));
                if self.pool.exec(&self.st.mysql_cas_revive, &b).await? == 1 {
                    return Ok(true);
                }
                match self
                    .pool
                    .exec(&self.st.mysql_insert, &self.rec_binds(new))
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if Self::is_duplicate(&e) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    pub async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        if limit == 0 {
            return Err(DbcError::invalid("scan limit must be at least 1"));
        }
        let lim = Value::I64(i64::try_from(limit).unwrap_or(i64::MAX));
        let records = match cursor {
            None => {
                self.pool
                    .fetch(
                        &self.st.scan_first,
                        &[(&lim, FieldType::I64)],
                        &self.types(),
                    )
                    .await?
            }
            Some(c) => {
                self.layout.check_key(&c.after)?;
                let mut b = self.key_binds(&c.after);
                b.push((&lim, FieldType::I64));
                self.pool
                    .fetch(&self.st.scan_after, &b, &self.types())
                    .await?
            }
        };
        let next = if records.len() == limit {
            records.last().map(|r| ScanCursor {
                after: self.layout.key_of(r),
            })
        } else {
            None
        };
        Ok(ScanPage { records, next })
    }

    pub async fn count(&self) -> Result<u64> {
        let rows = self
            .pool
            .fetch(&self.st.count, &[], &[FieldType::I64])
            .await?;
        match rows.first().and_then(|r| r.first()) {
            Some(Value::I64(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
            _ => Err(DbcError::backend(self.kind, "COUNT(*) returned no row")),
        }
    }
}
