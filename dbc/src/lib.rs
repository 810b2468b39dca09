//! DBC: one database-connectivity API over SQLite, PostgreSQL, MySQL/MariaDB, MongoDB and
//! Scylla/Cassandra: one value model, a native face per backend, and one record face.

pub mod table;
pub mod testing;
pub mod value;

pub use table::{Field, Key, Record, TableDef};
pub use value::{FieldType, Value};
