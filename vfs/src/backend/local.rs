//! The local-directory backend: one file per object under `<root>/<volume>/`, laid out as
//! `header ‖ segment 0 ‖ segment 1 ‖ …` with every segment but the last a full stride.
//!
//! A transaction writes a temporary sibling (`.kwtmp.<name>.<random>`), made by copying the
//! committed file when editing (`std::fs::copy`, which reflinks on file systems that can), and
//! commits with fsync, rename over the name, and fsync of the directory: after a crash the
//! name holds the old or the new file, never a mix. Readers keep the inode they opened, so a
//! commit never changes what an open reader sees.
//!
//! Segment reads and writes are positional and done on the runtime thread: they hit the page
//! cache and are short. Everything that may wait on the disk (fsync, rename, copy, directory
//! work) runs in `spawn_blocking`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use keyward_ownership::Token;

use super::{Backend, BlobEntry, BlobMeta, BlobRead, BlobTxn};
use crate::error::{Result, VfsError};
use crate::format::{Layout, FIXED_HEADER_LEN};
use crate::path::RESERVED_PREFIX;

const TMP_PREFIX: &str = ".kwtmp.";

/// Objects in a directory of the local file system.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    dir: PathBuf,
}

impl LocalBackend {
    /// The backend for `volume` under `root` (the directory `<root>/<volume>` is created).
    pub fn new(root: &Path, volume: &str) -> Result<LocalBackend> {
        let dir = root.join(volume);
        std::fs::create_dir_all(&dir).map_err(|e| VfsError::io(dir.display().to_string(), e))?;
        Ok(LocalBackend { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| VfsError::io(what, e)),
        Err(e) => Err(VfsError::Io {
            path: what,
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An open object file and the geometry read from its header.
struct Geometry {
    header: Vec<u8>,
    layout: Option<Layout>,
}

fn read_geometry(f: &File, file_len: u64) -> std::io::Result<Geometry> {
    let prefix_len = file_len.min(FIXED_HEADER_LEN as u64) as usize;
    let mut header = vec![0u8; prefix_len];
    f.read_exact_at(&mut header, 0)?;
    let layout = Layout::peek(&header).filter(|l| l.header_len as u64 <= file_len);
    if let Some(l) = layout {
        if l.header_len > header.len() {
            header.resize(l.header_len, 0);
            f.read_exact_at(&mut header[prefix_len..], prefix_len as u64)?;
        }
    }
    Ok(Geometry { header, layout })
}

/// Segment `index`'s byte range in a file of `file_len` bytes.
fn segment_range(layout: &Layout, file_len: u64, index: u64) -> Option<(u64, usize)> {
    let stride = layout.stride() as u64;
    let start = layout.header_len as u64 + index * stride;
    if start >= file_len {
        return None;
    }
    Some((start, (file_len - start).min(stride) as usize))
}

fn count_segments(layout: &Option<Layout>, file_len: u64) -> u64 {
    match layout {
        Some(l) => file_len
            .saturating_sub(l.header_len as u64)
            .div_ceil(l.stride() as u64),
        None => 0,
    }
}

struct LocalRead {
    file: Arc<File>,
    path: String,
    geo: Geometry,
    len: u64,
    meta: BlobMeta,
}

#[async_trait]
impl BlobRead for LocalRead {
    fn header(&self) -> &[u8] {
        &self.geo.header
    }
    fn segment_count(&self) -> u64 {
        count_segments(&self.geo.layout, self.len)
    }
    fn meta(&self) -> BlobMeta {
        self.meta
    }
    async fn read_segment(&self, index: u64, out: &mut Vec<u8>) -> Result<()> {
        let layout = self.geo.layout.as_ref().ok_or_else(|| VfsError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("object has no valid header"),
        })?;
        let (off, n) = segment_range(layout, self.len, index).ok_or_else(|| VfsError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(format!("segment {index} out of range")),
        })?;
        out.resize(n, 0);
        self.file
            .read_exact_at(out, off)
            .map_err(|e| VfsError::io(self.path.clone(), e))
    }

    async fn read_full_segments(
        &self,
        first: u64,
        count: u64,
        stride: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let layout = self.geo.layout.as_ref().ok_or_else(|| VfsError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("object has no valid header"),
        })?;
        read_run(
            &self.file, &self.path, layout, self.len, first, count, stride, out,
        )
    }
}

/// One positional read of `count` full segments from `first` on.
#[allow(clippy::too_many_arguments)]
fn read_run(
    file: &File,
    path: &str,
    layout: &Layout,
    file_len: u64,
    first: u64,
    count: u64,
    stride: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = layout.header_len as u64 + first * layout.stride() as u64;
    let n = count.saturating_mul(stride as u64);
    if stride != layout.stride() || start.saturating_add(n) > file_len {
        return Err(VfsError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!(
                "segments {first}..{} out of range",
                first.saturating_add(count)
            )),
        });
    }
    out.resize(n as usize, 0);
    file.read_exact_at(out, start)
        .map_err(|e| VfsError::io(path.to_owned(), e))
}

