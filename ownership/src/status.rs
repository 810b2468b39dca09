//! What `keyward status` shows about the ownership service.

use crate::types::Mode;
use serde::{Deserialize, Serialize};

/// A server's view of the group and its sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Group members' addresses (just this server when it runs alone).
    pub members: Vec<String>,
    /// The member serving as master, if any.
    pub master: Option<String>,
    /// The master's epoch: the high bits of every token it grants.
    pub epoch: u64,
    /// Live sessions.
    pub sessions: usize,
    /// Registered ports.
    pub ports: usize,
    pub max_ports_per_node: usize,
    /// Milliseconds left in the re-registration window after a restart (0 when none).
    pub reregistration_ms: u64,
    /// One entry per live session, sorted by node id.
    pub nodes: Vec<NodeStats>,
}

/// One node's session as the master sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    pub node: String,
    pub mode: Mode,
    pub lease_ms: u64,
    pub ports: usize,
    /// Whether a WaitMsg channel is attached right now.
    pub push_channel: bool,
}
