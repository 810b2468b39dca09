//! Adoption of a dead node's journal: before a new owner serves a key it just claimed, every
//! journal that is not clean and whose port nobody holds (its node's session ended) has its
//! latest entry per key written to the tables, fenced by the entry's token, so that a newer
//! owner's row refuses it. The adopter holds the journal's port meanwhile: two adopters take
//! turns, and a node coming back waits for the adoption before it writes its log again.
//!
//! Why checking the journal ports is enough: a node's keys and its journal port live in one
//! session, so a key whose owner died is free only once that node's journal port is free too;
//! a node gives up a key on its own only after flushing it and making that flush durable in
//! its log (journal.rs); hence a journal whose port is held has nothing unflushed for a key
//! someone else was just granted.

use crate::cache::Inner;
use crate::error::{CacheError, Result};
use crate::journal::{decode_body, journal_port, registry_row, row_key, Item, LogEntry};
use crate::stats::Counters;
use keyward_dbc::{Db, DbcError, Key, Record, Table, Value};
use keyward_ownership::{Claim, Token};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Log rows read per statement.
const READ_CHUNK: u64 = 256;

fn bad(journal: &str, what: impl std::fmt::Display) -> CacheError {
    CacheError::Journal(format!("journal {journal}: {what}"))
}

/// A journal's registry row.
struct Reg {
    journal: String,
    writer: String,
    gen: i64,
    clean: bool,
    anchor: u64,
    slots: u64,
}

fn registry_fields(journal: &str, row: &Record) -> Result<Reg> {
    match row.as_slice() {
        [Value::Text(j), Value::Text(w), Value::I64(g), Value::Bool(c), Value::I64(a), Value::I64(n)]
            if *n >= 16 =>
        {
            Ok(Reg {
                journal: j.clone(),
                writer: w.clone(),
                gen: *g,
                clean: *c,
                anchor: (*a).max(0) as u64,
                slots: *n as u64,
            })
        }
        _ => Err(bad(journal, "unreadable registry row")),
    }
}

/// The bodies of the live rows of one generation: from the head the last row names, to the
/// last row. Rows are read from `anchor` on (an earlier head), in order, until a slot holds
/// something else than the next row.
async fn live_bodies(log: &Table, journal: &str, reg: &Reg) -> Result<Vec<Vec<u8>>> {
    let (gen, anchor, slots) = (reg.gen, reg.anchor, reg.slots);
    let mut rows: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    let mut seq = anchor;
    'read: loop {
        if seq - anchor > slots {
            return Err(bad(journal, "more live rows than the ring holds"));
        }
        let keys: Vec<Key> = (seq..seq + READ_CHUNK)
            .map(|s| vec![row_key(journal, s % slots)])
            .collect();
        let got = log.get_many(&keys).await?;
        for (s, row) in (seq..).zip(got) {
            let Some(row) = row else { break 'read };
            match (row.get(3), row.get(4), row.get(5), row.get(6)) {
                (
                    Some(Value::I64(g)),
                    Some(Value::I64(q)),
                    Some(Value::I64(h)),
                    Some(Value::Bytes(b)),
                ) if *g == gen && *q == s as i64 => {
                    rows.push((s, (*h).max(0) as u64, b.clone()));
                }
                (Some(Value::I64(_)), Some(Value::I64(_)), Some(Value::I64(_)), Some(_)) => {
                    break 'read
                }
                _ => return Err(bad(journal, format!("unreadable log row {s}"))),
            }
        }
        seq += READ_CHUNK;
    }
    let Some(&(_, head, _)) = rows.last() else {
        return Ok(Vec::new());
    };
    if head < anchor {
        return Err(bad(journal, "its head is older than its anchor"));
    }
    Ok(rows
        .into_iter()
        .filter(|(s, _, _)| *s >= head)
        .map(|(_, _, b)| b)
        .collect())
}

/// Writes the latest unflushed entry per key of `bodies` to the tables; returns how many.
async fn replay(db: &Db, journal: &str, bodies: &[Vec<u8>]) -> Result<u64> {
    let mut latest: HashMap<Arc<str>, LogEntry> = HashMap::new();
    let mut forgot: HashMap<String, u64> = HashMap::new();
    for (i, b) in bodies.iter().enumerate() {
        for item in decode_body(b).map_err(|e| bad(journal, format!("row {i}: {e}")))? {
            match item {
                Item::Entry(e) => {
                    if latest.get(&e.key).is_none_or(|l| l.seq < e.seq) {
                        latest.insert(e.key.clone(), e);
                    }
                }
                Item::Forget(k, s) => {
                    let f = forgot.entry(k).or_insert(s);
                    *f = (*f).max(s);
                }
            }
        }
    }
    type Writes = (Vec<(Record, Token)>, Vec<(Key, Token)>);
    let mut by_table: HashMap<Arc<str>, Writes> = HashMap::new();
    for (k, e) in latest {
        if forgot.get(&*k).is_some_and(|s| *s >= e.seq) {
            continue;
        }
        let w = by_table.entry(e.table).or_default();
        match e.image {
            // Just read from the log: the only holder, so no copy.
            Some(rec) => w.0.push((Arc::unwrap_or_clone(rec), e.token)),
            None => w.1.push((e.pk, e.token)),
        }
    }
    let mut n = 0;
    for (name, (puts, dels)) in by_table {
        let table = db.table(&name).await.map_err(|e| {
            bad(
                journal,
                format!("it holds writes of table {name}, which cannot be opened: {e}"),
            )
        })?;
        // Both return at once, without a statement, when given nothing.
        let put = crate::batch::put_fenced_many(db, &table, &puts).await?;
        let del = crate::batch::delete_fenced_many(db, &table, &dels).await?;
        let dels = del.results.into_iter().map(|r| r.map(|_| ()));
        for r in put.results.into_iter().chain(dels) {
            match r {
                // A newer owner wrote the key: its row stands.
                Ok(()) | Err(DbcError::Fenced { .. }) => n += 1,
                Err(e) => return Err(bad(journal, format!("replay into {name}: {e}"))),
            }
        }
    }
    Ok(n)
}

