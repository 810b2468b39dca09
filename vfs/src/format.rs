//! The on-storage format (see FORMAT.md): a header, then fixed-size segments, each
//! `nonce ‖ ciphertext ‖ tag` sealed by the file's AEAD with associated data binding the file
//! id, the segment index and a last-segment mark.

use zeroize::Zeroizing;

use crate::crypto::{
    random_array, random_bytes, CipherKind, SegmentCipher, DATA_KEY_LEN, NONCE_LEN, TAG_LEN,
};
use crate::error::{Result, VfsError};
use crate::keys::{KeyId, Keyring};

pub const MAGIC: [u8; 8] = *b"KWVFS\x1a\r\n";
pub const FORMAT_VERSION: u16 = 1;
/// Length of the fixed part of the header.
pub const FIXED_HEADER_LEN: usize = 104;
/// Bytes a sealed segment adds to its plaintext: nonce and tag.
pub const SEGMENT_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
pub const MIN_SEGMENT_SIZE: u32 = 16;
pub const MAX_SEGMENT_SIZE: u32 = 16 << 20;
pub const DEFAULT_SEGMENT_SIZE: u32 = 64 << 10;
/// Longest plaintext name the name block holds.
pub const MAX_NAME_LEN: usize = 4096;

const FLAG_NAME_BLOCK: u8 = 1;
const WRAP_AAD_END: usize = 56;
const NAME_AAD_LABEL: &[u8] = b"keyward-vfs/v1/name";

/// The parsed header of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub cipher: CipherKind,
    pub segment_size: u32,
    pub file_id: [u8; 16],
    pub key_id: KeyId,
    wrap_nonce: [u8; NONCE_LEN],
    wrapped_key: [u8; DATA_KEY_LEN],
    wrap_tag: [u8; TAG_LEN],
    /// `nonce ‖ encrypted name ‖ tag`, present when names are encrypted.
    name_block: Option<Vec<u8>>,
}

/// What the backend needs to lay a file out: where the segments start and how long they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub header_len: usize,
    pub segment_size: usize,
}

impl Layout {
    /// Length of a full sealed segment.
    pub fn stride(&self) -> usize {
        self.segment_size + SEGMENT_OVERHEAD
    }

    /// Reads the layout from the first bytes of a header. `None` if they are too few or the
    /// values are out of range; the full parse gives the precise error.
    pub fn peek(bytes: &[u8]) -> Option<Layout> {
        if bytes.len() < 20 || bytes[..8] != MAGIC {
            return None;
        }
        let seg = u32::from_le_bytes(bytes[12..16].try_into().ok()?);
        let hlen = u32::from_le_bytes(bytes[16..20].try_into().ok()?) as usize;
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&seg)
            || !(FIXED_HEADER_LEN..=FIXED_HEADER_LEN + SEGMENT_OVERHEAD + MAX_NAME_LEN)
                .contains(&hlen)
        {
            return None;
        }
        Some(Layout {
            header_len: hlen,
            segment_size: seg as usize,
        })
    }
}

/// The explicit random inputs of a new header (fixed in test vectors).
pub(crate) struct HeaderRandom {
    pub file_id: [u8; 16],
    pub data_key: Zeroizing<[u8; DATA_KEY_LEN]>,
    pub wrap_nonce: [u8; NONCE_LEN],
    pub name_nonce: [u8; NONCE_LEN],
}

impl HeaderRandom {
    pub fn fresh() -> Result<HeaderRandom> {
        Ok(HeaderRandom {
            file_id: random_array()?,
            data_key: Zeroizing::new(random_array()?),
            wrap_nonce: random_array()?,
            name_nonce: random_array()?,
        })
    }
}

pub fn check_segment_size(seg: u32) -> Result<()> {
    if (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&seg) {
        Ok(())
    } else {
        Err(VfsError::Config(format!(
            "segment size {seg} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}"
        )))
    }
}

impl Header {
    /// A header for a new file sealed with the keyring's current key, and the file's keys.
    pub fn create(
        keyring: &Keyring,
        cipher: CipherKind,
        segment_size: u32,
        name: Option<&str>,
    ) -> Result<(Header, FileCrypto)> {
        Header::create_with(keyring, cipher, segment_size, name, HeaderRandom::fresh()?)
    }

