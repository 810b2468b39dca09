//! Raft messages between group members, over the ownership protocol's own authenticated
//! connections (frame kinds RAFT_*, JSON payloads: a few hundred bytes, a few per second).

use super::TypeConfig;
use crate::client::{dial, ClientOptions, Wire};
use crate::frame::{kind, FrameWriter, Reader};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

type Nid = u64;

/// Makes one client per peer.
#[derive(Clone)]
pub(crate) struct Network {
    pub(crate) options: ClientOptions,
}

pub(crate) struct Peer {
    target: Nid,
    addr: String,
    options: ClientOptions,
    wire: Option<Wire>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: Nid, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            options: self.options.clone(),
            wire: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

impl Peer {
    /// One request and its reply; the connection is kept for the next one and dropped on error.
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        k: u8,
        req: &Req,
        ttl: std::time::Duration,
    ) -> Result<Resp, Result<String, String>> {
        let body = serde_json::to_vec(req).map_err(|e| Err(e.to_string()))?;
        let fut = async {
            if self.wire.is_none() {
                let w = dial(&self.addr, &self.options)
                    .await
                    .map_err(|e| Ok(e.to_string()))?;
                self.wire = Some(w);
            }
            let Some(wire) = self.wire.as_mut() else {
                return Err(Ok("no connection".to_string()));
            };
            let mut out = bytes::BytesMut::new();
            let mut w = FrameWriter::begin(&mut out, k, 1);
            w.blob(&body);
            w.finish();
            wire.write(&out).await.map_err(|e| Err(e.to_string()))?;
            let (rk, _, payload) = wire
                .read_frame(self.options.max_frame)
                .await
                .map_err(|e| Err(e.to_string()))?;
            if rk != kind::RAFT_REPLY {
                return Err(Err(format!("unexpected reply kind {rk:#04x}")));
            }
            let mut r = Reader::new(&payload);
            let json = r.blob("raft reply").map_err(|e| Err(e.to_string()))?;
            serde_json::from_slice::<Resp>(json).map_err(|e| Err(e.to_string()))
        };
        match tokio::time::timeout(ttl, fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.wire = None;
                Err(e)
            }
            Err(_) => {
                self.wire = None;
                Err(Err("timed out".into()))
            }
        }
    }
}

fn rpc_err<E: std::error::Error>(e: Result<String, String>) -> RPCError<Nid, BasicNode, E> {
    match e {
        Ok(unreachable) => RPCError::Unreachable(Unreachable::new(&Failed(unreachable))),
        Err(network) => RPCError::Network(NetworkError::new(&Failed(network))),
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<Nid>, RPCError<Nid, BasicNode, RaftError<Nid>>> {
        let r: Result<AppendEntriesResponse<Nid>, RaftError<Nid>> = self
            .rpc(kind::RAFT_APPEND, &rpc, option.hard_ttl())
            .await
            .map_err(rpc_err)?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<Nid>,
        RPCError<Nid, BasicNode, RaftError<Nid, InstallSnapshotError>>,
    > {
        let r: Result<InstallSnapshotResponse<Nid>, RaftError<Nid, InstallSnapshotError>> = self
            .rpc(kind::RAFT_SNAPSHOT, &rpc, option.hard_ttl())
            .await
            .map_err(rpc_err)?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<Nid>,
        option: RPCOption,
    ) -> Result<VoteResponse<Nid>, RPCError<Nid, BasicNode, RaftError<Nid>>> {
        let r: Result<VoteResponse<Nid>, RaftError<Nid>> = self
            .rpc(kind::RAFT_VOTE, &rpc, option.hard_ttl())
            .await
            .map_err(rpc_err)?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}
