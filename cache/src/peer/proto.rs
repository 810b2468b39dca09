//! Frames of the peer protocol.

use crate::cache::{Op, Reply};
use keyward_dbc::Key;
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;

pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Request {
    pub id: u64,
    pub table: String,
    pub pk: Key,
    pub op: Op,
}

/// Why a peer could not serve a request, kept apart from a successful [`Reply`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RemoteError {
    pub message: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Response {
    pub id: u64,
    pub result: Result<Reply, RemoteError>,
}
