//! `copy`: streams tables from one DBC backend to another through the record face, in scan
//! pages written with `put_many`, with a checkpoint per table in the target so that an
//! interrupted copy resumes where it stopped; ends with row counts and an order-independent
//! checksum computed on both sides.

use crate::checksum::{canonical_json, hex};
use crate::cli::connect;
use crate::error::{MigrateError, Result};
use crate::history::{now_micros, HISTORY_TABLE};
use crate::lock::LOCK_TABLE;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keyward_dbc::{
    Db, Field, FieldType, Key, Record, ScanCursor, ScanPage, Table, TableDef, Value,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Name of the checkpoint table kept in the target.
pub const CHECKPOINT_TABLE: &str = "keyward_copy_checkpoint";

/// One batch written by `copy`: the hook receives the target database's id (DBC's
/// `database_id()`, hyphenated), the table and the keys written, so that cache owners of the
/// target can invalidate them.
#[derive(Debug)]
pub struct CopiedBatch {
    pub database: String,
    pub table: String,
    pub keys: Vec<Key>,
}

/// The hook awaited after each batch is written, before the checkpoint may move past it; an
/// error stops the copy (which a rerun resumes).
pub type OnCopied = Arc<
    dyn Fn(
            CopiedBatch,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::result::Result<(), String>> + Send>,
        > + Send
        + Sync,
>;

#[derive(Clone)]
pub struct CopyOptions {
    pub tables: Vec<String>,
    pub batch_size: usize,
    /// Batches written at once (each on its own pooled connection).
    pub parallel: usize,
    pub restart: bool,
    pub verify: bool,
    pub dry_run: bool,
    pub progress: bool,
    pub stop_after_rows: Option<u64>,
    pub cancel: CancellationToken,
    pub on_copied: Option<OnCopied>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            tables: vec![],
            batch_size: 5000,
            parallel: 4,
            restart: false,
            verify: true,
            dry_run: false,
            progress: false,
            stop_after_rows: None,
            cancel: CancellationToken::new(),
            on_copied: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TableCopy {
    pub table: String,
    /// Rows already copied by an earlier, interrupted run.
    pub resumed_from: u64,
    pub copied_this_run: u64,
    pub source_rows: Option<u64>,
    pub target_rows: Option<u64>,
    pub source_checksum: Option<String>,
    pub target_checksum: Option<String>,
    pub matches: Option<bool>,
    /// Seconds spent copying rows, and comparing both sides afterwards.
    pub copy_seconds: f64,
    pub verify_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CopyReport {
    pub dry_run: bool,
    pub tables: Vec<TableCopy>,
    pub rows_copied: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
}

fn checkpoint_def() -> TableDef {
    TableDef {
        name: CHECKPOINT_TABLE.to_owned(),
        fields: vec![
            Field::new("source_id", FieldType::Text),
            Field::new("table_name", FieldType::Text),
            Field::new("scan_cursor", FieldType::Text).nullable(),
            Field::new("rows_copied", FieldType::I64),
            Field::new("done", FieldType::Bool),
            Field::new("updated_at", FieldType::Timestamp),
        ],
        primary_key: vec!["source_id".to_owned(), "table_name".to_owned()],
    }
}

/// Where a table's copy stands.
#[derive(Clone, Debug, PartialEq)]
struct Checkpoint {
    cursor: Option<String>,
    rows: u64,
    done: bool,
}

async fn load_checkpoint(t: &Table, source_id: &str, table: &str) -> Result<Option<Checkpoint>> {
    let r = t
        .get(&[Value::Text(source_id.into()), Value::Text(table.into())])
        .await?;
    Ok(r.map(|r| Checkpoint {
        cursor: match r.get(2) {
            Some(Value::Text(s)) => Some(s.clone()),
            _ => None,
        },
        rows: match r.get(3) {
            Some(Value::I64(n)) => (*n).max(0) as u64,
            _ => 0,
        },
        done: matches!(r.get(4), Some(Value::Bool(true))),
    }))
}

async fn save_checkpoint(t: &Table, source_id: &str, table: &str, c: &Checkpoint) -> Result<()> {
    t.put(&vec![
        Value::Text(source_id.into()),
        Value::Text(table.into()),
        c.cursor.clone().map(Value::Text).unwrap_or(Value::Null),
        Value::I64(c.rows as i64),
        Value::Bool(c.done),
        Value::Timestamp(now_micros()),
    ])
    .await?;
    Ok(())
}

/// Tables Keyward keeps for itself, never copied unless named.
fn is_internal(name: &str) -> bool {
    name == HISTORY_TABLE
        || name == LOCK_TABLE
        || name == CHECKPOINT_TABLE
        || name.starts_with("_kw")
}

/// Feeds one value into a hasher, with a tag and length so that distinct rows never
/// serialize alike, and in a form that does not depend on the backend.
fn hash_value(h: &mut Sha256, v: &Value) {
    let mut put = |tag: u8, bytes: &[u8]| {
        h.update([tag]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    match v {
        Value::Null => put(0, &[]),
        Value::Bool(b) => put(1, &[*b as u8]),
        Value::I64(n) => put(2, &n.to_le_bytes()),
        Value::F64(f) => put(3, &f.to_bits().to_le_bytes()),
        Value::Decimal(d) => put(4, d.to_string().as_bytes()),
        Value::Text(s) => put(5, s.as_bytes()),
        Value::Bytes(b) => put(6, b),
        Value::Timestamp(t) => put(7, &t.timestamp_micros().to_le_bytes()),
        Value::Uuid(u) => put(8, u.as_bytes()),
        Value::Json(j) => put(9, canonical_json(j).as_bytes()),
    }
}

/// An order-independent digest of a multiset of rows: the wrapping sum of per-row hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableDigest {
    pub rows: u64,
    pub sum: u128,
}

impl TableDigest {
    pub fn add(&mut self, rec: &Record) {
        let mut h = Sha256::new();
        for v in rec {
            hash_value(&mut h, v);
        }
        let d = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&d.as_slice()[..16]);
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(first));
        self.rows += 1;
    }

    pub fn hex(&self) -> String {
        hex(&self.sum.to_be_bytes())
    }
}

/// Counts and digests a whole table by scanning it. The next page is fetched while the
/// current one is hashed.
pub async fn digest_table(t: &Table, page: usize) -> Result<TableDigest> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<Record>>>(2);
    let table = t.clone();
    let scanner = tokio::spawn(async move {
        let mut cursor: Option<ScanCursor> = None;
        loop {
            match table.scan(cursor.as_ref(), page).await {
                Ok(p) => {
                    let next = p.next;
                    if tx.send(Ok(p.records)).await.is_err() {
                        return;
                    }
                    match next {
                        Some(c) => cursor = Some(c),
                        None => return,
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
        }
    });
    let mut d = TableDigest::default();
    while let Some(records) = rx.recv().await {
        for r in &records? {
            d.add(r);
        }
    }
    scanner
        .await
        .map_err(|e| MigrateError::Other(format!("digest scanner: {e}")))?;
    Ok(d)
}

fn key_of(def: &TableDef, rec: &Record) -> Key {
    def.primary_key
        .iter()
        .filter_map(|k| def.fields.iter().position(|f| &f.name == k))
        .filter_map(|i| rec.get(i).cloned())
        .collect()
}

/// The definitions of the tables to copy, as the source's record face knows them.
async fn source_tables(src: &Db, names: &[String]) -> Result<Vec<TableDef>> {
    if names.is_empty() {
        // Listing every table needs DBC's schema introspection, which its public API does not
        // offer yet; until then the tables are named.
        return Err(MigrateError::Usage(
            "name the tables to copy with --tables a,b (listing all tables needs DBC schema introspection)".into(),
        ));
    }
    let mut out = Vec::new();
    for n in names {
        if is_internal(n) {
            return Err(MigrateError::Usage(format!(
                "{n} is one of Keyward's own tables and is not copied"
            )));
        }
        match src.table(n).await {
            Ok(t) => out.push(t.def().clone()),
            Err(keyward_dbc::DbcError::NotFound { .. }) => {
                return Err(MigrateError::NotFound(format!(
                    "table {n:?} is not a record-face table of the source database"
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn progress_bar(enabled: bool, table: &str, total: u64, done: u64) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(total),
        if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>20} [{bar:30}] {pos}/{len} rows  {per_sec}  eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(table.to_owned());
    pb.set_position(done);
    pb.reset_eta();
    pb
}

/// Copies tables from `from` to `to` (URLs).
pub async fn copy(from: &str, to: &str, opts: CopyOptions) -> Result<CopyReport> {
    let src = connect(from).await?;
    let dst = connect(to).await?;
    let res = copy_between(&src, &dst, &opts).await;
    src.close().await;
    dst.close().await;
    res
}

/// As [`copy`], on open connections.
pub async fn copy_between(src: &Db, dst: &Db, opts: &CopyOptions) -> Result<CopyReport> {
    let started = Instant::now();
    let source_id = src.database_id().await?.to_string();
    let defs = source_tables(src, &opts.tables).await?;
    let target_id = match &opts.on_copied {
        Some(_) if !opts.dry_run => Some(dst.database_id().await?.hyphenated().to_string()),
        _ => None,
    };
    let checkpoints = if opts.dry_run {
        None
    } else {
        Some(dst.define_table(checkpoint_def()).await?)
    };
    let mut report = CopyReport {
        dry_run: opts.dry_run,
        tables: vec![],
        rows_copied: 0,
        seconds: 0.0,
        rows_per_second: 0.0,
    };
    let mut budget = opts.stop_after_rows;
    for def in defs {
        let name = def.name.clone();
        let s_table = src.define_table(def.clone()).await?;
        let total = s_table.count().await?;
        let mut entry = TableCopy {
            table: name.clone(),
            resumed_from: 0,
            copied_this_run: 0,
            source_rows: Some(total),
            target_rows: None,
            source_checksum: None,
            target_checksum: None,
            matches: None,
            copy_seconds: 0.0,
            verify_seconds: 0.0,
        };
        let Some(cp_table) = &checkpoints else {
            report.tables.push(entry);
            continue;
        };
        let d_table = dst.define_table(def.clone()).await?;
        let mut cp = match load_checkpoint(cp_table, &source_id, &name).await? {
            Some(c) if !opts.restart => c,
            _ => Checkpoint {
                cursor: None,
                rows: 0,
                done: false,
            },
        };
        entry.resumed_from = cp.rows;
        // The digest of what this run read, usable only when it read the whole table.
        let mut read_digest = None;
        if !cp.done {
            let run = TableRun {
                name: &name,
                def: &def,
                source_id: &source_id,
                src: &s_table,
                dst: &d_table,
                checkpoints: cp_table,
                total,
                target_id: target_id.as_deref(),
            };
            let t = Instant::now();
            let (copied, digest) = run.copy(&mut cp, budget, opts).await?;
            entry.copy_seconds = t.elapsed().as_secs_f64();
            entry.copied_this_run = copied;
            report.rows_copied += copied;
            if let Some(b) = budget.as_mut() {
                *b = b.saturating_sub(copied);
            }
            if !cp.done {
                return Err(MigrateError::Interrupted(format!(
                    "copy of {name} stopped after {} rows (--stop-after-rows); run again to resume",
                    cp.rows
                )));
            }
            if entry.resumed_from == 0 {
                read_digest = digest;
            }
        }
        if opts.verify {
            let t = Instant::now();
            let page = opts.batch_size.max(DIGEST_PAGE);
            let (a, b) = match read_digest {
                Some(a) => (a, digest_table(&d_table, page).await?),
                None => {
                    tokio::try_join!(digest_table(&s_table, page), digest_table(&d_table, page))?
                }
            };
            entry.source_rows = Some(a.rows);
            entry.target_rows = Some(b.rows);
            entry.source_checksum = Some(a.hex());
            entry.target_checksum = Some(b.hex());
            entry.matches = Some(a == b);
            entry.verify_seconds = t.elapsed().as_secs_f64();
        }
        report.tables.push(entry);
    }
    let secs = started.elapsed().as_secs_f64();
    report.seconds = secs;
    report.rows_per_second = if secs > 0.0 {
        report.rows_copied as f64 / secs
    } else {
        0.0
    };
    let bad: Vec<String> = report
        .tables
        .iter()
        .filter(|t| t.matches == Some(false))
        .map(|t| {
            format!(
                "{}: source {} rows {}, target {} rows {}",
                t.table,
                t.source_rows.unwrap_or(0),
                t.source_checksum.as_deref().unwrap_or("-"),
                t.target_rows.unwrap_or(0),
                t.target_checksum.as_deref().unwrap_or("-")
            )
        })
        .collect();
    if !bad.is_empty() {
        return Err(MigrateError::Integrity(format!(
            "copied tables differ: {}",
            bad.join("; ")
        )));
    }
    Ok(report)
}

/// Rows per page when digesting for the final comparison (independent of the write batch).
const DIGEST_PAGE: usize = 5000;
/// How often the checkpoint row is rewritten while batches complete.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The copy of one table: a reader task scans the source (and digests what it reads) ahead
/// of the writers, up to `parallel` batches are written at once, and the checkpoint only
/// moves past batches that completed in order, so a resumed copy never skips a row.
struct TableRun<'a> {
    name: &'a str,
    def: &'a TableDef,
    source_id: &'a str,
    src: &'a Table,
    dst: &'a Table,
    checkpoints: &'a Table,
    total: u64,
    /// The target's database id, when a hook wants to hear of copied keys.
    target_id: Option<&'a str>,
}

struct Written {
    task: JoinHandle<Result<()>>,
    rows: u64,
    next: Option<ScanCursor>,
}

impl TableRun<'_> {
    /// Copies from the checkpoint on; returns the rows copied and, when the reader went to
    /// the end, the digest of everything it read.
    async fn copy(
        &self,
        cp: &mut Checkpoint,
        budget: Option<u64>,
        opts: &CopyOptions,
    ) -> Result<(u64, Option<TableDigest>)> {
        let name = self.name;
        let cursor: Option<ScanCursor> = match &cp.cursor {
            Some(s) => Some(s.parse().map_err(|_| {
                MigrateError::Conflict(format!(
                    "checkpoint of table {name} has an unreadable cursor; rerun with --restart"
                ))
            })?),
            None => None,
        };
        let pb = progress_bar(opts.progress, name, self.total, cp.rows);
        let parallel = opts.parallel.max(1);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<ScanPage>>(parallel + 1);
        let reader = tokio::spawn(read_pages(
            self.src.clone(),
            cursor,
            opts.batch_size,
            budget,
            tx,
        ));
        let mut inflight: VecDeque<Written> = VecDeque::new();
        let mut reading = true;
        let mut copied = 0u64;
        let mut saved_at = Instant::now();
        let result: Result<()> = async {
            loop {
                if opts.cancel.is_cancelled() {
                    return Err(MigrateError::Interrupted(format!(
                        "copy of {name} stopped after {} rows; run the same command again to resume",
                        cp.rows
                    )));
                }
                if reading && inflight.len() < parallel {
                    let page = tokio::select! {
                        p = rx.recv() => p,
                        _ = opts.cancel.cancelled() => continue,
                    };
                    match page {
                        Some(Ok(page)) => inflight.push_back(self.write(page, opts)),
                        Some(Err(e)) => return Err(e),
                        None => reading = false,
                    }
                    continue;
                }
                let Some(w) = inflight.pop_front() else {
                    return Ok(());
                };
                w.task
                    .await
                    .map_err(|e| MigrateError::Other(format!("copy writer of {name}: {e}")))??;
                cp.rows += w.rows;
                copied += w.rows;
                pb.inc(w.rows);
                cp.cursor = w.next.as_ref().map(|c| c.to_string());
                cp.done = w.next.is_none();
                // Written after the batch: a crash in between re-copies at most a few
                // batches (the writes are upserts).
                if cp.done || saved_at.elapsed() >= CHECKPOINT_EVERY {
                    save_checkpoint(self.checkpoints, self.source_id, name, cp).await?;
                    saved_at = Instant::now();
                }
            }
        }
        .await;
        // Stopped early: the rows of batches that completed are kept in the checkpoint.
        if result.is_err() {
            reader.abort();
            for w in inflight {
                w.task.abort();
            }
        }
        if !cp.done && copied > 0 {
            save_checkpoint(self.checkpoints, self.source_id, name, cp).await?;
        }
        result?;
        let digest = match reader.await {
            Ok(d) => d,
            Err(e) => return Err(MigrateError::Other(format!("copy reader of {name}: {e}"))),
        };
        if cp.done {
            pb.finish();
        } else {
            pb.abandon();
        }
        Ok((copied, digest))
    }

    fn write(&self, page: ScanPage, opts: &CopyOptions) -> Written {
        let rows = page.records.len() as u64;
        let dst = self.dst.clone();
        let def = self.def.clone();
        let hook = opts
            .on_copied
            .clone()
            .zip(self.target_id.map(str::to_owned));
        let first = self.name.to_owned();
        let task = tokio::spawn(async move {
            if page.records.is_empty() {
                return Ok(());
            }
            let results = dst.put_many(&page.records).await?;
            if let Some((i, Err(e))) = results.into_iter().enumerate().find(|(_, r)| r.is_err()) {
                return Err(MigrateError::Other(format!(
                    "writing row {i} of a batch into {first}: {e}"
                )));
            }
            if let Some((hook, database)) = hook {
                let keys: Vec<Key> = page.records.iter().map(|r| key_of(&def, r)).collect();
                hook(CopiedBatch {
                    database,
                    table: def.name.clone(),
                    keys,
                })
                .await
                .map_err(|e| {
                    MigrateError::Other(format!(
                        "telling cache owners about a batch copied into {first}: {e}"
                    ))
                })?;
            }
            Ok::<(), MigrateError>(())
        });
        Written {
            task,
            rows,
            next: page.next,
        }
    }
}

/// Scans `table` from `cursor` in pages, at most `budget` rows, sending each page on; returns
/// the digest of the rows read when it reached the end of the table.
async fn read_pages(
    table: Table,
    mut cursor: Option<ScanCursor>,
    page: usize,
    mut budget: Option<u64>,
    tx: tokio::sync::mpsc::Sender<Result<ScanPage>>,
) -> Option<TableDigest> {
    let mut digest = TableDigest::default();
    loop {
        let mut limit = page;
        if let Some(b) = budget {
            if b == 0 {
                return None;
            }
            limit = limit.min(usize::try_from(b).unwrap_or(usize::MAX));
        }
        match table.scan(cursor.as_ref(), limit).await {
            Ok(p) => {
                for r in &p.records {
                    digest.add(r);
                }
                if let Some(b) = budget.as_mut() {
                    *b = b.saturating_sub(p.records.len() as u64);
                }
                let end = p.next.is_none();
                cursor = p.next.clone();
                if tx.send(Ok(p)).await.is_err() {
                    return None;
                }
                if end {
                    return Some(digest);
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_order_but_not_content() {
        let rows: Vec<Record> = (0..5)
            .map(|i| vec![Value::I64(i), Value::Text(format!("r{i}")), Value::Null])
            .collect();
        let mut a = TableDigest::default();
        let mut b = TableDigest::default();
        for r in &rows {
            a.add(r);
        }
        for r in rows.iter().rev() {
            b.add(r);
        }
        assert_eq!(a, b);
        let mut c = TableDigest::default();
        for r in &rows[..4] {
            c.add(r);
        }
        c.add(&vec![
            Value::I64(4),
            Value::Text("r4".into()),
            Value::Bool(false),
        ]);
        assert_ne!(a, c);
        // A value that moves between columns changes the digest.
        let mut d1 = TableDigest::default();
        d1.add(&vec![Value::Text("ab".into()), Value::Text("c".into())]);
        let mut d2 = TableDigest::default();
        d2.add(&vec![Value::Text("a".into()), Value::Text("bc".into())]);
        assert_ne!(d1, d2);
    }
}
