//! The one error type of the migrations CLI, and the documented exit codes it maps to.

use thiserror::Error;

/// Exit codes of `keyward migrate` and `keyward-migrate` (documented in README.md).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const CONFIG: i32 = 3;
    pub const UNAVAILABLE: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const CONFLICT: i32 = 6;
    pub const INTEGRITY: i32 = 7;
    pub const PERMISSION: i32 = 8;
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug, Error)]
pub enum MigrateError {
    /// The command line is wrong (bad flag combination, bad version text…).
    #[error("usage: {0}")]
    Usage(String),
    /// Configuration is missing or wrong (no URL, unreadable migration folder…).
    #[error("config: {0}")]
    Config(String),
    /// A migration file is malformed (bad name, bad JSON, duplicate version…).
    #[error("migration file {file}: {message}")]
    BadFile { file: String, message: String },
    /// The database or the ownership service cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Something named does not exist (a version, a down file, a table).
    #[error("not found: {0}")]
    NotFound(String),
    /// Another migrator holds the lock `migrate/<db>`.
    #[error("lock {key} is held by {holder}")]
    LockHeld { key: String, holder: String },
    /// The lock was lost while working (lease not renewed in time); work stopped.
    #[error("lock {key} was lost: {reason}")]
    LockLost { key: String, reason: String },
    /// The history has a dirty migration: fix the database by hand, then run `repair`.
    #[error("migration {version} ({name}) is dirty: a previous run failed part-way; inspect the database, then run `repair` (add --mark-applied if you completed it by hand)")]
    Dirty { version: String, name: String },
    /// Applied migrations no longer match their files, or history and files disagree.
    #[error("history conflict: {0}")]
    Conflict(String),
    /// A migration script failed (after the history was marked as needed).
    #[error("migration {version} ({name}) failed: {message}")]
    MigrationFailed {
        version: String,
        name: String,
        message: String,
        /// True when the database may hold part of the migration (no transaction).
        dirty: bool,
    },
    /// Copy finished but the two sides differ.
    #[error("integrity: {0}")]
    Integrity(String),
    /// The database refused for lack of rights.
    #[error("permission denied: {0}")]
    Permission(String),
    /// Ctrl-C or a requested stop; progress so far is kept (checkpoints, history).
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A database error without a more precise class.
    #[error("database: {0}")]
    Db(#[from] keyward_dbc::DbcError),
    #[error("ownership: {0}")]
    Ownership(#[from] keyward_ownership::OwnershipError),
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl MigrateError {
    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        use keyward_dbc::DbcError as D;
        match self {
            MigrateError::Usage(_) => exit::USAGE,
            MigrateError::Config(_) | MigrateError::BadFile { .. } => exit::CONFIG,
            MigrateError::Unavailable(_) => exit::UNAVAILABLE,
            MigrateError::NotFound(_) => exit::NOT_FOUND,
            MigrateError::LockHeld { .. }
            | MigrateError::LockLost { .. }
            | MigrateError::Dirty { .. }
            | MigrateError::Conflict(_) => exit::CONFLICT,
            MigrateError::MigrationFailed { .. } | MigrateError::Other(_) => exit::FAILURE,
            MigrateError::Integrity(_) => exit::INTEGRITY,
            MigrateError::Permission(_) => exit::PERMISSION,
            MigrateError::Interrupted(_) => exit::INTERRUPTED,
            MigrateError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                std::io::ErrorKind::PermissionDenied => exit::PERMISSION,
                _ => exit::FAILURE,
            },
            MigrateError::Ownership(e) => match e {
                keyward_ownership::OwnershipError::Unavailable(_)
                | keyward_ownership::OwnershipError::AuthRefused(_) => exit::UNAVAILABLE,
                keyward_ownership::OwnershipError::Timeout { .. } => exit::CONFLICT,
                _ => exit::FAILURE,
            },
            MigrateError::Db(e) => match e {
                D::InvalidUrl { .. } => exit::CONFIG,
                D::Connection { .. } | D::Timeout { .. } => exit::UNAVAILABLE,
                D::NotFound { .. } => exit::NOT_FOUND,
                D::Constraint { .. } | D::Fenced { .. } => exit::CONFLICT,
                _ => exit::FAILURE,
            },
        }
    }

    /// A short machine-readable class, used in `--json` error output.
    pub fn kind(&self) -> &'static str {
        match self.exit_code() {
            exit::USAGE => "usage",
            exit::CONFIG => "config",
            exit::UNAVAILABLE => "unavailable",
            exit::NOT_FOUND => "not_found",
            exit::CONFLICT => "conflict",
            exit::INTEGRITY => "integrity",
            exit::PERMISSION => "permission",
            exit::INTERRUPTED => "interrupted",
            _ => "failure",
        }
    }

    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        MigrateError::Io {
            path: path.to_string(),
            source,
        }
    }
}

pub type Result<T, E = MigrateError> = std::result::Result<T, E>;
