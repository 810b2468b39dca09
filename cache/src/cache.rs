//! A node's cache: routing by ownership, the owner's read and write paths, loading with journal
//! replay, invalidation, start and stop.

use crate::config::CacheConfig;
use crate::error::{CacheError, Result};
use crate::journal::{self, home_def, log_def, registry_def, JReq, LogEntry};
use crate::keys::{cache_key, hash_key, KeyHash, Tail};
use crate::peer::client::{CallError, Pool};
use crate::peer::proto::{GetManyRef, RemoteError, Request, WriteManyRef, WriteRef};
use crate::peer::{server, PeerListener};
use crate::routes::{Grouped, Routes};
use crate::stats::{inc, CacheStats, Counters};
use crate::store::{entry_size, lock, prefetch, text_at, Entry, Store};
use crate::table::{CacheTable, RawTable, TableOptions, TableState, WriteMode};
use crate::SharedRecord;
use keyward_dbc::{Db, DbcError, Key, Record, Table, TableDef, Value};
use keyward_ownership::{Claim, Coordinator, Guard};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

/// A change to one key, run at its owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum WriteOp {
    Put(SharedRecord),
    Delete,
    Cas {
        expected: Option<Record>,
        new: Option<SharedRecord>,
    },
    Update {
        name: String,
        #[serde(with = "keyward_dbc::value::json_text")]
        arg: serde_json::Value,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    Get,
    Write(WriteOp),
    Invalidate,
    /// Reads of many keys of one table in one frame, answered from the peer's memory only:
    /// a key it does not hold ready comes back as [`Served::NotHeld`], and the caller routes
    /// that key alone. One frame instead of one per key is what makes `get_many` a pipeline.
    GetMany(Vec<Key>),
    /// Puts and deletes of many keys in one frame, applied by the peer to the keys it holds
    /// ready (each journaled and acknowledged as a single write would be); the others come
    /// back as [`Outcome::NotHeld`] and the caller routes them alone. `put_many`'s pipeline.
    WriteMany(Vec<Write>),
}

/// One write of a [`Op::WriteMany`]: a put carries its key inside its record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Write {
    Put(SharedRecord),
    Delete(Key),
}

/// One key's answer in a `WriteMany` reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// Durable in the owner's journal (or table), acknowledged.
    Done,
    /// Not held ready by this node: route this key alone.
    NotHeld,
    /// Refused or failed at the owner.
    Failed(String),
}

/// A write on its way to its owner: key, primary key, change.
type Item = (Arc<str>, Key, WriteOp);

/// What [`Inner::write_here`] did with one write.
enum Here {
    Done,
    NotHeld(Item),
    Failed(CacheError),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Value(Option<SharedRecord>),
    Done,
    Cas(bool),
    /// The answering node does not own the key; the owner's cache address when known.
    Redirect(Option<String>),
    /// Per key of a `GetMany`, in order.
    Values(Vec<Served>),
    /// Per write of a `WriteMany`, in order.
    Written(Vec<Outcome>),
}

/// One key's answer in a `GetMany` reply. An enum rather than `Option<Option<Record>>`, whose
/// `Some(None)` (the owner knows the key is absent) would read back as `None` from JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Served {
    Value(Option<SharedRecord>),
    /// Not held ready in the owner's memory: route this key alone.
    NotHeld,
}

enum Look {
    Hit(Option<SharedRecord>),
    Ready,
    Expired,
    Missing,
}

enum Resolved {
    Local,
    Remote(Arc<str>),
}

enum Computed {
    Write(Option<SharedRecord>, Reply),
    NoWrite(Reply),
}

/// What the owner's fast read path found.
enum Probe {
    Hit(Option<SharedRecord>),
    /// Not in memory here (and not being evicted): the key's hash, for routing.
    Absent(u64),
    /// The general path must decide.
    Other,
}

/// A write-back write applied in memory: answered at once (nothing to write), or waiting
/// for its journal commit.
enum Staged {
    Now(Reply),
    Journaled {
        rx: oneshot::Receiver<Result<()>>,
        guard: Arc<Guard>,
        reply: Reply,
    },
}

/// A key to be read from another node: its hash, or its string when that was built anyway.
enum Elsewhere {
    Hash(u64),
    Key(String),
}

pub(crate) struct Inner {
    pub cfg: CacheConfig,
    pub coord: Coordinator,
    pub db: Db,
    pub db_id: String,
    /// The log table and the registry of journals (journal.rs).
    pub log: Table,
    pub registry: Table,
    pub journal: mpsc::UnboundedSender<JReq>,
    /// The journal port's guard while the log is open; leaked by [`Cache::abort`].
    journal_port: Arc<Mutex<Option<Arc<Guard>>>>,
    pub store: Store,
    pub tables: RwLock<HashMap<String, Arc<TableState>>>,
    routes: Routes,
    pending: Mutex<HashMap<Arc<str>, Arc<Notify>>>,
    pub peers: Pool,
    pub c: Arc<Counters>,
    seq: AtomicU64,
    closed: AtomicBool,
    pub flusher_paused: AtomicBool,
    /// One flush at a time: two concurrent flushes of one key could land out of order and
    /// leave an older image in the table.
    pub flush_lock: tokio::sync::Mutex<()>,
    pub flush_wake: Arc<Notify>,
    /// The coordinator's loss epoch at the flusher's last look for lapsed guards.
    pub flush_epoch: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    local_addr: Option<SocketAddr>,
}

/// A node's cache. Cheap to clone; every clone is the same cache.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("node", self.inner.coord.node_id())
            .field("listen", &self.inner.local_addr)
            .finish()
    }
}

/// Keeps other tasks of this node from loading the same key at once.
struct Flight<'a> {
    inner: &'a Inner,
    key: Arc<str>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.inner.pending).remove(&self.key) {
            n.notify_waiters();
        }
    }
}

/// Keys per `GetMany` or `WriteMany` frame.
const GET_MANY_KEYS: usize = 256;
/// Bytes of values (estimated) in one `WriteMany` frame.
const WRITE_MANY_BYTES: usize = 1 << 20;
/// Bytes of values (estimated) in one `GetMany` reply before the remaining keys come back
/// as [`Served::NotHeld`].
const GET_MANY_REPLY_BYTES: usize = 1 << 20;

fn compute(ts: &TableState, pk: &Key, cur: Option<&Record>, op: &WriteOp) -> Result<Computed> {
    Ok(match op {
        WriteOp::Put(r) => Computed::Write(Some(r.clone()), Reply::Done),
        WriteOp::Delete => Computed::Write(None, Reply::Done),
        WriteOp::Cas { expected, new } => {
            if cur == expected.as_ref() {
                Computed::Write(new.clone(), Reply::Cas(true))
            } else {
                Computed::NoWrite(Reply::Cas(false))
            }
        }
        WriteOp::Update { name, arg } => {
            let f = ts.update_fn(name)?;
            let new = f(cur, arg).map_err(|message| CacheError::UpdateFailed {
                name: name.clone(),
                message,
            })?;
            if let Some(n) = &new {
                ts.check_record(n)?;
                if ts.pk_of(n) != *pk {
                    return Err(CacheError::invalid(
                        ts.name(),
                        format!("update {name:?} changed the primary key"),
                    ));
                }
            }
            let new = new.map(Arc::new);
            Computed::Write(new.clone(), Reply::Value(new))
        }
    })
}

