//! The crate's error type. Every variant maps to one stable `code` and HTTP status, so the HTTP
//! layer and forwarded requests agree on what went wrong.

use thiserror::Error;

/// Everything that can go wrong in the search service.
#[derive(Debug, Error)]
pub enum SearchError {
    /// The body is not valid JSON (syntax error or truncated).
    #[error("malformed JSON: {0}")]
    BadJson(String),
    /// A field name that the request shape or the index schema does not know.
    #[error("unknown field: {0}")]
    UnknownField(String),
    /// A value of the wrong JSON type for its field.
    #[error("wrong type: {0}")]
    InvalidType(String),
    /// Any other malformed request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("query too long: {len} bytes, limit is {limit}")]
    QueryTooLong { len: usize, limit: usize },
    #[error("page too deep: offset + limit = {depth}, limit is {limit}")]
    PageTooDeep { depth: usize, limit: usize },
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),
    #[error("index {0:?} not found")]
    IndexNotFound(String),
    #[error("index {0:?} already exists")]
    IndexExists(String),
    #[error("document {0:?} not found")]
    DocumentNotFound(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("missing or wrong API key")]
    Unauthorized,
    #[error("this API key may not {0}")]
    Forbidden(&'static str),
    /// This node lost a shard's ownership while serving (a newer owner fenced it); retry.
    #[error("shard {shard} is no longer owned by this node: {reason}")]
    NotOwner { shard: String, reason: String },
    /// The shard owner could not be reached, or the system of record failed; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("index engine error: {0}")]
    Engine(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SearchError {
    /// The stable machine-readable code of the error shape `{"error": {"code", "message"}}`.
    pub fn code(&self) -> &'static str {
        match self {
            SearchError::BadJson(_) => "bad_json",
            SearchError::UnknownField(_) => "unknown_field",
            SearchError::InvalidType(_) => "invalid_type",
            SearchError::InvalidRequest(_) => "invalid_request",
            SearchError::QueryTooLong { .. } => "query_too_long",
            SearchError::PageTooDeep { .. } => "page_too_deep",
            SearchError::InvalidCursor(_) => "invalid_cursor",
            SearchError::IndexNotFound(_) => "index_not_found",
            SearchError::IndexExists(_) => "index_exists",
            SearchError::DocumentNotFound(_) => "document_not_found",
            SearchError::PayloadTooLarge => "payload_too_large",
            SearchError::Unauthorized => "unauthorized",
            SearchError::Forbidden(_) => "forbidden",
            SearchError::NotOwner { .. } => "not_owner",
            SearchError::Unavailable(_) => "unavailable",
            SearchError::Storage(_) => "storage_error",
            SearchError::Engine(_) => "engine_error",
            SearchError::Internal(_) => "internal",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            SearchError::BadJson(_)
            | SearchError::UnknownField(_)
            | SearchError::InvalidType(_)
            | SearchError::InvalidRequest(_)
            | SearchError::QueryTooLong { .. }
            | SearchError::PageTooDeep { .. }
            | SearchError::InvalidCursor(_) => 400,
            SearchError::Unauthorized => 401,
            SearchError::Forbidden(_) => 403,
            SearchError::IndexNotFound(_) | SearchError::DocumentNotFound(_) => 404,
            SearchError::IndexExists(_) => 409,
            SearchError::PayloadTooLarge => 413,
            SearchError::NotOwner { .. } | SearchError::Unavailable(_) => 503,
            SearchError::Storage(_) | SearchError::Engine(_) | SearchError::Internal(_) => 500,
        }
    }

    /// Rebuilds an error received from another node from its code and message.
    pub fn from_remote(status: u16, code: &str, message: String) -> SearchError {
        match code {
            "bad_json" => SearchError::BadJson(message),
            "unknown_field" => SearchError::UnknownField(message),
            "invalid_type" => SearchError::InvalidType(message),
            "invalid_request" | "query_too_long" | "page_too_deep" => {
                SearchError::InvalidRequest(message)
            }
            "invalid_cursor" => SearchError::InvalidCursor(message),
            "index_not_found" => SearchError::IndexNotFound(message),
            "document_not_found" => SearchError::DocumentNotFound(message),
            "index_exists" => SearchError::IndexExists(message),
            _ if status >= 500 || status == 401 || status == 403 => {
                SearchError::Unavailable(format!("shard owner answered {status} {code}: {message}"))
            }
            _ => SearchError::InvalidRequest(message),
        }
    }
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(e: tantivy::TantivyError) -> Self {
        SearchError::Engine(e.to_string())
    }
}

/// Result alias of this crate.
pub type Result<T, E = SearchError> = std::result::Result<T, E>;

/// Maps a serde_json error to the request error class it stands for.
pub(crate) fn classify_json(e: &serde_json::Error) -> SearchError {
    use serde_json::error::Category;
    let msg = e.to_string();
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => SearchError::BadJson(msg),
        Category::Data => {
            if msg.starts_with("unknown field") || msg.starts_with("unknown variant") {
                SearchError::UnknownField(msg)
            } else if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
                SearchError::InvalidType(msg)
            } else {
                SearchError::InvalidRequest(msg)
            }
        }
    }
}
