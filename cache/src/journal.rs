//! The write-ahead journal, log-structured: each node appends one row per group commit to its
//! own log in the cache's database, and a write is acknowledged once that row is committed.
//!
//! A keyed journal (one row per cache key) cost a B-tree page per key per commit; an appended
//! row costs one write of the batch's bytes. The price is paid when a node dies: its log must
//! be *adopted* (its latest entry per key written to the tables) before anyone serves a key it
//! held. `adopt.rs` does that; this module writes the log and keeps it short.
//!
//! Format (`FORMAT` = 1). The log table holds rows `(row, journal, slot, gen, seq, head, body)`
//! keyed by `row = "<journal>#<slot>"` with `slot = seq mod SLOTS`: a ring, rewritten in place, so that
//! no tombstones pile up. `gen` counts the journal's openings (rows of older openings are
//! dead), `seq` numbers the rows of one opening from 0 without gaps, and `head` is the oldest
//! row that still held an unflushed entry when the row was written. `body` is one format byte,
//! then postcard-encoded [`Item`]s back to back. The registry table (`<log>_journals`) holds
//! per journal its current `gen`, whether it is `clean` (nothing unflushed), and an `anchor`
//! (a past head, rewritten every `SLOTS / 4` rows) from which a reader finds the live rows.
//!
//! Rules that make adoption safe (DESIGN.md section 4):
//! - A node writes its log only while it holds the port `cache/journal/<node>` (in the same
//!   session as its keys), fenced by that port's token; adoption claims the port first.
//! - A key's port is released only after its flush *and* the row recording that flush (a
//!   `Forget` item) are durable ([`JReq::Release`]), so an adopter never replays an image
//!   over what someone wrote after the key changed hands.
//! - The head moves past a row only once every entry in it is flushed; when the live rows
//!   reach half the ring, the entries pinning the oldest rows are written again at the tail
//!   (compaction), so one key that cannot be flushed never stops the log.

use crate::error::CacheError;
use crate::stats::Counters;
use crate::store::FastMap;
use crate::SharedRecord;
use keyward_dbc::{Db, DbcError, Field, FieldType, Key, Record, Table, TableDef, Value};
use keyward_ownership::{Claim, Coordinator, Guard, Token};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Requests taken from the queue into one group commit.
const MAX_BATCH: usize = 8192;
/// A body past this size goes on in the next row (DBC refuses values over 4 MiB).
const MAX_ROW_BYTES: usize = 1 << 20;
pub(crate) const FORMAT: u8 = 1;

/// The log table's definition (`name` is `[cache] journal_table`).
pub fn log_def(name: &str) -> TableDef {
    TableDef {
        name: name.to_owned(),
        fields: vec![
            Field::new("row", FieldType::Text),
            Field::new("journal", FieldType::Text),
            Field::new("slot", FieldType::I64),
            Field::new("gen", FieldType::I64),
            Field::new("seq", FieldType::I64),
            Field::new("head", FieldType::I64),
            Field::new("body", FieldType::Bytes),
        ],
        // One text key rather than (journal, slot): every backend takes it alike (the MongoDB
        // emulator of the test suite cannot compare an embedded `_id` document).
        primary_key: vec!["row".into()],
    }
}

/// The registry of journals beside the log table `name`.
pub fn registry_def(name: &str) -> TableDef {
    TableDef {
        name: format!("{name}_journals"),
        fields: vec![
            Field::new("journal", FieldType::Text),
            Field::new("writer", FieldType::Text),
            Field::new("gen", FieldType::I64),
            Field::new("clean", FieldType::Bool),
            Field::new("anchor", FieldType::I64),
            Field::new("slots", FieldType::I64),
        ],
        primary_key: vec!["journal".into()],
    }
}

/// A failed write of `journal`'s registry row, fenced out by a newer token named for what it
/// means: the port was just granted to us, so a newer token can only come from a token space
/// that went back.
pub(crate) fn registry_error(journal: &str, e: DbcError) -> CacheError {
    match e {
        DbcError::Fenced { stored, given, .. } => CacheError::TokensWentBack {
            journal: journal.to_owned(),
            stored,
            given,
        },
        e => CacheError::Db(e),
    }
}

