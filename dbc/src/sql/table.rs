//! The record face on SQL backends. Every fenced write is one atomic conditional statement
//! (MySQL: a conditional UPDATE and an INSERT that fails on a duplicate key, each atomic).

use super::copy;
use super::dialect::{Dialect, Statements};
use super::native::SqlTx;
use super::SqlPool;
use crate::db::timed;
use crate::error::{DbcError, Result};
use crate::record::{check_token, Layout, ScanCursor, ScanPage, MAX_VALUE_BYTES};
use crate::table::Record;
use crate::value::{FieldType, Value};
use crate::BackendKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct SqlTable {
    pub pool: SqlPool,
    pub layout: Layout,
    pub st: Statements,
    pub kind: BackendKind,
    dialect: Dialect,
    types: Vec<FieldType>,
    /// Multi-row statements by (fenced, rows), built once: a batch of 10,000 records reuses
    /// the same few texts (and so the same prepared statements).
    multi: Mutex<HashMap<(Multi, usize), Arc<str>>>,
}

/// The kinds of multi-row statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Multi {
    Put,
    PutFenced,
    Get,
}

/// Keys per multi-key get, largest first: a batch is cut greedily into these, so that the
/// database keeps a few statements prepared instead of one per batch size.
const GET_SIZES: [usize; 4] = [500, 50, 8, 1];
/// Most text/bytes/json payload in one multi-row statement, so that a batch of large values
/// stays within every server's packet limit (MySQL's max_allowed_packet is 16 MiB or more).
const CHUNK_PAYLOAD_BYTES: usize = 2 * MAX_VALUE_BYTES;
/// Distinct multi-row statement texts kept per table.
const MULTI_CACHE: usize = 16;

impl SqlTable {
    pub fn new(pool: SqlPool, dialect: &Dialect, layout: Layout) -> Self {
        let st = dialect.statements(&layout);
        SqlTable {
            kind: pool.kind(),
            pool,
            types: layout.def.fields.iter().map(|f| f.ty).collect(),
            layout,
            st,
            dialect: dialect.clone(),
            multi: Mutex::new(HashMap::new()),
        }
    }

    fn types(&self) -> Vec<FieldType> {
        self.types.clone()
    }

