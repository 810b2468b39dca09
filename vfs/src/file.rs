//! Open files: a one-segment plaintext cache over a backend object. Reads and writes touch
//! only the segments they cover; a writable file stages its segments in a backend
//! transaction that becomes visible at commit.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use keyward_ownership::Guard;
use tokio::task::JoinHandle;

use crate::backend::{BlobMeta, BlobRead, BlobTxn};
use crate::crypto::{NONCE_LEN, TAG_LEN};
use crate::error::{Result, VfsError};
use crate::format::{segment_count, segment_len, FileCrypto, Header, SEGMENT_OVERHEAD};
use crate::keys::KeyId;
use crate::volume::Inner;

/// Largest plaintext size a file may reach (keeps offset arithmetic far from overflow).
pub const MAX_FILE_SIZE: u64 = 1 << 60;

/// Segments are sealed (sequential writes) and opened (sequential reads) in batches of about
/// this many bytes on blocking threads, so that the AEAD runs on every core while the runtime
/// thread copies and does the I/O; one positional call moves a whole batch.
const BATCH_BYTES: usize = 1 << 20;
const MAX_BATCH_SEGMENTS: usize = 256;
/// Batches being sealed at once before the writer waits for the oldest: enough to keep two
/// cores busy, few enough to bound memory to a few MiB per file.
const WRITE_INFLIGHT: usize = 6;
/// Batches a sequential reader decrypts ahead of its position. With three (and at most 4 MiB
/// in flight) both cores sat idle a quarter of the time during a sequential read; six
/// interleaved against three read 1.0-1.03 against 0.84-1.02 of the AES-256 cipher's one-core
/// limit, and 1.48-1.54 against 1.11-1.24 of Twofish's (keyward-bench vfs, 2026-12-07).
const READ_AHEAD_BATCHES: usize = 6;
/// Consecutive segment loads after which a reader starts reading ahead (random reads on a
/// small file must not trigger it by chance).
const SEQUENTIAL_RUN: u32 = 3;

fn batch_segments(stride: usize) -> usize {
    (BATCH_BYTES / stride.max(1)).clamp(1, MAX_BATCH_SEGMENTS)
}

/// Batches in flight for a file with this stride: up to `most`, fewer when segments are so
/// large that a batch alone is several MiB.
fn batches_in_flight(stride: usize, most: usize) -> usize {
    let batch = batch_segments(stride) * stride;
    (8 * BATCH_BYTES / batch.max(1)).clamp(1, most)
}

fn join_error(path: &str, e: tokio::task::JoinError) -> VfsError {
    VfsError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(format!("sealing task failed: {e}")),
    }
}

/// A batch of consecutive full segments sealed off the runtime thread, back to back.
struct SealedBatch {
    first: u64,
    sealed: Vec<u8>,
    /// The plaintext segment buffers, returned for reuse.
    segs: Vec<Vec<u8>>,
}

/// Full segments of a sequential write on their way to the transaction: gathered, sealed on
/// blocking threads, then written in order. Anything else that touches the transaction first
/// drains this queue, so the transaction always sees writes in the order they were made.
#[derive(Default)]
struct WriteBehind {
    /// `nonce ‖ plaintext ‖ tag` buffers of consecutive full segments from `first` on.
    segs: Vec<Vec<u8>>,
    first: u64,
    jobs: VecDeque<JoinHandle<Result<SealedBatch>>>,
    spare_segs: Vec<Vec<u8>>,
    spare_batches: Vec<Vec<u8>>,
}

impl WriteBehind {
    fn is_empty(&self) -> bool {
        self.segs.is_empty() && self.jobs.is_empty()
    }
}

/// Consecutive full segments read in one call and opened on a blocking thread.
struct OpenedBatch {
    first: u64,
    buf: Vec<u8>,
    /// Per segment: its plaintext length, or why it did not open (taken once).
    results: Vec<Option<Result<usize>>>,
}