/// The key of a journal's ring row.
pub(crate) fn row_key(journal: &str, slot: u64) -> Value {
    Value::Text(format!("{journal}#{slot}"))
}

/// The table, in the cache's database, that names the database holding the journal.
pub fn home_def(name: &str) -> TableDef {
    TableDef {
        name: format!("{name}_home"),
        fields: vec![
            Field::new("name", FieldType::Text),
            Field::new("database", FieldType::Text),
        ],
        primary_key: vec!["name".into()],
    }
}

/// Records the journal's database (`jdb_id`) in the cache's database, or checks it against
/// the one recorded: nodes whose journals live in different databases would not find each
/// other's journals, and a dead node's acknowledged writes would be lost.
pub(crate) async fn check_home(
    home: &Table,
    journal_table: &str,
    jdb_id: &str,
) -> crate::Result<()> {
    let key = [Value::Text(journal_table.to_owned())];
    let row = vec![
        Value::Text(journal_table.to_owned()),
        Value::Text(jdb_id.to_owned()),
    ];
    for _ in 0..3 {
        match home.get(&key).await? {
            Some(r) => {
                return match r.get(1) {
                    Some(Value::Text(id)) if id == jdb_id => Ok(()),
                    Some(Value::Text(id)) => Err(CacheError::Config(format!(
                        "the journal of this cache's nodes is in database {id}, but journal_url \
                         names database {jdb_id}: every node must use the same journal database \
                         (to move it, stop every node cleanly, then delete the row {journal_table:?} \
                         of table {journal_table}_home)"
                    ))),
                    _ => Err(CacheError::Config(format!(
                        "unreadable row {journal_table:?} in table {journal_table}_home"
                    ))),
                };
            }
            None => {
                if home.compare_and_put(&key, None, Some(&row)).await? {
                    return Ok(());
                }
            }
        }
    }
    Err(CacheError::Config(format!(
        "table {journal_table}_home keeps changing; cannot record the journal's database"
    )))
}

/// The port a journal's writer holds.
pub(crate) fn journal_port(journal: &str) -> String {
    format!("cache/journal/{journal}")
}

pub(crate) fn registry_row(
    journal: &str,
    writer: &str,
    gen: i64,
    clean: bool,
    anchor: u64,
    slots: u64,
) -> Record {
    vec![
        Value::Text(journal.to_owned()),
        Value::Text(writer.to_owned()),
        Value::I64(gen),
        Value::Bool(clean),
        Value::I64(anchor as i64),
        Value::I64(slots as i64),
    ]
}

/// One acknowledged write: the key's whole image after it (None: deleted).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LogEntry {
    // Shared with the cache's map and table state (serde's `rc`: written as plain strings).
    pub key: Arc<str>,
    pub table: Arc<str>,
    pub token: Token,
    pub seq: u64,
    pub pk: Key,
    pub image: Option<SharedRecord>,
}

/// What a log body holds, in order.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Item {
    Entry(LogEntry),
    /// The key's table row holds its image of `seq` (or newer): earlier entries are done.
    Forget(String, u64),
}

