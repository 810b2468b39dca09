//! The wire format between ownership clients and servers: length-prefixed binary frames.
//!
//! ```text
//! frame   = len:u32le  version:u8  kind:u8  id:u32le  payload
//!           (len counts version, kind, id and payload)
//! str     = len:u16le bytes (UTF-8)      blob = len:u32le bytes
//! list    = count:u32le item*            map  = count:u16le (str str)*
//! owner   = node:str token:i64le endpoints:map
//! ```
//!
//! Requests carry a caller-chosen id that the reply repeats; replies on one connection come in
//! request order, so that a client can pipeline without a lookup table. Pushes use id 0.
//! Anything that does not parse (a wrong version, an unknown kind, a short or oversize frame,
//! bad UTF-8) is a [`FrameError`]: the peer ends that connection and nothing else.

use crate::types::{Endpoints, NodeId, Owner, Token};
use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// The only protocol version spoken; a frame of any other version ends the connection.
pub const VERSION: u8 = 1;
/// Bytes before the payload: length, version, kind, id.
pub const HEADER: usize = 4 + 1 + 1 + 4;
/// Default largest frame accepted (a claim of 10,000 keys of 1 KiB fits).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// Largest frame accepted before the peer has authenticated.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

/// Frame kinds. Client to server below 0x80, server to client from 0x80.
pub mod kind {
    pub const AUTH: u8 = 0x01;
    pub const HELLO: u8 = 0x02;
    pub const REG_PORT: u8 = 0x10;
    pub const UNREG_PORT: u8 = 0x11;
    pub const QUERY_PORT: u8 = 0x12;
    pub const QUERY_NODE: u8 = 0x13;
    pub const SEND_MSG: u8 = 0x14;
    pub const WAIT_MSG: u8 = 0x15;
    pub const RELET: u8 = 0x16;
    pub const CLOSE: u8 = 0x17;
    pub const STATS: u8 = 0x18;
    /// Raft messages between group members (JSON payloads).
    pub const RAFT_VOTE: u8 = 0x20;
    pub const RAFT_APPEND: u8 = 0x21;
    pub const RAFT_SNAPSHOT: u8 = 0x22;

    pub const CHALLENGE: u8 = 0x81;
    pub const AUTH_OK: u8 = 0x82;
    pub const WELCOME: u8 = 0x83;
    pub const OK: u8 = 0x90;
    pub const ERR: u8 = 0x91;
    pub const CLAIMS: u8 = 0x92;
    pub const OWNERS: u8 = 0x93;
    pub const NODE: u8 = 0x94;
    pub const STATS_REPLY: u8 = 0x95;
    pub const RAFT_REPLY: u8 = 0x96;
    pub const PUSH_MSG: u8 = 0xA0;
    pub const PUSH_RELEASED: u8 = 0xA1;
    pub const PUSH_LOST: u8 = 0xA2;
}

/// Error codes carried by an `ERR` reply.
pub mod code {
    /// The connection has no live session (never said hello, or the lease expired).
    pub const NO_SESSION: u16 = 1;
    pub const PORT_LIMIT: u16 = 2;
    pub const NO_OWNER: u16 = 3;
    pub const INVALID: u16 = 4;
    pub const AUTH: u16 = 5;
    pub const UNAVAILABLE: u16 = 6;
    /// Try again after `a` milliseconds (the re-registration window after a restart).
    pub const RETRY: u16 = 7;
    /// This member is not the master; the message names the master if known.
    pub const NOT_MASTER: u16 = 8;
}

/// Why a frame was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame length {0} is shorter than its header")]
    TooShort(usize),
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("frame kind {0:#04x} not expected here")]
    Unexpected(u8),
    #[error("truncated payload while reading {0}")]
    Truncated(&'static str),
    #[error("{0} bytes left over after the payload")]
    Trailing(usize),
    #[error("invalid UTF-8 in {0}")]
    Utf8(&'static str),
    #[error("invalid value in {0}")]
    Invalid(&'static str),
}

/// A frame cut out of a read buffer: its kind, id and the payload's byte range.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame {
    pub kind: u8,
    pub id: u32,
    /// Offset of the payload in the buffer the frame was cut from.
    pub start: usize,
    pub end: usize,
}

/// Finds the next complete frame at `buf[at..]`. `Ok(None)` when more bytes are needed.
pub fn next_frame(buf: &[u8], at: usize, max: usize) -> Result<Option<RawFrame>, FrameError> {
    let rest = &buf[at.min(buf.len())..];
    if rest.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len < HEADER - 4 {
        return Err(FrameError::TooShort(len));
    }
    if rest.len() >= 5 && rest[4] != VERSION {
        return Err(FrameError::Version(rest[4]));
    }
    if rest.len() < 4 + len {
        return Ok(None);
    }
    let kind = rest[5];
    if !known_kind(kind) {
        return Err(FrameError::UnknownKind(kind));
    }
    let id = u32::from_le_bytes([rest[6], rest[7], rest[8], rest[9]]);
    Ok(Some(RawFrame {
        kind,
        id,
        start: at + HEADER,
        end: at + 4 + len,
    }))
}

fn known_kind(k: u8) -> bool {
    matches!(
        k,
        0x01..=0x02 | 0x10..=0x18 | 0x20..=0x22 | 0x81..=0x83 | 0x90..=0x96 | 0xA0..=0xA2
    )
}

/// Appends frames to an output buffer. `begin` writes a header whose length `finish` patches.
pub struct FrameWriter<'a> {
    buf: &'a mut BytesMut,
    start: usize,
}