fn check_write(ts: &TableState, pk: &Key, op: &WriteOp) -> Result<()> {
    let rec = match op {
        WriteOp::Put(r) => Some(r),
        WriteOp::Cas { new, .. } => new.as_ref(),
        _ => None,
    };
    if let Some(r) = rec {
        ts.check_record(r)?;
        if ts.pk_of(r) != *pk {
            return Err(CacheError::invalid(
                ts.name(),
                "the record's primary key differs from the key",
            ));
        }
    }
    Ok(())
}

/// A write of a `write_many` checked against its table, as a single put or delete is: its
/// primary key and change.
fn checked(ts: &TableState, w: Write) -> Result<(Key, WriteOp)> {
    Ok(match w {
        Write::Put(rec) => {
            ts.check_record(&rec)?;
            (ts.pk_of(&rec), WriteOp::Put(rec))
        }
        Write::Delete(pk) => {
            ts.check_pk(&pk)?;
            (pk, WriteOp::Delete)
        }
    })
}

pub(crate) fn unexpected(r: &Reply) -> CacheError {
    CacheError::Peer {
        addr: String::new(),
        message: format!("unexpected reply {r:?}"),
    }
}

impl Cache {
    /// Starts the cache of a node: binds `config.listen` (which the node announces as its
    /// `cache` endpoint in the coordinator's session), creates the journal table, and starts
    /// the peer listener, the journal committer and the flusher.
    pub async fn start(config: CacheConfig, coordinator: Coordinator, db: Db) -> Result<Cache> {
        let listener = PeerListener::bind(&config.listen).await?;
        Self::start_on(listener, config, coordinator, db).await
    }

    /// As [`start`](Self::start) on a listener bound beforehand (`config.listen` is ignored).
    pub async fn start_on(
        listener: PeerListener,
        config: CacheConfig,
        coordinator: Coordinator,
        db: Db,
    ) -> Result<Cache> {
        config.check()?;
        let local_addr = listener.local_addr().ok();
        let announced = coordinator.endpoints().get("cache").cloned();
        if announced.is_none() {
            tracing::warn!(
                "the node announces no `cache` endpoint: other nodes cannot forward to it"
            );
        }
        let db_id = db.database_id().await?.hyphenated().to_string();
        let jdb = if config.journal_url.is_empty() {
            db.clone()
        } else {
            Db::connect(&config.journal_url).await?
        };
        let jdb_id = jdb.database_id().await?.hyphenated().to_string();
        let home = db.define_table(home_def(&config.journal_table)).await?;
        journal::check_home(&home, &config.journal_table, &jdb_id).await?;
        let log = jdb.define_table(log_def(&config.journal_table)).await?;
        let registry = jdb
            .define_table(registry_def(&config.journal_table))
            .await?;
        let (jtx, jrx) = mpsc::unbounded_channel();
        let c = Arc::new(Counters::default());
        let journal_port = Arc::new(Mutex::new(None));
        let committer = journal::Journal {
            db: db.clone(),
            jdb,
            log: log.clone(),
            registry: registry.clone(),
            coord: coordinator.clone(),
            node: coordinator.node_id().as_str().to_owned(),
            timeout: config.request_timeout(),
            slots: config.journal_slots,
            c: c.clone(),
            port: journal_port.clone(),
        };
        let inner = Arc::new(Inner {
            store: Store::new(config.shards, config.max_bytes),
            peers: Pool::new(&config.secret),
            cfg: config,
            coord: coordinator,
            db,
            db_id,
            log,
            registry,
            journal: jtx,
            journal_port,
            tables: RwLock::new(HashMap::new()),
            routes: Routes::default(),
            pending: Mutex::new(HashMap::new()),
            c: c.clone(),
            seq: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            flusher_paused: AtomicBool::new(false),
            flush_lock: tokio::sync::Mutex::new(()),
            flush_wake: Arc::new(Notify::new()),
            flush_epoch: AtomicU64::new(u64::MAX),
            tasks: Mutex::new(Vec::new()),
            committer: Mutex::new(None),
            local_addr,
        });
        *lock(&inner.committer) = Some(tokio::spawn(committer.run(jrx)));
        let weak = Arc::downgrade(&inner);
        let flusher = tokio::spawn(crate::flush::run(weak.clone()));
        let srv = server::spawn(listener, weak, inner.cfg.secret.as_bytes().to_vec());
        lock(&inner.tasks).extend([flusher, srv]);
        tracing::info!(node = %inner.coord.node_id(), listen = ?local_addr, ?announced, "cache started");
        Ok(Cache { inner })
    }

