//! `keyward-bench cache`: the write-back cache against Redis 7, in one run.
//!
//! 1. Owner-local `get` on one core: one node owns every key; 64 tasks on a single-threaded
//!    runtime read them (goal: at least 2 million per second).
//! 2. Forwarded `get` and `put`: this process is a non-owner; the owner is a second process
//!    (this binary re-executed with `KEYWARD_BENCH_ROLE=cache-owner`), found through a real
//!    ownership server, over one SQLite database in WAL mode (synchronous=FULL: a journal
//!    commit is on disk before the write is acknowledged). Against Redis on the same values,
//!    tasks and pipeline depth: gets against Redis without persistence, puts against Redis with
//!    `appendonly yes` + `appendfsync always` (both acknowledge only durable writes). After
//!    each put round both sides get an unmeasured pause ([`SETTLE`]) so that the owner's
//!    flushing of what the round left dirty does not run during Redis's round.
//! 3. Write-back merging: 1,000,000 puts, Zipf(0.99) over 100,000 keys, 2-second flush age:
//!    database row writes per 100 cache writes, the ideal (distinct keys dirtied per 2-second
//!    window, summed), their ratio, and journal commits per 100 writes.
//!
//! 64 client tasks each keep 16 requests in flight (Keyward: a `get_many` or `put_many` of 16
//! keys, one frame to the owner on the shared peer connection; Redis: a pipeline of 16
//! commands on the task's own connection). The merge run (3) puts its 16 keys as 16
//! concurrent `put` calls, so that repeated hot keys count as the separate writes they are.

use crate::anchor::Anchor;
use crate::harness::{get, interleave, BenchError, Contender, Measures, Plan, ResultLine};
use async_trait::async_trait;
use keyward_cache::{Cache, CacheConfig, PeerListener, RawTable, TableOptions};
use keyward_dbc::{Db, Field, FieldType, Record, TableDef, Value};
use keyward_ownership::{
    ClientOptions, Coordinator, Endpoints, InProcessHub, Server, ServerConfig, SessionConfig,
};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const ROLE_ENV: &str = "KEYWARD_BENCH_ROLE";
const OWNER_ROLE: &str = "cache-owner";
const VALUE_BYTES: usize = 100;
const TASKS: usize = 64;
const DEPTH: usize = 16;
/// Keys read and written in sections 1 and 2.
const KEYS: u64 = 100_000;
const MERGE_UPDATES: usize = 1_000_000;
const MERGE_KEYS: usize = 100_000;
const ZIPF_S: f64 = 0.99;
const FLUSH_AGE: Duration = Duration::from_secs(2);
const SECRET: &str = "keyward-bench-cache";
/// Pause after each put round, not measured: the owner flushes what the round left dirty
/// (up to its 2-second flush age; Redis may be rewriting its AOF) before the next contender
/// starts, so that neither runs on the other's leftover work.
const SETTLE: Duration = Duration::from_secs(3);

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

fn table_def(name: &str) -> TableDef {
    TableDef {
        name: name.into(),
        fields: vec![
            Field::new("id", FieldType::I64),
            Field::new("v", FieldType::Text),
        ],
        primary_key: vec!["id".into()],
    }
}

/// Exactly `VALUE_BYTES` bytes, different per key and generation. Built without the
/// formatter's padding (a call per character): making values must cost next to nothing, for
/// Keyward's and Redis's runs alike.
fn value_text(key: u64, gen: u64) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(VALUE_BYTES);
    let _ = write!(s, "{key}:{gen}:");
    let pad = VALUE_BYTES.saturating_sub(s.len());
    s.extend(std::iter::repeat_n('x', pad));
    s
}

fn record(key: u64, gen: u64) -> Record {
    vec![Value::I64(key as i64), Value::Text(value_text(key, gen))]
}

/// A small, fast PRNG (xorshift64*): the benchmark's key choice must cost next to nothing.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        (((self.next() >> 11) as u128 * n as u128) >> 53) as u64
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn measure_for(plan: Plan) -> Duration {
    if plan.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    }
}

fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite:{}?mode=rwc", dir.join("keyward.db").display())
}

/// Writes `keys` records through the cache with `TASKS` tasks (so the journal batches them).
async fn preload(t: &RawTable, keys: u64) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let t = t.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys {
                    return Ok::<_, String>(());
                }
                t.put(record(k, 0)).await.map_err(|e| e.to_string())?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

// ---------------------------------------------------------------- section 1: local gets

/// A cache on a thread of its own with a single-threaded runtime; each request measures gets
/// for a duration and answers the count.
struct LocalGets {
    tx: mpsc::UnboundedSender<(Duration, oneshot::Sender<Result<f64, String>>)>,
    dur: Duration,
    _thread: std::thread::JoinHandle<()>,
}

impl LocalGets {
    async fn start(dur: Duration) -> Result<LocalGets, BenchError> {
        let (tx, mut rx) =
            mpsc::unbounded_channel::<(Duration, oneshot::Sender<Result<f64, String>>)>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("local-gets".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let setup = async {
                        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
                        let db = Db::connect(&sqlite_url(dir.path()))
                            .await
                            .map_err(|e| e.to_string())?;
                        let hub = InProcessHub::new();
                        let coord = hub
                            .connect(SessionConfig::default())
                            .await
                            .map_err(|e| e.to_string())?;
                        let l = PeerListener::bind("127.0.0.1:0")
                            .await
                            .map_err(|e| e.to_string())?;
                        let cache = Cache::start_on(
                            l,
                            CacheConfig {
                                secret: SECRET.into(),
                                ..Default::default()
                            },
                            coord,
                            db,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        let t = cache
                            .raw_table(table_def("bench_local"), TableOptions::default())
                            .await
                            .map_err(|e| e.to_string())?;
                        preload(&t, KEYS).await?;
                        cache.flush().await.map_err(|e| e.to_string())?;
                        Ok::<_, String>((dir, hub, cache, t))
                    };
                    let (_dir, _hub, cache, t) = match setup.await {
                        Ok(x) => {
                            let _ = ready_tx.send(Ok(()));
                            x
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    while let Some((dur, reply)) = rx.recv().await {
                        let _ = reply.send(local_round(&t, dur).await);
                    }
                    let _ = cache.shutdown().await;
                });
            })?;
        ready_rx
            .await
            .map_err(|_| setup("local cache thread ended"))?
            .map_err(setup)?;
        Ok(LocalGets {
            tx,
            dur,
            _thread: thread,
        })
    }
}

