//! Errors of the Coordinator API, shared by the in-process and network implementations.

use thiserror::Error;

/// Everything that can go wrong when talking to the ownership service.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OwnershipError {
    /// A key is not a valid port name (empty, too long, or without a `<domain>/` prefix).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// `send` to a key that nobody owns.
    #[error("no owner for key {key:?}")]
    NoOwner { key: String },
    /// `claim_wait` or `wait_for_release` ran out of time.
    #[error("timed out after {millis} ms waiting for {what}")]
    Timeout { what: String, millis: u64 },
    /// This node would exceed the server's per-node port limit.
    #[error("port limit reached: node holds {held} ports, limit is {limit}")]
    PortLimit { held: usize, limit: usize },
    /// The session's lease ended (or it was closed); its guards are lost.
    #[error("session {node} is closed or its lease expired")]
    SessionClosed { node: String },
    /// The ownership server could not be reached or the connection broke.
    #[error("ownership service unavailable: {0}")]
    Unavailable(String),
    /// The server refused the cluster secret.
    #[error("authentication refused by ownership server {0}")]
    AuthRefused(String),
    /// TLS could not be set up: unreadable certificate files, or a server certificate that
    /// the configured CA did not sign or that names another host.
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer broke the wire protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A call that only makes sense in one mode (e.g. `relet` in persistent mode).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
}

pub type Result<T, E = OwnershipError> = std::result::Result<T, E>;