    pub(crate) fn create_with(
        keyring: &Keyring,
        cipher: CipherKind,
        segment_size: u32,
        name: Option<&str>,
        rnd: HeaderRandom,
    ) -> Result<(Header, FileCrypto)> {
        check_segment_size(segment_size)?;
        let mut h = Header {
            cipher,
            segment_size,
            file_id: rnd.file_id,
            key_id: keyring.current_id(),
            wrap_nonce: rnd.wrap_nonce,
            wrapped_key: [0; DATA_KEY_LEN],
            wrap_tag: [0; TAG_LEN],
            name_block: None,
        };
        let crypto = FileCrypto::new(cipher, &rnd.data_key, rnd.file_id, segment_size)?;
        if let Some(name) = name {
            h.name_block = Some(crypto.seal_name(name, &rnd.name_nonce)?);
        }
        h.wrap_with(keyring, &rnd.data_key)?;
        Ok((h, crypto))
    }

    fn wrap_with(&mut self, keyring: &Keyring, data_key: &[u8; DATA_KEY_LEN]) -> Result<()> {
        let key = keyring.current();
        self.key_id = key.id();
        let aad = self.encode();
        let (w, t) = key.wrap(&self.wrap_nonce, &aad[..WRAP_AAD_END], data_key)?;
        self.wrapped_key = w;
        self.wrap_tag = t;
        Ok(())
    }

    pub fn len(&self) -> usize {
        FIXED_HEADER_LEN + self.name_block.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn layout(&self) -> Layout {
        Layout {
            header_len: self.len(),
            segment_size: self.segment_size as usize,
        }
    }

    pub fn has_name(&self) -> bool {
        self.name_block.is_some()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.push(self.cipher.id());
        b.push(if self.name_block.is_some() {
            FLAG_NAME_BLOCK
        } else {
            0
        });
        b.extend_from_slice(&self.segment_size.to_le_bytes());
        b.extend_from_slice(&(self.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.file_id);
        b.extend_from_slice(&self.key_id.0);
        b.extend_from_slice(&self.wrap_nonce);
        b.extend_from_slice(&self.wrapped_key);
        b.extend_from_slice(&self.wrap_tag);
        if let Some(n) = &self.name_block {
            b.extend_from_slice(n);
        }
        b
    }

    /// Parses a header, checking everything that can be checked without a key.
    pub fn parse(bytes: &[u8], path: &str) -> Result<Header> {
        let tampered = |what: &str| VfsError::Tampered {
            path: path.to_owned(),
            what: format!("header: {what}"),
        };
        if bytes.len() < 10 {
            return Err(VfsError::Truncated {
                path: path.to_owned(),
                what: format!("{} bytes, shorter than a header", bytes.len()),
            });
        }
        if bytes[..8] != MAGIC {
            return Err(tampered("not a Keyward VFS file (bad magic)"));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(VfsError::UnknownVersion {
                path: path.to_owned(),
                version,
                supported: FORMAT_VERSION,
            });
        }
        if bytes.len() < FIXED_HEADER_LEN {
            return Err(VfsError::Truncated {
                path: path.to_owned(),
                what: format!("{} bytes, shorter than a header", bytes.len()),
            });
        }
        let cipher = CipherKind::from_id(bytes[10]).ok_or_else(|| tampered("unknown cipher id"))?;
        let flags = bytes[11];
        if flags & !FLAG_NAME_BLOCK != 0 {
            return Err(tampered("unknown flags"));
        }
        let layout =
            Layout::peek(bytes).ok_or_else(|| tampered("segment size or length out of range"))?;
        let has_name = flags & FLAG_NAME_BLOCK != 0;
        if has_name != (layout.header_len > FIXED_HEADER_LEN)
            || (has_name && layout.header_len < FIXED_HEADER_LEN + SEGMENT_OVERHEAD)
        {
            return Err(tampered("header length does not match its flags"));
        }
        if bytes.len() < layout.header_len {
            return Err(VfsError::Truncated {
                path: path.to_owned(),
                what: "header cut short".into(),
            });
        }
        Ok(Header {
            cipher,
            segment_size: layout.segment_size as u32,
            file_id: field(bytes, 20),
            key_id: KeyId(field(bytes, 36)),
            wrap_nonce: field(bytes, 44),
            wrapped_key: field(bytes, 56),
            wrap_tag: field(bytes, 88),
            name_block: has_name.then(|| bytes[FIXED_HEADER_LEN..layout.header_len].to_vec()),
        })
    }

    /// Unwraps the data key with the keyring: the file's keys, or WrongKey (no such key id)
    /// or Tampered (the right key does not authenticate the header).
    pub fn open(&self, keyring: &Keyring, path: &str) -> Result<FileCrypto> {
        let key = keyring.get(self.key_id).ok_or_else(|| VfsError::WrongKey {
            what: format!(
                "{path:?} is sealed with master key {} which is not in the keyring (have {})",
                self.key_id,
                keyring
                    .ids()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
        let aad = self.encode();
        let dk = key
            .unwrap_key(
                &self.wrap_nonce,
                &aad[..WRAP_AAD_END],
                &self.wrapped_key,
                &self.wrap_tag,
            )?
            .ok_or_else(|| VfsError::Tampered {
                path: path.to_owned(),
                what: "header does not authenticate under its master key".into(),
            })?;
        FileCrypto::new(self.cipher, &dk, self.file_id, self.segment_size)
    }

    /// The plaintext name from the name block, if any.
    pub fn name(&self, crypto: &FileCrypto, path: &str) -> Result<Option<String>> {
        let Some(block) = &self.name_block else {
            return Ok(None);
        };
        crypto.open_name(block, path).map(Some)
    }

    /// The same file re-sealed with the keyring's current key (and, when given, a new name
    /// block): the segments stay as they are.
    pub fn rewrap(
        &self,
        keyring: &Keyring,
        crypto: &FileCrypto,
        name: Option<Option<&str>>,
    ) -> Result<Header> {
        let mut h = self.clone();
        random_bytes(&mut h.wrap_nonce)?;
        if let Some(name) = name {
            h.name_block = match name {
                Some(n) => Some(crypto.seal_name(n, &random_array()?)?),
                None => None,
            };
        }
        h.wrap_with(keyring, &crypto.data_key)?;
        Ok(h)
    }
}

/// `N` bytes at `at`; the caller checked that `bytes` is long enough.
fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&bytes[at..at + N]);
    a
}

/// The keys of one open file, and segment sealing.
pub struct FileCrypto {
    cipher: SegmentCipher,
    data_key: Zeroizing<[u8; DATA_KEY_LEN]>,
    pub file_id: [u8; 16],
    pub segment_size: usize,
}

impl std::fmt::Debug for FileCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileCrypto({:?}, {})",
            self.cipher,
            hex::encode(self.file_id)
        )
    }
}

