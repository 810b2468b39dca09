//! `Keyward`: a node opened from a config or from code. It starts what the config asks for
//! (an ownership server or group member, the DBC pool, the VFS volume, the cache peer, the
//! search service and the node's HTTP server) and hands out handles that share one
//! Coordinator session.
//!
//! Start order matters: listeners are bound first so that the session can announce the
//! addresses other nodes forward to (`cache`, `search`); the ownership server starts before the
//! session that connects to it. Stop order is the reverse, so that the cache can still flush
//! and release its ports through a live session.

use crate::config::KeywardConfig;
use crate::http::HttpServer;
use keyward_cache::{Cache, CacheError, PeerListener};
use keyward_dbc::{Db, DbcError};
use keyward_ownership::{
    Coordinator, Endpoints, InProcessHub, NodeId, OwnershipError, Server, ServerError,
};
use keyward_search::{SearchError, SearchService};
use keyward_vfs::{Keyring, Vfs, VfsError};
use std::path::PathBuf;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] keyward_config::ConfigError),
    #[error("bad [{section}] config: {message}")]
    BadSection {
        section: &'static str,
        message: String,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    #[error("ownership server: {0}")]
    OwnershipServer(#[from] ServerError),
    #[error("dbc: {0}")]
    Dbc(#[from] DbcError),
    #[error("vfs: {0}")]
    Vfs(#[from] VfsError),
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    #[error("search: {0}")]
    Search(#[from] SearchError),
    #[error("{part} is not running on this node (see its config section)")]
    NotRunning { part: &'static str },
}

impl NodeError {
    /// The exit code of the `keyward` binary for this error.
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            NodeError::Config(_) | NodeError::BadSection { .. } => exit::CONFIG,
            NodeError::Ownership(OwnershipError::Unavailable(_)) => exit::UNAVAILABLE,
            NodeError::Ownership(OwnershipError::AuthRefused(_)) => exit::PERMISSION,
            NodeError::Dbc(e) if e.to_string().contains("connect") => exit::UNAVAILABLE,
            NodeError::Vfs(e) => u8::try_from(e.exit_code()).unwrap_or(exit::FAILURE),
            _ => exit::FAILURE,
        }
    }
}

/// Which parts a node starts. Admin tools (`keyward vfs`, `keyward migrate`) need only a
/// session; a serving node or an app server starts everything its config enables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    /// Run the ownership server (or group member) this node's config names itself as.
    pub ownership_server: bool,
    pub dbc: bool,
    pub vfs: bool,
    pub cache: bool,
    pub search: bool,
    /// The node's HTTP server: search API, console, `/metrics`, `/cluster.json`.
    pub http: bool,
}

impl Parts {
    pub fn all() -> Self {
        Parts {
            ownership_server: true,
            dbc: true,
            vfs: true,
            cache: true,
            search: true,
            http: true,
        }
    }

    /// A session only: what admin commands need.
    pub fn session_only() -> Self {
        Parts {
            ownership_server: false,
            dbc: false,
            vfs: false,
            cache: false,
            search: false,
            http: false,
        }
    }
}

impl Default for Parts {
    fn default() -> Self {
        Parts::all()
    }
}

/// Builds a [`Keyward`] node.
#[derive(Default)]
pub struct KeywardBuilder {
    config: Option<KeywardConfig>,
    config_file: Option<PathBuf>,
    hub: Option<InProcessHub>,
    parts: Parts,
}

/// How this node takes part in the ownership service, read from `[ownership]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnershipRole {
    /// No servers configured: an in-process hub (one process; the embedded default).
    InProcess,
    /// A lone server at `listen`, which this node runs (`servers` names `listen`).
    Server,
    /// One member of a group (`group.members` is set and names `listen`).
    GroupMember,
    /// A client of servers run elsewhere.
    Client,
}

impl OwnershipRole {
    pub fn of(c: &keyward_ownership::OwnershipConfig) -> Self {
        if !c.group.members.is_empty() {
            OwnershipRole::GroupMember
        } else if c.servers.is_empty() {
            OwnershipRole::InProcess
        } else if c.servers.contains(&c.listen) {
            OwnershipRole::Server
        } else {
            OwnershipRole::Client
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OwnershipRole::InProcess => "in-process",
            OwnershipRole::Server => "server",
            OwnershipRole::GroupMember => "group",
            OwnershipRole::Client => "client",
        }
    }
}

impl KeywardBuilder {
    /// Use this config as it is (no file, no environment).
    pub fn config(mut self, config: KeywardConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Read this TOML file plus `KEYWARD_*` overrides.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Share an in-process hub with other nodes of this process (tests, several nodes in one
    /// process); by default each node gets its own.
    pub fn hub(mut self, hub: InProcessHub) -> Self {
        self.hub = Some(hub);
        self
    }

    /// Start only these parts (default: all).
    pub fn parts(mut self, parts: Parts) -> Self {
        self.parts = parts;
        self
    }

    pub async fn build(self) -> Result<Keyward, NodeError> {
        let config = match self.config {
            Some(c) => c,
            None => KeywardConfig::load(self.config_file.as_deref())?,
        };
        config
            .ownership
            .validate()
            .map_err(|e| NodeError::BadSection {
                section: "ownership",
                message: e.to_string(),
            })?;
        let parts = self.parts;
        let data_dir = config.node.data_dir.clone();
        mkdir(&data_dir)?;
        let role = OwnershipRole::of(&config.ownership);

        // 1. The ownership server, so that our own session can reach it.
        let mut ownership_server = None;
        if parts.ownership_server
            && matches!(role, OwnershipRole::Server | OwnershipRole::GroupMember)
        {
            let server_cfg = config.ownership.server_config(&data_dir.join("ownership"));
            mkdir(&server_cfg.data_dir)?;
            let server = Server::bind(server_cfg).await?;
            ownership_server = Some(OwnershipServerHandle::spawn(server));
        }

        // 2. Listeners, so that the session announces real addresses (port 0 works).
        let cache_listener = if parts.cache {
            Some(
                PeerListener::bind(&config.cache.listen)
                    .await
                    .map_err(|source| NodeError::Bind {
                        what: "cache peer",
                        addr: config.cache.listen.clone(),
                        source,
                    })?,
            )
        } else {
            None
        };
        let http_listener = if parts.http {
            Some(
                tokio::net::TcpListener::bind(&config.search.listen)
                    .await
                    .map_err(|source| NodeError::Bind {
                        what: "http",
                        addr: config.search.listen.clone(),
                        source,
                    })?,
            )
        } else {
            None
        };
        let mut endpoints = Endpoints::new();
        if let Some(l) = &cache_listener {
            if let Ok(a) = l.local_addr() {
                endpoints.insert("cache".into(), a.to_string());
            }
        }
        if let Some(l) = &http_listener {
            let addr = match &config.search.advertise {
                Some(a) => a.clone(),
                None => l
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| config.search.listen.clone()),
            };
            endpoints.insert("search".into(), addr.clone());
            endpoints.insert("http".into(), addr);
        }

        // 3. The session every part shares.
        let session = config
            .ownership
            .session_config(config.node.id.as_deref().map(NodeId::from), endpoints);
        let hub = self.hub.unwrap_or_default();
        let mut conn = config.ownership.clone();
        if role == OwnershipRole::GroupMember && conn.servers.is_empty() {
            conn.servers = conn.group.members.clone();
        }
        // Group members start in any order: until a quorum has elected a master, members
        // answer "unavailable". Keep trying for a bounded time instead of exiting.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let coordinator = loop {
            match conn.connect(session.clone(), &hub).await {
                Ok(c) => break c,
                Err(OwnershipError::Unavailable(why))
                    if role != OwnershipRole::InProcess
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::info!(%why, "ownership service not available yet; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => {
                    if let Some(s) = ownership_server.take() {
                        s.stop().await;
                    }
                    return Err(e.into());
                }
            }
        };
        tracing::info!(node = %coordinator.node_id(), role = role.name(), data_dir = %data_dir.display(), "ownership session open");

        let mut node = Keyward {
            config,
            role,
            coordinator,
            ownership_server,
            db: None,
            vfs: None,
            cache: None,
            kv: None,
            search: None,
            http: None,
        };
        // From here on a failure must stop what already runs: `start_parts` leaves the node
        // consistent, and `shutdown` stops whatever was started.
        // Nodes starting together on one database would race on its first CREATE TABLEs
        // (PostgreSQL can fail a concurrent CREATE TABLE IF NOT EXISTS): parts start one node
        // at a time, under an ownership key.
        let startup = match node
            .coordinator
            .claim_wait("keyward/startup", std::time::Duration::from_secs(120))
            .await
        {
            Ok(g) => g,
            Err(e) => {
                node.shutdown().await.ok();
                return Err(e.into());
            }
        };
        let started = node.start_parts(parts, cache_listener, http_listener).await;
        if let Err(e) = startup.release().await {
            tracing::warn!(error = %e, "releasing the startup key failed; it frees itself with the lease");
        }
        if let Err(e) = started {
            node.shutdown().await.ok();
            return Err(e);
        }
        Ok(node)
    }
}

fn mkdir(path: &std::path::Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(path).map_err(|source| NodeError::DataDir {
        path: path.to_owned(),
        source,
    })
}

/// A running ownership server and the means to stop it.
struct OwnershipServerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServerError>>,
    addr: std::net::SocketAddr,
}

