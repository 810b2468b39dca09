//! The network client: a [`Backend`] that talks to an ownership server.
//!
//! One task per session writes requests (many per write, each with an id) and one reader task
//! per connection matches replies to them in order, routes pushes to the [`SessionLink`] and
//! acknowledges heartbeats. Persistent mode keeps one connection, with a heartbeat every third of
//! the lease and a WaitMsg channel, and reconnects (resuming the session) when it breaks; lease
//! mode opens a short connection when there is something to send and closes it when every
//! reply is in. Both keep every call of the session in one queue, so a background release always
//! reaches the server before the calls made after it.

use crate::auth;
use crate::coordinator::{Backend, ClaimReply, Coordinator, PipeReply, PipeRequest};
use crate::error::{OwnershipError, Result};
use crate::frame::{self, code, kind, next_frame, FrameError, FrameWriter, Reader};
use crate::session::{lock, SessionLink};
use crate::status::ServerStats;
use crate::tls::{self, ClientTls, ReadHalf, Stream};
use crate::types::{Endpoints, Event, Mode, NodeId, NodeInfo, Owner, SessionConfig};
use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

/// How a client reaches and authenticates to the servers.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The cluster secret (must match the servers').
    pub secret: String,
    /// Per address, for TCP connect plus authentication.
    pub connect_timeout: Duration,
    /// How long a call waits for its reply (including while reconnecting).
    pub request_timeout: Duration,
    /// Largest frame accepted from the server.
    pub max_frame: usize,
    /// TLS to the servers; `None` for plain TCP.
    pub tls: Option<ClientTls>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            secret: String::new(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_frame: frame::DEFAULT_MAX_FRAME,
            tls: None,
        }
    }
}

impl ClientOptions {
    pub fn with_secret(secret: impl Into<String>) -> Self {
        ClientOptions {
            secret: secret.into(),
            ..Default::default()
        }
    }
}

