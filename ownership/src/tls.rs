//! Optional TLS (rustls with the ring provider) under the frame protocol. The cluster secret
//! still authenticates every connection inside it: TLS adds confidentiality and lets clients
//! check that they talk to a server whose certificate their CA signed.
//!
//! Certificates and keys are PEM files, read when a server binds or a client dials (dials are
//! rare: one per session and per reconnection), so a replaced file takes effect on the next
//! connection without a restart.

use crate::error::{OwnershipError, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How a client checks the servers' certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM file of the certificate authorities to trust (a self-signed server certificate
    /// can be its own).
    pub ca_file: PathBuf,
    /// Name the server certificate must carry; defaults to the host part of the address
    /// dialed (an IP address must then be in the certificate's IP SANs).
    pub server_name: Option<String>,
}

/// A server's certificate chain and key, and the CA its group peers are checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA for connections to other members; defaults to `cert_file` (self-signed members).
    pub ca_file: Option<PathBuf>,
}

impl ServerTls {
    /// What this server uses when it dials another member.
    pub(crate) fn peer_client(&self) -> ClientTls {
        ClientTls {
            ca_file: self
                .ca_file
                .clone()
                .unwrap_or_else(|| self.cert_file.clone()),
            server_name: None,
        }
    }
}

fn tls_err(path: &Path, what: impl std::fmt::Display) -> OwnershipError {
    OwnershipError::Tls(format!("{}: {what}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|e| tls_err(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no certificate in file"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the acceptor of a server (checked when it binds).
pub(crate) fn acceptor(cfg: &ServerTls) -> Result<TlsAcceptor> {
    let chain = certs(&cfg.cert_file)?;
    let pem = std::fs::read(&cfg.key_file).map_err(|e| tls_err(&cfg.key_file, e))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| tls_err(&cfg.key_file, format!("bad PEM private key: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| OwnershipError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(&cfg.cert_file, e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Opens TLS over `tcp` to `addr`, checking the server's certificate.
pub(crate) async fn connect(cfg: &ClientTls, addr: &str, tcp: TcpStream) -> Result<Stream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&cfg.ca_file)? {
        roots
            .add(c)
            .map_err(|e| tls_err(&cfg.ca_file, format!("unusable CA certificate: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| OwnershipError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = match &cfg.server_name {
        Some(n) => n.clone(),
        None => host_of(addr).to_owned(),
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|e| OwnershipError::Tls(format!("{addr}: server name {host:?}: {e}")))?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        // Certificate problems come back as io errors wrapping rustls's; say which server.
        .map_err(|e| OwnershipError::Tls(format!("{addr}: {e}")))?;
    Ok(Stream::Client(Box::new(tls)))
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A connection, plain or under TLS.
pub enum Stream {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The read side of a split [`Stream`]. A plain stream splits without a lock.
pub(crate) enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Stream>),
}

/// The write side of a split [`Stream`].
pub(crate) enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Stream>),
}

impl Stream {
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            tls => {
                let (r, w) = tokio::io::split(tls);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

macro_rules! delegate_read {
    ($t:ty, $($v:path),+) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($v(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ty, $($v:path),+) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($v(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($v(s) => Pin::new(s).poll_flush(cx),)+
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($v(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_read!(Stream, Stream::Plain, Stream::Client, Stream::Server);
delegate_write!(Stream, Stream::Plain, Stream::Client, Stream::Server);
delegate_read!(ReadHalf, ReadHalf::Plain, ReadHalf::Tls);
delegate_write!(WriteHalf, WriteHalf::Plain, WriteHalf::Tls);

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_part_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7400"), "127.0.0.1");
        assert_eq!(host_of("own.example:7400"), "own.example");
        assert_eq!(host_of("[::1]:7400"), "::1");
    }
}
