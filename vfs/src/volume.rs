//! A volume: the file-system-like API over a backend, a keyring and the Coordinator.

use std::sync::Arc;
use std::time::SystemTime;

use keyward_ownership::{Claim, Coordinator, Guard};

use crate::backend::local::LocalBackend;
use crate::backend::{Backend, BlobRead};
use crate::config::{check_volume_name, BackendKind, VfsConfig};
use crate::crypto::{hmac_sha256, CipherKind};
use crate::error::{Result, VfsError};
use crate::file::{FileCore, VfsFile, VfsReader};
use crate::format::{check_segment_size, Header, DEFAULT_SEGMENT_SIZE, SEGMENT_OVERHEAD};
use crate::keys::{KeyId, Keyring};
use crate::path::{file_path, normalize};

/// How new files of a volume are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VfsOptions {
    pub cipher: CipherKind,
    pub segment_size: u32,
    pub name_encryption: bool,
}

impl Default for VfsOptions {
    fn default() -> Self {
        VfsOptions {
            cipher: CipherKind::Aes256Gcm,
            segment_size: DEFAULT_SEGMENT_SIZE,
            name_encryption: false,
        }
    }
}

pub(crate) struct Inner {
    pub volume: String,
    pub backend: Arc<dyn Backend>,
    pub keyring: Keyring,
    pub options: VfsOptions,
    pub coord: Coordinator,
}

/// One encrypted volume. Cheap to clone.
#[derive(Clone)]
pub struct Vfs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Vfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vfs")
            .field("volume", &self.inner.volume)
            .field("backend", &self.inner.backend.kind())
            .field("options", &self.inner.options)
            .finish()
    }
}

/// An entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirEntry {
    /// The entry's name inside the directory.
    pub name: String,
    /// The full volume path.
    pub path: String,
    pub is_dir: bool,
}

/// What `stat` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub path: String,
    /// Plaintext size in bytes.
    pub size: u64,
    pub created: Option<SystemTime>,
    pub modified: Option<SystemTime>,
    pub cipher: CipherKind,
    pub key_id: KeyId,
    pub segment_size: u32,
}

impl Vfs {
    /// A volume over any backend.
    pub fn new(
        volume: &str,
        backend: Arc<dyn Backend>,
        keyring: Keyring,
        options: VfsOptions,
        coord: Coordinator,
    ) -> Result<Vfs> {
        check_volume_name(volume)?;
        check_segment_size(options.segment_size)?;
        Ok(Vfs {
            inner: Arc::new(Inner {
                volume: volume.to_owned(),
                backend,
                keyring,
                options,
                coord,
            }),
        })
    }

    /// The volume a config describes: its backend, and its keyring loaded from the key file
    /// (sealed by the passphrase from `passphrase_env` when set).
    pub async fn from_config(cfg: &VfsConfig, coord: Coordinator) -> Result<Vfs> {
        cfg.validate()?;
        let pass = cfg.passphrase()?;
        let keyring = Keyring::load(&cfg.key_file_path(), pass.as_ref().map(|p| p.as_bytes()))?;
        let backend: Arc<dyn Backend> = match cfg.backend {
            BackendKind::Local => Arc::new(LocalBackend::new(&cfg.root, &cfg.volume)?),
            BackendKind::Dbc => {
                if cfg.segment_size as usize + SEGMENT_OVERHEAD > crate::backend::dbc::MAX_ROW_BYTES
                {
                    return Err(VfsError::Config(format!(
                        "segment_size {} is too large for the DBC backend (rows hold at most {} bytes)",
                        cfg.segment_size,
                        crate::backend::dbc::MAX_ROW_BYTES
                    )));
                }
                let url = cfg.dbc_url.as_deref().unwrap_or_default();
                Arc::new(crate::backend::dbc::DbcBackend::connect(url, &cfg.volume).await?)
            }
        };
        Vfs::new(
            &cfg.volume,
            backend,
            keyring,
            VfsOptions {
                cipher: cfg.cipher,
                segment_size: cfg.segment_size,
                name_encryption: cfg.name_encryption,
            },
            coord,
        )
    }

    pub fn volume(&self) -> &str {
        &self.inner.volume
    }

    pub fn options(&self) -> VfsOptions {
        self.inner.options
    }

