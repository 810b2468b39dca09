//! Connections to other nodes' cache endpoints: one pipelined connection per address, made on
//! first use and replaced when it breaks.

use super::auth;
use super::proto::{codec, Request, Response};
use crate::cache::Reply;
use crate::store::lock;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use keyward_dbc::Key;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

/// How a call to a peer failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The request surely did not reach the peer (connect or handshake failed).
    NotSent(String),
    /// The connection broke after the request was sent: the outcome is unknown.
    Lost,
    /// The peer answered with an error.
    Remote(String),
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Reply, CallError>>>>>;

struct Conn {
    tx: mpsc::UnboundedSender<Bytes>,
    waiters: Waiters,
    alive: Arc<AtomicBool>,
}

pub(crate) struct Pool {
    secret: Vec<u8>,
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    next_id: AtomicU64,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn fail_all(waiters: &Waiters) {
    let drained: Vec<_> = lock(waiters).drain().collect();
    for (_, w) in drained {
        let _ = w.send(Err(CallError::Lost));
    }
}

impl Pool {
    pub fn new(secret: &str) -> Pool {
        Pool {
            secret: secret.as_bytes().to_vec(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
        }
    }

    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, CallError> {
        if let Some(c) = lock(&self.conns).get(addr) {
            if c.alive.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        let connect = async {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            auth::connect(&mut s, &self.secret).await?;
            Ok::<_, std::io::Error>(s)
        };
        let s = match tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(CallError::NotSent(format!("connect to {addr}: {e}"))),
            Err(_) => return Err(CallError::NotSent(format!("connect to {addr}: timed out"))),
        };
        let (r, w) = s.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let writer = {
            let alive = alive.clone();
            let waiters = waiters.clone();
            tokio::spawn(async move {
                let mut out = FramedWrite::new(w, codec());
                while let Some(frame) = rx.recv().await {
                    if out.feed(frame).await.is_err() {
                        break;
                    }
                    // Write out everything queued meanwhile in one go, then flush.
                    let mut ok = true;
                    while let Ok(f) = rx.try_recv() {
                        if out.feed(f).await.is_err() {
                            ok = false;
                            break;
                        }
                    }
                    if !ok || SinkExt::<Bytes>::flush(&mut out).await.is_err() {
                        break;
                    }
                }
                alive.store(false, Ordering::Release);
                fail_all(&waiters);
            })
        };
        let reader = {
            let alive = alive.clone();
            let waiters = waiters.clone();
            tokio::spawn(async move {
                let mut input = FramedRead::new(r, codec());
                while let Some(Ok(frame)) = input.next().await {
                    let Ok(resp) = postcard::from_bytes::<Response>(&frame) else {
                        tracing::warn!("cache peer sent an unreadable frame");
                        break;
                    };
                    let w = lock(&waiters).remove(&resp.id);
                    if let Some(w) = w {
                        let _ = w.send(resp.result.map_err(|e| CallError::Remote(e.message)));
                    }
                }
                alive.store(false, Ordering::Release);
                fail_all(&waiters);
            })
        };
        {
            let mut t = lock(&self.tasks);
            t.retain(|h| !h.is_finished());
            t.push(writer);
            t.push(reader);
        }
        let conn = Arc::new(Conn { tx, waiters, alive });
        lock(&self.conns).insert(addr.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Sends one request to the peer at `addr` and waits for its reply.
    /// `op` is an [`Op`](crate::cache::Op), or anything that writes as one (such as
    /// [`GetManyRef`](super::proto::GetManyRef)).
    pub async fn call<O: serde::Serialize>(
        &self,
        addr: &str,
        table: &str,
        pk: &Key,
        op: &O,
    ) -> Result<Reply, CallError> {
        let conn = self.conn(addr).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        #[derive(serde::Serialize)]
        struct Out<'a, O> {
            id: u64,
            table: &'a str,
            pk: &'a Key,
            op: &'a O,
        }
        let frame = postcard::to_stdvec(&Out { id, table, pk, op })
            .map_err(|e| CallError::NotSent(format!("encode request: {e}")))?;
        // Keep the wire shape in one place: `Out` must serialize exactly as `Request`.
        let _: fn(Request) = |_| {};
        let (tx, rx) = oneshot::channel();
        lock(&conn.waiters).insert(id, tx);
        if !conn.alive.load(Ordering::Acquire) || conn.tx.send(Bytes::from(frame)).is_err() {
            lock(&conn.waiters).remove(&id);
            lock(&self.conns).remove(addr);
            return Err(CallError::NotSent(format!("connection to {addr} closed")));
        }
        match rx.await {
            Ok(r) => {
                if matches!(r, Err(CallError::Lost)) {
                    lock(&self.conns).remove(addr);
                }
                r
            }
            Err(_) => Err(CallError::Lost),
        }
    }

    pub fn abort(&self) {
        for h in lock(&self.tasks).drain(..) {
            h.abort();
        }
        lock(&self.conns).clear();
    }
}
