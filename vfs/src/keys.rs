//! Master keys and the keyring: key ids, data-key wrapping, the name-hashing key, and the two
//! ways to keep a keyring on disk (a plain key file, or sealed under a passphrase by Argon2id).
//!
//! Losing every copy of the keyring loses the data: there is no recovery. Export it for backup
//! (`keyward vfs key export`).

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use zeroize::Zeroizing;

use crate::crypto::{hmac_sha256, random_array, random_bytes, DATA_KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{Result, VfsError};

const KEYRING_MAGIC: &str = "keyward-vfs-keyring v1";
const SEALED_MAGIC: &str = "keyward-vfs-sealed-keyring v1";

/// A master key's id: the first 8 bytes of HMAC-SHA256(key, "keyward-vfs/v1/key-id"). It is
/// derived, so a wrong key or passphrase shows up as an unknown id, not as tampering.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A 256-bit master key. Its bytes are wiped on drop and never printed.
#[derive(Clone)]
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
    id: KeyId,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        let bytes = Zeroizing::new(bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&hmac_sha256(&bytes[..], &[b"keyward-vfs/v1/key-id"])[..8]);
        MasterKey {
            bytes,
            id: KeyId(id),
        }
    }

    pub fn generate() -> Result<MasterKey> {
        Ok(MasterKey::from_bytes(random_array()?))
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Seals a file's data key: AES-256-GCM under this master key, binding `aad` (the header
    /// bytes before the wrapped key).
    pub(crate) fn wrap(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data_key: &[u8; DATA_KEY_LEN],
    ) -> Result<([u8; DATA_KEY_LEN], [u8; TAG_LEN])> {
        let c = aes(&self.bytes[..])?;
        let mut out = *data_key;
        let tag = c
            .encrypt_inout_detached(nonce.into(), aad, (&mut out[..]).into())
            .map_err(|_| VfsError::Key("key wrap failed".into()))?;
        Ok((out, tag.into()))
    }

    /// Opens a wrapped data key; `None` when it does not authenticate.
    pub(crate) fn unwrap_key(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        wrapped: &[u8; DATA_KEY_LEN],
        tag: &[u8; TAG_LEN],
    ) -> Result<Option<Zeroizing<[u8; DATA_KEY_LEN]>>> {
        let c = aes(&self.bytes[..])?;
        let mut out = Zeroizing::new(*wrapped);
        match c.decrypt_inout_detached(nonce.into(), aad, (&mut out[..]).into(), tag.into()) {
            Ok(()) => Ok(Some(out)),
            Err(_) => Ok(None),
        }
    }
}

fn aes(key: &[u8]) -> Result<Aes256Gcm> {
    Aes256Gcm::new_from_slice(key).map_err(|_| VfsError::Key("bad AES-256 key length".into()))
}

