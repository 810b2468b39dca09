//! The ownership server: a TCP listener, one task per connection, and the port table in RAM.
//!
//! A connection authenticates (HMAC challenge-response on the cluster secret), then says hello
//! with its node id to open or resume a session, then pipelines requests. Every complete frame
//! in the read buffer is handled under one lock of the table and the replies leave in one write.
//! A frame that does not parse ends that connection only (logged with the reason); the session
//! behind it keeps its ports until its lease ends, as a dropped connection never shortens a lease.

mod epoch;
mod ports;
mod table;

use crate::auth;
use crate::frame::{self, code, kind, next_frame, FrameError, FrameWriter, Reader};
use crate::group::{Group, GroupSettings};
use crate::session::lock;
use crate::status::ServerStats;
use crate::tls::{ServerTls, Stream};
use crate::types::Mode;
use bytes::{Buf, BytesMut};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use table::{err_frame, PushTx, Table};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Settings of one ownership server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Cluster secret every connection must prove it knows. Empty means any client is let in
    /// (logged as a warning at start).
    pub secret: String,
    /// Where the epoch counter lives; it must survive restarts for tokens to keep growing.
    pub data_dir: PathBuf,
    /// Most ports one node may hold.
    pub max_ports_per_node: usize,
    /// Largest frame accepted from an authenticated peer.
    pub max_frame: usize,
    /// How often expired leases are looked for; a port is freed at most this long after its
    /// lease ends (never before).
    pub reap_interval: Duration,
    /// Time a new connection has to authenticate.
    pub handshake_timeout: Duration,
    /// Leases a client may ask for.
    pub min_lease: Duration,
    /// Longest lease a client may ask for. In a group this is also the re-registration window
    /// a new master gives (no lease of the old master can outlast it): keep it close to the
    /// leases actually used.
    pub max_lease: Duration,
    /// Membership of a server group; `None` for a lone server.
    pub group: Option<GroupSettings>,
    /// TLS for every connection (clients and group peers); `None` for plain TCP.
    pub tls: Option<ServerTls>,
}

impl ServerConfig {
    pub fn new(listen: impl Into<String>, secret: impl Into<String>, data_dir: PathBuf) -> Self {
        ServerConfig {
            listen: listen.into(),
            secret: secret.into(),
            data_dir,
            max_ports_per_node: 10_000_000,
            max_frame: frame::DEFAULT_MAX_FRAME,
            reap_interval: Duration::from_millis(5),
            handshake_timeout: Duration::from_secs(5),
            min_lease: Duration::from_millis(20),
            max_lease: Duration::from_secs(3600),
            group: None,
            tls: None,
        }
    }
}

/// Why a server could not start or stopped.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("epoch file {path}: {reason}")]
    Epoch { path: PathBuf, reason: String },
    #[error("server group: {0}")]
    Group(String),
    #[error("{0}")]
    Tls(crate::error::OwnershipError),
}

struct Shared {
    table: Mutex<Table>,
    group: Option<Arc<Group>>,
    /// Bumped when a member stops serving as master: every connection ends.
    generation: tokio::sync::watch::Sender<u64>,
    secret: Vec<u8>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cfg: ServerConfig,
    next_conn: AtomicU64,
}