/// Adopts `journal` while holding its port with `token`: replays its live rows if it is not
/// clean and marks it clean. Returns its generation (0 if it was never opened).
pub(crate) async fn adopt_locked(
    db: &Db,
    log: &Table,
    registry: &Table,
    journal: &str,
    token: Token,
    c: &Counters,
) -> Result<i64> {
    let Some(row) = registry.get(&[Value::Text(journal.to_owned())]).await? else {
        return Ok(0);
    };
    let reg = registry_fields(journal, &row)?;
    let gen = reg.gen;
    if reg.clean {
        return Ok(gen);
    }
    let bodies = live_bodies(log, journal, &reg).await?;
    let n = replay(db, journal, &bodies).await?;
    c.replays.fetch_add(n, Ordering::Relaxed);
    registry
        .put_fenced(
            &registry_row(journal, &reg.writer, gen, true, 0, reg.slots),
            token,
        )
        .await
        .map_err(|e| crate::journal::registry_error(journal, e))?;
    tracing::info!(
        journal,
        gen,
        rows = bodies.len(),
        entries = n,
        "adopted a journal"
    );
    Ok(gen)
}

/// Every registry row, read page by page.
async fn registry_rows(registry: &Table) -> Result<Vec<Reg>> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = registry.scan(cursor.as_ref(), 1000).await?;
        for row in &page.records {
            out.push(registry_fields("?", row)?);
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => return Ok(out),
        }
    }
}

/// Journals with nothing unflushed: candidates for a node opening its log.
pub(crate) async fn clean_journals(registry: &Table) -> Result<Vec<String>> {
    Ok(registry_rows(registry)
        .await?
        .into_iter()
        .filter(|r| r.clean)
        .map(|r| r.journal)
        .collect())
}

impl Inner {
    /// Adopts every journal whose writer is gone. Called after a key is granted and before it
    /// is loaded.
    pub(crate) async fn adopt_dead_journals(&self) -> Result<()> {
        let dirty: Vec<Reg> = registry_rows(&self.registry)
            .await?
            .into_iter()
            .filter(|r| !r.clean)
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let ports: Vec<String> = dirty.iter().map(|r| journal_port(&r.journal)).collect();
        let refs: Vec<&str> = ports.iter().map(|p| p.as_str()).collect();
        let owners = self.coord.owner_of(&refs).await?;
        for (r, o) in dirty.iter().zip(owners) {
            if o.is_some_and(|o| o.node.as_str() == r.writer) {
                continue; // its writer is alive
            }
            self.adopt(&r.journal, r.gen).await?;
        }
        Ok(())
    }

    /// Takes the journal's port and adopts it; or, while someone else holds the port (another
    /// adopter, or a node that took the journal over), waits until the generation it saw dirty
    /// is adopted.
    async fn adopt(&self, journal: &str, gen: i64) -> Result<()> {
        let port = journal_port(journal);
        let deadline = Instant::now() + self.cfg.request_timeout();
        loop {
            match self.coord.claim(&[&port]).await?.pop() {
                Some(Claim::Granted(g)) => {
                    let r = adopt_locked(
                        &self.db,
                        &self.log,
                        &self.registry,
                        journal,
                        g.token(),
                        &self.c,
                    )
                    .await;
                    g.release().await?;
                    return r.map(|_| ());
                }
                Some(Claim::OwnedBy(_)) => {
                    let row = self
                        .registry
                        .get(&[Value::Text(journal.to_owned())])
                        .await?;
                    if let Some(row) = row {
                        let r = registry_fields(journal, &row)?;
                        if r.clean || r.gen != gen {
                            return Ok(());
                        }
                    }
                }
                None => return Err(CacheError::Journal("empty claim reply".into())),
            }
            if Instant::now() >= deadline {
                return Err(CacheError::Timeout {
                    key: port,
                    millis: self.cfg.request_timeout_ms,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
