//! Canonical text of primary keys and the ownership key of a cached record.

use crate::error::{CacheError, Result};
use chrono::SecondsFormat;
use keyward_dbc::Value;
use keyward_ownership::encode_key_part;
use std::fmt::Write;

/// The canonical text of one key component (before percent-encoding).
fn part_text(table: &str, v: &Value) -> Result<String> {
    Ok(match v {
        Value::Null => return Err(CacheError::invalid(table, "a primary key value is null")),
        Value::Bool(b) => b.to_string(),
        Value::I64(i) => i.to_string(),
        Value::F64(f) => f.to_string(),
        Value::Decimal(d) => d.normalize().to_string(),
        Value::Text(s) => s.clone(),
        Value::Bytes(b) => b
            .iter()
            .fold(String::with_capacity(b.len() * 2), |mut s, x| {
                let _ = write!(s, "{x:02x}");
                s
            }),
        Value::Timestamp(t) => t.to_rfc3339_opts(SecondsFormat::Micros, true),
        Value::Uuid(u) => u.hyphenated().to_string(),
        Value::Json(j) => j.to_string(),
    })
}

/// `<pk>`: each component encoded with `encode_key_part`, joined by `/`.
pub fn encode_pk(table: &str, pk: &[Value]) -> Result<String> {
    let mut out = String::new();
    for (i, v) in pk.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&encode_key_part(&part_text(table, v)?));
    }
    Ok(out)
}

/// `cache/<db>/<table>/`: the part of every key of a table that does not depend on the pk.
pub(crate) fn key_prefix(db: &str, table: &str) -> String {
    format!("cache/{db}/{}/", encode_key_part(table))
}

/// `prefix` + `<pk>`, the same text as [`cache_key`], built without the intermediate strings
/// (the owner's read path builds one key per call).
pub(crate) fn key_with_prefix(prefix: &str, table: &str, pk: &[Value]) -> Result<String> {
    let mut out = String::with_capacity(prefix.len() + 24);
    out.push_str(prefix);
    for (i, v) in pk.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        match v {
            // Digits and '-' never need encoding.
            Value::I64(n) => {
                let _ = write!(out, "{n}");
            }
            v => out.push_str(&encode_key_part(&part_text(table, v)?)),
        }
    }
    if out.len() > keyward_ownership::MAX_KEY_BYTES {
        keyward_ownership::validate_key(&out)?;
    }
    Ok(out)
}

/// FNV-1a over a key's text, fed in pieces: a table's state after `cache/<db>/<table>/` is
/// computed once, so the owner's read path hashes only the pk's text, without building the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyHash(u64);

impl KeyHash {
    pub const START: KeyHash = KeyHash(0xcbf29ce484222325);

    pub fn bytes(mut self, b: &[u8]) -> KeyHash {
        for x in b {
            self.0 ^= *x as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
        self
    }

    /// The final hash. FNV's high bits depend weakly on the last bytes; the murmur finalizer
    /// spreads them, since the shard and the bucket take different bits.
    pub fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51afd7ed558ccd);
        h ^= h >> 33;
        h
    }
}

/// The hash of a whole key's text (the same value as hashing its prefix, then its tail).
pub(crate) fn hash_key(key: &str) -> u64 {
    KeyHash::START.bytes(key.as_bytes()).finish()
}

/// Longest pk text kept inline in the owner's map; longer ones take the string path.
pub(crate) const TAIL_MAX: usize = 30;

/// The `<pk>` text of a key, built on the stack, for pks whose text needs no encoding and fits
/// `TAIL_MAX` bytes (integer components today): the read path's key without an allocation.
pub(crate) struct Tail {
    buf: [u8; TAIL_MAX],
    len: usize,
}

impl Tail {
    pub fn of(pk: &[Value]) -> Option<Tail> {
        let mut t = Tail {
            buf: [0; TAIL_MAX],
            len: 0,
        };
        for (i, v) in pk.iter().enumerate() {
            if i > 0 {
                t.push(b"/")?;
            }
            match v {
                // Digits and '-' never need encoding: the same text `key_with_prefix` writes.
                Value::I64(n) => t.push(itoa::Buffer::new().format(*n).as_bytes())?,
                _ => return None,
            }
        }
        Some(t)
    }

    fn push(&mut self, b: &[u8]) -> Option<()> {
        let end = self.len + b.len();
        self.buf.get_mut(self.len..end)?.copy_from_slice(b);
        self.len = end;
        Some(())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// `cache/<db>/<table>/<pk>`.
pub fn cache_key(db: &str, table: &str, pk: &[Value]) -> Result<String> {
    let key = format!(
        "cache/{db}/{}/{}",
        encode_key_part(table),
        encode_pk(table, pk)?
    );
    keyward_ownership::validate_key(&key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_canonical() {
        let k = cache_key("d", "t", &[Value::I64(7), Value::Text("a/b".into())]).unwrap();
        assert_eq!(k, "cache/d/t/7/a%2Fb");
        assert!(cache_key("d", "t", &[Value::Null]).is_err());
        let pk = [Value::I64(-7), Value::Text("a/b".into())];
        assert_eq!(
            key_with_prefix(&key_prefix("d", "t/x"), "t/x", &pk).unwrap(),
            cache_key("d", "t/x", &pk).unwrap()
        );
        assert!(key_with_prefix("cache/d/t/", "t", &[Value::Text("x".repeat(2000))]).is_err());
        assert!(cache_key("d", "t", &[Value::Text("x".repeat(2000))]).is_err());
    }

    #[test]
    fn tails_match_the_key_text_and_its_hash() {
        let prefix = key_prefix("d", "t");
        for pk in [
            vec![Value::I64(0)],
            vec![Value::I64(-7), Value::I64(i64::MAX)],
            vec![Value::I64(i64::MIN)],
        ] {
            let key = key_with_prefix(&prefix, "t", &pk).unwrap();
            let tail = Tail::of(&pk).unwrap();
            assert_eq!(tail.as_bytes(), &key.as_bytes()[prefix.len()..]);
            let split = KeyHash::START
                .bytes(prefix.as_bytes())
                .bytes(tail.as_bytes())
                .finish();
            assert_eq!(split, hash_key(&key));
        }
        // Too long for the inline tail, or not an integer: the string path serves them.
        assert!(Tail::of(&[Value::I64(i64::MIN), Value::I64(i64::MIN)]).is_none());
        assert!(Tail::of(&[Value::Text("a".into())]).is_none());
    }
}