enum AheadSlot {
    Pending {
        first: u64,
        count: u64,
        job: JoinHandle<OpenedBatch>,
    },
    Ready(OpenedBatch),
}

impl AheadSlot {
    fn end(&self) -> u64 {
        match self {
            AheadSlot::Pending { first, count, .. } => first + count,
            AheadSlot::Ready(b) => b.first + b.results.len() as u64,
        }
    }
}

/// Read-ahead of a read-only source: segments after a sequential reader's position, opened
/// in parallel before they are asked for. Errors are kept per segment and reported only when
/// that segment is read, exactly as without read-ahead.
#[derive(Default)]
struct ReadAhead {
    slots: VecDeque<AheadSlot>,
    /// First segment not requested yet.
    next: u64,
    spare: Vec<Vec<u8>>,
    /// Set after a failed read-ahead I/O: the normal path reports it; stop trying.
    off: bool,
}

impl ReadAhead {
    fn reset(&mut self) {
        for slot in self.slots.drain(..) {
            if let AheadSlot::Ready(b) = slot {
                self.spare.push(b.buf);
            }
        }
        self.next = 0;
        self.off = false;
    }
}

pub(crate) enum Source {
    Read(Box<dyn BlobRead>),
    Txn(Box<dyn BlobTxn>),
    /// Committed; reopened on the next access.
    Closed,
}

/// The state shared by readers and writers.
pub(crate) struct FileCore {
    pub path: String,
    pub header: Header,
    pub crypto: Arc<FileCrypto>,
    pub len: u64,
    pub source: Source,
    pub meta: BlobMeta,
    /// Segments the source holds.
    stored: u64,
    /// Stored segments sealed with the last mark (normally one; the committed file's last).
    flagged: BTreeSet<u64>,
    /// `nonce ‖ plaintext ‖ tag` of the cached segment; allocated once at full size.
    buf: Vec<u8>,
    cur: Option<u64>,
    cur_len: usize,
    dirty: bool,
    loads: u32,
    wb: WriteBehind,
    ahead: ReadAhead,
    last_load: Option<u64>,
    run: u32,
}

impl FileCore {
    pub fn seg(&self) -> usize {
        self.crypto.segment_size
    }

    fn stride(&self) -> usize {
        self.seg() + SEGMENT_OVERHEAD
    }

    /// Opens a committed object: parses and authenticates the header, then reads and
    /// authenticates the last segment, which gives the length and proves the file is whole.
    pub async fn open(
        path: &str,
        blob: Box<dyn BlobRead>,
        inner: &Inner,
        expect_name: Option<&str>,
    ) -> Result<FileCore> {
        let header = Header::parse(blob.header(), path)?;
        let crypto = header.open(&inner.keyring, path)?;
        if let Some(expected) = expect_name {
            let name = header.name(&crypto, path)?;
            if name.as_deref() != Some(expected) {
                return Err(VfsError::Tampered {
                    path: path.to_owned(),
                    what: "the file stored under this name was sealed for another name".into(),
                });
            }
        }
        let stored = blob.segment_count();
        if stored == 0 {
            return Err(VfsError::Truncated {
                path: path.to_owned(),
                what: "no segments after the header".into(),
            });
        }
        let meta = blob.meta();
        let mut core = FileCore {
            path: path.to_owned(),
            len: 0,
            source: Source::Read(blob),
            meta,
            stored,
            flagged: BTreeSet::from([stored - 1]),
            buf: Vec::with_capacity(crypto.segment_size + SEGMENT_OVERHEAD),
            cur: None,
            cur_len: 0,
            dirty: false,
            loads: 0,
            wb: WriteBehind::default(),
            ahead: ReadAhead::default(),
            last_load: None,
            run: 0,
            header,
            crypto: Arc::new(crypto),
        };
        let last = stored - 1;
        core.read_source(last).await?;
        let m = core
            .crypto
            .open_segment(last, true, stored, &mut core.buf, path)?;
        if m == 0 && stored > 1 {
            return Err(VfsError::Tampered {
                path: path.to_owned(),
                what: "empty last segment after full ones".into(),
            });
        }
        core.len = last * core.seg() as u64 + m as u64;
        core.buf.resize(core.stride(), 0);
        core.cur = Some(last);
        core.cur_len = m;
        Ok(core)
    }

