//! Keyward's write-back cache: records of DBC tables, served from the memory of the node that
//! owns each key (`cache/<db>/<table>/<pk>`) through the ownership model. Other nodes forward
//! one hop to the owner; writes are made durable in a journal in the same database (group
//! commit) before they are acknowledged, then merged and flushed to the table, fenced by the
//! key's token, so a stale owner can never overwrite a newer one.

mod adopt;
mod batch;
mod cache;
mod config;
mod error;
mod flush;
mod invalidator;
mod journal;
mod keys;
mod mapping;
mod peer;
mod routes;
mod stats;
mod store;
mod table;

pub use cache::Cache;
pub use config::CacheConfig;
pub use error::{CacheError, Result};
pub use invalidator::Invalidator;
pub use journal::{home_def, log_def, registry_def};
pub use keys::{cache_key, encode_pk};
pub use mapping::{from_record, to_record};
pub use peer::PeerListener;
pub use stats::CacheStats;
pub use table::{CacheTable, RawTable, TableOptions, UpdateFn, WriteMode};

/// A record as the cache holds it: shared between the owner's memory, its journal and every
/// reader, never copied per read or per write. Deref to `&Record`; `Record::clone(&r)` when a
/// caller needs its own.
pub type SharedRecord = std::sync::Arc<keyward_dbc::Record>;
