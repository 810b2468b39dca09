//! Keyward VFS: files with on-the-fly authenticated encryption, stored in a local directory
//! or as blobs through DBC's record face, written only by the node that owns the file's key.
//!
//! The format is in `FORMAT.md`. A file is a header (format version, random file id, key id,
//! cipher, segment size, wrapped data key) and fixed-size segments, each sealed by an AEAD
//! with its own tag; random reads and writes decrypt and re-seal only the segments involved.
//! Losing the keyring loses the data: export it (`keyward vfs key export`).

pub mod backend;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod error;
pub mod file;
pub mod format;
mod gcrypt;
pub mod keys;
pub mod path;
pub mod rekey;
pub mod stream;
mod volume;

pub use backend::local::LocalBackend;
pub use backend::{Backend, BlobEntry, BlobMeta, BlobRead, BlobTxn};
pub use cli::{run, KeyCommand, VfsCommand};
pub use config::{BackendKind, VfsConfig};
pub use crypto::CipherKind;
pub use error::{Result, VfsError};
pub use file::{VfsFile, VfsReader};
pub use keys::{KdfParams, KeyId, Keyring, MasterKey};
pub use stream::{VfsReadStream, VfsWriteStream};
pub use volume::{DirEntry, Metadata, Vfs, VfsOptions};
