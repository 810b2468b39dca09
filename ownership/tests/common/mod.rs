//! Session settings shared by the ownership tests.
#![allow(dead_code)]

use keyward_ownership::{Endpoints, Mode, NodeId, SessionConfig};
use std::time::Duration;

/// A persistent session with a 3 s lease and a 0.5 s margin that announces no endpoints: the
/// group and TLS tests' clients.
pub fn session(node: &str) -> SessionConfig {
    SessionConfig {
        node_id: Some(NodeId::from(node)),
        endpoints: Endpoints::new(),
        mode: Mode::Persistent,
        lease: Duration::from_millis(3_000),
        margin: Duration::from_millis(500),
    }
}

/// A session that announces a `cache` endpoint, in `mode`, with a margin of a fifth of the
/// lease.
pub fn session_with(node: &str, mode: Mode, lease_ms: u64) -> SessionConfig {
    let mut endpoints = Endpoints::new();
    endpoints.insert("cache".into(), format!("{node}.example:7401"));
    SessionConfig {
        node_id: Some(NodeId::from(node)),
        endpoints,
        mode,
        lease: Duration::from_millis(lease_ms),
        margin: Duration::from_millis(lease_ms / 5),
    }
}
