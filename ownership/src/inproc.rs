//! The in-process implementation of the Coordinator API: a port table in this process's memory,
//! shared by every node (session) connected to the same [`InProcessHub`]. Used by tests, CLIs
//! and the embedded single-process default. It keeps the network service's semantics: leases
//! that expire, notify-on-release, growing fencing tokens, a per-node port limit.

use crate::coordinator::{Backend, ClaimReply, Coordinator};
use crate::error::{OwnershipError, Result};
use crate::session::{lock, SessionLink};
use crate::types::{Endpoints, Event, Mode, NodeId, NodeInfo, Owner, SessionConfig, Token};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Port {
    owner: NodeId,
    token: Token,
    /// Nodes that asked to hear of this port's release.
    watchers: Vec<NodeId>,
}

struct Session {
    endpoints: Endpoints,
    lease: Duration,
    deadline: Instant,
    ports: HashSet<String>,
    link: Weak<SessionLink>,
    /// Test hook: renewals are dropped on the floor, as if the node were paused.
    paused: bool,
}

struct State {
    ports: HashMap<String, Port>,
    sessions: HashMap<NodeId, Session>,
    last_token: Token,
    max_ports_per_node: usize,
}

impl State {
    /// Tokens are microseconds since the Unix epoch, bumped past the last one: they grow
    /// within a hub and, as long as the clock does not step back, across restarts.
    fn next_token(&mut self) -> Token {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        self.last_token = (self.last_token + 1).max(now);
        self.last_token
    }

    fn owner(&self, key: &str) -> Option<Owner> {
        self.ports.get(key).map(|p| Owner {
            node: p.owner.clone(),
            endpoints: self
                .sessions
                .get(&p.owner)
                .map(|s| s.endpoints.clone())
                .unwrap_or_default(),
            token: p.token,
        })
    }

    /// Frees a port and collects the release notices to push once the lock is dropped.
    fn free(&mut self, key: &str, notices: &mut Vec<(Arc<SessionLink>, String)>) {
        if let Some(port) = self.ports.remove(key) {
            for w in port.watchers {
                if let Some(link) = self.sessions.get(&w).and_then(|s| s.link.upgrade()) {
                    notices.push((link, key.to_owned()));
                }
            }
        }
    }

    fn end_session(&mut self, node: &NodeId, notices: &mut Vec<(Arc<SessionLink>, String)>) {
        if let Some(s) = self.sessions.remove(node) {
            for key in s.ports {
                self.free(&key, notices);
            }
        }
    }
}

fn push_notices(notices: Vec<(Arc<SessionLink>, String)>) {
    for (link, key) in notices {
        link.event(Event::Released { key });
    }
}

/// A port table shared by the sessions connected to it. Cheap to clone.
#[derive(Clone)]
pub struct InProcessHub {
    state: Arc<Mutex<State>>,
}

impl Default for InProcessHub {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessHub {
    pub fn new() -> Self {
        Self::with_port_limit(usize::MAX)
    }

    /// A hub that refuses to let one node hold more than `limit` ports.
    pub fn with_port_limit(limit: usize) -> Self {
        InProcessHub {
            state: Arc::new(Mutex::new(State {
                ports: HashMap::new(),
                sessions: HashMap::new(),
                last_token: 0,
                max_ports_per_node: limit,
            })),
        }
    }

