//! Keyward's migrations CLI as a library: versioned schema migrations for every DBC backend
//! (SQL with per-dialect variants, MongoDB command files, CQL), a history table, a lock on
//! `migrate/<db>` that frees itself when its holder dies, and resumable table copies between
//! backends. The `keyward-migrate` binary and `keyward migrate …` both call [`run`].

pub mod admin;
pub mod checksum;
mod cli;
pub mod copy;
pub mod engine;
mod error;
pub mod exec;
pub mod files;
pub mod history;
pub mod lock;
pub mod mongo_script;
mod output;
pub mod sql_split;
pub mod version;

pub use cli::{parse_duration, run, CopyArgs, MigrateArgs, MigrateCommand, MigrateContext};
pub use copy::{CopiedBatch, CopyOptions, CopyReport, OnCopied};
pub use error::{exit, MigrateError, Result};
pub use output::{error_json, Outcome};
pub use version::Version;