    /// A new, empty file whose header is already in `txn`.
    pub fn created(
        path: &str,
        header: Header,
        crypto: FileCrypto,
        txn: Box<dyn BlobTxn>,
    ) -> FileCore {
        FileCore {
            path: path.to_owned(),
            len: 0,
            source: Source::Txn(txn),
            meta: BlobMeta::default(),
            stored: 0,
            flagged: BTreeSet::new(),
            buf: Vec::with_capacity(crypto.segment_size + SEGMENT_OVERHEAD),
            cur: None,
            cur_len: 0,
            dirty: false,
            loads: 0,
            wb: WriteBehind::default(),
            ahead: ReadAhead::default(),
            last_load: None,
            run: 0,
            header,
            crypto: Arc::new(crypto),
        }
    }

    pub fn key_id(&self) -> KeyId {
        self.header.key_id
    }

    /// Replaces the source; what was read ahead from the old one is dropped with it.
    pub(crate) fn set_source(&mut self, source: Source) {
        self.ahead.reset();
        self.last_load = None;
        self.run = 0;
        self.source = source;
    }

    pub fn has_txn(&self) -> bool {
        matches!(self.source, Source::Txn(_))
    }

    async fn read_source(&mut self, index: u64) -> Result<()> {
        let blob: &dyn BlobRead = match &self.source {
            Source::Read(b) => b.as_ref(),
            Source::Txn(t) => t.as_ref(),
            Source::Closed => {
                return Err(VfsError::InvalidArgument(
                    "file handle has no open source".into(),
                ))
            }
        };
        blob.read_segment(index, &mut self.buf).await
    }

    /// Brings segment `index` into the cache (flushing the previous one if dirty).
    pub async fn load(&mut self, index: u64) -> Result<()> {
        if self.cur == Some(index) {
            return Ok(());
        }
        // Long sequential runs never wait on I/O (page cache): give the scheduler a chance,
        // so lease heartbeats and other tasks keep running.
        self.loads = self.loads.wrapping_add(1);
        if self.loads.is_multiple_of(16) {
            tokio::task::yield_now().await;
        }
        self.flush(false).await?;
        self.cur = None;
        let want = segment_len(self.len, self.seg(), index);
        let stride = self.stride();
        if matches!(self.source, Source::Read(_)) {
            let sequential = self.last_load.is_some_and(|l| l + 1 == index);
            self.run = if sequential {
                self.run.saturating_add(1)
            } else {
                0
            };
            self.last_load = Some(index);
            if !sequential {
                self.ahead.reset();
            }
            let found = self.take_ahead(index).await?;
            if self.run >= SEQUENTIAL_RUN {
                self.fill_ahead(index + 1).await;
            }
            if let Some(m) = found {
                self.buf.resize(stride, 0);
                if want > m {
                    self.buf[NONCE_LEN + m..NONCE_LEN + want].fill(0);
                }
                self.dirty = want != m;
                self.cur = Some(index);
                self.cur_len = want;
                return Ok(());
            }
        } else {
            self.ahead.reset();
            self.last_load = None;
        }
        if index < self.stored {
            self.drain_writes().await?;
            self.read_source(index).await?;
            let last = self.flagged.contains(&index);
            let m =
                self.crypto
                    .open_segment(index, last, self.stored, &mut self.buf, &self.path)?;
            self.buf.resize(stride, 0);
            if want > m {
                self.buf[NONCE_LEN + m..NONCE_LEN + want].fill(0);
            }
            self.dirty = want != m;
        } else {
            self.buf.resize(stride, 0);
            self.buf[NONCE_LEN..NONCE_LEN + want].fill(0);
            self.dirty = true;
        }
        self.cur = Some(index);
        self.cur_len = want;
        Ok(())
    }

