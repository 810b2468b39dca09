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
    pub ownership: toml::Table,
    pub dbc: toml::Table,
    pub vfs: toml::Table,
    pub cache: toml::Table,
    pub search: toml::Table,
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
        keyward_config::load(file)
    }
}
