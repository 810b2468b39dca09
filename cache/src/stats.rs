//! Counters of one node's cache, read by [`crate::Cache::stats`].

use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub forwards: AtomicU64,
    pub forward_batches: AtomicU64,
    pub served_for_peers: AtomicU64,
    pub writes: AtomicU64,
    pub flushed_rows: AtomicU64,
    pub flush_batches: AtomicU64,
    pub flush_errors: AtomicU64,
    pub fenced: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub journal_entries: AtomicU64,
    pub journal_commits: AtomicU64,
    pub journal_rows: AtomicU64,
    pub journal_pending: AtomicI64,
    pub replays: AtomicU64,
    pub dirty: AtomicI64,
    pub bytes: AtomicI64,
    pub entries: AtomicI64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of one node's cache counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CacheStats {
    /// Calls served from this node's memory as the owner.
    pub hits: u64,
    /// Loads from the database (journal replay included).
    pub misses: u64,
    /// Calls this node forwarded to another owner.
    pub forwards: u64,
    /// Frames that carried several of those forwarded reads at once (`get_many`).
    pub forward_batches: u64,
    /// Calls this node served for other nodes.
    pub served_for_peers: u64,
    /// Writes applied at this node as the owner.
    pub writes: u64,
    /// Rows written to the database by flushes.
    pub flushed_rows: u64,
    pub flush_batches: u64,
    pub flush_errors: u64,
    /// Flushes refused by fencing (this node was a stale owner).
    pub fenced: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// Journal entries made durable; `journal_commits` batched writes carried them.
    pub journal_entries: u64,
    pub journal_commits: u64,
    /// Journal rows written (entries of one key in one commit merge to one row).
    pub journal_rows: u64,
    /// Journal entries waiting for their commit right now.
    pub journal_lag: i64,
    /// Keys whose journal entry a new owner replayed before serving.
    pub replays: u64,
    pub dirty_keys: i64,
    pub bytes: i64,
    pub entries: i64,
    /// Writes per row written to the database (higher is better; 1.0 means no merging).
    pub merge_ratio: f64,
}

impl Counters {
    pub fn snapshot(&self) -> CacheStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let writes = g(&self.writes);
        let rows = g(&self.flushed_rows);
        CacheStats {
            hits: g(&self.hits),
            misses: g(&self.misses),
            forwards: g(&self.forwards),
            forward_batches: g(&self.forward_batches),
            served_for_peers: g(&self.served_for_peers),
            writes,
            flushed_rows: rows,
            flush_batches: g(&self.flush_batches),
            flush_errors: g(&self.flush_errors),
            fenced: g(&self.fenced),
            evictions: g(&self.evictions),
            expirations: g(&self.expirations),
            journal_entries: g(&self.journal_entries),
            journal_commits: g(&self.journal_commits),
            journal_rows: g(&self.journal_rows),
            journal_lag: self.journal_pending.load(Ordering::Relaxed),
            replays: g(&self.replays),
            dirty_keys: self.dirty.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            merge_ratio: if rows == 0 {
                0.0
            } else {
                writes as f64 / rows as f64
            },
        }
    }
}