    fn txn(&mut self) -> Result<&mut Box<dyn BlobTxn>> {
        match &mut self.source {
            Source::Txn(t) => Ok(t),
            _ => Err(VfsError::InvalidArgument(
                "file is not open for writing".into(),
            )),
        }
    }

    /// Seals the cached segment into the transaction, with the last mark when `as_last`
    /// (only commit sets it; until then the mark is tracked in `flagged`). The cache is
    /// emptied: the buffer is encrypted in place.
    pub async fn flush(&mut self, as_last: bool) -> Result<()> {
        let Some(index) = self.cur.filter(|_| self.dirty) else {
            return Ok(());
        };
        self.dirty = false;
        self.cur = None;
        if index >= segment_count(self.len, self.seg()) {
            return Ok(());
        }
        let stride = self.stride();
        // Zero segments for a gap left by growing the file (every one of them full).
        while self.stored < index {
            let j = self.stored;
            let mut zero = self.spare_segment();
            zero.clear();
            zero.resize(stride, 0);
            self.queue_full(j, zero).await?;
        }
        if !as_last && self.cur_len == self.seg() {
            // A full segment not marked last: sealed in a batch off the runtime thread.
            let spare = self.spare_segment();
            let mut seg = std::mem::replace(&mut self.buf, spare);
            seg.resize(stride, 0);
            return self.queue_full(index, seg).await;
        }
        self.drain_writes().await?;
        if index + 1 < segment_count(self.len, self.seg()) && self.cur_len != self.seg() {
            // A short segment before the last would shift every later one: refuse rather
            // than store a broken file.
            return Err(VfsError::InvalidArgument(format!(
                "internal: segment {index} of {:?} would be stored short",
                self.path
            )));
        }
        let n = NONCE_LEN + self.cur_len + TAG_LEN;
        self.crypto
            .seal_segment(index, as_last, &mut self.buf[..n])?;
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.txn()?.write_segment(index, &buf[..n]).await;
        buf.truncate(0);
        self.buf = buf;
        r?;
        if index >= self.stored {
            self.stored = index + 1;
        }
        if as_last {
            self.flagged.insert(index);
        } else {
            self.flagged.remove(&index);
        }
        Ok(())
    }

