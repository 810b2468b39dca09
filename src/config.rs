//! The node's configuration: one TOML file with a section per part, overridden by
//! `KEYWARD_<SECTION>__<KEY>` variables (see the `keyward-config` crate for the layering).

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub use keyward_config::{is_reserved, ConfigError, Layers, Source};

/// Everything a node reads. Every section and key is optional; the defaults run a whole node
/// on embedded parts under `./keyward-data`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeywardConfig {
    pub node: NodeConfig,
    pub log: LogConfig,
    pub ownership: keyward_ownership::OwnershipConfig,
    pub dbc: keyward_dbc::DbcConfig,
    pub vfs: keyward_vfs::VfsConfig,
    pub cache: keyward_cache::CacheConfig,
    pub search: keyward_search::SearchConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Cluster-unique node id; a random one per start when unset.
    pub id: Option<String>,
    /// Where the node keeps its files (SQLite database, VFS volume, indexes, epoch).
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: None,
            data_dir: PathBuf::from("./keyward-data"),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `keyward_cache=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl KeywardConfig {
    /// Reads the file (if given) and the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut c: KeywardConfig = keyward_config::load(file)?;
        c.rebase_paths();
        Ok(c)
    }

    /// Parts whose paths were left at their defaults keep their files under `node.data_dir`,
    /// so that one setting moves a whole node (each part's own default is `./keyward-data/…`).
    pub fn rebase_paths(&mut self) {
        let dir = self.node.data_dir.clone();
        if dir == NodeConfig::default().data_dir {
            return;
        }
        if self.dbc.url == keyward_dbc::DbcConfig::default().url {
            self.dbc.url = format!("sqlite:{}?mode=rwc", dir.join("keyward.db").display());
        }
        if self.vfs.root == keyward_vfs::VfsConfig::default().root {
            self.vfs.root = dir.join("vfs");
        }
        if self.search.data_dir == keyward_search::SearchConfig::default().data_dir {
            self.search.data_dir = dir.join("search");
        }
    }
}