/// Argon2id cost parameters for sealing a keyring under a passphrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: RFC 9106's second recommended option.
    fn default() -> Self {
        KdfParams {
            m_cost: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only.
    pub fn insecure_fast() -> Self {
        KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }
}

/// Derives a 256-bit key from a passphrase with Argon2id.
pub fn derive_from_passphrase(
    passphrase: &[u8],
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>> {
    let p = argon2::Params::new(params.m_cost, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| VfsError::Key(format!("bad Argon2id parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(passphrase, salt, &mut out[..])
        .map_err(|e| VfsError::Key(format!("Argon2id failed: {e}")))?;
    Ok(out)
}

/// Several master keys, one of them current (new files are sealed with it; older ones still
/// open the files they sealed), plus the volume's name-hashing key, which does not rotate
/// because backend names are derived from it.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<MasterKey>,
    current: KeyId,
    name_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys.iter().map(|k| k.id).collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

impl Keyring {
    /// A fresh keyring with one random master key and a random name key.
    pub fn generate() -> Result<Keyring> {
        let k = MasterKey::generate()?;
        Ok(Keyring {
            current: k.id,
            keys: vec![k],
            name_key: Zeroizing::new(random_array()?),
        })
    }

    /// A keyring of one master key; the name key is derived from it.
    pub fn from_master(key: MasterKey) -> Keyring {
        let name_key = Zeroizing::new(hmac_sha256(&key.bytes[..], &[b"keyward-vfs/v1/names"]));
        Keyring {
            current: key.id,
            keys: vec![key],
            name_key,
        }
    }

    pub fn current(&self) -> &MasterKey {
        // `current` always names a key of `keys`: every constructor and mutator keeps it so.
        self.keys
            .iter()
            .find(|k| k.id == self.current)
            .unwrap_or(&self.keys[0])
    }

    pub fn current_id(&self) -> KeyId {
        self.current
    }

    pub fn get(&self, id: KeyId) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|k| k.id).collect()
    }

    pub(crate) fn name_key(&self) -> &[u8; 32] {
        &self.name_key
    }

    /// Adds a master key (if new) and makes it current. Returns its id.
    pub fn add_current(&mut self, key: MasterKey) -> KeyId {
        let id = key.id;
        if self.get(id).is_none() {
            self.keys.push(key);
        }
        self.current = id;
        id
    }

    /// Generates a new master key and makes it current; files keep opening with the old keys
    /// until they are rekeyed.
    pub fn rotate(&mut self) -> Result<KeyId> {
        Ok(self.add_current(MasterKey::generate()?))
    }

    /// Drops a non-current key. Files still sealed with it become unreadable: rekey first.
    pub fn remove(&mut self, id: KeyId) -> Result<()> {
        if id == self.current {
            return Err(VfsError::Key(format!("key {id} is current; rotate first")));
        }
        let before = self.keys.len();
        self.keys.retain(|k| k.id != id);
        if self.keys.len() == before {
            return Err(VfsError::Key(format!("no key {id} in the keyring")));
        }
        Ok(())
    }

    /// The keyring as text: the backup format and the plain key-file format.
    pub fn export(&self) -> Zeroizing<String> {
        let mut s = String::new();
        s.push_str(KEYRING_MAGIC);
        s.push('\n');
        s.push_str("# Keyward VFS keyring. Anyone holding this file can read the volume;\n");
        s.push_str("# losing every copy of it loses the data.\n");
        s.push_str(&format!("name-key {}\n", hex::encode(&self.name_key[..])));
        for k in &self.keys {
            let cur = if k.id == self.current { " current" } else { "" };
            s.push_str(&format!("key {}{}\n", hex::encode(&k.bytes[..]), cur));
        }
        Zeroizing::new(s)
    }

    /// Parses [`export`](Self::export)'s text.
    pub fn parse(text: &str) -> Result<Keyring> {
        let bad = |m: &str| VfsError::Key(format!("malformed keyring: {m}"));
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        if lines.next() != Some(KEYRING_MAGIC) {
            return Err(bad("missing header line"));
        }
        let mut name_key = None;
        let mut keys = Vec::new();
        let mut current = None;
        for line in lines {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("name-key"), Some(h), None, None) => name_key = Some(hex32(h)?),
                (Some("key"), Some(h), flag, None) => {
                    let k = MasterKey::from_bytes(*hex32(h)?);
                    match flag {
                        None => {}
                        Some("current") => current = Some(k.id),
                        Some(_) => return Err(bad("unknown key flag")),
                    }
                    keys.push(k);
                }
                _ => return Err(bad("unknown line")),
            }
        }
        let name_key = name_key.ok_or_else(|| bad("no name-key line"))?;
        let current = match current {
            Some(c) => c,
            None => keys.last().map(|k| k.id).ok_or_else(|| bad("no key"))?,
        };
        Ok(Keyring {
            keys,
            current,
            name_key,
        })
    }

    /// Seals the keyring under a passphrase: Argon2id(passphrase, random salt) keys an
    /// AES-256-GCM seal of the exported text.
    pub fn seal(&self, passphrase: &[u8], params: KdfParams) -> Result<String> {
        let salt: [u8; 16] = random_array()?;
        let nonce: [u8; NONCE_LEN] = random_array()?;
        let head = format!(
            "{SEALED_MAGIC}\nargon2id m={} t={} p={}\nsalt {}\n",
            params.m_cost,
            params.t_cost,
            params.p_cost,
            hex::encode(salt)
        );
        let key = derive_from_passphrase(passphrase, &salt, params)?;
        let mut data = self.export().as_bytes().to_vec();
        let tag = aes(&key[..])?
            .encrypt_inout_detached((&nonce).into(), head.as_bytes(), (&mut data[..]).into())
            .map_err(|_| VfsError::Key("keyring seal failed".into()))?;
        data.extend_from_slice(&tag);
        Ok(format!(
            "{head}nonce {}\ndata {}\n",
            hex::encode(nonce),
            hex::encode(&data)
        ))
    }

    /// Opens a sealed keyring. A wrong passphrase is [`VfsError::WrongKey`].
    pub fn unseal(text: &str, passphrase: &[u8]) -> Result<Keyring> {
        let bad = |m: &str| VfsError::Key(format!("malformed sealed keyring: {m}"));
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() < 5 || lines[0] != SEALED_MAGIC {
            return Err(bad("missing header line"));
        }
        let mut params = KdfParams::default();
        let mut words = lines[1].split_whitespace();
        if words.next() != Some("argon2id") {
            return Err(bad("unknown KDF"));
        }
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(|| bad("bad KDF parameter"))?;
            let v: u32 = v.parse().map_err(|_| bad("bad KDF parameter"))?;
            match k {
                "m" => params.m_cost = v,
                "t" => params.t_cost = v,
                "p" => params.p_cost = v,
                _ => return Err(bad("unknown KDF parameter")),
            }
        }
        let field = |line: &str, name: &str| -> Result<Vec<u8>> {
            let h = line
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .ok_or_else(|| bad(name))?;
            hex::decode(h.trim()).map_err(|_| bad(name))
        };
        let salt = field(lines[2], "salt")?;
        let nonce: [u8; NONCE_LEN] = field(lines[3], "nonce")?
            .try_into()
            .map_err(|_| bad("nonce length"))?;
        let mut data = field(lines[4], "data")?;
        if data.len() < TAG_LEN {
            return Err(bad("data too short"));
        }
        let tag: [u8; TAG_LEN] = data
            .split_off(data.len() - TAG_LEN)
            .try_into()
            .map_err(|_| bad("tag"))?;
        let head = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2]);
        let key = derive_from_passphrase(passphrase, &salt, params)?;
        let mut data = Zeroizing::new(data);
        aes(&key[..])?
            .decrypt_inout_detached(
                (&nonce).into(),
                head.as_bytes(),
                (&mut data[..]).into(),
                (&tag).into(),
            )
            .map_err(|_| VfsError::WrongKey {
                what: "the passphrase does not open the keyring (or the keyring file was modified)"
                    .into(),
            })?;
        let text = std::str::from_utf8(&data).map_err(|_| bad("not UTF-8"))?;
        Keyring::parse(text)
    }

    /// Loads a keyring file: sealed when `passphrase` is given, plain otherwise.
    pub fn load(path: &Path, passphrase: Option<&[u8]>) -> Result<Keyring> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VfsError::Key(format!(
                "no keyring at {} (create one with `keyward vfs key init`)",
                path.display()
            )),
            _ => VfsError::io(path.display().to_string(), e),
        })?);
        let sealed = text.starts_with(SEALED_MAGIC);
        match (sealed, passphrase) {
            (true, Some(p)) => Keyring::unseal(&text, p),
            (true, None) => Err(VfsError::Key(format!(
                "{} is sealed by a passphrase; set the passphrase variable",
                path.display()
            ))),
            (false, _) => Keyring::parse(&text),
        }
    }

    /// Writes the keyring file (sealed when `passphrase` is given) with mode 0600, atomically.
    pub fn save(&self, path: &Path, passphrase: Option<(&[u8], KdfParams)>) -> Result<()> {
        let text = match passphrase {
            Some((p, params)) => Zeroizing::new(self.seal(p, params)?),
            None => self.export(),
        };
        let p = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| VfsError::io(p.clone(), e))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        let mut r = [0u8; 4];
        random_bytes(&mut r)?;
        tmp.push(format!(".tmp{}", hex::encode(r)));
        let tmp = std::path::PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            VfsError::io(p, e)
        })
    }
}

