//! `keyward-bench ownership`: the port switch service against etcd 3.4, in one run.
//!
//! (a) claim+release pairs per second from 64 client sessions (one connection each), one port
//!     per request but many requests in flight per connection, keys of about 20 bytes, through
//!     Keyward's network client and server, interleaved with the same work on etcd (a
//!     lease-bound put-if-absent transaction and a delete per pair). Keyward pipelines: each
//!     session sends 64 claims as 64 requests in one pipeline, then their 64 releases. The
//!     same pairs made by 16 tasks per session, each awaiting one call at a time, are reported
//!     as `tasks_pairs_per_s`; etcd gets those 16 tasks per session, its best footing here
//!     (1 and 64 tasks per session measured slower);
//! (b) port operations per second with 100 ports per request (register and release);
//! (c) the server's resident memory per registered port with 10 million ports registered;
//! (d) seconds from SIGKILL of the master of a group of three until every one of 64 clients has
//!     re-registered its share of 100,000 ports at the new master.
//!
//! Servers run in separate processes (this binary re-executed with `KEYWARD_BENCH_ROLE`), so
//! that their memory can be read from /proc and a master can be killed for real.

use crate::anchor::{free_port, Anchor};
use crate::harness::{get, interleave, median, BenchError, Contender, Measures, Plan, ResultLine};
use async_trait::async_trait;
use bytes::Buf;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use keyward_ownership::frame::{self, kind, next_frame, FrameWriter, Reader};
use keyward_ownership::{
    connect, dial_raw, server_stats, Claim, ClientOptions, Coordinator, Endpoints, GroupSettings,
    Guard, Mode, NodeId, Server, ServerConfig, SessionConfig,
};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Set in the environment of a re-executed bench binary that must serve instead of measure.
const ROLE_ENV: &str = "KEYWARD_BENCH_ROLE";
const ROLE_SERVER: &str = "ownership-server";
const SECRET: &str = "keyward-bench-secret";

const SESSIONS: usize = 64;
/// Requests in one pipeline per session in (a), one port each.
const PIPELINE: usize = 64;
/// Tasks per session, each with one call in flight, for etcd and Keyward's tasks measure.
const DEPTH: usize = 16;
/// Requests in flight per session in (b).
const BATCH_DEPTH: usize = 4;
const BATCH: usize = 100;
const MEMORY_PORTS: usize = 10_000_000;
const FAILOVER_PORTS: usize = 100_000;
/// Client lease in the failover run: the clients must find the new master and re-register
/// before `lease - margin - heartbeat` passes, or their guards are (correctly) lost.
const FAILOVER_LEASE: Duration = Duration::from_secs(6);

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

pub async fn run(plan: Plan) -> Result<ResultLine, BenchError> {
    if std::env::var(ROLE_ENV).as_deref() == Ok(ROLE_SERVER) {
        let code = match serve_role().await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ownership server role: {e}");
                1
            }
        };
        // A server process must not print a RESULT line of its own.
        std::process::exit(code);
    }
    let round_time = if plan.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };

    // (a) and (b) against one lone server process.
    let server = ServerProc::spawn(&[]).await?;
    let addrs = vec![server.addr.clone()];
    let sessions = open_sessions(&addrs, SESSIONS, SessionConfig::default()).await?;
    let etcd = start_etcd()?;
    let mut kw = KeywardPairs {
        sessions: sessions.clone(),
        time: round_time,
    };
    let mut tasks = KeywardTaskPairs {
        sessions: sessions.clone(),
        time: round_time,
    };
    let mut et = EtcdPairs::new(etcd.port, round_time).await?;
    let medians = interleave(plan, &mut [&mut kw, &mut tasks, &mut et]).await;
    let pairs = get(&medians, "keyward", "pairs_per_s");
    let task_pairs = get(&medians, "keyward-tasks", "pairs_per_s");
    let etcd_pairs = get(&medians, "etcd", "pairs_per_s");
    drop(et);
    drop(etcd);

    let mut batched = KeywardBatched {
        sessions: sessions.clone(),
        time: round_time,
    };
    let medians = interleave(plan, &mut [&mut batched]).await;
    let ops = get(&medians, "keyward-batched", "ops_per_s");
    for s in &sessions {
        let _ = s.close().await;
    }
    drop(sessions);
    drop(server);

    // (c) one run: the size is what matters, and it is the same every time.
    let bytes_per_port = match memory_per_port().await {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("memory per port: failed: {e}");
            None
        }
    };

    // (d) a fresh group per round.
    let mut failovers = Vec::new();
    for round in 0..plan.rounds {
        match failover_round().await {
            Ok(s) => {
                eprintln!("round {round} failover: failover_s={s:.3}");
                failovers.push(s);
            }
            Err(e) => {
                eprintln!("round {round} failover: failed: {e}");
                break;
            }
        }
    }
    let failover_s = (failovers.len() == plan.rounds).then(|| median(&failovers));

    let mut r = ResultLine::default();
    r.set("pipelined_pairs_per_s", pairs)
        .set("etcd_pairs_per_s", etcd_pairs)
        .set("ratio_vs_etcd", ResultLine::ratio(pairs, etcd_pairs))
        .set("ops_per_s", ops)
        .set("bytes_per_port", bytes_per_port)
        .set("failover_s", failover_s)
        .set("tasks_pairs_per_s", task_pairs);
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Server processes

