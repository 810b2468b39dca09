//! The `[ownership]` section of Keyward's config file.

use crate::client::{self, ClientOptions};
use crate::coordinator::Coordinator;
use crate::error::Result;
use crate::group::GroupSettings;
use crate::inproc::InProcessHub;
use crate::server::ServerConfig;
use crate::tls::{ClientTls, ServerTls};
use crate::types::{Endpoints, Mode, NodeId, SessionConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Settings of the ownership client and server. Every field has a default, so an empty
/// `[ownership]` section (or none) gives an in-process hub and a local server on 127.0.0.1:7400.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnershipConfig {
    /// `persistent` (heartbeats on one connection) or `lease` (short connections + relet).
    pub mode: Mode,
    /// Session lease, in milliseconds.
    pub lease_ms: u64,
    /// Safety margin subtracted from the lease on the client's clock, in milliseconds.
    pub margin_ms: u64,
    /// Where `keyward serve` listens for ownership clients.
    pub listen: String,
    /// Ownership servers to connect to (any member of a group); empty means the in-process hub.
    pub servers: Vec<String>,
    /// Cluster secret shared by servers and clients.
    pub secret: String,
    /// Most ports one node may hold on a server.
    pub max_ports_per_node: usize,
    /// Where the server keeps its epoch; defaults to the node's data directory.
    pub data_dir: Option<PathBuf>,
    /// Server group (availability); empty members means a lone server.
    pub group: GroupConfig,
    /// PEM certificate chain of this server; with `tls_key`, every connection to it is TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA that clients (and group peers) check servers against; setting it alone makes a
    /// client use TLS. Defaults to `tls_cert` (a self-signed certificate).
    pub tls_ca: Option<PathBuf>,
    /// Name the servers' certificates carry, when it is not the host of their addresses.
    pub tls_server_name: Option<String>,
}

impl Default for OwnershipConfig {
    fn default() -> Self {
        OwnershipConfig {
            mode: Mode::Persistent,
            lease_ms: 10_000,
            margin_ms: 1_000,
            listen: "127.0.0.1:7400".into(),
            servers: Vec::new(),
            secret: String::new(),
            max_ports_per_node: 10_000_000,
            data_dir: None,
            group: GroupConfig::default(),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_server_name: None,
        }
    }
}

/// Membership of a server group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GroupConfig {
    /// Every member's address, this server's included.
    pub members: Vec<String>,
    pub role: GroupRole,
}

/// What this server is in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GroupRole {
    /// May become master.
    #[default]
    Member,
    /// Votes in elections, never serves.
    Arbiter,
}

/// A setting that cannot work.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("ownership.lease_ms must be between 20 and {max}, got {got}")]
    Lease { got: u64, max: u64 },
    #[error("ownership.margin_ms ({margin}) must be smaller than ownership.lease_ms ({lease})")]
    Margin { margin: u64, lease: u64 },
    #[error("ownership.max_ports_per_node must be at least 1")]
    PortLimit,
    #[error("ownership.group: {0}")]
    Group(String),
    #[error("ownership.tls_cert and ownership.tls_key go together; only one is set")]
    TlsPair,
}

