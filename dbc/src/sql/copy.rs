//! PostgreSQL's `COPY … FROM STDIN` for large unfenced batches (`put_many`).
//!
//! Why: a multi-row `INSERT … ON CONFLICT` with bound parameters costs PostgreSQL a parse,
//! a bind of every value and a conflict check per row; `COPY` streams rows in its text format
//! and is what bulk loaders such as pgloader use (about three times the rows per second here).
//! `COPY` cannot upsert, so the caller runs it under a savepoint and falls back to the
//! multi-row upsert when it fails (a key that exists, or any other refused row): a fresh
//! copy goes fast, a re-copy stays correct.
//!
//! The text format (PostgreSQL manual, "COPY", File Formats): one line per row, columns
//! separated by tabs, `\N` for NULL, and backslash escapes for backslash, newline, carriage
//! return and tab inside a value. Values are written in the input syntax of the column types
//! DBC creates (see `Dialect::column_type`), and only where that syntax is exact; anything
//! else (a timestamp outside years 1-9999) makes the encoder decline, and the batch takes the
//! parameter path.

use crate::table::Record;
use crate::value::Value;
use std::fmt::Write as _;

/// Batches smaller than this take the parameter path: the savepoint and the extra round
/// trips of `COPY` would cost more than they save.
pub(crate) const MIN_ROWS: usize = 32;

/// Appends `rows` in COPY text format to `out`; false when a value has no exact text form
/// (the caller then writes the batch with parameters).
pub(crate) fn encode<'a>(rows: impl Iterator<Item = &'a Record>, out: &mut String) -> bool {
    for rec in rows {
        for (i, v) in rec.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            if !value(v, out) {
                return false;
            }
        }
        out.push('\n');
    }
    true
}

fn value(v: &Value, out: &mut String) -> bool {
    match v {
        Value::Null => out.push_str("\\N"),
        Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Value::I64(n) => {
            let _ = write!(out, "{n}");
        }
        // Rust prints the shortest decimal that reads back to the same double, and
        // PostgreSQL reads decimals correctly rounded: exact both ways.
        Value::F64(f) if f.is_nan() => out.push_str("NaN"),
        Value::F64(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::F64(f) => {
            let _ = write!(out, "{f}");
        }
        // NUMERIC keeps the scale written ("1.50" stays 1.50), as the binary bind does.
        Value::Decimal(d) => {
            let _ = write!(out, "{d}");
        }
        Value::Text(s) => escape(s, out),
        Value::Bytes(b) => {
            // bytea's hex input `\x…`, its backslash escaped for COPY.
            out.push_str("\\\\x");
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for byte in b {
                out.push(HEX[usize::from(byte >> 4)] as char);
                out.push(HEX[usize::from(byte & 15)] as char);
            }
        }
        Value::Timestamp(t) => {
            use chrono::Datelike;
            if !(1..=9999).contains(&t.year()) {
                return false;
            }
            let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S%.6f+00"));
        }
        Value::Uuid(u) => {
            let _ = write!(out, "{}", u.hyphenated());
        }
        Value::Json(j) => match serde_json::to_string(j) {
            Ok(s) => escape(&s, out),
            Err(_) => return false,
        },
    }
    true
}

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn one(v: Value) -> String {
        let mut s = String::new();
        assert!(encode(std::iter::once(&vec![v]), &mut s));
        s
    }

    #[test]
    fn values_in_copy_text_form() {
        assert_eq!(one(Value::Null), "\\N\n");
        assert_eq!(one(Value::Text("\\N".into())), "\\\\N\n");
        assert_eq!(
            one(Value::Text("a\tb\nc\rd\\e 中".into())),
            "a\\tb\\nc\\rd\\\\e 中\n"
        );
        assert_eq!(one(Value::Bytes(vec![0, 255])), "\\\\x00ff\n");
        assert_eq!(one(Value::F64(f64::NAN)), "NaN\n");
        assert_eq!(one(Value::F64(-f64::INFINITY)), "-Infinity\n");
        assert_eq!(one(Value::F64(0.1 + 0.2)), "0.30000000000000004\n");
        assert_eq!(one(Value::F64(-0.0)), "-0\n");
        let t = chrono::Utc.timestamp_opt(1, 5_000).unwrap();
        assert_eq!(one(Value::Timestamp(t)), "1970-01-01 00:00:01.000005+00\n");
        assert_eq!(
            one(Value::Json(Box::new(serde_json::json!({"a": "x\ny"})))),
            "{\"a\":\"x\\\\ny\"}\n"
        );
        let far = chrono::Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap();
        let mut s = String::new();
        assert!(!encode(
            std::iter::once(&vec![Value::Timestamp(far)]),
            &mut s
        ));
    }
}