/// The body of a re-executed server process: binds, says `READY <addr>` on stdout, serves until
/// its stdin closes (the parent ended) or it is killed.
async fn serve_role() -> Result<(), BenchError> {
    let var = |name: &str| std::env::var(name).map_err(|_| setup(format!("{name} not set")));
    let listen = var("KW_BENCH_LISTEN")?;
    let dir = std::path::PathBuf::from(var("KW_BENCH_DIR")?);
    let mut cfg = ServerConfig::new(listen, SECRET, dir);
    if let Ok(ms) = std::env::var("KW_BENCH_MAX_LEASE_MS") {
        cfg.max_lease = Duration::from_millis(ms.parse().map_err(setup)?);
    }
    if let Ok(members) = std::env::var("KW_BENCH_MEMBERS") {
        let members: Vec<String> = members.split(',').map(str::to_owned).collect();
        let me: usize = var("KW_BENCH_ME")?.parse().map_err(setup)?;
        cfg.group = Some(GroupSettings::new(members, me));
    }
    let server = Server::bind(cfg).await.map_err(setup)?;
    println!("READY {}", server.local_addr());
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await;
    };
    server.run(stdin_closed).await.map_err(setup)
}

/// A server in a child process; killed (SIGKILL) when dropped.
struct ServerProc {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl ServerProc {
    async fn spawn(env: &[(&str, String)]) -> Result<ServerProc, BenchError> {
        let dir = tempfile::tempdir()?;
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("ownership")
            .env(ROLE_ENV, ROLE_SERVER)
            .env("KW_BENCH_DIR", dir.path())
            .env("KW_BENCH_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| setup("no stdout"))?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            line
        });
        let line = match tokio::time::timeout(Duration::from_secs(30), line).await {
            Ok(Ok(l)) => l,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(setup("server process did not report READY"));
            }
        };
        let Some(addr) = line.trim().strip_prefix("READY ") else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(setup(format!("server process said {line:?}")));
        };
        Ok(ServerProc {
            addr: addr.to_owned(),
            child,
            _dir: dir,
        })
    }

    /// Resident set of the server process, from /proc.
    fn rss_bytes(&self) -> Result<u64, BenchError> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| setup("no VmRSS in /proc status"))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn session_config(node: String, lease: Duration, margin: Duration) -> SessionConfig {
    SessionConfig {
        node_id: Some(NodeId::from(node.as_str())),
        endpoints: Endpoints::new(),
        mode: Mode::Persistent,
        lease,
        margin,
    }
}

async fn open_sessions(
    addrs: &[String],
    n: usize,
    base: SessionConfig,
) -> Result<Vec<Coordinator>, BenchError> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let cfg = session_config(format!("bench-{i}-{}", short_id()), base.lease, base.margin);
        out.push(
            connect(addrs, cfg, ClientOptions::with_secret(SECRET))
                .await
                .map_err(setup)?,
        );
    }
    Ok(out)
}

/// A few hex digits, fresh per call: keys of one round never collide with an earlier round's.
fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_owned()
}

