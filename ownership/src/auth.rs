//! Cluster-secret authentication: HMAC-SHA256 challenge-response in both directions, so that
//! neither side learns anything replayable and the secret never crosses the wire.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub(crate) const NONCE: usize = 16;
pub(crate) const TAG: usize = 32;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], role: &[u8], server_nonce: &[u8], client_nonce: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail; an empty key is a valid key.
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => HmacSha256::new(&Default::default()),
    };
    m.update(b"keyward-ownership-v1 ");
    m.update(role);
    m.update(server_nonce);
    m.update(client_nonce);
    m
}

/// The client's proof of the secret for this pair of nonces.
pub(crate) fn client_tag(secret: &[u8], server_nonce: &[u8], client_nonce: &[u8]) -> [u8; TAG] {
    mac(secret, b"client", server_nonce, client_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// The server's proof, so that a client does not talk to an impostor.
pub(crate) fn server_tag(secret: &[u8], server_nonce: &[u8], client_nonce: &[u8]) -> [u8; TAG] {
    mac(secret, b"server", server_nonce, client_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of a peer's tag.
pub(crate) fn verify(
    secret: &[u8],
    role_is_client: bool,
    server_nonce: &[u8],
    client_nonce: &[u8],
    tag: &[u8],
) -> bool {
    let role: &[u8] = if role_is_client { b"client" } else { b"server" };
    mac(secret, role, server_nonce, client_nonce)
        .verify_slice(tag)
        .is_ok()
}

pub(crate) fn nonce() -> [u8; NONCE] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_only_with_the_same_secret() {
        let (s, c) = (nonce(), nonce());
        let t = client_tag(b"k", &s, &c);
        assert!(verify(b"k", true, &s, &c, &t));
        assert!(!verify(b"other", true, &s, &c, &t));
        assert!(!verify(b"k", false, &s, &c, &t));
        assert!(verify(b"k", false, &s, &c, &server_tag(b"k", &s, &c)));
    }
}