/// A bound ownership server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Server {
    /// Binds the listener and bumps the epoch in the data directory.
    pub async fn bind(cfg: ServerConfig) -> Result<Server, ServerError> {
        let tls = match &cfg.tls {
            Some(t) => Some(crate::tls::acceptor(t).map_err(ServerError::Tls)?),
            None => None,
        };
        // In a group the epoch is the election term; the lone server keeps its own counter.
        let (epoch, previous_lease) = match cfg.group {
            None => (
                epoch::bump(&cfg.data_dir)?,
                epoch::max_lease_ms(&cfg.data_dir)?,
            ),
            Some(_) => (0, 0),
        };
        let listener =
            TcpListener::bind(&cfg.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: cfg.listen.clone(),
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: cfg.listen.clone(),
            source,
        })?;
        if cfg.secret.is_empty() {
            tracing::warn!(%addr, "ownership server runs without a cluster secret");
        }
        tracing::info!(%addr, epoch, reregistration_ms = previous_lease, "ownership server listening");
        let mut table = Table::new(
            epoch,
            cfg.max_ports_per_node,
            addr.to_string(),
            previous_lease,
            cfg.data_dir.clone(),
            Instant::now(),
        );
        let group = match &cfg.group {
            None => None,
            Some(g) => {
                table.standby(g.members.clone());
                let options = crate::client::ClientOptions {
                    secret: cfg.secret.clone(),
                    connect_timeout: g.heartbeat * 4,
                    tls: cfg.tls.as_ref().map(ServerTls::peer_client),
                    ..Default::default()
                };
                Some(
                    Group::start(g.clone(), &cfg.data_dir, options)
                        .await
                        .map_err(ServerError::Group)?,
                )
            }
        };
        Ok(Server {
            listener,
            addr,
            shared: Arc::new(Shared {
                group,
                generation: tokio::sync::watch::channel(0).0,
                table: Mutex::new(table),
                secret: cfg.secret.as_bytes().to_vec(),
                tls,
                cfg,
                next_conn: AtomicU64::new(1),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This life's epoch (the high bits of its tokens).
    pub fn epoch(&self) -> u64 {
        lock(&self.shared.table).epoch()
    }

    /// A snapshot of the sessions and ports.
    pub fn stats(&self) -> ServerStats {
        lock(&self.shared.table).stats()
    }

    /// Serves until `shutdown` resolves; then every connection is dropped and the port table
    /// with it.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let mut tasks = JoinSet::new();
        tasks.spawn(reaper(Arc::downgrade(&self.shared)));
        if self.shared.group.is_some() {
            tasks.spawn(master_loop(Arc::downgrade(&self.shared)));
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = self.shared.clone();
                        tasks.spawn(async move { connection(shared, stream, peer).await });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                // Reap finished connection tasks so the set does not grow without bound.
                Some(_) = tasks.join_next(), if tasks.len() > 1 => {}
            }
        }
        tracing::info!(addr = %self.addr, "ownership server stopping");
        tasks.shutdown().await;
        if let Some(g) = &self.shared.group {
            g.shutdown().await;
        }
        Ok(())
    }
}

/// Follows the election: serves as master once this member has led long enough for any
/// previous master to have stopped, and stops as soon as its quorum acknowledgement is stale.
async fn master_loop(shared: std::sync::Weak<Shared>) {
    let Some(s) = shared.upgrade() else { return };
    let Some(group) = s.group.clone() else { return };
    let settings = group.settings().clone();
    let max_lease = s.cfg.max_lease;
    drop(s);
    let check = (settings.heartbeat / 5).max(Duration::from_millis(2));
    // Old master stops at most `master_lease + check` after its last quorum acknowledgement,
    // which came before any vote for this leader.
    let handover = settings.master_lease + check * 2 + Duration::from_millis(20);
    let mut interval = tokio::time::interval(check);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading_since: Option<(u64, Instant)> = None;
    let mut serving: Option<u64> = None;
    loop {
        interval.tick().await;
        let Some(s) = shared.upgrade() else { return };
        let view = group.view();
        let now = Instant::now();
        match view.leading {
            Some(term) => {
                let since = match leading_since {
                    Some((t, since)) if t == term => since,
                    _ => {
                        leading_since = Some((term, now));
                        now
                    }
                };
                if serving != Some(term) && now.duration_since(since) >= handover {
                    if term > epoch::MAX_EPOCH {
                        tracing::error!(term, "election term too large for tokens");
                        continue;
                    }
                    drop(s);
                    if !group.claim_term(term).await {
                        leading_since = None;
                        continue;
                    }
                    let Some(s) = shared.upgrade() else { return };
                    tracing::info!(term, window = ?max_lease, "serving as master");
                    lock(&s.table).become_master(term, max_lease, Instant::now());
                    serving = Some(term);
                }
            }
            None => {
                leading_since = None;
                if serving.take().is_some() {
                    tracing::warn!("lost the quorum's acknowledgement; no longer master");
                    lock(&s.table).step_down(view.leader_addr.clone());
                    s.generation.send_modify(|g| *g += 1);
                } else {
                    lock(&s.table).set_hint(view.leader_addr.clone());
                }
            }
        }
    }
}

async fn reaper(shared: std::sync::Weak<Shared>) {
    let tick = match shared.upgrade() {
        Some(s) => s.cfg.reap_interval,
        None => return,
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(s) = shared.upgrade() else { return };
        lock(&s.table).reap(Instant::now());
    }
}

/// Why a connection ended early.
#[derive(Debug, Error)]
enum ConnEnd {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("authentication failed")]
    Auth,
    #[error("no authentication within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("bad raft message: {0}")]
    Raft(String),
}

