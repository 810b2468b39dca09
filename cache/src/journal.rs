//! The write-ahead journal: one row per key (its latest acknowledged, unflushed image) in a
//! record-face table of the cache's own database, so that whichever node owns the key next can
//! read it. One committer task writes everything queued while the previous commit ran in one
//! batched, fenced write (group commit); entries of one key in a batch merge to one row.

use crate::error::{CacheError, Result};
use crate::stats::Counters;
use keyward_dbc::{Db, Field, FieldType, Key, Record, Table, TableDef, Value};
use keyward_ownership::Token;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 8192;

/// The journal table's definition (`name` is `[cache] journal_table`); public so that tools
/// and tests can read the journal with DBC.
pub fn journal_def(name: &str) -> TableDef {
    TableDef {
        name: name.to_owned(),
        fields: vec![
            Field::new("key", FieldType::Text),
            Field::new("tbl", FieldType::Text),
            Field::new("present", FieldType::Bool),
            Field::new("image", FieldType::Text).nullable(),
            Field::new("seq", FieldType::I64),
        ],
        primary_key: vec!["key".into()],
    }
}

/// A journal row read back by a new owner: the image to serve (None: deleted).
pub(crate) fn decode_row(row: &Record, fields: usize) -> Result<Option<Record>> {
    let bad = |r: &str| CacheError::Journal(format!("unreadable journal row: {r}"));
    match (row.get(2), row.get(3)) {
        (Some(Value::Bool(false)), _) => Ok(None),
        (Some(Value::Bool(true)), Some(Value::Text(img))) => {
            let rec: Record = serde_json::from_str(img).map_err(|e| bad(&e.to_string()))?;
            if rec.len() != fields {
                return Err(bad("image does not fit the table"));
            }
            Ok(Some(rec))
        }
        _ => Err(bad("bad columns")),
    }
}

pub(crate) fn journal_key(key: &str) -> Key {
    vec![Value::Text(key.to_owned())]
}

pub(crate) enum JReq {
    /// Make this image durable, then answer `done`.
    Put {
        key: Arc<str>,
        table: String,
        token: Token,
        seq: u64,
        image: Option<Record>,
        done: oneshot::Sender<Result<()>>,
    },
    /// The table now holds the image of `seq`: drop the row unless a later write replaced it.
    Forget {
        key: Arc<str>,
        token: Token,
        seq: u64,
    },
    /// Answered once everything queued before it is committed.
    Barrier(oneshot::Sender<()>),
}

struct PendingPut {
    table: String,
    token: Token,
    seq: u64,
    image: Option<Record>,
}

