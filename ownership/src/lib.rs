//! Keyward's key-ownership model: the Coordinator API that every other crate uses to claim keys
//! (ports), learn who owns them and message their owners, with fencing tokens that only grow.
//!
//! Two implementations share the API: [`InProcessHub`] (one process: tests, CLIs, the embedded
//! default) and the network client ([`connect`]) of the BYPSS-style port switch service
//! ([`Server`]), alone or as a group electing its master through openraft ([`GroupSettings`]).

mod auth;
mod client;
mod config;
mod coordinator;
mod error;
pub mod frame;
mod group;
mod inproc;
mod pipeline;
mod server;
mod session;
mod status;
mod tls;
mod types;

pub use client::{connect, dial_raw, server_stats, ClientOptions};
pub use config::{ConfigError, GroupConfig, GroupRole, OwnershipConfig};
pub use coordinator::{Backend, Claim, ClaimReply, Coordinator, Guard, PipeReply, PipeRequest};
pub use error::{OwnershipError, Result};
pub use group::GroupSettings;
pub use inproc::InProcessHub;
pub use pipeline::{Answer, Pipeline};
pub use server::{Server, ServerConfig, ServerError};
pub use session::SessionLink;
pub use status::{NodeStats, ServerStats};
pub use tls::{ClientTls, ServerTls, Stream};
pub use types::{
    encode_key_part, validate_key, Endpoints, Event, Mode, NodeId, NodeInfo, Owner, SessionConfig,
    Token, MAX_KEY_BYTES,
};
