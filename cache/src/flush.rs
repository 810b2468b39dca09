//! The flusher: writes dirty keys to their tables in batches, by age (or at once under
//! pressure), fenced by each key's token. Every key succeeds or fails on its own: a failing key
//! is retried with backoff while the others go on.

use crate::cache::Inner;
use crate::error::{CacheError, Result};
use crate::journal::JReq;
use crate::stats::inc;
use crate::store::{lock, Entry};
use crate::table::TableState;
use crate::SharedRecord;
use keyward_dbc::{DbcError, Key, Record};
use keyward_ownership::{Guard, Token};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

struct Item {
    key: Arc<str>,
    ts: Arc<TableState>,
    pk: Key,
    value: Option<SharedRecord>,
    seq: u64,
    token: Token,
    guard: Arc<Guard>,
}

enum Outcome {
    Done,
    Fenced,
    Failed(String),
}

fn snapshot(key: &Arc<str>, e: &Entry) -> Item {
    Item {
        key: key.clone(),
        ts: e.table.clone(),
        pk: e.pk.clone(),
        value: e.value.clone(),
        seq: e.seq,
        token: e.guard.token(),
        guard: e.guard.clone(),
    }
}

fn backoff(attempts: u32) -> Duration {
    Duration::from_millis((25u64 << attempts.min(8)).min(5000))
}

/// One batched write's per-item results, whatever the shape of the failure.
fn outcomes<T>(
    n: usize,
    r: std::result::Result<Vec<std::result::Result<T, DbcError>>, DbcError>,
) -> Vec<Outcome> {
    match r {
        Ok(v) if v.len() == n => v
            .into_iter()
            .map(|r| match r {
                Ok(_) => Outcome::Done,
                Err(DbcError::Fenced { .. }) => Outcome::Fenced,
                Err(e) => Outcome::Failed(e.to_string()),
            })
            .collect(),
        Ok(v) => {
            let m = format!("batched write answered {} results for {n} rows", v.len());
            (0..n).map(|_| Outcome::Failed(m.clone())).collect()
        }
        Err(e) => {
            let m = e.to_string();
            (0..n).map(|_| Outcome::Failed(m.clone())).collect()
        }
    }
}

/// Whether a batch that failed as a whole may have failed for one of its rows (a constraint, a
/// trigger, a value the table refuses) rather than for the database (unreachable, too slow):
/// only then is it worth cutting up to find the row.
fn row_may_be_at_fault(e: &DbcError) -> bool {
    !matches!(e, DbcError::Connection { .. } | DbcError::Timeout { .. })
}

/// Writes rows `0..n` with `write` (one batch, one commit), and when the batch fails as a whole
/// for a reason a row may cause, writes its halves apart, and so on down to single rows: a row
/// the table refuses fails alone, in about 2·log2(n) extra writes, and the others are written
/// now instead of sharing its backoff.
async fn isolating<W, F, T>(n: usize, write: W) -> Vec<Outcome>
where
    W: Fn(std::ops::Range<usize>) -> F,
    F: std::future::Future<
        Output = std::result::Result<Vec<std::result::Result<T, DbcError>>, DbcError>,
    >,
{
    // A stack whose left half is pushed last: ranges come off it in row order, so their
    // outcomes are appended in row order too.
    let mut out = Vec::with_capacity(n);
    let mut todo = Vec::new();
    todo.push(0..n);
    while let Some(r) = todo.pop() {
        // Boxed: the batch writers' futures are deep types, and nesting them here again
        // would push callers' futures past the compiler's layout depth limit.
        match Box::pin(write(r.clone())).await {
            Err(e) if r.len() > 1 && row_may_be_at_fault(&e) => {
                let mid = r.start + r.len() / 2;
                todo.push(mid..r.end);
                todo.push(r.start..mid);
            }
            res => out.extend(outcomes(r.len(), res)),
        }
    }
    out
}

pub(crate) async fn run(weak: Weak<Inner>) {
    const REPORT_EVERY: Duration = Duration::from_secs(30);
    let mut last_report = Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let tick = (inner.cfg.flush_max_age() / 8)
            .clamp(Duration::from_millis(5), Duration::from_millis(250));
        let wake = inner.flush_wake.clone();
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = wake.notified() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        if !inner.flusher_paused.load(Ordering::Acquire) {
            inner.flush_round(false).await;
        }
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            let s = inner.c.snapshot();
            tracing::info!(
                hits = s.hits,
                misses = s.misses,
                forwards = s.forwards,
                flushed_rows = s.flushed_rows,
                merge_ratio = s.merge_ratio,
                journal_lag = s.journal_lag,
                dirty = s.dirty_keys,
                bytes = s.bytes,
                "cache stats"
            );
        }
    }
}

