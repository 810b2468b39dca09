//! The cache peer protocol: one hop from a non-owner to the key's owner over TCP.
//!
//! After a mutual HMAC challenge-response on the cluster secret (the secret never crosses the
//! wire), both sides exchange length-prefixed JSON frames. Requests carry an id; replies may
//! come in any order, so a connection carries many requests at once (pipelining).

pub(crate) mod auth;
pub(crate) mod client;
pub(crate) mod proto;
pub(crate) mod server;

pub use server::PeerListener;
