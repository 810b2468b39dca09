//! Where sealed files live. A backend stores opaque objects (a header and numbered sealed
//! segments) under names; it never sees plaintext or keys. Writes go through a transaction
//! that becomes visible all at once at commit, or not at all.

use std::time::SystemTime;

use async_trait::async_trait;

use crate::error::Result;
use keyward_ownership::Token;

pub mod dbc;
pub mod local;

/// Times a backend knows about an object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobMeta {
    pub created: Option<SystemTime>,
    pub modified: Option<SystemTime>,
}

/// One entry of a backend directory listing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlobEntry {
    pub name: String,
    pub is_dir: bool,
}

/// A committed object, opened for reading: a snapshot that later commits do not change.
#[async_trait]
pub trait BlobRead: Send + Sync {
    /// The header bytes (or, when they do not parse, whatever prefix exists, so that the
    /// caller reports the precise error).
    fn header(&self) -> &[u8];
    /// How many segments are stored.
    fn segment_count(&self) -> u64;
    fn meta(&self) -> BlobMeta;
    /// Reads sealed segment `index` into `out` (resized to the segment's stored length; no
    /// allocation once `out` has the capacity of a full segment).
    async fn read_segment(&self, index: u64, out: &mut Vec<u8>) -> Result<()>;

    /// Reads the consecutive full segments `first .. first + count`, each `stride` bytes,
    /// back to back into `out` (resized to `count * stride`). Backends that can read them in
    /// one call override this; the caller never asks for the stored last segment this way.
    async fn read_full_segments(
        &self,
        first: u64,
        count: u64,
        stride: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.clear();
        let mut one = Vec::with_capacity(stride);
        for i in first..first + count {
            self.read_segment(i, &mut one).await?;
            out.extend_from_slice(&one);
        }
        Ok(())
    }
}

/// A write in progress on one object. Reads see the transaction's own writes.
#[async_trait]
pub trait BlobTxn: BlobRead {
    /// Replaces the header; its length must stay the same within one transaction.
    async fn set_header(&mut self, header: &[u8]) -> Result<()>;
    /// Writes sealed segment `index`, which is at most `segment_count()` (overwrite or append).
    async fn write_segment(&mut self, index: u64, sealed: &[u8]) -> Result<()>;
    /// Writes consecutive segments from `first` on: `sealed` holds them back to back, each
    /// `stride` bytes (a full segment) except perhaps the last. Backends that can write them
    /// in one call override this.
    async fn write_segments(&mut self, first: u64, stride: usize, sealed: &[u8]) -> Result<()> {
        for (i, s) in sealed.chunks(stride.max(1)).enumerate() {
            self.write_segment(first + i as u64, s).await?;
        }
        Ok(())
    }
    /// Drops every segment from `count` on.
    async fn truncate_segments(&mut self, count: u64) -> Result<()>;
    /// Makes the transaction's content the object's committed content, atomically, as the
    /// holder of fencing token `token`.
    async fn commit(self: Box<Self>, token: Token) -> Result<()>;
    /// Discards the transaction.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// A store of sealed objects.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// The committed object, or `None` when there is none.
    async fn open(&self, name: &str) -> Result<Option<Box<dyn BlobRead>>>;
    /// A transaction that, at commit, replaces `name` by a new object starting with `header`.
    async fn create(&self, name: &str, header: &[u8], token: Token) -> Result<Box<dyn BlobTxn>>;
    /// A transaction based on the committed object `name` (`NotFound` when absent).
    async fn edit(&self, name: &str, token: Token) -> Result<Box<dyn BlobTxn>>;
    /// Deletes `name`; false when it did not exist.
    async fn remove(&self, name: &str, token: Token) -> Result<bool>;
    /// Moves `from` to `to` (replacing `to`), as the holder of both names' tokens.
    async fn rename(&self, from: &str, to: &str, from_token: Token, to_token: Token) -> Result<()>;
    /// The entries directly under directory `dir` (`""` for the root).
    async fn list(&self, dir: &str) -> Result<Vec<BlobEntry>>;
}