fn segment_aad(file_id: &[u8; 16], index: u64, last: bool) -> [u8; 25] {
    let mut a = [0u8; 25];
    a[..16].copy_from_slice(file_id);
    a[16..24].copy_from_slice(&index.to_le_bytes());
    a[24] = u8::from(last);
    a
}

/// How far from its position a misplaced segment is looked for when diagnosing a failure.
const REORDER_SEARCH: u64 = 256;

impl FileCrypto {
    fn new(
        kind: CipherKind,
        data_key: &[u8; DATA_KEY_LEN],
        file_id: [u8; 16],
        segment_size: u32,
    ) -> Result<FileCrypto> {
        Ok(FileCrypto {
            cipher: SegmentCipher::new(kind, data_key)?,
            data_key: Zeroizing::new(*data_key),
            file_id,
            segment_size: segment_size as usize,
        })
    }

    pub fn cipher(&self) -> CipherKind {
        self.cipher.kind()
    }

    /// Seals a segment in place. `buf` is `nonce ‖ plaintext ‖ tag`: the nonce and tag areas
    /// are overwritten.
    pub fn seal_segment(&self, index: u64, last: bool, buf: &mut [u8]) -> Result<()> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        self.seal_segment_with(index, last, &nonce, buf);
        Ok(())
    }

    pub(crate) fn seal_segment_with(
        &self,
        index: u64,
        last: bool,
        nonce: &[u8; NONCE_LEN],
        buf: &mut [u8],
    ) {
        let n = buf.len();
        buf[..NONCE_LEN].copy_from_slice(nonce);
        let aad = segment_aad(&self.file_id, index, last);
        let tag = self
            .cipher
            .seal(nonce, &aad, &mut buf[NONCE_LEN..n - TAG_LEN]);
        buf[n - TAG_LEN..].copy_from_slice(&tag);
    }

    /// Opens segment `index` of `count`, expected to carry the last mark `last`, in place; the plaintext is `buf[NONCE_LEN..][..len]`
    /// with the returned length. Failures are diagnosed into Truncated / Reordered / Tampered.
    pub fn open_segment(
        &self,
        index: u64,
        last: bool,
        count: u64,
        buf: &mut [u8],
        path: &str,
    ) -> Result<usize> {
        if buf.len() < SEGMENT_OVERHEAD {
            return Err(VfsError::Truncated {
                path: path.to_owned(),
                what: format!(
                    "segment {index} is {} bytes, shorter than its nonce and tag",
                    buf.len()
                ),
            });
        }
        if buf.len() > self.segment_size + SEGMENT_OVERHEAD {
            return Err(VfsError::Tampered {
                path: path.to_owned(),
                what: format!("segment {index} is longer than a segment"),
            });
        }
        let n = buf.len();
        let (nonce, rest) = buf.split_at_mut(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().unwrap_or_default();
        let (data, tag) = rest.split_at_mut(n - SEGMENT_OVERHEAD);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().unwrap_or_default();
        let try_open = |i: u64, l: bool, data: &mut [u8]| {
            self.cipher
                .open(&nonce, &segment_aad(&self.file_id, i, l), data, &tag)
                .is_ok()
        };
        if try_open(index, last, data) {
            // Only the final stored segment may be short (and, in a committed file, that one
            // is marked last); in a transaction it may still be unmarked.
            if !last && index + 1 < count && data.len() != self.segment_size {
                return Err(VfsError::Tampered {
                    path: path.to_owned(),
                    what: format!("segment {index} is short but not the last"),
                });
            }
            return Ok(data.len());
        }
        // Diagnosis only: the tag failed, find out why. Nothing is decrypted for the caller.
        let mut probe = data.to_vec();
        if try_open(index, !last, &mut probe) {
            return Err(if last {
                VfsError::Truncated {
                    path: path.to_owned(),
                    what: format!("the file ends after segment {index}, which is not its last"),
                }
            } else {
                VfsError::Tampered {
                    path: path.to_owned(),
                    what: format!("data follows segment {index}, which was sealed as the last"),
                }
            });
        }
        let lo = index.saturating_sub(REORDER_SEARCH);
        let hi = index
            .saturating_add(REORDER_SEARCH)
            .min(count.max(index + 1) + REORDER_SEARCH);
        for j in lo..hi {
            if j == index {
                continue;
            }
            for l in [false, true] {
                probe.copy_from_slice(data);
                if try_open(j, l, &mut probe) {
                    return Err(VfsError::Reordered {
                        path: path.to_owned(),
                        found: index,
                        sealed_for: j,
                    });
                }
            }
        }
        Err(VfsError::Tampered {
            path: path.to_owned(),
            what: format!("segment {index} does not authenticate"),
        })
    }

    fn seal_name(&self, name: &str, nonce: &[u8; NONCE_LEN]) -> Result<Vec<u8>> {
        if name.len() > MAX_NAME_LEN {
            return Err(VfsError::InvalidPath {
                path: name.chars().take(80).collect(),
                reason: format!("longer than {MAX_NAME_LEN} bytes"),
            });
        }
        let mut b = Vec::with_capacity(name.len() + SEGMENT_OVERHEAD);
        b.extend_from_slice(nonce);
        b.extend_from_slice(name.as_bytes());
        let aad = [NAME_AAD_LABEL, &self.file_id[..]].concat();
        let tag = self.cipher.seal(nonce, &aad, &mut b[NONCE_LEN..]);
        b.extend_from_slice(&tag);
        Ok(b)
    }

    fn open_name(&self, block: &[u8], path: &str) -> Result<String> {
        let tampered = || VfsError::Tampered {
            path: path.to_owned(),
            what: "name block does not authenticate".into(),
        };
        if block.len() < SEGMENT_OVERHEAD {
            return Err(tampered());
        }
        let nonce: [u8; NONCE_LEN] = block[..NONCE_LEN].try_into().map_err(|_| tampered())?;
        let tag: [u8; TAG_LEN] = block[block.len() - TAG_LEN..]
            .try_into()
            .map_err(|_| tampered())?;
        let mut data = block[NONCE_LEN..block.len() - TAG_LEN].to_vec();
        let aad = [NAME_AAD_LABEL, &self.file_id[..]].concat();
        self.cipher
            .open(&nonce, &aad, &mut data, &tag)
            .map_err(|_| tampered())?;
        String::from_utf8(data).map_err(|_| tampered())
    }
}

