//! Tables registered with a cache: their options, update functions, and the typed and raw
//! handles callers use.

use crate::cache::{Cache, Reply, Write, WriteOp};
use crate::error::{CacheError, Result};
use crate::keys::KeyHash;
use crate::mapping::{from_record, to_record};
use crate::SharedRecord;
use keyward_dbc::{Key, Record, Table, TableDef, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How a table's writes reach the database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// Applied in memory, made durable in the journal, flushed to the table later (merged).
    #[default]
    WriteBack,
    /// Written to the table (fenced) before the call returns; no journal.
    WriteThrough,
}

/// Per-table settings, the same on every node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableOptions {
    /// A clean record is reloaded from the database when it is older than this, so that writes
    /// that bypass the cache become visible.
    pub ttl: Option<Duration>,
    pub mode: WriteMode,
}

/// A named update function: the current record (None when absent) and an argument give the new
/// record (None deletes). It runs at the owner under the key's lock: keep it short.
pub type UpdateFn = Arc<
    dyn Fn(Option<&Record>, &serde_json::Value) -> Result<Option<Record>, String> + Send + Sync,
>;

pub(crate) struct TableState {
    pub def: TableDef,
    /// `def.name`, shared by every journal entry of the table.
    pub name: Arc<str>,
    pub table: Table,
    pub pk_idx: Vec<usize>,
    pub opts: TableOptions,
    pub updates: RwLock<HashMap<String, UpdateFn>>,
    /// `cache/<db>/<table>/`, set when the table is registered with a cache.
    pub key_prefix: String,
    /// The hash state after `key_prefix` (see [`KeyHash`]).
    pub prefix_hash: KeyHash,
}

