//! Server groups: members elect one master by quorum through openraft. Raft agrees on the
//! leader and its term, nothing else: the term is the master's epoch (the high bits of its
//! tokens), and port state never leaves the master's RAM.
//!
//! A member serves as master only while a quorum has acknowledged its leadership within the
//! master lease; a newly elected leader waits out that lease (plus the checking interval) before
//! serving, so that the old master has surely stopped, and then opens a re-registration window
//! as long as the longest client lease before granting ports nobody re-registered.

mod network;
mod store;

use crate::client::ClientOptions;
use openraft::storage::Adaptor;
use openraft::{BasicNode, Raft, ServerState};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

openraft::declare_raft_types!(
    /// The election's Raft types: no application data, only membership and terms.
    pub TypeConfig
);

/// How a server takes part in a group.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// Every member's client address, this server's included; member ids are positions + 1.
    pub members: Vec<String>,
    /// This server's position in `members`.
    pub me: usize,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// A master stops serving when no quorum acknowledged it for this long.
    pub master_lease: Duration,
    /// An arbiter votes but never serves: it never starts an election, so it never leads. Two
    /// members plus an arbiter survive the loss of one member.
    pub arbiter: bool,
}

impl GroupSettings {
    pub fn new(members: Vec<String>, me: usize) -> Self {
        GroupSettings {
            members,
            me,
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(200),
            election_timeout_max: Duration::from_millis(400),
            master_lease: Duration::from_millis(300),
            arbiter: false,
        }
    }
}

/// What the election says about this member right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct View {
    /// Leader with a fresh quorum acknowledgement, in this term.
    pub leading: Option<u64>,
    /// Client address of the leader as far as this member knows.
    pub leader_addr: Option<String>,
}

pub(crate) struct Group {
    raft: Raft<TypeConfig>,
    me: u64,
    settings: GroupSettings,
    /// Where the last term this member served as master is kept.
    served_path: std::path::PathBuf,
}

impl Group {
    pub(crate) async fn start(
        settings: GroupSettings,
        data_dir: &std::path::Path,
        options: ClientOptions,
    ) -> Result<Arc<Group>, String> {
        if settings.me >= settings.members.len() {
            return Err(format!(
                "member index {} outside the {} members",
                settings.me,
                settings.members.len()
            ));
        }
        let store = store::Store::open(data_dir, settings.me as u64 + 1)?;
        let served_path = data_dir.join("ownership-served-term");
        let (log_store, state_machine) = Adaptor::new(store);
        let config = openraft::Config {
            cluster_name: "keyward-ownership".into(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_timeout_min.as_millis() as u64,
            election_timeout_max: settings.election_timeout_max.as_millis() as u64,
            // An arbiter votes but never campaigns, so it never leads.
            enable_elect: !settings.arbiter,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("raft config: {e}"))?;
        let me = settings.me as u64 + 1;
        let raft = Raft::new(
            me,
            Arc::new(config),
            network::Network { options },
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| format!("raft start: {e}"))?;
        let members: BTreeMap<u64, BasicNode> = settings
            .members
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64 + 1, BasicNode::new(a)))
            .collect();
        // Every member proposes the same initial membership; on an initialized member this is
        // refused, which is fine.
        // Not the arbiter: it learns the membership from the leader, and must never lead.
        if settings.arbiter {
            return Ok(Arc::new(Group {
                raft,
                me,
                settings,
                served_path,
            }));
        }
        if let Err(e) = raft.initialize(members).await {
            tracing::debug!(error = %e, "group already initialized");
        }
        Ok(Arc::new(Group {
            raft,
            me,
            settings,
            served_path,
        }))
    }

    /// Whether this member may serve as master of `term`: never twice in one term, because a
    /// member that restarts can resume leadership in the term it had, and a second life with
    /// the same epoch would grant tokens again from the bottom of that epoch. The term is
    /// recorded durably before serving; when it was served already, a new election is started
    /// so that the next term is fresh.
    pub(crate) async fn claim_term(&self, term: u64) -> bool {
        let served = std::fs::read_to_string(&self.served_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if term <= served {
            tracing::warn!(term, served, "term already served; starting a new election");
            let _ = self.raft.trigger().elect().await;
            return false;
        }
        let write = || -> std::io::Result<()> {
            let tmp = self.served_path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, format!("{term}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.served_path)
        };
        match write() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot record the served term; not serving");
                false
            }
        }
    }

    pub(crate) fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    pub(crate) fn view(&self) -> View {
        let m = self.raft.metrics().borrow().clone();
        let fresh = m
            .millis_since_quorum_ack
            .is_some_and(|ms| (ms as u128) < self.settings.master_lease.as_millis());
        let leading =
            (m.state == ServerState::Leader && m.current_leader == Some(self.me) && fresh)
                .then_some(m.current_term);
        let leader_addr = m
            .current_leader
            .and_then(|id| self.settings.members.get(id as usize - 1).cloned());
        View {
            leading,
            leader_addr,
        }
    }

    /// Answers a raft message from a peer; the reply is JSON of `Result<Response, RaftError>`.
    pub(crate) async fn handle_rpc(&self, k: u8, body: &[u8]) -> Result<Vec<u8>, String> {
        use crate::frame::kind;
        let bad = |e: serde_json::Error| e.to_string();
        match k {
            kind::RAFT_VOTE => {
                let req = serde_json::from_slice(body).map_err(bad)?;
                serde_json::to_vec(&self.raft.vote(req).await).map_err(bad)
            }
            kind::RAFT_APPEND => {
                let req = serde_json::from_slice(body).map_err(bad)?;
                serde_json::to_vec(&self.raft.append_entries(req).await).map_err(bad)
            }
            kind::RAFT_SNAPSHOT => {
                let req = serde_json::from_slice(body).map_err(bad)?;
                serde_json::to_vec(&self.raft.install_snapshot(req).await).map_err(bad)
            }
            other => Err(format!("not a raft message: {other:#04x}")),
        }
    }

    pub(crate) async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