    fn spare_segment(&mut self) -> Vec<u8> {
        self.wb
            .spare_segs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.stride()))
    }

    /// Queues full segment `index` (`nonce ‖ plaintext ‖ tag`, not marked last) for sealing
    /// in a batch. The segment counts as stored from now on; reads of it drain the queue.
    async fn queue_full(&mut self, index: u64, seg: Vec<u8>) -> Result<()> {
        if !self.wb.segs.is_empty() && self.wb.first + self.wb.segs.len() as u64 != index {
            self.dispatch_writes();
        }
        if self.wb.segs.is_empty() {
            self.wb.first = index;
        }
        self.wb.segs.push(seg);
        if self.wb.segs.len() >= batch_segments(self.stride()) {
            self.dispatch_writes();
        }
        if index >= self.stored {
            self.stored = index + 1;
        }
        self.flagged.remove(&index);
        while self.wb.jobs.len() > batches_in_flight(self.stride(), WRITE_INFLIGHT) {
            self.complete_write().await?;
        }
        Ok(())
    }

    /// Starts sealing the gathered segments on a blocking thread.
    fn dispatch_writes(&mut self) {
        if self.wb.segs.is_empty() {
            return;
        }
        let segs = std::mem::take(&mut self.wb.segs);
        let first = self.wb.first;
        let crypto = self.crypto.clone();
        let mut sealed = self.wb.spare_batches.pop().unwrap_or_default();
        self.wb.jobs.push_back(tokio::task::spawn_blocking(move || {
            sealed.clear();
            for (i, s) in segs.iter().enumerate() {
                let at = sealed.len();
                sealed.extend_from_slice(s);
                crypto.seal_segment(first + i as u64, false, &mut sealed[at..])?;
            }
            Ok(SealedBatch {
                first,
                sealed,
                segs,
            })
        }));
    }

    /// Waits for the oldest sealing batch and writes it to the transaction.
    async fn complete_write(&mut self) -> Result<()> {
        let Some(job) = self.wb.jobs.pop_front() else {
            return Ok(());
        };
        let batch = job.await.map_err(|e| join_error(&self.path, e))??;
        let stride = self.stride();
        self.txn()?
            .write_segments(batch.first, stride, &batch.sealed)
            .await?;
        self.wb.spare_batches.push(batch.sealed);
        self.wb.spare_segs.extend(batch.segs);
        Ok(())
    }

    /// Writes every queued segment to the transaction, in order.
    async fn drain_writes(&mut self) -> Result<()> {
        if self.wb.is_empty() {
            return Ok(());
        }
        self.dispatch_writes();
        while !self.wb.jobs.is_empty() {
            self.complete_write().await?;
        }
        Ok(())
    }

    /// The read-ahead result for segment `index`, if it was read ahead: its plaintext is
    /// copied into the cache buffer and its length returned, or its error returned.
    async fn take_ahead(&mut self, index: u64) -> Result<Option<usize>> {
        while self.ahead.slots.front().is_some_and(|s| s.end() <= index) {
            if let Some(AheadSlot::Ready(b)) = self.ahead.slots.pop_front() {
                self.ahead.spare.push(b.buf);
            }
        }
        let Some(slot) = self.ahead.slots.front_mut() else {
            return Ok(None);
        };
        if let AheadSlot::Pending { first, job, .. } = slot {
            if index < *first {
                return Ok(None);
            }
            match job.await {
                Ok(b) => *slot = AheadSlot::Ready(b),
                Err(_) => {
                    // The normal path reads and opens the segment itself.
                    self.ahead.reset();
                    self.ahead.off = true;
                    return Ok(None);
                }
            }
        }
        let AheadSlot::Ready(b) = slot else {
            return Ok(None);
        };
        let Some(i) = index.checked_sub(b.first).map(|i| i as usize) else {
            return Ok(None);
        };
        let stride = self.crypto.segment_size + SEGMENT_OVERHEAD;
        match b.results.get_mut(i).and_then(Option::take) {
            Some(Ok(m)) => {
                self.buf.resize(stride, 0);
                let at = i * stride + NONCE_LEN;
                self.buf[NONCE_LEN..NONCE_LEN + m].copy_from_slice(&b.buf[at..at + m]);
                Ok(Some(m))
            }
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    /// Keeps up to `READ_AHEAD_BATCHES` batches of the segments from `from` on being read and
    /// opened. The stored last segment is left to the normal path (it carries the last mark).
    async fn fill_ahead(&mut self, from: u64) {
        if self.ahead.off {
            return;
        }
        let Source::Read(blob) = &self.source else {
            return;
        };
        let limit = self.stored.saturating_sub(1);
        let stride = self.stride();
        let per_batch = batch_segments(stride) as u64;
        self.ahead.next = self.ahead.next.max(from);
        let window = batches_in_flight(stride, READ_AHEAD_BATCHES);
        while self.ahead.slots.len() < window && self.ahead.next < limit {
            let first = self.ahead.next;
            let count = per_batch.min(limit - first);
            let mut buf = self.ahead.spare.pop().unwrap_or_default();
            if let Err(e) = blob
                .read_full_segments(first, count, stride, &mut buf)
                .await
            {
                tracing::debug!(path = %self.path, error = %e, "vfs read-ahead stopped");
                self.ahead.off = true;
                return;
            }
            let crypto = self.crypto.clone();
            let path = self.path.clone();
            let stored = self.stored;
            let job = tokio::task::spawn_blocking(move || {
                let results = buf
                    .chunks_mut(stride)
                    .enumerate()
                    .map(|(i, s)| {
                        Some(crypto.open_segment(first + i as u64, false, stored, s, &path))
                    })
                    .collect();
                OpenedBatch {
                    first,
                    buf,
                    results,
                }
            });
            self.ahead
                .slots
                .push_back(AheadSlot::Pending { first, count, job });
            self.ahead.next = first + count;
        }
    }

    /// Copies from the cache when it holds the segment at `pos`.
    pub fn cached_read(&self, pos: u64, out: &mut [u8]) -> Option<usize> {
        let seg = self.seg() as u64;
        let cur = self.cur?;
        if pos / seg != cur {
            return None;
        }
        let within = (pos - cur * seg) as usize;
        if within >= self.cur_len {
            return None;
        }
        let n = (self.cur_len - within).min(out.len());
        out[..n].copy_from_slice(&self.buf[NONCE_LEN + within..NONCE_LEN + within + n]);
        Some(n)
    }

    pub async fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < out.len() {
            let pos = offset + done as u64;
            if pos >= self.len {
                break;
            }
            let n = match self.cached_read(pos, &mut out[done..]) {
                Some(n) => n,
                None => {
                    self.load(pos / self.seg() as u64).await?;
                    match self.cached_read(pos, &mut out[done..]) {
                        Some(n) => n,
                        None => break,
                    }
                }
            };
            done += n;
        }
        Ok(done)
    }

    /// Copies into the cache when it holds the segment at `pos` and `pos` is within the
    /// file (appending at the end included). Needs an open transaction.
    pub fn cached_write(&mut self, pos: u64, data: &[u8]) -> Option<usize> {
        let seg = self.seg() as u64;
        let cur = self.cur?;
        if pos / seg != cur || pos > self.len || !self.has_txn() {
            return None;
        }
        let within = (pos - cur * seg) as usize;
        let n = (self.seg() - within).min(data.len());
        if n == 0 || pos + n as u64 > MAX_FILE_SIZE {
            return None;
        }
        self.buf[NONCE_LEN + within..NONCE_LEN + within + n].copy_from_slice(&data[..n]);
        self.cur_len = self.cur_len.max(within + n);
        self.len = self.len.max(pos + n as u64);
        self.dirty = true;
        Some(n)
    }

    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or_else(|| {
                VfsError::InvalidArgument(format!("write beyond {MAX_FILE_SIZE} bytes"))
            })?;
        if offset > self.len {
            self.set_len(offset).await?;
        }
        let _ = end;
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done as u64;
            let n = match self.cached_write(pos, &data[done..]) {
                Some(n) => n,
                None => {
                    self.load(pos / self.seg() as u64).await?;
                    self.cached_write(pos, &data[done..]).ok_or_else(|| {
                        VfsError::InvalidArgument("write could not be placed".into())
                    })?
                }
            };
            done += n;
        }
        Ok(())
    }

    /// Shrinks or grows (with zeros) the file.
    pub async fn set_len(&mut self, new_len: u64) -> Result<()> {
        if new_len > MAX_FILE_SIZE {
            return Err(VfsError::InvalidArgument(format!(
                "length beyond {MAX_FILE_SIZE} bytes"
            )));
        }
        let seg = self.seg();
        if new_len < self.len {
            // Queued segments past the new end must not land after the truncation.
            self.drain_writes().await?;
            self.len = new_len;
            let n = segment_count(new_len, seg);
            if self.cur.is_some_and(|c| c >= n) {
                self.cur = None;
                self.dirty = false;
            }
            if self.stored > n {
                self.stored = n;
                self.txn()?.truncate_segments(n).await?;
            }
            self.flagged.retain(|k| *k < n);
            self.fix_cache_len();
            // The new last segment still holds the cut-off bytes: load it so that it is
            // resealed short (a later growth must read zeros there, not old data).
            if n - 1 < self.stored {
                self.load(n - 1).await?;
            }
        } else if new_len > self.len {
            self.len = new_len;
            self.fix_cache_len();
            // The old last stored segment is short or marked last: bring it in so that it is
            // resealed full before segments after it are written.
            if self.stored > 0 {
                self.load(self.stored - 1).await?;
            }
        }
        Ok(())
    }

    /// After a length change, makes the cached segment's length match the file's.
    fn fix_cache_len(&mut self) {
        if let Some(c) = self.cur {
            let want = segment_len(self.len, self.seg(), c);
            if want > self.cur_len {
                self.buf[NONCE_LEN + self.cur_len..NONCE_LEN + want].fill(0);
            }
            if want != self.cur_len {
                self.cur_len = want;
                self.dirty = true;
            }
        }
    }

    /// Puts the transaction in its final shape: every segment but the last full and
    /// unmarked, the last sealed with the last mark, nothing after it.
    pub async fn finish(&mut self) -> Result<()> {
        let n = segment_count(self.len, self.seg());
        let stale: Vec<u64> = self
            .flagged
            .iter()
            .copied()
            .filter(|k| *k + 1 < n && *k < self.stored)
            .collect();
        for k in stale {
            self.load(k).await?;
            self.dirty = true;
            self.flush(false).await?;
        }
        self.load(n - 1).await?;
        self.dirty = true;
        self.flush(true).await?;
        self.txn()?.truncate_segments(n).await?;
        self.stored = n;
        self.flagged.retain(|k| *k == n - 1);
        Ok(())
    }
}

