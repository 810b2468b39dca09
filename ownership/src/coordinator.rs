//! The Coordinator API: the one way every other crate claims keys, finds owners and sends them
//! messages. Two backends implement [`Backend`]: the in-process hub ([`crate::InProcessHub`])
//! and the network client of the port switch service.

use crate::error::{OwnershipError, Result};
use crate::pipeline::Pipeline;
use crate::session::{GuardState, SessionLink};
use crate::types::{
    validate_key, Endpoints, Event, Mode, NodeId, NodeInfo, Owner, SessionConfig, Token,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Per-key answer of a backend's claim: the fresh token, or who holds the key.
pub type ClaimReply = std::result::Result<Token, Owner>;

/// One request of a pipeline ([`Backend::pipeline`]): a single key each.
#[derive(Clone, Debug)]
pub enum PipeRequest<'a> {
    /// RegPort of one key.
    Claim { key: &'a str, notify: bool },
    /// UnRegPort of one key.
    Release { key: &'a str },
    /// QueryPort of one key.
    OwnerOf { key: &'a str },
    /// SendMsg.
    Send { key: &'a str, payload: Bytes },
}

/// The answer to one [`PipeRequest`], of the same variant.
#[derive(Debug)]
pub enum PipeReply {
    Claimed(ClaimReply),
    Released,
    Owner(Option<Owner>),
    Sent,
}

/// What a transport provides. Implementations report pushed events, renewals and losses through
/// the [`SessionLink`] they were built with.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// RegPort: one reply per key, in order. With `notify`, a refused key's release is pushed
    /// later as [`Event::Released`].
    async fn claim(&self, keys: &[&str], notify: bool) -> Result<Vec<ClaimReply>>;
    /// UnRegPort.
    async fn release(&self, keys: &[&str]) -> Result<()>;
    /// UnRegPort without waiting for the reply; it must reach the server before any call this
    /// session makes afterwards (a later claim of the same key must not overtake it).
    fn release_in_background(&self, keys: &[Arc<str>]);
    /// QueryPort.
    async fn owner_of(&self, keys: &[&str]) -> Result<Vec<Option<Owner>>>;
    /// QueryNode.
    async fn query_node(&self, node: &NodeId) -> Result<Option<NodeInfo>>;
    /// SendMsg.
    async fn send(&self, key: &str, payload: Bytes) -> Result<()>;
    /// Relet: renew the lease now (lease mode; in persistent mode heartbeats do this).
    async fn relet(&self) -> Result<()>;
    /// Ends the session: the server releases its ports at once.
    async fn close(&self) -> Result<()>;

    /// Many single-key requests, answered in order, each on its own. `Err` as a whole only when
    /// the transport failed (claims that may have been granted are then given back). A network
    /// backend writes them together; this default makes them one after another.
    async fn pipeline(&self, reqs: &[PipeRequest<'_>]) -> Result<Vec<Result<PipeReply>>> {
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            out.push(match r {
                PipeRequest::Claim { key, notify } => self
                    .claim(&[key], *notify)
                    .await
                    .and_then(|mut v| v.pop().ok_or_else(|| missing("claim")))
                    .map(PipeReply::Claimed),
                PipeRequest::Release { key } => {
                    self.release(&[key]).await.map(|()| PipeReply::Released)
                }
                PipeRequest::OwnerOf { key } => self
                    .owner_of(&[key])
                    .await
                    .and_then(|mut v| v.pop().ok_or_else(|| missing("query")))
                    .map(PipeReply::Owner),
                PipeRequest::Send { key, payload } => self
                    .send(key, payload.clone())
                    .await
                    .map(|()| PipeReply::Sent),
            });
        }
        Ok(out)
    }
}

fn missing(what: &str) -> OwnershipError {
    OwnershipError::Protocol(format!("{what} of one key answered with no reply"))
}

/// The answer for one key of [`Coordinator::claim`].
#[derive(Debug)]
pub enum Claim {
    /// The key is this node's until the guard is released, dropped or lost.
    Granted(Guard),
    /// Someone holds it (possibly this node, through another guard).
    OwnedBy(Owner),
}

impl Claim {
    pub fn granted(self) -> Option<Guard> {
        match self {
            Claim::Granted(g) => Some(g),
            Claim::OwnedBy(_) => None,
        }
    }
}

pub(crate) struct Core {
    pub(crate) node: NodeId,
    pub(crate) endpoints: Endpoints,
    config: SessionConfig,
    pub(crate) link: Arc<SessionLink>,
    pub(crate) backend: Arc<dyn Backend>,
}

/// A node's session with the ownership service. Cheap to clone; every clone is the same session.
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) core: Arc<Core>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("node", &self.core.node)
            .finish()
    }
}