impl<'a> FrameWriter<'a> {
    pub fn begin(buf: &'a mut BytesMut, kind: u8, id: u32) -> Self {
        let start = buf.len();
        buf.put_u32_le(0);
        buf.put_u8(VERSION);
        buf.put_u8(kind);
        buf.put_u32_le(id);
        FrameWriter { buf, start }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.put_u8(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.put_u16_le(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.put_u32_le(v);
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.put_u64_le(v);
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.put_i64_le(v);
        self
    }
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.put_slice(v);
        self
    }
    /// A string of at most 65,535 bytes; longer ones are cut at a character boundary (keys are
    /// checked to be at most 1 KiB before they get here).
    pub fn str(&mut self, s: &str) -> &mut Self {
        let mut n = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf.put_u16_le(n as u16);
        self.buf.put_slice(&s.as_bytes()[..n]);
        self
    }
    pub fn blob(&mut self, b: &[u8]) -> &mut Self {
        self.buf.put_u32_le(b.len() as u32);
        self.buf.put_slice(b);
        self
    }
    pub fn endpoints(&mut self, e: &Endpoints) -> &mut Self {
        self.buf.put_u16_le(e.len().min(u16::MAX as usize) as u16);
        for (k, v) in e.iter().take(u16::MAX as usize) {
            self.str(k);
            self.str(v);
        }
        self
    }
    pub fn owner(&mut self, node: &str, token: Token, endpoints: &Endpoints) -> &mut Self {
        self.str(node);
        self.i64(token);
        self.endpoints(endpoints)
    }

    /// Patches the length; the frame is complete.
    pub fn finish(self) {
        let len = (self.buf.len() - self.start - 4) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Reads a payload field by field; every read checks bounds.
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.buf.len() - self.pos < n {
            return Err(FrameError::Truncated(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }
    pub fn i64(&mut self, what: &'static str) -> Result<i64, FrameError> {
        Ok(self.u64(what)? as i64)
    }
    pub fn raw(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        self.take(n, what)
    }
    pub fn str(&mut self, what: &'static str) -> Result<&'a str, FrameError> {
        let n = self.u16(what)? as usize;
        std::str::from_utf8(self.take(n, what)?).map_err(|_| FrameError::Utf8(what))
    }
    pub fn blob(&mut self, what: &'static str) -> Result<&'a [u8], FrameError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    /// A list count, checked against the bytes left so that a forged count cannot make the
    /// reader reserve memory the frame does not hold (each item takes at least `min_item`).
    pub fn count(&mut self, min_item: usize, what: &'static str) -> Result<usize, FrameError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item.max(1)) > self.buf.len() - self.pos {
            return Err(FrameError::Truncated(what));
        }
        Ok(n)
    }
    pub fn endpoints(&mut self) -> Result<Endpoints, FrameError> {
        let n = self.u16("endpoints")? as usize;
        let mut e = Endpoints::new();
        for _ in 0..n {
            let k = self.str("endpoint name")?;
            let v = self.str("endpoint address")?;
            e.insert(k.to_owned(), v.to_owned());
        }
        Ok(e)
    }
    pub fn owner(&mut self) -> Result<Owner, FrameError> {
        let node = NodeId(self.str("owner node")?.to_owned());
        let token = self.i64("owner token")?;
        let endpoints = self.endpoints()?;
        Ok(Owner {
            node,
            endpoints,
            token,
        })
    }
    /// The payload must be consumed exactly.
    pub fn end(&self) -> Result<(), FrameError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(FrameError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let mut buf = BytesMut::new();
        let mut w = FrameWriter::begin(&mut buf, kind::REG_PORT, 7);
        w.u8(1).u32(2).str("a/1").str("b/2");
        w.finish();
        let f = next_frame(&buf, 0, 1024).unwrap().unwrap();
        assert_eq!((f.kind, f.id, f.end), (kind::REG_PORT, 7, buf.len()));
        let mut r = Reader::new(&buf[f.start..f.end]);
        assert_eq!(r.u8("n").unwrap(), 1);
        assert_eq!(r.count(2, "keys").unwrap(), 2);
        assert_eq!(r.str("k").unwrap(), "a/1");
        assert_eq!(r.str("k").unwrap(), "b/2");
        r.end().unwrap();
        // Partial frames wait for more bytes.
        assert!(next_frame(&buf[..buf.len() - 1], 0, 1024)
            .unwrap()
            .is_none());
        assert!(matches!(
            next_frame(&buf, 0, 8),
            Err(FrameError::TooLarge { .. })
        ));
        let mut bad = buf.clone();
        bad[4] = 9;
        assert_eq!(
            next_frame(&bad, 0, 1024).unwrap_err(),
            FrameError::Version(9)
        );
        let mut bad = buf.clone();
        bad[5] = 0x55;
        assert_eq!(
            next_frame(&bad, 0, 1024).unwrap_err(),
            FrameError::UnknownKind(0x55)
        );
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0x7f]);
        assert!(r.count(1, "keys").is_err());
    }
}