async fn local_round(t: &RawTable, dur: Duration) -> Result<f64, String> {
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let t = t.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(i as u64 + 1);
            let mut n = 0u64;
            loop {
                for _ in 0..64 {
                    let k = rng.below(KEYS);
                    match t.get(&[Value::I64(k as i64)]).await {
                        Ok(Some(_)) => n += 1,
                        Ok(None) => return Err(format!("key {k} missing")),
                        Err(e) => return Err(e.to_string()),
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                // Let the other tasks in (a hit never waits, so nothing else would).
                tokio::task::yield_now().await;
            }
            count.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

#[async_trait]
impl Contender for LocalGets {
    fn name(&self) -> &str {
        "keyward-local"
    }
    async fn run(&mut self, _round: usize) -> Result<Measures, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((self.dur, tx))
            .map_err(|_| "local cache thread ended".to_string())?;
        let per_s = rx
            .await
            .map_err(|_| "local cache thread ended".to_string())??;
        Ok([("gets_per_s".to_owned(), per_s)].into())
    }
}

// ------------------------------------------------- section 2: the owner process and its peer

/// Body of the owner process: owns every key, serves them until its stdin closes.
async fn owner_main() -> Result<(), String> {
    let server = std::env::var("KW_BENCH_OWNERSHIP").map_err(|e| e.to_string())?;
    let url = std::env::var("KW_BENCH_DB").map_err(|e| e.to_string())?;
    let db = Db::connect(&url).await.map_err(|e| e.to_string())?;
    let l = PeerListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let mut endpoints = Endpoints::new();
    endpoints.insert(
        "cache".into(),
        l.local_addr().map_err(|e| e.to_string())?.to_string(),
    );
    let coord = keyward_ownership::connect(
        &[server],
        SessionConfig {
            endpoints,
            ..Default::default()
        },
        ClientOptions::with_secret(SECRET),
    )
    .await
    .map_err(|e| e.to_string())?;
    let cache = Cache::start_on(
        l,
        CacheConfig {
            secret: SECRET.into(),
            ..Default::default()
        },
        coord,
        db,
    )
    .await
    .map_err(|e| e.to_string())?;
    let t = cache
        .raw_table(table_def("bench_fwd"), TableOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    preload(&t, KEYS).await?;
    cache.flush().await.map_err(|e| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    // Serve until the parent closes our stdin (or dies).
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await;
    let s = cache.stats();
    eprintln!(
        "owner: served_for_peers={} writes={} journal_entries={} journal_commits={} flushed_rows={}",
        s.served_for_peers, s.writes, s.journal_entries, s.journal_commits, s.flushed_rows
    );
    cache.shutdown().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The owner process, killed if still running when dropped.
struct OwnerProcess(Child);

impl Drop for OwnerProcess {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_owner(ownership: &str, db_url: &str) -> Result<OwnerProcess, BenchError> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("cache")
        .env(ROLE_ENV, OWNER_ROLE)
        .env("KW_BENCH_OWNERSHIP", ownership)
        .env("KW_BENCH_DB", db_url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| setup("owner process has no stdout"))?;
    let owner = OwnerProcess(child);
    let ready = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.trim() == "READY" => return true,
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(300), ready).await {
        Ok(Ok(true)) => Ok(owner),
        _ => Err(setup("the owner process did not get ready")),
    }
}

struct Forwarded {
    name: &'static str,
    table: RawTable,
    put: bool,
    dur: Duration,
    gen: u64,
}

#[async_trait]
impl Contender for Forwarded {
    fn name(&self) -> &str {
        self.name
    }
    async fn run(&mut self, round: usize) -> Result<Measures, String> {
        self.gen += 1;
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + self.dur;
        let mut tasks = Vec::new();
        for i in 0..TASKS {
            let t = self.table.clone();
            let count = count.clone();
            let put = self.put;
            let gen = self.gen;
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new((round * TASKS + i) as u64 + 7);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let keys: Vec<u64> = (0..DEPTH).map(|_| rng.below(KEYS)).collect();
                    if put {
                        let recs = keys.iter().map(|k| record(*k, gen)).collect();
                        t.put_many(recs).await.map_err(|e| e.to_string())?;
                    } else {
                        let pks: Vec<Vec<Value>> =
                            keys.iter().map(|k| vec![Value::I64(*k as i64)]).collect();
                        let got = t.get_many(&pks).await.map_err(|e| e.to_string())?;
                        if got.iter().any(|g| g.is_none()) {
                            return Err("a key is missing".to_string());
                        }
                    }
                    n += DEPTH as u64;
                }
                count.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        let per_s = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        if self.put {
            tokio::time::sleep(SETTLE).await;
        }
        Ok([(
            if self.put { "puts_per_s" } else { "gets_per_s" }.to_owned(),
            per_s,
        )]
        .into())
    }
}

struct RedisSide {
    name: &'static str,
    conns: Vec<redis::aio::MultiplexedConnection>,
    put: bool,
    dur: Duration,
    gen: u64,
    _anchor: Anchor,
}

async fn redis_conns(port: u16) -> Result<Vec<redis::aio::MultiplexedConnection>, BenchError> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(setup)?;
    let cfg =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let mut conns = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        conns.push(
            client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map_err(setup)?,
        );
    }
    Ok(conns)
}

impl RedisSide {
    async fn start(
        name: &'static str,
        fsync: bool,
        put: bool,
        dur: Duration,
    ) -> Result<RedisSide, BenchError> {
        let mut args = vec!["--port", "{port}", "--bind", "127.0.0.1", "--save", ""];
        if fsync {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        let anchor = tokio::task::spawn_blocking(move || {
            Anchor::start("redis", "redis-server", "redis-server", &args)
        })
        .await
        .map_err(setup)??;
        let conns = redis_conns(anchor.port).await?;
        let mut side = RedisSide {
            name,
            conns,
            put,
            dur,
            gen: 0,
            _anchor: anchor,
        };
        if !put {
            // The same keys and values as the cache holds.
            let mut con = side.conns[0].clone();
            for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
                let mut p = redis::pipe();
                for k in chunk {
                    p.set(format!("k{k}"), value_text(*k, 0)).ignore();
                }
                p.query_async::<()>(&mut con).await.map_err(setup)?;
            }
            side.gen = 0;
        }
        Ok(side)
    }
}

#[async_trait]
impl Contender for RedisSide {
    fn name(&self) -> &str {
        self.name
    }
    async fn run(&mut self, round: usize) -> Result<Measures, String> {
        self.gen += 1;
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + self.dur;
        let mut tasks = Vec::new();
        for (i, con) in self.conns.iter().enumerate() {
            let mut con = con.clone();
            let count = count.clone();
            let put = self.put;
            let gen = self.gen;
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new((round * TASKS + i) as u64 + 7);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let mut p = redis::pipe();
                    for _ in 0..DEPTH {
                        let k = rng.below(KEYS);
                        if put {
                            p.set(format!("k{k}"), value_text(k, gen)).ignore();
                        } else {
                            p.get(format!("k{k}"));
                        }
                    }
                    if put {
                        p.query_async::<()>(&mut con)
                            .await
                            .map_err(|e| e.to_string())?;
                    } else {
                        let got: Vec<Option<Vec<u8>>> =
                            p.query_async(&mut con).await.map_err(|e| e.to_string())?;
                        if got.iter().any(|g| g.is_none()) {
                            return Err("a key is missing".to_string());
                        }
                    }
                    n += DEPTH as u64;
                }
                count.fetch_add(n, Ordering::Relaxed);
                Ok::<_, String>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        let per_s = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        if self.put {
            tokio::time::sleep(SETTLE).await;
        }
        Ok([(
            if self.put { "puts_per_s" } else { "gets_per_s" }.to_owned(),
            per_s,
        )]
        .into())
    }
}

/// A running ownership server, stopped when dropped.
struct Ownership {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Ownership {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start_ownership() -> Result<Ownership, BenchError> {
    let dir = tempfile::tempdir()?;
    let server = Server::bind(ServerConfig::new(
        "127.0.0.1:0",
        SECRET,
        dir.path().to_path_buf(),
    ))
    .await
    .map_err(setup)?;
    let addr = server.local_addr().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = server
            .run(async {
                let _ = rx.await;
            })
            .await
        {
            eprintln!("ownership server: {e}");
        }
    });
    Ok(Ownership {
        addr,
        stop: Some(tx),
        _dir: dir,
    })
}

async fn non_owner(ownership: &str, db_url: &str) -> Result<(Cache, RawTable), BenchError> {
    let db = Db::connect(db_url).await.map_err(setup)?;
    let l = PeerListener::bind("127.0.0.1:0").await?;
    let mut endpoints = Endpoints::new();
    endpoints.insert("cache".into(), l.local_addr()?.to_string());
    let coord: Coordinator = keyward_ownership::connect(
        &[ownership.to_owned()],
        SessionConfig {
            endpoints,
            ..Default::default()
        },
        ClientOptions::with_secret(SECRET),
    )
    .await
    .map_err(setup)?;
    let cache = Cache::start_on(
        l,
        CacheConfig {
            secret: SECRET.into(),
            ..Default::default()
        },
        coord,
        db,
    )
    .await
    .map_err(setup)?;
    let t = cache
        .raw_table(table_def("bench_fwd"), TableOptions::default())
        .await
        .map_err(setup)?;
    Ok((cache, t))
}

// ---------------------------------------------------------------- section 3: merging

/// Zipf(s) over `n` ranks by inverse CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

struct MergeFigures {
    writes: u64,
    db_writes: u64,
    ideal: u64,
    journal_commits: u64,
    secs: f64,
}

async fn merge_run() -> Result<MergeFigures, BenchError> {
    let dir = tempfile::tempdir()?;
    let db = Db::connect(&sqlite_url(dir.path())).await.map_err(setup)?;
    let hub = InProcessHub::new();
    let coord = hub.connect(SessionConfig::default()).await.map_err(setup)?;
    let l = PeerListener::bind("127.0.0.1:0").await?;
    let cache = Cache::start_on(
        l,
        CacheConfig {
            secret: SECRET.into(),
            flush_max_age_ms: FLUSH_AGE.as_millis() as u64,
            ..Default::default()
        },
        coord,
        db,
    )
    .await
    .map_err(setup)?;
    let t = cache
        .raw_table(table_def("bench_merge"), TableOptions::default())
        .await
        .map_err(setup)?;
    let zipf = Arc::new(Zipf::new(MERGE_KEYS, ZIPF_S));
    let before = cache.stats();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let t = t.clone();
        let zipf = zipf.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(1000 + i as u64);
            // (window, key) of every write: the ideal is the number of distinct pairs.
            let mut dirtied: Vec<u64> = Vec::new();
            loop {
                let at = next.fetch_add(DEPTH as u64, Ordering::Relaxed);
                if at >= MERGE_UPDATES as u64 {
                    return Ok::<_, String>(dirtied);
                }
                let n = (MERGE_UPDATES as u64 - at).min(DEPTH as u64);
                let keys: Vec<u64> = (0..n).map(|_| zipf.sample(&mut rng) as u64).collect();
                let window = (start.elapsed().as_millis() / FLUSH_AGE.as_millis()) as u64;
                for k in &keys {
                    dirtied.push((window << 32) | k);
                }
                let calls = keys.iter().map(|k| t.put(record(*k, at)));
                futures::future::try_join_all(calls)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }));
    }
    let mut pairs: HashSet<u64> = HashSet::new();
    for task in tasks {
        let d = task.await.map_err(setup)?.map_err(setup)?;
        pairs.extend(d);
    }
    let secs = start.elapsed().as_secs_f64();
    cache.flush().await.map_err(setup)?;
    let after = cache.stats();
    cache.shutdown().await.map_err(setup)?;
    Ok(MergeFigures {
        writes: after.writes - before.writes,
        db_writes: after.flushed_rows - before.flushed_rows,
        ideal: pairs.len() as u64,
        journal_commits: after.journal_commits - before.journal_commits,
        secs,
    })
}

