//! The owner's memory: sharded LRU maps of records, bounded in bytes. Locks are std mutexes
//! held only for map operations, never across an await.

use crate::stats::Counters;
use crate::table::TableState;
use keyward_dbc::{Key, Record, Value};
use keyward_ownership::Guard;
use lru::LruCache;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// One cached record of a key this node owns.
pub(crate) struct Entry {
    pub table: Arc<TableState>,
    pub pk: Key,
    /// `None`: absent from the table (a miss is cached too) or deleted.
    pub value: Option<Record>,
    pub guard: Arc<Guard>,
    pub size: usize,
    pub expires: Option<Instant>,
    /// Sequence number of the last write applied.
    pub seq: u64,
    /// Set while the record holds writes not yet flushed to the table.
    pub dirty_since: Option<Instant>,
    pub retry_at: Option<Instant>,
    pub attempts: u32,
    /// Serializes write-through writes of this key across their database await.
    pub wlock: Arc<tokio::sync::Mutex<()>>,
}

fn value_size(v: &Value) -> usize {
    32 + match v {
        Value::Text(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::Json(j) => j.to_string().len(),
        _ => 0,
    }
}

pub(crate) fn entry_size(key: &str, pk: &Key, value: Option<&Record>) -> usize {
    160 + key.len()
        + pk.iter().map(value_size).sum::<usize>()
        + value.map_or(0, |r| r.iter().map(value_size).sum())
}

impl Entry {
    pub fn is_dirty(&self) -> bool {
        self.dirty_since.is_some()
    }
}

pub(crate) struct Shard {
    pub lru: LruCache<Arc<str>, Entry>,
    /// Dirty entries pushed out of the LRU (or whose ownership lapsed): flushed, then dropped.
    pub evicting: HashMap<Arc<str>, Entry>,
    /// Dirty keys in `lru`.
    pub dirty: HashSet<Arc<str>>,
    pub bytes: usize,
}

impl Shard {
    /// Removes a key from the LRU with its accounting.
    pub fn take(&mut self, key: &str, c: &Counters) -> Option<Entry> {
        let e = self.lru.pop(key)?;
        self.bytes = self.bytes.saturating_sub(e.size);
        c.bytes.fetch_sub(e.size as i64, Ordering::Relaxed);
        c.entries.fetch_sub(1, Ordering::Relaxed);
        if self.dirty.remove(key) {
            c.dirty.fetch_sub(1, Ordering::Relaxed);
        }
        Some(e)
    }

    /// Inserts an entry; returns guards of entries to release (drop outside the lock) and
    /// whether dirty entries await an eviction flush.
    pub fn insert(
        &mut self,
        key: Arc<str>,
        e: Entry,
        budget: usize,
        c: &Counters,
    ) -> (Vec<Arc<Guard>>, bool) {
        let mut out = Vec::new();
        if let Some(old) = self.take(&key, c) {
            out.push(old.guard);
        }
        self.bytes += e.size;
        c.bytes.fetch_add(e.size as i64, Ordering::Relaxed);
        c.entries.fetch_add(1, Ordering::Relaxed);
        if e.is_dirty() && self.dirty.insert(key.clone()) {
            c.dirty.fetch_add(1, Ordering::Relaxed);
        }
        self.lru.put(key, e);
        let flush = self.enforce(budget, c, &mut out);
        (out, flush)
    }

    /// Evicts least recently used entries until the shard fits its budget. Clean entries go at
    /// once; dirty ones move to `evicting` for the flusher. Returns whether any did.
    pub fn enforce(&mut self, budget: usize, c: &Counters, out: &mut Vec<Arc<Guard>>) -> bool {
        let mut flush = false;
        while self.bytes > budget && self.lru.len() > 1 {
            let Some((k, _)) = self.lru.peek_lru() else {
                break;
            };
            let k = k.clone();
            let Some(e) = self.take(&k, c) else { break };
            c.evictions.fetch_add(1, Ordering::Relaxed);
            if e.is_dirty() {
                self.evicting.insert(k, e);
                flush = true;
            } else {
                out.push(e.guard);
            }
        }
        flush
    }

    /// Resizes an entry after its value changed.
    pub fn resize(&mut self, key: &str, size: usize, c: &Counters) {
        if let Some(e) = self.lru.peek_mut(key) {
            let old = e.size;
            e.size = size;
            self.bytes = (self.bytes + size).saturating_sub(old);
            c.bytes
                .fetch_add(size as i64 - old as i64, Ordering::Relaxed);
        }
    }

    pub fn mark_dirty(&mut self, key: &Arc<str>, now: Instant, c: &Counters) {
        if let Some(e) = self.lru.peek_mut(&**key) {
            if e.dirty_since.is_none() {
                e.dirty_since = Some(now);
            }
        }
        if self.dirty.insert(key.clone()) {
            c.dirty.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn mark_clean(&mut self, key: &str, c: &Counters) {
        if let Some(e) = self.lru.peek_mut(key) {
            e.dirty_since = None;
            e.retry_at = None;
            e.attempts = 0;
        }
        if self.dirty.remove(key) {
            c.dirty.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

pub(crate) struct Store {
    shards: Box<[Mutex<Shard>]>,
    mask: usize,
    pub budget: usize,
}

impl Store {
    pub fn new(shards: usize, max_bytes: u64) -> Store {
        let n = shards.clamp(1, 4096).next_power_of_two();
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    evicting: HashMap::new(),
                    dirty: HashSet::new(),
                    bytes: 0,
                })
            })
            .collect();
        Store {
            shards,
            mask: n - 1,
            budget: (max_bytes as usize / n).max(1),
        }
    }

    fn index(&self, key: &str) -> usize {
        // FNV-1a: cheap for short keys, and the shard count is a power of two.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key.as_bytes() {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        (h ^ (h >> 29)) as usize & self.mask
    }

    pub fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        lock(&self.shards[self.index(key)])
    }

    pub fn shards(&self) -> impl Iterator<Item = &Mutex<Shard>> {
        self.shards.iter()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