fn hex32(h: &str) -> Result<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(h, &mut out[..])
        .map_err(|_| VfsError::Key("malformed keyring: a key is not 64 hex digits".into()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_text_round_trips() {
        let mut k = Keyring::generate().unwrap();
        let first = k.current_id();
        let second = k.rotate().unwrap();
        let back = Keyring::parse(&k.export()).unwrap();
        assert_eq!(back.ids(), vec![first, second]);
        assert_eq!(back.current_id(), second);
        assert_eq!(back.name_key(), k.name_key());
    }

    #[test]
    fn sealed_keyring_needs_the_passphrase() {
        let k = Keyring::generate().unwrap();
        let sealed = k
            .seal(b"correct horse", KdfParams::insecure_fast())
            .unwrap();
        assert!(!sealed.contains(&hex::encode(k.current().bytes())));
        let back = Keyring::unseal(&sealed, b"correct horse").unwrap();
        assert_eq!(back.ids(), k.ids());
        assert!(matches!(
            Keyring::unseal(&sealed, b"wrong horse"),
            Err(VfsError::WrongKey { .. })
        ));
    }

    #[test]
    fn key_ids_are_derived() {
        let a = MasterKey::from_bytes([1; 32]);
        let b = MasterKey::from_bytes([1; 32]);
        let c = MasterKey::from_bytes([2; 32]);
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
    }
}
