//! The HTTP API (axum): routes of DESIGN.md section 7 and the issue, API keys, the error
//! shape, and the internal routes one node uses to reach a shard's owner.

use crate::error::{classify_json, Result, SearchError};
use crate::node::{SearchService, FORWARDED};
use crate::query::SearchRequest;
use crate::schema::IndexDefinition;
use crate::shard::{Op, ShardQuery};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

/// Every route: method, path, summary. `/openapi.json` is generated from it, and a test checks
/// that each entry is served.
pub const ROUTES: &[(&str, &str, &str)] = &[
    (
        "get",
        "/health",
        "Liveness: always 200 while the process serves",
    ),
    ("get", "/openapi.json", "This description"),
    ("get", "/indexes", "List indexes"),
    (
        "post",
        "/indexes",
        "Create an index: {name, id_field, fields, shards?, user_dict?}",
    ),
    ("get", "/indexes/{name}", "An index definition"),
    ("delete", "/indexes/{name}", "Delete an index"),
    (
        "post",
        "/indexes/{name}/documents",
        "Add or replace documents (JSON array); ?wait=true waits until searchable",
    ),
    (
        "put",
        "/indexes/{name}/documents",
        "Partially update documents (fields merged into the stored ones)",
    ),
    (
        "post",
        "/indexes/{name}/documents/delete-batch",
        "Delete documents by id (JSON array of ids)",
    ),
    ("get", "/indexes/{name}/documents/{id}", "A stored document"),
    (
        "delete",
        "/indexes/{name}/documents/{id}",
        "Delete one document",
    ),
    (
        "post",
        "/indexes/{name}/search",
        "Search: {q, tags, ranges, sort, limit, offset, cursor, facets, highlight}",
    ),
    (
        "get",
        "/indexes/{name}/tags/{field}",
        "Every value of a tag field with its document count",
    ),
    (
        "get",
        "/indexes/{name}/stats",
        "Per-index and per-shard statistics",
    ),
    (
        "post",
        "/_kw/indexes/{name}/shards/{shard}/search",
        "Internal: search one shard on its owner",
    ),
    (
        "post",
        "/_kw/indexes/{name}/shards/{shard}/write",
        "Internal: write a batch to one shard on its owner",
    ),
    (
        "get",
        "/_kw/indexes/{name}/shards/{shard}/stats",
        "Internal: one shard's statistics",
    ),
];

impl IntoResponse for SearchError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self, "search request failed");
        }
        let body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        (status, Json(body)).into_response()
    }
}

type HttpResult<T> = std::result::Result<T, SearchError>;

