//! The `[cache]` section of the node config.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Settings of a node's cache. Every key is optional.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Address of the cache peer listener; the node announces it as its `cache` endpoint.
    pub listen: String,
    /// Memory budget for cached records, in bytes (keys and values, estimated).
    pub max_bytes: u64,
    /// A dirty key is flushed to the database at the latest this long after its first
    /// unflushed write (milliseconds).
    pub flush_max_age_ms: u64,
    /// Rows per batched database write.
    pub flush_batch: usize,
    /// When more keys than this are dirty, everything dirty is flushed at once.
    pub max_dirty: usize,
    /// Cluster secret that peers prove to each other (HMAC challenge-response).
    pub secret: String,
    /// Record-face table that holds the write-ahead journal (in the cache's database); the
    /// registry of journals is `<journal_table>_journals`.
    pub journal_table: String,
    /// DBC URL of the database that holds the journal; empty: the cache's own database. A
    /// database of its own can sit on another device (as a database's write-ahead log often
    /// does), and its commits do not queue behind the flusher's row writes (SQLite has one
    /// writer per file). Every node of a cluster must name the same one: the cache's database
    /// records which it is, and a node naming another is refused.
    pub journal_url: String,
    /// Rows in each node's journal ring (at least 16). A node's log lives in these rows,
    /// rewritten in place; adopters read the size from the registry.
    pub journal_slots: u64,
    /// How long a call may spend finding the key's owner (a dead owner's lease must end).
    pub request_timeout_ms: u64,
    /// Number of independently locked memory shards (rounded up to a power of two).
    pub shards: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            listen: "127.0.0.1:7401".into(),
            max_bytes: 256 * 1024 * 1024,
            flush_max_age_ms: 2000,
            flush_batch: 512,
            max_dirty: 200_000,
            secret: String::new(),
            journal_table: "kw_cache_log".into(),
            journal_url: String::new(),
            journal_slots: 16384,
            request_timeout_ms: 30_000,
            shards: 64,
        }
    }
}

impl CacheConfig {
    pub fn flush_max_age(&self) -> Duration {
        Duration::from_millis(self.flush_max_age_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub(crate) fn check(&self) -> crate::Result<()> {
        let bad = |m: &str| Err(crate::CacheError::Config(m.to_owned()));
        if self.flush_batch == 0 {
            return bad("flush_batch must be at least 1");
        }
        if self.max_bytes == 0 {
            return bad("max_bytes must be at least 1");
        }
        if self.journal_table.is_empty() {
            return bad("journal_table must not be empty");
        }
        if self.journal_slots < 16 {
            return bad("journal_slots must be at least 16");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: CacheConfig = serde_json::from_str(r#"{"max_bytes": 1024}"#).unwrap();
        assert_eq!(c.max_bytes, 1024);
        assert_eq!(c.listen, "127.0.0.1:7401");
        assert!(c.check().is_ok());
        assert!(serde_json::from_str::<CacheConfig>(r#"{"max_byte": 1}"#).is_err());
        let bad = CacheConfig {
            flush_batch: 0,
            ..Default::default()
        };
        assert!(bad.check().is_err());
    }
}