    /// The address the peer listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr
    }

    pub fn coordinator(&self) -> &Coordinator {
        &self.inner.coord
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.cfg
    }

    /// Registers a table whose values are the serde type `T` (fields matched by name). Creates
    /// the table in the database if missing. Every node registers the same tables.
    pub async fn table<T: Serialize + DeserializeOwned>(
        &self,
        def: TableDef,
        opts: TableOptions,
    ) -> Result<CacheTable<T>> {
        Ok(CacheTable::new(self.raw_table(def, opts).await?))
    }

    /// Registers a table whose values are raw records.
    pub async fn raw_table(&self, def: TableDef, opts: TableOptions) -> Result<RawTable> {
        let existing = self
            .inner
            .tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&def.name)
            .cloned();
        if let Some(ts) = existing {
            if ts.def != def || ts.opts != opts {
                return Err(CacheError::invalid(
                    &def.name,
                    "already registered with another definition or options",
                ));
            }
            return Ok(RawTable {
                cache: self.clone(),
                ts,
            });
        }
        let table = self.inner.db.define_table(def.clone()).await?;
        let mut ts = TableState::new(def, table, opts)?;
        ts.key_prefix = crate::keys::key_prefix(&self.inner.db_id, ts.name());
        ts.prefix_hash = KeyHash::START.bytes(ts.key_prefix.as_bytes());
        let ts = Arc::new(ts);
        let ts = self
            .inner
            .tables
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ts.name().to_owned())
            .or_insert(ts)
            .clone();
        Ok(RawTable {
            cache: self.clone(),
            ts,
        })
    }

    pub fn stats(&self) -> CacheStats {
        self.inner.c.snapshot()
    }

    pub(crate) async fn get(
        &self,
        ts: &Arc<TableState>,
        pk: &[Value],
    ) -> Result<Option<SharedRecord>> {
        let inner = &self.inner;
        inner.check_open()?;
        ts.check_pk(pk)?;
        let key = match inner.read_here(ts, pk)? {
            Ok(v) => return Ok(v),
            Err(Elsewhere::Key(key)) => key,
            Err(Elsewhere::Hash(_)) => inner.key_string(ts, pk)?,
        };
        match inner
            .execute(ts, key.into(), &pk.to_vec(), &Op::Get, true)
            .await?
        {
            Reply::Value(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads many keys: owned ones from memory, the others batched per owner into one frame
    /// each (keys whose owner is known from an earlier call); the rest, and any key a batch
    /// did not serve, go through [`Cache::get`] one by one.
    pub(crate) async fn get_many(
        &self,
        ts: &Arc<TableState>,
        pks: &[Key],
    ) -> Result<Vec<Option<SharedRecord>>> {
        let inner = &self.inner;
        inner.check_open()?;
        let mut out: Vec<Option<Option<SharedRecord>>> = vec![None; pks.len()];
        let mut elsewhere: Vec<(usize, u64)> = Vec::new();
        for (i, pk) in pks.iter().enumerate() {
            ts.check_pk(pk)?;
            match inner.read_here(ts, pk)? {
                Ok(v) => out[i] = Some(v),
                Err(Elsewhere::Hash(h)) => elsewhere.push((i, h)),
                Err(Elsewhere::Key(key)) => elsewhere.push((i, hash_key(&key))),
            }
        }
        let Grouped {
            by_owner,
            unknown: mut alone,
        } = inner.routes.group(elsewhere);
        // Frames stay small: a few hundred keys each, so that no reply nears the frame limit
        // (which would end the connection and every call in flight on it).
        let by_owner = by_owner.into_iter().flat_map(|(addr, ix)| {
            ix.chunks(GET_MANY_KEYS)
                .map(|c| (addr.clone(), c.to_vec()))
                .collect::<Vec<_>>()
        });
        let batches = by_owner.map(|(addr, ix)| async move {
            if ix.len() < 2 {
                return (ix, None);
            }
            let keys: Vec<&Key> = ix.iter().map(|i| &pks[*i]).collect();
            let op = GetManyRef(&keys);
            match inner.peers.call(&addr, ts.name(), &Vec::new(), &op).await {
                Ok(Reply::Values(vs)) if vs.len() == ix.len() => (ix, Some(vs)),
                // Anything else (an old peer, a broken connection): route key by key, which
                // handles every failure the single-key path knows.
                _ => (ix, None),
            }
        });
        for (ix, got) in futures::future::join_all(batches).await {
            match got {
                Some(vs) => {
                    inc(&inner.c.forward_batches);
                    for (i, v) in ix.into_iter().zip(vs) {
                        match v {
                            Served::Value(v) => {
                                inc(&inner.c.forwards);
                                out[i] = Some(v);
                            }
                            Served::NotHeld => alone.push(i),
                        }
                    }
                }
                None => alone.extend(ix),
            }
        }
        let singles = alone.iter().map(|i| self.get(ts, &pks[*i]));
        let got = futures::future::try_join_all(singles).await?;
        for (i, v) in alone.into_iter().zip(got) {
            out[i] = Some(v);
        }
        Ok(out.into_iter().map(Option::flatten).collect())
    }

    pub(crate) async fn write(
        &self,
        ts: &Arc<TableState>,
        pk: &[Value],
        op: WriteOp,
    ) -> Result<Reply> {
        let inner = &self.inner;
        inner.check_open()?;
        ts.check_pk(pk)?;
        let pk = pk.to_vec();
        check_write(ts, &pk, &op)?;
        let key = inner.key(ts, &pk)?;
        inner.execute(ts, key, &pk, &Op::Write(op), true).await
    }

    /// Puts and deletes of many keys: those this node owns applied here, the others sent in
    /// one frame per known owner, and the rest (unknown owner, or not held by the one asked)
    /// routed one by one as [`Cache::write`] does. Not atomic across keys: each write is
    /// acknowledged on its own, `Ok` once all are; after an error some may have been applied.
    /// Of several writes to one key, the last is the one made.
    pub(crate) async fn write_many(&self, ts: &Arc<TableState>, writes: Vec<Write>) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let mut items: Vec<Item> = Vec::with_capacity(writes.len());
        let mut at: HashMap<Arc<str>, usize> = HashMap::with_capacity(writes.len());
        for w in writes {
            let (pk, op) = checked(ts, w)?;
            let key = inner.key(ts, &pk)?;
            match at.get(&key) {
                // A later write to the same key replaces the earlier one.
                Some(&i) => items[i] = (key, pk, op),
                None => {
                    at.insert(key.clone(), items.len());
                    items.push((key, pk, op));
                }
            }
        }
        drop(at);
        let mut alone: Vec<usize> = Vec::new();
        let mut first_err: Option<CacheError> = None;
        // Writes to route alone whose items left `items` (the local ones not held after all).
        let mut extra: Vec<Item> = Vec::new();
        if ts.opts.mode == WriteMode::WriteThrough {
            alone.extend(0..items.len());
        } else {
            let (local, remote): (Vec<Item>, Vec<Item>) =
                items.into_iter().partition(|(key, _, _)| inner.holds(key));
            items = remote;
            if !local.is_empty() {
                for h in inner.write_here(ts, local).await {
                    match h {
                        Here::Done => {}
                        Here::NotHeld(item) => extra.push(item),
                        Here::Failed(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
            }
            let elsewhere = items
                .iter()
                .enumerate()
                .map(|(i, (key, _, _))| (i, hash_key(key)));
            let Grouped { by_owner, unknown } = inner.routes.group(elsewhere);
            alone.extend(unknown);
            let mut frames: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
            for (addr, ix) in by_owner {
                let mut cur: Vec<usize> = Vec::new();
                let mut bytes = 0;
                for i in ix {
                    let size = match &items[i].2 {
                        WriteOp::Put(r) => crate::store::record_size(Some(r)),
                        _ => 0,
                    };
                    if !cur.is_empty()
                        && (cur.len() >= GET_MANY_KEYS || bytes + size > WRITE_MANY_BYTES)
                    {
                        frames.push((addr.clone(), std::mem::take(&mut cur)));
                        bytes = 0;
                    }
                    bytes += size;
                    cur.push(i);
                }
                if !cur.is_empty() {
                    frames.push((addr, cur));
                }
            }
            let items = &items;
            let calls = frames.into_iter().map(|(addr, ix)| async move {
                if ix.len() < 2 {
                    return (addr, ix, None);
                }
                let refs: Vec<WriteRef<'_>> = ix
                    .iter()
                    .map(|i| match &items[*i] {
                        (_, _, WriteOp::Put(r)) => WriteRef::Put(r),
                        (_, pk, _) => WriteRef::Delete(pk),
                    })
                    .collect();
                let r = inner
                    .peers
                    .call(&addr, ts.name(), &Vec::new(), &WriteManyRef(&refs))
                    .await;
                (addr, ix, Some(r))
            });
            for (addr, ix, got) in futures::future::join_all(calls).await {
                match got {
                    None => alone.extend(ix),
                    Some(Ok(Reply::Written(outs))) if outs.len() == ix.len() => {
                        inc(&inner.c.forward_batches);
                        for (i, o) in ix.into_iter().zip(outs) {
                            match o {
                                Outcome::Done => inc(&inner.c.forwards),
                                Outcome::NotHeld => alone.push(i),
                                Outcome::Failed(message) => {
                                    first_err.get_or_insert(CacheError::Peer {
                                        addr: addr.to_string(),
                                        message,
                                    });
                                }
                            }
                        }
                    }
                    // Not sent: the single path knows how to find the owner again.
                    Some(Err(CallError::NotSent(_))) => alone.extend(ix),
                    Some(Err(CallError::Lost)) => {
                        first_err.get_or_insert(CacheError::Indeterminate {
                            addr: addr.to_string(),
                        });
                    }
                    Some(Err(CallError::Remote(message))) => {
                        first_err.get_or_insert(CacheError::Peer {
                            addr: addr.to_string(),
                            message,
                        });
                    }
                    Some(Ok(other)) => {
                        first_err.get_or_insert(unexpected(&other));
                    }
                }
            }
        }
        let mut items: Vec<Option<Item>> = items.into_iter().map(Some).collect();
        extra.extend(alone.into_iter().filter_map(|i| items[i].take()));
        let singles = extra.into_iter().map(|(key, pk, op)| async move {
            inner.execute(ts, key, &pk, &Op::Write(op), true).await
        });
        for r in futures::future::join_all(singles).await {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(crate) async fn invalidate(&self, ts: &Arc<TableState>, pk: &[Value]) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        ts.check_pk(pk)?;
        let key = inner.key(ts, pk)?;
        inner.invalidate(ts, &key, &pk.to_vec()).await
    }

    /// Test hook: stops (or resumes) the background flusher, as if the process were paused;
    /// [`flush`](Self::flush) still works.
    #[doc(hidden)]
    pub fn pause_flusher(&self, paused: bool) {
        self.inner.flusher_paused.store(paused, Ordering::Release);
    }

    /// Flushes every dirty key now (the flusher does this by age on its own).
    pub async fn flush(&self) -> Result<()> {
        self.inner.flush_all().await
    }

    /// Graceful stop: refuses new calls, flushes every dirty key, waits for the journal, and
    /// releases every port. Call it on SIGTERM.
    pub async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Stop serving peers first, so no new writes arrive while we flush.
        if let Some(srv) = lock(&inner.tasks).pop() {
            srv.abort();
        }
        let flushed = inner.flush_all().await;
        // Writes the last forgets, marks the journal clean if everything is flushed, and hands
        // its port back.
        let (tx, rx) = oneshot::channel();
        let closed = if inner.journal.send(JReq::Close(tx)).is_ok() {
            rx.await.ok()
        } else {
            None
        };
        let mut guards = Vec::new();
        for shard in inner.store.shards() {
            let mut sh = lock(shard);
            for k in sh.map.keys() {
                if let Some(e) = sh.take(&k, &inner.c) {
                    guards.push(e.guard);
                }
            }
            guards.extend(sh.evicting.drain().map(|(_, e)| e.guard));
        }
        // Keys left dirty (their flush failed) are in the journal: then its port goes first,
        // so whoever claims one of them next adopts the journal.
        let (journal_first, journal_last) = match closed {
            Some(journal::Closed {
                guard: Some(j),
                clean: false,
            }) => {
                tracing::warn!(node = %inner.coord.node_id(), "stopping with unflushed writes; the next owners adopt the journal");
                (Some(j), None)
            }
            other => (None, other.and_then(|c| c.guard)),
        };
        for g in journal_first.into_iter().chain(guards).chain(journal_last) {
            if let Ok(g) = Arc::try_unwrap(g) {
                if let Err(e) = g.release().await {
                    tracing::debug!(error = %e, "release at shutdown failed");
                }
            }
        }
        inner.stop_tasks();
        tracing::info!(node = %inner.coord.node_id(), stats = ?inner.c.snapshot(), "cache stopped");
        flushed
    }

    /// Stops the cache at once, as if its process died: no flush, no journal wait, memory
    /// dropped. For crash tests: close or pause the node's coordinator session first, so that
    /// the ports are not handed back in an orderly way.
    pub fn abort(&self) {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        // A dead process releases nothing: the guards are leaked, so that their ports go only
        // with the session.
        if let Some(j) = lock(&inner.journal_port).take() {
            std::mem::forget(j);
        }
        inner.stop_tasks();
        for shard in inner.store.shards() {
            let mut sh = lock(shard);
            for k in sh.map.keys() {
                if let Some(e) = sh.take(&k, &inner.c) {
                    std::mem::forget(e.guard);
                }
            }
            for (_, e) in sh.evicting.drain() {
                std::mem::forget(e.guard);
            }
            sh.map.clear();
            sh.evicting.clear();
            sh.dirty.clear();
            sh.due.clear();
            sh.retry.clear();
            sh.bytes = 0;
        }
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(CacheError::Closed)
        } else {
            Ok(())
        }
    }

    fn stop_tasks(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        if let Some(t) = lock(&self.committer).take() {
            t.abort();
        }
        self.peers.abort();
    }

    /// Releases ports of flushed keys once their flush is durable in the journal, so that an
    /// adopter of this node's log never replays an image over what a later owner wrote.
    pub(crate) fn release_later(&self, guards: Vec<Arc<Guard>>) {
        if !guards.is_empty() {
            let _ = self.journal.send(JReq::Release(guards));
        }
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn key(&self, ts: &TableState, pk: &[Value]) -> Result<Arc<str>> {
        Ok(self.key_string(ts, pk)?.into())
    }

    fn key_string(&self, ts: &TableState, pk: &[Value]) -> Result<String> {
        if ts.key_prefix.is_empty() {
            return cache_key(&self.db_id, ts.name(), pk);
        }
        crate::keys::key_with_prefix(&ts.key_prefix, ts.name(), pk)
    }

    fn table_state(&self, name: &str) -> Result<Arc<TableState>> {
        self.tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| CacheError::UnknownTable(name.to_owned()))
    }

    fn route(&self, key: &str) -> Option<Arc<str>> {
        self.routes.get(hash_key(key))
    }

    fn remember(&self, key: &str, addr: Arc<str>) {
        self.routes.remember(hash_key(key), addr);
    }

    fn forget_route(&self, key: &str) {
        self.routes.forget(hash_key(key));
    }

    /// The owner's read path for a key it holds, valid and fresh, found without building its
    /// key string. [`Probe::Other`] sends the call down the general path
    /// ([`lookup`](Self::lookup) and on), which also handles every other case: lapsed,
    /// expired, being evicted, other pk types.
    fn hit(&self, ts: &Arc<TableState>, pk: &[Value]) -> Probe {
        if ts.key_prefix.is_empty() {
            return Probe::Other;
        }
        let Some(tail) = Tail::of(pk) else {
            return Probe::Other;
        };
        let hash = ts.prefix_hash.bytes(tail.as_bytes()).finish();
        let mut sh = self.store.shard_of(hash);
        let evicting = !sh.evicting.is_empty();
        let Some(e) = sh.map.get_by_tail(hash, Arc::as_ptr(ts), tail.as_bytes()) else {
            // A key on its way out may still come back (`lookup` knows how).
            return if evicting {
                Probe::Other
            } else {
                Probe::Absent(hash)
            };
        };
        // The shared record's counts (the clone below writes them) and its text are each a
        // likely cache miss, and the text's address would be known only after the record's
        // arrived: both addresses are in the slot, so both loads start now and overlap (two
        // lines of text: 100-byte values usually straddle one boundary; a typed read decodes
        // it next).
        if let Some(r) = &e.value {
            prefetch(Arc::as_ptr(r) as usize);
        }
        if e.text_at != 0 {
            prefetch(e.text_at);
            prefetch(e.text_at + 64);
        }
        // The same tests as `lookup`, in the order that reads the least.
        if e.expires.is_some_and(|t| Instant::now() >= t) && !e.is_dirty() {
            return Probe::Other;
        }
        // The guard is two dependent loads away, each a likely miss; the session's loss epoch
        // and lease are shared by every key and stay in the CPU cache.
        let epoch = self.coord.loss_epoch();
        if e.valid_epoch != epoch || !self.coord.lease_valid() {
            if !e.guard.is_valid() {
                return Probe::Other;
            }
            e.valid_epoch = epoch;
        }
        Probe::Hit(e.value.clone())
    }

    /// A read served from this node's memory as the owner (`Ok`, counted as a hit), or what
    /// routing it elsewhere needs (`Err`).
    fn read_here(
        &self,
        ts: &Arc<TableState>,
        pk: &[Value],
    ) -> Result<std::result::Result<Option<SharedRecord>, Elsewhere>> {
        match self.hit(ts, pk) {
            Probe::Hit(v) => {
                inc(&self.c.hits);
                return Ok(Ok(v));
            }
            // Not here, and nothing the general path could find either: no key string needed
            // to route it by its hash.
            Probe::Absent(hash) => return Ok(Err(Elsewhere::Hash(hash))),
            Probe::Other => {}
        }
        let key = self.key_string(ts, pk)?;
        if let Look::Hit(v) = self.lookup(&key, true) {
            inc(&self.c.hits);
            return Ok(Ok(v));
        }
        Ok(Err(Elsewhere::Key(key)))
    }

    /// The owner-side view of a key in memory. Entries whose ownership lapsed are taken out:
    /// dirty ones go to the flusher (their writes are in the journal either way).
    fn lookup(&self, key: &str, read: bool) -> Look {
        let budget = self.store.budget;
        let mut released: Vec<Arc<Guard>> = Vec::new();
        let mut wake = false;
        let look = {
            let mut sh = self.store.shard(key);
            let state = sh.map.get(key).map(|e| {
                if !e.guard.is_valid() {
                    None
                } else if !e.is_dirty() && e.expires.is_some_and(|t| Instant::now() >= t) {
                    Some(Look::Expired)
                } else if read {
                    Some(Look::Hit(e.value.clone()))
                } else {
                    Some(Look::Ready)
                }
            });
            match state {
                Some(Some(look)) => look,
                Some(None) => {
                    if let Some(e) = sh.take(key, &self.c) {
                        if e.is_dirty() {
                            sh.evicting.insert(Arc::from(key), e);
                            wake = true;
                        } else {
                            released.push(e.guard);
                        }
                    }
                    Look::Missing
                }
                None => {
                    let back = sh.evicting.get(key).is_some_and(|e| e.guard.is_valid());
                    match back.then(|| sh.evicting.remove_entry(key)).flatten() {
                        Some((k, e)) => {
                            let v = read.then(|| e.value.clone());
                            let (out, flush) = sh.insert(k, e, budget, &self.c);
                            released.extend(out);
                            wake |= flush;
                            match v {
                                Some(v) => Look::Hit(v),
                                None => Look::Ready,
                            }
                        }
                        None => Look::Missing,
                    }
                }
            }
        };
        if wake {
            self.flush_wake.notify_one();
        }
        self.release_later(released);
        look
    }

    async fn single_flight(&self, key: &Arc<str>) -> Flight<'_> {
        loop {
            let n = {
                let mut m = lock(&self.pending);
                match m.get(key) {
                    Some(n) => n.clone(),
                    None => {
                        m.insert(key.clone(), Arc::new(Notify::new()));
                        return Flight {
                            inner: self,
                            key: key.clone(),
                        };
                    }
                }
            };
            let fut = n.notified();
            tokio::pin!(fut);
            fut.as_mut().enable();
            let still = lock(&self.pending)
                .get(key)
                .is_some_and(|x| Arc::ptr_eq(x, &n));
            if still {
                fut.await;
            }
        }
    }

    /// Reads a key for a new owner, once every journal a dead node left is adopted (so the
    /// table holds everything acknowledged).
    async fn load(&self, ts: &TableState, pk: &Key) -> Result<Option<SharedRecord>> {
        inc(&self.c.misses);
        // Boxed: rarely more than one registry read, and it keeps every caller's future small.
        Box::pin(self.adopt_dead_journals()).await?;
        Ok(ts.table.get(pk).await?.map(Arc::new))
    }

    fn install(
        &self,
        ts: &Arc<TableState>,
        key: &Arc<str>,
        pk: &Key,
        value: Option<SharedRecord>,
        guard: Arc<Guard>,
    ) {
        let now = Instant::now();
        let e = Entry {
            table: ts.clone(),
            pk: pk.clone(),
            size: entry_size(key, pk, value.as_deref()),
            text_at: text_at(value.as_deref()),
            value,
            guard,
            valid_epoch: u64::MAX,
            expires: ts.opts.ttl.map(|t| now + t),
            seq: self.next_seq(),
            dirty_since: None,
            retry_at: None,
            attempts: 0,
            wlock: Arc::new(tokio::sync::Mutex::new(())),
        };
        let (released, flush) =
            self.store
                .shard(key)
                .insert(key.clone(), e, self.store.budget, &self.c);
        if flush {
            self.flush_wake.notify_one();
        }
        self.release_later(released);
    }

    /// Refreshes an expired clean entry from the table, keeping its ownership.
    async fn reload(&self, ts: &TableState, key: &Arc<str>, pk: &Key) -> Result<()> {
        let (guard, seq) = {
            let sh = self.store.shard(key);
            match sh.map.peek(key) {
                Some(e) => (e.guard.clone(), e.seq),
                None => return Ok(()),
            }
        };
        inc(&self.c.misses);
        inc(&self.c.expirations);
        let v = ts.table.get(pk).await?.map(Arc::new);
        let size = entry_size(key, pk, v.as_deref());
        let mut sh = self.store.shard(key);
        let old_size = match sh.map.peek_mut(key) {
            Some(e) if Arc::ptr_eq(&e.guard, &guard) && e.seq == seq && !e.is_dirty() => {
                e.set_value(v);
                e.expires = ts.opts.ttl.map(|t| Instant::now() + t);
                Some(std::mem::replace(&mut e.size, size))
            }
            _ => None,
        };
        if let Some(old) = old_size {
            sh.resized(old, size, &self.c);
        }
        Ok(())
    }

    /// Makes sure the key is in this node's memory (claiming and loading it if nobody owns
    /// it), or names the owner to forward to.
    async fn resolve(
        &self,
        ts: &Arc<TableState>,
        key: &Arc<str>,
        pk: &Key,
        may_forward: bool,
        deadline: Instant,
    ) -> Result<Resolved> {
        loop {
            self.check_open()?;
            if matches!(self.lookup(key, false), Look::Ready | Look::Hit(_)) {
                return Ok(Resolved::Local);
            }
            if may_forward {
                if let Some(a) = self.route(key) {
                    return Ok(Resolved::Remote(a));
                }
            }
            let flight = self.single_flight(key).await;
            match self.lookup(key, false) {
                Look::Ready | Look::Hit(_) => return Ok(Resolved::Local),
                Look::Expired => {
                    Box::pin(self.reload(ts, key, pk)).await?;
                    return Ok(Resolved::Local);
                }
                Look::Missing => {}
            }
            // Boxed, like the other rare paths below: a future holds room for its largest
            // await, and a forwarded call's task is moved whole into its task cell.
            let claim = Box::pin(self.coord.claim(&[key])).await?.pop();
            match claim {
                Some(Claim::Granted(g)) => {
                    self.forget_route(key);
                    let g = Arc::new(g);
                    let value = Box::pin(self.load(ts, pk)).await?;
                    if !g.is_valid() {
                        continue;
                    }
                    self.install(ts, key, pk, value, g);
                    return Ok(Resolved::Local);
                }
                Some(Claim::OwnedBy(o)) if &o.node == self.coord.node_id() => {
                    // Our own guard is being released (eviction, invalidation): wait it out.
                    drop(flight);
                    if Instant::now() >= deadline {
                        return Err(self.timeout(key));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Some(Claim::OwnedBy(o)) => {
                    let addr: Arc<str> = o
                        .endpoint("cache")
                        .ok_or_else(|| CacheError::NoEndpoint {
                            node: o.node.to_string(),
                            key: key.to_string(),
                        })?
                        .into();
                    self.remember(key, addr.clone());
                    return Ok(Resolved::Remote(addr));
                }
                None => {
                    return Err(CacheError::Ownership(
                        keyward_ownership::OwnershipError::Protocol("empty claim reply".into()),
                    ))
                }
            }
        }
    }

    fn timeout(&self, key: &str) -> CacheError {
        CacheError::Timeout {
            key: key.to_owned(),
            millis: self.cfg.request_timeout_ms,
        }
    }

    /// Runs an operation at the key's owner: here, or one hop away.
    async fn execute(
        &self,
        ts: &Arc<TableState>,
        key: Arc<str>,
        pk: &Key,
        op: &Op,
        may_forward: bool,
    ) -> Result<Reply> {
        let deadline = Instant::now() + self.cfg.request_timeout();
        let mut retries = 0u32;
        loop {
            if Instant::now() >= deadline {
                return Err(self.timeout(&key));
            }
            match self.resolve(ts, &key, pk, may_forward, deadline).await? {
                Resolved::Local => {
                    let r = match op {
                        Op::Get => match self.lookup(&key, true) {
                            Look::Hit(v) => {
                                inc(&self.c.hits);
                                Some(Reply::Value(v))
                            }
                            _ => None,
                        },
                        Op::Write(w) => self.write_local(ts, &key, pk, w).await?,
                        Op::Invalidate => Some(Box::pin(self.invalidate_local(&key)).await?),
                        Op::GetMany(_) | Op::WriteMany(_) => {
                            return Err(CacheError::invalid(
                                ts.name(),
                                "a multi-key call is not routed by one key",
                            ))
                        }
                    };
                    if let Some(r) = r {
                        return Ok(r);
                    }
                }
                Resolved::Remote(addr) if !may_forward => {
                    return Ok(Reply::Redirect(Some(addr.to_string())))
                }
                Resolved::Remote(addr) => {
                    inc(&self.c.forwards);
                    match Box::pin(self.peers.call(&addr, ts.name(), pk, op)).await {
                        Ok(Reply::Redirect(hint)) => {
                            self.forget_route(&key);
                            if let Some(h) = hint {
                                self.remember(&key, h.into());
                            }
                        }
                        Ok(r) => return Ok(r),
                        Err(CallError::NotSent(m)) => {
                            // The owner may be dead with its lease still running: ask again.
                            tracing::debug!(%addr, error = %m, "cache peer unreachable");
                            self.forget_route(&key);
                        }
                        Err(CallError::Lost) => {
                            self.forget_route(&key);
                            if matches!(op, Op::Write(_)) {
                                return Err(CacheError::Indeterminate {
                                    addr: addr.to_string(),
                                });
                            }
                        }
                        Err(CallError::Remote(message)) => {
                            return Err(CacheError::Peer {
                                addr: addr.to_string(),
                                message,
                            })
                        }
                    }
                    retries += 1;
                    if retries > 2 {
                        let ms = (retries as u64 * 5).min(100);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
            }
        }
    }

    /// Removes an entry whose key a newer owner took (a fenced write said so).
    fn discard(&self, key: &str, guard: &Arc<Guard>) {
        let e = {
            let mut sh = self.store.shard(key);
            match sh.map.peek(key) {
                Some(e) if Arc::ptr_eq(&e.guard, guard) => sh.take(key, &self.c),
                _ => None,
            }
        };
        drop(e);
    }

    /// A write at the owner. `None` when the entry went away meanwhile (route again).
    async fn write_local(
        &self,
        ts: &Arc<TableState>,
        key: &Arc<str>,
        pk: &Key,
        op: &WriteOp,
    ) -> Result<Option<Reply>> {
        if ts.opts.mode == WriteMode::WriteThrough {
            return Box::pin(self.write_through(ts, key, pk, op)).await;
        }
        let mut released = Vec::new();
        let mut wake = false;
        let staged = self.stage_write(ts, key, pk, op, &mut released, &mut wake);
        self.release_later(released);
        if wake {
            self.flush_wake.notify_one();
        }
        match staged? {
            None => Ok(None),
            Some(Staged::Now(r)) => Ok(Some(r)),
            Some(Staged::Journaled { rx, guard, reply }) => {
                self.acknowledge(key, rx, &guard).await?;
                Ok(Some(reply))
            }
        }
    }

    /// The in-memory half of a write-back write: applied to the entry and queued for the
    /// journal under the shard lock (so the journal sees each key's writes in order). `None`
    /// when this node does not hold the key.
    fn stage_write(
        &self,
        ts: &Arc<TableState>,
        key: &Arc<str>,
        pk: &Key,
        op: &WriteOp,
        released: &mut Vec<Arc<Guard>>,
        wake: &mut bool,
    ) -> Result<Option<Staged>> {
        let budget = self.store.budget;
        let mut locked = self.store.shard(key);
        // Fields apart: the entry is found once and the shard's accounting, due queue and dirty
        // set are updated beside it, instead of a map lookup (hash, key compare) per step.
        let sh = &mut *locked;
        let Some(e) = sh.map.get_mut(key) else {
            return Ok(None);
        };
        if !e.guard.is_valid() {
            return Ok(None);
        }
        let (new, reply) = match compute(ts, pk, e.value.as_deref(), op)? {
            Computed::NoWrite(r) => return Ok(Some(Staged::Now(r))),
            Computed::Write(n, r) => (n, r),
        };
        let seq = self.next_seq();
        let guard = e.guard.clone();
        let (tx, rx) = oneshot::channel();
        let req = JReq::Put {
            key: key.clone(),
            entry: LogEntry {
                key: key.clone(),
                table: ts.name.clone(),
                token: guard.token(),
                seq,
                pk: pk.clone(),
                image: new.clone(),
            },
            done: tx,
        };
        let size = entry_size(key, pk, new.as_deref());
        self.c.journal_pending.fetch_add(1, Ordering::Relaxed);
        if self.journal.send(req).is_err() {
            self.c.journal_pending.fetch_sub(1, Ordering::Relaxed);
            return Err(CacheError::Closed);
        }
        e.set_value(new);
        e.seq = seq;
        let old_size = std::mem::replace(&mut e.size, size);
        let newly_dirty = e.dirty_since.is_none();
        if newly_dirty {
            let now = Instant::now();
            e.dirty_since = Some(now);
            sh.due.push_back((now, key.clone()));
        }
        sh.resized(old_size, size, &self.c);
        // A key is in the dirty set exactly while its entry has a `dirty_since`.
        if newly_dirty && sh.dirty.insert(key.clone()) {
            self.c.dirty.fetch_add(1, Ordering::Relaxed);
        }
        *wake |= sh.enforce(budget, &self.c, released, Some(key));
        Ok(Some(Staged::Journaled { rx, guard, reply }))
    }

    /// The durable half: waits for the journal commit, then acknowledges only while surely
    /// still the owner (a successor reads the journal after our lease ended, hence after this
    /// commit).
    async fn acknowledge(
        &self,
        key: &str,
        rx: oneshot::Receiver<Result<()>>,
        guard: &Guard,
    ) -> Result<()> {
        match rx.await {
            Ok(Ok(())) => {}
            // The write stays in memory, dirty, and reaches the table with the next flush:
            // the caller learns it may or may not have happened. Dropping it instead would
            // release the port while earlier acknowledged writes may still be unflushed.
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(CacheError::Closed),
        }
        if !guard.is_valid() {
            return Err(CacheError::OwnershipLost {
                key: key.to_string(),
            });
        }
        inc(&self.c.writes);
        Ok(())
    }

    /// Puts and deletes of keys this node holds ready, all staged before any is awaited, so
    /// that they share journal commits. Keys not held come back [`Here::NotHeld`], with their
    /// write.
    async fn write_here(&self, ts: &Arc<TableState>, items: Vec<Item>) -> Vec<Here> {
        if ts.opts.mode == WriteMode::WriteThrough || self.check_open().is_err() {
            return items.into_iter().map(Here::NotHeld).collect();
        }
        let mut released = Vec::new();
        let mut wake = false;
        let mut staged = Vec::with_capacity(items.len());
        for item in items {
            let (key, pk, op) = (&item.0, &item.1, &item.2);
            let mut st = self.stage_write(ts, key, pk, op, &mut released, &mut wake);
            // Not in the map as valid: `lookup` knows the other cases (a key on its way out
            // comes back). An expired entry is written over: a put or delete needs no reload.
            if matches!(st, Ok(None))
                && matches!(
                    self.lookup(key, false),
                    Look::Ready | Look::Hit(_) | Look::Expired
                )
            {
                st = self.stage_write(ts, key, pk, op, &mut released, &mut wake);
            }
            staged.push((item, st));
        }
        self.release_later(released);
        if wake {
            self.flush_wake.notify_one();
        }
        let mut out = Vec::with_capacity(staged.len());
        for (item, st) in staged {
            out.push(match st {
                Ok(None) => Here::NotHeld(item),
                Ok(Some(Staged::Now(_))) => Here::Done,
                Ok(Some(Staged::Journaled { rx, guard, .. })) => {
                    match self.acknowledge(&item.0, rx, &guard).await {
                        Ok(()) => Here::Done,
                        Err(e) => Here::Failed(e),
                    }
                }
                Err(e) => Here::Failed(e),
            });
        }
        out
    }

    /// A peer's `WriteMany`: each write checked as a single one would be at its owner.
    async fn serve_write_many(&self, table: &str, writes: Vec<Write>) -> Result<Reply> {
        self.check_open()?;
        let ts = self.table_state(table)?;
        let mut out: Vec<Option<Outcome>> = Vec::with_capacity(writes.len());
        let mut items = Vec::with_capacity(writes.len());
        for w in writes {
            let item = checked(&ts, w).and_then(|(pk, op)| Ok((self.key(&ts, &pk)?, pk, op)));
            match item {
                Ok(item) => {
                    out.push(None);
                    items.push(item);
                }
                Err(e) => out.push(Some(Outcome::Failed(e.to_string()))),
            }
        }
        let mut done = self.write_here(&ts, items).await.into_iter();
        let out = out
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| match done.next() {
                    Some(Here::Done) => {
                        inc(&self.c.served_for_peers);
                        Outcome::Done
                    }
                    Some(Here::Failed(e)) => Outcome::Failed(e.to_string()),
                    Some(Here::NotHeld(_)) | None => Outcome::NotHeld,
                })
            })
            .collect();
        Ok(Reply::Written(out))
    }

    async fn write_through(
        &self,
        ts: &Arc<TableState>,
        key: &Arc<str>,
        pk: &Key,
        op: &WriteOp,
    ) -> Result<Option<Reply>> {
        let (wlock, guard) = {
            let mut sh = self.store.shard(key);
            match sh.map.get(key) {
                Some(e) if e.guard.is_valid() => (e.wlock.clone(), e.guard.clone()),
                _ => return Ok(None),
            }
        };
        let _w = wlock.lock().await;
        let cur = {
            let sh = self.store.shard(key);
            match sh.map.peek(key) {
                Some(e) if Arc::ptr_eq(&e.guard, &guard) => e.value.clone(),
                _ => return Ok(None),
            }
        };
        let (new, reply) = match compute(ts, pk, cur.as_deref(), op)? {
            Computed::NoWrite(r) => return Ok(Some(r)),
            Computed::Write(n, r) => (n, r),
        };
        let token = guard.token();
        let r = match &new {
            Some(rec) => ts.table.put_fenced(rec, token).await,
            None => ts.table.delete_fenced(pk, token).await.map(|_| ()),
        };
        match r {
            Ok(()) => {}
            Err(DbcError::Fenced { .. }) => {
                inc(&self.c.fenced);
                self.discard(key, &guard);
                return Err(CacheError::OwnershipLost {
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        let size = entry_size(key, pk, new.as_deref());
        {
            let mut sh = self.store.shard(key);
            let old_size = match sh.map.peek_mut(key) {
                Some(e) if Arc::ptr_eq(&e.guard, &guard) => {
                    e.set_value(new);
                    e.seq = self.next_seq();
                    Some(std::mem::replace(&mut e.size, size))
                }
                _ => None,
            };
            if let Some(old) = old_size {
                sh.resized(old, size, &self.c);
            }
        }
        inc(&self.c.writes);
        self.c.flushed_rows.fetch_add(1, Ordering::Relaxed);
        Ok(Some(reply))
    }

    /// Drops a key this node holds: flushes it if dirty, then releases the port.
    async fn invalidate_local(&self, key: &Arc<str>) -> Result<Reply> {
        let flushing = self.flush_lock.lock().await;
        let e = {
            let mut sh = self.store.shard(key);
            match sh.take(key, &self.c) {
                Some(e) => Some(e),
                None => sh.evicting.remove(&**key),
            }
        };
        let Some(e) = e else { return Ok(Reply::Done) };
        if e.is_dirty() {
            let token = e.guard.token();
            let r = match &e.value {
                Some(rec) => e.table.table.put_fenced(rec, token).await,
                None => e.table.table.delete_fenced(&e.pk, token).await.map(|_| ()),
            };
            match r {
                Ok(()) => {
                    self.c.flushed_rows.fetch_add(1, Ordering::Relaxed);
                    let _ = self.journal.send(JReq::Forget {
                        key: key.clone(),
                        seq: e.seq,
                    });
                }
                Err(DbcError::Fenced { .. }) => inc(&self.c.fenced),
                Err(err) => {
                    // Keep it for the flusher; the caller learns the invalidation failed.
                    self.store.shard(key).evicting.insert(key.clone(), e);
                    self.flush_wake.notify_one();
                    return Err(err.into());
                }
            }
        }
        drop(flushing);
        // The journal row must be gone before the port is: a successor would replay it over
        // the table's newer, outside value (the reason for invalidating).
        let (tx, rx) = oneshot::channel();
        if self.journal.send(JReq::Barrier(tx)).is_ok() {
            let _ = rx.await;
        }
        if let Ok(g) = Arc::try_unwrap(e.guard) {
            g.release().await?;
        }
        Ok(Reply::Done)
    }

    fn holds(&self, key: &str) -> bool {
        let sh = self.store.shard(key);
        sh.map.contains(key) || sh.evicting.contains_key(key)
    }

    async fn invalidate(&self, ts: &Arc<TableState>, key: &Arc<str>, pk: &Key) -> Result<()> {
        let deadline = Instant::now() + self.cfg.request_timeout();
        self.forget_route(key);
        loop {
            if self.holds(key) {
                return self.invalidate_local(key).await.map(|_| ());
            }
            let owner = self.coord.owner_of(&[key]).await?.pop().flatten();
            match owner {
                None => return Ok(()),
                Some(o) if &o.node == self.coord.node_id() => {}
                Some(o) => {
                    let addr = o.endpoint("cache").ok_or_else(|| CacheError::NoEndpoint {
                        node: o.node.to_string(),
                        key: key.to_string(),
                    })?;
                    inc(&self.c.forwards);
                    match self.peers.call(addr, ts.name(), pk, &Op::Invalidate).await {
                        Ok(_) => return Ok(()),
                        Err(CallError::Remote(message)) => {
                            return Err(CacheError::Peer {
                                addr: addr.to_owned(),
                                message,
                            })
                        }
                        Err(_) => {}
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(key));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A peer's request answered from memory without waiting, if it can be.
    pub(crate) fn serve_peer_fast(&self, req: &Request) -> Option<Result<Reply, RemoteError>> {
        if let Op::GetMany(pks) = &req.op {
            return Some(self.serve_get_many(&req.table, pks));
        }
        if !matches!(req.op, Op::Get) || self.closed.load(Ordering::Acquire) {
            return None;
        }
        let ts = self.table_state(&req.table).ok()?;
        ts.check_pk(&req.pk).ok()?;
        let key = self.key_string(&ts, &req.pk).ok()?;
        match self.lookup(&key, true) {
            Look::Hit(v) => {
                inc(&self.c.hits);
                inc(&self.c.served_for_peers);
                Some(Ok(Reply::Value(v)))
            }
            _ => None,
        }
    }

    /// The keys of a peer's `GetMany` that this node serves from memory right now.
    fn serve_get_many(&self, table: &str, pks: &[Key]) -> Result<Reply, RemoteError> {
        let err = |e: CacheError| RemoteError {
            message: e.to_string(),
        };
        self.check_open().map_err(err)?;
        let ts = self.table_state(table).map_err(err)?;
        let mut out = Vec::with_capacity(pks.len());
        // Past this many bytes of values the other keys come back not held: the caller reads
        // them one by one, and the reply frame stays far below the frame limit.
        let mut left = GET_MANY_REPLY_BYTES;
        for pk in pks {
            ts.check_pk(pk).map_err(err)?;
            if left == 0 {
                out.push(Served::NotHeld);
                continue;
            }
            let look = match self.hit(&ts, pk) {
                Probe::Hit(v) => Look::Hit(v),
                Probe::Absent(_) => Look::Missing,
                Probe::Other => {
                    let key = self.key_string(&ts, pk).map_err(err)?;
                    self.lookup(&key, true)
                }
            };
            out.push(match look {
                Look::Hit(v) => {
                    left = left.saturating_sub(crate::store::record_size(v.as_deref()) + 1);
                    inc(&self.c.hits);
                    inc(&self.c.served_for_peers);
                    Served::Value(v)
                }
                _ => Served::NotHeld,
            });
        }
        Ok(Reply::Values(out))
    }

    /// A peer's request, served as the owner (claiming the key if nobody holds it), or
    /// answered with a redirect to the owner.
    pub(crate) async fn serve_peer(
        &self,
        table: String,
        pk: Key,
        op: Op,
    ) -> Result<Reply, RemoteError> {
        let op = match op {
            Op::GetMany(pks) => return self.serve_get_many(&table, &pks),
            Op::WriteMany(ws) => {
                return Box::pin(self.serve_write_many(&table, ws))
                    .await
                    .map_err(|e| RemoteError {
                        message: e.to_string(),
                    })
            }
            op => op,
        };
        inc(&self.c.served_for_peers);
        let r = async {
            self.check_open()?;
            let ts = self.table_state(&table)?;
            ts.check_pk(&pk)?;
            if let Op::Write(w) = &op {
                check_write(&ts, &pk, w)?;
            }
            let key = self.key(&ts, &pk)?;
            match op {
                Op::Invalidate if self.holds(&key) => Box::pin(self.invalidate_local(&key)).await,
                Op::Invalidate => Ok(Reply::Done),
                op => self.execute(&ts, key, &pk, &op, false).await,
            }
        }
        .await;
        r.map_err(|e| RemoteError {
            message: e.to_string(),
        })
    }
}