/// Where handling the buffered frames stopped.
enum Step {
    /// Everything complete was handled; read more.
    More,
    /// The peer closed its session.
    Close,
    /// A raft message is next; it needs the election, outside the table lock.
    Raft,
}

async fn connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let stream = match &shared.tls {
        None => Stream::Plain(stream),
        Some(acceptor) => {
            let limit = shared.cfg.handshake_timeout;
            match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(Ok(s)) => Stream::Server(Box::new(s)),
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let mut c = Conn {
        shared,
        stream,
        conn,
        sid: None,
        inbuf: BytesMut::with_capacity(16 * 1024),
        out: BytesMut::with_capacity(16 * 1024),
    };
    let result = c.serve().await;
    if let Some(sid) = c.sid {
        lock(&c.shared.table).detach(sid, conn);
    }
    match result {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(ConnEnd::Io(e)) => tracing::debug!(%peer, error = %e, "connection dropped"),
        Err(e) => tracing::warn!(%peer, reason = %e, "ending connection"),
    }
}

struct Conn {
    shared: Arc<Shared>,
    stream: Stream,
    conn: u64,
    sid: Option<u64>,
    inbuf: BytesMut,
    out: BytesMut,
}

impl Conn {
    async fn serve(&mut self) -> Result<(), ConnEnd> {
        let limit = self.shared.cfg.handshake_timeout;
        match tokio::time::timeout(limit, self.handshake()).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnEnd::HandshakeTimeout(limit)),
        }
        let (push_tx, mut push_rx) = mpsc::unbounded_channel();
        let mut generation = self.shared.generation.subscribe();
        generation.mark_unchanged();
        loop {
            // Everything buffered first: frames pipelined behind authentication, or read below.
            loop {
                let step = self.handle_frames(&push_tx);
                // Replies to the frames before a bad one still go out.
                if !self.out.is_empty() {
                    self.stream.write_all(&self.out).await?;
                    self.out.clear();
                }
                match step? {
                    Step::More => break,
                    Step::Close => return Ok(()),
                    Step::Raft => self.raft_frame().await?,
                }
            }
            if self.inbuf.capacity() - self.inbuf.len() < 4096 {
                self.inbuf.reserve(64 * 1024);
            }
            tokio::select! {
                n = self.stream.read_buf(&mut self.inbuf) => {
                    if n? == 0 {
                        return Ok(());
                    }
                }
                Some(push) = push_rx.recv() => {
                    self.out.extend_from_slice(&push);
                    while let Ok(more) = push_rx.try_recv() {
                        self.out.extend_from_slice(&more);
                        if self.out.len() > 1 << 20 {
                            break;
                        }
                    }
                    self.stream.write_all(&self.out).await?;
                    self.out.clear();
                }
                _ = generation.changed() => {
                    // This member stopped serving as master: clients go find the new one.
                    return Ok(());
                }
            }
        }
    }

    /// Answers the raft message at the front of the read buffer.
    async fn raft_frame(&mut self) -> Result<(), ConnEnd> {
        let Some(group) = self.shared.group.clone() else {
            return Err(FrameError::Unexpected(kind::RAFT_VOTE).into());
        };
        let Some(f) = next_frame(&self.inbuf, 0, self.shared.cfg.max_frame)? else {
            return Ok(());
        };
        let mut whole = self.inbuf.split_to(f.end);
        whole.advance(frame::HEADER);
        let mut r = Reader::new(&whole);
        let body = r.blob("raft message")?;
        r.end()?;
        let reply = group
            .handle_rpc(f.kind, body)
            .await
            .map_err(ConnEnd::Raft)?;
        let mut w = FrameWriter::begin(&mut self.out, kind::RAFT_REPLY, f.id);
        w.blob(&reply);
        w.finish();
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    async fn read_frame(&mut self, max: usize) -> Result<(u8, u32, BytesMut), ConnEnd> {
        loop {
            if let Some(f) = next_frame(&self.inbuf, 0, max)? {
                let mut whole = self.inbuf.split_to(f.end);
                whole.advance(frame::HEADER);
                return Ok((f.kind, f.id, whole));
            }
            if self.stream.read_buf(&mut self.inbuf).await? == 0 {
                return Err(ConnEnd::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    async fn handshake(&mut self) -> Result<(), ConnEnd> {
        let server_nonce = auth::nonce();
        let epoch = lock(&self.shared.table).epoch();
        let mut w = FrameWriter::begin(&mut self.out, kind::CHALLENGE, 0);
        w.raw(&server_nonce).u64(epoch);
        w.finish();
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        let (k, id, payload) = self.read_frame(frame::MAX_HANDSHAKE_FRAME).await?;
        if k != kind::AUTH {
            return Err(FrameError::Unexpected(k).into());
        }
        let mut r = Reader::new(&payload);
        let client_nonce = r.raw(auth::NONCE, "client nonce")?;
        let tag = r.raw(auth::TAG, "auth tag")?;
        r.end()?;
        if !auth::verify(&self.shared.secret, true, &server_nonce, client_nonce, tag) {
            err_frame(&mut self.out, id, code::AUTH, 0, 0, "wrong cluster secret");
            self.stream.write_all(&self.out).await?;
            self.out.clear();
            return Err(ConnEnd::Auth);
        }
        let proof = auth::server_tag(&self.shared.secret, &server_nonce, client_nonce);
        let mut w = FrameWriter::begin(&mut self.out, kind::AUTH_OK, id);
        w.raw(&proof);
        w.finish();
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Handles every complete frame in the read buffer under one lock, up to a raft message.
    fn handle_frames(&mut self, push_tx: &PushTx) -> Result<Step, ConnEnd> {
        let max = self.shared.cfg.max_frame;
        let mut at = 0;
        let mut step = Step::More;
        let result = {
            let mut table = lock(&self.shared.table);
            let now = Instant::now();
            loop {
                let f = match next_frame(&self.inbuf, at, max) {
                    Ok(Some(f)) => f,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                };
                if matches!(
                    f.kind,
                    kind::RAFT_VOTE | kind::RAFT_APPEND | kind::RAFT_SNAPSHOT
                ) {
                    step = Step::Raft;
                    break Ok(());
                }
                at = f.end;
                let payload = &self.inbuf[f.start..f.end];
                match handle(
                    &mut table,
                    &mut self.sid,
                    self.conn,
                    push_tx,
                    f.kind,
                    f.id,
                    payload,
                    &mut self.out,
                    now,
                    &self.shared.cfg,
                ) {
                    Ok(true) => {}
                    Ok(false) => {
                        step = Step::Close;
                        break Ok(());
                    }
                    Err(e) => break Err(e),
                }
            }
        };
        self.inbuf.advance(at);
        result?;
        Ok(step)
    }
}

/// One request. Returns `Ok(false)` after CLOSE.
#[allow(clippy::too_many_arguments)]
fn handle(
    table: &mut Table,
    sid: &mut Option<u64>,
    conn: u64,
    push_tx: &PushTx,
    k: u8,
    id: u32,
    payload: &[u8],
    out: &mut BytesMut,
    now: Instant,
    cfg: &ServerConfig,
) -> Result<bool, FrameError> {
    let mut r = Reader::new(payload);
    let no_session = |out: &mut BytesMut| {
        err_frame(out, id, code::NO_SESSION, 0, 0, "no live session");
    };
    if !table.is_master() && k != kind::STATS {
        // A member that is not the master serves nothing; the client goes to the master.
        let hint = table.hint().to_owned();
        err_frame(out, id, code::NOT_MASTER, 0, 0, &hint);
        *sid = None;
        return Ok(true);
    }
    // The session this connection speaks for, if it is still alive.
    let live = sid.filter(|s| table.has_session(*s));
    match k {
        kind::HELLO => {
            let node = r.str("node id")?;
            let client_session = r.u64("session id")?;
            let mode = match r.u8("mode")? {
                0 => Mode::Persistent,
                1 => Mode::Lease,
                _ => return Err(FrameError::Invalid("mode")),
            };
            let lease = Duration::from_millis(r.u32("lease")? as u64);
            let endpoints = r.endpoints()?;
            r.end()?;
            if node.is_empty() {
                err_frame(out, id, code::INVALID, 0, 0, "empty node id");
            } else if lease < cfg.min_lease || lease > cfg.max_lease {
                // Never shorten a lease the client counts on: refuse instead.
                let msg = format!(
                    "lease {lease:?} outside the server's range {:?}..={:?}",
                    cfg.min_lease, cfg.max_lease
                );
                err_frame(out, id, code::INVALID, 0, 0, &msg);
            } else if !table.record_lease(lease) {
                err_frame(
                    out,
                    id,
                    code::UNAVAILABLE,
                    0,
                    0,
                    "cannot record lease on disk",
                );
            } else {
                if let Some(old) = *sid {
                    table.detach(old, conn);
                }
                let h = table.hello(node, client_session, mode, lease, endpoints, now);
                *sid = Some(h.sid);
                let mut w = FrameWriter::begin(out, kind::WELCOME, id);
                w.u8(h.resumed as u8).u64(table.epoch());
                w.finish();
            }
        }
        kind::REG_PORT => match live {
            Some(s) => table.reg_port(s, &mut r, out, id, now)?,
            None => no_session(out),
        },
        kind::UNREG_PORT => match live {
            Some(s) => table.unreg_port(s, &mut r, out, id)?,
            None => no_session(out),
        },
        kind::QUERY_PORT => table.query_port(&mut r, out, id)?,
        kind::QUERY_NODE => {
            let node = r.str("node id")?;
            table.query_node(node, out, id);
        }
        kind::SEND_MSG => {
            let key = r.str("key")?;
            let payload = r.blob("payload")?;
            match live {
                Some(s) => table.send_msg(s, key, payload, out, id),
                None => no_session(out),
            }
        }
        kind::WAIT_MSG => match live {
            Some(s) if table.wait_msg(s, conn, push_tx) => {
                FrameWriter::begin(out, kind::OK, id).finish();
            }
            _ => no_session(out),
        },
        kind::RELET => match live {
            Some(s) if table.relet(s, now) => FrameWriter::begin(out, kind::OK, id).finish(),
            _ => no_session(out),
        },
        kind::CLOSE => {
            if let Some(s) = live {
                table.end_session(s);
            }
            *sid = None;
            FrameWriter::begin(out, kind::OK, id).finish();
            r.end()?;
            return Ok(false);
        }
        kind::STATS => {
            let stats = table.stats();
            let json = serde_json::to_vec(&stats).unwrap_or_default();
            let mut w = FrameWriter::begin(out, kind::STATS_REPLY, id);
            w.blob(&json);
            w.finish();
        }
        other => return Err(FrameError::Unexpected(other)),
    }
    r.end()?;
    Ok(true)
}
