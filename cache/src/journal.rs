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

/// Per key, the outcome its waiting writers get.
type Outcomes = HashMap<Arc<str>, std::result::Result<(), String>>;

/// Writes `puts` to the journal in one group commit; returns each key's outcome.
async fn commit_puts(
    db: &Db,
    table: &Table,
    puts: &HashMap<Arc<str>, PendingPut>,
    c: &Counters,
) -> Outcomes {
    let mut outcome: Outcomes = HashMap::new();
    let mut items = Vec::with_capacity(puts.len());
    let mut sent: Vec<Arc<str>> = Vec::with_capacity(puts.len());
    for (k, p) in puts {
        let image = match &p.image {
            Some(rec) => match serde_json::to_string(rec) {
                Ok(s) => Value::Text(s),
                Err(e) => {
                    outcome.insert(k.clone(), Err(e.to_string()));
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
    if items.is_empty() {
        return outcome;
    }
    let results = match crate::batch::put_fenced_many(db, table, &items).await {
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
    outcome
}

/// Keeps in `map` the newer of its entry for `key` and `p`.
fn keep_newest(map: &mut HashMap<Arc<str>, PendingPut>, key: Arc<str>, p: PendingPut) {
    if map.get(&key).is_none_or(|q| q.seq < p.seq) {
        map.insert(key, p);
    }
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
        // Puts a forget made unnecessary (the table already holds their effect). Their
        // writers are answered only once the forget's delete committed: until then the
        // journal row is older than the table, and a successor reading it in between would
        // replay it over acknowledged writes. If the delete fails, the newest of them is
        // written instead, so the row is never left older than the table.
        let mut superseded: HashMap<Arc<str>, PendingPut> = HashMap::new();
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
                    let p = PendingPut {
                        table,
                        token,
                        seq,
                        image,
                    };
                    match forgets.get(&key) {
                        Some((_, s)) if *s >= seq => keep_newest(&mut superseded, key, p),
                        Some(_) => {
                            // Newer than the flushed image: the row must hold it.
                            forgets.remove(&key);
                            superseded.remove(&key);
                            keep_newest(&mut puts, key, p);
                        }
                        None => keep_newest(&mut puts, key, p),
                    }
                }
                JReq::Forget { key, token, seq } => {
                    let latest = last
                        .get(&key)
                        .copied()
                        .unwrap_or(0)
                        .max(puts.get(&key).map_or(0, |p| p.seq));
                    if latest <= seq {
                        if let Some(p) = puts.remove(&key) {
                            keep_newest(&mut superseded, key.clone(), p);
                        }
                        forgets.insert(key, (token, seq));
                    }
                }
                JReq::Barrier(tx) => barriers.push(tx),
            }
        }
        let mut outcome = commit_puts(&db, &table, &puts, &c).await;
        for (k, r) in &outcome {
            match r {
                Ok(()) => {
                    if let Some(p) = puts.get(k) {
                        last.insert(k.clone(), p.seq);
                    }
                }
                Err(e) => tracing::warn!(key = %k, error = %e, "journal commit failed"),
            }
        }
        // Written keys are answered now, without waiting for the forgets below.
        for k in puts.keys() {
            if let (Some(ws), Some(r)) = (waiters.remove(k), outcome.remove(k)) {
                for w in ws {
                    let _ = w.send(r.clone().map_err(CacheError::Journal));
                }
            }
        }
        if !forgets.is_empty() {
            let keys: Vec<Arc<str>> = forgets.keys().cloned().collect();
            let items: Vec<(Key, Token)> = keys
                .iter()
                .map(|k| (journal_key(k), forgets[k].0))
                .collect();
            // A fenced delete means a newer owner's row is there: not ours to remove, and our
            // writers' acknowledgement fails on their lapsed guard anyway.
            let deleted: Vec<bool> =
                match crate::batch::delete_fenced_many(&db, &table, &items).await {
                    Ok(w) if w.results.len() == keys.len() => {
                        c.journal_commits.fetch_add(w.commits, Ordering::Relaxed);
                        w.results
                            .iter()
                            .map(|r| matches!(r, Ok(_) | Err(keyward_dbc::DbcError::Fenced { .. })))
                            .collect()
                    }
                    Ok(_) => vec![false; keys.len()],
                    Err(e) => {
                        tracing::debug!(error = %e, "journal cleanup failed");
                        vec![false; keys.len()]
                    }
                };
            let mut redo: HashMap<Arc<str>, PendingPut> = HashMap::new();
            for (k, ok) in keys.into_iter().zip(deleted) {
                let seq = forgets[&k].1;
                if ok {
                    if last.get(&k).is_some_and(|s| *s <= seq) {
                        last.remove(&k);
                    }
                    if superseded.remove(&k).is_some() {
                        outcome.insert(k, Ok(()));
                    }
                } else if let Some(p) = superseded.remove(&k) {
                    redo.insert(k, p);
                }
                // A row left without superseded puts holds the last committed image, which
                // the table holds too: replaying it is harmless.
            }
            if !redo.is_empty() {
                let again = commit_puts(&db, &table, &redo, &c).await;
                for (k, r) in again {
                    if r.is_ok() {
                        if let Some(p) = redo.get(&k) {
                            last.insert(k.clone(), p.seq);
                        }
                    }
                    outcome.insert(k, r);
                }
            }
        }
        for (k, ws) in waiters {
            let r = outcome.remove(&k).unwrap_or_else(|| {
                Err(format!(
                    "journal entry of {k} was neither written nor superseded"
                ))
            });
            for w in ws {
                let _ = w.send(r.clone().map_err(CacheError::Journal));
            }
        }
        c.journal_entries
            .fetch_add(entries as u64, Ordering::Relaxed);
        c.journal_pending.fetch_sub(entries, Ordering::Relaxed);
        for b in barriers {
            let _ = b.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &Arc<str>, seq: u64, n: i64) -> (JReq, oneshot::Receiver<Result<()>>) {
        let (done, rx) = oneshot::channel();
        let req = JReq::Put {
            key: key.clone(),
            table: "t".into(),
            token: 7,
            seq,
            image: Some(vec![Value::I64(1), Value::I64(n)]),
            done,
        };
        (req, rx)
    }

    async fn image(t: &Table, key: &str) -> Option<String> {
        match t.get(&journal_key(key)).await.expect("read journal") {
            Some(row) => match &row[3] {
                Value::Text(s) => Some(s.clone()),
                other => panic!("image column holds {other:?}"),
            },
            None => None,
        }
    }

    /// A forget that supersedes a queued put (the flusher wrote that image to the table while
    /// its journal write waited) must not leave the journal's older row behind once that put
    /// is acknowledged: a successor replays the journal row over the table. Here the forget's
    /// delete fails (a trigger refuses it), and the superseded image has to be written instead.
    #[tokio::test]
    async fn a_failed_forget_never_leaves_a_row_older_than_the_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}?mode=rwc", dir.path().join("j.db").display());
        let db = Db::connect(&url).await.expect("connect");
        let t = db.define_table(journal_def("j")).await.expect("define");
        let (tx, rx) = mpsc::unbounded_channel();
        let c = Arc::new(Counters::default());
        tokio::spawn(run(db.clone(), t.clone(), rx, c));
        let key: Arc<str> = Arc::from("cache/x/t/1");

        let (p1, a1) = put(&key, 1, 10);
        tx.send(p1).expect("send");
        a1.await.expect("answer").expect("first put");
        assert!(image(&t, &key).await.expect("row").contains("10"));

        db.execute(
            "CREATE TRIGGER no_forget BEFORE UPDATE ON j WHEN NEW._kw_dead = 1 \
             BEGIN SELECT RAISE(ABORT, 'forget refused'); END",
            &[],
        )
        .await
        .expect("trigger");
        // Queued together, so that they land in one batch: the put of seq 2 and the forget
        // saying the table now holds seq 2.
        let (p2, a2) = put(&key, 2, 20);
        tx.send(p2).expect("send");
        tx.send(JReq::Forget {
            key: key.clone(),
            token: 7,
            seq: 2,
        })
        .expect("send");
        a2.await.expect("answer").expect("second put");
        let row = image(&t, &key).await;
        assert!(
            row.as_deref().is_some_and(|s| s.contains("20")),
            "journal row after an acknowledged, flushed write: {row:?}"
        );

        // With deletes allowed again, a forget removes the row before the put is answered.
        db.execute("DROP TRIGGER no_forget", &[])
            .await
            .expect("drop trigger");
        let (p3, a3) = put(&key, 3, 30);
        tx.send(p3).expect("send");
        tx.send(JReq::Forget {
            key: key.clone(),
            token: 7,
            seq: 3,
        })
        .expect("send");
        a3.await.expect("answer").expect("third put");
        assert_eq!(image(&t, &key).await, None);
    }
}
