//! DBC: one database-connectivity API over SQLite, PostgreSQL, MySQL/MariaDB, MongoDB and
//! Scylla/Cassandra: one value model, a native face per backend, and one record face.

pub mod config;
mod db;
pub mod error;
mod mongo;
mod native;
mod record;
mod scylla;
mod sql;
pub mod table;
pub mod testing;
pub mod value;

pub use config::{ConnectOptions, DbcConfig};
pub use db::{BackendKind, Capabilities, Db, PoolStats, Table};
pub use error::{redact_url, DbcError, Result};
pub use mongodb::bson;
pub use native::{ColumnInfo, Transaction};
pub use record::{
    ScanCursor, ScanPage, DEAD_COLUMN, MAX_KEY_PART_BYTES, MAX_VALUE_BYTES, TOKEN_COLUMN,
};
pub use table::{Field, Key, Record, TableDef};
pub use value::{FieldType, Value};
