//! Keyward search: TAG and full-text search with Chinese segmentation over HTTP.
//!
//! Documents are stored through DBC (the system of record) before a write is acknowledged;
//! each shard's tantivy index is derived data kept by the shard's owner (the holder of
//! `search/<index>/<shard>`), which resumes or rebuilds it from the document table. Requests
//! reaching another node are forwarded to the owner's `search` endpoint.

mod collect;
pub mod config;
mod dbc_store;
pub mod error;
mod highlight;
pub mod http;
mod node;
pub mod query;
mod reindex;
pub mod schema;
mod shard;
pub mod store;
pub mod tokenize;

pub use config::SearchConfig;
pub use dbc_store::DbcStore;
pub use error::{Result, SearchError};
pub use http::{openapi_document, router, serve, ROUTES};
pub use node::{shard_key, Hit, IndexStats, SearchResponse, SearchService, WriteResponse};
pub use query::{RangeSpec, SearchRequest, SortDir, TagFilters};
pub use reindex::{reindex_from_table, ReindexOptions, ReindexReport};
pub use schema::{FieldDef, FieldKind, IndexDefinition, IndexMeta, TokenizerKind};
pub use shard::ShardStats;
pub use store::{DocRow, MemStore, RowPage, Store};
