//! The owner side of the peer protocol.

use super::auth;
use super::proto::{codec, RemoteError, Request, Response};
use crate::cache::Inner;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Weak;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite};

/// A bound peer listener. Bind first when the address must be known before the node's
/// ownership session is opened (it is announced as the `cache` endpoint), e.g. with port 0.
pub struct PeerListener {
    pub(crate) listener: TcpListener,
}

impl PeerListener {
    pub async fn bind(addr: &str) -> std::io::Result<PeerListener> {
        Ok(PeerListener {
            listener: TcpListener::bind(addr).await?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

pub(crate) async fn run(listener: TcpListener, inner: Weak<Inner>, secret: Vec<u8>) {
    // Connection tasks live in this set, so aborting the accept loop ends them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, peer)) => {
                    let inner = inner.clone();
                    let secret = secret.clone();
                    conns.spawn(async move {
                        if let Err(e) = serve(s, inner, &secret).await {
                            tracing::debug!(%peer, error = %e, "cache peer connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cache peer accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            // A cache dropped without shutdown stops listening too.
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                if inner.strong_count() == 0 {
                    return;
                }
            }
        }
    }
}

async fn serve(mut s: TcpStream, inner: Weak<Inner>, secret: &[u8]) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    match tokio::time::timeout(auth::HANDSHAKE_TIMEOUT, auth::accept(&mut s, secret)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "handshake timed out",
            ))
        }
    }
    let (r, w) = s.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let mut handlers = JoinSet::new();
    let writer = async move {
        let mut out = FramedWrite::new(w, codec());
        while let Some(f) = rx.recv().await {
            out.feed(f).await?;
            while let Ok(f) = rx.try_recv() {
                out.feed(f).await?;
            }
            SinkExt::<Bytes>::flush(&mut out).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let reader = async {
        let mut input = FramedRead::new(r, codec());
        while let Some(frame) = input.next().await {
            let frame = frame?;
            let req: Request = postcard::from_bytes(&frame)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let Some(cache) = inner.upgrade() else { break };
            // Owner-local reads are answered inline; anything that may wait runs on its own.
            if let Some(result) = cache.serve_peer_fast(&req) {
                send(&tx, req.id, result);
                continue;
            }
            let tx = tx.clone();
            handlers.spawn(async move {
                let result = cache.serve_peer(req.table, req.pk, req.op).await;
                send(&tx, req.id, result);
            });
            while handlers.try_join_next().is_some() {}
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

fn send(
    tx: &mpsc::UnboundedSender<Bytes>,
    id: u64,
    result: Result<crate::cache::Reply, RemoteError>,
) {
    match postcard::to_stdvec(&Response { id, result }) {
        Ok(b) => {
            let _ = tx.send(Bytes::from(b));
        }
        Err(e) => {
            let r = Response {
                id,
                result: Err(RemoteError {
                    message: format!("encode reply: {e}"),
                }),
            };
            if let Ok(b) = postcard::to_stdvec(&r) {
                let _ = tx.send(Bytes::from(b));
            }
        }
    }
}

pub(crate) fn spawn(
    listener: PeerListener,
    inner: Weak<Inner>,
    secret: Vec<u8>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(listener.listener, inner, secret))
}
