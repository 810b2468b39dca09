//! The `[search]` section of the node config.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Settings of the search service. Every field has a default, so an empty `[search]` works.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Whether `keyward serve` starts the search HTTP API.
    pub enabled: bool,
    /// Address of the HTTP API; announced to other nodes as endpoint `search` unless
    /// `advertise` is set.
    pub listen: String,
    /// Address other nodes use to reach this one, when it differs from `listen`.
    pub advertise: Option<String>,
    /// Where shard indexes live (derived data: they can be deleted and are rebuilt from DBC).
    pub data_dir: PathBuf,
    /// Keys that may search and read. The write key may read too.
    pub read_keys: Vec<String>,
    /// Keys that may create indexes and write documents.
    pub write_keys: Vec<String>,
    /// Shards of a new index when its definition names none.
    pub shards_per_index: u32,
    /// How often a shard owner commits its index: a stored document is searchable within this
    /// delay plus the commit time (typically a few ms), unless the write asked `?wait=true`.
    pub commit_interval_ms: u64,
    /// Memory budget of one shard's index writer.
    pub writer_memory_mb: usize,
    /// Indexing threads of one shard's index writer.
    pub writer_threads: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            enabled: true,
            listen: "127.0.0.1:7700".into(),
            advertise: None,
            data_dir: PathBuf::from("./keyward-data/search"),
            read_keys: Vec::new(),
            write_keys: Vec::new(),
            shards_per_index: 1,
            commit_interval_ms: 1000,
            writer_memory_mb: 64,
            writer_threads: 1,
            max_body_bytes: 64 * 1024 * 1024,
        }
    }
}
