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
}
