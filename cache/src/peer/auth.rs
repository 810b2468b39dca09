//! Mutual challenge-response on the cluster secret.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol's version is in its magic: KWC1 framed JSON, KWC2 framed postcard, KWC3
/// adds `WriteMany` (an older peer could not read it, and would drop the whole connection).
const MAGIC: &[u8; 4] = b"KWC3";
const NONCE: usize = 16;
const TAG: usize = 32;
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

type HmacSha256 = Hmac<Sha256>;

fn tag(secret: &[u8], role: &[u8], server_nonce: &[u8], client_nonce: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; the fallback is unreachable but keeps this panic-free.
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => HmacSha256::new(&Default::default()),
    };
    m.update(b"keyward-cache-v1 ");
    m.update(role);
    m.update(server_nonce);
    m.update(client_nonce);
    m
}

fn bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, m.to_owned())
}

/// Server side: send a challenge, check the client's proof, prove ourselves.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &[u8],
) -> std::io::Result<()> {
    let sn: [u8; NONCE] = rand::random();
    let mut hello = Vec::with_capacity(4 + NONCE);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&sn);
    s.write_all(&hello).await?;
    let mut buf = [0u8; NONCE + TAG];
    s.read_exact(&mut buf).await?;
    let (cn, ct) = buf.split_at(NONCE);
    if tag(secret, b"client", &sn, cn).verify_slice(ct).is_err() {
        s.write_all(&[0u8]).await?;
        return Err(bad("cache peer failed authentication"));
    }
    let st = tag(secret, b"server", &sn, cn).finalize().into_bytes();
    let mut reply = Vec::with_capacity(1 + TAG);
    reply.push(1u8);
    reply.extend_from_slice(&st);
    s.write_all(&reply).await?;
    Ok(())
}

/// Client side: answer the challenge and check the server's proof.
pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &[u8],
) -> std::io::Result<()> {
    let mut hello = [0u8; 4 + NONCE];
    s.read_exact(&mut hello).await?;
    if &hello[..4] != MAGIC {
        return Err(bad(if hello.starts_with(b"KWC") {
            "cache peer speaks another version of the peer protocol: upgrade all nodes together"
        } else {
            "not a keyward cache peer"
        }));
    }
    let sn = &hello[4..];
    let cn: [u8; NONCE] = rand::random();
    let mut msg = Vec::with_capacity(NONCE + TAG);
    msg.extend_from_slice(&cn);
    msg.extend_from_slice(&tag(secret, b"client", sn, &cn).finalize().into_bytes());
    s.write_all(&msg).await?;
    let mut ok = [0u8; 1];
    s.read_exact(&mut ok).await?;
    if ok[0] != 1 {
        return Err(bad("cache peer refused our cluster secret"));
    }
    let mut st = [0u8; TAG];
    s.read_exact(&mut st).await?;
    if tag(secret, b"server", sn, &cn).verify_slice(&st).is_err() {
        return Err(bad("cache peer failed to prove the cluster secret"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_of_another_protocol_version_is_named_as_such() {
        let (mut c, mut s) = tokio::io::duplex(256);
        let mut old = b"KWC1".to_vec();
        old.extend_from_slice(&[0u8; NONCE]);
        s.write_all(&old).await.unwrap();
        let e = connect(&mut c, b"secret").await.unwrap_err();
        assert!(e.to_string().contains("another version"), "{e}");
    }

    #[tokio::test]
    async fn peers_with_one_secret_agree() {
        let (mut c, mut s) = tokio::io::duplex(256);
        let (a, b) = tokio::join!(accept(&mut s, b"secret"), connect(&mut c, b"secret"));
        a.unwrap();
        b.unwrap();
    }
}