/// A read-only open file: a snapshot of its committed content.
pub struct VfsReader {
    pub(crate) core: FileCore,
}

impl std::fmt::Debug for VfsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfsReader")
            .field("path", &self.core.path)
            .field("len", &self.core.len)
            .finish()
    }
}

impl VfsReader {
    pub fn path(&self) -> &str {
        &self.core.path
    }

    /// Plaintext length in bytes.
    pub fn len(&self) -> u64 {
        self.core.len
    }

    pub fn is_empty(&self) -> bool {
        self.core.len == 0
    }

    pub fn segment_size(&self) -> usize {
        self.core.seg()
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    /// Decrypts only the segments the range covers.
    pub async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.core.read_at(offset, buf).await
    }

    /// Reads the whole file into memory (small files; use the stream for big ones).
    pub async fn read_all(&mut self) -> Result<Vec<u8>> {
        let len = usize::try_from(self.core.len)
            .map_err(|_| VfsError::InvalidArgument("file too large for memory".into()))?;
        let mut v = vec![0u8; len];
        let n = self.read_at(0, &mut v).await?;
        v.truncate(n);
        Ok(v)
    }

    /// A tokio `AsyncRead + AsyncSeek` over the file, starting at offset 0.
    pub fn into_stream(self) -> crate::stream::VfsReadStream {
        crate::stream::VfsReadStream::new(self)
    }
}