impl Coordinator {
    /// Joins a link and the backend built on it into a session, and starts the watchdog that
    /// loses every guard when the client-side lease end passes.
    pub fn from_parts(
        config: SessionConfig,
        link: Arc<SessionLink>,
        backend: Arc<dyn Backend>,
    ) -> Coordinator {
        tokio::spawn(SessionLink::watchdog(Arc::downgrade(&link)));
        Coordinator {
            core: Arc::new(Core {
                node: link.node().clone(),
                endpoints: config.endpoints.clone(),
                config,
                link,
                backend,
            }),
        }
    }

    pub fn node_id(&self) -> &NodeId {
        &self.core.node
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.core.endpoints
    }

    pub fn mode(&self) -> Mode {
        self.core.config.mode
    }

    pub fn config(&self) -> &SessionConfig {
        &self.core.config
    }

    /// Whether the session's lease holds on the client's clock right now.
    pub fn lease_valid(&self) -> bool {
        self.core.link.lease_valid()
    }

    /// Moves after any of this node's guards is lost or released, other than by the lease
    /// running out. A guard of this coordinator found valid after reading epoch `e` is still
    /// valid while `loss_epoch()` is `e` and [`lease_valid`](Self::lease_valid) holds: a cache
    /// of many guards re-checks one without touching it.
    pub fn loss_epoch(&self) -> u64 {
        self.core.link.loss_epoch()
    }

    /// Requests to send together: see [`Pipeline`].
    pub fn pipeline(&self) -> Pipeline {
        Pipeline::new(self.clone())
    }

    /// The owner record this node would show for a key it holds.
    pub(crate) fn me(&self, token: Token) -> Owner {
        Owner {
            node: self.core.node.clone(),
            endpoints: self.core.endpoints.clone(),
            token,
        }
    }

    /// Claims many keys in one request. Each key is granted (a guard with a fresh token) or
    /// answered with its owner. A key this node already holds is answered `OwnedBy` this node:
    /// there is at most one guard per key per node.
    pub async fn claim(&self, keys: &[&str]) -> Result<Vec<Claim>> {
        self.claim_with(keys, false).await
    }

    /// As [`claim`](Self::claim); with `notify`, a refused key's later release is pushed to this
    /// node as [`Event::Released`] (and wakes `wait_for_release`).
    pub async fn claim_with(&self, keys: &[&str], notify: bool) -> Result<Vec<Claim>> {
        for k in keys {
            validate_key(k)?;
        }
        let link = &self.core.link;
        if link.is_closed() {
            return Err(OwnershipError::SessionClosed {
                node: self.core.node.to_string(),
            });
        }
        // Reserve locally first, so two tasks of this node never both get a guard. Duplicates
        // in one batch: the first occurrence asks, the rest see `Claiming`.
        let reserved = link.reserve(keys);
        let refused = reserved.iter().filter(|r| r.is_err()).count();
        // Usually every key is asked: then `keys` itself goes out, with no copy.
        let partial: Vec<&str>;
        let ask: &[&str] = if refused == 0 {
            keys
        } else {
            partial = keys
                .iter()
                .zip(&reserved)
                .filter(|(_, r)| r.is_ok())
                .map(|(k, _)| *k)
                .collect();
            &partial
        };
        let mut settled = Vec::new();
        if !ask.is_empty() {
            let replies = match self.core.backend.claim(ask, notify).await {
                Ok(r) if r.len() == ask.len() => r,
                Ok(r) => {
                    link.unreserve(ask);
                    return Err(OwnershipError::Protocol(format!(
                        "claim of {} keys answered with {} replies",
                        ask.len(),
                        r.len()
                    )));
                }
                Err(e) => {
                    link.unreserve(ask);
                    return Err(e);
                }
            };
            let mut slots = link.slots();
            settled = ask
                .iter()
                .zip(replies)
                .map(|(key, reply)| match slots.settle(key, reply) {
                    Ok(state) => Claim::Granted(Guard {
                        state,
                        core: self.core.clone(),
                    }),
                    Err(owner) => Claim::OwnedBy(owner),
                })
                .collect();
            drop(slots);
            // Checked after the guards exist, so a lease that ran out meanwhile is not missed.
            if !link.lease_valid() {
                for c in &settled {
                    if let Claim::Granted(g) = c {
                        link.lose(&g.state);
                    }
                }
            }
        }
        if refused == 0 {
            return Ok(settled);
        }
        let mut settled = settled.into_iter();
        let mut out = Vec::with_capacity(keys.len());
        for r in reserved {
            out.push(match r {
                Err(token) => Claim::OwnedBy(self.me(token)),
                Ok(()) => settled
                    .next()
                    .ok_or_else(|| OwnershipError::Protocol("claim replies missing".into()))?,
            });
        }
        Ok(out)
    }