/// Number of segments a file of `len` plaintext bytes has: at least one, so that even an
/// empty file ends with a sealed last segment and cutting it off is detected.
pub fn segment_count(len: u64, segment_size: usize) -> u64 {
    len.div_ceil(segment_size as u64).max(1)
}

/// Plaintext length of segment `index` in a file of `len` bytes.
pub fn segment_len(len: u64, segment_size: usize, index: u64) -> usize {
    let start = index * segment_size as u64;
    len.saturating_sub(start).min(segment_size as u64) as usize
}

#[cfg(test)]
mod vectors {
    //! The test vectors of FORMAT.md, recomputed and compared.
    use super::*;
    use crate::keys::MasterKey;

    const TEXT: &[u8] = b"The quick brown fox jumps over the lazy dog";

    fn seq<const N: usize>(start: u8) -> [u8; N] {
        let mut a = [0u8; N];
        for (i, b) in a.iter_mut().enumerate() {
            *b = start.wrapping_add(i as u8);
        }
        a
    }

    /// (cipher, named?) -> lines "vector <cipher> <what> <hex>".
    fn compute(kind: CipherKind, name: Option<&str>) -> Vec<String> {
        let ring = Keyring::from_master(MasterKey::from_bytes(seq(0x00)));
        let rnd = HeaderRandom {
            file_id: seq(0xA0),
            data_key: Zeroizing::new(seq(0x40)),
            wrap_nonce: seq(0x60),
            name_nonce: seq(0x70),
        };
        let (h, c) = Header::create_with(&ring, kind, 16, name, rnd).unwrap();
        let tag = if name.is_some() { "named-" } else { "" };
        let mut out = vec![format!(
            "vector {tag}{kind} header {}",
            hex::encode(h.encode())
        )];
        let chunks: Vec<&[u8]> = TEXT.chunks(16).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut buf = vec![0u8; NONCE_LEN];
            buf.extend_from_slice(chunk);
            buf.extend_from_slice(&[0; TAG_LEN]);
            let last = i + 1 == chunks.len();
            c.seal_segment_with(i as u64, last, &[0x80 + i as u8; NONCE_LEN], &mut buf);
            out.push(format!(
                "vector {tag}{kind} segment{i} {}",
                hex::encode(&buf)
            ));
        }
        out
    }

    fn all() -> Vec<String> {
        let mut v = vec![format!(
            "vector key-id {}",
            MasterKey::from_bytes(seq(0x00)).id()
        )];
        for kind in CipherKind::ALL {
            v.extend(compute(kind, None));
        }
        v.extend(compute(CipherKind::Aes256Gcm, Some("docs/plan.txt")));
        v
    }

    #[test]
    #[ignore = "prints the vectors for FORMAT.md"]
    fn print_vectors() {
        for l in all() {
            println!("{l}");
        }
    }

    #[test]
    fn format_md_vectors_match() {
        let doc = include_str!("../FORMAT.md");
        let documented: Vec<String> = doc
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("vector "))
            .map(str::to_owned)
            .collect();
        assert_eq!(documented, all());
    }

    #[test]
    fn vectors_open_back() {
        let ring = Keyring::from_master(MasterKey::from_bytes(seq(0x00)));
        for kind in CipherKind::ALL {
            let lines = compute(kind, None);
            let header = hex::decode(lines[0].rsplit(' ').next().unwrap()).unwrap();
            let h = Header::parse(&header, "v").unwrap();
            let c = h.open(&ring, "v").unwrap();
            let mut text = Vec::new();
            let n = lines.len() - 1;
            for (i, l) in lines[1..].iter().enumerate() {
                let mut seg = hex::decode(l.rsplit(' ').next().unwrap()).unwrap();
                let m = c
                    .open_segment(i as u64, i + 1 == n, n as u64, &mut seg, "v")
                    .unwrap();
                text.extend_from_slice(&seg[NONCE_LEN..NONCE_LEN + m]);
            }
            assert_eq!(text, TEXT);
        }
    }
}