/// A file open for writing. Holding it means owning the file's key; changes become visible
/// at [`commit`](VfsFile::commit), all at once, and are discarded if the handle is dropped
/// before.
pub struct VfsFile {
    pub(crate) core: FileCore,
    pub(crate) inner: Arc<Inner>,
    pub(crate) name: String,
    pub(crate) guard: Guard,
    poisoned: bool,
}

impl std::fmt::Debug for VfsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfsFile")
            .field("path", &self.core.path)
            .field("len", &self.core.len)
            .field("token", &self.guard.token())
            .finish()
    }
}

impl VfsFile {
    pub(crate) fn new(core: FileCore, inner: Arc<Inner>, name: String, guard: Guard) -> VfsFile {
        VfsFile {
            core,
            inner,
            name,
            guard,
            poisoned: false,
        }
    }

    pub fn path(&self) -> &str {
        &self.core.path
    }

    /// Plaintext length including uncommitted changes.
    pub fn len(&self) -> u64 {
        self.core.len
    }

    pub fn is_empty(&self) -> bool {
        self.core.len == 0
    }

    /// The fencing token of this node's ownership of the file.
    pub fn token(&self) -> i64 {
        self.guard.token()
    }

    fn check(&self) -> Result<()> {
        if self.poisoned {
            return Err(VfsError::InvalidArgument(
                "an earlier write on this handle failed; reopen the file".into(),
            ));
        }
        Ok(())
    }

