//! Errors of the cache API.

use keyward_dbc::DbcError;
use keyward_ownership::OwnershipError;
use thiserror::Error;

/// Everything a cache call can fail with. Variants say whether the outcome of a write is known:
/// [`CacheError::Indeterminate`] means the write may or may not have been applied.
#[derive(Debug, Error)]
pub enum CacheError {
    #[error("ownership: {0}")]
    Ownership(#[from] OwnershipError),
    #[error("database: {0}")]
    Db(#[from] DbcError),
    /// The table was not registered on this node (every node registers the same tables).
    #[error("table {0:?} is not registered with this cache")]
    UnknownTable(String),
    /// A record or key does not fit the table definition.
    #[error("invalid input for table {table:?}: {reason}")]
    InvalidInput { table: String, reason: String },
    /// No update function of this name is registered for the table.
    #[error("no update function {name:?} registered for table {table:?}")]
    UnknownUpdate { table: String, name: String },
    /// The update function refused the change.
    #[error("update {name:?} failed: {message}")]
    UpdateFailed { name: String, message: String },
    /// A serde value could not be mapped to or from a record.
    #[error("mapping {table:?} records to or from a Rust type: {reason}")]
    Mapping { table: String, reason: String },
    /// The write-ahead journal could not make the write durable; it was not acknowledged.
    #[error("journal commit failed: {0}")]
    Journal(String),
    /// The key's owner could not be reached or answered with an error.
    #[error("cache peer {addr}: {message}")]
    Peer { addr: String, message: String },
    /// The connection broke after a write was sent: it may or may not have been applied.
    #[error("outcome unknown: connection to cache peer {addr} broke after the request was sent")]
    Indeterminate { addr: String },
    /// The owner announced no `cache` endpoint.
    #[error("owner {node} of {key:?} announces no cache endpoint")]
    NoEndpoint { node: String, key: String },
    /// Ownership of the key was lost while the call ran; a write was not acknowledged.
    #[error("ownership of {key:?} was lost during the call")]
    OwnershipLost { key: String },
    /// The call could not be routed in time (owner moving, lease of a dead owner not yet over).
    #[error("timed out after {millis} ms routing {key:?}")]
    Timeout { key: String, millis: u64 },
    /// A journal's registry row carries a newer fencing token than the one this node was just
    /// granted for it: the ownership group's tokens went back (its members' data directories
    /// were reset), or another group writes to this database. Writes are refused rather than
    /// risk overwriting newer rows; a group must keep its data directories (its epoch) for as
    /// long as the database keeps rows fenced by it, and one database serves one group.
    #[error(
        "journal {journal}: the database holds fencing token {stored}, newer than this node's \
         {given}: the ownership group's tokens went back (data directories reset?) or another \
         group shares this database"
    )]
    TokensWentBack {
        journal: String,
        stored: i64,
        given: i64,
    },
    /// The cache was shut down or aborted.
    #[error("the cache is shut down")]
    Closed,
    #[error("cache peer listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid cache config: {0}")]
    Config(String),
}

pub type Result<T, E = CacheError> = std::result::Result<T, E>;

impl CacheError {
    pub(crate) fn invalid(table: &str, reason: impl Into<String>) -> Self {
        CacheError::InvalidInput {
            table: table.to_owned(),
            reason: reason.into(),
        }
    }
}