impl Inner {
    /// Flushes what is due (everything with `force`); returns the number of keys attempted.
    pub(crate) async fn flush_round(&self, force: bool) -> usize {
        let _one = self.flush_lock.lock().await;
        let now = Instant::now();
        let max_age = self.cfg.flush_max_age();
        let all = force || self.c.dirty.load(Ordering::Relaxed) as usize > self.cfg.max_dirty;
        let due = |e: &Entry| e.retry_at.is_none_or(|t| t <= now);
        // Guards lapse all at once (lease end) or move the session's loss epoch: only then is
        // every dirty key's guard worth a look.
        let epoch = self.coord.loss_epoch();
        let look_for_lapsed =
            !self.coord.lease_valid() || self.flush_epoch.swap(epoch, Ordering::AcqRel) != epoch;
        let mut items = Vec::new();
        for shard in self.store.shards() {
            let mut guard = lock(shard);
            let sh = &mut *guard;
            if look_for_lapsed {
                let lapsed: Vec<Arc<str>> = sh
                    .dirty
                    .iter()
                    .filter(|k| sh.map.peek(k).is_some_and(|e| !e.guard.is_valid()))
                    .cloned()
                    .collect();
                for k in lapsed {
                    if let Some(e) = sh.take(&k, &self.c) {
                        sh.evicting.insert(k, e);
                    }
                }
            }
            for (k, e) in sh.evicting.iter() {
                if due(e) {
                    items.push(snapshot(k, e));
                }
            }
            if all {
                sh.due.clear();
                sh.retry.clear();
                for k in sh.dirty.iter() {
                    if let Some(e) = sh.map.peek(k) {
                        if due(e) {
                            items.push(snapshot(k, e));
                        } else {
                            sh.retry.push(k.clone());
                        }
                    }
                }
                continue;
            }
            // Keys whose flush failed, once their backoff is over.
            let retry = std::mem::take(&mut sh.retry);
            for k in retry {
                match sh.map.peek(&k) {
                    Some(e) if e.is_dirty() && due(e) => items.push(snapshot(&k, e)),
                    Some(e) if e.is_dirty() => sh.retry.push(k),
                    _ => {}
                }
            }
            // Keys dirty for `max_age`, oldest first.
            while let Some((t, _)) = sh.due.front() {
                if now.saturating_duration_since(*t) < max_age {
                    break;
                }
                let Some((t, k)) = sh.due.pop_front() else {
                    break;
                };
                match sh.map.peek(&k) {
                    Some(e) if e.dirty_since == Some(t) && due(e) => items.push(snapshot(&k, e)),
                    Some(e) if e.dirty_since == Some(t) => sh.retry.push(k),
                    _ => {} // flushed, rewritten or gone since it was queued
                }
            }
        }
        let n = items.len();
        if n == 0 {
            return 0;
        }
        let mut by_table: HashMap<String, Vec<Item>> = HashMap::new();
        for it in items {
            by_table
                .entry(it.ts.name().to_owned())
                .or_default()
                .push(it);
        }
        let (mut ok, mut fenced, mut failed) = (0usize, 0usize, 0usize);
        for (_, items) in by_table {
            let mut rest = items;
            while !rest.is_empty() {
                let chunk: Vec<Item> = rest.drain(..rest.len().min(self.cfg.flush_batch)).collect();
                let ts = chunk[0].ts.clone();
                let (puts, dels): (Vec<Item>, Vec<Item>) =
                    chunk.into_iter().partition(|i| i.value.is_some());
                let mut results: Vec<(Item, Outcome)> = Vec::with_capacity(puts.len() + dels.len());
                if !puts.is_empty() {
                    let rows: Vec<(Record, Token)> = puts
                        .iter()
                        .filter_map(|i| i.value.as_ref().map(|v| (Record::clone(v), i.token)))
                        .collect();
                    let out = isolating(rows.len(), |r| async {
                        crate::batch::put_fenced_many(&self.db, &ts.table, &rows[r])
                            .await
                            .map(|w| w.results)
                    })
                    .await;
                    results.extend(puts.into_iter().zip(out));
                }
                if !dels.is_empty() {
                    let keys: Vec<(Key, Token)> =
                        dels.iter().map(|i| (i.pk.clone(), i.token)).collect();
                    let out = isolating(keys.len(), |r| async {
                        crate::batch::delete_fenced_many(&self.db, &ts.table, &keys[r])
                            .await
                            .map(|w| w.results)
                    })
                    .await;
                    results.extend(dels.into_iter().zip(out));
                }
                inc(&self.c.flush_batches);
                for (item, outcome) in results {
                    match &outcome {
                        Outcome::Done => ok += 1,
                        Outcome::Fenced => fenced += 1,
                        Outcome::Failed(m) => {
                            failed += 1;
                            tracing::warn!(key = %item.key, error = %m, "flush failed; will retry");
                        }
                    }
                    self.settle(item, outcome);
                }
            }
        }
        self.c.flushed_rows.fetch_add(ok as u64, Ordering::Relaxed);
        self.c.fenced.fetch_add(fenced as u64, Ordering::Relaxed);
        self.c
            .flush_errors
            .fetch_add(failed as u64, Ordering::Relaxed);
        tracing::debug!(
            rows = ok,
            fenced,
            failed,
            dirty = self.c.dirty.load(Ordering::Relaxed),
            "flush round"
        );
        n
    }

