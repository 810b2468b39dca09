//! The port table's storage, laid out for memory: the master's RAM per registered port is what
//! the service is measured by (at most 150 bytes at ten million ports, about 65 here).
//!
//! Every port is one 56-byte slot in fixed-size chunks (no doubling of one huge vector), with
//! its key inline when it is short (most keys are 20-30 bytes), its owner as a 32-bit session
//! number, and links to the owner's previous and next port, so that a session's ports can be
//! freed without a per-session key set. A hash index of 32-bit slot numbers (about 8 bytes per
//! port at the table's load factor) finds a slot by key.

use crate::types::Token;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::collections::HashMap;
use std::hash::BuildHasher;

/// "No slot": the end of a list.
pub(crate) const NIL: u32 = u32::MAX;

const CHUNK_BITS: u32 = 16;
const CHUNK: usize = 1 << CHUNK_BITS;
const INLINE: usize = 30;

/// A key, inline up to 30 bytes.
enum Key {
    Inline(u8, [u8; INLINE]),
    Heap(Box<[u8]>),
}

impl Key {
    fn new(s: &str) -> Key {
        let b = s.as_bytes();
        if b.len() <= INLINE {
            let mut a = [0u8; INLINE];
            a[..b.len()].copy_from_slice(b);
            Key::Inline(b.len() as u8, a)
        } else {
            Key::Heap(b.into())
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Key::Inline(n, a) => &a[..*n as usize],
            Key::Heap(b) => b,
        }
    }
}

struct Slot {
    key: Key,
    token: Token,
    /// Owning session; NIL while the slot is free.
    owner: u32,
    prev: u32,
    /// Next port of the same owner, or next free slot.
    next: u32,
    /// Someone asked to be told when this port is released (the list is in `watchers`).
    watched: bool,
}

/// A registered port as seen from outside.
pub(crate) struct PortRef {
    pub owner: u32,
    pub token: Token,
}

pub(crate) struct Ports {
    index: HashTable<u32>,
    chunks: Vec<Vec<Slot>>,
    free: u32,
    len: usize,
    hasher: DefaultHashBuilder,
    watchers: HashMap<u32, Vec<u64>>,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            index: HashTable::new(),
            chunks: Vec::new(),
            free: NIL,
            len: 0,
            hasher: DefaultHashBuilder::default(),
            watchers: HashMap::new(),
        }
    }
}

fn slot_ref(chunks: &[Vec<Slot>], i: u32) -> &Slot {
    &chunks[(i >> CHUNK_BITS) as usize][(i as usize) & (CHUNK - 1)]
}

fn slot_mut(chunks: &mut [Vec<Slot>], i: u32) -> &mut Slot {
    &mut chunks[(i >> CHUNK_BITS) as usize][(i as usize) & (CHUNK - 1)]
}

impl Ports {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The hash of `key` in the index: computed once, it serves a lookup and the insertion
    /// that follows when the port is free (the table must not change in between).
    pub(crate) fn hash_key(&self, key: &str) -> u64 {
        self.hash(key.as_bytes())
    }

    fn find_hashed(&self, h: u64, key: &str) -> Option<u32> {
        let kb = key.as_bytes();
        let chunks = &self.chunks;
        self.index
            .find(h, |&i| slot_ref(chunks, i).key.bytes() == kb)
            .copied()
    }

    fn find(&self, key: &str) -> Option<u32> {
        self.find_hashed(self.hash_key(key), key)
    }

    /// The port's owner and token, if registered.
    pub(crate) fn get(&self, key: &str) -> Option<PortRef> {
        self.get_hashed(self.hash_key(key), key)
    }

    /// [`get`](Self::get) with the key's [`hash_key`](Self::hash_key).
    pub(crate) fn get_hashed(&self, h: u64, key: &str) -> Option<PortRef> {
        self.find_hashed(h, key).map(|i| {
            let s = slot_ref(&self.chunks, i);
            PortRef {
                owner: s.owner,
                token: s.token,
            }
        })
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Adds `sid` to the sessions told when `key` is released.
    pub(crate) fn watch(&mut self, key: &str, sid: u64) {
        if let Some(i) = self.find(key) {
            slot_mut(&mut self.chunks, i).watched = true;
            let w = self.watchers.entry(i).or_default();
            if !w.contains(&sid) {
                w.push(sid);
            }
        }
    }

    /// Registers a port that is not in the table, at the head of its owner's list.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: &str, owner: u32, token: Token, head: &mut u32) {
        self.insert_hashed(self.hash_key(key), key, owner, token, head)
    }

