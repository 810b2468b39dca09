//! The node's data routes for clients that do not link the crate: a key-value table through
//! the write-back cache (`/kv/{key}`) and files on the node's VFS volume (`/files/{path}`).
//! Both go through the same ownership rules as the library calls: a kv write is served by the
//! key's owner (forwarded one hop when that is another node) and acknowledged only once its
//! journal entry is durable; a file is written only while this node owns `vfs/<volume>/<path>`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keyward_cache::{CacheError, RawTable, SharedRecord, TableOptions};
use keyward_dbc::{Field, FieldType, TableDef, Value};
use keyward_vfs::{Vfs, VfsError};
use serde_json::json;

/// The table behind `/kv`: one text key, one JSON value.
pub const KV_TABLE: &str = "kw_kv";

/// Defines the kv table on this node's cache and registers its named updates. Every node
/// registers the same ones, as the cache requires.
pub async fn kv_table(cache: &keyward_cache::Cache) -> Result<RawTable, CacheError> {
    let def = TableDef {
        name: KV_TABLE.into(),
        fields: vec![
            Field::new("k", FieldType::Text),
            Field::new("v", FieldType::Json),
        ],
        primary_key: vec!["k".into()],
    };
    let table = cache.raw_table(def, TableOptions::default()).await?;
    // `incr` adds `by` to a numeric value at the owner, atomically: concurrent increments from
    // many nodes end exact.
    table.register_update("incr", |current, arg| {
        let by = arg
            .get("by")
            .and_then(|b| b.as_i64())
            .ok_or_else(|| "incr needs {\"by\": <integer>}".to_string())?;
        let key = match current.and_then(|r| r.first()) {
            Some(Value::Text(k)) => k.clone(),
            _ => arg
                .get("key")
                .and_then(|k| k.as_str())
                .ok_or_else(|| "incr of an absent key needs its key".to_string())?
                .to_owned(),
        };
        let now = match current.and_then(|r| r.get(1)) {
            Some(Value::Json(v)) => v
                .as_i64()
                .ok_or_else(|| "incr of a value that is not an integer".to_string())?,
            _ => 0,
        };
        let next = now
            .checked_add(by)
            .ok_or_else(|| "incr overflows a 64-bit integer".to_string())?;
        Ok(Some(vec![
            Value::Text(key),
            Value::Json(Box::new(json!(next))),
        ]))
    });
    Ok(table)
}

#[derive(Clone)]
pub struct DataState {
    pub kv: Option<RawTable>,
    pub vfs: Option<Vfs>,
}

pub fn router(state: DataState) -> Router {
    Router::new()
        .route("/kv/{key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/kv/{key}/incr", post(kv_incr))
        .route(
            "/files/{*path}",
            get(file_get).put(file_put).delete(file_delete),
        )
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.to_string()}})),
    )
        .into_response()
}

fn not_running(part: &str) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_running",
        format!("{part} is not running on this node"),
    )
}

fn cache_error(e: CacheError) -> Response {
    let status = match &e {
        CacheError::InvalidInput { .. }
        | CacheError::UpdateFailed { .. }
        | CacheError::Mapping { .. }
        | CacheError::UnknownUpdate { .. } => StatusCode::BAD_REQUEST,
        CacheError::Timeout { .. } | CacheError::Indeterminate { .. } => {
            StatusCode::GATEWAY_TIMEOUT
        }
        CacheError::Closed | CacheError::OwnershipLost { .. } | CacheError::NoEndpoint { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, "cache", e)
}

fn vfs_error(e: VfsError) -> Response {
    let status = match &e {
        VfsError::NotFound { .. } => StatusCode::NOT_FOUND,
        VfsError::PathEscape { .. }
        | VfsError::InvalidPath { .. }
        | VfsError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        VfsError::NotOwner { .. } | VfsError::AlreadyExists { .. } | VfsError::Fenced { .. } => {
            StatusCode::CONFLICT
        }
        VfsError::OwnershipLost { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, "vfs", e)
}

/// The reply for a read or an update of one kv record: its JSON value, or 404 when absent.
fn kv_reply(key: &str, got: Result<Option<SharedRecord>, CacheError>) -> Response {
    match got {
        Ok(Some(rec)) => match rec.get(1) {
            Some(Value::Json(v)) => Json(json!({"key": key, "value": v})).into_response(),
            _ => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cache",
                "malformed kv record",
            ),
        },
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", format!("no key {key}")),
        Err(e) => cache_error(e),
    }
}

async fn kv_get(State(s): State<DataState>, Path(key): Path<String>) -> Response {
    let Some(kv) = &s.kv else {
        return not_running("the cache");
    };
    kv_reply(&key, kv.get(&[Value::Text(key.clone())]).await)
}

async fn kv_put(State(s): State<DataState>, Path(key): Path<String>, body: Bytes) -> Response {
    let Some(kv) = &s.kv else {
        return not_running("the cache");
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", e),
    };
    match kv
        .put(vec![Value::Text(key.clone()), Value::Json(Box::new(value))])
        .await
    {
        Ok(()) => Json(json!({"key": key, "stored": true})).into_response(),
        Err(e) => cache_error(e),
    }
}

async fn kv_delete(State(s): State<DataState>, Path(key): Path<String>) -> Response {
    let Some(kv) = &s.kv else {
        return not_running("the cache");
    };
    match kv.delete(&[Value::Text(key.clone())]).await {
        Ok(()) => Json(json!({"key": key, "deleted": true})).into_response(),
        Err(e) => cache_error(e),
    }
}

async fn kv_incr(State(s): State<DataState>, Path(key): Path<String>, body: Bytes) -> Response {
    let Some(kv) = &s.kv else {
        return not_running("the cache");
    };
    let mut arg: serde_json::Value = if body.is_empty() {
        json!({"by": 1})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", e),
        }
    };
    if let Some(o) = arg.as_object_mut() {
        o.insert("key".into(), json!(key));
    } else {
        return error(StatusCode::BAD_REQUEST, "bad_json", "expected {\"by\": n}");
    }
    kv_reply(
        &key,
        kv.update(&[Value::Text(key.clone())], "incr", arg).await,
    )
}

async fn file_get(State(s): State<DataState>, Path(path): Path<String>) -> Response {
    let Some(vfs) = &s.vfs else {
        return not_running("the vfs");
    };
    match vfs.read(&path).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => vfs_error(e),
    }
}

async fn file_put(State(s): State<DataState>, Path(path): Path<String>, body: Bytes) -> Response {
    let Some(vfs) = &s.vfs else {
        return not_running("the vfs");
    };
    match vfs.write(&path, &body).await {
        Ok(()) => Json(json!({"path": path, "bytes": body.len()})).into_response(),
        Err(e) => vfs_error(e),
    }
}

async fn file_delete(State(s): State<DataState>, Path(path): Path<String>) -> Response {
    let Some(vfs) = &s.vfs else {
        return not_running("the vfs");
    };
    match vfs.delete(&path).await {
        Ok(()) => Json(json!({"path": path, "deleted": true})).into_response(),
        Err(e) => vfs_error(e),
    }
}
