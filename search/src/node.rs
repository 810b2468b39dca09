//! The search service of one node: the index catalog, routing of each shard to its owner
//! (this node, or another one over HTTP), writes, and searches merged over shards.

use crate::collect::WirePosition;
use crate::config::SearchConfig;
use crate::error::{Result, SearchError};
use crate::query::{SearchRequest, FACET_VALUES};
use crate::schema::{check_doc, DocId, IndexDefinition, IndexMeta};
use crate::shard::{Op, OpenArgs, Shard, ShardHit, ShardQuery, ShardResult, ShardStats};
use crate::store::{shard_table, Store};
use crate::tokenize;
use jieba_rs::Jieba;
use keyward_ownership::{encode_key_part, Claim, Coordinator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a node trusts its cached copy of an index definition.
const META_TTL: Duration = Duration::from_secs(1);
/// Bound on waiting for a write to become searchable (`?wait=true`).
const WAIT_VISIBLE: Duration = Duration::from_secs(30);
/// Most documents in one write request.
pub const MAX_BATCH: usize = 100_000;
/// Header marking a request forwarded by another node: it is served here or refused, never
/// forwarded again.
pub const FORWARDED: &str = "x-keyward-forwarded";

/// A search answer (DESIGN.md section 7).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchResponse {
    pub hits: Vec<Hit>,
    pub total: u64,
    pub facets: BTreeMap<String, BTreeMap<String, u64>>,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hit {
    pub id: Json,
    pub score: f32,
    pub doc: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highlights: Option<BTreeMap<String, String>>,
}

/// The answer to a write batch: stored durably, searchable within the commit interval (at
/// once with `?wait=true`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteResponse {
    pub stored: usize,
    pub searchable: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexStats {
    pub name: String,
    pub uid: String,
    pub documents: u64,
    pub shards: Vec<ShardStats>,
    pub commit_interval_ms: u64,
}

/// A cursor as handed to clients (hex of this JSON).
#[derive(Serialize, Deserialize)]
struct Cursor {
    /// Fingerprint of the request the cursor belongs to.
    f: String,
    p: WirePosition,
    /// Per shard: the searcher kept for this cursor.
    s: Vec<Option<u64>>,
}

fn encode_cursor(c: &Cursor) -> String {
    let bytes = serde_json::to_vec(c).unwrap_or_default();
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn decode_cursor(s: &str) -> Result<Cursor> {
    let bad = || SearchError::InvalidCursor("not a cursor of this service".into());
    if !s.len().is_multiple_of(2) || s.len() > 4096 {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    serde_json::from_slice(&bytes.ok_or_else(bad)?).map_err(|_| bad())
}

enum Route {
    Local(Arc<Shard>),
    Remote(String),
}

pub(crate) struct Node {
    pub config: SearchConfig,
    pub store: Arc<dyn Store>,
    pub coord: Coordinator,
    http: reqwest::Client,
    shards: Mutex<HashMap<(String, u32), Arc<Shard>>>,
    opening: tokio::sync::Mutex<()>,
    jiebas: Mutex<HashMap<String, Arc<Jieba>>>,
    metas: Mutex<HashMap<String, (IndexMeta, Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long opening a shard waits for this node's own earlier guard of it to be released.
const OWN_RELEASE_WAIT: Duration = Duration::from_secs(2);

pub fn shard_key(index: &str, shard: u32) -> String {
    format!("search/{}/{shard}", encode_key_part(index))
}

/// The search service of one node. Cheap to clone.
#[derive(Clone)]
pub struct SearchService {
    pub(crate) node: Arc<Node>,
}

impl SearchService {
    /// A service over a document store and this node's ownership session. The session must
    /// announce this node's search HTTP address as endpoint `search` for other nodes to
    /// forward to it.
    pub fn new(config: SearchConfig, store: Arc<dyn Store>, coord: Coordinator) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| SearchError::Internal(format!("http client: {e}")))?;
        Ok(SearchService {
            node: Arc::new(Node {
                config,
                store,
                coord,
                http,
                shards: Mutex::new(HashMap::new()),
                opening: tokio::sync::Mutex::new(()),
                jiebas: Mutex::new(HashMap::new()),
                metas: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A service whose documents live in a DBC database (the catalog and shard tables are
    /// created there if missing).
    pub async fn with_db(
        config: SearchConfig,
        db: keyward_dbc::Db,
        coord: Coordinator,
    ) -> Result<Self> {
        let store = crate::dbc_store::DbcStore::open(db).await?;
        Self::new(config, Arc::new(store), coord)
    }

    pub fn config(&self) -> &SearchConfig {
        &self.node.config
    }

    pub fn coordinator(&self) -> &Coordinator {
        &self.node.coord
    }

    /// Closes every shard this node owns (their guards are released).
    pub fn shutdown(&self) {
        let all: Vec<Arc<Shard>> = lock(&self.node.shards).drain().map(|(_, s)| s).collect();
        for s in all {
            s.close();
        }
    }

    pub async fn create_index(&self, def: IndexDefinition) -> Result<IndexMeta> {
        let meta = def.validate(self.node.config.shards_per_index)?;
        if !self.node.store.create_index(&meta).await? {
            return Err(SearchError::IndexExists(meta.def.name));
        }
        lock(&self.node.metas).remove(&meta.def.name);
        Ok(meta)
    }

    pub async fn list_indexes(&self) -> Result<Vec<IndexMeta>> {
        self.node.store.list_indexes().await
    }

    /// The definition of an index (cached for up to a second).
    pub async fn index(&self, name: &str) -> Result<IndexMeta> {
        if let Some((m, t)) = lock(&self.node.metas).get(name) {
            if t.elapsed() < META_TTL {
                return Ok(m.clone());
            }
        }
        let m = self
            .node
            .store
            .get_index(name)
            .await?
            .ok_or_else(|| SearchError::IndexNotFound(name.to_owned()))?;
        lock(&self.node.metas).insert(name.to_owned(), (m.clone(), Instant::now()));
        Ok(m)
    }

    /// Removes an index from the catalog and drops this node's shards of it. Its document
    /// tables stay in the database (the record face has no table drop); a new index of the
    /// same name gets new tables.
    pub async fn delete_index(&self, name: &str) -> Result<()> {
        let meta = self.index(name).await?;
        if !self.node.store.delete_index(name).await? {
            return Err(SearchError::IndexNotFound(name.to_owned()));
        }
        lock(&self.node.metas).remove(name);
        let dropped: Vec<Arc<Shard>> = {
            let mut g = lock(&self.node.shards);
            let keys: Vec<_> = g.keys().filter(|(n, _)| n == name).cloned().collect();
            keys.into_iter().filter_map(|k| g.remove(&k)).collect()
        };
        for s in dropped {
            s.close();
        }
        let dir = self.node.config.data_dir.join(&meta.uid);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove index files");
            }
        }
        Ok(())
    }

    fn jieba(&self, meta: &IndexMeta) -> Arc<Jieba> {
        let mut g = lock(&self.node.jiebas);
        g.entry(meta.uid.clone())
            .or_insert_with(|| tokenize::jieba_for(&meta.def.user_dict))
            .clone()
    }

    fn local(&self, meta: &IndexMeta, shard: u32) -> Option<Arc<Shard>> {
        let mut g = lock(&self.node.shards);
        let k = (meta.def.name.clone(), shard);
        match g.get(&k) {
            Some(s) if s.meta.uid == meta.uid && s.is_valid() => Some(s.clone()),
            Some(_) => {
                if let Some(s) = g.remove(&k) {
                    s.close();
                }
                None
            }
            None => None,
        }
    }

    /// Finds who serves a shard; claims it (and opens it here) when nobody owns it. With
    /// `local_only` (a forwarded request), another owner is an error rather than a hop.
    async fn route(&self, meta: &IndexMeta, shard: u32, local_only: bool) -> Result<Route> {
        if let Some(s) = self.local(meta, shard) {
            return Ok(Route::Local(s));
        }
        let key = shard_key(&meta.def.name, shard);
        let node = &self.node;
        let owner = node
            .coord
            .owner_of(&[&key])
            .await
            .map_err(|e| SearchError::Unavailable(format!("ownership service: {e}")))?
            .pop()
            .flatten();
        if let Some(o) = &owner {
            if o.node != *node.coord.node_id() {
                return self.remote(&key, o.endpoint("search"), local_only);
            }
        }
        let _opening = node.opening.lock().await;
        if let Some(s) = self.local(meta, shard) {
            return Ok(Route::Local(s));
        }
        let deadline = tokio::time::Instant::now() + OWN_RELEASE_WAIT;
        let guard = loop {
            let claim = node
                .coord
                .claim(&[&key])
                .await
                .map_err(|e| SearchError::Unavailable(format!("ownership service: {e}")))?
                .pop();
            match claim {
                Some(Claim::Granted(g)) => break g,
                Some(Claim::OwnedBy(o)) if o.node != *node.coord.node_id() => {
                    return self.remote(&key, o.endpoint("search"), local_only)
                }
                // A shard this node closed (its index deleted and made again, or dropped
                // after a lapse) releases its port in the background: the port is still ours
                // until that release arrives, and the claim succeeds right after.
                Some(Claim::OwnedBy(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => {
                    return Err(SearchError::Unavailable(format!(
                        "shard {key} is held by this node but not open; retry"
                    )))
                }
            }
        };
        let s = Shard::open(OpenArgs {
            meta: meta.clone(),
            shard,
            dir: node.config.data_dir.join(&meta.uid).join(shard.to_string()),
            guard,
            store: node.store.clone(),
            jieba: self.jieba(meta),
            writer_threads: node.config.writer_threads,
            writer_memory_mb: node.config.writer_memory_mb,
            commit_interval: Duration::from_millis(node.config.commit_interval_ms.max(1)),
        })
        .await?;
        lock(&node.shards).insert((meta.def.name.clone(), shard), s.clone());
        // Drop the shard as soon as ownership is lost, so nothing is served from it.
        let weak = Arc::downgrade(&self.node);
        let lost = s.lost();
        let name = meta.def.name.clone();
        let uid = meta.uid.clone();
        tokio::spawn(async move {
            lost.await;
            if let Some(node) = weak.upgrade() {
                let mut g = lock(&node.shards);
                if g.get(&(name.clone(), shard))
                    .is_some_and(|s| s.meta.uid == uid)
                {
                    if let Some(s) = g.remove(&(name.clone(), shard)) {
                        tracing::info!(index = %name, shard, "search shard ownership lost");
                        s.close();
                    }
                }
            }
        });
        Ok(Route::Local(s))
    }

    fn remote(&self, key: &str, endpoint: Option<&str>, local_only: bool) -> Result<Route> {
        if local_only {
            return Err(SearchError::NotOwner {
                shard: key.to_owned(),
                reason: "the shard moved to another node".into(),
            });
        }
        match endpoint {
            Some(e) => Ok(Route::Remote(e.to_owned())),
            None => Err(SearchError::Unavailable(format!(
                "the owner of {key} announces no search endpoint"
            ))),
        }
    }

    async fn forward<B: Serialize, R: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R> {
        let url = if addr.starts_with("http://") || addr.starts_with("https://") {
            format!("{addr}{path}")
        } else {
            format!("http://{addr}{path}")
        };
        let mut rb = self.node.http.request(method, &url).header(FORWARDED, "1");
        if let Some(k) = self.node.config.write_keys.first() {
            rb = rb.bearer_auth(k);
        } else if let Some(k) = self.node.config.read_keys.first() {
            rb = rb.bearer_auth(k);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| SearchError::Unavailable(format!("shard owner at {addr}: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| SearchError::Unavailable(format!("shard owner at {addr}: {e}")))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| {
                SearchError::Unavailable(format!("shard owner at {addr} answered garbage: {e}"))
            });
        }
        let err: Json = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
        let code = err["error"]["code"].as_str().unwrap_or("unavailable");
        let msg = err["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_owned();
        Err(SearchError::from_remote(status, code, msg))
    }

    /// Checks documents and writes them as add-or-replace (`update` false) or as partial
    /// updates merged into the stored documents (`update` true).
    pub async fn add_documents(
        &self,
        index: &str,
        docs: Vec<Json>,
        update: bool,
        wait: bool,
    ) -> Result<WriteResponse> {
        let meta = self.index(index).await?;
        if docs.len() > MAX_BATCH {
            return Err(SearchError::InvalidRequest(format!(
                "{} documents in one batch, at most {MAX_BATCH}",
                docs.len()
            )));
        }
        let mut ops = Vec::with_capacity(docs.len());
        for d in docs {
            let c = check_doc(&meta, d)?;
            ops.push(if update {
                Op::Update {
                    id: c.id.json,
                    body: c.body,
                }
            } else {
                Op::Put {
                    id: c.id.json,
                    body: c.body,
                }
            });
        }
        self.write_ops(&meta, ops, wait).await
    }

    /// Deletes documents by id; ids that do not exist are ignored.
    pub async fn delete_documents(
        &self,
        index: &str,
        ids: Vec<Json>,
        wait: bool,
    ) -> Result<WriteResponse> {
        let meta = self.index(index).await?;
        if ids.len() > MAX_BATCH {
            return Err(SearchError::InvalidRequest(format!(
                "{} ids in one batch, at most {MAX_BATCH}",
                ids.len()
            )));
        }
        let mut ops = Vec::with_capacity(ids.len());
        for id in ids {
            ops.push(Op::Delete {
                id: DocId::from_json(&id)?.json,
            });
        }
        self.write_ops(&meta, ops, wait).await
    }

    /// Deletes one document; `DocumentNotFound` if it is not stored.
    pub async fn delete_document(
        &self,
        index: &str,
        id: &str,
        wait: bool,
    ) -> Result<WriteResponse> {
        let meta = self.index(index).await?;
        let id = DocId::from_key(id)?;
        if self.get_document_in(&meta, &id).await?.is_none() {
            return Err(SearchError::DocumentNotFound(id.key));
        }
        self.write_ops(&meta, vec![Op::Delete { id: id.json }], wait)
            .await
    }

    /// A stored document, read from the system of record.
    pub async fn get_document(&self, index: &str, id: &str) -> Result<Json> {
        let meta = self.index(index).await?;
        let id = DocId::from_key(id)?;
        match self.get_document_in(&meta, &id).await? {
            Some(b) => Ok(crate::schema::visible_doc(&meta, &b)),
            None => Err(SearchError::DocumentNotFound(id.key)),
        }
    }

    async fn get_document_in(
        &self,
        meta: &IndexMeta,
        id: &DocId,
    ) -> Result<Option<Map<String, Json>>> {
        let shard = (id.hash() % u64::from(meta.shards)) as u32;
        let rows = self
            .node
            .store
            .get_rows(&shard_table(meta, shard), std::slice::from_ref(&id.key))
            .await?;
        Ok(rows.into_iter().next().flatten().and_then(|r| r.body))
    }

    async fn write_ops(&self, meta: &IndexMeta, ops: Vec<Op>, wait: bool) -> Result<WriteResponse> {
        let n = ops.len();
        let mut per_shard: BTreeMap<u32, Vec<Op>> = BTreeMap::new();
        for op in ops {
            let id = DocId::from_json(op.id())?;
            let shard = (id.hash() % u64::from(meta.shards)) as u32;
            per_shard.entry(shard).or_default().push(op);
        }
        let futs = per_shard
            .into_iter()
            .map(|(shard, ops)| self.write_shard(meta, shard, ops, wait, false));
        for r in futures::future::join_all(futs).await {
            r?;
        }
        Ok(WriteResponse {
            stored: n,
            searchable: wait,
        })
    }

    pub(crate) async fn write_shard(
        &self,
        meta: &IndexMeta,
        shard: u32,
        ops: Vec<Op>,
        wait: bool,
        local_only: bool,
    ) -> Result<()> {
        match self.route(meta, shard, local_only).await? {
            Route::Local(s) => {
                let seq = s.write(ops).await?;
                if wait {
                    s.wait_visible(seq, WAIT_VISIBLE).await?;
                }
                Ok(())
            }
            Route::Remote(addr) => {
                let path = format!(
                    "/_kw/indexes/{}/shards/{shard}/write?wait={wait}",
                    meta.def.name
                );
                let _: Json = self
                    .forward(&addr, reqwest::Method::POST, &path, Some(&ops))
                    .await?;
                Ok(())
            }
        }
    }

    pub(crate) async fn search_shard(
        &self,
        meta: &IndexMeta,
        shard: u32,
        q: ShardQuery,
        local_only: bool,
    ) -> Result<ShardResult> {
        match self.route(meta, shard, local_only).await? {
            Route::Local(s) => tokio::task::spawn_blocking(move || s.search(&q))
                .await
                .map_err(|e| SearchError::Internal(format!("search task: {e}")))?,
            Route::Remote(addr) => {
                let path = format!("/_kw/indexes/{}/shards/{shard}/search", meta.def.name);
                self.forward(&addr, reqwest::Method::POST, &path, Some(&q))
                    .await
            }
        }
    }

    pub(crate) async fn stats_shard(
        &self,
        meta: &IndexMeta,
        shard: u32,
        local_only: bool,
    ) -> Result<ShardStats> {
        match self.route(meta, shard, local_only).await? {
            Route::Local(s) => Ok(s.stats()),
            Route::Remote(addr) => {
                let path = format!("/_kw/indexes/{}/shards/{shard}/stats", meta.def.name);
                self.forward::<(), _>(&addr, reqwest::Method::GET, &path, None)
                    .await
            }
        }
    }

    pub async fn stats(&self, index: &str) -> Result<IndexStats> {
        let meta = self.index(index).await?;
        let futs = (0..meta.shards).map(|s| self.stats_shard(&meta, s, false));
        let mut shards = Vec::new();
        for r in futures::future::join_all(futs).await {
            shards.push(r?);
        }
        Ok(IndexStats {
            name: meta.def.name.clone(),
            uid: meta.uid.clone(),
            documents: shards.iter().map(|s| s.documents).sum(),
            shards,
            commit_interval_ms: self.node.config.commit_interval_ms,
        })
    }

    /// Every value of a tag field with its document count.
    pub async fn tag_values(&self, index: &str, field: &str) -> Result<BTreeMap<String, u64>> {
        let req = SearchRequest {
            facets: vec![field.to_owned()],
            limit: Some(0),
            ..Default::default()
        };
        let mut r = self.search_inner(index, req, usize::MAX).await?;
        Ok(r.facets.remove(field).unwrap_or_default())
    }

    pub async fn search(&self, index: &str, req: SearchRequest) -> Result<SearchResponse> {
        self.search_inner(index, req, FACET_VALUES).await
    }

    async fn search_inner(
        &self,
        index: &str,
        req: SearchRequest,
        facet_values: usize,
    ) -> Result<SearchResponse> {
        let meta = self.index(index).await?;
        let (limit, offset) = req.page()?;
        if let Some(q) = &req.q {
            if q.len() > crate::query::MAX_QUERY_BYTES {
                return Err(SearchError::QueryTooLong {
                    len: q.len(),
                    limit: crate::query::MAX_QUERY_BYTES,
                });
            }
        }
        let fingerprint = format!("{:x}", req.fingerprint());
        let cursor = match &req.cursor {
            Some(c) => {
                let c = decode_cursor(c)?;
                if c.f != fingerprint || c.s.len() != meta.shards as usize {
                    return Err(SearchError::InvalidCursor(
                        "the cursor belongs to another query".into(),
                    ));
                }
                Some(c)
            }
            None => None,
        };
        let single = meta.shards == 1;
        // One more than asked, to learn whether a next page exists.
        let k = offset + limit + 1;
        let futs = (0..meta.shards).map(|s| {
            let q = ShardQuery {
                req: req.clone(),
                k,
                skip: if single { offset } else { 0 },
                after: cursor.as_ref().map(|c| c.p.clone()),
                snapshot: cursor
                    .as_ref()
                    .and_then(|c| c.s.get(s as usize).copied().flatten()),
                keep_snapshot: limit > 0,
            };
            self.search_shard(&meta, s, q, false)
        });
        let mut total = 0u64;
        let mut facets: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut hits: Vec<ShardHit> = Vec::new();
        let mut snaps = Vec::with_capacity(meta.shards as usize);
        for r in futures::future::join_all(futs).await {
            let r = r?;
            total += r.total;
            snaps.push(r.snapshot);
            for (f, counts) in r.facets {
                let slot = facets.entry(f).or_default();
                for (v, c) in counts {
                    *slot.entry(v).or_default() += c;
                }
            }
            hits.extend(r.hits);
        }
        if !single {
            hits.sort_by_key(|h| std::cmp::Reverse(h.pos.position()));
        }
        let more = hits.len() > offset + limit;
        let page: Vec<ShardHit> = hits.into_iter().skip(offset).take(limit).collect();
        let next_cursor = match (more, page.last()) {
            (true, Some(last)) => Some(encode_cursor(&Cursor {
                f: fingerprint,
                p: last.pos.clone(),
                s: snaps,
            })),
            _ => None,
        };
        for counts in facets.values_mut() {
            if counts.len() > facet_values {
                let mut v: Vec<(String, u64)> = std::mem::take(counts).into_iter().collect();
                v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                v.truncate(facet_values);
                *counts = v.into_iter().collect();
            }
        }
        Ok(SearchResponse {
            hits: page
                .into_iter()
                .map(|h| Hit {
                    id: h.id.unwrap_or(Json::Null),
                    score: h.score,
                    doc: h.doc.unwrap_or(Json::Null),
                    highlights: h.highlights,
                })
                .collect(),
            total,
            facets,
            next_cursor,
        })
    }
}