/// Opens a session with the ownership service at one of `addrs` (tried in order).
pub async fn connect(
    addrs: &[String],
    config: SessionConfig,
    options: ClientOptions,
) -> Result<Coordinator> {
    if addrs.is_empty() {
        return Err(OwnershipError::Unavailable(
            "no server addresses given".into(),
        ));
    }
    let lease_ms = u32::try_from(config.lease.as_millis())
        .map_err(|_| OwnershipError::Unsupported("lease longer than 49 days"))?;
    let node = config.node_id.clone().unwrap_or_else(NodeId::random);
    let link = SessionLink::new(node.clone(), &config);
    let shared = Arc::new(Shared {
        addrs: addrs.to_vec(),
        opts: options,
        node,
        session_id: rand::random(),
        mode: config.mode,
        lease_ms,
        heartbeat: config.heartbeat_interval(),
        endpoints: config.endpoints.clone(),
        link: link.clone(),
        closing: AtomicBool::new(false),
        epoch: AtomicU64::new(0),
        unsent: Mutex::new(Vec::new()),
    });
    // While a group elects its master, no member accepts sessions: wait for one a while.
    let deadline = Instant::now() + shared.opts.request_timeout;
    let wire = loop {
        match shared.establish().await {
            Ok((wire, _)) => break wire,
            Err(OwnershipError::Unavailable(m))
                if m.ends_with(NOT_MASTER) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    match config.mode {
        Mode::Persistent => {
            tokio::spawn(run_persistent(shared.clone(), wire, rx));
        }
        Mode::Lease => {
            drop(wire);
            tokio::spawn(run_lease(shared.clone(), rx));
        }
    }
    let backend = Arc::new(NetBackend { shared, tx });
    Ok(Coordinator::from_parts(config, link, backend))
}

/// Asks the first reachable server for its view of the group (`keyward status`).
pub async fn server_stats(addrs: &[String], options: &ClientOptions) -> Result<ServerStats> {
    let mut wire = dial_any(addrs, options).await?;
    let mut out = BytesMut::new();
    FrameWriter::begin(&mut out, kind::STATS, 1).finish();
    wire.write(&out).await?;
    let (k, _, payload) = wire.read_frame(options.max_frame).await?;
    let reply = Reply { kind: k, payload };
    let mut r = reply.expect(kind::STATS_REPLY, "")?;
    let json = r.blob("stats").map_err(proto)?;
    serde_json::from_slice(json).map_err(|e| OwnershipError::Protocol(format!("stats reply: {e}")))
}

fn proto(e: FrameError) -> OwnershipError {
    OwnershipError::Protocol(e.to_string())
}

/// A reply frame handed to the caller that asked.
struct Reply {
    kind: u8,
    payload: Bytes,
}

impl Reply {
    /// For an `ERR` of code NOT_MASTER: the master's address if the member knows it.
    fn not_master(&self) -> Option<Option<String>> {
        if self.kind != kind::ERR {
            return None;
        }
        let mut r = Reader::new(&self.payload);
        if r.u16("code").ok()? != code::NOT_MASTER {
            return None;
        }
        r.u64("a").ok()?;
        r.u64("b").ok()?;
        Some(r.str("master").ok().map(str::to_owned))
    }

    /// For an `ERR` of code RETRY: how long to wait before asking again.
    fn retry_after(&self) -> Option<Duration> {
        if self.kind != kind::ERR {
            return None;
        }
        let mut r = Reader::new(&self.payload);
        if r.u16("code").ok()? != code::RETRY {
            return None;
        }
        let ms = r.u64("retry after").ok()?;
        Some(Duration::from_millis(ms.clamp(1, 60_000)))
    }

    /// A reader over the payload if the reply is of kind `want`; an `ERR` becomes its error.
    fn expect(&self, want: u8, node: &str) -> Result<Reader<'_>> {
        let mut r = Reader::new(&self.payload);
        if self.kind == want {
            return Ok(r);
        }
        if self.kind != kind::ERR {
            return Err(OwnershipError::Protocol(format!(
                "expected reply kind {want:#04x}, got {:#04x}",
                self.kind
            )));
        }
        let c = r.u16("error code").map_err(proto)?;
        let a = r.u64("error a").map_err(proto)?;
        let b = r.u64("error b").map_err(proto)?;
        let msg = r.str("error message").map_err(proto)?.to_owned();
        Err(match c {
            code::NO_SESSION => OwnershipError::SessionClosed {
                node: node.to_owned(),
            },
            code::PORT_LIMIT => OwnershipError::PortLimit {
                held: a as usize,
                limit: b as usize,
            },
            code::NO_OWNER => OwnershipError::NoOwner { key: msg },
            code::AUTH => OwnershipError::AuthRefused(msg),
            code::UNAVAILABLE => OwnershipError::Unavailable(msg),
            _ => OwnershipError::Protocol(msg),
        })
    }
}

/// One authenticated TCP connection before it is split into reader and writer.
pub(crate) struct Wire {
    stream: Stream,
    inbuf: BytesMut,
    addr: String,
    epoch: u64,
}

impl Wire {
    pub(crate) async fn write(&mut self, b: &[u8]) -> Result<()> {
        self.stream
            .write_all(b)
            .await
            .map_err(|e| OwnershipError::Unavailable(format!("{}: {e}", self.addr)))
    }

    pub(crate) async fn read_frame(&mut self, max: usize) -> Result<(u8, u32, Bytes)> {
        loop {
            if let Some(f) = next_frame(&self.inbuf, 0, max).map_err(proto)? {
                let mut whole = self.inbuf.split_to(f.end);
                whole.advance(frame::HEADER);
                return Ok((f.kind, f.id, whole.freeze()));
            }
            let n = self
                .stream
                .read_buf(&mut self.inbuf)
                .await
                .map_err(|e| OwnershipError::Unavailable(format!("{}: {e}", self.addr)))?;
            if n == 0 {
                return Err(OwnershipError::Unavailable(format!(
                    "{}: connection closed by server",
                    self.addr
                )));
            }
        }
    }
}

/// Connects and authenticates to one address.
pub(crate) async fn dial(addr: &str, opts: &ClientOptions) -> Result<Wire> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| OwnershipError::Unavailable(format!("{addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let stream = match &opts.tls {
        Some(t) => tls::connect(t, addr, stream).await?,
        None => Stream::Plain(stream),
    };
    let mut wire = Wire {
        stream,
        inbuf: BytesMut::with_capacity(16 * 1024),
        addr: addr.to_owned(),
        epoch: 0,
    };
    let (k, _, payload) = wire.read_frame(frame::MAX_HANDSHAKE_FRAME).await?;
    if k != kind::CHALLENGE {
        return Err(OwnershipError::Protocol(format!(
            "{addr}: expected a challenge, got kind {k:#04x}"
        )));
    }
    let mut r = Reader::new(&payload);
    let server_nonce = r.raw(auth::NONCE, "server nonce").map_err(proto)?.to_vec();
    wire.epoch = r.u64("epoch").map_err(proto)?;
    let client_nonce = auth::nonce();
    let secret = opts.secret.as_bytes();
    let mut out = BytesMut::new();
    let mut w = FrameWriter::begin(&mut out, kind::AUTH, 0);
    w.raw(&client_nonce)
        .raw(&auth::client_tag(secret, &server_nonce, &client_nonce));
    w.finish();
    wire.write(&out).await?;
    let (k, _, payload) = match wire.read_frame(frame::MAX_HANDSHAKE_FRAME).await {
        Ok(f) => f,
        // A server that refuses us closes the connection after saying why; if the reason is
        // lost, a closed connection right after AUTH still means refusal.
        Err(OwnershipError::Unavailable(_)) => {
            return Err(OwnershipError::AuthRefused(addr.to_owned()))
        }
        Err(e) => return Err(e),
    };
    let reply = Reply { kind: k, payload };
    let mut r = reply.expect(kind::AUTH_OK, "").map_err(|e| match e {
        OwnershipError::AuthRefused(_) => OwnershipError::AuthRefused(addr.to_owned()),
        e => e,
    })?;
    let tag = r.raw(auth::TAG, "server proof").map_err(proto)?;
    if !auth::verify(secret, false, &server_nonce, &client_nonce, tag) {
        return Err(OwnershipError::AuthRefused(format!(
            "{addr}: the server does not know the cluster secret"
        )));
    }
    Ok(wire)
}

/// An authenticated connection to one server, for tools and protocol tests that speak the
/// frame protocol themselves (see [`frame`]): the stream, after the handshake, and any bytes
/// the server already sent beyond it. The caller says HELLO next.
pub async fn dial_raw(addr: &str, options: &ClientOptions) -> Result<(Stream, BytesMut)> {
    let wire = tokio::time::timeout(options.connect_timeout, dial(addr, options))
        .await
        .map_err(|_| OwnershipError::Unavailable(format!("{addr}: connect timed out")))??;
    Ok((wire.stream, wire.inbuf))
}

/// The first address that connects and authenticates. A refused secret is reported as such.
async fn dial_any(addrs: &[String], opts: &ClientOptions) -> Result<Wire> {
    let mut last = OwnershipError::Unavailable("no server addresses given".into());
    for addr in addrs {
        match tokio::time::timeout(opts.connect_timeout, dial(addr, opts)).await {
            Ok(Ok(w)) => return Ok(w),
            Ok(Err(e)) => {
                tracing::debug!(addr, error = %e, "ownership server not usable");
                if !matches!(last, OwnershipError::AuthRefused(_)) {
                    last = e;
                }
            }
            Err(_) => {
                if !matches!(last, OwnershipError::AuthRefused(_)) {
                    last = OwnershipError::Unavailable(format!("{addr}: connect timed out"));
                }
            }
        }
    }
    Err(last)
}

/// What a session's tasks share.
struct Shared {
    addrs: Vec<String>,
    opts: ClientOptions,
    node: NodeId,
    session_id: u64,
    mode: Mode,
    lease_ms: u32,
    heartbeat: Duration,
    endpoints: Endpoints,
    link: Arc<SessionLink>,
    closing: AtomicBool,
    /// Epoch of the server life that holds this session (0 before the first hello).
    epoch: AtomicU64,
    /// Background releases not yet written: dropped guards add their keys here (cheaper than
    /// a queued command each), and the writer takes them before the next command it writes,
    /// so a release still reaches the server before any later call. Releases whose connection
    /// broke before they were answered come back here and go first on the next connection.
    unsent: Mutex<Vec<Arc<str>>>,
}

impl Shared {
    /// Dials, authenticates and says hello: the session is opened, or resumed if the server
    /// still has it. When the server restarted (a new epoch), the ports this node still believes
    /// in are re-registered first (the returned command); when the same server no longer knows
    /// the session, its lease ran out there and every port is lost.
    async fn establish(self: &Arc<Self>) -> Result<(Wire, Vec<Cmd>)> {
        // Any member can be asked; one that is not the master names it, and is tried first.
        let mut order: Vec<String> = self.addrs.clone();
        let mut last = OwnershipError::Unavailable("no server addresses given".into());
        let mut i = 0;
        while i < order.len() && i < 2 * self.addrs.len() + 1 {
            let addr = order[i].clone();
            i += 1;
            let hello = tokio::time::timeout(self.opts.request_timeout, self.hello(&addr));
            let hello = hello.await.unwrap_or_else(|_| {
                Err(Hello::Failed(OwnershipError::Unavailable(format!(
                    "{addr}: no answer to hello"
                ))))
            });
            match hello {
                Ok(done) => return Ok(done),
                Err(Hello::NotMaster(hint)) => {
                    last = OwnershipError::Unavailable(format!("{addr}{NOT_MASTER}"));
                    if let Some(h) = hint.filter(|h| !h.is_empty() && *h != addr) {
                        order.insert(i, h);
                    }
                }
                Err(Hello::Failed(e)) => {
                    tracing::debug!(addr, error = %e, "ownership server not usable");
                    if !matches!(last, OwnershipError::AuthRefused(_)) {
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }

    async fn hello(self: &Arc<Self>, addr: &str) -> Result<(Wire, Vec<Cmd>), Hello> {
        let mut wire = tokio::time::timeout(self.opts.connect_timeout, dial(addr, &self.opts))
            .await
            .map_err(|_| {
                Hello::Failed(OwnershipError::Unavailable(format!(
                    "{addr}: connect timed out"
                )))
            })?
            .map_err(Hello::Failed)?;
        let mut out = BytesMut::new();
        let mut w = FrameWriter::begin(&mut out, kind::HELLO, 1);
        w.str(self.node.as_str())
            .u64(self.session_id)
            .u8(match self.mode {
                Mode::Persistent => 0,
                Mode::Lease => 1,
            })
            .u32(self.lease_ms)
            .endpoints(&self.endpoints);
        w.finish();
        let sent = Instant::now();
        wire.write(&out).await.map_err(Hello::Failed)?;
        let (k, _, payload) = wire
            .read_frame(self.opts.max_frame)
            .await
            .map_err(Hello::Failed)?;
        let reply = Reply { kind: k, payload };
        if let Some(hint) = reply.not_master() {
            return Err(Hello::NotMaster(hint));
        }
        let mut r = reply
            .expect(kind::WELCOME, self.node.as_str())
            .map_err(Hello::Failed)?;
        let resumed = r.u8("resumed").map_err(|e| Hello::Failed(proto(e)))? != 0;
        wire.epoch = r.u64("epoch").map_err(|e| Hello::Failed(proto(e)))?;
        let before = self.epoch.swap(wire.epoch, Ordering::AcqRel);
        let unsent = std::mem::take(&mut *lock(&self.unsent));
        if resumed {
            let mut first = Vec::new();
            if !unsent.is_empty() {
                first.push(Cmd {
                    frame: Bytes::new(),
                    done: Done::Release(unsent, self.clone()),
                });
            }
            return Ok((wire, first));
        }
        // A new session holds nothing, so releases still pending have nothing left to free.
        let held: Vec<String> = self.link.held().into_iter().map(|(k, _)| k).collect();
        if held.is_empty() {
            self.link.renewed(sent);
            return Ok((wire, Vec::new()));
        }
        if before != 0 && wire.epoch != before {
            tracing::info!(node = %self.node, ports = held.len(), epoch = wire.epoch, "server restarted; re-registering ports");
            // The new lease starts only once the ports are back: until then the old belief
            // (from the previous life's last renewal) is all this node has.
            let frame = NetBackend::keys_frame(kind::REG_PORT, Some(2), &held);
            return Ok((
                wire,
                vec![Cmd {
                    frame,
                    done: Done::Reclaim(held, sent),
                }],
            ));
        }
        tracing::warn!(node = %self.node, ports = held.len(), "session was gone at the server; ports lost");
        self.link.lost(&held);
        self.link.renewed(sent);
        Ok((wire, Vec::new()))
    }

    /// The reply to a re-registration: new tokens for the ports kept, loss for the others.
    fn reclaimed(&self, keys: &[String], sent: Instant, reply: &Reply) {
        let result = reply
            .expect(kind::CLAIMS, self.node.as_str())
            .and_then(|mut r| {
                let n = r.count(1, "claims").map_err(proto)?;
                if n != keys.len() {
                    return Err(OwnershipError::Protocol(
                        "re-registration reply size".into(),
                    ));
                }
                let mut lost = Vec::new();
                for key in keys {
                    match r.u8("claim tag").map_err(proto)? {
                        0 => self.link.retoken(key, r.i64("token").map_err(proto)?),
                        1 => {
                            r.owner().map_err(proto)?;
                            lost.push(key.clone());
                        }
                        _ => lost.push(key.clone()),
                    }
                }
                Ok(lost)
            });
        match result {
            Ok(lost) => {
                if !lost.is_empty() {
                    tracing::warn!(node = %self.node, ports = lost.len(), "ports taken during the restart");
                    self.link.lost(&lost);
                }
            }
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, "re-registration failed; ports lost");
                self.link.lost(keys);
            }
        }
        self.link.renewed(sent);
    }
}

const NOT_MASTER: &str = " is not the master";

/// Why a hello did not open a session on one address.
enum Hello {
    NotMaster(Option<String>),
    Failed(OwnershipError),
}

/// What to do with the reply to a request in flight.
enum Done {
    Caller(oneshot::Sender<Result<Reply>>),
    /// A pipeline: its requests went out back to back, so their replies come so too.
    Batch(Box<Batch>),
    /// A heartbeat sent at that instant: its OK renews the client-side lease.
    Heartbeat(Instant),
    /// A request nobody waits for (background release, WaitMsg).
    Fire,
    /// Re-registration of these ports after a server restart, with the hello's send time.
    Reclaim(Vec<String>, Instant),
    /// A background release; resent on the next connection if this one breaks first.
    Release(Vec<Arc<str>>, Arc<Shared>),
}

struct Batch {
    want: usize,
    /// The id the next reply of the pipeline must carry.
    next: u32,
    got: Vec<Reply>,
    tx: oneshot::Sender<Result<Vec<Reply>>>,
}

/// The id after `id` (0 is never used: pushes carry it).
fn next_id_after(id: u32) -> u32 {
    id.wrapping_add(1).max(1)
}

/// The id of the reply the front entry of the in-flight queue waits for.
fn expected(entry: &(u32, Done)) -> u32 {
    match &entry.1 {
        Done::Batch(b) => b.next,
        _ => entry.0,
    }
}

struct Cmd {
    /// A complete frame; its id is set when it is written. Empty for a release, whose frame
    /// is built when it is written, merged with the releases queued next to it.
    frame: Bytes,
    done: Done,
}

#[derive(Default)]
struct Inflight {
    dead: bool,
    q: VecDeque<(u32, Done)>,
    /// The request at the front at the last check, and since when: a front that does not move
    /// for the request timeout means the server stopped answering. One check per connection
    /// replaces a timer per call, which cost more than the rest of a pipelined call.
    front: Option<(u32, Instant)>,
}

impl Inflight {
    /// Whether the oldest request in flight has waited longer than `limit`.
    fn stuck(&mut self, now: Instant, limit: Duration) -> bool {
        let Some(id) = self.q.front().map(expected) else {
            self.front = None;
            return false;
        };
        match self.front {
            Some((seen, since)) if seen == id => now.duration_since(since) >= limit,
            _ => {
                self.front = Some((id, now));
                false
            }
        }
    }

    fn fail_all(&mut self, e: &OwnershipError) {
        self.dead = true;
        for (_, d) in self.q.drain(..) {
            fail_done(d, e);
        }
    }
}

/// Why a connection's reader stopped.
enum ReaderEnd {
    Broken(OwnershipError),
    SessionGone,
}

/// Reads replies and pushes until the connection ends.
async fn reader(
    mut rd: ReadHalf,
    mut inbuf: BytesMut,
    inflight: Arc<Mutex<Inflight>>,
    idle: Arc<Notify>,
    shared: Arc<Shared>,
) -> ReaderEnd {
    let max = shared.opts.max_frame;
    let end = loop {
        match read_available(&mut rd, &mut inbuf, &inflight, &idle, &shared, max).await {
            Ok(true) => {}
            Ok(false) => break ReaderEnd::SessionGone,
            Err(e) => break ReaderEnd::Broken(e),
        }
    };
    let e = match &end {
        ReaderEnd::Broken(e) => e.clone(),
        ReaderEnd::SessionGone => OwnershipError::SessionClosed {
            node: shared.node.to_string(),
        },
    };
    lock(&inflight).fail_all(&e);
    idle.notify_one();
    end
}

/// One read and the frames it completed. `Ok(false)` when the server ended the session.
async fn read_available(
    rd: &mut ReadHalf,
    inbuf: &mut BytesMut,
    inflight: &Mutex<Inflight>,
    idle: &Notify,
    shared: &Shared,
    max: usize,
) -> Result<bool> {
    if inbuf.capacity() - inbuf.len() < 4096 {
        inbuf.reserve(64 * 1024);
    }
    let n = rd
        .read_buf(inbuf)
        .await
        .map_err(|e| OwnershipError::Unavailable(format!("read: {e}")))?;
    if n == 0 {
        return Err(OwnershipError::Unavailable(
            "connection closed by server".into(),
        ));
    }
    let mut alive = true;
    // Kept while a pipeline's replies are filed, one after another: one lock for them all.
    let mut held = None;
    while let Some(f) = next_frame(inbuf, 0, max).map_err(proto)? {
        let mut whole = inbuf.split_to(f.end);
        whole.advance(frame::HEADER);
        let payload = whole.freeze();
        if f.id == 0 && f.kind >= kind::PUSH_MSG {
            held = None;
            alive &= push(shared, f.kind, &payload)?;
            continue;
        }
        let reply = Reply {
            kind: f.kind,
            payload,
        };
        let (done, reply) = {
            let g = held.get_or_insert_with(|| lock(inflight));
            let Some(front) = g.q.front_mut() else {
                return Err(OwnershipError::Protocol(format!(
                    "reply {} to no request",
                    f.id
                )));
            };
            let id = expected(front);
            if id != f.id {
                return Err(OwnershipError::Protocol(format!(
                    "reply to request {} where {id} was next",
                    f.id
                )));
            }
            // A pipeline stays at the front until its last reply is in.
            if let Done::Batch(b) = &mut front.1 {
                if b.got.len() + 1 < b.want {
                    b.got.push(reply);
                    b.next = next_id_after(b.next);
                    continue;
                }
            }
            let Some((_, done)) = g.q.pop_front() else {
                continue;
            };
            if g.q.is_empty() {
                idle.notify_one();
            }
            held = None;
            (done, reply)
        };
        match done {
            Done::Caller(tx) => {
                let _ = tx.send(Ok(reply));
            }
            Done::Batch(mut b) => {
                b.got.push(reply);
                let _ = b.tx.send(Ok(b.got));
            }
            Done::Heartbeat(sent) => match reply.expect(kind::OK, shared.node.as_str()) {
                Ok(_) => shared.link.renewed(sent),
                Err(OwnershipError::SessionClosed { .. }) => alive = false,
                Err(e) => tracing::warn!(error = %e, "heartbeat refused"),
            },
            Done::Reclaim(keys, sent) => shared.reclaimed(&keys, sent, &reply),
            Done::Fire | Done::Release(..) => {
                if let Err(e) = reply.expect(kind::OK, shared.node.as_str()) {
                    if matches!(e, OwnershipError::SessionClosed { .. }) {
                        alive = false;
                    } else {
                        tracing::debug!(error = %e, "background request refused");
                    }
                }
            }
        }
    }
    Ok(alive)
}

/// A pushed frame. `Ok(false)` when it says the session is gone.
fn push(shared: &Shared, k: u8, payload: &Bytes) -> Result<bool> {
    let mut r = Reader::new(payload);
    match k {
        kind::PUSH_MSG => {
            let key = r.str("key").map_err(proto)?.to_owned();
            let from = NodeId(r.str("sender").map_err(proto)?.to_owned());
            let body = Bytes::copy_from_slice(r.blob("payload").map_err(proto)?);
            shared.link.event(Event::Message {
                key,
                from,
                payload: body,
            });
        }
        kind::PUSH_RELEASED => {
            let key = r.str("key").map_err(proto)?.to_owned();
            shared.link.event(Event::Released { key });
        }
        kind::PUSH_LOST => return Ok(false),
        other => return Err(proto(FrameError::Unexpected(other))),
    }
    r.end().map_err(proto)?;
    Ok(true)
}

/// Writes one command, registering it as in flight first so that its reply finds it. Each
/// frame of the command gets the next id: one for a call, one per request of a pipeline.
fn stage(out: &mut BytesMut, next_id: &mut u32, inflight: &Mutex<Inflight>, cmd: Cmd) {
    let first = next_id_after(*next_id);
    let mut done = cmd.done;
    let frames = match &mut done {
        Done::Batch(b) => {
            b.next = first;
            b.want
        }
        _ => 1,
    };
    let mut g = lock(inflight);
    if g.dead {
        fail_done(done, &OwnershipError::Unavailable("connection lost".into()));
        return;
    }
    g.q.push_back((first, done));
    drop(g);
    let mut at = out.len();
    out.extend_from_slice(&cmd.frame);
    *next_id = first;
    for n in 0..frames {
        if n > 0 {
            *next_id = next_id_after(*next_id);
        }
        if out.len() < at + frame::HEADER {
            break;
        }
        out[at + 6..at + 10].copy_from_slice(&next_id.to_le_bytes());
        let len = u32::from_le_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
        at += 4 + len as usize;
    }
}

/// Background releases that follow each other in the queue, merged into one UnRegPort (guards
/// dropped together, e.g. after a batch claim, cost one request rather than one each).
struct Releases {
    keys: Vec<Arc<str>>,
    shared: Arc<Shared>,
    bytes: usize,
}

/// Largest merged release, in key bytes: well under any frame limit.
const MAX_MERGED_RELEASE: usize = 1 << 20;

impl Releases {
    fn new(shared: &Arc<Shared>) -> Releases {
        Releases {
            keys: Vec::new(),
            shared: shared.clone(),
            bytes: 0,
        }
    }

    fn gather(&mut self, keys: impl IntoIterator<Item = Arc<str>>) {
        for k in keys {
            self.bytes += k.len() + 2;
            self.keys.push(k);
        }
    }

    /// Stages `cmd`, or gathers it when it is a release; releases of dropped guards made
    /// before `cmd` was queued go first.
    fn stage(
        &mut self,
        out: &mut BytesMut,
        next_id: &mut u32,
        inflight: &Mutex<Inflight>,
        cmd: Cmd,
    ) {
        let dropped = std::mem::take(&mut *lock(&self.shared.unsent));
        self.gather(dropped);
        match cmd.done {
            Done::Release(keys, _) => {
                self.gather(keys);
                if self.bytes > MAX_MERGED_RELEASE {
                    self.flush(out, next_id, inflight);
                }
            }
            done => {
                self.flush(out, next_id, inflight);
                stage(
                    out,
                    next_id,
                    inflight,
                    Cmd {
                        frame: cmd.frame,
                        done,
                    },
                );
            }
        }
    }

    /// Stages the releases gathered so far, before anything queued after them.
    fn flush(&mut self, out: &mut BytesMut, next_id: &mut u32, inflight: &Mutex<Inflight>) {
        if !self.keys.is_empty() {
            let keys = std::mem::take(&mut self.keys);
            let frame = NetBackend::keys_frame(kind::UNREG_PORT, None, &keys);
            stage(
                out,
                next_id,
                inflight,
                Cmd {
                    frame,
                    done: Done::Release(keys, self.shared.clone()),
                },
            );
        }
        self.bytes = 0;
    }
}

fn simple_frame(k: u8) -> Bytes {
    let mut b = BytesMut::with_capacity(frame::HEADER);
    FrameWriter::begin(&mut b, k, 0).finish();
    b.freeze()
}

/// Most bytes gathered into one write.
const WRITE_BATCH: usize = 256 * 1024;

enum Exit {
    /// Every handle is gone, or the session was closed.
    Stop,
    Broken(OwnershipError),
    SessionGone,
}

/// Serves one connection: writes queued commands (and heartbeats) until it breaks.
async fn serve(
    shared: &Arc<Shared>,
    wire: Wire,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    reclaim: Vec<Cmd>,
    first: Option<Cmd>,
    persistent: bool,
) -> Exit {
    let (rd, mut wr) = wire.stream.into_split();
    let inflight = Arc::new(Mutex::new(Inflight::default()));
    let idle = Arc::new(Notify::new());
    let mut reader_task = tokio::spawn(reader(
        rd,
        wire.inbuf,
        inflight.clone(),
        idle.clone(),
        shared.clone(),
    ));
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut next_id = 0u32;
    let mut heartbeat = tokio::time::interval(shared.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let limit = shared.opts.request_timeout;
    let mut check = tokio::time::interval((limit / 4).max(Duration::from_millis(10)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if persistent {
        stage(
            &mut out,
            &mut next_id,
            &inflight,
            Cmd {
                frame: simple_frame(kind::WAIT_MSG),
                done: Done::Fire,
            },
        );
    }
    let mut releases = Releases::new(shared);
    for cmd in reclaim.into_iter().chain(first) {
        releases.stage(&mut out, &mut next_id, &inflight, cmd);
    }
    releases.flush(&mut out, &mut next_id, &inflight);
    let exit = loop {
        if !out.is_empty() {
            if let Err(e) = wr.write_all(&out).await {
                break Exit::Broken(OwnershipError::Unavailable(format!("write: {e}")));
            }
            out.clear();
        }
        tokio::select! {
            end = &mut reader_task => break match end {
                Ok(ReaderEnd::SessionGone) => Exit::SessionGone,
                Ok(ReaderEnd::Broken(e)) => Exit::Broken(e),
                Err(e) => Exit::Broken(OwnershipError::Unavailable(format!("reader: {e}"))),
            },
            cmd = rx.recv() => match cmd {
                None => break Exit::Stop,
                Some(cmd) => {
                    let mut releases = Releases::new(shared);
                    releases.stage(&mut out, &mut next_id, &inflight, cmd);
                    let mut yielded = false;
                    loop {
                        while out.len() < WRITE_BATCH {
                            match rx.try_recv() {
                                Ok(cmd) => releases.stage(&mut out, &mut next_id, &inflight, cmd),
                                Err(_) => break,
                            }
                        }
                        if yielded || out.len() >= WRITE_BATCH {
                            break;
                        }
                        // Let the tasks that are ready queue their requests too: one write
                        // for many requests costs far less than a system call each.
                        yielded = true;
                        tokio::task::yield_now().await;
                    }
                    releases.flush(&mut out, &mut next_id, &inflight);
                }
            },
            _ = heartbeat.tick(), if persistent => {
                stage(&mut out, &mut next_id, &inflight, Cmd {
                    frame: simple_frame(kind::RELET),
                    done: Done::Heartbeat(Instant::now()),
                });
            }
            now = check.tick() => {
                if lock(&inflight).stuck(now.into_std(), limit) {
                    break Exit::Broken(OwnershipError::Timeout {
                        what: "ownership server reply".into(),
                        millis: limit.as_millis() as u64,
                    });
                }
            }
            _ = idle.notified(), if !persistent => {
                // A short connection ends once every reply is in and nothing waits to be sent.
                if lock(&inflight).q.is_empty() && rx.is_empty() {
                    break Exit::Stop;
                }
            }
        }
    };
    let _ = wr.shutdown().await;
    reader_task.abort();
    let e = match &exit {
        Exit::Broken(e) => e.clone(),
        _ => OwnershipError::Unavailable("connection closed".into()),
    };
    lock(&inflight).fail_all(&e);
    exit
}

async fn run_persistent(shared: Arc<Shared>, first: Wire, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut wire = Some((first, Vec::new()));
    let mut backoff = Duration::from_millis(10);
    let mut down_since: Option<Instant> = None;
    loop {
        let w = match wire.take() {
            Some(w) => w,
            None => {
                if shared.closing.load(Ordering::Acquire) || rx.is_closed() {
                    return;
                }
                let since = *down_since.get_or_insert_with(Instant::now);
                match shared.establish().await {
                    Ok(w) => {
                        tracing::info!(node = %shared.node, addr = %w.0.addr, "reconnected");
                        backoff = Duration::from_millis(10);
                        down_since = None;
                        w
                    }
                    Err(e) => {
                        tracing::debug!(node = %shared.node, error = %e, "reconnect failed");
                        // Calls do not wait longer than the request timeout for a server:
                        // past it, what is queued fails (releases are kept for later).
                        if since.elapsed() >= shared.opts.request_timeout {
                            while let Ok(cmd) = rx.try_recv() {
                                fail(cmd, &e);
                            }
                        }
                        tokio::time::sleep(backoff).await;
                        // Short: a failover must be found well within the lease margin.
                        backoff = (backoff * 2).min(Duration::from_millis(100));
                        continue;
                    }
                }
            }
        };
        let (w, reclaim) = w;
        match serve(&shared, w, &mut rx, reclaim, None, true).await {
            Exit::Stop => return,
            Exit::Broken(e) => {
                if shared.closing.load(Ordering::Acquire) {
                    return;
                }
                tracing::warn!(node = %shared.node, error = %e, "ownership connection lost; reconnecting");
            }
            Exit::SessionGone => {
                if shared.closing.load(Ordering::Acquire) {
                    return;
                }
                tracing::warn!(node = %shared.node, "session ended by the server; its ports are lost");
                shared.link.lose_all();
            }
        }
    }
}

async fn run_lease(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    loop {
        let Some(first) = rx.recv().await else { return };
        match shared.establish().await {
            Ok((w, reclaim)) => match serve(&shared, w, &mut rx, reclaim, Some(first), false).await
            {
                Exit::Stop => {}
                Exit::Broken(e) => tracing::debug!(error = %e, "lease-mode connection broke"),
                Exit::SessionGone => shared.link.lose_all(),
            },
            Err(e) => {
                fail(first, &e);
                while let Ok(cmd) = rx.try_recv() {
                    fail(cmd, &e);
                }
            }
        }
    }
}

fn fail(cmd: Cmd, e: &OwnershipError) {
    fail_done(cmd.done, e);
}

/// A request that will get no reply. An unanswered re-registration is retried on the next
/// connection only if the ports are still believed then (the next hello finds them in `held`).
fn fail_done(d: Done, e: &OwnershipError) {
    match d {
        Done::Caller(tx) => {
            let _ = tx.send(Err(e.clone()));
        }
        Done::Batch(b) => {
            let _ = b.tx.send(Err(e.clone()));
        }
        Done::Release(keys, shared) => lock(&shared.unsent).extend(keys),
        Done::Heartbeat(_) | Done::Fire | Done::Reclaim(..) => {}
    }
}

/// The [`Backend`] of a network session.
struct NetBackend {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Cmd>,
}

impl NetBackend {
    fn unavailable(&self) -> OwnershipError {
        OwnershipError::SessionClosed {
            node: self.shared.node.to_string(),
        }
    }

    async fn call(&self, frame: Bytes) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd {
                frame,
                done: Done::Caller(tx),
            })
            .map_err(|_| self.unavailable())?;
        // No timer per call: the connection fails every call in flight when its oldest waits
        // longer than the request timeout, and the reconnect loop fails queued calls.
        rx.await.unwrap_or_else(|_| Err(self.unavailable()))
    }

    /// Sends the frames of a pipeline (`n` of them, back to back) as one command.
    async fn call_many(&self, frames: Bytes, n: usize) -> Result<Vec<Reply>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot::channel();
        let batch = Batch {
            want: n,
            next: 0,
            got: Vec::with_capacity(n),
            tx,
        };
        self.tx
            .send(Cmd {
                frame: frames,
                done: Done::Batch(Box::new(batch)),
            })
            .map_err(|_| self.unavailable())?;
        rx.await.unwrap_or_else(|_| Err(self.unavailable()))
    }

    /// The answer to one request of a pipeline.
    fn answer(&self, req: &PipeRequest<'_>, reply: &Reply) -> Result<PipeReply> {
        match req {
            PipeRequest::Claim { key, .. } => match claim_one(reply, self.node()) {
                Ok(c) => Ok(PipeReply::Claimed(c)),
                Err(e) => {
                    self.give_back(&[key]);
                    Err(e)
                }
            },
            PipeRequest::Release { .. } => reply
                .expect(kind::OK, self.node())
                .map(|_| PipeReply::Released),
            PipeRequest::OwnerOf { .. } => owners(reply, self.node(), 1)?
                .pop()
                .map(PipeReply::Owner)
                .ok_or_else(|| OwnershipError::Protocol("empty query reply".into())),
            PipeRequest::Send { .. } => {
                reply.expect(kind::OK, self.node()).map(|_| PipeReply::Sent)
            }
        }
    }

    /// Releases in the background ports a failed claim may have been granted.
    fn give_back(&self, keys: &[&str]) {
        let keys: Vec<Arc<str>> = keys.iter().map(|k| Arc::from(*k)).collect();
        self.release_in_background(&keys);
    }

    fn keys_frame(k: u8, flags: Option<u8>, keys: &[impl AsRef<str>]) -> Bytes {
        let size = frame::HEADER + 5 + keys.iter().map(|k| k.as_ref().len() + 2).sum::<usize>();
        let mut b = BytesMut::with_capacity(size);
        put_keys(&mut b, k, flags, keys);
        b.freeze()
    }

    fn node(&self) -> &str {
        self.shared.node.as_str()
    }
}

#[async_trait]
impl Backend for NetBackend {
    async fn pipeline(&self, reqs: &[PipeRequest<'_>]) -> Result<Vec<Result<PipeReply>>> {
        let deadline = Instant::now() + self.shared.opts.request_timeout;
        let mut out: Vec<Option<Result<PipeReply>>> = reqs.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = (0..reqs.len()).collect();
        while !todo.is_empty() {
            let mut b = BytesMut::with_capacity(todo.len() * (frame::HEADER + 40));
            for &i in &todo {
                match &reqs[i] {
                    PipeRequest::Claim { key, notify } => {
                        put_keys(&mut b, kind::REG_PORT, Some(*notify as u8), &[key])
                    }
                    PipeRequest::Release { key } => {
                        put_keys(&mut b, kind::UNREG_PORT, None, &[key])
                    }
                    PipeRequest::OwnerOf { key } => {
                        put_keys(&mut b, kind::QUERY_PORT, None, &[key])
                    }
                    PipeRequest::Send { key, payload } => put_send(&mut b, key, payload),
                }
            }
            let replies = match self.call_many(b.freeze(), todo.len()).await {
                Ok(r) if r.len() == todo.len() => r,
                other => {
                    // Claims may have been granted with their replies lost: give them back.
                    let claimed: Vec<&str> = todo
                        .iter()
                        .filter_map(|&i| match reqs[i] {
                            PipeRequest::Claim { key, .. } => Some(key),
                            _ => None,
                        })
                        .collect();
                    self.give_back(&claimed);
                    return Err(match other {
                        Err(e) => e,
                        Ok(_) => OwnershipError::Protocol("pipeline replies missing".into()),
                    });
                }
            };
            // Claims that met a restarted server's re-registration window go again after it,
            // within the call's time budget, as a lone claim does.
            if todo.len() == reqs.len() && replies.iter().all(|r| r.retry_after().is_none()) {
                return Ok(reqs
                    .iter()
                    .zip(&replies)
                    .map(|(q, r)| self.answer(q, r))
                    .collect());
            }
            let mut again = Vec::new();
            let mut wait = Duration::ZERO;
            for (&i, reply) in todo.iter().zip(&replies) {
                if let (PipeRequest::Claim { .. }, Some(w)) = (&reqs[i], reply.retry_after()) {
                    again.push(i);
                    wait = wait.max(w);
                    continue;
                }
                out[i] = Some(self.answer(&reqs[i], reply));
            }
            if !again.is_empty() {
                if Instant::now() + wait > deadline {
                    for i in again.drain(..) {
                        out[i] = Some(Err(OwnershipError::Unavailable(
                            "server is in its re-registration window after a restart".into(),
                        )));
                    }
                } else {
                    tokio::time::sleep(wait).await;
                }
            }
            todo = again;
        }
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(OwnershipError::Protocol("no answer".into()))))
            .collect())
    }

    async fn claim(&self, keys: &[&str], notify: bool) -> Result<Vec<ClaimReply>> {
        let frame = Self::keys_frame(kind::REG_PORT, Some(notify as u8), keys);
        let deadline = Instant::now() + self.shared.opts.request_timeout;
        let reply = loop {
            let reply = match self.call(frame.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    // The claim may have been granted with the reply lost: give such ports
                    // back, after the claim and before anything this session sends later.
                    self.give_back(keys);
                    return Err(e);
                }
            };
            // A restarted server holds back new grants until its previous life's leases are
            // surely over; wait that out here, within the call's time budget.
            match reply.retry_after() {
                Some(wait) if Instant::now() + wait <= deadline => {
                    tokio::time::sleep(wait).await;
                }
                Some(_) => {
                    return Err(OwnershipError::Unavailable(
                        "server is in its re-registration window after a restart".into(),
                    ))
                }
                None => break reply,
            }
        };
        claims(&reply, self.node(), keys.len()).inspect_err(|_| self.give_back(keys))
    }

    async fn release(&self, keys: &[&str]) -> Result<()> {
        let reply = self
            .call(Self::keys_frame(kind::UNREG_PORT, None, keys))
            .await?;
        reply.expect(kind::OK, self.node()).map(|_| ())
    }

    fn release_in_background(&self, keys: &[Arc<str>]) {
        let was_empty = {
            let mut unsent = lock(&self.shared.unsent);
            let was_empty = unsent.is_empty();
            unsent.extend_from_slice(keys);
            was_empty
        };
        // One wake-up for the writer per batch of drops: it takes them all at once.
        if was_empty {
            let _ = self.tx.send(Cmd {
                frame: Bytes::new(),
                done: Done::Release(Vec::new(), self.shared.clone()),
            });
        }
    }

    async fn owner_of(&self, keys: &[&str]) -> Result<Vec<Option<Owner>>> {
        let reply = self
            .call(Self::keys_frame(kind::QUERY_PORT, None, keys))
            .await?;
        owners(&reply, self.node(), keys.len())
    }

    async fn query_node(&self, node: &NodeId) -> Result<Option<NodeInfo>> {
        let mut b = BytesMut::new();
        let mut w = FrameWriter::begin(&mut b, kind::QUERY_NODE, 0);
        w.str(node.as_str());
        w.finish();
        let reply = self.call(b.freeze()).await?;
        let mut r = reply.expect(kind::NODE, self.node())?;
        if r.u8("node tag").map_err(proto)? == 0 {
            return Ok(None);
        }
        let id = NodeId(r.str("node").map_err(proto)?.to_owned());
        let ports = r.u64("ports").map_err(proto)? as usize;
        let endpoints = r.endpoints().map_err(proto)?;
        Ok(Some(NodeInfo {
            node: id,
            endpoints,
            ports,
        }))
    }

    async fn send(&self, key: &str, payload: Bytes) -> Result<()> {
        let mut b = BytesMut::with_capacity(frame::HEADER + 6 + key.len() + payload.len());
        put_send(&mut b, key, &payload);
        let reply = self.call(b.freeze()).await?;
        reply.expect(kind::OK, self.node()).map(|_| ())
    }

    async fn relet(&self) -> Result<()> {
        let sent = Instant::now();
        let reply = self.call(simple_frame(kind::RELET)).await?;
        reply.expect(kind::OK, self.node())?;
        self.shared.link.renewed(sent);
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.shared.closing.store(true, Ordering::Release);
        let reply = self.call(simple_frame(kind::CLOSE)).await?;
        reply.expect(kind::OK, self.node()).map(|_| ())
    }
}

