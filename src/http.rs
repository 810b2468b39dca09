//! The node's one HTTP server: the search API (search/), the web console at `/`, the node's
//! view at `/cluster.json` and Prometheus metrics at `/metrics`. One listener keeps a node to
//! one address for people and scrapers; the search router brings its own auth and limits.

use crate::metrics;
use crate::node::OwnershipRole;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use keyward_cache::Cache;
use keyward_dbc::Db;
use keyward_ownership::{Coordinator, OwnershipConfig};
use keyward_search::SearchService;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Everything the node's pages show, gathered from the parts at request time.
#[derive(Clone)]
pub struct NodeView {
    pub node: String,
    pub role: OwnershipRole,
    pub ownership: OwnershipConfig,
    pub coordinator: Coordinator,
    pub cache: Option<Cache>,
    pub search: Option<SearchService>,
    pub db: Option<Db>,
}

impl NodeView {
    /// The servers to ask for the group's view (none for the in-process hub).
    fn servers(&self) -> Vec<String> {
        match self.role {
            OwnershipRole::InProcess => Vec::new(),
            OwnershipRole::GroupMember if self.ownership.servers.is_empty() => {
                self.ownership.group.members.clone()
            }
            _ => self.ownership.servers.clone(),
        }
    }

    /// The ownership section of `/cluster.json`.
    pub async fn ownership_json(&self) -> Value {
        let servers = self.servers();
        if servers.is_empty() {
            let ports = match self
                .coordinator
                .query_node(self.coordinator.node_id())
                .await
            {
                Ok(Some(info)) => Some(info.ports),
                _ => None,
            };
            return json!({
                "mode": self.role.name(), "members": [], "master": null, "epoch": null,
                "sessions": 1, "ports": ports,
                "nodes": [{"node": self.node, "ports": ports, "push_channel": true}],
            });
        }
        let options = self.ownership.client_options();
        let ask = crate::status::group_stats(&servers, &options);
        match tokio::time::timeout(Duration::from_secs(3), ask).await {
            Ok(Ok(s)) => crate::status::stats_json(self.role.name(), &s),
            Ok(Err(e)) => {
                json!({"mode": self.role.name(), "members": servers, "error": e.to_string()})
            }
            Err(_) => {
                json!({"mode": self.role.name(), "members": servers, "error": "no ownership server answered within 3 s"})
            }
        }
    }

    pub fn cache_json(&self) -> Value {
        let Some(cache) = &self.cache else {
            return Value::Null;
        };
        let s = cache.stats();
        let looked = s.hits + s.misses;
        let hit_rate = if looked == 0 {
            Value::Null
        } else {
            json!(s.hits as f64 / looked as f64)
        };
        json!({
            "hits": s.hits, "misses": s.misses, "hit_rate": hit_rate, "forwards": s.forwards,
            "flushes": s.flush_batches, "flushed_rows": s.flushed_rows, "entries": s.entries,
            "bytes": s.bytes, "dirty": s.dirty_keys, "journal_lag": s.journal_lag,
            "fenced": s.fenced, "evictions": s.evictions,
        })
    }

    pub async fn search_json(&self) -> Value {
        let Some(search) = &self.search else {
            return Value::Null;
        };
        let metas = match search.list_indexes().await {
            Ok(m) => m,
            Err(e) => return json!({"error": e.to_string()}),
        };
        let mut indexes = Vec::new();
        for m in metas {
            let name = m.def.name.clone();
            let documents = match search.stats(&name).await {
                Ok(st) => json!(st.documents),
                Err(_) => Value::Null,
            };
            indexes.push(json!({"name": name, "documents": documents, "shards": m.shards}));
        }
        json!({ "indexes": indexes })
    }

    pub async fn cluster_json(&self) -> Value {
        json!({
            "node": self.node,
            "ownership": self.ownership_json().await,
            "cache": self.cache_json(),
            "search": self.search_json().await,
            "dbc": self.db.as_ref().map(|d| json!({"backend": format!("{:?}", d.kind())})),
        })
    }
}

/// A running HTTP server and the means to stop it.
pub struct HttpServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HttpServer {
    pub fn start(
        listener: tokio::net::TcpListener,
        search: Option<SearchService>,
        view: NodeView,
        data: crate::api::DataState,
    ) -> HttpServer {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let keys = search
            .as_ref()
            .map(|s| {
                let c = s.config();
                c.read_keys.iter().chain(&c.write_keys).cloned().collect()
            })
            .unwrap_or_default();
        let app = router(Arc::new(view), search, data, keys);
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "http server stopped");
            }
        });
        tracing::info!(%addr, "http: search API, console at /, /metrics, /cluster.json");
        HttpServer { addr, stop, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        // In-flight requests get a moment; a stuck client must not hold the node's stop.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

#[derive(Clone)]
struct Guarded {
    view: Arc<NodeView>,
    keys: Arc<Vec<String>>,
}

fn router(
    view: Arc<NodeView>,
    search: Option<SearchService>,
    data: crate::api::DataState,
    keys: Vec<String>,
) -> Router {
    let state = Guarded {
        view,
        keys: Arc::new(keys),
    };
    let node = Router::new()
        .route("/cluster.json", get(cluster))
        .route("/metrics", get(metrics_text))
        .with_state(state.clone())
        .merge(crate::api::router(data))
        .layer(axum::middleware::from_fn_with_state(state, guard));
    let app = crate::console::router().merge(node);
    match search {
        Some(s) => app.merge(keyward_search::router(s)),
        None => app,
    }
}

/// The node's own pages follow the search API's rule: with keys configured any of them opens
/// them; without keys only loopback clients are served.
async fn guard(State(g): State<Guarded>, req: Request, next: Next) -> Response {
    use keyward_search::http::{bearer, from_loopback, key_matches};
    if g.keys.is_empty() {
        if from_loopback(&req) {
            return next.run(req).await;
        }
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "configure API keys to be served from a non-loopback address",
        );
    }
    let Some(given) = bearer(req.headers()) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an API key is required (Authorization: Bearer …)",
        );
    };
    if key_matches(given.as_bytes(), &g.keys) {
        next.run(req).await
    } else {
        error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown API key")
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn cluster(State(g): State<Guarded>) -> Json<Value> {
    Json(g.view.cluster_json().await)
}

async fn metrics_text(State(g): State<Guarded>) -> Response {
    let body = metrics::render(&g.view).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
