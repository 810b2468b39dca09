//! tokio stream adapters: `AsyncRead + AsyncSeek` over a reader, `AsyncWrite` over a writable
//! file. Data inside the cached segment is copied synchronously; crossing into another
//! segment runs one boxed future (reused, so no allocation per segment).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio_util::sync::ReusableBoxFuture;

use crate::error::{Result, VfsError};
use crate::file::{VfsFile, VfsReader};

/// Maps a VFS error into an `io::Error` that keeps it as its source.
pub fn to_io(e: VfsError) -> io::Error {
    let kind = match &e {
        VfsError::NotFound { .. } => io::ErrorKind::NotFound,
        VfsError::Permission { .. } => io::ErrorKind::PermissionDenied,
        e if e.is_integrity() => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

fn busy() -> io::Error {
    io::Error::other("another operation is still pending on this stream")
}

type ReadFut = ReusableBoxFuture<'static, (VfsReader, Result<()>)>;

/// `AsyncRead + AsyncSeek` over a [`VfsReader`].
pub struct VfsReadStream {
    reader: Option<VfsReader>,
    fut: ReadFut,
    busy: bool,
    pos: u64,
}

impl std::fmt::Debug for VfsReadStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfsReadStream")
            .field("pos", &self.pos)
            .finish()
    }
}

impl VfsReadStream {
    pub(crate) fn new(reader: VfsReader) -> VfsReadStream {
        VfsReadStream {
            reader: Some(reader),
            fut: ReusableBoxFuture::new(std::future::pending()),
            busy: false,
            pos: 0,
        }
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The reader back, unless an operation is pending.
    pub fn into_inner(self) -> Option<VfsReader> {
        self.reader
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.busy {
            let (r, res) = ready!(self.fut.poll(cx));
            self.busy = false;
            self.reader = Some(r);
            res.map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for VfsReadStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            ready!(this.poll_pending(cx))?;
            let Some(r) = this.reader.as_mut() else {
                return Poll::Ready(Err(busy()));
            };
            if this.pos >= r.len() || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Some(n) = r.core.cached_read(this.pos, buf.initialize_unfilled()) {
                buf.advance(n);
                this.pos += n as u64;
                return Poll::Ready(Ok(()));
            }
            let Some(mut r) = this.reader.take() else {
                return Poll::Ready(Err(busy()));
            };
            let index = this.pos / r.core.seg() as u64;
            this.fut.set(async move {
                let res = r.core.load(index).await;
                (r, res)
            });
            this.busy = true;
        }
    }
}

impl AsyncSeek for VfsReadStream {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let this = &mut *self;
        let len = this.reader.as_ref().ok_or_else(busy)?.len();
        let target = match position {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => len.checked_add_signed(d),
            io::SeekFrom::Current(d) => this.pos.checked_add_signed(d),
        };
        this.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WriteOp {
    None,
    Prepare,
    Commit,
}

type WriteFut = ReusableBoxFuture<'static, (VfsFile, Result<()>)>;

/// `AsyncWrite` over a [`VfsFile`], writing sequentially from a starting offset.
/// `flush` does nothing durable; `shutdown` commits the file.
pub struct VfsWriteStream {
    file: Option<VfsFile>,
    fut: WriteFut,
    op: WriteOp,
    pos: u64,
    committed: bool,
}

impl std::fmt::Debug for VfsWriteStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfsWriteStream")
            .field("pos", &self.pos)
            .finish()
    }
}

impl VfsWriteStream {
    pub(crate) fn new(file: VfsFile, pos: u64) -> VfsWriteStream {
        VfsWriteStream {
            file: Some(file),
            fut: ReusableBoxFuture::new(std::future::pending()),
            op: WriteOp::None,
            pos,
            committed: false,
        }
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The file back (to commit or release explicitly), unless an operation is pending.
    pub fn into_inner(self) -> Option<VfsFile> {
        self.file
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.op != WriteOp::None {
            let (f, res) = ready!(self.fut.poll(cx));
            let op = std::mem::replace(&mut self.op, WriteOp::None);
            self.file = Some(f);
            res.map_err(to_io)?;
            if op == WriteOp::Commit {
                self.committed = true;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for VfsWriteStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            ready!(this.poll_pending(cx))?;
            let Some(f) = this.file.as_mut() else {
                return Poll::Ready(Err(busy()));
            };
            if let Some(n) = f.core.cached_write(this.pos, data) {
                this.pos += n as u64;
                this.committed = false;
                return Poll::Ready(Ok(n));
            }
            let Some(mut f) = this.file.take() else {
                return Poll::Ready(Err(busy()));
            };
            let pos = this.pos;
            this.fut.set(async move {
                let r = f.prepare_write(pos).await;
                (f, r)
            });
            this.op = WriteOp::Prepare;
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_pending(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            ready!(this.poll_pending(cx))?;
            if this.committed {
                return Poll::Ready(Ok(()));
            }
            let Some(mut f) = this.file.take() else {
                return Poll::Ready(Err(busy()));
            };
            this.fut.set(async move {
                let r = f.commit().await;
                (f, r)
            });
            this.op = WriteOp::Commit;
        }
    }
}