/// Bytes written to a transaction's file between two hints to start writing them back.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// Asks the kernel to start writing the file's dirty pages to the disk now rather than at
/// the commit's fsync, so that sealing and the disk work at the same time. Only a hint:
/// errors are ignored (the fsync at commit reports them). At most one runs per file.
#[cfg(target_os = "linux")]
fn start_writeback(file: &Arc<File>, running: &Arc<std::sync::atomic::AtomicBool>) {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
    if running.swap(true, Ordering::AcqRel) {
        return;
    }
    let file = file.clone();
    let running = running.clone();
    // sync_file_range may wait for room in the device queue: keep it off the runtime thread.
    tokio::task::spawn_blocking(move || {
        // SAFETY: a plain system call on a descriptor that `file` keeps open for its duration;
        // it reads and writes no memory of ours.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
        running.store(false, Ordering::Release);
    });
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &Arc<File>, _running: &Arc<std::sync::atomic::AtomicBool>) {}

struct LocalTxn {
    file: Arc<File>,
    tmp: Option<PathBuf>,
    target: PathBuf,
    path: String,
    header: Vec<u8>,
    layout: Layout,
    /// Segments in the temporary file, and the stored length of the last one.
    count: u64,
    last_len: usize,
    /// Bytes written since the last writeback hint, and whether one is running.
    unhinted: u64,
    hinting: Arc<std::sync::atomic::AtomicBool>,
}

impl LocalTxn {
    fn wrote(&mut self, bytes: usize) {
        self.unhinted += bytes as u64;
        if self.unhinted >= WRITEBACK_BYTES {
            self.unhinted = 0;
            start_writeback(&self.file, &self.hinting);
        }
    }

    fn physical_len(&self) -> u64 {
        if self.count == 0 {
            self.layout.header_len as u64
        } else {
            self.layout.header_len as u64
                + (self.count - 1) * self.layout.stride() as u64
                + self.last_len as u64
        }
    }
}

impl Drop for LocalTxn {
    fn drop(&mut self) {
        // Never committed: the temporary file is garbage.
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[async_trait]
impl BlobRead for LocalTxn {
    fn header(&self) -> &[u8] {
        &self.header
    }
    fn segment_count(&self) -> u64 {
        self.count
    }
    fn meta(&self) -> BlobMeta {
        BlobMeta::default()
    }
    async fn read_segment(&self, index: u64, out: &mut Vec<u8>) -> Result<()> {
        let (off, n) =
            segment_range(&self.layout, self.physical_len(), index).ok_or_else(|| {
                VfsError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::other(format!("segment {index} out of range")),
                }
            })?;
        out.resize(n, 0);
        self.file
            .read_exact_at(out, off)
            .map_err(|e| VfsError::io(self.path.clone(), e))
    }
}

#[async_trait]
impl BlobTxn for LocalTxn {
    async fn set_header(&mut self, header: &[u8]) -> Result<()> {
        if header.len() != self.header.len() {
            return Err(VfsError::InvalidArgument(
                "header length changed within a transaction".into(),
            ));
        }
        self.file
            .write_all_at(header, 0)
            .map_err(|e| VfsError::io(self.path.clone(), e))?;
        self.header = header.to_vec();
        Ok(())
    }