    /// Makes sure the handle can read (after a commit it reopens the committed object).
    pub(crate) async fn ensure_source(&mut self) -> Result<()> {
        if matches!(self.core.source, Source::Closed) {
            let blob =
                self.inner
                    .backend
                    .open(&self.name)
                    .await?
                    .ok_or_else(|| VfsError::NotFound {
                        path: self.core.path.clone(),
                    })?;
            self.core.set_source(Source::Read(blob));
        }
        Ok(())
    }

    /// Makes sure a transaction is open (editing starts one on first change).
    pub(crate) async fn ensure_txn(&mut self) -> Result<()> {
        self.check()?;
        if !self.core.has_txn() {
            let txn = self
                .inner
                .backend
                .edit(&self.name, self.guard.token())
                .await?;
            self.core.set_source(Source::Txn(txn));
        }
        Ok(())
    }

    fn poison_on_err<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    pub async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.check()?;
        self.ensure_source().await?;
        self.core.read_at(offset, buf).await
    }

    /// Writes `data` at `offset`, growing the file (with zeros up to `offset`) as needed.
    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.ensure_txn().await?;
        let r = self.core.write_at(offset, data).await;
        self.poison_on_err(r)
    }

    pub async fn append(&mut self, data: &[u8]) -> Result<()> {
        let end = self.core.len;
        self.write_at(end, data).await
    }

    /// Sets the length: shrinks, or grows with zeros.
    pub async fn truncate(&mut self, len: u64) -> Result<()> {
        self.ensure_txn().await?;
        let r = self.core.set_len(len).await;
        self.poison_on_err(r)
    }

    /// Makes every change since the last commit durable and visible at once. Refused with
    /// `OwnershipLost` when this node no longer surely owns the file.
    pub async fn commit(&mut self) -> Result<()> {
        self.check()?;
        if !self.core.has_txn() {
            return Ok(());
        }
        let r = self.core.finish().await;
        self.poison_on_err(r)?;
        if !self.guard.is_valid() {
            return Err(VfsError::OwnershipLost {
                path: self.core.path.clone(),
            });
        }
        let Source::Txn(txn) = std::mem::replace(&mut self.core.source, Source::Closed) else {
            return Ok(());
        };
        let r = txn.commit(self.guard.token()).await;
        let r = self.poison_on_err(r);
        if r.is_ok() {
            tracing::debug!(path = %self.core.path, len = self.core.len, "vfs commit");
        }
        r
    }

    /// Discards uncommitted changes and releases the file.
    pub async fn abort(mut self) -> Result<()> {
        if let Source::Txn(txn) = std::mem::replace(&mut self.core.source, Source::Closed) {
            txn.abort().await?;
        }
        self.guard.release().await?;
        Ok(())
    }

    /// Commits and releases the file's key.
    pub async fn close(mut self) -> Result<()> {
        self.commit().await?;
        self.guard.release().await?;
        Ok(())
    }

    /// A tokio `AsyncWrite` that writes at `offset` onwards; `shutdown` commits.
    pub fn into_writer(self, offset: u64) -> crate::stream::VfsWriteStream {
        crate::stream::VfsWriteStream::new(self, offset)
    }

    /// Like [`into_writer`](Self::into_writer) at the end of the file.
    pub fn into_appender(self) -> crate::stream::VfsWriteStream {
        let end = self.core.len;
        crate::stream::VfsWriteStream::new(self, end)
    }

    /// Gets the handle ready for a cached write at `pos`: a transaction is open, the file
    /// reaches `pos`, and the segment holding `pos` is in the cache.
    pub(crate) async fn prepare_write(&mut self, pos: u64) -> Result<()> {
        self.ensure_txn().await?;
        let r = async {
            if pos > self.core.len {
                self.core.set_len(pos).await?;
            }
            let seg = self.core.seg() as u64;
            self.core.load(pos / seg).await
        }
        .await;
        self.poison_on_err(r)
    }
}
