//! Invalidation from outside the cache. A tool that writes rows behind the cache's back
//! (`keyward migrate copy`) must make each key's owner drop its copy, or the owner would keep
//! serving, and later flush, the value it held before. The tool need not run a cache node:
//! it looks up the owners through its ownership session and sends them the same
//! `invalidate` call that cache nodes forward to each other.

use crate::cache::{Op, Reply};
use crate::error::{CacheError, Result};
use crate::keys::cache_key;
use crate::peer::client::{CallError, Pool};
use keyward_dbc::Key;
use keyward_ownership::Coordinator;

/// Tells the owners of cache keys to drop them.
pub struct Invalidator {
    coord: Coordinator,
    peers: Pool,
}

impl Invalidator {
    /// `secret` is the cluster secret of the cache peers (`[cache] secret`).
    pub fn new(coordinator: Coordinator, secret: &str) -> Invalidator {
        Invalidator {
            coord: coordinator,
            peers: Pool::new(secret),
        }
    }

    /// Makes the owner of each key of `table` in the database `db_id` (DBC's
    /// `database_id()`, hyphenated) drop it: a dirty entry is flushed first, as any
    /// invalidation does. Keys nobody owns need nothing. Returns how many keys had an owner.
    pub async fn invalidate(&self, db_id: &str, table: &str, keys: &[Key]) -> Result<usize> {
        let names: Vec<String> = keys
            .iter()
            .map(|pk| cache_key(db_id, table, pk))
            .collect::<Result<_>>()?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let owners = self.coord.owner_of(&refs).await?;
        let mut calls = Vec::new();
        for ((pk, name), owner) in keys.iter().zip(&names).zip(owners) {
            let Some(o) = owner else { continue };
            let addr = o
                .endpoint("cache")
                .ok_or_else(|| CacheError::NoEndpoint {
                    node: o.node.to_string(),
                    key: name.clone(),
                })?
                .to_owned();
            calls.push(async move {
                match self.peers.call(&addr, table, pk, &Op::Invalidate).await {
                    Ok(Reply::Done) => Ok(()),
                    Ok(other) => Err(crate::cache::unexpected(&other)),
                    // Unreachable (dead, or refusing our secret): the caller learns it; a
                    // dead owner's keys are free once its lease ends, so a retry succeeds.
                    Err(CallError::NotSent(message)) => Err(CacheError::Peer { addr, message }),
                    Err(CallError::Lost) => Err(CacheError::Indeterminate { addr }),
                    Err(CallError::Remote(message)) => Err(CacheError::Peer { addr, message }),
                }
            });
        }
        let n = calls.len();
        // Pipelined: one connection per owner carries every call at once.
        for r in futures::future::join_all(calls).await {
            r?;
        }
        Ok(n)
    }
}

impl Drop for Invalidator {
    fn drop(&mut self) {
        self.peers.abort();
    }
}