/// `cache/<uuid-ish>/t/<8 digits>`: 23 bytes.
/// Waits for a timed round's tasks and reports what they counted, per second, as `measure`.
async fn per_second(
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    done: &AtomicU64,
    start: Instant,
    measure: &str,
) -> Result<Measures, String> {
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok([(
        measure.to_owned(),
        done.load(Ordering::Relaxed) as f64 / secs,
    )]
    .into())
}

fn key(prefix: &str, n: u64) -> String {
    // Built by hand: the formatter's padding costs more than a pipelined claim's share of the
    // client (the same keys go to etcd).
    let mut k = String::with_capacity(prefix.len() + 17);
    k.push_str("cache/");
    k.push_str(prefix);
    k.push_str("/t/");
    let mut digits = [b'0'; 8];
    let mut v = n % 100_000_000;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    k.extend(digits.iter().map(|&d| d as char));
    k
}

// ---------------------------------------------------------------------------------------------
// (a) pipelined pairs, one port per request

struct KeywardPairs {
    sessions: Vec<Coordinator>,
    time: Duration,
}

#[async_trait]
impl Contender for KeywardPairs {
    fn name(&self) -> &str {
        "keyward"
    }

    async fn run(&mut self, _round: usize) -> Result<Measures, String> {
        let prefix = short_id();
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + self.time;
        let mut tasks = Vec::new();
        for (s, c) in self.sessions.iter().enumerate() {
            let (c, prefix, done) = (c.clone(), prefix.clone(), done.clone());
            let base = s as u64 * 1_000_000;
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let mut claims = c.pipeline();
                    for _ in 0..PIPELINE {
                        claims.claim(key(&prefix, base + i % 1_000_000));
                        i += 1;
                    }
                    let mut releases = c.pipeline();
                    for a in claims.run().await.map_err(|e| e.to_string())? {
                        match a.map_err(|e| e.to_string())?.into_claim() {
                            Some(Claim::Granted(g)) => {
                                releases.release(g);
                            }
                            other => return Err(format!("not granted: {other:?}")),
                        }
                    }
                    for a in releases.run().await.map_err(|e| e.to_string())? {
                        a.map_err(|e| e.to_string())?;
                    }
                    done.fetch_add(PIPELINE as u64, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            }));
        }
        per_second(tasks, &done, start, "pairs_per_s").await
    }
}

/// The same pairs from tasks that each await one call at a time.
struct KeywardTaskPairs {
    sessions: Vec<Coordinator>,
    time: Duration,
}

#[async_trait]
impl Contender for KeywardTaskPairs {
    fn name(&self) -> &str {
        "keyward-tasks"
    }

    async fn run(&mut self, _round: usize) -> Result<Measures, String> {
        let prefix = short_id();
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + self.time;
        let mut tasks = Vec::new();
        for (s, c) in self.sessions.iter().enumerate() {
            for d in 0..DEPTH {
                let (c, prefix, done) = (c.clone(), prefix.clone(), done.clone());
                let base = ((s * DEPTH + d) as u64) * 90_000;
                tasks.push(tokio::spawn(async move {
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let k = key(&prefix, base + i % 90_000);
                        i += 1;
                        let claim = c.claim(&[k.as_str()]).await.map_err(|e| e.to_string())?;
                        match claim.into_iter().next() {
                            Some(Claim::Granted(g)) => {
                                g.release().await.map_err(|e| e.to_string())?
                            }
                            other => return Err(format!("{k} not granted: {other:?}")),
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<(), String>(())
                }));
            }
        }
        per_second(tasks, &done, start, "pairs_per_s").await
    }
}

fn start_etcd() -> Result<Anchor, BenchError> {
    let peer = free_port()?;
    let peer_url = format!("http://127.0.0.1:{peer}");
    let cluster = format!("bench={peer_url}");
    Anchor::start(
        "etcd",
        "etcd-server",
        "etcd",
        &[
            "--name",
            "bench",
            "--data-dir",
            "{dir}/data",
            "--listen-client-urls",
            "http://127.0.0.1:{port}",
            "--advertise-client-urls",
            "http://127.0.0.1:{port}",
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &cluster,
            "--log-level",
            "error",
        ],
    )
}

/// The same work on etcd: one client (one HTTP/2 connection) and one lease per session;
/// a pair is a put-if-absent transaction bound to the lease and a delete.
struct EtcdPairs {
    clients: Vec<etcd_client::Client>,
    time: Duration,
}

impl EtcdPairs {
    async fn new(port: u16, time: Duration) -> Result<EtcdPairs, BenchError> {
        let url = format!("http://127.0.0.1:{port}");
        let mut clients = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            clients.push(
                etcd_client::Client::connect([url.as_str()], None)
                    .await
                    .map_err(setup)?,
            );
        }
        Ok(EtcdPairs { clients, time })
    }
}