impl OwnershipServerHandle {
    fn spawn(server: Server) -> Self {
        let (stop, mut rx) = watch::channel(false);
        let addr = server.local_addr();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
        OwnershipServerHandle { stop, task, addr }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "ownership server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "ownership server task failed"),
            Ok(Ok(())) => {}
        }
    }
}

/// One Keyward node: its config, its session, and the parts it hands out.
pub struct Keyward {
    config: KeywardConfig,
    role: OwnershipRole,
    coordinator: Coordinator,
    ownership_server: Option<OwnershipServerHandle>,
    db: Option<Db>,
    vfs: Option<Vfs>,
    cache: Option<Cache>,
    kv: Option<keyward_cache::RawTable>,
    search: Option<SearchService>,
    http: Option<HttpServer>,
}

impl Keyward {
    pub fn builder() -> KeywardBuilder {
        KeywardBuilder::default()
    }

    async fn start_parts(
        &mut self,
        parts: Parts,
        cache_listener: Option<PeerListener>,
        http_listener: Option<tokio::net::TcpListener>,
    ) -> Result<(), NodeError> {
        let cfg = self.config.clone();
        if parts.dbc || parts.cache || parts.search {
            let db = Db::connect_with(&cfg.dbc.url, cfg.dbc.connect_options()).await?;
            tracing::info!(backend = ?db.kind(), url = %keyward_dbc::redact_url(&cfg.dbc.url), "dbc connected");
            self.db = Some(db);
        }
        if parts.vfs {
            ensure_keyring(&cfg.vfs)?;
            let vfs = Vfs::from_config(&cfg.vfs, self.coordinator.clone()).await?;
            tracing::info!(volume = %vfs.volume(), "vfs volume open");
            self.vfs = Some(vfs);
        }
        if let (Some(listener), Some(db)) = (cache_listener, &self.db) {
            let cache = Cache::start_on(
                listener,
                cfg.cache.clone(),
                self.coordinator.clone(),
                db.clone(),
            )
            .await?;
            self.kv = Some(crate::api::kv_table(&cache).await?);
            self.cache = Some(cache);
        }
        if parts.search && cfg.search.enabled {
            if let Some(db) = &self.db {
                std::fs::create_dir_all(&cfg.search.data_dir).map_err(|source| {
                    NodeError::DataDir {
                        path: cfg.search.data_dir.clone(),
                        source,
                    }
                })?;
                let service = SearchService::with_db(
                    cfg.search.clone(),
                    db.clone(),
                    self.coordinator.clone(),
                )
                .await?;
                self.search = Some(service);
            }
        }
        if let Some(listener) = http_listener {
            let view = self.view();
            let data = crate::api::DataState {
                kv: self.kv.clone(),
                vfs: self.vfs.clone(),
            };
            self.http = Some(HttpServer::start(listener, self.search.clone(), view, data));
        }
        Ok(())
    }

