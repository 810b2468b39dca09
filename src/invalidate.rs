//! The hook that `keyward migrate copy` runs after each batch it writes: rows copied into a
//! database behind the cache's back must not stay cached with their old values, so the
//! owners of the copied keys are told to drop them (see `keyward_cache::Invalidator`).

use keyward_cache::Invalidator;
use keyward_migrate::{CopiedBatch, OnCopied};
use keyward_ownership::Coordinator;
use std::sync::Arc;

/// A copy hook that invalidates every copied key at its cache owner; `secret` is the cache
/// peers' cluster secret (`[cache] secret`).
pub fn copy_hook(coordinator: Coordinator, secret: &str) -> OnCopied {
    let invalidator = Arc::new(Invalidator::new(coordinator, secret));
    Arc::new(move |b: CopiedBatch| {
        let inv = invalidator.clone();
        Box::pin(async move {
            inv.invalidate(&b.database, &b.table, &b.keys)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    })
}
