//! The system of record behind search: the catalog of indexes and one document table per
//! shard. [`Store`] is the narrow face search needs; [`DbcStore`](crate::dbc_store::DbcStore)
//! puts it on DBC's record face, [`MemStore`] keeps it in memory for tests.

use crate::error::{Result, SearchError};
use crate::schema::IndexMeta;
use async_trait::async_trait;
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One row of a shard's document table. Deletes are rows too (`body: None`), so an owner that
/// resumes from a position sees them.
#[derive(Clone, Debug, PartialEq)]
pub struct DocRow {
    /// Canonical id text.
    pub key: String,
    /// Per-shard write sequence: larger for every write, across owners.
    pub seq: i64,
    /// The document; `None` for a deleted one.
    pub body: Option<Map<String, Json>>,
}

/// A page of a shard table scan.
pub struct RowPage {
    pub rows: Vec<DocRow>,
    /// Opaque position to continue from; `None` at the end.
    pub next: Option<String>,
}

/// Table name of one shard's documents.
pub fn shard_table(meta: &IndexMeta, shard: u32) -> String {
    format!("kw_search_{}_{shard}", meta.uid)
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get_index(&self, name: &str) -> Result<Option<IndexMeta>>;
    async fn list_indexes(&self) -> Result<Vec<IndexMeta>>;
    /// Creates the catalog entry if the name is free; `false` if it is taken.
    async fn create_index(&self, meta: &IndexMeta) -> Result<bool>;
    /// Removes the catalog entry; `false` if there was none.
    async fn delete_index(&self, name: &str) -> Result<bool>;
    /// Writes rows, fenced by the shard owner's token: `Err(SearchError::NotOwner)` when a
    /// newer owner wrote one of these ids.
    async fn put_rows(&self, table: &str, rows: &[DocRow], token: i64) -> Result<()>;
    async fn get_rows(&self, table: &str, keys: &[String]) -> Result<Vec<Option<DocRow>>>;
    async fn scan_rows(&self, table: &str, after: Option<&str>, limit: usize) -> Result<RowPage>;
}

/// An in-memory store for tests and single-process experiments: nothing survives the process.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    indexes: BTreeMap<String, IndexMeta>,
    tables: HashMap<String, BTreeMap<String, (DocRow, i64)>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get_index(&self, name: &str) -> Result<Option<IndexMeta>> {
        Ok(self.lock().indexes.get(name).cloned())
    }
    async fn list_indexes(&self) -> Result<Vec<IndexMeta>> {
        Ok(self.lock().indexes.values().cloned().collect())
    }
    async fn create_index(&self, meta: &IndexMeta) -> Result<bool> {
        let mut g = self.lock();
        if g.indexes.contains_key(&meta.def.name) {
            return Ok(false);
        }
        g.indexes.insert(meta.def.name.clone(), meta.clone());
        Ok(true)
    }
    async fn delete_index(&self, name: &str) -> Result<bool> {
        Ok(self.lock().indexes.remove(name).is_some())
    }
    async fn put_rows(&self, table: &str, rows: &[DocRow], token: i64) -> Result<()> {
        let mut g = self.lock();
        let t = g.tables.entry(table.to_owned()).or_default();
        for r in rows {
            if let Some((_, stored)) = t.get(&r.key) {
                if *stored > token {
                    return Err(SearchError::NotOwner {
                        shard: table.to_owned(),
                        reason: format!("token {token} is older than the stored {stored}"),
                    });
                }
            }
        }
        for r in rows {
            t.insert(r.key.clone(), (r.clone(), token));
        }
        Ok(())
    }
    async fn get_rows(&self, table: &str, keys: &[String]) -> Result<Vec<Option<DocRow>>> {
        let g = self.lock();
        let t = g.tables.get(table);
        Ok(keys
            .iter()
            .map(|k| t.and_then(|t| t.get(k)).map(|(r, _)| r.clone()))
            .collect())
    }
    async fn scan_rows(&self, table: &str, after: Option<&str>, limit: usize) -> Result<RowPage> {
        let g = self.lock();
        let Some(t) = g.tables.get(table) else {
            return Ok(RowPage {
                rows: Vec::new(),
                next: None,
            });
        };
        let iter: Box<dyn Iterator<Item = (&String, &(DocRow, i64))>> = match after {
            Some(a) => Box::new(
                t.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            None => Box::new(t.iter()),
        };
        let rows: Vec<DocRow> = iter
            .take(limit.max(1))
            .map(|(_, (r, _))| r.clone())
            .collect();
        let next = if rows.len() >= limit.max(1) {
            rows.last().map(|r| r.key.clone())
        } else {
            None
        };
        Ok(RowPage { rows, next })
    }
}