/// Appends a request frame (id 0, set when written) carrying a list of keys.
fn put_keys(b: &mut BytesMut, k: u8, flags: Option<u8>, keys: &[impl AsRef<str>]) {
    let mut w = FrameWriter::begin(b, k, 0);
    if let Some(f) = flags {
        w.u8(f);
    }
    w.u32(keys.len() as u32);
    for key in keys {
        w.str(key.as_ref());
    }
    w.finish();
}

/// Appends a SendMsg frame.
fn put_send(b: &mut BytesMut, key: &str, payload: &[u8]) {
    let mut w = FrameWriter::begin(b, kind::SEND_MSG, 0);
    w.str(key).blob(payload);
    w.finish();
}

/// A reader at the first answer of a RegPort reply, which must hold `n`.
fn claims_reader<'a>(reply: &'a Reply, node: &str, n: usize) -> Result<Reader<'a>> {
    let mut r = reply.expect(kind::CLAIMS, node)?;
    let got = r.count(1, "claims").map_err(proto)?;
    if got != n {
        return Err(OwnershipError::Protocol(format!(
            "claim of {n} keys answered with {got} replies"
        )));
    }
    Ok(r)
}

/// The answers of a RegPort reply for `n` keys.
fn claims(reply: &Reply, node: &str, n: usize) -> Result<Vec<ClaimReply>> {
    let mut r = claims_reader(reply, node, n)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(claim_entry(&mut r)?);
    }
    r.end().map_err(proto)?;
    Ok(out)
}

