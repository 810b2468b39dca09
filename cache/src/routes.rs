//! Where a non-owner last found each key's owner: a hint, never a source of truth.
//!
//! A forwarded read looks a route up per key, so the table is laid out for that: keyed by the
//! key's 64-bit hash (the same hash the owner's map uses, computable without building the key
//! string), with a small number for the owner's address instead of a shared `Arc` whose count
//! every lookup on every thread would bump. Two keys whose hashes collide share one route; the
//! worst that does is send a call to a node that no longer owns the key, which answers with a
//! redirect, after which the route is corrected, exactly as when an owner moves.

use crate::store::lock;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

/// Most routes remembered; past this the table starts over (it is only a hint).
const MAX_ROUTES: usize = 1 << 18;
/// Most distinct owner addresses remembered (nodes restarting on new ports add more).
const MAX_ADDRS: usize = 1 << 12;

/// The keys are already well-mixed hashes: hashing them again would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | *b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
struct Table {
    by_hash: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    addrs: Vec<Arc<str>>,
}

impl Table {
    fn id_of(&mut self, addr: Arc<str>) -> u32 {
        if let Some(i) = self.addrs.iter().position(|a| *a == addr) {
            return i as u32;
        }
        if self.addrs.len() >= MAX_ADDRS {
            self.by_hash.clear();
            self.addrs.clear();
        }
        self.addrs.push(addr);
        (self.addrs.len() - 1) as u32
    }
}

/// Keys grouped by the owner their routes name, for one batched call per owner.
pub(crate) struct Grouped {
    pub by_owner: Vec<(Arc<str>, Vec<usize>)>,
    pub unknown: Vec<usize>,
}

#[derive(Default)]
pub(crate) struct Routes {
    table: Mutex<Table>,
}

impl Routes {
    pub fn get(&self, hash: u64) -> Option<Arc<str>> {
        let t = lock(&self.table);
        let id = *t.by_hash.get(&hash)?;
        t.addrs.get(id as usize).cloned()
    }

    pub fn remember(&self, hash: u64, addr: Arc<str>) {
        let mut t = lock(&self.table);
        if t.by_hash.len() >= MAX_ROUTES {
            t.by_hash.clear();
        }
        let id = t.id_of(addr);
        t.by_hash.insert(hash, id);
    }

    pub fn forget(&self, hash: u64) {
        lock(&self.table).by_hash.remove(&hash);
    }

    /// Groups the items `(position, key hash)` by remembered owner, under one lock.
    pub fn group(&self, items: impl IntoIterator<Item = (usize, u64)>) -> Grouped {
        let t = lock(&self.table);
        let mut ids: Vec<(u32, Vec<usize>)> = Vec::new();
        let mut unknown = Vec::new();
        for (i, hash) in items {
            match t.by_hash.get(&hash) {
                Some(&id) => match ids.iter_mut().find(|(x, _)| *x == id) {
                    Some((_, ix)) => ix.push(i),
                    None => ids.push((id, vec![i])),
                },
                None => unknown.push(i),
            }
        }
        let mut by_owner = Vec::with_capacity(ids.len());
        for (id, ix) in ids {
            match t.addrs.get(id as usize) {
                Some(a) => by_owner.push((a.clone(), ix)),
                None => unknown.extend(ix),
            }
        }
        Grouped { by_owner, unknown }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_group_by_owner_and_forget() {
        let r = Routes::default();
        let (a, b): (Arc<str>, Arc<str>) = ("10.0.0.1:1".into(), "10.0.0.2:1".into());
        r.remember(1, a.clone());
        r.remember(2, b.clone());
        r.remember(3, a.clone());
        let g = r.group([(0, 1), (1, 2), (2, 3), (3, 4)]);
        assert_eq!(
            g.by_owner,
            vec![(a.clone(), vec![0, 2]), (b.clone(), vec![1])]
        );
        assert_eq!(g.unknown, vec![3]);
        r.forget(1);
        assert_eq!(r.get(1), None);
        assert_eq!(r.get(3).as_deref(), Some("10.0.0.1:1"));
        // A moved owner replaces the route.
        r.remember(3, b.clone());
        assert_eq!(r.get(3), Some(b));
    }
}