    /// Opens a session for a node. In persistent mode a background task renews the lease every
    /// third of it; in lease mode the caller renews with `relet`.
    pub async fn connect(&self, config: SessionConfig) -> Result<Coordinator> {
        let node = config.node_id.clone().unwrap_or_else(NodeId::random);
        let link = SessionLink::new(node.clone(), &config);
        {
            let mut st = lock(&self.state);
            let mut notices = Vec::new();
            // A node id reconnecting replaces its old session, as a restarted process would.
            st.end_session(&node, &mut notices);
            let sent = Instant::now();
            st.sessions.insert(
                node.clone(),
                Session {
                    endpoints: config.endpoints.clone(),
                    lease: config.lease,
                    deadline: sent + config.lease,
                    ports: HashSet::new(),
                    link: Arc::downgrade(&link),
                    paused: false,
                },
            );
            drop(st);
            push_notices(notices);
            link.renewed(sent);
        }
        let backend = Arc::new(HubSession {
            hub: self.clone(),
            node: node.clone(),
            endpoints: config.endpoints.clone(),
            lease: config.lease,
            link: Arc::downgrade(&link),
        });
        if config.mode == Mode::Persistent {
            tokio::spawn(heartbeat(
                Arc::downgrade(&backend),
                config.heartbeat_interval(),
            ));
        }
        self.spawn_reaper(config.lease);
        Ok(Coordinator::from_parts(config, link, backend))
    }

    /// Test hook: while paused, the node's renewals are ignored, as if its process were stopped.
    pub fn set_paused(&self, node: &NodeId, paused: bool) {
        if let Some(s) = lock(&self.state).sessions.get_mut(node) {
            s.paused = paused;
        }
    }

    /// Nodes with a live session and the number of ports each holds.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let st = lock(&self.state);
        st.sessions
            .iter()
            .map(|(n, s)| NodeInfo {
                node: n.clone(),
                endpoints: s.endpoints.clone(),
                ports: s.ports.len(),
            })
            .collect()
    }

    /// Expires sessions whose lease ended. Runs often enough that a port is freed within a
    /// tenth of the shortest lease after it ends.
    fn spawn_reaper(&self, lease: Duration) {
        let weak = Arc::downgrade(&self.state);
        let tick = (lease / 10).clamp(Duration::from_millis(2), Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(state) = weak.upgrade() else { return };
                let mut notices = Vec::new();
                let mut expired = Vec::new();
                {
                    let mut st = lock(&state);
                    if st.sessions.is_empty() {
                        return;
                    }
                    let now = Instant::now();
                    let dead: Vec<NodeId> = st
                        .sessions
                        .iter()
                        .filter(|(_, s)| s.deadline <= now)
                        .map(|(n, _)| n.clone())
                        .collect();
                    for n in dead {
                        if let Some(link) = st.sessions.get(&n).and_then(|s| s.link.upgrade()) {
                            expired.push(link);
                        }
                        tracing::debug!(node = %n, "in-process session lease expired");
                        st.end_session(&n, &mut notices);
                    }
                }
                for link in expired {
                    link.lose_all();
                }
                push_notices(notices);
            }
        });
    }
}

/// One node's session on a hub: the [`Backend`] behind its `Coordinator`.
struct HubSession {
    hub: InProcessHub,
    node: NodeId,
    endpoints: Endpoints,
    lease: Duration,
    link: Weak<SessionLink>,
}

async fn heartbeat(backend: Weak<HubSession>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(b) = backend.upgrade() else { return };
        if b.link.upgrade().is_none_or(|l| l.is_closed()) {
            return;
        }
        let _ = b.renew();
    }
}

impl HubSession {
    /// UnRegPort of those keys that are still this node's.
    fn free(&self, keys: &[impl AsRef<str>]) {
        let mut notices = Vec::new();
        {
            let mut st = lock(&self.hub.state);
            for key in keys {
                let key = key.as_ref();
                if st.ports.get(key).is_some_and(|p| p.owner == self.node) {
                    st.free(key, &mut notices);
                    if let Some(s) = st.sessions.get_mut(&self.node) {
                        s.ports.remove(key);
                    }
                }
            }
        }
        push_notices(notices);
    }

    fn closed(&self) -> OwnershipError {
        OwnershipError::SessionClosed {
            node: self.node.to_string(),
        }
    }

