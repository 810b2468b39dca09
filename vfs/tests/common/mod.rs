#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyward_ownership::{Coordinator, InProcessHub, SessionConfig};
use keyward_vfs::{CipherKind, Keyring, LocalBackend, Vfs, VfsOptions};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub hub: InProcessHub,
    pub coord: Coordinator,
    pub keyring: Keyring,
}

impl Env {
    pub async fn new() -> Env {
        let hub = InProcessHub::new();
        let coord = hub.connect(SessionConfig::default()).await.unwrap();
        Env {
            dir: tempfile::tempdir().unwrap(),
            hub,
            coord,
            keyring: Keyring::generate().unwrap(),
        }
    }

    pub fn volume_dir(&self) -> PathBuf {
        self.dir.path().join("vol")
    }

    pub fn vfs(&self, opts: VfsOptions) -> Vfs {
        self.vfs_with(opts, self.keyring.clone(), self.coord.clone())
    }

    pub fn vfs_with(&self, opts: VfsOptions, keyring: Keyring, coord: Coordinator) -> Vfs {
        let backend = Arc::new(LocalBackend::new(self.dir.path(), "vol").unwrap());
        Vfs::new("vol", backend, keyring, opts, coord).unwrap()
    }
}

pub fn opts(cipher: CipherKind, segment_size: u32) -> VfsOptions {
    VfsOptions {
        cipher,
        segment_size,
        name_encryption: false,
    }
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn raw_path(env: &Env, name: &str) -> PathBuf {
    env.volume_dir().join(name)
}

pub fn read_raw(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}
