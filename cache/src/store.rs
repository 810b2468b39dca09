//! The owner's memory: sharded maps of records, bounded in bytes, evicting by CLOCK (second
//! chance). Locks are std mutexes held only for map operations, never across an await.
//!
//! A read of a random key among many is bound by cache misses, so the map is laid out for few
//! of them: an open-addressing index of 8-byte buckets (small enough to stay in the CPU's L2
//! for a few hundred thousand keys) points into a slab of slots whose first 128 bytes hold
//! everything a hit reads: the hash, the table, the pk's text inline, the value's pointer and
//! the guard. A hit sets a bit instead of relinking a list (LRU's move-to-front wrote two more
//! entries, each a likely miss).

use crate::keys::{hash_key, TAIL_MAX};
use crate::stats::Counters;
use crate::table::TableState;
use crate::SharedRecord;
use keyward_dbc::{Key, Record, Value};
use keyward_ownership::Guard;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Maps keyed by key strings on the write path: foldhash (seeded per process) instead of
/// SipHash, which cost a tenth of a forwarded put on the owner.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// One cached record of a key this node owns. `repr(C)`: the fields a read needs come first, in
/// the same cache lines as the map slot's header.
#[repr(C)]
pub(crate) struct Entry {
    /// `None`: absent from the table (a miss is cached too) or deleted. Set through
    /// [`Entry::set_value`], which keeps `text_at` in step.
    pub value: Option<SharedRecord>,
    /// Address of the first text or bytes value's buffer (0: none), kept beside `value` so
    /// that a read can fetch that buffer together with the record's own instead of after it.
    /// Only ever used as a prefetch hint, never dereferenced.
    pub text_at: usize,
    pub guard: Arc<Guard>,
    /// The coordinator's loss epoch when `guard` was last found valid (`u64::MAX`: never):
    /// while the epoch has not moved and the lease holds, a read need not touch the guard.
    pub valid_epoch: u64,
    pub expires: Option<Instant>,
    /// Set while the record holds writes not yet flushed to the table.
    pub dirty_since: Option<Instant>,
    pub table: Arc<TableState>,
    pub pk: Key,
    pub size: usize,
    /// Sequence number of the last write applied.
    pub seq: u64,
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

/// Bytes a record takes in memory (an estimate, also used to bound reply frames).
pub(crate) fn record_size(value: Option<&Record>) -> usize {
    value.map_or(0, |r| r.iter().map(value_size).sum())
}

pub(crate) fn entry_size(key: &str, pk: &Key, value: Option<&Record>) -> usize {
    160 + key.len() + pk.iter().map(value_size).sum::<usize>() + record_size(value)
}

/// See [`Entry::text_at`].
pub(crate) fn text_at(value: Option<&Record>) -> usize {
    value
        .into_iter()
        .flatten()
        .find_map(|v| match v {
            Value::Text(t) => Some(t.as_ptr() as usize),
            Value::Bytes(b) => Some(b.as_ptr() as usize),
            _ => None,
        })
        .unwrap_or(0)
}

/// Asks the CPU to start loading the cache line at `addr`. A hint only: a stale or zero
/// address costs a wasted fetch, never a fault.
#[inline(always)]
pub(crate) fn prefetch(addr: usize) {
    // SAFETY: a prefetch reads no memory the program sees and never faults, whatever the
    // address; SSE, which provides it, is part of the x86_64 baseline.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

impl Entry {
    pub fn set_value(&mut self, value: Option<SharedRecord>) {
        self.text_at = text_at(value.as_deref());
        self.value = value;
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty_since.is_some()
    }
}

/// One key in a [`Map`]. 128-byte aligned so that the header and `entry`'s read fields share
/// one adjacent-line pair.
#[repr(C, align(128))]
pub(crate) struct Slot {
    hash: u64,
    /// The entry's table, as an address: compared, never dereferenced.
    table: usize,
    /// Length of `tail`, or `NO_TAIL` when the key's pk text is not kept inline.
    tail_len: u8,
    /// CLOCK's reference bit: set by reads and writes, cleared as the hand passes.
    referenced: bool,
    /// The key's text after its table's prefix (`<pk>`), to recognize the key without reading
    /// `key` (another cache line).
    tail: [u8; TAIL_MAX],
    entry: Entry,
    key: Arc<str>,
}

const NO_TAIL: u8 = u8::MAX;

/// A bucket of the index: the hash's low 32 bits above, the slot number plus one below; 0 is
/// empty. Keeping hash bits here lets probing, deletion and growth skip the slots.
type Bucket = u64;

fn bucket(hash: u64, slot: usize) -> Bucket {
    (hash << 32) | (slot as u64 + 1)
}

fn slot_of(b: Bucket) -> usize {
    (b & 0xffff_ffff) as usize - 1
}

/// The keys of one shard: an open-addressing index (linear probing) over a slab of slots.
pub(crate) struct Map {
    index: Vec<Bucket>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    len: usize,
    hand: usize,
}

impl Map {
    pub fn new() -> Map {
        Map {
            index: vec![0; 16],
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            hand: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.index.len() - 1
    }

    /// The index position and slot of the key with this hash for which `eq` holds.
    fn find(&self, hash: u64, eq: impl Fn(&Slot) -> bool) -> Option<(usize, usize)> {
        let mask = self.mask();
        let tag = hash & 0xffff_ffff;
        let mut pos = hash as usize & mask;
        loop {
            let b = self.index[pos];
            if b == 0 {
                return None;
            }
            if b >> 32 == tag {
                let i = slot_of(b);
                if let Some(s) = &self.slots[i] {
                    if s.hash == hash && eq(s) {
                        return Some((pos, i));
                    }
                }
            }
            pos = (pos + 1) & mask;
        }
    }

    fn find_key(&self, key: &str) -> Option<(usize, usize)> {
        self.find(hash_key(key), |s| &*s.key == key)
    }

    fn slot(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, i: usize) -> Option<&mut Slot> {
        self.slots.get_mut(i).and_then(Option::as_mut)
    }

    /// The owner's read path: the key whose hash is `hash`, whose table is `table` and whose
    /// pk text is `tail`, found without its key string. Counts as a use.
    pub fn get_by_tail(
        &mut self,
        hash: u64,
        table: *const TableState,
        tail: &[u8],
    ) -> Option<&mut Entry> {
        let table = table as usize;
        let (_, i) = self.find(hash, |s| {
            s.table == table && s.tail_len != NO_TAIL && &s.tail[..s.tail_len as usize] == tail
        })?;
        let s = self.slot_mut(i)?;
        s.referenced = true;
        Some(&mut s.entry)
    }

    /// The key's entry; counts as a use.
    pub fn get(&mut self, key: &str) -> Option<&Entry> {
        self.get_mut(key).map(|e| &*e)
    }

    /// The key's entry; counts as a use.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        let (_, i) = self.find_key(key)?;
        let s = self.slot_mut(i)?;
        s.referenced = true;
        Some(&mut s.entry)
    }

    /// The key's entry, without counting a use.
    pub fn peek(&self, key: &str) -> Option<&Entry> {
        let (_, i) = self.find_key(key)?;
        self.slot(i).map(|s| &s.entry)
    }

    /// The key's entry, without counting a use.
    pub fn peek_mut(&mut self, key: &str) -> Option<&mut Entry> {
        let (_, i) = self.find_key(key)?;
        self.slot_mut(i).map(|s| &mut s.entry)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.find_key(key).is_some()
    }

    /// Inserts the key (replacing its entry if present, which is returned). A new key starts
    /// referenced, so that the hand passes it once before it can be evicted.
    pub fn put(&mut self, key: Arc<str>, entry: Entry) -> Option<Entry> {
        if let Some((_, i)) = self.find_key(&key) {
            let s = self.slot_mut(i)?;
            s.referenced = true;
            return Some(std::mem::replace(&mut s.entry, entry));
        }
        if (self.len + 1) * 4 > self.index.len() * 3 {
            self.grow();
        }
        let hash = hash_key(&key);
        let prefix = &entry.table.key_prefix;
        let mut tail = [0u8; TAIL_MAX];
        let mut tail_len = NO_TAIL;
        if !prefix.is_empty() {
            if let Some(t) = key.strip_prefix(prefix.as_str()) {
                if let Some(dst) = tail.get_mut(..t.len()) {
                    dst.copy_from_slice(t.as_bytes());
                    tail_len = t.len() as u8;
                }
            }
        }
        let slot = Slot {
            hash,
            table: Arc::as_ptr(&entry.table) as usize,
            tail_len,
            referenced: true,
            tail,
            entry,
            key,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.place(bucket(hash, i));
        self.len += 1;
        None
    }

    fn place(&mut self, b: Bucket) {
        let mask = self.mask();
        let mut pos = (b >> 32) as usize & mask;
        while self.index[pos] != 0 {
            pos = (pos + 1) & mask;
        }
        self.index[pos] = b;
    }

    fn grow(&mut self) {
        let doubled = vec![0; self.index.len() * 2];
        let old = std::mem::replace(&mut self.index, doubled);
        for b in old.into_iter().filter(|b| *b != 0) {
            self.place(b);
        }
    }

    /// Removes the key and returns its entry.
    pub fn pop(&mut self, key: &str) -> Option<Entry> {
        let (pos, i) = self.find_key(key)?;
        self.remove_at(pos, i).map(|(_, e)| e)
    }

    fn remove_at(&mut self, pos: usize, i: usize) -> Option<(Arc<str>, Entry)> {
        // Backward-shift deletion: later buckets of the run move into the gap unless their home
        // lies after it, so probing never needs tombstones.
        let mask = self.mask();
        let mut gap = pos;
        let mut j = pos;
        loop {
            j = (j + 1) & mask;
            let b = self.index[j];
            if b == 0 {
                break;
            }
            let home = (b >> 32) as usize & mask;
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(gap) & mask) {
                self.index[gap] = b;
                gap = j;
            }
        }
        self.index[gap] = 0;
        let s = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        self.len -= 1;
        Some((s.key, s.entry))
    }

    /// The key CLOCK would evict next (not `keep`): the hand clears reference bits until it
    /// finds an entry without one.
    pub fn victim(&mut self, keep: Option<&str>) -> Option<Arc<str>> {
        let n = self.slots.len();
        if self.len == 0 || n == 0 {
            return None;
        }
        // Two full turns clear every bit, so a third finds a victim if one is allowed.
        for _ in 0..3 * n {
            let i = self.hand % n;
            self.hand = i + 1;
            if let Some(s) = &mut self.slots[i] {
                if keep == Some(&*s.key) {
                    continue;
                }
                if s.referenced {
                    s.referenced = false;
                } else {
                    return Some(s.key.clone());
                }
            }
        }
        None
    }

    /// Every key held.
    pub fn keys(&self) -> Vec<Arc<str>> {
        self.slots.iter().flatten().map(|s| s.key.clone()).collect()
    }

    pub fn clear(&mut self) {
        self.index.iter_mut().for_each(|b| *b = 0);
        self.slots.clear();
        self.free.clear();
        self.len = 0;
        self.hand = 0;
    }
}

pub(crate) struct Shard {
    pub map: Map,
    /// Dirty entries pushed out of the LRU (or whose ownership lapsed): flushed, then dropped.
    pub evicting: FastMap<Arc<str>, Entry>,
    /// Dirty keys in `map`.
    pub dirty: FastSet<Arc<str>>,
    /// Keys in the order they became dirty, with that moment (`dirty_since`): the flusher pops
    /// what is due from the front instead of visiting every dirty key at every tick. An item
    /// whose key was flushed meanwhile (its `dirty_since` differs) is skipped when popped.
    pub due: VecDeque<(Instant, Arc<str>)>,
    /// Dirty keys whose flush failed, waiting for their `retry_at`.
    pub retry: Vec<Arc<str>>,
    pub bytes: usize,
}

impl Shard {
    /// Removes a key from the LRU with its accounting.
    pub fn take(&mut self, key: &str, c: &Counters) -> Option<Entry> {
        let e = self.map.pop(key)?;
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
        if let Some(t) = e.dirty_since {
            if self.dirty.insert(key.clone()) {
                c.dirty.fetch_add(1, Ordering::Relaxed);
            }
            self.due.push_back((t, key.clone()));
        }
        let keep = key.clone();
        if let Some(old) = self.map.put(key, e) {
            out.push(old.guard);
        }
        let flush = self.enforce(budget, c, &mut out, Some(&keep));
        (out, flush)
    }

    /// Evicts entries CLOCK picks (never `keep`, the key being used) until the shard fits its
    /// budget. Clean entries go at once; dirty ones move to `evicting` for the flusher. Returns
    /// whether any did.
    pub fn enforce(
        &mut self,
        budget: usize,
        c: &Counters,
        out: &mut Vec<Arc<Guard>>,
        keep: Option<&str>,
    ) -> bool {
        let mut flush = false;
        while self.bytes > budget && self.map.len() > 1 {
            let Some(k) = self.map.victim(keep) else {
                break;
            };
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

    /// Accounts for an entry whose size went from `old` to `size` (already set on the entry).
    pub fn resized(&mut self, old: usize, size: usize, c: &Counters) {
        self.bytes = (self.bytes + size).saturating_sub(old);
        c.bytes
            .fetch_add(size as i64 - old as i64, Ordering::Relaxed);
    }

    pub fn mark_clean(&mut self, key: &str, c: &Counters) {
        if let Some(e) = self.map.peek_mut(key) {
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
                    map: Map::new(),
                    evicting: FastMap::default(),
                    dirty: FastSet::default(),
                    due: VecDeque::new(),
                    retry: Vec::new(),
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

    pub fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        self.shard_of(hash_key(key))
    }

    /// The shard of the key with this [`hash_key`]. Its bits (from bit 52) are disjoint from
    /// the ones a map's index uses (the low 32).
    pub fn shard_of(&self, hash: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shards[(hash >> 52) as usize & self.mask])
    }

    pub fn shards(&self) -> impl Iterator<Item = &Mutex<Shard>> {
        self.shards.iter()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{key_prefix, KeyHash, Tail};
    use crate::table::TableOptions;
    use keyward_dbc::{Db, Field, FieldType, TableDef};
    use keyward_ownership::{Claim, InProcessHub, SessionConfig};

    fn entry(ts: &Arc<TableState>, n: i64, guard: Arc<Guard>) -> Entry {
        Entry {
            value: Some(Arc::new(vec![Value::I64(n)])),
            text_at: 0,
            guard,
            valid_epoch: u64::MAX,
            expires: None,
            dirty_since: None,
            table: ts.clone(),
            pk: vec![Value::I64(n)],
            size: 1,
            seq: 0,
            retry_at: None,
            attempts: 0,
            wlock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Keys stay findable, by string and by (table, pk text), through growth and removals (the
    /// index's backward-shift deletion), and CLOCK evicts every key in turn but `keep`.
    #[tokio::test]
    async fn the_map_finds_every_key_through_growth_and_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}?mode=rwc", dir.path().join("m.db").display());
        let db = Db::connect(&url).await.expect("connect");
        let def = TableDef {
            name: "t".into(),
            fields: vec![Field::new("id", FieldType::I64)],
            primary_key: vec!["id".into()],
        };
        let table = db.define_table(def.clone()).await.expect("define");
        let mut ts = TableState::new(def, table, TableOptions::default()).expect("table");
        ts.key_prefix = key_prefix("d", "t");
        ts.prefix_hash = KeyHash::START.bytes(ts.key_prefix.as_bytes());
        let ts = Arc::new(ts);
        let coord = InProcessHub::new()
            .connect(SessionConfig::default())
            .await
            .expect("session");
        let n = 3000i64;
        let keys: Vec<String> = (0..n).map(|i| format!("{}{i}", ts.key_prefix)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let guards: Vec<Arc<Guard>> = coord
            .claim(&refs)
            .await
            .expect("claim")
            .into_iter()
            .map(|c| match c {
                Claim::Granted(g) => Arc::new(g),
                Claim::OwnedBy(o) => panic!("owned by {o:?}"),
            })
            .collect();
        let mut m = Map::new();
        for (i, g) in guards.iter().enumerate() {
            assert!(m
                .put(Arc::from(keys[i].as_str()), entry(&ts, i as i64, g.clone()))
                .is_none());
        }
        assert_eq!(m.len(), n as usize);
        // Remove every third key, in an order unrelated to the index's.
        for i in (0..n).rev().filter(|i| i % 3 == 0) {
            assert!(m.pop(&keys[i as usize]).is_some());
        }
        for i in 0..n {
            let key = &keys[i as usize];
            let pk = [Value::I64(i)];
            let tail = Tail::of(&pk).expect("tail");
            let hash = ts.prefix_hash.bytes(tail.as_bytes()).finish();
            let by_tail = m
                .get_by_tail(hash, Arc::as_ptr(&ts), tail.as_bytes())
                .map(|e| e.pk.clone());
            if i % 3 == 0 {
                assert!(!m.contains(key) && by_tail.is_none(), "{key} was removed");
            } else {
                assert_eq!(m.peek(key).map(|e| e.pk.clone()), Some(pk.to_vec()));
                assert_eq!(by_tail, Some(pk.to_vec()));
            }
        }
        // Every key left was just read (referenced): the hand clears bits, then evicts each
        // key once, never `keep`.
        let keep = keys[2].as_str();
        let mut seen = HashSet::new();
        for _ in 0..m.len() {
            let v = m.victim(Some(keep)).expect("a victim");
            assert_ne!(&*v, keep);
            assert!(seen.insert(v.clone()));
            m.pop(&v);
            if m.len() == 1 {
                break;
            }
        }
        assert_eq!(m.len(), 1);
        assert!(m.contains(keep) && m.victim(Some(keep)).is_none());
    }
}