    pub fn keyring(&self) -> &Keyring {
        &self.inner.keyring
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The name a path has in the backend: the path itself, or with name encryption a keyed
    /// hash of it (HMAC-SHA256 under the keyring's name key, 64 hex digits).
    pub fn backend_name(&self, path: &str) -> Result<String> {
        let p = file_path(path)?;
        Ok(self.name_of(&p))
    }

    fn name_of(&self, normalized: &str) -> String {
        if self.inner.options.name_encryption {
            hex::encode(hmac_sha256(
                self.inner.keyring.name_key(),
                &[self.inner.volume.as_bytes(), normalized.as_bytes()],
            ))
        } else {
            normalized.to_owned()
        }
    }

    /// The ownership key of a file: `vfs/<volume>/<backend name>`.
    pub fn ownership_key(&self, path: &str) -> Result<String> {
        Ok(format!(
            "vfs/{}/{}",
            self.inner.volume,
            self.backend_name(path)?
        ))
    }

    async fn claim(&self, path: &str) -> Result<Guard> {
        let key = self.ownership_key(path)?;
        match self.inner.coord.claim(&[&key]).await?.pop() {
            Some(Claim::Granted(g)) => Ok(g),
            Some(Claim::OwnedBy(o)) => Err(VfsError::NotOwner {
                path: path.to_owned(),
                owner: o.node.to_string(),
            }),
            None => Err(VfsError::Ownership(
                keyward_ownership::OwnershipError::Protocol("empty claim reply".into()),
            )),
        }
    }

    async fn open_blob(&self, path: &str) -> Result<(String, Box<dyn BlobRead>)> {
        let name = self.name_of(path);
        let blob = self
            .inner
            .backend
            .open(&name)
            .await?
            .ok_or_else(|| VfsError::NotFound {
                path: path.to_owned(),
            })?;
        Ok((name, blob))
    }

    async fn open_core(&self, path: &str) -> Result<(String, FileCore)> {
        let (name, blob) = self.open_blob(path).await?;
        let expect = self.inner.options.name_encryption.then_some(path);
        let core = FileCore::open(path, blob, &self.inner, expect).await?;
        Ok((name, core))
    }

    /// Creates (or replaces, at commit) a file, empty. The caller owns it until the handle
    /// is dropped or closed; another node's claim makes this fail with `NotOwner`.
    pub async fn create(&self, path: &str) -> Result<VfsFile> {
        let path = file_path(path)?;
        let guard = self.claim(&path).await?;
        let o = self.inner.options;
        let name_for_header = o.name_encryption.then_some(path.as_str());
        let (header, crypto) = Header::create(
            &self.inner.keyring,
            o.cipher,
            o.segment_size,
            name_for_header,
        )?;
        let name = self.name_of(&path);
        let txn = self
            .inner
            .backend
            .create(&name, &header.encode(), guard.token())
            .await?;
        let core = FileCore::created(&path, header, crypto, txn);
        Ok(VfsFile::new(core, self.inner.clone(), name, guard))
    }

    /// Opens an existing file for reading and writing (owning it, as for `create`).
    pub async fn edit(&self, path: &str) -> Result<VfsFile> {
        let path = file_path(path)?;
        let guard = self.claim(&path).await?;
        let (name, core) = self.open_core(&path).await?;
        Ok(VfsFile::new(core, self.inner.clone(), name, guard))
    }

    /// Opens a file for reading: a snapshot of its committed content. Needs no ownership.
    pub async fn open(&self, path: &str) -> Result<VfsReader> {
        let path = file_path(path)?;
        let (_, core) = self.open_core(&path).await?;
        Ok(VfsReader { core })
    }

    /// Reads a whole (small) file.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.open(path).await?.read_all().await
    }

