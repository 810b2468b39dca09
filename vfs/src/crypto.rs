//! Thin wrappers over the primitives the format uses: the three segment AEADs (RustCrypto's
//! AES-GCM; libgcrypt's Twofish-GCM, see `gcrypt.rs` for why), key wrapping, HMAC-SHA256
//! derivations and OS randomness. Nothing here implements a primitive.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{Result, VfsError};

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes of data-key material in every header; AES-128-GCM uses the first 16.
pub const DATA_KEY_LEN: usize = 32;

/// GCM (NIST SP 800-38D) over Twofish-256: GCM is defined for any 128-bit block cipher.
/// libgcrypt computes it (its own GCM mode over its own Twofish): no hand-made composition.
pub use crate::gcrypt::TwofishGcm as Twofish256Gcm;

/// The segment cipher of a file, as named in config and in the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
pub enum CipherKind {
    #[default]
    #[serde(rename = "aes-256-gcm", alias = "aes256gcm")]
    #[value(name = "aes-256-gcm", alias = "aes256gcm")]
    Aes256Gcm,
    #[serde(rename = "aes-128-gcm", alias = "aes128gcm")]
    #[value(name = "aes-128-gcm", alias = "aes128gcm")]
    Aes128Gcm,
    #[serde(rename = "twofish-256-gcm", alias = "twofish", alias = "twofish256gcm")]
    #[value(name = "twofish-256-gcm", alias = "twofish")]
    Twofish256Gcm,
}

impl CipherKind {
    pub const ALL: [CipherKind; 3] = [
        CipherKind::Aes256Gcm,
        CipherKind::Aes128Gcm,
        CipherKind::Twofish256Gcm,
    ];

    /// The id stored in the header.
    pub fn id(self) -> u8 {
        match self {
            CipherKind::Aes256Gcm => 1,
            CipherKind::Aes128Gcm => 2,
            CipherKind::Twofish256Gcm => 3,
        }
    }

    pub fn from_id(id: u8) -> Option<CipherKind> {
        CipherKind::ALL.into_iter().find(|c| c.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            CipherKind::Aes256Gcm => "aes-256-gcm",
            CipherKind::Aes128Gcm => "aes-128-gcm",
            CipherKind::Twofish256Gcm => "twofish-256-gcm",
        }
    }

    pub(crate) fn key_len(self) -> usize {
        match self {
            CipherKind::Aes128Gcm => 16,
            _ => 32,
        }
    }
}

impl std::fmt::Display for CipherKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The authentication tag did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailed;

/// A keyed segment AEAD. Sealing and opening work in place on the caller's buffer.
pub enum SegmentCipher {
    Aes256(Box<Aes256Gcm>),
    Aes128(Box<Aes128Gcm>),
    Twofish(Box<Twofish256Gcm>),
}

impl std::fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind().name())
    }
}

impl SegmentCipher {
    pub fn new(kind: CipherKind, key_material: &[u8; DATA_KEY_LEN]) -> Result<SegmentCipher> {
        let k = &key_material[..kind.key_len()];
        let bad = |_| VfsError::Key(format!("bad key length for {kind}"));
        Ok(match kind {
            CipherKind::Aes256Gcm => {
                SegmentCipher::Aes256(Box::new(Aes256Gcm::new_from_slice(k).map_err(bad)?))
            }
            CipherKind::Aes128Gcm => {
                SegmentCipher::Aes128(Box::new(Aes128Gcm::new_from_slice(k).map_err(bad)?))
            }
            CipherKind::Twofish256Gcm => SegmentCipher::Twofish(Box::new(Twofish256Gcm::new(k)?)),
        })
    }

    pub fn kind(&self) -> CipherKind {
        match self {
            SegmentCipher::Aes256(_) => CipherKind::Aes256Gcm,
            SegmentCipher::Aes128(_) => CipherKind::Aes128Gcm,
            SegmentCipher::Twofish(_) => CipherKind::Twofish256Gcm,
        }
    }

    /// Encrypts `data` in place and returns the tag.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
        let n = nonce.into();
        let tag = match self {
            SegmentCipher::Aes256(c) => c.encrypt_inout_detached(n, aad, data.into()),
            SegmentCipher::Aes128(c) => c.encrypt_inout_detached(n, aad, data.into()),
            SegmentCipher::Twofish(c) => {
                return c.seal(nonce, aad, data).unwrap_or_else(|| {
                    tracing::error!("libgcrypt failed to seal a segment; it will not verify");
                    [0; TAG_LEN]
                })
            }
        };
        // Only inputs beyond 64 GiB fail; segments are at most 16 MiB. (A zero tag never
        // verifies, so a failure here cannot pass as data.)
        tag.map(|t| t.into()).unwrap_or([0; TAG_LEN])
    }

    /// Verifies and decrypts `data` in place. On failure `data` is left as it was (GCM checks
    /// the tag before decrypting), so callers may retry with other associated data.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthFailed> {
        let n = nonce.into();
        let t = tag.into();
        let r = match self {
            SegmentCipher::Aes256(c) => c.decrypt_inout_detached(n, aad, data.into(), t),
            SegmentCipher::Aes128(c) => c.decrypt_inout_detached(n, aad, data.into(), t),
            SegmentCipher::Twofish(c) => return c.open(nonce, aad, data, tag),
        };
        r.map_err(|_| AuthFailed)
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| VfsError::Key(format!("OS random source failed: {e}")))
}

pub fn random_array<const N: usize>() -> Result<[u8; N]> {
    let mut a = [0u8; N];
    random_bytes(&mut a)?;
    Ok(a)
}

/// HMAC-SHA256(key, parts joined with length prefixes), so that no two part lists collide.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC accepts keys of any length.
        Err(_) => return [0; 32],
    };
    for p in parts {
        mac.update(&(p.len() as u64).to_le_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cipher_round_trips_and_rejects_a_flip() {
        for kind in CipherKind::ALL {
            let c = SegmentCipher::new(kind, &[7u8; DATA_KEY_LEN]).unwrap();
            let mut data = b"hello segment".to_vec();
            let tag = c.seal(&[1; 12], b"aad", &mut data);
            assert_ne!(&data, b"hello segment");
            let mut bad = data.clone();
            bad[0] ^= 1;
            assert_eq!(c.open(&[1; 12], b"aad", &mut bad, &tag), Err(AuthFailed));
            assert_eq!(
                c.open(&[1; 12], b"aad!", &mut data.clone(), &tag),
                Err(AuthFailed)
            );
            c.open(&[1; 12], b"aad", &mut data, &tag).unwrap();
            assert_eq!(&data, b"hello segment");
        }
    }
}