impl TableState {
    pub fn new(def: TableDef, table: Table, opts: TableOptions) -> Result<Self> {
        let mut pk_idx = Vec::with_capacity(def.primary_key.len());
        for name in &def.primary_key {
            let i = def
                .fields
                .iter()
                .position(|f| &f.name == name)
                .ok_or_else(|| {
                    CacheError::invalid(
                        &def.name,
                        format!("primary key field {name:?} is not a field"),
                    )
                })?;
            pk_idx.push(i);
        }
        if pk_idx.is_empty() {
            return Err(CacheError::invalid(&def.name, "no primary key"));
        }
        Ok(TableState {
            name: Arc::from(def.name.as_str()),
            def,
            table,
            pk_idx,
            opts,
            updates: RwLock::new(HashMap::new()),
            key_prefix: String::new(),
            prefix_hash: KeyHash::START,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pk_of(&self, rec: &Record) -> Key {
        self.pk_idx.iter().map(|i| rec[*i].clone()).collect()
    }

    pub fn check_pk(&self, pk: &[Value]) -> Result<()> {
        if pk.len() != self.pk_idx.len() {
            return Err(CacheError::invalid(
                self.name(),
                format!(
                    "key has {} values, the primary key {}",
                    pk.len(),
                    self.pk_idx.len()
                ),
            ));
        }
        for (v, i) in pk.iter().zip(&self.pk_idx) {
            let f = &self.def.fields[*i];
            if v.field_type() != Some(f.ty) {
                return Err(CacheError::invalid(
                    self.name(),
                    format!("key field {:?} needs a {:?}", f.name, f.ty),
                ));
            }
        }
        Ok(())
    }

    /// A record fits the definition: one value per field, of the field's type or a null where
    /// allowed.
    pub fn check_record(&self, rec: &Record) -> Result<()> {
        if rec.len() != self.def.fields.len() {
            return Err(CacheError::invalid(
                self.name(),
                format!(
                    "record has {} values for {} fields",
                    rec.len(),
                    self.def.fields.len()
                ),
            ));
        }
        for (v, f) in rec.iter().zip(&self.def.fields) {
            match v.field_type() {
                None if f.nullable => {}
                Some(t) if t == f.ty => {}
                _ => {
                    return Err(CacheError::invalid(
                        self.name(),
                        format!(
                            "field {:?} needs a {:?}{}",
                            f.name,
                            f.ty,
                            if f.nullable { " or null" } else { "" }
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    pub fn update_fn(&self, name: &str) -> Result<UpdateFn> {
        let map = self.updates.read().unwrap_or_else(|e| e.into_inner());
        map.get(name)
            .cloned()
            .ok_or_else(|| CacheError::UnknownUpdate {
                table: self.name().to_owned(),
                name: name.to_owned(),
            })
    }
}

/// A cached table whose values are raw records.
#[derive(Clone)]
pub struct RawTable {
    pub(crate) cache: Cache,
    pub(crate) ts: Arc<TableState>,
}

impl RawTable {
    pub fn def(&self) -> &TableDef {
        &self.ts.def
    }

    pub fn options(&self) -> &TableOptions {
        &self.ts.opts
    }

    /// The record, shared with the cache's memory (no copy per read).
    pub async fn get(&self, pk: &[Value]) -> Result<Option<SharedRecord>> {
        self.cache.get(&self.ts, pk).await
    }

    pub async fn get_many(&self, pks: &[Key]) -> Result<Vec<Option<SharedRecord>>> {
        self.cache.get_many(&self.ts, pks).await
    }

    /// Inserts or replaces the record (its primary key is taken from it).
    pub async fn put(&self, rec: Record) -> Result<()> {
        self.ts.check_record(&rec)?;
        let pk = self.ts.pk_of(&rec);
        self.cache
            .write(&self.ts, &pk, WriteOp::Put(Arc::new(rec)))
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, pk: &[Value]) -> Result<()> {
        self.cache
            .write(&self.ts, pk, WriteOp::Delete)
            .await
            .map(|_| ())
    }

    /// Puts many records in one call: one frame per owning node instead of one per record,
    /// and shared journal commits. Each put is acknowledged as [`RawTable::put`]'s is; `Ok`
    /// once all are. Not atomic: after an error, some of the records may have been written.
    /// Of several records with one key, the last is the one written.
    pub async fn put_many(&self, recs: Vec<Record>) -> Result<()> {
        let writes = recs.into_iter().map(|r| Write::Put(Arc::new(r))).collect();
        self.cache.write_many(&self.ts, writes).await
    }

    /// Deletes many keys in one call, as [`RawTable::put_many`] puts.
    pub async fn delete_many(&self, pks: &[Key]) -> Result<()> {
        let writes = pks.iter().cloned().map(Write::Delete).collect();
        self.cache.write_many(&self.ts, writes).await
    }

    /// Replaces the record with `new` (None deletes) if it currently equals `expected` (None:
    /// absent). Returns whether it did.
    pub async fn compare_and_put(
        &self,
        pk: &[Value],
        expected: Option<Record>,
        new: Option<Record>,
    ) -> Result<bool> {
        if let Some(n) = &new {
            self.ts.check_record(n)?;
            if self.ts.pk_of(n) != pk {
                return Err(CacheError::invalid(
                    self.ts.name(),
                    "the new record has another primary key",
                ));
            }
        }
        match self
            .cache
            .write(
                &self.ts,
                pk,
                WriteOp::Cas {
                    expected,
                    new: new.map(Arc::new),
                },
            )
            .await?
        {
            Reply::Cas(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs the named update function at the key's owner, atomically; returns the new record.
    pub async fn update(
        &self,
        pk: &[Value],
        name: &str,
        arg: serde_json::Value,
    ) -> Result<Option<SharedRecord>> {
        let op = WriteOp::Update {
            name: name.to_owned(),
            arg,
        };
        match self.cache.write(&self.ts, pk, op).await? {
            Reply::Value(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// Drops the keys from their owners' memory (flushing them first), so that the next read
    /// loads them from the database: for writes made by other programs.
    pub async fn invalidate(&self, pks: &[Key]) -> Result<()> {
        let calls = pks.iter().map(|pk| self.cache.invalidate(&self.ts, pk));
        futures::future::try_join_all(calls).await.map(|_| ())
    }

    /// Registers an update function on this node. Every node must register the same ones.
    pub fn register_update<F>(&self, name: &str, f: F)
    where
        F: Fn(Option<&Record>, &serde_json::Value) -> Result<Option<Record>, String>
            + Send
            + Sync
            + 'static,
    {
        let mut map = self.ts.updates.write().unwrap_or_else(|e| e.into_inner());
        map.insert(name.to_owned(), Arc::new(f));
    }
}

fn unexpected(r: &Reply) -> CacheError {
    CacheError::Peer {
        addr: String::new(),
        message: format!("unexpected reply {r:?}"),
    }
}

/// A cached table whose values are a serde type mapped to records field by field.
pub struct CacheTable<T> {
    raw: RawTable,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for CacheTable<T> {
    fn clone(&self) -> Self {
        CacheTable {
            raw: self.raw.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> CacheTable<T> {
    pub(crate) fn new(raw: RawTable) -> Self {
        CacheTable {
            raw,
            _t: PhantomData,
        }
    }

    pub fn raw(&self) -> &RawTable {
        &self.raw
    }

    fn decode(&self, rec: Option<SharedRecord>) -> Result<Option<T>> {
        rec.map(|r| from_record(&self.raw.ts.def, &r)).transpose()
    }

    fn encode(&self, v: &T) -> Result<Record> {
        to_record(&self.raw.ts.def, v)
    }

    pub async fn get(&self, pk: &[Value]) -> Result<Option<T>> {
        let r = self.raw.get(pk).await?;
        self.decode(r)
    }

    pub async fn get_many(&self, pks: &[Key]) -> Result<Vec<Option<T>>> {
        self.raw
            .get_many(pks)
            .await?
            .into_iter()
            .map(|r| self.decode(r))
            .collect()
    }

    pub async fn put(&self, value: &T) -> Result<()> {
        self.raw.put(self.encode(value)?).await
    }

    pub async fn delete(&self, pk: &[Value]) -> Result<()> {
        self.raw.delete(pk).await
    }

    /// See [`RawTable::put_many`].
    pub async fn put_many(&self, values: &[T]) -> Result<()> {
        let recs = values
            .iter()
            .map(|v| self.encode(v))
            .collect::<Result<Vec<_>>>()?;
        self.raw.put_many(recs).await
    }

    /// See [`RawTable::delete_many`].
    pub async fn delete_many(&self, pks: &[Key]) -> Result<()> {
        self.raw.delete_many(pks).await
    }

    pub async fn compare_and_put(
        &self,
        pk: &[Value],
        expected: Option<&T>,
        new: Option<&T>,
    ) -> Result<bool> {
        let e = expected.map(|v| self.encode(v)).transpose()?;
        let n = new.map(|v| self.encode(v)).transpose()?;
        self.raw.compare_and_put(pk, e, n).await
    }

    pub async fn update<A: Serialize>(
        &self,
        pk: &[Value],
        name: &str,
        arg: &A,
    ) -> Result<Option<T>> {
        let arg = serde_json::to_value(arg).map_err(|e| CacheError::Mapping {
            table: self.raw.ts.name().to_owned(),
            reason: e.to_string(),
        })?;
        let r = self.raw.update(pk, name, arg).await?;
        self.decode(r)
    }

    pub async fn invalidate(&self, pks: &[Key]) -> Result<()> {
        self.raw.invalidate(pks).await
    }

    /// Registers a typed update function on this node (every node must register it).
    pub fn register_update<A, F>(&self, name: &str, f: F)
    where
        A: DeserializeOwned,
        F: Fn(Option<T>, A) -> Result<Option<T>, String> + Send + Sync + 'static,
    {
        let def = self.raw.ts.def.clone();
        self.raw.register_update(name, move |cur, arg| {
            let cur: Option<T> = cur
                .map(|r| from_record(&def, r))
                .transpose()
                .map_err(|e| e.to_string())?;
            let arg: A = serde_json::from_value(arg.clone()).map_err(|e| e.to_string())?;
            f(cur, arg)?
                .map(|v| to_record(&def, &v))
                .transpose()
                .map_err(|e| e.to_string())
        });
    }
}