    /// Writes a whole (small) file: create, write, commit, release.
    pub async fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        let mut f = self.create(path).await?;
        f.write_at(0, data).await?;
        f.close().await
    }

    /// Size, times, cipher and key of a file (its last segment is authenticated on the way).
    pub async fn stat(&self, path: &str) -> Result<Metadata> {
        let path = file_path(path)?;
        let (_, core) = self.open_core(&path).await?;
        Ok(Metadata {
            path,
            size: core.len,
            created: core.meta.created,
            modified: core.meta.modified,
            cipher: core.header.cipher,
            key_id: core.key_id(),
            segment_size: core.header.segment_size,
        })
    }

    pub async fn exists(&self, path: &str) -> Result<bool> {
        let path = file_path(path)?;
        Ok(self
            .inner
            .backend
            .open(&self.name_of(&path))
            .await?
            .is_some())
    }

    /// Deletes a file (owning it for the duration).
    pub async fn delete(&self, path: &str) -> Result<()> {
        let path = file_path(path)?;
        let guard = self.claim(&path).await?;
        let removed = self
            .inner
            .backend
            .remove(&self.name_of(&path), guard.token())
            .await?;
        guard.release().await?;
        if removed {
            Ok(())
        } else {
            Err(VfsError::NotFound { path })
        }
    }

    /// Renames a file, replacing `to` if it exists. Both names are owned for the duration.
    /// With name encryption the file is copied under its new name (segments as they are,
    /// header re-sealed with the new name) and then the old name deleted.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let from = file_path(from)?;
        let to = file_path(to)?;
        if from == to {
            return self.stat(&from).await.map(|_| ());
        }
        let g_from = self.claim(&from).await?;
        let g_to = self.claim(&to).await?;
        let (fname, tname) = (self.name_of(&from), self.name_of(&to));
        if !self.inner.options.name_encryption {
            self.inner
                .backend
                .rename(&fname, &tname, g_from.token(), g_to.token())
                .await?;
        } else {
            let (_, blob) = self.open_blob(&from).await?;
            let header = Header::parse(blob.header(), &from)?;
            let crypto = header.open(&self.inner.keyring, &from)?;
            if header.name(&crypto, &from)?.as_deref() != Some(from.as_str()) {
                return Err(VfsError::Tampered {
                    path: from,
                    what: "the file stored under this name was sealed for another name".into(),
                });
            }
            let new_header = header.rewrap(&self.inner.keyring, &crypto, Some(Some(&to)))?;
            let mut txn = self
                .inner
                .backend
                .create(&tname, &new_header.encode(), g_to.token())
                .await?;
            let mut buf = Vec::with_capacity(header.segment_size as usize + SEGMENT_OVERHEAD);
            for i in 0..blob.segment_count() {
                blob.read_segment(i, &mut buf).await?;
                txn.write_segment(i, &buf).await?;
            }
            if !g_to.is_valid() || !g_from.is_valid() {
                return Err(VfsError::OwnershipLost { path: to });
            }
            txn.commit(g_to.token()).await?;
            self.inner.backend.remove(&fname, g_from.token()).await?;
        }
        g_from.release().await?;
        g_to.release().await?;
        Ok(())
    }

    /// The entries directly inside directory `dir` (`""` or `/` for the volume root).
    pub async fn list(&self, dir: &str) -> Result<Vec<DirEntry>> {
        let dir = normalize(dir)?;
        let join = |name: &str| {
            if dir.is_empty() {
                name.to_owned()
            } else {
                format!("{dir}/{name}")
            }
        };
        let mut out = Vec::new();
        if !self.inner.options.name_encryption {
            for e in self.inner.backend.list(&dir).await? {
                out.push(DirEntry {
                    path: join(&e.name),
                    name: e.name,
                    is_dir: e.is_dir,
                });
            }
            return Ok(out);
        }
        // Hashed names are flat: read every header's sealed name and keep those under `dir`.
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut dirs = std::collections::BTreeSet::new();
        for e in self.inner.backend.list("").await? {
            if e.is_dir {
                continue;
            }
            let Some(blob) = self.inner.backend.open(&e.name).await? else {
                continue;
            };
            let name = match Header::parse(blob.header(), &e.name).and_then(|h| {
                let c = h.open(&self.inner.keyring, &e.name)?;
                h.name(&c, &e.name)
            }) {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(object = %e.name, error = %err, "vfs list: skipping an object that does not open");
                    continue;
                }
            };
            if self.name_of(&name) != e.name {
                tracing::warn!(object = %e.name, "vfs list: object's sealed name does not hash to its backend name; skipped");
                continue;
            }
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            match rest.split_once('/') {
                Some((d, _)) => {
                    dirs.insert(d.to_owned());
                }
                None => out.push(DirEntry {
                    name: rest.to_owned(),
                    path: name.clone(),
                    is_dir: false,
                }),
            }
        }
        for d in dirs {
            out.push(DirEntry {
                path: join(&d),
                name: d,
                is_dir: true,
            });
        }
        out.sort();
        Ok(out)
    }

    /// Re-seals a file's data key under the keyring's current master key (segments are not
    /// touched). Returns false when it already was.
    pub async fn rekey(&self, path: &str) -> Result<bool> {
        let path = file_path(path)?;
        let guard = self.claim(&path).await?;
        let name = self.name_of(&path);
        let (_, blob) = self.open_blob(&path).await?;
        let header = Header::parse(blob.header(), &path)?;
        if header.key_id == self.inner.keyring.current_id() {
            guard.release().await?;
            return Ok(false);
        }
        let crypto = header.open(&self.inner.keyring, &path)?;
        drop(blob);
        let new_header = header.rewrap(&self.inner.keyring, &crypto, None)?;
        let mut txn = self.inner.backend.edit(&name, guard.token()).await?;
        txn.set_header(&new_header.encode()).await?;
        if !guard.is_valid() {
            return Err(VfsError::OwnershipLost { path });
        }
        txn.commit(guard.token()).await?;
        guard.release().await?;
        Ok(true)
    }

    /// Every file path of the volume (recursively), sorted.
    pub async fn walk(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(d) = stack.pop() {
            for e in self.list(&d).await? {
                if e.is_dir {
                    stack.push(e.path);
                } else {
                    out.push(e.path);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}
