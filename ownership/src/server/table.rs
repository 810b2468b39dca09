//! The master's whole state, in RAM only: the port table and the sessions that own ports.
//!
//! One mutex guards it; a connection takes it once per batch of frames read, so that the lock
//! is paid per packet rather than per request. Replies are written straight into the
//! connection's output buffer; pushes for other connections are pre-encoded frames sent on
//! their channels.

use super::epoch::COUNTER_BITS;
use super::ports::{Ports, NIL};
use crate::frame::{code, kind, FrameError, FrameWriter, Reader};
use crate::status::{NodeStats, ServerStats};
use crate::types::{validate_key, Endpoints, Mode, NodeId, Token};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub(crate) type PushTx = mpsc::UnboundedSender<Bytes>;

struct Session {
    node: NodeId,
    /// The client's id for this session; a hello with another one replaces the session.
    client_session: u64,
    mode: Mode,
    lease: Duration,
    deadline: Instant,
    endpoints: Endpoints,
    /// First of the session's ports (they are linked in the port table).
    head: u32,
    ports: usize,
    /// The connection (id, channel) that asked for pushes with WaitMsg.
    push: Option<(u64, PushTx)>,
}

pub(crate) struct Table {
    ports: Ports,
    /// hashbrown's default hasher (foldhash): looked up per port of every request.
    sessions: hashbrown::HashMap<u64, Session>,
    nodes: HashMap<String, u64>,
    next_sid: u64,
    epoch: u64,
    counter: u64,
    limit: usize,
    listen: String,
    /// Until then, only ports re-registered by nodes of the previous life are granted.
    reclaim_until: Option<Instant>,
    /// Longest lease granted by any life of this server, as recorded on disk.
    max_lease_ms: u64,
    data_dir: std::path::PathBuf,
    /// False on a group member that is not the master: it serves no sessions.
    master: bool,
    /// The master's address, as this member last heard.
    hint: Option<String>,
    members: Vec<String>,
}

/// What `hello` did.
pub(crate) struct Hello {
    pub sid: u64,
    pub resumed: bool,
}