    async fn write_segment(&mut self, index: u64, sealed: &[u8]) -> Result<()> {
        if index > self.count {
            return Err(VfsError::InvalidArgument(format!(
                "segment {index} written past the end ({} segments)",
                self.count
            )));
        }
        let off = self.layout.header_len as u64 + index * self.layout.stride() as u64;
        self.file
            .write_all_at(sealed, off)
            .map_err(|e| VfsError::io(self.path.clone(), e))?;
        if index + 1 >= self.count {
            self.count = index + 1;
            self.last_len = sealed.len();
        }
        self.wrote(sealed.len());
        Ok(())
    }

    async fn write_segments(&mut self, first: u64, stride: usize, sealed: &[u8]) -> Result<()> {
        if sealed.is_empty() {
            return Ok(());
        }
        if first > self.count || stride != self.layout.stride() {
            return Err(VfsError::InvalidArgument(format!(
                "segments from {first} written past the end ({} segments) or with stride {stride}",
                self.count
            )));
        }
        let n = sealed.len().div_ceil(stride) as u64;
        let off = self.layout.header_len as u64 + first * self.layout.stride() as u64;
        self.file
            .write_all_at(sealed, off)
            .map_err(|e| VfsError::io(self.path.clone(), e))?;
        let last = first + n - 1;
        if last + 1 >= self.count {
            self.count = last + 1;
            self.last_len = sealed.len() - (n as usize - 1) * stride;
        }
        self.wrote(sealed.len());
        Ok(())
    }

