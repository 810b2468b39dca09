//! Plain data shared by every Coordinator implementation: node ids, owners, events, settings.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A fencing token: larger than every token granted for the same key before.
pub type Token = i64;

/// Longest key accepted, in bytes (DESIGN.md section 2).
pub const MAX_KEY_BYTES: usize = 1024;

/// A cluster-unique node id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    /// A fresh random id, used when the config names none.
    pub fn random() -> Self {
        NodeId(uuid::Uuid::new_v4().simple().to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_owned())
    }
}

/// Named endpoints a node announces at session start (`cache` → `127.0.0.1:7401`, …).
pub type Endpoints = BTreeMap<String, String>;

/// Who owns a key right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub node: NodeId,
    pub endpoints: Endpoints,
    pub token: Token,
}

impl Owner {
    /// The owner's endpoint of the given name, if it announced one.
    pub fn endpoint(&self, name: &str) -> Option<&str> {
        self.endpoints.get(name).map(String::as_str)
    }
}

/// A node as QueryNode reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: NodeId,
    pub endpoints: Endpoints,
    /// Number of ports the node holds.
    pub ports: usize,
}

/// Something pushed to a node: a message for a key it owns, or a release it asked to hear of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A blob sent to `key`, delivered to its owner (this node).
    Message {
        key: String,
        from: NodeId,
        payload: Bytes,
    },
    /// `key` was released; this node claimed it with notify and was refused before.
    Released { key: String },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Message { key, .. } | Event::Released { key } => key,
        }
    }
}

/// How the session keeps its lease alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One long connection; heartbeats on it renew the lease (the default).
    #[default]
    Persistent,
    /// Short connections; the application calls `relet` to renew the lease.
    Lease,
}

/// Settings of one node's session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// This node's id; random when `None`.
    pub node_id: Option<NodeId>,
    /// Endpoints announced to other nodes.
    pub endpoints: Endpoints,
    pub mode: Mode,
    /// How long the server keeps the session's ports without a renewal.
    pub lease: Duration,
    /// Subtracted from the lease end on the client side, to absorb clock rate differences and
    /// the delay between the server's release and the client noticing.
    pub margin: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            node_id: None,
            endpoints: Endpoints::new(),
            mode: Mode::Persistent,
            lease: Duration::from_secs(10),
            margin: Duration::from_secs(1),
        }
    }
}

impl SessionConfig {
    /// The interval at which persistent mode renews: a third of the lease, so that two
    /// renewals can be lost before the lease is at risk.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(1))
    }
}

/// Checks that a key is a valid port name: UTF-8 (by type), 1..=1024 bytes, `<domain>/<rest>`.
pub fn validate_key(key: &str) -> crate::Result<()> {
    let bad = |reason| {
        Err(crate::OwnershipError::InvalidKey {
            key: key.chars().take(80).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad("longer than 1024 bytes");
    }
    match key.split_once('/') {
        Some((domain, rest)) if !domain.is_empty() && !rest.is_empty() => Ok(()),
        _ => bad("not of the form <domain>/<rest>"),
    }
}

/// Percent-encodes one primary-key component so that it can stand inside a key: `/`, `%` and
/// control characters are escaped, everything else (including any Unicode) is kept.
pub fn encode_key_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        if c == '/' || c == '%' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(validate_key("cache/db/t/1").is_ok());
        assert!(validate_key("vfs/卷/路径").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key("nodomain").is_err());
        assert!(validate_key("/x").is_err());
        assert!(validate_key("x/").is_err());
        assert!(validate_key(&format!("a/{}", "x".repeat(1023))).is_err());
        assert!(validate_key(&format!("a/{}", "x".repeat(1022))).is_ok());
    }

    #[test]
    fn key_parts_escape_separators() {
        assert_eq!(encode_key_part("a/b%c"), "a%2Fb%25c");
        assert_eq!(encode_key_part("Ünï\n"), "Ünï%0A");
    }
}