    /// [`insert`](Self::insert) with the key's [`hash_key`](Self::hash_key).
    pub(crate) fn insert_hashed(
        &mut self,
        h: u64,
        key: &str,
        owner: u32,
        token: Token,
        head: &mut u32,
    ) {
        let slot = Slot {
            key: Key::new(key),
            token,
            owner,
            prev: NIL,
            next: *head,
            watched: false,
        };
        let i = if self.free != NIL {
            let i = self.free;
            let s = slot_mut(&mut self.chunks, i);
            self.free = s.next;
            *s = slot;
            i
        } else {
            if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                self.chunks.push(Vec::with_capacity(CHUNK));
            }
            let n = self.chunks.len() - 1;
            let c = &mut self.chunks[n];
            c.push(slot);
            ((n << CHUNK_BITS) | (c.len() - 1)) as u32
        };
        if *head != NIL {
            slot_mut(&mut self.chunks, *head).prev = i;
        }
        *head = i;
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.index
            .insert_unique(h, i, |&j| hasher.hash_one(slot_ref(chunks, j).key.bytes()));
        self.len += 1;
    }

    /// Removes `key` if `owner` holds it, unlinking it from the owner's list. Returns the
    /// sessions watching it.
    pub(crate) fn remove_owned(
        &mut self,
        key: &str,
        owner: u32,
        head: &mut u32,
    ) -> Option<Vec<u64>> {
        // One hash and one probe: the index entry found is the one removed.
        let kb = key.as_bytes();
        let h = self.hash(kb);
        let chunks = &self.chunks;
        let e = self
            .index
            .find_entry(h, |&j| slot_ref(chunks, j).key.bytes() == kb)
            .ok()?;
        let i = *e.get();
        if slot_ref(chunks, i).owner != owner {
            return None;
        }
        e.remove();
        Some(self.free_slot(i, head))
    }

    /// Frees every port of the list starting at `head`, calling `released(key, watchers)` for
    /// each watched one.
    pub(crate) fn remove_all(&mut self, mut head: u32, mut released: impl FnMut(&str, Vec<u64>)) {
        while head != NIL {
            let i = head;
            let watched = slot_ref(&self.chunks, i).watched;
            let key = watched.then(|| key_string(slot_ref(&self.chunks, i)));
            let w = self.remove_slot(i, &mut head);
            if let Some(k) = key {
                released(&k, w);
            }
        }
    }

    /// Removes slot `i` from the index and frees it. Returns the sessions watching it.
    fn remove_slot(&mut self, i: u32, head: &mut u32) -> Vec<u64> {
        let h = self.hash(slot_ref(&self.chunks, i).key.bytes());
        if let Ok(e) = self.index.find_entry(h, |&j| j == i) {
            e.remove();
        }
        self.free_slot(i, head)
    }

    /// Unlinks slot `i` (already out of the index) from its owner's list and frees it.
    fn free_slot(&mut self, i: u32, head: &mut u32) -> Vec<u64> {
        let (prev, next, watched) = {
            let s = slot_ref(&self.chunks, i);
            (s.prev, s.next, s.watched)
        };
        if prev != NIL {
            slot_mut(&mut self.chunks, prev).next = next;
        } else {
            *head = next;
        }
        if next != NIL {
            slot_mut(&mut self.chunks, next).prev = prev;
        }
        let s = slot_mut(&mut self.chunks, i);
        s.key = Key::Inline(0, [0; INLINE]);
        s.owner = NIL;
        s.watched = false;
        s.prev = NIL;
        s.next = self.free;
        self.free = i;
        self.len -= 1;
        if watched {
            self.watchers.remove(&i).unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    pub(crate) fn clear(&mut self) {
        *self = Ports::default();
    }
}

fn key_string(s: &Slot) -> String {
    String::from_utf8_lossy(s.key.bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stay_small() {
        assert_eq!(std::mem::size_of::<Key>(), 32);
        assert_eq!(std::mem::size_of::<Slot>(), 56);
    }

    #[test]
    fn insert_find_remove_and_lists() {
        let mut p = Ports::default();
        let (mut a, mut b) = (NIL, NIL);
        let long = format!("k/{}", "x".repeat(100));
        for i in 0..200_000u32 {
            let key = format!("k/{i}");
            if i % 2 == 0 {
                p.insert(&key, 1, i as Token, &mut a);
            } else {
                p.insert(&key, 2, i as Token, &mut b);
            }
        }
        p.insert(&long, 1, 7, &mut a);
        assert_eq!(p.len(), 200_001);
        assert_eq!(p.get("k/7").map(|r| (r.owner, r.token)), Some((2, 7)));
        assert_eq!(p.get(&long).map(|r| r.token), Some(7));
        assert!(p.remove_owned("k/7", 1, &mut a).is_none(), "not the owner");
        p.watch("k/8", 9);
        assert_eq!(p.remove_owned("k/8", 1, &mut a), Some(vec![9]));
        assert!(!p.contains("k/8"));
        let mut told = Vec::new();
        p.remove_all(b, |k, w| told.push((k.to_owned(), w)));
        assert_eq!(p.len(), 100_000);
        assert!(told.is_empty());
        assert!(p.contains("k/0") && !p.contains("k/1"));
        // Freed slots are reused.
        let chunks = p.chunks.len();
        let mut c = NIL;
        for i in 0..50_000u32 {
            p.insert(&format!("n/{i}"), 3, 1, &mut c);
        }
        assert_eq!(p.chunks.len(), chunks);
        p.watch(&long, 4);
        p.remove_all(a, |k, w| told.push((k.to_owned(), w)));
        assert_eq!(told, vec![(long.clone(), vec![4])]);
        assert_eq!(p.len(), 50_000);
        assert_eq!(p.get("n/49999").map(|r| r.owner), Some(3));
    }
}
