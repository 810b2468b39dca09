//! One pass over the matching documents of a shard: the top hits in the requested order
//! (after a cursor position, if any), the total count and the facet counts.
//!
//! Sort keys are encoded so that a larger key always comes first: each element is 0 for a
//! missing value (last in both directions) or 1 + an order-preserving u64 (flipped for
//! ascending order). Ties are broken by the id hash, so the order is total and stable.

use crate::query::{SortDir, SortSource};
use serde::{Deserialize, Serialize};
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

pub const KEY_LEN: usize = crate::query::MAX_SORT;
pub type SortKey = [u128; KEY_LEN];

/// A position in the result order: a hit's key and id hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub key: SortKey,
    pub idh: u64,
}

impl Position {
    pub fn to_strings(self) -> (Vec<String>, String) {
        (
            self.key.iter().map(|k| format!("{k:x}")).collect(),
            format!("{:x}", self.idh),
        )
    }
    pub fn from_strings(key: &[String], idh: &str) -> Option<Position> {
        if key.len() != KEY_LEN {
            return None;
        }
        let mut k = [0u128; KEY_LEN];
        for (slot, s) in k.iter_mut().zip(key) {
            *slot = u128::from_str_radix(s, 16).ok()?;
        }
        Some(Position {
            key: k,
            idh: u64::from_str_radix(idh, 16).ok()?,
        })
    }
}

/// Serialized form of a [`Position`] (hex strings, as JSON numbers cannot hold u128).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePosition {
    pub key: Vec<String>,
    pub idh: String,
}

impl From<Position> for WirePosition {
    fn from(p: Position) -> Self {
        let (key, idh) = p.to_strings();
        WirePosition { key, idh }
    }
}

impl WirePosition {
    pub fn position(&self) -> Option<Position> {
        Position::from_strings(&self.key, &self.idh)
    }
}