    async fn truncate_segments(&mut self, count: u64) -> Result<()> {
        if count < self.count {
            self.count = count;
            // Every segment but the last is a full stride.
            self.last_len = self.layout.stride();
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>, _token: Token) -> Result<()> {
        // The local file system cannot check tokens; the caller checked its guard just before.
        let len = self.physical_len();
        let file = self.file.clone();
        let tmp = self.tmp.clone();
        let target = self.target.clone();
        let r = blocking(self.path.clone(), move || {
            file.set_len(len)?;
            file.sync_all()?;
            if let Some(tmp) = &tmp {
                std::fs::rename(tmp, &target)?;
            }
            if let Some(dir) = target.parent() {
                sync_dir(dir)?;
            }
            Ok(())
        })
        .await;
        if r.is_ok() {
            self.tmp = None;
        }
        r
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        if let Some(tmp) = self.tmp.take() {
            blocking(self.path.clone(), move || std::fs::remove_file(tmp)).await?;
        }
        Ok(())
    }
}

/// A fresh temporary name next to `target`, after removing temporaries a crashed earlier
/// owner of the same name left behind (the caller owns the name now).
fn temp_for(target: &Path) -> std::io::Result<PathBuf> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stale = format!("{TMP_PREFIX}{base}.");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&stale) && n.len() == stale.len() + 16 {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(dir.join(format!("{stale}{}", hex::encode(r))))
}

fn open_rw(path: &Path, create_new: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create_new)
        .open(path)
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn open(&self, name: &str) -> Result<Option<Box<dyn BlobRead>>> {
        let p = self.path_of(name);
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(VfsError::io(name, e)),
        };
        let md = f.metadata().map_err(|e| VfsError::io(name, e))?;
        if md.is_dir() {
            return Ok(None);
        }
        let len = md.len();
        let geo = read_geometry(&f, len).map_err(|e| VfsError::io(name, e))?;
        Ok(Some(Box::new(LocalRead {
            file: Arc::new(f),
            path: name.to_owned(),
            geo,
            len,
            meta: BlobMeta {
                created: md.created().ok(),
                modified: md.modified().ok(),
            },
        })))
    }

    async fn create(&self, name: &str, header: &[u8], _token: Token) -> Result<Box<dyn BlobTxn>> {
        let layout = Layout::peek(header)
            .ok_or_else(|| VfsError::InvalidArgument("header does not parse".into()))?;
        let target = self.path_of(name);
        let header = header.to_vec();
        let h2 = header.clone();
        let t2 = target.clone();
        let (file, tmp) = blocking(name.to_owned(), move || {
            if let Some(d) = t2.parent() {
                std::fs::create_dir_all(d)?;
            }
            let tmp = temp_for(&t2)?;
            let f = open_rw(&tmp, true)?;
            f.write_all_at(&h2, 0)?;
            Ok((f, tmp))
        })
        .await?;
        Ok(Box::new(LocalTxn {
            file: Arc::new(file),
            tmp: Some(tmp),
            target,
            path: name.to_owned(),
            header,
            layout,
            count: 0,
            last_len: 0,
            unhinted: 0,
            hinting: Arc::default(),
        }))
    }

    async fn edit(&self, name: &str, _token: Token) -> Result<Box<dyn BlobTxn>> {
        let target = self.path_of(name);
        let t2 = target.clone();
        let n2 = name.to_owned();
        let (file, tmp, len) = blocking(name.to_owned(), move || {
            if !t2.is_file() {
                return Err(std::io::Error::new(std::io::ErrorKind::NotFound, n2));
            }
            let tmp = temp_for(&t2)?;
            std::fs::copy(&t2, &tmp)?;
            let f = open_rw(&tmp, false)?;
            let len = f.metadata()?.len();
            Ok((f, tmp, len))
        })
        .await?;
        let geo = read_geometry(&file, len).map_err(|e| VfsError::io(name, e))?;
        let Some(layout) = geo.layout else {
            let _ = std::fs::remove_file(&tmp);
            return Err(VfsError::Tampered {
                path: name.to_owned(),
                what: "header does not parse".into(),
            });
        };
        let count = count_segments(&geo.layout, len);
        let last_len = if count == 0 {
            0
        } else {
            (len - layout.header_len as u64 - (count - 1) * layout.stride() as u64) as usize
        };
        Ok(Box::new(LocalTxn {
            file: Arc::new(file),
            tmp: Some(tmp),
            target,
            path: name.to_owned(),
            header: geo.header,
            layout,
            count,
            last_len,
            unhinted: 0,
            hinting: Arc::default(),
        }))
    }

    async fn remove(&self, name: &str, _token: Token) -> Result<bool> {
        let p = self.path_of(name);
        blocking(name.to_owned(), move || match std::fs::remove_file(&p) {
            Ok(()) => {
                if let Some(d) = p.parent() {
                    sync_dir(d)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str, _ft: Token, _tt: Token) -> Result<()> {
        let a = self.path_of(from);
        let b = self.path_of(to);
        blocking(from.to_owned(), move || {
            if !a.is_file() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "source does not exist",
                ));
            }
            if let Some(d) = b.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::rename(&a, &b)?;
            if let Some(d) = b.parent() {
                sync_dir(d)?;
            }
            if let Some(d) = a.parent() {
                sync_dir(d)?;
            }
            Ok(())
        })
        .await
    }

    async fn list(&self, dir: &str) -> Result<Vec<BlobEntry>> {
        let p = self.path_of(dir);
        let d = dir.to_owned();
        blocking(dir.to_owned(), move || {
            let rd = match std::fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && d.is_empty() => {
                    return Ok(Vec::new())
                }
                Err(e) => return Err(e),
            };
            let mut out = Vec::new();
            for e in rd {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(RESERVED_PREFIX) {
                    continue;
                }
                let ft = e.file_type()?;
                if ft.is_dir() || ft.is_file() {
                    out.push(BlobEntry {
                        name,
                        is_dir: ft.is_dir(),
                    });
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }
}