#[async_trait]
impl Contender for EtcdPairs {
    fn name(&self) -> &str {
        "etcd"
    }

    async fn run(&mut self, _round: usize) -> Result<Measures, String> {
        let prefix = short_id();
        let done = Arc::new(AtomicU64::new(0));
        let mut leases = Vec::with_capacity(self.clients.len());
        for c in &mut self.clients {
            let l = c.lease_grant(60, None).await.map_err(|e| e.to_string())?;
            leases.push(l.id());
        }
        let start = Instant::now();
        let deadline = start + self.time;
        let mut tasks = Vec::new();
        for (s, c) in self.clients.iter().enumerate() {
            for d in 0..DEPTH {
                let mut kv = c.kv_client();
                let (prefix, done, lease) = (prefix.clone(), done.clone(), leases[s]);
                let base = ((s * DEPTH + d) as u64) * 90_000;
                tasks.push(tokio::spawn(async move {
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let k = key(&prefix, base + i % 90_000);
                        i += 1;
                        let txn = Txn::new()
                            .when([Compare::create_revision(k.as_str(), CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(
                                k.as_str(),
                                "n",
                                Some(PutOptions::new().with_lease(lease)),
                            )]);
                        let r = kv.txn(txn).await.map_err(|e| e.to_string())?;
                        if !r.succeeded() {
                            return Err(format!("{k} not granted by etcd"));
                        }
                        kv.delete(k.as_str(), None)
                            .await
                            .map_err(|e| e.to_string())?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<(), String>(())
                }));
            }
        }
        let measures = per_second(tasks, &done, start, "pairs_per_s").await;
        for (c, l) in self.clients.iter_mut().zip(leases) {
            let _ = c.lease_revoke(l).await;
        }
        measures
    }
}

// ---------------------------------------------------------------------------------------------
// (b) 100 ports per request

struct KeywardBatched {
    sessions: Vec<Coordinator>,
    time: Duration,
}

#[async_trait]
impl Contender for KeywardBatched {
    fn name(&self) -> &str {
        "keyward-batched"
    }

    async fn run(&mut self, _round: usize) -> Result<Measures, String> {
        let prefix = short_id();
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + self.time;
        let mut tasks = Vec::new();
        for (s, c) in self.sessions.iter().enumerate() {
            for d in 0..BATCH_DEPTH {
                let (c, prefix, done) = (c.clone(), prefix.clone(), done.clone());
                let base = ((s * BATCH_DEPTH + d) as u64) * 300_000;
                tasks.push(tokio::spawn(async move {
                    let mut i = 0u64;
                    // Key strings reused across requests: the harness's own allocations stay
                    // out of what is measured.
                    let mut keys = vec![String::with_capacity(32); BATCH];
                    while Instant::now() < deadline {
                        for (j, k) in keys.iter_mut().enumerate() {
                            k.clear();
                            let n = (base + (i + j as u64) % 300_000) % 100_000_000;
                            let _ = write!(k, "cache/{prefix}/t/{n:08}");
                        }
                        i += BATCH as u64;
                        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                        let claims = c.claim(&refs).await.map_err(|e| e.to_string())?;
                        let guards: Vec<Guard> =
                            claims.into_iter().filter_map(Claim::granted).collect();
                        if guards.len() != BATCH {
                            return Err(format!("{} of {BATCH} granted", guards.len()));
                        }
                        // Guards dropped together leave as one UnRegPort of 100 ports.
                        drop(guards);
                        done.fetch_add(2 * BATCH as u64, Ordering::Relaxed);
                    }
                    Ok::<(), String>(())
                }));
            }
        }
        per_second(tasks, &done, start, "ops_per_s").await
    }
}

// ---------------------------------------------------------------------------------------------
// (c) memory per port

/// A session spoken in raw frames: 10 million guards would cost the bench process far more
/// memory than the server, so (c) registers its ports without the Coordinator's bookkeeping.
struct RawSession {
    stream: keyward_ownership::Stream,
    inbuf: bytes::BytesMut,
    out: bytes::BytesMut,
}

impl RawSession {
    async fn open(addr: &str, node: &str) -> Result<RawSession, BenchError> {
        let (stream, inbuf) = dial_raw(addr, &ClientOptions::with_secret(SECRET))
            .await
            .map_err(setup)?;
        let mut s = RawSession {
            stream,
            inbuf,
            out: bytes::BytesMut::new(),
        };
        let mut w = FrameWriter::begin(&mut s.out, kind::HELLO, 1);
        w.str(node)
            .u64(rand::random())
            .u8(0)
            .u32(600_000)
            .endpoints(&Endpoints::new());
        w.finish();
        s.flush().await?;
        let (k, _) = s.read_frame().await?;
        if k != kind::WELCOME {
            return Err(setup(format!("hello answered with kind {k:#04x}")));
        }
        Ok(s)
    }