pub(crate) async fn run(
    db: Db,
    table: Table,
    mut rx: mpsc::UnboundedReceiver<JReq>,
    c: Arc<Counters>,
) {
    // Latest committed put per key, so a forget for an older image never drops a newer row.
    let mut last: HashMap<Arc<str>, u64> = HashMap::new();
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
        let mut puts: HashMap<Arc<str>, PendingPut> = HashMap::new();
        let mut waiters: HashMap<Arc<str>, Vec<oneshot::Sender<Result<()>>>> = HashMap::new();
        let mut forgets: HashMap<Arc<str>, (Token, u64)> = HashMap::new();
        let mut barriers = Vec::new();
        let mut entries = 0i64;
        for r in batch.drain(..) {
            match r {
                JReq::Put {
                    key,
                    table,
                    token,
                    seq,
                    image,
                    done,
                } => {
                    entries += 1;
                    waiters.entry(key.clone()).or_default().push(done);
                    if forgets.get(&key).is_some_and(|(_, s)| *s < seq) {
                        forgets.remove(&key);
                    }
                    if puts.get(&key).is_none_or(|p| p.seq < seq) {
                        puts.insert(
                            key,
                            PendingPut {
                                table,
                                token,
                                seq,
                                image,
                            },
                        );
                    }
                }
                JReq::Forget { key, token, seq } => {
                    let latest = last
                        .get(&key)
                        .copied()
                        .unwrap_or(0)
                        .max(puts.get(&key).map_or(0, |p| p.seq));
                    if latest <= seq {
                        // Queued puts of this key are older than the flushed image: the table
                        // already holds their effect, so their callers may be answered.
                        puts.remove(&key);
                        forgets.insert(key, (token, seq));
                    }
                }
                JReq::Barrier(tx) => barriers.push(tx),
            }
        }
        if !puts.is_empty() {
            let keys: Vec<Arc<str>> = puts.keys().cloned().collect();
            let mut items = Vec::with_capacity(keys.len());
            let mut encode_err: HashMap<Arc<str>, String> = HashMap::new();
            let mut sent: Vec<Arc<str>> = Vec::with_capacity(keys.len());
            for k in &keys {
                let p = &puts[k];
                let image = match &p.image {
                    Some(rec) => match serde_json::to_string(rec) {
                        Ok(s) => Value::Text(s),
                        Err(e) => {
                            encode_err.insert(k.clone(), e.to_string());
                            continue;
                        }
                    },
                    None => Value::Null,
                };
                let row = vec![
                    Value::Text(k.to_string()),
                    Value::Text(p.table.clone()),
                    Value::Bool(p.image.is_some()),
                    image,
                    Value::I64(p.seq as i64),
                ];
                items.push((row, p.token));
                sent.push(k.clone());
            }
            let results = match crate::batch::put_fenced_many(&db, &table, &items).await {
                Ok(w) => {
                    c.journal_commits.fetch_add(w.commits, Ordering::Relaxed);
                    Ok(w.results)
                }
                Err(e) => {
                    c.journal_commits.fetch_add(1, Ordering::Relaxed);
                    Err(e)
                }
            };
            c.journal_rows
                .fetch_add(items.len() as u64, Ordering::Relaxed);
            let mut outcome: HashMap<Arc<str>, std::result::Result<(), String>> = HashMap::new();
            match results {
                Ok(rs) if rs.len() == sent.len() => {
                    for (k, r) in sent.into_iter().zip(rs) {
                        outcome.insert(k, r.map_err(|e| e.to_string()));
                    }
                }
                Ok(rs) => {
                    let m = format!(
                        "journal write answered {} results for {} rows",
                        rs.len(),
                        sent.len()
                    );
                    for k in sent {
                        outcome.insert(k, Err(m.clone()));
                    }
                }
                Err(e) => {
                    let m = e.to_string();
                    for k in sent {
                        outcome.insert(k, Err(m.clone()));
                    }
                }
            }
            for (k, m) in encode_err {
                outcome.insert(k, Err(m));
            }
            for (k, r) in outcome {
                if r.is_ok() {
                    if let Some(p) = puts.get(&k) {
                        last.insert(k.clone(), p.seq);
                    }
                } else {
                    tracing::warn!(key = %k, error = ?r, "journal commit failed");
                }
                for w in waiters.remove(&k).unwrap_or_default() {
                    let _ = w.send(r.clone().map_err(CacheError::Journal));
                }
            }
        }
        // Puts dropped in favour of a forget: the table already holds them.
        for (_, ws) in waiters.drain() {
            for w in ws {
                let _ = w.send(Ok(()));
            }
        }
        c.journal_entries
            .fetch_add(entries as u64, Ordering::Relaxed);
        c.journal_pending.fetch_sub(entries, Ordering::Relaxed);
        if !forgets.is_empty() {
            let items: Vec<(Key, Token)> = forgets
                .iter()
                .map(|(k, (t, _))| (journal_key(k), *t))
                .collect();
            // A failed or fenced delete leaves a row whose image the table already holds (or
            // that belongs to a newer owner): replaying it is harmless.
            match crate::batch::delete_fenced_many(&db, &table, &items).await {
                Ok(w) => {
                    c.journal_commits.fetch_add(w.commits, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(error = %e, "journal cleanup failed"),
            }
            for (k, (_, seq)) in forgets {
                if last.get(&k).is_some_and(|s| *s <= seq) {
                    last.remove(&k);
                }
            }
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}