// ---------------------------------------------------------------- the run

pub async fn run(plan: Plan) -> Result<ResultLine, BenchError> {
    if std::env::var(ROLE_ENV).as_deref() == Ok(OWNER_ROLE) {
        let code = match owner_main().await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cache owner process: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    let dur = measure_for(plan);

    eprintln!("section 1: owner-local gets on one core ({KEYS} keys)");
    let mut local = LocalGets::start(dur).await?;
    let m1 = interleave(plan, &mut [&mut local]).await;
    drop(local);
    let local_gets = get(&m1, "keyward-local", "gets_per_s");

    eprintln!("section 2: forwarded gets and puts against Redis");
    let ownership = start_ownership().await?;
    let dbdir = tempfile::tempdir()?;
    let url = sqlite_url(dbdir.path());
    {
        // Create the database id before two processes race to.
        let db = Db::connect(&url).await.map_err(setup)?;
        db.database_id().await.map_err(setup)?;
        db.close().await;
    }
    let owner = start_owner(&ownership.addr, &url).await?;
    let (peer, table) = non_owner(&ownership.addr, &url).await?;
    // Learn every key's owner once (routes are then remembered), as a warm client would have.
    let pks: Vec<Vec<Value>> = (0..KEYS).map(|k| vec![Value::I64(k as i64)]).collect();
    for chunk in pks.chunks(1000) {
        table.get_many(chunk).await.map_err(setup)?;
    }
    let mut kg = Forwarded {
        name: "keyward-get",
        table: table.clone(),
        put: false,
        dur,
        gen: 0,
    };
    let mut kp = Forwarded {
        name: "keyward-put",
        table: table.clone(),
        put: true,
        dur,
        gen: 1_000,
    };
    let mut rg = RedisSide::start("redis-get", false, false, dur).await?;
    let mut rp = RedisSide::start("redis-fsync-put", true, true, dur).await?;
    let m2 = interleave(plan, &mut [&mut kg, &mut rg, &mut kp, &mut rp]).await;
    let s = peer.stats();
    eprintln!(
        "non-owner: forwards={} hits={} misses={}",
        s.forwards, s.hits, s.misses
    );
    let _ = peer.shutdown().await;
    drop(owner);
    drop((rg, rp, ownership));
    let fg = get(&m2, "keyward-get", "gets_per_s");
    let rgv = get(&m2, "redis-get", "gets_per_s");
    let fp = get(&m2, "keyward-put", "puts_per_s");
    let rpv = get(&m2, "redis-fsync-put", "puts_per_s");

    eprintln!(
        "section 3: write-back merging ({MERGE_UPDATES} puts, Zipf({ZIPF_S}) over {MERGE_KEYS} keys, {} s flush age)",
        FLUSH_AGE.as_secs()
    );
    let m = merge_run().await?;
    let per100 = |x: u64| 100.0 * x as f64 / m.writes.max(1) as f64;
    let db_per_100 = per100(m.db_writes);
    let ideal_per_100 = per100(m.ideal);
    let efficiency = m.db_writes as f64 / m.ideal.max(1) as f64;
    let jc_per_100 = per100(m.journal_commits);
    eprintln!(
        "merge: {} writes in {:.1} s ({:.0}/s); database row writes {} ({:.3} per 100); ideal {} ({:.3} per 100); merge efficiency {:.3} (goal <= 1.2); journal commits {} ({:.3} per 100)",
        m.writes,
        m.secs,
        m.writes as f64 / m.secs,
        m.db_writes,
        db_per_100,
        m.ideal,
        ideal_per_100,
        efficiency,
        m.journal_commits,
        jc_per_100
    );
    eprintln!(
        "local gets {} /s (goal >= 2000000); forwarded gets {} vs redis {}; forwarded puts {} vs redis fsync {}",
        local_gets.map_or("NA".into(), crate::harness::fmt_number),
        fg.map_or("NA".into(), crate::harness::fmt_number),
        rgv.map_or("NA".into(), crate::harness::fmt_number),
        fp.map_or("NA".into(), crate::harness::fmt_number),
        rpv.map_or("NA".into(), crate::harness::fmt_number),
    );

    let mut r = ResultLine::default();
    r.set("local_gets_per_s", local_gets)
        .set("forwarded_get_ratio_vs_redis", ResultLine::ratio(fg, rgv))
        .set(
            "forwarded_put_ratio_vs_redis_fsync",
            ResultLine::ratio(fp, rpv),
        )
        .set("db_writes_per_100", Some(db_per_100))
        .set("merge_efficiency", Some(efficiency))
        .set("journal_commits_per_100", Some(jc_per_100));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_exactly_value_bytes_and_differ() {
        let a = value_text(7, 1);
        assert_eq!(a.len(), VALUE_BYTES);
        assert!(a.starts_with("7:1:x"));
        assert_ne!(a, value_text(7, 2));
        assert_eq!(value_text(u64::MAX, u64::MAX).len(), VALUE_BYTES);
    }
}