    /// Renews the lease; a session that expired meanwhile is opened again (with no ports),
    /// as a reconnecting client would.
    fn renew(&self) -> Result<()> {
        let Some(link) = self.link.upgrade() else {
            return Err(self.closed());
        };
        if link.is_closed() {
            return Err(self.closed());
        }
        let sent = Instant::now();
        let mut st = lock(&self.hub.state);
        match st.sessions.get_mut(&self.node) {
            Some(s) if s.paused => return Ok(()),
            Some(s) => s.deadline = sent + s.lease,
            None => {
                st.sessions.insert(
                    self.node.clone(),
                    Session {
                        endpoints: self.endpoints.clone(),
                        lease: self.lease,
                        deadline: sent + self.lease,
                        ports: HashSet::new(),
                        link: self.link.clone(),
                        paused: false,
                    },
                );
            }
        }
        drop(st);
        link.renewed(sent);
        Ok(())
    }
}

#[async_trait]
impl Backend for HubSession {
    async fn claim(&self, keys: &[&str], notify: bool) -> Result<Vec<ClaimReply>> {
        let mut st = lock(&self.hub.state);
        let limit = st.max_ports_per_node;
        let Some(session) = st.sessions.get(&self.node) else {
            return Err(self.closed());
        };
        let held = session.ports.len();
        // Check the limit before changing anything: a refused batch must leave no ports behind
        // (the caller forgets every key of a failed claim).
        let fresh: HashSet<&str> = keys
            .iter()
            .copied()
            .filter(|k| !st.ports.contains_key(*k))
            .collect();
        if held.saturating_add(fresh.len()) > limit {
            return Err(OwnershipError::PortLimit { held, limit });
        }
        let mut out = Vec::with_capacity(keys.len());
        let mut granted = 0usize;
        for &key in keys {
            if let Some(owner) = st.owner(key) {
                if owner.node == self.node {
                    out.push(Ok(owner.token));
                    continue;
                }
                if let Some(port) = st.ports.get_mut(key) {
                    if notify && !port.watchers.contains(&self.node) {
                        port.watchers.push(self.node.clone());
                    }
                }
                out.push(Err(owner));
                continue;
            }
            if held + granted >= limit {
                return Err(OwnershipError::PortLimit { held, limit });
            }
            let token = st.next_token();
            st.ports.insert(
                key.to_owned(),
                Port {
                    owner: self.node.clone(),
                    token,
                    watchers: Vec::new(),
                },
            );
            if let Some(s) = st.sessions.get_mut(&self.node) {
                s.ports.insert(key.to_owned());
            }
            granted += 1;
            out.push(Ok(token));
        }
        Ok(out)
    }

    async fn release(&self, keys: &[&str]) -> Result<()> {
        self.free(keys);
        Ok(())
    }

    fn release_in_background(&self, keys: &[Arc<str>]) {
        self.free(keys);
    }

    async fn owner_of(&self, keys: &[&str]) -> Result<Vec<Option<Owner>>> {
        let st = lock(&self.hub.state);
        Ok(keys.iter().map(|k| st.owner(k)).collect())
    }

    async fn query_node(&self, node: &NodeId) -> Result<Option<NodeInfo>> {
        let st = lock(&self.hub.state);
        Ok(st.sessions.get(node).map(|s| NodeInfo {
            node: node.clone(),
            endpoints: s.endpoints.clone(),
            ports: s.ports.len(),
        }))
    }

    async fn send(&self, key: &str, payload: Bytes) -> Result<()> {
        let link = {
            let st = lock(&self.hub.state);
            let owner = st.ports.get(key).map(|p| p.owner.clone());
            owner.and_then(|o| st.sessions.get(&o).and_then(|s| s.link.upgrade()))
        };
        match link {
            Some(link) => {
                link.event(Event::Message {
                    key: key.to_owned(),
                    from: self.node.clone(),
                    payload,
                });
                Ok(())
            }
            None => Err(OwnershipError::NoOwner {
                key: key.to_owned(),
            }),
        }
    }

    async fn relet(&self) -> Result<()> {
        self.renew()
    }

    async fn close(&self) -> Result<()> {
        let mut notices = Vec::new();
        lock(&self.hub.state).end_session(&self.node, &mut notices);
        push_notices(notices);
        Ok(())
    }
}
