//! `Keyward`: a node opened from a config or from code, handing out the parts that share one
//! Coordinator session.

use crate::config::KeywardConfig;
use keyward_ownership::{Coordinator, InProcessHub, NodeId, OwnershipError, SessionConfig};
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] keyward_config::ConfigError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
}

impl NodeError {
    /// The exit code of the `keyward` binary for this error.
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            NodeError::Config(_) => exit::CONFIG,
            NodeError::DataDir { .. } => exit::FAILURE,
            NodeError::Ownership(OwnershipError::Unavailable(_)) => exit::UNAVAILABLE,
            NodeError::Ownership(OwnershipError::AuthRefused(_)) => exit::PERMISSION,
            NodeError::Ownership(_) => exit::FAILURE,
        }
    }
}

/// Builds a [`Keyward`] node.
#[derive(Default)]
pub struct KeywardBuilder {
    config: Option<KeywardConfig>,
    config_file: Option<PathBuf>,
    hub: Option<InProcessHub>,
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

    pub async fn build(self) -> Result<Keyward, NodeError> {
        let config = match self.config {
            Some(c) => c,
            None => KeywardConfig::load(self.config_file.as_deref())?,
        };
        let data_dir = config.node.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| NodeError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let session = SessionConfig {
            node_id: config.node.id.as_deref().map(NodeId::from),
            ..SessionConfig::default()
        };
        let hub = self.hub.unwrap_or_default();
        let coordinator = hub.connect(session).await?;
        tracing::info!(node = %coordinator.node_id(), data_dir = %data_dir.display(), "ownership: in-process coordinator");
        Ok(Keyward {
            config,
            coordinator,
        })
    }
}

/// One Keyward node: its config and the parts it hands out.
pub struct Keyward {
    config: KeywardConfig,
    coordinator: Coordinator,
}

impl Keyward {
    pub fn builder() -> KeywardBuilder {
        KeywardBuilder::default()
    }

    pub fn config(&self) -> &KeywardConfig {
        &self.config
    }

    /// The node's session with the ownership service, shared by every part.
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// Stops the node: parts finish in-flight work, then the session ends and ports are freed.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.coordinator.close().await?;
        Ok(())
    }
}
