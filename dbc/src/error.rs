//! The one error type of DBC. Display never shows a password: every URL that reaches an error
//! message goes through [`redact_url`] first.

use crate::BackendKind;

pub type Result<T, E = DbcError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DbcError {
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot connect to {url}: {message}")]
    Connection { url: String, message: String },
    #[error("timed out after {after_ms} ms during {operation}")]
    Timeout { operation: String, after_ms: u64 },
    #[error("constraint {constraint} violated: {message}")]
    Constraint { constraint: String, message: String },
    #[error("not found: {what}")]
    NotFound { what: String },
    #[error("type mismatch for {field}: expected {expected}, got {got}")]
    TypeMismatch {
        field: String,
        expected: String,
        got: String,
    },
    #[error(
        "fenced out on table {table}: stored token {stored} is newer than given token {given}"
    )]
    Fenced {
        table: String,
        stored: i64,
        given: i64,
    },
    #[error("{operation} is not supported by {backend:?}")]
    Unsupported {
        backend: BackendKind,
        operation: String,
    },
    #[error("invalid input: {message}")]
    InvalidInput { message: String },
    #[error("{backend:?} error: {message}")]
    Backend {
        backend: BackendKind,
        message: String,
    },
}

impl DbcError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        DbcError::InvalidInput {
            message: message.into(),
        }
    }
    pub(crate) fn unsupported(backend: BackendKind, operation: impl Into<String>) -> Self {
        DbcError::Unsupported {
            backend,
            operation: operation.into(),
        }
    }
    pub(crate) fn backend(backend: BackendKind, message: impl std::fmt::Display) -> Self {
        DbcError::Backend {
            backend,
            message: message.to_string(),
        }
    }
}

/// The URL with any password replaced by `***`. Unparseable URLs are cut at the last `@`
/// so that a password in a malformed URL is not shown either.
pub fn redact_url(raw: &str) -> String {
    if let Ok(mut u) = url::Url::parse(raw) {
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        return u.to_string();
    }
    match (raw.find("://"), raw.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &raw[..s], &raw[at + 1..]),
        (None, Some(at)) => format!("***@{}", &raw[at + 1..]),
        _ => raw.to_string(),
    }
}

/// Maps a sqlx error, keeping constraint names and never the connection URL.
pub(crate) fn from_sqlx(backend: BackendKind, e: sqlx::Error) -> DbcError {
    match e {
        sqlx::Error::Database(db) => {
            let msg = db.message().to_string();
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let constraint = db.constraint().map(str::to_string);
            let unique = db.is_unique_violation();
            let fk = db.is_foreign_key_violation();
            let check = db.is_check_violation();
            if unique || fk || check || constraint.is_some() {
                DbcError::Constraint {
                    constraint: constraint.unwrap_or_else(|| {
                        if unique {
                            format!("unique ({code})")
                        } else {
                            format!("check ({code})")
                        }
                    }),
                    message: msg,
                }
            } else if is_size_error(backend, &code) {
                DbcError::invalid(format!("value too large for its column: {msg}"))
            } else if is_missing_table(backend, &code, &msg) {
                DbcError::NotFound { what: msg }
            } else {
                DbcError::Backend {
                    backend,
                    message: format!("{msg} (code {code})"),
                }
            }
        }
        sqlx::Error::RowNotFound => DbcError::NotFound { what: "row".into() },
        sqlx::Error::PoolTimedOut => DbcError::Timeout {
            operation: "acquiring a pooled connection".into(),
            after_ms: 0,
        },
        sqlx::Error::ColumnDecode { index, source } => DbcError::TypeMismatch {
            field: index,
            expected: "decodable column".into(),
            got: source.to_string(),
        },
        other => DbcError::backend(backend, other),
    }
}

fn is_size_error(backend: BackendKind, code: &str) -> bool {
    match backend {
        // 1406 data too long, 1153 packet too large
        BackendKind::Mysql => code == "22001" || code == "1406" || code == "08S01",
        BackendKind::Postgres => code == "22001" || code == "54000",
        BackendKind::Sqlite => code == "18",
        _ => false,
    }
}

fn is_missing_table(backend: BackendKind, code: &str, msg: &str) -> bool {
    match backend {
        BackendKind::Postgres => code == "42P01",
        BackendKind::Mysql => code == "42S02",
        BackendKind::Sqlite => msg.contains("no such table"),
        _ => false,
    }
}
