//! The VFS's typed errors: one variant per failure class, each mapped to a CLI exit code.

use thiserror::Error;

/// Everything a VFS call can fail with. Integrity failures (wrong key, tampering, truncation,
/// reordering) are distinct variants so that callers and the CLI can tell them apart; none of
/// them ever comes with plaintext.
#[derive(Debug, Error)]
pub enum VfsError {
    /// No master key in the keyring has the key id the file was sealed with, or a passphrase
    /// did not open the keyring.
    #[error("wrong key: {what}")]
    WrongKey { what: String },
    /// Authentication failed: the ciphertext or header was modified.
    #[error("tampered data in {path:?}: {what}")]
    Tampered { path: String, what: String },
    /// The file ends early (at a segment boundary or inside one).
    #[error("truncated file {path:?}: {what}")]
    Truncated { path: String, what: String },
    /// A segment authenticates, but at another index (or with another last-segment mark)
    /// than where it was found: segments were reordered, swapped or duplicated.
    #[error("reordered or swapped segment in {path:?}: segment found at index {found} was sealed for index {sealed_for}")]
    Reordered {
        path: String,
        found: u64,
        sealed_for: u64,
    },
    /// The header names a format version this build does not know.
    #[error(
        "unknown VFS format version {version} in {path:?} (this build reads version {supported})"
    )]
    UnknownVersion {
        path: String,
        version: u16,
        supported: u16,
    },
    /// A path that would leave the volume (`..` above the root).
    #[error("path {path:?} escapes the volume")]
    PathEscape { path: String },
    /// A path that is not acceptable for another reason (empty, NUL, reserved name, too long).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    /// Another node (or another handle of this node) owns the file's key: writing is refused.
    #[error("not owner of {path:?}: the key is held by node {owner}")]
    NotOwner { path: String, owner: String },
    /// This node's ownership of the file ended before the commit (lease lost): nothing was
    /// switched in.
    #[error("ownership of {path:?} was lost before commit")]
    OwnershipLost { path: String },
    /// Storage refused a write fenced by a stale token: a newer owner has written.
    #[error("write to {path:?} refused by storage: fencing token {given} is older than {stored}")]
    Fenced {
        path: String,
        stored: i64,
        given: i64,
    },
    #[error("not found: {path:?}")]
    NotFound { path: String },
    #[error("already exists: {path:?}")]
    AlreadyExists { path: String },
    #[error("I/O error on {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Permission denied by the local file system.
    #[error("permission denied on {path:?}: {source}")]
    Permission {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The key file or keyring is malformed, missing or unusable.
    #[error("key error: {0}")]
    Key(String),
    /// A configuration value is invalid.
    #[error("invalid VFS configuration: {0}")]
    Config(String),
    /// A call that does not fit the handle (e.g. an offset beyond the supported size).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The ownership service failed (unreachable, session closed…).
    #[error("ownership service: {0}")]
    Ownership(#[from] keyward_ownership::OwnershipError),
    /// The DBC blob backend failed.
    #[error("database backend: {0}")]
    Backend(String),
}

impl VfsError {
    /// Process exit code for the CLI: 4 unavailable, 5 not found, 6 conflict or not owner,
    /// 7 integrity failure (wrong key, tampered, truncated, reordered, unknown version),
    /// 8 permission, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        use keyward_ownership::OwnershipError as O;
        match self {
            VfsError::WrongKey { .. }
            | VfsError::Tampered { .. }
            | VfsError::Truncated { .. }
            | VfsError::Reordered { .. }
            | VfsError::UnknownVersion { .. } => 7,
            VfsError::NotFound { .. } => 5,
            VfsError::NotOwner { .. }
            | VfsError::OwnershipLost { .. }
            | VfsError::Fenced { .. }
            | VfsError::AlreadyExists { .. } => 6,
            VfsError::Permission { .. } | VfsError::PathEscape { .. } => 8,
            VfsError::Ownership(
                O::Unavailable(_) | O::Timeout { .. } | O::SessionClosed { .. },
            ) => 4,
            VfsError::Backend(_) => 4,
            VfsError::Ownership(_)
            | VfsError::InvalidPath { .. }
            | VfsError::Io { .. }
            | VfsError::Key(_)
            | VfsError::Config(_)
            | VfsError::InvalidArgument(_) => 1,
        }
    }

    /// True for the failures that mean "the bytes are not what was sealed".
    pub fn is_integrity(&self) -> bool {
        self.exit_code() == 7
    }

    /// Wraps an I/O error with the path it happened on, sorting out the kinds that have
    /// their own variant.
    pub(crate) fn io(path: impl Into<String>, source: std::io::Error) -> VfsError {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::NotFound => VfsError::NotFound { path },
            std::io::ErrorKind::PermissionDenied => VfsError::Permission { path, source },
            std::io::ErrorKind::AlreadyExists => VfsError::AlreadyExists { path },
            _ => VfsError::Io { path, source },
        }
    }
}

pub type Result<T, E = VfsError> = std::result::Result<T, E>;