    /// Applies one key's flush result to memory and the journal.
    fn settle(&self, item: Item, outcome: Outcome) {
        let mut dropped: Option<Entry> = None;
        let mut forget = false;
        {
            let mut sh = self.store.shard(&item.key);
            let in_map = sh
                .map
                .peek(&item.key)
                .is_some_and(|e| Arc::ptr_eq(&e.guard, &item.guard));
            let in_evicting = !in_map
                && sh
                    .evicting
                    .get(&item.key)
                    .is_some_and(|e| Arc::ptr_eq(&e.guard, &item.guard));
            match outcome {
                Outcome::Done => {
                    let same = sh.map.peek(&item.key).is_some_and(|e| e.seq == item.seq);
                    if in_map && same {
                        sh.mark_clean(&item.key, &self.c);
                        forget = true;
                    } else if in_map {
                        // Written again while the flush ran: the table holds everything up to
                        // the snapshot, so the key's age restarts now (else a hot key would be
                        // flushed again at every tick).
                        let now = Instant::now();
                        if let Some(e) = sh.map.peek_mut(&item.key) {
                            e.dirty_since = Some(now);
                            e.retry_at = None;
                            e.attempts = 0;
                        }
                        sh.due.push_back((now, item.key.clone()));
                    } else if in_evicting
                        && sh
                            .evicting
                            .get(&item.key)
                            .is_some_and(|e| e.seq == item.seq)
                    {
                        dropped = sh.evicting.remove(&*item.key);
                        forget = true;
                    }
                }
                Outcome::Fenced => {
                    // A newer owner wrote this key: ours is stale and must not be served.
                    if in_map {
                        dropped = sh.take(&item.key, &self.c);
                    } else if in_evicting {
                        dropped = sh.evicting.remove(&*item.key);
                    }
                }
                Outcome::Failed(_) => {
                    let now = Instant::now();
                    let lapsed = !item.guard.is_valid();
                    let e = if in_map {
                        sh.map.peek_mut(&item.key)
                    } else if in_evicting {
                        sh.evicting.get_mut(&item.key)
                    } else {
                        None
                    };
                    let mut give_up = false;
                    if let Some(e) = e {
                        e.attempts += 1;
                        e.retry_at = Some(now + backoff(e.attempts));
                        // Without ownership the journal carries the writes to whoever adopts
                        // it; stop trying after a few attempts.
                        give_up = lapsed && e.attempts >= 3;
                    }
                    if in_map && !give_up {
                        sh.retry.push(item.key.clone());
                    }
                    if give_up {
                        dropped = if in_map {
                            sh.take(&item.key, &self.c)
                        } else {
                            sh.evicting.remove(&*item.key)
                        };
                    }
                }
            }
        }
        if forget {
            let _ = self.journal.send(JReq::Forget {
                key: item.key,
                seq: item.seq,
            });
        }
        // The port goes after the forget above is durable.
        if let Some(e) = dropped {
            self.release_later(vec![e.guard]);
        }
    }

    /// Flushes until nothing is dirty, or until the request timeout passes.
    pub(crate) async fn flush_all(&self) -> Result<()> {
        let deadline = Instant::now() + self.cfg.request_timeout();
        loop {
            self.flush_round(true).await;
            let left = self.c.dirty.load(Ordering::Relaxed) as usize
                + self
                    .store
                    .shards()
                    .map(|s| lock(s).evicting.len())
                    .sum::<usize>();
            if left == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CacheError::Journal(format!(
                    "{left} dirty keys could not be flushed; their writes stay in the journal"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