    async fn flush(&mut self) -> Result<(), BenchError> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// The next frame's kind and payload.
    async fn read_frame(&mut self) -> Result<(u8, bytes::Bytes), BenchError> {
        loop {
            if let Some(f) = next_frame(&self.inbuf, 0, frame::DEFAULT_MAX_FRAME).map_err(setup)? {
                let mut whole = self.inbuf.split_to(f.end);
                whole.advance(frame::HEADER);
                return Ok((f.kind, whole.freeze()));
            }
            if self.stream.read_buf(&mut self.inbuf).await? == 0 {
                return Err(setup("server closed the connection"));
            }
        }
    }

    /// Registers `keys` in requests of `per` ports, `window` requests in flight.
    async fn register(
        &mut self,
        keys: impl Iterator<Item = String>,
        per: usize,
    ) -> Result<usize, BenchError> {
        let window = 8;
        let mut keys = keys.peekable();
        let mut granted = 0;
        let mut id = 1u32;
        while keys.peek().is_some() {
            let mut sent = 0;
            while sent < window && keys.peek().is_some() {
                let batch: Vec<String> = keys.by_ref().take(per).collect();
                id += 1;
                let mut w = FrameWriter::begin(&mut self.out, kind::REG_PORT, id);
                w.u8(0).u32(batch.len() as u32);
                for k in &batch {
                    w.str(k);
                }
                w.finish();
                sent += 1;
            }
            self.flush().await?;
            for _ in 0..sent {
                let (k, payload) = self.read_frame().await?;
                if k != kind::CLAIMS {
                    return Err(setup(format!("reg port answered with kind {k:#04x}")));
                }
                let mut r = Reader::new(&payload);
                let n = r.u32("claims").map_err(setup)?;
                for _ in 0..n {
                    if r.u8("tag").map_err(setup)? == 0 {
                        r.i64("token").map_err(setup)?;
                        granted += 1;
                    } else {
                        return Err(setup("a fresh port was refused"));
                    }
                }
            }
        }
        Ok(granted)
    }
}

async fn memory_per_port() -> Result<f64, BenchError> {
    let server = ServerProc::spawn(&[]).await?;
    let prefix = short_id();
    let per_session = MEMORY_PORTS / SESSIONS;
    let mut sessions = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        sessions.push(RawSession::open(&server.addr, &format!("mem-{i}-{prefix}")).await?);
    }
    let base = server.rss_bytes()?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut s) in sessions.into_iter().enumerate() {
        let prefix = prefix.clone();
        let count = if i + 1 == SESSIONS {
            MEMORY_PORTS - per_session * (SESSIONS - 1)
        } else {
            per_session
        };
        let first = (i * per_session) as u64;
        tasks.push(tokio::spawn(async move {
            let keys = (0..count as u64).map(move |j| key(&prefix, first + j));
            let n = s.register(keys, 1000).await?;
            Ok::<_, BenchError>((n, s))
        }));
    }
    let mut granted = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (n, s) = t.await.map_err(setup)??;
        granted += n;
        keep.push(s);
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = server_stats(
        std::slice::from_ref(&server.addr),
        &ClientOptions::with_secret(SECRET),
    )
    .await
    .map_err(setup)?;
    if granted != MEMORY_PORTS || stats.ports != MEMORY_PORTS {
        return Err(setup(format!(
            "{granted} ports granted, server holds {}",
            stats.ports
        )));
    }
    let rss = server.rss_bytes()?;
    eprintln!(
        "memory: {} ports registered in {secs:.1} s; server RSS {} MiB ({} MiB before), {:.1} bytes/port total, {:.1} added",
        MEMORY_PORTS,
        rss >> 20,
        base >> 20,
        rss as f64 / MEMORY_PORTS as f64,
        (rss - base.min(rss)) as f64 / MEMORY_PORTS as f64
    );
    drop(keep);
    Ok(rss as f64 / MEMORY_PORTS as f64)
}