    /// Claims one key, waiting up to `timeout` for its current owner to release it.
    pub async fn claim_wait(&self, key: &str, timeout: Duration) -> Result<Guard> {
        let deadline = Instant::now() + timeout;
        loop {
            // Arm the waiter before asking, so a release between the reply and the wait is seen.
            let released = self.core.link.wait_release(key);
            let claim = self.claim_with(&[key], true).await?.pop();
            match claim {
                Some(Claim::Granted(g)) => return Ok(g),
                Some(Claim::OwnedBy(owner)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    // A key this node holds elsewhere sends no release notice: poll it.
                    let wait = if owner.node == self.core.node {
                        left.min(Duration::from_millis(20))
                    } else {
                        left
                    };
                    let _ = tokio::time::timeout(wait, released).await;
                    if Instant::now() >= deadline {
                        return Err(OwnershipError::Timeout {
                            what: format!("claim of {key:?}"),
                            millis: timeout.as_millis() as u64,
                        });
                    }
                }
                None => return Err(OwnershipError::Protocol("empty claim reply".into())),
            }
        }
    }

    /// Waits up to `timeout` until `key` has no owner other than this node. Returns at once
    /// when the key is free.
    pub async fn wait_for_release(&self, key: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let released = self.core.link.wait_release(key);
            match self.claim_with(&[key], true).await?.pop() {
                Some(Claim::Granted(g)) => {
                    g.release().await?;
                    return Ok(());
                }
                Some(Claim::OwnedBy(o)) if o.node == self.core.node => return Ok(()),
                Some(Claim::OwnedBy(_)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if tokio::time::timeout(left, released).await.is_err() {
                        return Err(OwnershipError::Timeout {
                            what: format!("release of {key:?}"),
                            millis: timeout.as_millis() as u64,
                        });
                    }
                }
                None => return Err(OwnershipError::Protocol("empty claim reply".into())),
            }
        }
    }

    /// The current owner of each key (QueryPort).
    pub async fn owner_of(&self, keys: &[&str]) -> Result<Vec<Option<Owner>>> {
        for k in keys {
            validate_key(k)?;
        }
        self.core.backend.owner_of(keys).await
    }

    /// A node's endpoints, or `None` when it is offline (QueryNode).
    pub async fn query_node(&self, node: &NodeId) -> Result<Option<NodeInfo>> {
        self.core.backend.query_node(node).await
    }

    /// Sends a blob to the owner of `key` (SendMsg). Not durable; in order per sender.
    pub async fn send(&self, key: &str, payload: impl Into<Bytes>) -> Result<()> {
        validate_key(key)?;
        self.core.backend.send(key, payload.into()).await
    }

    /// Messages and release notices for keys starting with `prefix` (`""` for all). Every
    /// subscriber whose prefix matches gets its own copy.
    pub fn messages(&self, prefix: &str) -> mpsc::UnboundedReceiver<Event> {
        self.core.link.subscribe(prefix)
    }

    /// Renews the lease now (Relet). Needed only in lease mode.
    pub async fn relet(&self) -> Result<()> {
        self.core.backend.relet().await
    }

    /// Ends the session: every guard is lost and the server frees the ports at once.
    pub async fn close(&self) -> Result<()> {
        let r = self.core.backend.close().await;
        self.core.link.close();
        r
    }
}

/// Proof that this node owns a key. Dropping it releases the key in the background.
pub struct Guard {
    pub(crate) state: Arc<GuardState>,
    pub(crate) core: Arc<Core>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("key", &self.state.key)
            .field("token", &self.token())
            .field("valid", &self.is_valid())
            .finish()
    }
}

impl Guard {
    pub fn key(&self) -> &str {
        &self.state.key
    }

    /// The current fencing token. It grows when the port is re-registered after a failover.
    pub fn token(&self) -> Token {
        self.state.token.load(Ordering::Acquire)
    }

    /// True while the key is surely this node's: not lost, not released, and the session's
    /// lease still holds on the client's clock (minus the safety margin).
    pub fn is_valid(&self) -> bool {
        !self.state.is_lost()
            && !self.state.released.load(Ordering::Acquire)
            && self.core.link.lease_valid()
    }

    /// Resolves when ownership is lost (lease end, failed re-registration, session closed).
    /// Resolves at once if it already is.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let state = self.state.clone();
        async move { state.wait_lost().await }
    }

    /// The node's coordinator, for calls made on behalf of this guard.
    pub fn coordinator(&self) -> Coordinator {
        Coordinator {
            core: self.core.clone(),
        }
    }

    /// Marks the guard released here. False when its slot already went to a newer claim (or
    /// none): then the service has nothing of this guard's to release.
    pub(crate) fn retire(&self) -> bool {
        self.state.released.store(true, Ordering::Release);
        let ours = self.core.link.uninstall(&self.state);
        self.core.link.lose(&self.state);
        ours
    }

    /// Releases the key and waits for the service to confirm.
    pub async fn release(self) -> Result<()> {
        if self.retire() {
            self.core.backend.release(&[&*self.state.key]).await
        } else {
            Ok(())
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.state.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let ours = self.core.link.uninstall(&self.state);
        self.core.link.lose(&self.state);
        if ours {
            self.core
                .backend
                .release_in_background(std::slice::from_ref(&self.state.key));
        }
    }
}
