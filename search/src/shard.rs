//! One shard's tantivy index on its owner: opening (resume or rebuild from the document
//! table), fenced writes, the commit loop, and searches.

use crate::collect::{Fruit, Position, TopCollector};
use crate::error::{Result, SearchError};
use crate::highlight;
use crate::query::{plan, SearchRequest};
use crate::schema::{to_tantivy, visible_doc, DocId, Fields, IndexMeta};
use crate::store::{shard_table, DocRow, Store};
use crate::tokenize;
use jieba_rs::Jieba;
use keyward_ownership::Guard;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tantivy::schema::Value as _;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};
use tokio::sync::{watch, Notify};

/// Rows read per page when catching up from the document table.
const SCAN_PAGE: usize = 1000;
/// How long a searcher kept for a cursor stays alive after its last use.
const SNAPSHOT_TTL: Duration = Duration::from_secs(300);
const MAX_SNAPSHOTS: usize = 32;

/// One write of a batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Add or replace the whole document.
    Put {
        id: Json,
        body: Map<String, Json>,
    },
    /// Merge fields into the stored document (created if missing).
    Update {
        id: Json,
        body: Map<String, Json>,
    },
    Delete {
        id: Json,
    },
}

impl Op {
    pub fn id(&self) -> &Json {
        match self {
            Op::Put { id, .. } | Op::Update { id, .. } | Op::Delete { id } => id,
        }
    }
}

/// The payload tantivy keeps with each commit: how far the index has applied the table.
#[derive(Serialize, Deserialize)]
struct CommitPayload {
    seq: i64,
    uid: String,
}

/// Counters of one shard, as `GET /indexes/{name}/stats` shows them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardStats {
    pub shard: u32,
    pub owner: String,
    pub documents: u64,
    pub segments: usize,
    /// Sequence of the last write stored and applied.
    pub applied_seq: i64,
    /// Sequence of the last write searchable.
    pub visible_seq: i64,
    /// How the shard was opened on this owner: rows re-applied from the document table.
    pub caught_up_rows: u64,
}

/// A shard's answer to a search.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShardResult {
    pub hits: Vec<ShardHit>,
    pub total: u64,
    pub facets: BTreeMap<String, BTreeMap<String, u64>>,
    /// Id of the searcher kept for the cursor, if one was asked for.
    pub snapshot: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardHit {
    pub pos: crate::collect::WirePosition,
    pub score: f32,
    /// `None` for hits the caller skips (offset).
    pub id: Option<Json>,
    pub doc: Option<Json>,
    pub highlights: Option<BTreeMap<String, String>>,
}

/// A search as sent to a shard (possibly over HTTP to its owner).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardQuery {
    pub req: SearchRequest,
    /// How many hits to return, best first.
    pub k: usize,
    /// Leading hits returned without their documents (an offset on a one-shard index).
    pub skip: usize,
    pub after: Option<crate::collect::WirePosition>,
    pub snapshot: Option<u64>,
    pub keep_snapshot: bool,
}

pub struct Shard {
    pub meta: IndexMeta,
    pub shard: u32,
    pub table: String,
    fields: Fields,
    index: Index,
    reader: IndexReader,
    writer: Arc<tokio::sync::Mutex<IndexWriter<TantivyDocument>>>,
    guard: Guard,
    store: Arc<dyn Store>,
    /// Serializes write batches; holds the next sequence number.
    next_seq: tokio::sync::Mutex<i64>,
    applied: AtomicI64,
    visible: watch::Sender<i64>,
    commit_now: Notify,
    closed: AtomicBool,
    caught_up: u64,
    snapshots: Mutex<HashMap<u64, (Searcher, Instant)>>,
}