// ---------------------------------------------------------------------------------------------
// (d) failover

async fn failover_round() -> Result<f64, BenchError> {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut members = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        members.push(
            ServerProc::spawn(&[
                ("KW_BENCH_LISTEN", a.clone()),
                ("KW_BENCH_MEMBERS", addrs.join(",")),
                ("KW_BENCH_ME", i.to_string()),
                (
                    "KW_BENCH_MAX_LEASE_MS",
                    FAILOVER_LEASE.as_millis().to_string(),
                ),
            ])
            .await?,
        );
    }
    let master = serving_master(&addrs, Duration::from_secs(30)).await?;
    let sessions = open_sessions(
        &addrs,
        SESSIONS,
        session_config(String::new(), FAILOVER_LEASE, Duration::from_secs(1)),
    )
    .await?;
    let prefix = short_id();
    let mut guards: Vec<Guard> = Vec::with_capacity(FAILOVER_PORTS);
    for (s, c) in sessions.iter().enumerate() {
        let from = s * FAILOVER_PORTS / SESSIONS;
        let to = (s + 1) * FAILOVER_PORTS / SESSIONS;
        let keys: Vec<String> = (from..to).map(|i| key(&prefix, i as u64)).collect();
        for chunk in keys.chunks(1000) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let claims = c.claim(&refs).await.map_err(setup)?;
            for claim in claims {
                guards.push(
                    claim
                        .granted()
                        .ok_or_else(|| setup("a fresh port was refused"))?,
                );
            }
        }
    }
    let tokens: Vec<i64> = guards.iter().map(Guard::token).collect();
    let idx = addrs
        .iter()
        .position(|a| *a == master)
        .ok_or_else(|| setup("master is not a member"))?;
    let killed = Instant::now();
    members[idx].kill(); // SIGKILL
    let limit = Duration::from_secs(30);
    let elapsed = loop {
        let moved = guards
            .iter()
            .zip(&tokens)
            .filter(|(g, t)| g.token() > **t)
            .count();
        let lost = guards.iter().filter(|g| !g.is_valid()).count();
        if lost > 0 {
            return Err(setup(format!(
                "{lost} of {FAILOVER_PORTS} ports lost in the failover ({moved} re-registered)"
            )));
        }
        if moved == guards.len() {
            break killed.elapsed();
        }
        if killed.elapsed() > limit {
            return Err(setup(format!(
                "only {moved} of {FAILOVER_PORTS} ports re-registered after {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(guards);
    for s in &sessions {
        let _ = s.close().await;
    }
    drop(members);
    Ok(elapsed.as_secs_f64())
}

/// The member that serves as master, once its re-registration window has closed (so that
/// fresh claims are granted at once).
async fn serving_master(addrs: &[String], limit: Duration) -> Result<String, BenchError> {
    let deadline = Instant::now() + limit;
    let opts = ClientOptions::with_secret(SECRET);
    while Instant::now() < deadline {
        for a in addrs {
            if let Ok(st) = server_stats(std::slice::from_ref(a), &opts).await {
                if st.master.as_deref() == Some(a.as_str())
                    && st.epoch > 0
                    && st.reregistration_ms == 0
                {
                    return Ok(a.clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(setup("no master serving within the limit"))
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_are_built_as_the_formatter_would() {
        for n in [
            0u64,
            7,
            12_345_678,
            99_999_999,
            100_000_000,
            123_456_789_012,
        ] {
            assert_eq!(
                key("ab12cd", n),
                format!("cache/ab12cd/t/{:08}", n % 100_000_000)
            );
        }
    }
}
