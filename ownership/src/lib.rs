//! Keyward's key-ownership model: the Coordinator API that every other crate uses to claim keys
//! (ports), learn who owns them and message their owners, with fencing tokens that only grow.
//!
//! Two implementations share the API: [`InProcessHub`] (one process: tests, CLIs, the embedded
//! default) and the network client of the BYPSS-style port switch service.

mod coordinator;
mod error;
mod inproc;
mod session;
mod types;

pub use coordinator::{Backend, Claim, ClaimReply, Coordinator, Guard};
pub use error::{OwnershipError, Result};
pub use inproc::InProcessHub;
pub use session::SessionLink;
pub use types::{
    encode_key_part, validate_key, Endpoints, Event, Mode, NodeId, NodeInfo, Owner,
    SessionConfig, Token, MAX_KEY_BYTES,
};