impl OwnershipConfig {
    /// Checks the values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const MAX_LEASE_MS: u64 = 3_600_000;
        if !(20..=MAX_LEASE_MS).contains(&self.lease_ms) {
            return Err(ConfigError::Lease {
                got: self.lease_ms,
                max: MAX_LEASE_MS,
            });
        }
        if self.margin_ms >= self.lease_ms {
            return Err(ConfigError::Margin {
                margin: self.margin_ms,
                lease: self.lease_ms,
            });
        }
        if self.max_ports_per_node == 0 {
            return Err(ConfigError::PortLimit);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::TlsPair);
        }
        if !self.group.members.is_empty() && !self.group.members.contains(&self.listen) {
            return Err(ConfigError::Group(format!(
                "listen address {} is not among group.members",
                self.listen
            )));
        }
        Ok(())
    }

    /// True when the node should use an in-process hub rather than a server.
    pub fn is_in_process(&self) -> bool {
        self.servers.is_empty()
    }

    /// The session settings for a node with this config.
    pub fn session_config(&self, node_id: Option<NodeId>, endpoints: Endpoints) -> SessionConfig {
        SessionConfig {
            node_id,
            endpoints,
            mode: self.mode,
            lease: Duration::from_millis(self.lease_ms),
            margin: Duration::from_millis(self.margin_ms),
        }
    }

    pub fn client_options(&self) -> ClientOptions {
        let ca = self.tls_ca.clone().or_else(|| self.tls_cert.clone());
        ClientOptions {
            tls: ca.map(|ca_file| ClientTls {
                ca_file,
                server_name: self.tls_server_name.clone(),
            }),
            ..ClientOptions::with_secret(self.secret.clone())
        }
    }

    /// Server settings; `default_data_dir` is used when `data_dir` is not set.
    pub fn server_config(&self, default_data_dir: &Path) -> ServerConfig {
        let mut c = ServerConfig::new(
            self.listen.clone(),
            self.secret.clone(),
            self.data_dir
                .clone()
                .unwrap_or_else(|| default_data_dir.to_path_buf()),
        );
        c.max_ports_per_node = self.max_ports_per_node;
        if let (Some(cert_file), Some(key_file)) = (&self.tls_cert, &self.tls_key) {
            c.tls = Some(ServerTls {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                ca_file: self.tls_ca.clone(),
            });
        }
        // A new master's re-registration window is the longest lease allowed.
        c.max_lease = Duration::from_millis(self.lease_ms);
        if !self.group.members.is_empty() {
            let me = self
                .group
                .members
                .iter()
                .position(|m| *m == self.listen)
                .unwrap_or(0);
            let mut g = GroupSettings::new(self.group.members.clone(), me);
            g.arbiter = self.group.role == GroupRole::Arbiter;
            c.group = Some(g);
        }
        c
    }

    /// Opens a session: on `hub` when no servers are configured, else over the network.
    pub async fn connect(&self, session: SessionConfig, hub: &InProcessHub) -> Result<Coordinator> {
        if self.is_in_process() {
            hub.connect(session).await
        } else {
            client::connect(&self.servers, session, self.client_options()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_unknown_fields_are_refused() {
        let c: OwnershipConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, OwnershipConfig::default());
        assert_eq!(c.listen, "127.0.0.1:7400");
        c.validate().unwrap();
        let c: OwnershipConfig =
            serde_json::from_str(r#"{"mode":"lease","lease_ms":500,"margin_ms":100}"#).unwrap();
        assert_eq!(c.mode, Mode::Lease);
        assert!(serde_json::from_str::<OwnershipConfig>(r#"{"leese_ms":5}"#).is_err());
        let bad = OwnershipConfig {
            margin_ms: 20_000,
            ..Default::default()
        };
        assert!(matches!(bad.validate(), Err(ConfigError::Margin { .. })));
        let mut g = OwnershipConfig::default();
        g.group.members = vec!["10.0.0.1:7400".into(), "10.0.0.2:7400".into()];
        assert!(matches!(g.validate(), Err(ConfigError::Group(_))));
        g.listen = "10.0.0.2:7400".into();
        g.group.role = GroupRole::Arbiter;
        g.validate().unwrap();
        let sc = g.server_config(std::path::Path::new("/tmp/x"));
        let gs = sc.group.unwrap();
        assert_eq!((gs.me, gs.arbiter), (1, true));
        assert_eq!(sc.max_lease, Duration::from_millis(g.lease_ms));
        assert!(sc.tls.is_none() && g.client_options().tls.is_none());
    }

    #[test]
    fn tls_settings_reach_server_and_client() {
        let half = OwnershipConfig {
            tls_cert: Some("/etc/kw/cert.pem".into()),
            ..Default::default()
        };
        assert_eq!(half.validate(), Err(ConfigError::TlsPair));
        let c: OwnershipConfig =
            serde_json::from_str(r#"{"tls_cert":"/etc/kw/cert.pem","tls_key":"/etc/kw/key.pem"}"#)
                .unwrap();
        c.validate().unwrap();
        let st = c.server_config(Path::new("/tmp/x")).tls.unwrap();
        assert_eq!(st.key_file, PathBuf::from("/etc/kw/key.pem"));
        // Without a CA the clients trust the (self-signed) server certificate itself.
        let ct = c.client_options().tls.unwrap();
        assert_eq!(ct.ca_file, PathBuf::from("/etc/kw/cert.pem"));
        let client_only: OwnershipConfig =
            serde_json::from_str(r#"{"tls_ca":"/etc/kw/ca.pem","tls_server_name":"own"}"#).unwrap();
        let ct = client_only.client_options().tls.unwrap();
        assert_eq!(ct.server_name.as_deref(), Some("own"));
        assert!(client_only.server_config(Path::new("/tmp/x")).tls.is_none());
    }
}