fn body_json<T: DeserializeOwned>(body: std::result::Result<Bytes, BytesRejection>) -> Result<T> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            SearchError::PayloadTooLarge
        } else {
            SearchError::InvalidRequest(format!("could not read the body: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(SearchError::BadJson("empty body".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| classify_json(&e))
}

fn path<T>(p: std::result::Result<Path<T>, PathRejection>) -> Result<T> {
    p.map(|Path(t)| t)
        .map_err(|e| SearchError::InvalidRequest(format!("bad path: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WriteParams {
    #[serde(default)]
    wait: bool,
}

fn query<T: Default>(q: std::result::Result<Query<T>, QueryRejection>) -> Result<T> {
    q.map(|Query(t)| t).map_err(|e| {
        let m = e.body_text();
        if m.contains("unknown field") {
            SearchError::UnknownField(m)
        } else {
            SearchError::InvalidRequest(m)
        }
    })
}

/// The router of the search API over a service.
pub fn router(state: SearchService) -> Router {
    let limit = state.config().max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/indexes", get(list_indexes).post(create_index))
        .route("/indexes/{name}", get(get_index).delete(delete_index))
        .route(
            "/indexes/{name}/documents",
            post(add_documents).put(update_documents),
        )
        .route("/indexes/{name}/documents/delete-batch", post(delete_batch))
        .route(
            "/indexes/{name}/documents/{id}",
            get(get_document).delete(delete_document),
        )
        .route("/indexes/{name}/search", post(search))
        .route("/indexes/{name}/tags/{field}", get(tags))
        .route("/indexes/{name}/stats", get(stats))
        .route(
            "/_kw/indexes/{name}/shards/{shard}/search",
            post(shard_search),
        )
        .route(
            "/_kw/indexes/{name}/shards/{shard}/write",
            post(shard_write),
        )
        .route("/_kw/indexes/{name}/shards/{shard}/stats", get(shard_stats))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> Response {
    let body = json!({"error": {"code": "route_not_found", "message": "no such route"}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn method_not_allowed() -> Response {
    let body = json!({"error": {"code": "method_not_allowed", "message": "method not allowed on this route"}});
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// Whether `given` is one of `keys` (the node's own pages use the same check).
pub fn key_matches(given: &[u8], keys: &[String]) -> bool {
    // Every key is compared, in constant time each, so timing shows no prefix match.
    let mut any = subtle::Choice::from(0u8);
    for k in keys {
        any |= k.as_bytes().ct_eq(given);
    }
    any.into()
}

async fn auth(State(s): State<SearchService>, req: Request, next: Next) -> Response {
    let p = req.uri().path();
    if p == "/health" || p == "/openapi.json" {
        return next.run(req).await;
    }
    let cfg = s.config();
    let needs_write =
        req.method() != Method::GET && req.method() != Method::HEAD && !p.ends_with("/search");
    if cfg.read_keys.is_empty() && cfg.write_keys.is_empty() {
        if from_loopback(&req) {
            return next.run(req).await;
        }
        return SearchError::Forbidden(
            "be served without an API key from a non-loopback address (configure keys)",
        )
        .into_response();
    }
    let given = bearer(req.headers());
    let Some(given) = given else {
        return SearchError::Unauthorized.into_response();
    };
    if key_matches(given.as_bytes(), &cfg.write_keys) {
        return next.run(req).await;
    }
    if key_matches(given.as_bytes(), &cfg.read_keys) {
        if needs_write {
            return SearchError::Forbidden("write (it is a read key)").into_response();
        }
        return next.run(req).await;
    }
    SearchError::Unauthorized.into_response()
}

/// Whether the request came from a loopback address (served without keys when none are set).
pub fn from_loopback(req: &Request) -> bool {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(a)| a.ip().is_loopback())
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(h: &HeaderMap) -> Option<String> {
    let v = h.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

async fn health(State(s): State<SearchService>) -> Json<Value> {
    Json(json!({"status": "ok", "node": s.coordinator().node_id().to_string()}))
}

/// The OpenAPI description, generated from [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, p, summary) in ROUTES {
        let entry = paths.entry((*p).to_owned()).or_insert_with(|| json!({}));
        let params: Vec<Value> = p
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        entry[*method] = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "success"},
                "4XX": {"description": "{\"error\": {\"code\", \"message\"}}"}
            }
        });
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Keyward search", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    })
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

async fn list_indexes(State(s): State<SearchService>) -> HttpResult<Json<Value>> {
    let all = s.list_indexes().await?;
    Ok(Json(json!({"indexes": all})))
}

async fn create_index(
    State(s): State<SearchService>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> HttpResult<(StatusCode, Json<Value>)> {
    let def: IndexDefinition = body_json(body)?;
    let meta = s.create_index(def).await?;
    Ok((StatusCode::CREATED, Json(json!(meta))))
}

async fn get_index(
    State(s): State<SearchService>,
    p: std::result::Result<Path<String>, PathRejection>,
) -> HttpResult<Json<Value>> {
    let name = path(p)?;
    Ok(Json(json!(s.index(&name).await?)))
}

async fn delete_index(
    State(s): State<SearchService>,
    p: std::result::Result<Path<String>, PathRejection>,
) -> HttpResult<Json<Value>> {
    let name = path(p)?;
    s.delete_index(&name).await?;
    Ok(Json(json!({"deleted": name})))
}

fn doc_array(body: std::result::Result<Bytes, BytesRejection>) -> Result<Vec<Value>> {
    match body_json::<Value>(body)? {
        Value::Array(a) => Ok(a),
        other => Err(SearchError::InvalidType(format!(
            "expected a JSON array, got {}",
            crate::schema::json_kind(&other)
        ))),
    }
}

async fn add_documents(
    State(s): State<SearchService>,
    p: std::result::Result<Path<String>, PathRejection>,
    q: std::result::Result<Query<WriteParams>, QueryRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> HttpResult<Json<Value>> {
    write_documents(s, p, q, body, false).await
}

async fn update_documents(
    State(s): State<SearchService>,
    p: std::result::Result<Path<String>, PathRejection>,
    q: std::result::Result<Query<WriteParams>, QueryRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> HttpResult<Json<Value>> {
    write_documents(s, p, q, body, true).await
}

/// Add (replace whole documents) or update (merge fields): the two routes differ only there.
async fn write_documents(
    s: SearchService,
    p: std::result::Result<Path<String>, PathRejection>,
    q: std::result::Result<Query<WriteParams>, QueryRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
    update: bool,
) -> HttpResult<Json<Value>> {
    let name = path(p)?;
    let params = query(q)?;
    let docs = doc_array(body)?;
    Ok(Json(json!(
        s.add_documents(&name, docs, update, params.wait).await?
    )))
}

async fn delete_batch(
    State(s): State<SearchService>,
    p: std::result::Result<Path<String>, PathRejection>,
    q: std::result::Result<Query<WriteParams>, QueryRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> HttpResult<Json<Value>> {
    let name = path(p)?;
    let params = query(q)?;
    let ids = doc_array(body)?;
    Ok(Json(json!(
        s.delete_documents(&name, ids, params.wait).await?
    )))
}

async fn get_document(
    State(s): State<SearchService>,
    p: std::result::Result<Path<(String, String)>, PathRejection>,
) -> HttpResult<Json<Value>> {
    let (name, id) = path(p)?;
    Ok(Json(s.get_document(&name, &id).await?))
}

async fn delete_document(
    State(s): State<SearchService>,
    p: std::result::Result<Path<(String, String)>, PathRejection>,
    q: std::result::Result<Query<WriteParams>, QueryRejection>,
) -> HttpResult<Json<Value>> {
    let (name, id) = path(p)?;
    let params = query(q)?;
    Ok(Json(json!(
        s.delete_document(&name, &id, params.wait).await?
    )))
}

async fn search(
    State(s): State<SearchService>,
    p: std::result::Result<Path<String>, PathRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> HttpResult<Json<Value>> {
    let name = path(p)?;
    let req: SearchRequest = body_json(body)?;
    Ok(Json(json!(s.search(&name, req).await?)))
}

async fn tags(
    State(s): State<SearchService>,
    p: std::result::Result<Path<(String, String)>, PathRejection>,
) -> HttpResult<Json<Value>> {
    let (name, field) = path(p)?;
    let values = s.tag_values(&name, &field).await?;
    Ok(Json(json!({"field": field, "values": values})))
}

async fn stats(
    State(s): State<SearchService>,
    p: std::result::Result<Path<String>, PathRejection>,
) -> HttpResult<Json<Value>> {
    let name = path(p)?;
    Ok(Json(json!(s.stats(&name).await?)))
}

fn forwarded(h: &HeaderMap) -> bool {
    h.contains_key(FORWARDED)
}

async fn shard_search(
    State(s): State<SearchService>,
    headers: HeaderMap,
    p: std::result::Result<Path<(String, u32)>, PathRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> HttpResult<Json<Value>> {
    let (name, shard) = path(p)?;
    let q: ShardQuery = body_json(body)?;
    let meta = s.index(&name).await?;
    check_shard(&meta, shard)?;
    let r = s.search_shard(&meta, shard, q, forwarded(&headers)).await?;
    Ok(Json(json!(r)))
}

async fn shard_write(
    State(s): State<SearchService>,
    headers: HeaderMap,
    p: std::result::Result<Path<(String, u32)>, PathRejection>,
    q: std::result::Result<Query<WriteParams>, QueryRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> HttpResult<Json<Value>> {
    let (name, shard) = path(p)?;
    let params = query(q)?;
    let ops: Vec<Op> = body_json(body)?;
    let meta = s.index(&name).await?;
    check_shard(&meta, shard)?;
    // Forwarded bodies were checked by the sending node; check again, the wire is not trusted.
    for op in &ops {
        match op {
            Op::Put { id, body } | Op::Update { id, body } => {
                let mut doc = body.clone();
                doc.insert(meta.def.id_field.clone(), id.clone());
                crate::schema::check_doc(&meta, Value::Object(doc))?;
            }
            Op::Delete { id } => {
                crate::schema::DocId::from_json(id)?;
            }
        }
    }
    let n = ops.len();
    s.write_shard(&meta, shard, ops, params.wait, forwarded(&headers))
        .await?;
    Ok(Json(json!({"stored": n})))
}

async fn shard_stats(
    State(s): State<SearchService>,
    headers: HeaderMap,
    p: std::result::Result<Path<(String, u32)>, PathRejection>,
) -> HttpResult<Json<Value>> {
    let (name, shard) = path(p)?;
    let meta = s.index(&name).await?;
    check_shard(&meta, shard)?;
    Ok(Json(json!(
        s.stats_shard(&meta, shard, forwarded(&headers)).await?
    )))
}

fn check_shard(meta: &crate::schema::IndexMeta, shard: u32) -> Result<()> {
    if shard >= meta.shards {
        return Err(SearchError::InvalidRequest(format!(
            "index {:?} has {} shards",
            meta.def.name, meta.shards
        )));
    }
    Ok(())
}

/// Serves the API on a bound listener until `shutdown` resolves. Client addresses are passed
/// to the handlers (the keyless loopback rule needs them).
pub async fn serve(
    service: SearchService,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = router(service).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| SearchError::Internal(format!("http server: {e}")))
}