fn ordered_i64(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

fn ordered_f64(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

fn encode(v: Option<u64>, dir: SortDir) -> u128 {
    match v {
        None => 0,
        Some(o) => match dir {
            SortDir::Desc => 1 + o as u128,
            SortDir::Asc => 1 + (u64::MAX - o) as u128,
        },
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RawHit {
    pub pos: Position,
    pub score: Score,
    pub addr: DocAddress,
}

impl PartialEq for RawHit {
    fn eq(&self, o: &Self) -> bool {
        self.pos == o.pos
    }
}
impl Eq for RawHit {}
impl PartialOrd for RawHit {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for RawHit {
    fn cmp(&self, o: &Self) -> Ordering {
        self.pos.cmp(&o.pos)
    }
}

/// What one pass yields.
#[derive(Debug, Default)]
pub struct Fruit {
    /// Best first.
    pub hits: Vec<RawHit>,
    pub total: u64,
    pub facets: BTreeMap<String, BTreeMap<String, u64>>,
}

pub struct TopCollector {
    pub sort: Vec<(SortSource, SortDir)>,
    pub scoring: bool,
    pub k: usize,
    pub after: Option<Position>,
    pub facets: Vec<String>,
}

enum KeyCol {
    Score(SortDir),
    I64(Option<Column<i64>>, SortDir),
    F64(Option<Column<f64>>, SortDir),
    Date(Option<Column<tantivy::DateTime>>, SortDir),
}

pub struct SegTop {
    seg: SegmentOrdinal,
    keys: Vec<KeyCol>,
    idh: Option<Column<u64>>,
    k: usize,
    after: Option<Position>,
    heap: BinaryHeap<Reverse<RawHit>>,
    /// Ordered by score alone with no cursor: once the heap is full, a document scoring below
    /// its weakest hit is out before any sort key is built (most documents of a large match).
    score_floor: bool,
    floor: Score,
    total: u64,
    facets: Vec<(String, Option<StrColumn>, Vec<u64>)>,
}

impl Collector for TopCollector {
    type Fruit = Fruit;
    type Child = SegTop;

    fn for_segment(&self, seg: SegmentOrdinal, reader: &SegmentReader) -> tantivy::Result<SegTop> {
        let ff = reader.fast_fields();
        let mut keys = Vec::with_capacity(self.sort.len());
        for (src, dir) in &self.sort {
            keys.push(match src {
                SortSource::Score => KeyCol::Score(*dir),
                SortSource::I64(n) => KeyCol::I64(ff.column_opt::<i64>(n)?, *dir),
                SortSource::F64(n) => KeyCol::F64(ff.column_opt::<f64>(n)?, *dir),
                SortSource::Date(n) => KeyCol::Date(ff.column_opt::<tantivy::DateTime>(n)?, *dir),
            });
        }
        let mut facets = Vec::new();
        for name in &self.facets {
            let col = ff.str(name)?;
            let n = col.as_ref().map(|c| c.num_terms()).unwrap_or(0);
            facets.push((name.clone(), col, vec![0u64; n]));
        }
        Ok(SegTop {
            seg,
            keys,
            idh: ff.column_opt::<u64>(crate::schema::F_IDH)?,
            k: self.k,
            after: self.after,
            heap: BinaryHeap::with_capacity(self.k.min(4096) + 1),
            score_floor: self.after.is_none()
                && matches!(self.sort.as_slice(), [(SortSource::Score, SortDir::Desc)]),
            floor: Score::NEG_INFINITY,
            total: 0,
            facets,
        })
    }

    fn requires_scoring(&self) -> bool {
        self.scoring
    }

    fn merge_fruits(&self, fruits: Vec<Fruit>) -> tantivy::Result<Fruit> {
        let mut out = Fruit::default();
        let mut hits = Vec::new();
        for f in fruits {
            out.total += f.total;
            hits.extend(f.hits);
            for (field, counts) in f.facets {
                let slot = out.facets.entry(field).or_default();
                for (v, c) in counts {
                    *slot.entry(v).or_default() += c;
                }
            }
        }
        hits.sort_by(|a, b| b.cmp(a));
        hits.truncate(self.k);
        out.hits = hits;
        Ok(out)
    }
}

impl SegmentCollector for SegTop {
    type Fruit = Fruit;

    fn collect(&mut self, doc: DocId, score: Score) {
        self.total += 1;
        for (_, col, counts) in &mut self.facets {
            if let Some(col) = col {
                for ord in col.term_ords(doc) {
                    if let Some(c) = counts.get_mut(ord as usize) {
                        *c += 1;
                    }
                }
            }
        }
        if self.k == 0 || score < self.floor {
            return;
        }
        let mut key = [0u128; KEY_LEN];
        for (slot, kc) in key.iter_mut().zip(&self.keys) {
            *slot = match kc {
                KeyCol::Score(d) => encode(Some(ordered_f64(f64::from(score))), *d),
                KeyCol::I64(c, d) => {
                    encode(c.as_ref().and_then(|c| c.first(doc)).map(ordered_i64), *d)
                }
                KeyCol::F64(c, d) => {
                    encode(c.as_ref().and_then(|c| c.first(doc)).map(ordered_f64), *d)
                }
                KeyCol::Date(c, d) => encode(
                    c.as_ref()
                        .and_then(|c| c.first(doc))
                        .map(|t| ordered_i64(t.into_timestamp_micros())),
                    *d,
                ),
            };
        }
        // Most documents lose on the sort key alone: read the id hash (a column lookup) only
        // for a key that ties the cursor or the heap's weakest hit, or that enters the heap.
        if let Some(after) = &self.after {
            if key > after.key {
                return;
            }
        }
        let full = self.heap.len() >= self.k;
        if full {
            if let Some(Reverse(min)) = self.heap.peek() {
                if key < min.pos.key {
                    return;
                }
            }
        }
        let idh = self.idh.as_ref().and_then(|c| c.first(doc)).unwrap_or(0);
        let pos = Position { key, idh };
        if let Some(after) = &self.after {
            if pos >= *after {
                return;
            }
        }
        if full {
            match self.heap.peek() {
                Some(Reverse(min)) if pos > min.pos => {
                    self.heap.pop();
                }
                _ => return,
            }
        }
        self.heap.push(Reverse(RawHit {
            pos,
            score,
            addr: DocAddress::new(self.seg, doc),
        }));
        if self.score_floor && self.heap.len() >= self.k {
            if let Some(Reverse(min)) = self.heap.peek() {
                self.floor = min.score;
            }
        }
    }

    fn harvest(self) -> Fruit {
        let mut facets = BTreeMap::new();
        for (name, col, counts) in self.facets {
            let mut m = BTreeMap::new();
            if let Some(col) = col {
                let mut s = String::new();
                for (ord, c) in counts.into_iter().enumerate() {
                    if c > 0 && col.ord_to_str(ord as u64, &mut s).unwrap_or(false) {
                        m.insert(s.clone(), c);
                    }
                }
            }
            facets.insert(name, m);
        }
        let mut hits: Vec<RawHit> = self.heap.into_iter().map(|Reverse(h)| h).collect();
        hits.sort_by(|a, b| b.cmp(a));
        Fruit {
            hits,
            total: self.total,
            facets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_keep_order() {
        let xs = [-1e9, -2.5, -0.0, 0.0, 1.0, 3.5, 1e12];
        for w in xs.windows(2) {
            assert!(ordered_f64(w[0]) <= ordered_f64(w[1]));
        }
        let is = [i64::MIN, -5, 0, 7, i64::MAX];
        for w in is.windows(2) {
            assert!(ordered_i64(w[0]) < ordered_i64(w[1]));
        }
        assert!(encode(Some(5), SortDir::Desc) > encode(Some(4), SortDir::Desc));
        assert!(encode(Some(4), SortDir::Asc) > encode(Some(5), SortDir::Asc));
        assert!(encode(Some(0), SortDir::Asc) > encode(None, SortDir::Asc));
        assert!(encode(Some(u64::MAX), SortDir::Asc) > encode(None, SortDir::Asc));
    }
}