    /// What the HTTP server needs to show this node (cluster page, metrics).
    pub(crate) fn view(&self) -> crate::http::NodeView {
        crate::http::NodeView {
            node: self.coordinator.node_id().to_string(),
            role: self.role.clone(),
            ownership: self.config.ownership.clone(),
            coordinator: self.coordinator.clone(),
            cache: self.cache.clone(),
            search: self.search.clone(),
            db: self.db.clone(),
        }
    }

    pub fn config(&self) -> &KeywardConfig {
        &self.config
    }

    /// How this node takes part in the ownership service.
    pub fn ownership_role(&self) -> &OwnershipRole {
        &self.role
    }

    /// The address of the ownership server this node runs, if it runs one.
    pub fn ownership_server_addr(&self) -> Option<std::net::SocketAddr> {
        self.ownership_server.as_ref().map(|s| s.addr)
    }

    /// The node's HTTP address (search API, console, `/metrics`), if it serves HTTP.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|h| h.addr())
    }

    /// The node's session with the ownership service, shared by every part.
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// The node's database.
    pub fn dbc(&self) -> Result<&Db, NodeError> {
        self.db
            .as_ref()
            .ok_or(NodeError::NotRunning { part: "dbc" })
    }

    /// The node's VFS volume.
    pub fn vfs(&self) -> Result<&Vfs, NodeError> {
        self.vfs
            .as_ref()
            .ok_or(NodeError::NotRunning { part: "vfs" })
    }

    /// The node's cache.
    pub fn cache(&self) -> Result<&Cache, NodeError> {
        self.cache
            .as_ref()
            .ok_or(NodeError::NotRunning { part: "cache" })
    }

    /// The key-value table behind `/kv` (a cached table of the node's database).
    pub fn kv(&self) -> Result<&keyward_cache::RawTable, NodeError> {
        self.kv
            .as_ref()
            .ok_or(NodeError::NotRunning { part: "cache" })
    }

    /// The node's search service.
    pub fn search(&self) -> Result<&SearchService, NodeError> {
        self.search
            .as_ref()
            .ok_or(NodeError::NotRunning { part: "search" })
    }

    /// Stops the node: the HTTP server stops taking requests, the search service stops, the
    /// cache flushes its dirty keys and releases its ports, then the session ends and last the
    /// ownership server this node runs.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        let mut first_error = None;
        if let Some(http) = self.http.take() {
            http.stop().await;
        }
        if let Some(search) = self.search.take() {
            search.shutdown();
        }
        self.kv = None;
        if let Some(cache) = self.cache.take() {
            if let Err(e) = cache.shutdown().await {
                tracing::error!(error = %e, "cache: flush on shutdown failed; the journal keeps the writes for the next owner");
                first_error.get_or_insert(NodeError::Cache(e));
            }
        }
        if let Err(e) = self.coordinator.close().await {
            first_error.get_or_insert(NodeError::Ownership(e));
        }
        if let Some(db) = self.db.take() {
            db.close().await;
        }
        if let Some(server) = self.ownership_server.take() {
            server.stop().await;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The embedded default must start with no set-up, so a volume without a keyring gets a fresh
/// one. It is stored unsealed unless `passphrase_env` is set: say so loudly, since a keyring
/// next to the data it protects protects nothing against a stolen disk.
fn ensure_keyring(cfg: &keyward_vfs::VfsConfig) -> Result<(), NodeError> {
    let path = cfg.key_file_path();
    if path.exists() {
        return Ok(());
    }
    let keyring = Keyring::generate()?;
    let pass = cfg.passphrase()?;
    match &pass {
        Some(p) => keyring.save(
            &path,
            Some((p.as_bytes(), keyward_vfs::KdfParams::default())),
        )?,
        None => {
            tracing::warn!(path = %path.display(), "vfs: created an UNSEALED keyring; set vfs.passphrase_env or keep vfs.key_file off the data disk, and back it up with `keyward vfs key export`");
            keyring.save(&path, None)?
        }
    }
    tracing::info!(path = %path.display(), "vfs: new keyring");
    Ok(())
}