fn push_frame(kind_: u8, fill: impl FnOnce(&mut FrameWriter<'_>)) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    let mut w = FrameWriter::begin(&mut b, kind_, 0);
    fill(&mut w);
    w.finish();
    b.freeze()
}

pub(crate) fn err_frame(out: &mut BytesMut, id: u32, c: u16, a: u64, b: u64, msg: &str) {
    let mut w = FrameWriter::begin(out, kind::ERR, id);
    w.u16(c).u64(a).u64(b).str(msg);
    w.finish();
}

fn ok_frame(out: &mut BytesMut, id: u32) {
    FrameWriter::begin(out, kind::OK, id).finish();
}

impl Table {
    pub(crate) fn new(
        epoch: u64,
        limit: usize,
        listen: String,
        previous_max_lease_ms: u64,
        data_dir: std::path::PathBuf,
        now: Instant,
    ) -> Self {
        let reclaim_until =
            (previous_max_lease_ms > 0).then(|| now + Duration::from_millis(previous_max_lease_ms));
        Table {
            master: true,
            hint: None,
            members: vec![listen.clone()],
            reclaim_until,
            max_lease_ms: previous_max_lease_ms,
            data_dir,
            ports: Ports::default(),
            sessions: hashbrown::HashMap::new(),
            nodes: HashMap::new(),
            next_sid: 1,
            epoch,
            counter: 0,
            limit,
            listen,
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(crate) fn is_master(&self) -> bool {
        self.master
    }

    pub(crate) fn hint(&self) -> &str {
        self.hint.as_deref().unwrap_or("")
    }

    /// A group member that is not serving (yet).
    pub(crate) fn standby(&mut self, members: Vec<String>) {
        self.members = members;
        self.step_down(None);
    }

    /// This member now serves as master of `epoch`: a fresh table, and a re-registration
    /// window of `window` for the nodes of the previous master.
    pub(crate) fn become_master(&mut self, epoch: u64, window: Duration, now: Instant) {
        self.clear();
        self.epoch = epoch;
        self.counter = 0;
        self.master = true;
        self.hint = Some(self.listen.clone());
        self.reclaim_until = Some(now + window);
    }

    /// This member stops serving: its state goes (the next master rebuilds it from
    /// re-registrations).
    pub(crate) fn step_down(&mut self, hint: Option<String>) {
        self.clear();
        self.master = false;
        self.hint = hint;
    }

    pub(crate) fn set_hint(&mut self, hint: Option<String>) {
        self.hint = hint;
    }

    fn clear(&mut self) {
        self.ports.clear();
        self.sessions = hashbrown::HashMap::new();
        self.nodes = HashMap::new();
    }

    fn next_token(&mut self) -> Option<Token> {
        if self.counter + 1 >= 1 << COUNTER_BITS {
            return None;
        }
        self.counter += 1;
        Some(((self.epoch << COUNTER_BITS) | self.counter) as Token)
    }

    /// Makes sure a restart would wait out this lease; false when that could not be recorded.
    pub(crate) fn record_lease(&mut self, lease: Duration) -> bool {
        let ms = lease.as_millis() as u64;
        if ms <= self.max_lease_ms {
            return true;
        }
        match super::epoch::record_max_lease_ms(&self.data_dir, ms) {
            Ok(()) => {
                self.max_lease_ms = ms;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record lease length; refusing session");
                false
            }
        }
    }

    /// Time left in the re-registration window after a restart, if any.
    pub(crate) fn reclaim_left(&mut self, now: Instant) -> Option<Duration> {
        match self.reclaim_until {
            Some(t) if t > now => Some(t - now),
            Some(_) => {
                tracing::info!("re-registration window closed; serving all claims");
                self.reclaim_until = None;
                None
            }
            None => None,
        }
    }

    /// Opens a session for a node, or resumes it when the client's session id matches.
    pub(crate) fn hello(
        &mut self,
        node: &str,
        client_session: u64,
        mode: Mode,
        lease: Duration,
        endpoints: Endpoints,
        now: Instant,
    ) -> Hello {
        if let Some(&sid) = self.nodes.get(node) {
            if let Some(s) = self.sessions.get(&sid) {
                if s.client_session == client_session {
                    return Hello { sid, resumed: true };
                }
            }
            // The node restarted with a new session: its old ports go, as with a closed one.
            tracing::info!(node, "node opened a new session; ending its previous one");
            self.end_session(sid);
        }
        // Ports name their owner in 32 bits: session numbers wrap, skipping live ones.
        while self.next_sid > u32::MAX as u64 - 1 || self.sessions.contains_key(&self.next_sid) {
            self.next_sid = if self.next_sid > u32::MAX as u64 - 1 {
                1
            } else {
                self.next_sid + 1
            };
        }
        let sid = self.next_sid;
        self.next_sid += 1;
        self.nodes.insert(node.to_owned(), sid);
        let node = NodeId(node.to_owned());
        self.sessions.insert(
            sid,
            Session {
                node,
                client_session,
                mode,
                lease,
                deadline: now + lease,
                endpoints,
                head: NIL,
                ports: 0,
                push: None,
            },
        );
        Hello {
            sid,
            resumed: false,
        }
    }

    /// RegPort. The request is checked in full (keys valid, port limit) before anything
    /// changes, so that a refused request leaves no half-granted ports behind.
    pub(crate) fn reg_port(
        &mut self,
        sid: u64,
        r: &mut Reader<'_>,
        out: &mut BytesMut,
        id: u32,
        now: Instant,
    ) -> Result<(), FrameError> {
        let flags = r.u8("flags")?;
        let notify = flags & 1 != 0;
        let reclaim = flags & 2 != 0;
        let n = r.count(2, "keys")?;
        let window = if reclaim {
            None
        } else {
            self.reclaim_left(now)
        };
        let Some(session) = self.sessions.get(&sid) else {
            skip_keys(r, n)?;
            err_frame(out, id, code::NO_SESSION, 0, 0, "no live session");
            return Ok(());
        };
        let held = session.ports;
        let tight = held.saturating_add(n) > self.limit;
        let mut check = Reader::clone(r);
        let mut fresh = 0usize;
        for _ in 0..n {
            let key = check.str("key")?;
            if let Err(e) = validate_key(key) {
                skip_keys(r, n)?;
                err_frame(out, id, code::INVALID, 0, 0, &e.to_string());
                return Ok(());
            }
            if (tight || window.is_some()) && !self.ports.contains(key) {
                fresh += 1;
            }
        }
        if let (Some(left), true) = (window, fresh > 0) {
            // A free port may still be believed held by a node of the previous life.
            skip_keys(r, n)?;
            let ms = left.as_millis() as u64 + 1;
            err_frame(
                out,
                id,
                code::RETRY,
                ms,
                0,
                "re-registration window after restart",
            );
            return Ok(());
        }
        if tight && held + fresh > self.limit {
            skip_keys(r, n)?;
            let limit = self.limit as u64;
            err_frame(
                out,
                id,
                code::PORT_LIMIT,
                held as u64,
                limit,
                "port limit reached",
            );
            return Ok(());
        }
        let mut w = FrameWriter::begin(out, kind::CLAIMS, id);
        w.u32(n as u32);
        for _ in 0..n {
            let key = r.str("key")?;
            let h = self.ports.hash_key(key);
            if let Some(port) = self.ports.get_hashed(h, key) {
                if port.owner as u64 == sid {
                    w.u8(0).i64(port.token);
                    continue;
                }
                if notify {
                    self.ports.watch(key, sid);
                }
                let (owner, token) = (port.owner as u64, port.token);
                match self.sessions.get(&owner) {
                    Some(o) => {
                        w.u8(1).owner(o.node.as_str(), token, &o.endpoints);
                    }
                    // Cannot happen: ports leave the table with their session.
                    None => {
                        w.u8(1).owner("", token, &Endpoints::new());
                    }
                }
                continue;
            }
            let Some(token) = self.next_token() else {
                // Unreachable in practice (a trillion grants); refuse rather than wrap.
                w.u8(2);
                continue;
            };
            let Some(s) = self.sessions.get_mut(&sid) else {
                w.u8(2);
                continue;
            };
            self.ports
                .insert_hashed(h, key, sid as u32, token, &mut s.head);
            s.ports += 1;
            w.u8(0).i64(token);
        }
        w.finish();
        Ok(())
    }

    /// UnRegPort: ports that are not the caller's are ignored.
    pub(crate) fn unreg_port(
        &mut self,
        sid: u64,
        r: &mut Reader<'_>,
        out: &mut BytesMut,
        id: u32,
    ) -> Result<(), FrameError> {
        let n = r.count(2, "keys")?;
        for _ in 0..n {
            let key = r.str("key")?;
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            if let Some(watchers) = self.ports.remove_owned(key, sid as u32, &mut s.head) {
                s.ports -= 1;
                self.tell_released(key, watchers);
            }
        }
        ok_frame(out, id);
        Ok(())
    }

    pub(crate) fn query_port(
        &self,
        r: &mut Reader<'_>,
        out: &mut BytesMut,
        id: u32,
    ) -> Result<(), FrameError> {
        let n = r.count(2, "keys")?;
        let mut w = FrameWriter::begin(out, kind::OWNERS, id);
        w.u32(n as u32);
        for _ in 0..n {
            let key = r.str("key")?;
            match self
                .ports
                .get(key)
                .and_then(|p| self.sessions.get(&(p.owner as u64)).map(|s| (p, s)))
            {
                Some((p, s)) => {
                    w.u8(1).owner(s.node.as_str(), p.token, &s.endpoints);
                }
                None => {
                    w.u8(0);
                }
            }
        }
        w.finish();
        Ok(())
    }

    pub(crate) fn query_node(&self, node: &str, out: &mut BytesMut, id: u32) {
        let mut w = FrameWriter::begin(out, kind::NODE, id);
        match self.nodes.get(node).and_then(|sid| self.sessions.get(sid)) {
            Some(s) => {
                w.u8(1)
                    .str(node)
                    .u64(s.ports as u64)
                    .endpoints(&s.endpoints);
            }
            None => {
                w.u8(0);
            }
        }
        w.finish();
    }

    /// SendMsg: pushed to the owner's WaitMsg channel, in the order this connection sent them.
    /// An owner without a push channel (lease mode, or reconnecting) does not get it: messages
    /// are not durable.
    pub(crate) fn send_msg(
        &self,
        sid: u64,
        key: &str,
        payload: &[u8],
        out: &mut BytesMut,
        id: u32,
    ) {
        let Some(port) = self.ports.get(key) else {
            err_frame(out, id, code::NO_OWNER, 0, 0, key);
            return;
        };
        let from = self
            .sessions
            .get(&sid)
            .map(|s| s.node.as_str())
            .unwrap_or("");
        if let Some((_, tx)) = self
            .sessions
            .get(&(port.owner as u64))
            .and_then(|s| s.push.as_ref())
        {
            let frame = push_frame(kind::PUSH_MSG, |w| {
                w.str(key).str(from).blob(payload);
            });
            let _ = tx.send(frame);
        }
        ok_frame(out, id);
    }

    /// WaitMsg: this connection becomes the session's push channel.
    pub(crate) fn wait_msg(&mut self, sid: u64, conn: u64, tx: &PushTx) -> bool {
        match self.sessions.get_mut(&sid) {
            Some(s) => {
                s.push = Some((conn, tx.clone()));
                true
            }
            None => false,
        }
    }

    /// Relet or heartbeat: the lease runs from now.
    pub(crate) fn relet(&mut self, sid: u64, now: Instant) -> bool {
        match self.sessions.get_mut(&sid) {
            Some(s) => {
                s.deadline = s.deadline.max(now + s.lease);
                true
            }
            None => false,
        }
    }

    /// A connection ended: if it was its session's push channel, pushes stop (the session and
    /// its lease stay).
    pub(crate) fn detach(&mut self, sid: u64, conn: u64) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            if s.push.as_ref().is_some_and(|(c, _)| *c == conn) {
                s.push = None;
            }
        }
    }

    pub(crate) fn has_session(&self, sid: u64) -> bool {
        self.sessions.contains_key(&sid)
    }

    /// Tells the sessions that watched a freed port.
    fn tell_released(&self, key: &str, watchers: Vec<u64>) {
        for w in watchers {
            if let Some((_, tx)) = self.sessions.get(&w).and_then(|s| s.push.as_ref()) {
                let _ = tx.send(push_frame(kind::PUSH_RELEASED, |f| {
                    f.str(key);
                }));
            }
        }
    }

    /// Ends a session (close, replaced, or lease expired): its ports are freed and watchers told.
    pub(crate) fn end_session(&mut self, sid: u64) {
        let Some(s) = self.sessions.remove(&sid) else {
            return;
        };
        if self.nodes.get(s.node.as_str()) == Some(&sid) {
            self.nodes.remove(s.node.as_str());
        }
        if let Some((_, tx)) = &s.push {
            let _ = tx.send(push_frame(kind::PUSH_LOST, |_| {}));
        }
        let sessions = &self.sessions;
        self.ports.remove_all(s.head, |key, watchers| {
            for w in watchers {
                if let Some((_, tx)) = sessions.get(&w).and_then(|s| s.push.as_ref()) {
                    let _ = tx.send(push_frame(kind::PUSH_RELEASED, |f| {
                        f.str(key);
                    }));
                }
            }
        });
    }

    /// Ends every session whose lease has run out; returns how many.
    pub(crate) fn reap(&mut self, now: Instant) -> usize {
        let dead: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(sid, _)| *sid)
            .collect();
        for sid in &dead {
            if let Some(s) = self.sessions.get(sid) {
                tracing::debug!(node = %s.node, ports = s.ports, "session lease expired");
            }
            self.end_session(*sid);
        }
        dead.len()
    }

    pub(crate) fn stats(&self) -> ServerStats {
        let mut nodes: Vec<NodeStats> = self
            .sessions
            .values()
            .map(|s| NodeStats {
                node: s.node.to_string(),
                mode: s.mode,
                lease_ms: s.lease.as_millis() as u64,
                ports: s.ports,
                push_channel: s.push.is_some(),
            })
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        ServerStats {
            members: self.members.clone(),
            master: self
                .hint
                .clone()
                .or_else(|| self.master.then(|| self.listen.clone())),
            epoch: self.epoch,
            sessions: self.sessions.len(),
            ports: self.ports.len(),
            max_ports_per_node: self.limit,
            reregistration_ms: self
                .reclaim_until
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64)
                .unwrap_or(0),
            nodes,
        }
    }
}

fn skip_keys(r: &mut Reader<'_>, n: usize) -> Result<(), FrameError> {
    for _ in 0..n {
        r.str("key")?;
    }
    Ok(())
}