fn engine<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> SearchError {
    move |e| SearchError::Engine(format!("{what}: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens the local index when its schema matches, or creates it afresh (derived data: a
/// mismatch only costs a rebuild).
fn open_index(dir: &Path, fields: &Fields) -> Result<Index> {
    std::fs::create_dir_all(dir).map_err(engine("create index dir"))?;
    if let Ok(idx) = Index::open_in_dir(dir) {
        let same =
            serde_json::to_string(&idx.schema()).ok() == serde_json::to_string(&fields.schema).ok();
        if same {
            return Ok(idx);
        }
        tracing::warn!(dir = %dir.display(), "index schema changed; rebuilding the shard");
    }
    std::fs::remove_dir_all(dir).map_err(engine("clear index dir"))?;
    std::fs::create_dir_all(dir).map_err(engine("create index dir"))?;
    Ok(Index::create_in_dir(dir, fields.schema.clone())?)
}

pub struct OpenArgs {
    pub meta: IndexMeta,
    pub shard: u32,
    pub dir: PathBuf,
    pub guard: Guard,
    pub store: Arc<dyn Store>,
    pub jieba: Arc<Jieba>,
    pub writer_threads: usize,
    pub writer_memory_mb: usize,
    pub commit_interval: Duration,
}

impl Shard {
    /// Opens the shard on its new owner: resumes the local index from its last committed
    /// sequence (or rebuilds it from nothing), re-applying every newer row of the document
    /// table, then commits so that everything stored is searchable before it serves.
    pub async fn open(a: OpenArgs) -> Result<Arc<Shard>> {
        let fields = Fields::build(&a.meta);
        let table = shard_table(&a.meta, a.shard);
        let dir = a.dir.clone();
        let f2 = fields.clone();
        let jieba = a.jieba.clone();
        let threads = a.writer_threads.max(1);
        let mem = a.writer_memory_mb.max(16) * 1024 * 1024;
        let uid = a.meta.uid.clone();
        let (index, writer, start_seq) = tokio::task::spawn_blocking(move || -> Result<_> {
            let index = open_index(&dir, &f2)?;
            tokenize::register(index.tokenizers(), &jieba);
            let payload = index.load_metas()?.payload;
            let seq = payload
                .and_then(|p| serde_json::from_str::<CommitPayload>(&p).ok())
                .filter(|p| p.uid == uid)
                .map(|p| p.seq)
                .unwrap_or(0);
            // A previous owner in this process may still be closing its writer.
            let mut tries = 0;
            let writer: IndexWriter<TantivyDocument> = loop {
                match index.writer_with_num_threads(threads, mem) {
                    Ok(w) => break w,
                    Err(tantivy::TantivyError::LockFailure(..)) if tries < 200 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(25));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            if seq == 0 {
                // Nothing trustworthy on disk: start from an empty index.
                writer.delete_all_documents()?;
            }
            Ok((index, writer, seq))
        })
        .await
        .map_err(engine("open task"))??;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let writer = Arc::new(tokio::sync::Mutex::new(writer));

        // Catch up from the system of record.
        let mut max_seq = start_seq;
        let mut caught_up = 0u64;
        let mut after: Option<String> = None;
        loop {
            let page = a
                .store
                .scan_rows(&table, after.as_deref(), SCAN_PAGE)
                .await?;
            let newer: Vec<DocRow> = page
                .rows
                .into_iter()
                .filter(|r| r.seq > start_seq)
                .collect();
            for r in &newer {
                max_seq = max_seq.max(r.seq);
            }
            caught_up += newer.len() as u64;
            if !newer.is_empty() {
                let w = writer.clone().lock_owned().await;
                let f = fields.clone();
                tokio::task::spawn_blocking(move || apply_rows(&w, &f, &newer))
                    .await
                    .map_err(engine("catch-up task"))??;
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let (visible, _) = watch::channel(0);
        let shard = Arc::new(Shard {
            meta: a.meta,
            shard: a.shard,
            table,
            fields,
            index,
            reader,
            writer,
            guard: a.guard,
            store: a.store,
            next_seq: tokio::sync::Mutex::new(max_seq + 1),
            applied: AtomicI64::new(max_seq),
            visible,
            commit_now: Notify::new(),
            closed: AtomicBool::new(false),
            caught_up,
            snapshots: Mutex::new(HashMap::new()),
        });
        shard.commit().await?;
        tracing::info!(
            index = %shard.meta.def.name, shard = shard.shard, from_seq = start_seq,
            to_seq = max_seq, rows = caught_up, "search shard opened"
        );
        tokio::spawn(commit_loop(Arc::downgrade(&shard), a.commit_interval));
        Ok(shard)
    }

    pub fn key(&self) -> &str {
        self.guard.key()
    }

    /// Whether this node still surely owns the shard.
    pub fn is_valid(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.guard.is_valid()
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.commit_now.notify_one();
    }

    /// Resolves when ownership is lost.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.guard.lost()
    }

    fn not_owner(&self, reason: impl Into<String>) -> SearchError {
        SearchError::NotOwner {
            shard: self.key().to_owned(),
            reason: reason.into(),
        }
    }

    /// Stores a batch durably (fenced by this owner's token), then applies it to the index.
    /// Returns the batch's last sequence number.
    pub async fn write(&self, ops: Vec<Op>) -> Result<i64> {
        let mut next = self.next_seq.lock().await;
        if !self.is_valid() {
            return Err(self.not_owner("ownership lost"));
        }
        let mut ids = Vec::with_capacity(ops.len());
        for op in &ops {
            ids.push(DocId::from_json(op.id())?);
        }
        // Partial updates merge into what is stored.
        let update_keys: Vec<String> = ops
            .iter()
            .zip(&ids)
            .filter(|(op, _)| matches!(op, Op::Update { .. }))
            .map(|(_, id)| id.key.clone())
            .collect();
        let mut existing: HashMap<String, Map<String, Json>> = HashMap::new();
        if !update_keys.is_empty() {
            let rows = self.store.get_rows(&self.table, &update_keys).await?;
            for r in rows.into_iter().flatten() {
                if let Some(b) = r.body {
                    existing.insert(r.key, b);
                }
            }
        }
        let mut rows: Vec<DocRow> = Vec::with_capacity(ops.len());
        let mut seq = *next;
        for (op, id) in ops.into_iter().zip(&ids) {
            let body = match op {
                Op::Put { body, .. } => Some(body),
                Op::Update { body, .. } => {
                    let mut merged = existing.remove(&id.key).unwrap_or_default();
                    merged.extend(body);
                    Some(merged)
                }
                Op::Delete { .. } => None,
            };
            // Later updates of the same id in this batch merge into this version; without
            // updates there is nothing to keep (and no copy to pay for).
            if !update_keys.is_empty() {
                if let Some(b) = &body {
                    existing.insert(id.key.clone(), b.clone());
                } else {
                    existing.remove(&id.key);
                }
            }
            rows.push(DocRow {
                key: id.key.clone(),
                seq,
                body,
            });
            seq += 1;
        }
        let last = seq - 1;
        match self
            .store
            .put_rows(&self.table, &rows, self.guard.token())
            .await
        {
            Ok(()) => {}
            Err(e @ SearchError::NotOwner { .. }) => {
                self.close();
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        *next = seq;
        let w = self.writer.clone().lock_owned().await;
        let f = self.fields.clone();
        tokio::task::spawn_blocking(move || apply_rows(&w, &f, &rows))
            .await
            .map_err(engine("apply task"))??;
        self.applied.store(last, Ordering::Release);
        drop(next);
        Ok(last)
    }

    /// Commits what was applied and makes it searchable.
    pub async fn commit(&self) -> Result<()> {
        let mut w = self.writer.clone().lock_owned().await;
        let seq = self.applied.load(Ordering::Acquire);
        if seq <= *self.visible.borrow() && seq != 0 {
            return Ok(());
        }
        let payload = serde_json::to_string(&CommitPayload {
            seq,
            uid: self.meta.uid.clone(),
        })
        .map_err(engine("commit payload"))?;
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut pc = w.prepare_commit()?;
            pc.set_payload(&payload);
            pc.commit()?;
            reader.reload()?;
            Ok(())
        })
        .await
        .map_err(engine("commit task"))??;
        self.visible.send_replace(seq);
        Ok(())
    }

    /// Waits until the write of sequence `seq` is searchable (asks for a commit now).
    pub async fn wait_visible(&self, seq: i64, timeout: Duration) -> Result<()> {
        let mut rx = self.visible.subscribe();
        self.commit_now.notify_one();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|v| *v >= seq).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.not_owner("shard closed while waiting")),
            Err(_) => Err(SearchError::Unavailable(format!(
                "write {seq} not searchable after {} ms",
                timeout.as_millis()
            ))),
        }
    }

    pub fn stats(&self) -> ShardStats {
        let s = self.reader.searcher();
        ShardStats {
            shard: self.shard,
            owner: self.guard.coordinator().node_id().to_string(),
            documents: s.num_docs(),
            segments: s.segment_readers().len(),
            applied_seq: self.applied.load(Ordering::Acquire),
            visible_seq: *self.visible.borrow(),
            caught_up_rows: self.caught_up,
        }
    }

    fn searcher_for(&self, snapshot: Option<u64>, keep: bool) -> (Searcher, Option<u64>) {
        let mut snaps = lock(&self.snapshots);
        let now = Instant::now();
        snaps.retain(|_, (_, t)| now.duration_since(*t) < SNAPSHOT_TTL);
        if let Some(id) = snapshot {
            if let Some((s, t)) = snaps.get_mut(&id) {
                *t = now;
                return (s.clone(), Some(id));
            }
        }
        let s = self.reader.searcher();
        if !keep {
            return (s, None);
        }
        let id = s.generation().generation_id();
        if !snaps.contains_key(&id) && snaps.len() >= MAX_SNAPSHOTS {
            if let Some(oldest) = snaps.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                snaps.remove(&oldest);
            }
        }
        snaps.insert(id, (s.clone(), now));
        (s, Some(id))
    }

    /// Runs a search on this shard (blocking work: call from `spawn_blocking`).
    pub fn search(&self, q: &ShardQuery) -> Result<ShardResult> {
        let plan = plan(&self.meta, &self.fields, self.index.tokenizers(), &q.req)?;
        let after = match &q.after {
            Some(w) => Some(
                w.position()
                    .ok_or_else(|| SearchError::InvalidCursor("bad position".into()))?,
            ),
            None => None,
        };
        let (searcher, snapshot) = self.searcher_for(q.snapshot, q.keep_snapshot);
        let collector = TopCollector {
            sort: plan.sort.clone(),
            scoring: plan.scoring,
            k: q.k,
            after,
            facets: plan.facets.clone(),
        };
        let fruit: Fruit = searcher.search(plan.query.as_ref(), &collector)?;
        let mut analyzers: HashMap<String, tantivy::tokenizer::TextAnalyzer> = HashMap::new();
        if q.req.highlight {
            for (_, _, tok, _) in &plan.highlight_terms {
                if let Some(a) = self.index.tokenizers().get(tok) {
                    analyzers.insert(tok.clone(), a);
                }
            }
        }
        let mut hits = Vec::with_capacity(fruit.hits.len());
        for (i, h) in fruit.hits.iter().enumerate() {
            let mut hit = ShardHit {
                pos: Position::into(h.pos),
                score: h.score,
                id: None,
                doc: None,
                highlights: None,
            };
            if i >= q.skip {
                let d: TantivyDocument = searcher.doc(h.addr)?;
                let src = d
                    .get_first(self.fields.src)
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let body: Map<String, Json> = serde_json::from_str(&src).unwrap_or_default();
                hit.id = body.get(&self.meta.def.id_field).cloned();
                if q.req.highlight {
                    let mut hl = BTreeMap::new();
                    for (name, _, tok, terms) in &plan.highlight_terms {
                        let (Some(v), Some(a)) = (body.get(name), analyzers.get_mut(tok)) else {
                            continue;
                        };
                        let text = crate::schema::texts(v).join("\n");
                        if let Some(s) = highlight::snippet(a, &text, terms) {
                            hl.insert(name.clone(), s);
                        }
                    }
                    hit.highlights = Some(hl);
                }
                hit.doc = Some(visible_doc(&self.meta, &body));
            }
            hits.push(hit);
        }
        Ok(ShardResult {
            hits,
            total: fruit.total,
            facets: fruit.facets,
            snapshot,
        })
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// Applies rows to the writer: each replaces any older version of its document.
fn apply_rows(w: &IndexWriter<TantivyDocument>, fields: &Fields, rows: &[DocRow]) -> Result<()> {
    for r in rows {
        w.delete_term(Term::from_field_text(fields.id, &r.key));
        if let Some(body) = &r.body {
            let id = DocId {
                json: Json::Null,
                key: r.key.clone(),
            };
            w.add_document(to_tantivy(fields, &id, body))?;
        }
    }
    Ok(())
}

async fn commit_loop(shard: std::sync::Weak<Shard>, every: Duration) {
    loop {
        let notified = {
            let Some(s) = shard.upgrade() else { return };
            if s.closed.load(Ordering::Acquire) {
                return;
            }
            let s2 = s.clone();
            drop(s);
            async move {
                s2.commit_now.notified().await;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = notified => {}
        }
        let Some(s) = shard.upgrade() else { return };
        if s.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = s.commit().await {
            tracing::warn!(shard = %s.key(), error = %e, "search commit failed");
        }
    }
}