/// The same, written from borrowed parts (identical encoding).
#[derive(Serialize)]
enum ItemRef<'a> {
    Entry(&'a LogEntry),
    Forget(&'a str, u64),
}

pub(crate) fn decode_body(body: &[u8]) -> Result<Vec<Item>, String> {
    let Some((&fmt, mut rest)) = body.split_first() else {
        return Err("empty body".into());
    };
    if fmt != FORMAT {
        return Err(format!("body format {fmt}, this version reads {FORMAT}"));
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (item, r) = postcard::take_from_bytes::<Item>(rest).map_err(|e| e.to_string())?;
        out.push(item);
        rest = r;
    }
    Ok(out)
}

pub(crate) enum JReq {
    /// Make this entry durable, then answer `done`.
    Put {
        key: Arc<str>,
        entry: LogEntry,
        done: oneshot::Sender<Result<(), CacheError>>,
    },
    /// The table now holds the key's image of `seq`.
    Forget { key: Arc<str>, seq: u64 },
    /// Ports to release once every `Forget` queued before is durable.
    Release(Vec<Arc<Guard>>),
    /// Answered once everything queued before it is committed.
    Barrier(oneshot::Sender<()>),
    /// Graceful stop: marks the journal clean if nothing is unflushed, and hands its port back.
    Close(oneshot::Sender<Closed>),
}

pub(crate) struct Closed {
    pub guard: Option<Arc<Guard>>,
    pub clean: bool,
}

/// Where this node's unflushed entries sit.
struct Pinned {
    /// (row seq, entry seq) per row holding an unflushed entry of the key.
    pins: Vec<(u64, u64)>,
    latest: LogEntry,
}

struct Open {
    /// The journal in use: a clean one recycled, or one named after this node.
    id: String,
    guard: Arc<Guard>,
    gen: i64,
    next: u64,
    anchor_at: u64,
}

pub(crate) struct Journal {
    /// The cache's database (adoption replays into its tables).
    pub db: Db,
    /// The database of the log and registry (the cache's own unless `journal_url` says).
    pub jdb: Db,
    pub log: Table,
    pub registry: Table,
    pub coord: Coordinator,
    /// This node's id: the name of its first journal, and the `writer` of any it opens.
    pub node: String,
    pub timeout: Duration,
    /// Ring size; compaction starts at half of it, the anchor moves every quarter.
    pub slots: u64,
    pub c: Arc<Counters>,
    /// The journal port's guard, shared so that a crash simulation can leak it.
    pub port: Arc<Mutex<Option<Arc<Guard>>>>,
}

#[derive(Default)]
struct State {
    open: Option<Open>,
    /// Live rows from the head: (seq, unflushed entries in it).
    rows: VecDeque<(u64, usize)>,
    pend: FastMap<Arc<str>, Pinned>,
    /// Forgets not written yet.
    forgets: Vec<(Arc<str>, u64)>,
    later: Vec<Arc<Guard>>,
}

impl State {
    fn head(&self) -> u64 {
        match (self.rows.front(), &self.open) {
            (Some(r), _) => r.0,
            (None, Some(o)) => o.next,
            (None, None) => 0,
        }
    }

    fn unpin(&mut self, seq_row: u64) {
        if let Some(front) = self.rows.front() {
            let i = seq_row.wrapping_sub(front.0) as usize;
            if let Some(r) = self.rows.get_mut(i) {
                r.1 = r.1.saturating_sub(1);
            }
        }
    }

    /// The table holds the key's image of `seq`: entries up to it pin nothing any more.
    fn forget(&mut self, key: &Arc<str>, seq: u64) {
        let Some(p) = self.pend.get_mut(key) else {
            return;
        };
        let mut gone = Vec::new();
        p.pins.retain(|&(row, s)| {
            if s <= seq {
                gone.push(row);
                false
            } else {
                true
            }
        });
        if p.pins.is_empty() {
            self.pend.remove(key);
        }
        for row in gone {
            self.unpin(row);
        }
    }

    fn truncate(&mut self) {
        while self.rows.front().is_some_and(|r| r.1 == 0) {
            self.rows.pop_front();
        }
    }

    fn pin(&mut self, key: Arc<str>, row: u64, entry: LogEntry) {
        use std::collections::hash_map::Entry as E;
        match self.pend.entry(key) {
            E::Occupied(mut o) => {
                let p = o.get_mut();
                p.pins.push((row, entry.seq));
                if p.latest.seq <= entry.seq {
                    p.latest = entry;
                }
            }
            E::Vacant(v) => {
                v.insert(Pinned {
                    pins: vec![(row, entry.seq)],
                    latest: entry,
                });
            }
        }
    }
}

impl Journal {
    /// Takes a journal and starts a new generation of its log: a clean journal whose port is
    /// free (left by a node that stopped), so that the journals of a cluster whose nodes get
    /// fresh ids at each start stay as many as its nodes; else the one named after this node,
    /// adopting what an earlier life of it left unflushed.
    async fn open(&self, st: &mut State) -> Result<(), String> {
        if st.open.as_ref().is_some_and(|o| o.guard.is_valid()) {
            return Ok(());
        }
        // A lost port means a lost session: the old log is someone else's to adopt now.
        st.open = None;
        st.rows.clear();
        st.pend.clear();
        *crate::store::lock(&self.port) = None;
        let err = |e: &dyn std::fmt::Display| format!("journal: {e}");
        let mut taken = None;
        for j in crate::adopt::clean_journals(&self.registry)
            .await
            .map_err(|e| err(&e))?
        {
            if j == self.node {
                continue;
            }
            let port = journal_port(&j);
            if let Some(Claim::Granted(g)) =
                self.coord.claim(&[&port]).await.map_err(|e| err(&e))?.pop()
            {
                taken = Some((j, g));
                break;
            }
        }
        let (id, guard) = match taken {
            Some(t) => t,
            None => {
                let port = journal_port(&self.node);
                let g = self
                    .coord
                    .claim_wait(&port, self.timeout)
                    .await
                    .map_err(|e| format!("journal port {port}: {e}"))?;
                (self.node.clone(), g)
            }
        };
        let guard = Arc::new(guard);
        let gen = crate::adopt::adopt_locked(
            &self.db,
            &self.log,
            &self.registry,
            &id,
            guard.token(),
            &self.c,
        )
        .await
        .map_err(|e| err(&e))?
            + 1;
        let row = registry_row(&id, &self.node, gen, false, 0, self.slots);
        self.registry
            .put_fenced(&row, guard.token())
            .await
            .map_err(|e| format!("journal registry: {}", registry_error(&id, e)))?;
        *crate::store::lock(&self.port) = Some(guard.clone());
        tracing::debug!(journal = %id, gen, "journal opened");
        st.open = Some(Open {
            id,
            guard,
            gen,
            next: 0,
            anchor_at: 0,
        });
        Ok(())
    }

    /// Appends `entries` (and the pending forgets) as one or more rows.
    async fn append(
        &self,
        st: &mut State,
        entries: Vec<(Arc<str>, LogEntry)>,
        flushed: &FastMap<Arc<str>, u64>,
    ) -> Result<(), String> {
        self.open(st).await?;
        let head = st.head();
        let Some(next) = st.open.as_ref().map(|o| o.next) else {
            return Err("journal not open".into());
        };
        // Compaction: entries still unflushed in the older half of a long log go again at
        // the tail, so the head can move past them.
        let mut again: Vec<(Arc<str>, LogEntry)> = Vec::new();
        if next - head >= self.slots / 2 {
            let bound = next - self.slots / 4;
            let fresh: std::collections::HashSet<&Arc<str>> =
                entries.iter().map(|(k, _)| k).collect();
            for (k, p) in &st.pend {
                if !fresh.contains(k) && p.pins.iter().any(|(row, _)| *row < bound) {
                    again.push((k.clone(), p.latest.clone()));
                }
            }
            tracing::info!(node = %self.node, keys = again.len(), "journal compaction");
        }
        // Bodies, cut at MAX_ROW_BYTES. The pending forgets go in the last one; they stay
        // pending until a commit carried them.
        let mut bodies: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
        let mut body = vec![FORMAT];
        let mut idx = Vec::new();
        let mut item = Vec::new();
        let all: Vec<&(Arc<str>, LogEntry)> = entries.iter().chain(again.iter()).collect();
        for (i, (_, e)) in all.iter().enumerate() {
            item.clear();
            postcard::to_io(&ItemRef::Entry(e), &mut item).map_err(|e| e.to_string())?;
            if body.len() + item.len() > MAX_ROW_BYTES && body.len() > 1 {
                bodies.push((
                    std::mem::replace(&mut body, vec![FORMAT]),
                    std::mem::take(&mut idx),
                ));
            }
            body.extend_from_slice(&item);
            idx.push(i);
        }
        for (k, s) in &st.forgets {
            postcard::to_io(&ItemRef::Forget(k, *s), &mut body).map_err(|e| e.to_string())?;
        }
        bodies.push((body, idx));

        // All rows of the commit in one transaction (where the backend has them).
        let Some(o) = st.open.as_ref() else {
            return Err("journal not open".into());
        };
        let (gen, token, first, id) = (o.gen, o.guard.token(), o.next, o.id.clone());
        let last = first + bodies.len() as u64 - 1;
        let mut result = Ok(());
        if last - head >= self.slots {
            result = Err(format!(
                "journal full: {} rows wait for their keys to be flushed",
                last - head
            ));
        } else {
            let mut rows = Vec::with_capacity(bodies.len());
            for (i, (body, _)) in bodies.iter_mut().enumerate() {
                let seq = first + i as u64;
                let slot = seq % self.slots;
                let row = vec![
                    row_key(&id, slot),
                    Value::Text(id.clone()),
                    Value::I64(slot as i64),
                    Value::I64(gen),
                    Value::I64(seq as i64),
                    Value::I64(head as i64),
                    Value::Bytes(std::mem::take(body)),
                ];
                rows.push((row, token));
            }
            self.c.journal_commits.fetch_add(1, Ordering::Relaxed);
            // A row refused by its fence means the port is someone else's: the whole commit
            // fails (rows written meanwhile are overwritten by the next commit's same seqs).
            match crate::batch::put_fenced_many(&self.jdb, &self.log, &rows).await {
                Ok(w) => {
                    if let Some(Err(e)) = w.results.into_iter().find(|r| r.is_err()) {
                        result = Err(format!("journal append: {e}"));
                    }
                }
                Err(e) => result = Err(format!("journal append: {e}")),
            }
        }
        if result.is_ok() {
            self.c
                .journal_rows
                .fetch_add(bodies.len() as u64, Ordering::Relaxed);
            let mut row_of = vec![first; all.len()];
            for (b, (_, idx)) in bodies.iter().enumerate() {
                for &i in idx {
                    row_of[i] = first + b as u64;
                }
            }
            drop(all);
            let fresh = entries.len();
            let mut pinned = vec![0usize; bodies.len()];
            for (i, (k, e)) in entries.into_iter().chain(again).enumerate() {
                if flushed.get(&k).is_some_and(|s| *s >= e.seq) {
                    continue;
                }
                if i >= fresh {
                    // Written again by compaction: the older rows need not hold it any more.
                    if let Some(p) = st.pend.remove(&k) {
                        for (row, _) in p.pins {
                            st.unpin(row);
                        }
                    }
                }
                let row = row_of[i];
                pinned[(row - first) as usize] += 1;
                st.pin(k, row, e);
            }
            for (b, n) in pinned.into_iter().enumerate() {
                st.rows.push_back((first + b as u64, n));
            }
            if let Some(o) = st.open.as_mut() {
                o.next = last + 1;
            }
        }
        if result.is_ok() {
            st.forgets.clear();
        }
        st.truncate();
        self.write_anchor(st).await;
        result
    }

    /// Moves the registry's anchor up to the head now and then, so that a reader of the log
    /// never has to look further back than a ring's length.
    async fn write_anchor(&self, st: &mut State) {
        let head = st.head();
        let Some(o) = st.open.as_mut() else { return };
        if o.next - o.anchor_at < self.slots / 4 {
            return;
        }
        let row = registry_row(&o.id, &self.node, o.gen, false, head, self.slots);
        match self.registry.put_fenced(&row, o.guard.token()).await {
            Ok(()) => o.anchor_at = o.next,
            Err(e) => tracing::warn!(journal = %o.id, error = %e, "journal anchor not written"),
        }
    }

    async fn close(&self, st: &mut State) -> Closed {
        let clean = st.pend.is_empty();
        let Some(o) = st.open.take() else {
            return Closed { guard: None, clean };
        };
        let mut marked = false;
        if clean && o.guard.is_valid() {
            let row = registry_row(&o.id, &self.node, o.gen, true, 0, self.slots);
            match self.registry.put_fenced(&row, o.guard.token()).await {
                Ok(()) => marked = true,
                Err(e) => tracing::warn!(journal = %o.id, error = %e, "journal not marked clean"),
            }
        }
        *crate::store::lock(&self.port) = None;
        Closed {
            guard: Some(o.guard),
            clean: marked,
        }
    }

    pub(crate) async fn run(self, mut rx: mpsc::UnboundedReceiver<JReq>) {
        let mut st = State::default();
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.clear();
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let mut puts: FastMap<Arc<str>, LogEntry> =
                FastMap::with_capacity_and_hasher(batch.len(), Default::default());
            let mut waiters: Vec<oneshot::Sender<Result<(), CacheError>>> = Vec::new();
            let mut flushed: FastMap<Arc<str>, u64> = FastMap::default();
            let mut barriers = Vec::new();
            let mut closes = Vec::new();
            for r in batch.drain(..) {
                match r {
                    JReq::Put { key, entry, done } => {
                        waiters.push(done);
                        if puts.get(&key).is_none_or(|q| q.seq < entry.seq) {
                            puts.insert(key, entry);
                        }
                    }
                    JReq::Forget { key, seq } => {
                        st.forget(&key, seq);
                        let f = flushed.entry(key.clone()).or_insert(seq);
                        *f = (*f).max(seq);
                        st.forgets.push((key, seq));
                    }
                    JReq::Release(g) => st.later.extend(g),
                    JReq::Barrier(tx) => barriers.push(tx),
                    JReq::Close(tx) => closes.push(tx),
                }
            }
            let entries = waiters.len() as u64;
            // Forgets alone are written only when something waits for them.
            let waiting = !st.later.is_empty() || !barriers.is_empty() || !closes.is_empty();
            let need_row = !puts.is_empty() || (!st.forgets.is_empty() && waiting);
            let outcome = if need_row {
                let entries: Vec<(Arc<str>, LogEntry)> = puts.into_iter().collect();
                self.append(&mut st, entries, &flushed).await
            } else {
                st.truncate();
                Ok(())
            };
            if let Err(e) = &outcome {
                tracing::warn!(node = %self.node, error = %e, "journal commit failed");
            }
            for w in waiters {
                let _ = w.send(outcome.clone().map_err(CacheError::Journal));
            }
            if st.forgets.is_empty() {
                // Every forget before these releases is durable.
                st.later.clear();
            }
            self.c.journal_entries.fetch_add(entries, Ordering::Relaxed);
            self.c
                .journal_pending
                .fetch_sub(entries as i64, Ordering::Relaxed);
            for b in barriers {
                let _ = b.send(());
            }
            for tx in closes {
                let closed = self.close(&mut st).await;
                let _ = tx.send(closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, seq: u64, n: i64) -> LogEntry {
        LogEntry {
            key: key.into(),
            table: "t".into(),
            token: 7,
            seq,
            pk: vec![Value::I64(1)],
            image: Some(Arc::new(vec![Value::I64(1), Value::I64(n)])),
        }
    }

    #[test]
    fn a_body_decodes_to_what_was_written() {
        let e = entry("cache/x/t/1", 3, 30);
        let mut body = vec![FORMAT];
        postcard::to_io(&ItemRef::Entry(&e), &mut body).expect("encode");
        postcard::to_io(&ItemRef::Forget("cache/x/t/1", 2), &mut body).expect("encode");
        let items = decode_body(&body).expect("decode");
        assert!(matches!(&items[0], Item::Entry(d) if d.seq == 3 && d.image == e.image));
        assert!(matches!(&items[1], Item::Forget(k, 2) if k == "cache/x/t/1"));
        // A body of another format version, or cut short, is an error, not a panic.
        let mut other = body.clone();
        other[0] = 9;
        assert!(decode_body(&other).is_err());
        for cut in 0..body.len() {
            let _ = decode_body(&body[..cut]);
        }
        assert!(decode_body(&body[..body.len() - 1]).is_err());
    }

    #[test]
    fn the_head_moves_only_past_fully_flushed_rows() {
        let mut st = State::default();
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        st.pin(a.clone(), 0, entry("a", 1, 1));
        st.pin(b.clone(), 0, entry("b", 2, 1));
        st.rows.push_back((0, 2));
        st.pin(a.clone(), 1, entry("a", 3, 2));
        st.rows.push_back((1, 1));
        // a flushed at its first image: row 0 still holds b's entry.
        st.forget(&a, 1);
        st.truncate();
        assert_eq!(st.head(), 0);
        st.forget(&b, 2);
        st.truncate();
        assert_eq!(st.head(), 1, "row 1 holds a's later entry");
        st.forget(&a, 3);
        st.truncate();
        assert!(st.rows.is_empty() && st.pend.is_empty());
    }
}