    fn key_binds<'a>(&self, key: &'a [Value]) -> Vec<(&'a Value, FieldType)> {
        key.iter().zip(self.layout.key_types()).collect()
    }

    fn rec_binds<'a>(&self, rec: &'a Record) -> Vec<(&'a Value, FieldType)> {
        rec.iter().zip(self.types.iter().copied()).collect()
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
            .fetch(&self.st.get, &self.key_binds(key), &self.types)
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

    /// Whether a fenced write of `rows` rows was accepted whole, from what the server
    /// reported: the rows written, or on MySQL the refused token (see the dialect).
    fn accepted(&self, (written, refused): (u64, u64), rows: usize) -> bool {
        if self.kind == BackendKind::Mysql {
            refused == 0
        } else {
            usize::try_from(written).is_ok_and(|w| w == rows)
        }
    }

    /// The error of a refused single-row fenced write; the stored token as MySQL reported it,
    /// else as read now.
    async fn refused(&self, (_, refused): (u64, u64), key: &[Value], token: i64) -> DbcError {
        if self.kind == BackendKind::Mysql {
            return DbcError::Fenced {
                table: self.layout.def.name.clone(),
                stored: i64::try_from(refused).unwrap_or(i64::MAX),
                given: token,
            };
        }
        self.fenced_error(key, token).await
    }

    /// One atomic conditional statement on every backend.
    pub async fn put_fenced(&self, rec: &Record, token: i64) -> Result<()> {
        self.layout.check_record(rec)?;
        crate::record::check_token(token)?;
        let tokv = Value::I64(token);
        let mut binds = self.rec_binds(rec);
        binds.push((&tokv, FieldType::I64));
        let r = self.pool.exec_id(&self.st.put_fenced, &binds).await?;
        if self.accepted(r, 1) {
            Ok(())
        } else {
            Err(self.refused(r, &self.layout.key_of(rec), token).await)
        }
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
        let mut binds = self.key_binds(key);
        binds.push((&tokv, FieldType::I64));
        let r = self.pool.exec_id(&self.st.delete_fenced, &binds).await?;
        if self.accepted(r, 1) {
            Ok(was_live)
        } else {
            Err(self.refused(r, key, token).await)
        }
    }

    pub async fn compare_and_put(
        &self,
        key: &[Value],
        expected: Option<&Record>,
        new: Option<&Record>,
    ) -> Result<bool> {
        self.layout.check_cas(key, expected, new)?;
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

    /// Upserts every record in one transaction, one multi-row statement per chunk; one
    /// result per item (see [`Self::write_many`]).
    pub async fn put_many(&self, recs: &[Record], limit: Duration) -> Result<Vec<Result<()>>> {
        let items: Vec<(&Record, Option<i64>)> = recs.iter().map(|r| (r, None)).collect();
        self.write_many(&items, limit).await
    }

    /// Fenced writes of every item in one transaction; one result per item.
    pub async fn put_fenced_many(
        &self,
        items: &[(Record, i64)],
        limit: Duration,
    ) -> Result<Vec<Result<()>>> {
        let items: Vec<(&Record, Option<i64>)> = items.iter().map(|(r, t)| (r, Some(*t))).collect();
        self.write_many(&items, limit).await
    }

    fn multi_sql(&self, kind: Multi, rows: usize) -> Arc<str> {
        let mut cache = match self.multi.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(s) = cache.get(&(kind, rows)) {
            return s.clone();
        }
        let (nf, nk) = (self.types.len(), self.layout.key_idx.len());
        let st = &self.st;
        let d = &self.dialect;
        let sql: Arc<str> = match kind {
            Multi::Put => d.multi_row(&st.put_head, &st.put_tail, rows, nf, ", 0, 0"),
            Multi::PutFenced => d.multi_row(&st.put_head, &st.put_fenced_tail, rows, nf + 1, ", 0"),
            Multi::Get => d.multi_row(&st.get_many_head, ")", rows, nk, ""),
        }
        .into();
        if cache.len() >= MULTI_CACHE {
            cache.clear();
        }
        cache.insert((kind, rows), sql.clone());
        sql
    }

    /// Records of many keys, a few hundred keys per statement (`key IN (...)`). Decimal keys
    /// are read one by one: equal decimals may be stored as distinct texts, so a row could not
    /// be matched back to the key asked for.
    pub async fn get_many(
        &self,
        keys: &[Vec<Value>],
        limit: Duration,
    ) -> Result<Vec<Option<Record>>> {
        for k in keys {
            self.layout.check_key(k)?;
        }
        let mut out: Vec<Option<Record>> = vec![None; keys.len()];
        let exact = !self.layout.key_types().contains(&FieldType::Decimal);
        if !exact || keys.len() < 2 {
            for (i, k) in keys.iter().enumerate() {
                out[i] = timed(limit, "get", self.get(k)).await?;
            }
            return Ok(out);
        }
        let ident = |k: &[Value]| {
            serde_json::to_string(k).map_err(|e| DbcError::invalid(format!("key: {e}")))
        };
        let mut at = 0;
        while at < keys.len() {
            let left = keys.len() - at;
            let size = GET_SIZES.iter().copied().find(|&s| s <= left).unwrap_or(1);
            let chunk = &keys[at..at + size];
            let binds: Vec<(&Value, FieldType)> =
                chunk.iter().flat_map(|k| self.key_binds(k)).collect();
            let sql = self.multi_sql(Multi::Get, size);
            let rows = timed(
                limit,
                "get_many",
                self.pool.fetch(&sql, &binds, &self.types),
            )
            .await?;
            let mut found = HashMap::with_capacity(rows.len());
            for r in rows {
                found.insert(ident(&self.layout.key_of(&r))?, r);
            }
            for (n, k) in chunk.iter().enumerate() {
                out[at + n] = found.get(&ident(k)?).cloned();
            }
            at += size;
        }
        Ok(out)
    }

    /// Writes `items` (record, fencing token or `None` for a plain put) in one transaction.
    /// Invalid items fail alone without reaching the database. The valid ones go in chunks
    /// within the bind limit, each one multi-row statement under a savepoint; if a chunk fails
    /// (or, fenced, writes fewer rows than it has items), it is undone and its items are
    /// written one by one, each under its own savepoint, so that every item gets exactly its
    /// own result. `Err` as a whole (nothing written) only when the transaction itself fails.
    async fn write_many(
        &self,
        items: &[(&Record, Option<i64>)],
        limit: Duration,
    ) -> Result<Vec<Result<()>>> {
        let mut out = Vec::with_capacity(items.len());
        let mut valid = Vec::with_capacity(items.len());
        let mut sizes = Vec::with_capacity(items.len());
        for (i, (rec, tok)) in items.iter().enumerate() {
            let check = self
                .layout
                .checked_size(rec)
                .and_then(|size| tok.map_or(Ok(()), check_token).map(|()| size));
            out.push(match check {
                Ok(size) => {
                    valid.push(i);
                    sizes.push(size);
                    Ok(())
                }
                Err(e) => Err(e),
            });
        }
        if valid.is_empty() {
            return Ok(out);
        }
        let fenced = items[valid[0]].1.is_some();
        let per_row = self.types.len() + usize::from(fenced);
        let max_rows = (self.dialect.bind_limit() / per_row).max(1);
        let mut tx = timed(limit, "begin", self.pool.begin()).await?;
        if !fenced && self.kind == BackendKind::Postgres && valid.len() >= copy::MIN_ROWS {
            let rows = valid.iter().map(|&i| items[i].0);
            if self.copy_rows(&mut tx, rows, valid.len(), limit).await? {
                timed(limit, "commit", tx.commit()).await?;
                return Ok(out);
            }
        }
        let mut start = 0;
        while start < valid.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < valid.len() && end - start < max_rows {
                bytes += sizes[end];
                if end > start && bytes > CHUNK_PAYLOAD_BYTES {
                    break;
                }
                end += 1;
            }
            let chunk = &valid[start..end];
            timed(
                limit,
                "writing a batch",
                self.write_chunk(&mut tx, items, chunk, fenced, &mut out),
            )
            .await?;
            start = end;
        }
        timed(limit, "commit", tx.commit()).await?;
        Ok(out)
    }

    /// Writes `n` records with `COPY` under a savepoint. `Ok(false)`: COPY declined or was
    /// refused (a key already exists, say) and nothing of it was kept; the caller writes the
    /// batch the usual way. A timeout or a broken connection is the transaction's error.
    async fn copy_rows<'a>(
        &self,
        tx: &mut SqlTx,
        rows: impl Iterator<Item = &'a Record>,
        n: usize,
        limit: Duration,
    ) -> Result<bool> {
        let mut data = String::new();
        if !copy::encode(rows, &mut data) {
            return Ok(false);
        }
        let d = &self.dialect;
        let sql = format!(
            "COPY {} ({}) FROM STDIN",
            d.q(&self.layout.def.name),
            d.all_cols(&self.layout)
        );
        tx.exec_plain("SAVEPOINT kw_copy").await?;
        match timed(limit, "copying a batch", tx.copy_in(&sql, data.as_bytes())).await {
            Ok(copied) if copied == n as u64 => {
                tx.exec_plain("RELEASE SAVEPOINT kw_copy").await?;
                Ok(true)
            }
            Err(e @ (DbcError::Timeout { .. } | DbcError::Connection { .. })) => Err(e),
            Ok(_) | Err(_) => {
                tx.exec_plain("ROLLBACK TO SAVEPOINT kw_copy").await?;
                tx.exec_plain("RELEASE SAVEPOINT kw_copy").await?;
                Ok(false)
            }
        }
    }

    async fn write_chunk(
        &self,
        tx: &mut SqlTx,
        items: &[(&Record, Option<i64>)],
        chunk: &[usize],
        fenced: bool,
        out: &mut [Result<()>],
    ) -> Result<()> {
        if chunk.len() > 1 {
            let tokens: Vec<Value> = chunk
                .iter()
                .map(|&i| Value::I64(items[i].1.unwrap_or(0)))
                .collect();
            let per_row = self.types.len() + usize::from(fenced);
            let mut binds = Vec::with_capacity(chunk.len() * per_row);
            for (n, &i) in chunk.iter().enumerate() {
                binds.extend(items[i].0.iter().zip(self.types.iter().copied()));
                if fenced {
                    binds.push((&tokens[n], FieldType::I64));
                }
            }
            let sql = self.multi_sql(
                if fenced { Multi::PutFenced } else { Multi::Put },
                chunk.len(),
            );
            // SQLite undoes a failed statement by itself and leaves the transaction usable
            // (its default ABORT conflict resolution), so the savepoint PostgreSQL and MySQL
            // need is two round trips to its worker thread for nothing. A fenced chunk that
            // skipped rows is then redone row by row over its own written rows: the same
            // image with the same token is accepted again, so each item's result is the same.
            let savepoint = self.kind != BackendKind::Sqlite;
            if savepoint {
                tx.exec_plain("SAVEPOINT kw_batch").await?;
            }
            // Every chunk size is kept prepared: a caller that repeats its batch size (most
            // do) finds the last, shorter chunk's statement prepared too; the driver's
            // statement cache is bounded and drops the least used.
            match tx.exec_id(&sql, &binds, true).await {
                Ok(r) if !fenced || self.accepted(r, chunk.len()) => {
                    if savepoint {
                        tx.exec_plain("RELEASE SAVEPOINT kw_batch").await?;
                    }
                    return Ok(());
                }
                Ok(_) | Err(_) => {
                    if savepoint {
                        tx.exec_plain("ROLLBACK TO SAVEPOINT kw_batch").await?;
                        tx.exec_plain("RELEASE SAVEPOINT kw_batch").await?;
                    }
                }
            }
        }
        for &i in chunk {
            out[i] = self.write_one(tx, items[i].0, items[i].1).await?;
        }
        Ok(())
    }

    /// One item of a batch under its own savepoint. The outer `Err` is the transaction's.
    async fn write_one(
        &self,
        tx: &mut SqlTx,
        rec: &Record,
        token: Option<i64>,
    ) -> Result<Result<()>> {
        tx.exec_plain("SAVEPOINT kw_item").await?;
        let tokv = Value::I64(token.unwrap_or(0));
        let mut binds = self.rec_binds(rec);
        let sql = match token {
            Some(_) => {
                binds.push((&tokv, FieldType::I64));
                &self.st.put_fenced
            }
            None => &self.st.put,
        };
        let res = match tx.exec_id(sql, &binds, true).await {
            Ok(r) if token.is_some() && !self.accepted(r, 1) => Err(DbcError::Fenced {
                table: self.layout.def.name.clone(),
                stored: self.stored_in(tx, r, &self.layout.key_of(rec)).await?,
                given: token.unwrap_or(0),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if res.is_err() {
            tx.exec_plain("ROLLBACK TO SAVEPOINT kw_item").await?;
        }
        tx.exec_plain("RELEASE SAVEPOINT kw_item").await?;
        Ok(res)
    }

    /// Fenced deletes of every item in one transaction (one commit, not one per item), each
    /// item under its own savepoint so that it gets exactly its own result.
    pub async fn delete_fenced_many(
        &self,
        items: &[(Vec<Value>, i64)],
        limit: Duration,
    ) -> Result<Vec<Result<bool>>> {
        let mut out = Vec::with_capacity(items.len());
        let mut valid = Vec::with_capacity(items.len());
        for (i, (key, tok)) in items.iter().enumerate() {
            let check = self.layout.check_key(key).and_then(|()| check_token(*tok));
            match check {
                Ok(()) => {
                    valid.push(i);
                    out.push(Ok(false));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        if valid.is_empty() {
            return Ok(out);
        }
        let mut tx = timed(limit, "begin", self.pool.begin()).await?;
        for i in valid {
            let (key, tok) = &items[i];
            out[i] = timed(limit, "delete_fenced", self.delete_one(&mut tx, key, *tok)).await?;
        }
        timed(limit, "commit", tx.commit()).await?;
        Ok(out)
    }

    /// The stored token and tombstone flag of `key`, read inside `tx`.
    async fn token_in(&self, tx: &mut SqlTx, key: &[Value]) -> Result<Option<(i64, bool)>> {
        let rows = tx
            .fetch_typed(
                &self.st.token_of,
                &self.key_binds(key),
                &[FieldType::I64, FieldType::I64],
            )
            .await?;
        Ok(rows.first().and_then(|r| match (&r[0], &r[1]) {
            (Value::I64(t), Value::I64(d)) => Some((*t, *d != 0)),
            _ => None,
        }))
    }

    /// The stored token of a row whose fenced write `r` was refused inside `tx`.
    async fn stored_in(&self, tx: &mut SqlTx, r: (u64, u64), key: &[Value]) -> Result<i64> {
        if self.kind == BackendKind::Mysql {
            return Ok(i64::try_from(r.1).unwrap_or(i64::MAX));
        }
        Ok(self.token_in(tx, key).await?.map_or(i64::MAX, |(t, _)| t))
    }

    async fn delete_one(&self, tx: &mut SqlTx, key: &[Value], token: i64) -> Result<Result<bool>> {
        tx.exec_plain("SAVEPOINT kw_item").await?;
        let was_live = matches!(self.token_in(tx, key).await?, Some((_, false)));
        let tokv = Value::I64(token);
        let mut binds = self.key_binds(key);
        binds.push((&tokv, FieldType::I64));
        let res = match tx.exec_id(&self.st.delete_fenced, &binds, true).await {
            Ok(r) if !self.accepted(r, 1) => Err(DbcError::Fenced {
                table: self.layout.def.name.clone(),
                stored: self.stored_in(tx, r, key).await?,
                given: token,
            }),
            Ok(_) => Ok(was_live),
            Err(e) => Err(e),
        };
        if res.is_err() {
            tx.exec_plain("ROLLBACK TO SAVEPOINT kw_item").await?;
        }
        tx.exec_plain("RELEASE SAVEPOINT kw_item").await?;
        Ok(res)
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
        Ok(self.layout.page(records, limit))
    }

    /// Whether this is a SQLite table with f64 fields, which files written before 2026-11-26
    /// stored as 8 bytes each (see the codec).
    pub fn needs_f64_upgrade(&self) -> bool {
        self.kind == BackendKind::Sqlite && self.types.contains(&FieldType::F64)
    }

    /// Rewrites the f64 values such a file stored as 8 bytes as REAL (NaN stays 8 bytes), in
    /// pages, once per table: `compare_and_put` compares stored and expected values in SQL,
    /// so one value must have one stored form. Idempotent, so two processes may race here.
    pub async fn upgrade_f64(&self) -> Result<()> {
        let d = &self.dialect;
        let cols = d.field_names(&self.layout, |f| f.ty == FieldType::F64);
        let old_form = cols
            .iter()
            .map(|c| format!("(typeof({c}) = 'blob' AND length({c}) = 8)"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let t = d.q(&self.layout.def.name);
        let select = format!(
            "SELECT rowid, {} FROM {t} WHERE rowid > ? AND ({old_form}) ORDER BY rowid LIMIT 10000",
            cols.join(", ")
        );
        let set = cols
            .iter()
            .map(|c| format!("{c} = ?"))
            .collect::<Vec<_>>()
            .join(", ");
        let update = format!("UPDATE {t} SET {set} WHERE rowid = ?");
        let mut types = vec![FieldType::I64];
        types.extend(std::iter::repeat_n(FieldType::F64, cols.len()));
        let mut after = Value::I64(i64::MIN);
        loop {
            let rows = self
                .pool
                .fetch(&select, &[(&after, FieldType::I64)], &types)
                .await?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = last[0].clone();
            let mut tx = self.pool.begin().await?;
            for row in &rows {
                let mut binds: Vec<(&Value, FieldType)> =
                    row[1..].iter().map(|v| (v, FieldType::F64)).collect();
                binds.push((&row[0], FieldType::I64));
                tx.exec_id(&update, &binds, true).await?;
            }
            tx.commit().await?;
        }
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