/// The answer of a RegPort reply for one key (no list: a pipeline reads one per reply).
fn claim_one(reply: &Reply, node: &str) -> Result<ClaimReply> {
    let mut r = claims_reader(reply, node, 1)?;
    let c = claim_entry(&mut r)?;
    r.end().map_err(proto)?;
    Ok(c)
}

fn claim_entry(r: &mut Reader<'_>) -> Result<ClaimReply> {
    match r.u8("claim tag").map_err(proto)? {
        0 => Ok(Ok(r.i64("token").map_err(proto)?)),
        1 => Ok(Err(r.owner().map_err(proto)?)),
        _ => Err(OwnershipError::Unavailable(
            "server ran out of tokens for its epoch; it must restart".into(),
        )),
    }
}

/// The answers of a QueryPort reply for `n` keys.
fn owners(reply: &Reply, node: &str, n: usize) -> Result<Vec<Option<Owner>>> {
    let mut r = reply.expect(kind::OWNERS, node)?;
    let got = r.count(1, "owners").map_err(proto)?;
    if got != n {
        return Err(OwnershipError::Protocol(format!(
            "query of {n} keys answered with {got} replies"
        )));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        match r.u8("owner tag").map_err(proto)? {
            0 => out.push(None),
            _ => out.push(Some(r.owner().map_err(proto)?)),
        }
    }
    r.end().map_err(proto)?;
    Ok(out)
}
