//! The `[vfs]` section of Keyward's config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::crypto::CipherKind;
use crate::error::{Result, VfsError};
use crate::format::{check_segment_size, DEFAULT_SEGMENT_SIZE};

/// Which store holds the sealed files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A directory of the local file system (`root/<volume>/…`).
    #[default]
    Local,
    /// Blobs in a database through DBC's record face (`dbc_url`).
    Dbc,
}

/// Settings of one VFS volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VfsConfig {
    /// Volume name: the second part of every file's ownership key `vfs/<volume>/<path>`.
    pub volume: String,
    /// Local backend: files live under `root/<volume>/`. Also the default keyring location.
    pub root: PathBuf,
    pub backend: BackendKind,
    /// DBC backend: the database URL (`sqlite:…`, `postgres://…`, `mysql://…`, …).
    pub dbc_url: Option<String>,
    /// Cipher of new files; existing files keep theirs.
    pub cipher: CipherKind,
    /// The keyring file; `root/keyring.kwk` when unset.
    pub key_file: Option<PathBuf>,
    /// Name of an environment variable holding the passphrase that seals the keyring (read
    /// at startup; the passphrase itself is never in the config).
    pub passphrase_env: Option<String>,
    /// Hash file names for the backend and keep the real name encrypted in the header, so a
    /// backend listing reveals no names. Fixed for the life of a volume.
    pub name_encryption: bool,
    /// Plaintext bytes per segment of new files.
    pub segment_size: u32,
}

impl Default for VfsConfig {
    fn default() -> Self {
        VfsConfig {
            volume: "default".into(),
            root: PathBuf::from("./keyward-data/vfs"),
            backend: BackendKind::Local,
            dbc_url: None,
            cipher: CipherKind::Aes256Gcm,
            key_file: None,
            passphrase_env: None,
            name_encryption: false,
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

impl VfsConfig {
    pub fn key_file_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.root.join("keyring.kwk"))
    }

    /// The passphrase from the configured environment variable, if one is configured.
    pub fn passphrase(&self) -> Result<Option<zeroize::Zeroizing<String>>> {
        match &self.passphrase_env {
            None => Ok(None),
            Some(var) => std::env::var(var)
                .map(|p| Some(zeroize::Zeroizing::new(p)))
                .map_err(|_| VfsError::Config(format!("passphrase variable {var} is not set"))),
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_volume_name(&self.volume)?;
        check_segment_size(self.segment_size)?;
        if self.backend == BackendKind::Dbc && self.dbc_url.is_none() {
            return Err(VfsError::Config("backend = \"dbc\" needs dbc_url".into()));
        }
        Ok(())
    }
}

pub fn check_volume_name(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !v.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(VfsError::Config(format!(
            "volume name {v:?} must be 1-64 characters of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}
