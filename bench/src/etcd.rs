//! The etcd 3.4 anchor for the ownership benchmark: a claim is a lease-bound put-if-absent
//! transaction (`create_revision == 0` then put with the session's lease), a release is a delete,
//! the way etcd's own lock recipes do it.

use crate::anchor::Anchor;
use crate::harness::BenchError;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

/// Starts a single-member etcd on loopback in a throwaway data directory.
pub fn start() -> Result<Anchor, BenchError> {
    // etcd needs a peer port too; take a second free one.
    let peer = crate::anchor::free_port()?;
    let peer_url = format!("http://127.0.0.1:{peer}");
    Anchor::start(
        "etcd",
        "etcd-server",
        "etcd",
        &[
            "--data-dir",
            "{dir}/data",
            "--listen-client-urls",
            "http://127.0.0.1:{port}",
            "--advertise-client-urls",
            "http://127.0.0.1:{port}",
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("default={peer_url}"),
            "--log-level",
            "error",
        ],
    )
}

/// One etcd session: its own connection and lease.
pub struct Session {
    client: Client,
    lease: i64,
}

impl Session {
    pub async fn open(port: u16) -> Result<Session, String> {
        let mut client = Client::connect([format!("http://127.0.0.1:{port}")], None)
            .await
            .map_err(|e| e.to_string())?;
        let lease = client
            .lease_grant(60, None)
            .await
            .map_err(|e| e.to_string())?
            .id();
        Ok(Session { client, lease })
    }

    /// Claim then release one key; `Ok(false)` when the claim found it taken.
    pub async fn pair(&self, key: &str) -> Result<bool, String> {
        let mut c = self.client.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                "1",
                Some(PutOptions::new().with_lease(self.lease)),
            )]);
        let won = c.txn(txn).await.map_err(|e| e.to_string())?.succeeded();
        if won {
            c.delete(key, None).await.map_err(|e| e.to_string())?;
        }
        Ok(won)
    }
}
