//! Keyward: a storage and caching layer built on one key-ownership model. This crate is what an
//! app server imports: [`Keyward`] opens a node and hands out the parts, which are re-exported
//! here ([`ownership`], [`dbc`], [`vfs`], [`cache`], [`search`]). It also builds the `keyward`
//! binary.

pub mod api;
pub mod config;
pub mod console;
pub mod exit;
mod http;
pub mod invalidate;
mod metrics;
mod node;
pub mod shutdown;
pub mod status;

pub use http::NodeView;
pub use keyward_cache as cache;
pub use keyward_dbc as dbc;
pub use keyward_migrate as migrate;
pub use keyward_ownership as ownership;
pub use keyward_search as search;
pub use keyward_vfs as vfs;
pub use node::{Keyward, KeywardBuilder, NodeError, OwnershipRole, Parts};
