//! How each value type is stored per SQL backend, both ways.
//!
//! SQLite and MySQL store lossless forms where their native types are narrower: f64 as its
//! 8 big-endian bytes (SQLite turns NaN into NULL and -0.0 into 0; MySQL has no NaN or
//! infinities), decimals as their exact text, timestamps as microseconds since the epoch
//! (MySQL DATETIME stops at year 9999), uuids as 16 bytes and json as text.
//! PostgreSQL stores every type natively.

use crate::error::{DbcError, Result};
use crate::value::{FieldType, Value};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{Row, TypeInfo, ValueRef};

fn mismatch(i: usize, expected: impl std::fmt::Debug, got: impl std::fmt::Display) -> DbcError {
    DbcError::TypeMismatch {
        field: format!("column {i}"),
        expected: format!("{expected:?}"),
        got: got.to_string(),
    }
}

fn micros_to_ts(i: usize, m: i64) -> Result<Value> {
    DateTime::<Utc>::from_timestamp_micros(m)
        .map(Value::Timestamp)
        .ok_or_else(|| mismatch(i, FieldType::Timestamp, format!("out-of-range micros {m}")))
}

fn f64_from_bytes(i: usize, b: &[u8]) -> Result<Value> {
    let a: [u8; 8] = b
        .try_into()
        .map_err(|_| mismatch(i, FieldType::F64, format!("{} bytes", b.len())))?;
    Ok(Value::F64(f64::from_be_bytes(a)))
}

fn uuid_from_bytes(i: usize, b: &[u8]) -> Result<Value> {
    uuid::Uuid::from_slice(b)
        .map(Value::Uuid)
        .map_err(|e| mismatch(i, FieldType::Uuid, e))
}

fn decimal_from_text(i: usize, s: &str) -> Result<Value> {
    s.parse::<Decimal>()
        .map(Value::Decimal)
        .map_err(|e| mismatch(i, FieldType::Decimal, e))
}

fn json_from_text(i: usize, s: &str) -> Result<Value> {
    serde_json::from_str(s)
        .map(|j| Value::Json(Box::new(j)))
        .map_err(|e| mismatch(i, FieldType::Json, e))
}

fn json_text(j: &serde_json::Value) -> String {
    // Serializing a serde_json::Value cannot fail (all keys are strings).
    serde_json::to_string(j).unwrap_or_default()
}

/// Codec shared by SQLite and MySQL, whose lossless encodings are the same.
macro_rules! narrow_codec {
    ($db:ty) => {
        pub(crate) type Q<'q> = sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>;

        pub(crate) fn bind<'q>(q: Q<'q>, v: &Value, ty: FieldType) -> Q<'q> {
            match v {
                Value::Null => match ty {
                    FieldType::Bool | FieldType::I64 | FieldType::Timestamp => q.bind(None::<i64>),
                    FieldType::F64 | FieldType::Bytes | FieldType::Uuid => q.bind(None::<Vec<u8>>),
                    _ => q.bind(None::<String>),
                },
                Value::Bool(b) => q.bind(*b),
                Value::I64(n) => q.bind(*n),
                Value::F64(f) => q.bind(f.to_be_bytes().to_vec()),
                Value::Decimal(d) => q.bind(d.to_string()),
                Value::Text(s) => q.bind(s.clone()),
                Value::Bytes(b) => q.bind(b.clone()),
                Value::Timestamp(t) => q.bind(t.timestamp_micros()),
                Value::Uuid(u) => q.bind(u.as_bytes().to_vec()),
                Value::Json(j) => q.bind(json_text(j)),
            }
        }

        pub(crate) fn decode(
            row: &<$db as sqlx::Database>::Row,
            i: usize,
            ty: FieldType,
        ) -> Result<Value> {
            let be = |e: sqlx::Error| mismatch(i, ty, e);
            Ok(match ty {
                FieldType::Bool => row
                    .try_get::<Option<bool>, _>(i)
                    .map_err(be)?
                    .map(Value::Bool)
                    .unwrap_or(Value::Null),
                FieldType::I64 => row
                    .try_get::<Option<i64>, _>(i)
                    .map_err(be)?
                    .map(Value::I64)
                    .unwrap_or(Value::Null),
                FieldType::Text => row
                    .try_get::<Option<String>, _>(i)
                    .map_err(be)?
                    .map(Value::Text)
                    .unwrap_or(Value::Null),
                FieldType::Bytes => row
                    .try_get::<Option<Vec<u8>>, _>(i)
                    .map_err(be)?
                    .map(Value::Bytes)
                    .unwrap_or(Value::Null),
                // Borrowed: these decode from the row's bytes without an allocation.
                FieldType::F64 => match row.try_get::<Option<&[u8]>, _>(i).map_err(be)? {
                    Some(b) => f64_from_bytes(i, b)?,
                    None => Value::Null,
                },
                FieldType::Uuid => match row.try_get::<Option<&[u8]>, _>(i).map_err(be)? {
                    Some(b) => uuid_from_bytes(i, b)?,
                    None => Value::Null,
                },
                FieldType::Timestamp => match row.try_get::<Option<i64>, _>(i).map_err(be)? {
                    Some(m) => micros_to_ts(i, m)?,
                    None => Value::Null,
                },
                FieldType::Decimal => match row.try_get::<Option<&str>, _>(i).map_err(be)? {
                    Some(s) => decimal_from_text(i, s)?,
                    None => Value::Null,
                },
                FieldType::Json => match row.try_get::<Option<&str>, _>(i).map_err(be)? {
                    Some(s) => json_from_text(i, s)?,
                    None => Value::Null,
                },
            })
        }

        /// Binds a native-face parameter by its own type.
        pub(crate) fn bind_native<'q>(q: Q<'q>, v: &Value) -> Q<'q> {
            bind(q, v, v.field_type().unwrap_or(FieldType::Text))
        }
    };
}

pub(crate) mod sqlite {
    use super::*;
    use sqlx::Sqlite;
    narrow_codec!(Sqlite);

    /// Rows affected, and 0 for the insert id (only MySQL's is used).
    pub(crate) fn ids(r: &sqlx::sqlite::SqliteQueryResult) -> (u64, u64) {
        (r.rows_affected(), 0)
    }

    pub(crate) fn decode_native(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Value> {
        let raw = row.try_get_raw(i).map_err(|e| mismatch(i, "any", e))?;
        if raw.is_null() {
            return Ok(Value::Null);
        }
        let name = raw.type_info().name().to_ascii_uppercase();
        let ty = if name.contains("INT") || name.contains("BOOL") {
            FieldType::I64
        } else if name.contains("REAL") || name.contains("FLOA") || name.contains("DOUB") {
            return Ok(Value::F64(
                row.try_get::<f64, _>(i)
                    .map_err(|e| mismatch(i, "f64", e))?,
            ));
        } else if name.contains("BLOB") {
            FieldType::Bytes
        } else {
            FieldType::Text
        };
        decode(row, i, ty)
    }
}

pub(crate) mod mysql {
    use super::*;
    use sqlx::MySql;
    narrow_codec!(MySql);

    /// Rows affected (matched) and the insert id the server reported.
    pub(crate) fn ids(r: &sqlx::mysql::MySqlQueryResult) -> (u64, u64) {
        (r.rows_affected(), r.last_insert_id())
    }

    pub(crate) fn decode_native(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<Value> {
        let raw = row.try_get_raw(i).map_err(|e| mismatch(i, "any", e))?;
        if raw.is_null() {
            return Ok(Value::Null);
        }
        let ti = raw.type_info().into_owned();
        let name = ti.name().to_ascii_uppercase();
        // Text in a binary collation (utf8mb4_bin) is flagged BINARY too; the collation
        // number, which String's compatibility check reads, tells text from bytes.
        let texty = <String as sqlx::Type<MySql>>::compatible(&ti);
        let err = |e: sqlx::Error| mismatch(i, name.clone(), e);
        Ok(if name == "BOOLEAN" {
            Value::Bool(row.try_get::<bool, _>(i).map_err(err)?)
        } else if name.ends_with("INT UNSIGNED") || name == "BIGINT UNSIGNED" {
            let u = row.try_get::<u64, _>(i).map_err(err)?;
            i64::try_from(u)
                .map(Value::I64)
                .unwrap_or(Value::Decimal(Decimal::from(u)))
        } else if name.contains("INT") {
            Value::I64(row.try_get::<i64, _>(i).map_err(err)?)
        } else if name == "FLOAT" {
            Value::F64(f64::from(row.try_get::<f32, _>(i).map_err(err)?))
        } else if name == "DOUBLE" {
            Value::F64(row.try_get::<f64, _>(i).map_err(err)?)
        } else if name == "DECIMAL" {
            Value::Decimal(row.try_get::<Decimal, _>(i).map_err(err)?)
        } else if (name.contains("BLOB") || name.contains("BINARY")) && !texty {
            Value::Bytes(row.try_get::<Vec<u8>, _>(i).map_err(err)?)
        } else if name == "JSON" {
            json_from_text(i, &row.try_get::<String, _>(i).map_err(err)?)?
        } else if name == "DATETIME" || name == "TIMESTAMP" {
            Value::Timestamp(row.try_get::<DateTime<Utc>, _>(i).map_err(err)?)
        } else {
            Value::Text(row.try_get::<String, _>(i).map_err(err)?)
        })
    }
}

pub(crate) mod postgres {
    use super::*;
    use sqlx::Postgres;
    pub(crate) type Q<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

    pub(crate) fn bind<'q>(q: Q<'q>, v: &Value, ty: FieldType) -> Q<'q> {
        match v {
            Value::Null => match ty {
                FieldType::Bool => q.bind(None::<bool>),
                FieldType::I64 => q.bind(None::<i64>),
                FieldType::F64 => q.bind(None::<f64>),
                FieldType::Decimal => q.bind(None::<Decimal>),
                FieldType::Text => q.bind(None::<String>),
                FieldType::Bytes => q.bind(None::<Vec<u8>>),
                FieldType::Timestamp => q.bind(None::<DateTime<Utc>>),
                FieldType::Uuid => q.bind(None::<uuid::Uuid>),
                FieldType::Json => q.bind(None::<serde_json::Value>),
            },
            Value::Bool(b) => q.bind(*b),
            Value::I64(n) => q.bind(*n),
            Value::F64(f) => q.bind(*f),
            Value::Decimal(d) => q.bind(*d),
            // PostgreSQL arguments are encoded on bind, so borrowing saves a copy.
            Value::Text(s) => q.bind(s.as_str()),
            Value::Bytes(b) => q.bind(b.as_slice()),
            Value::Timestamp(t) => q.bind(*t),
            Value::Uuid(u) => q.bind(*u),
            Value::Json(j) => q.bind(sqlx::types::Json(&**j)),
        }
    }

    pub(crate) fn bind_native<'q>(q: Q<'q>, v: &Value) -> Q<'q> {
        bind(q, v, v.field_type().unwrap_or(FieldType::Text))
    }

    /// Rows affected, and 0 for the insert id (only MySQL's is used).
    pub(crate) fn ids(r: &sqlx::postgres::PgQueryResult) -> (u64, u64) {
        (r.rows_affected(), 0)
    }

    pub(crate) fn decode(row: &sqlx::postgres::PgRow, i: usize, ty: FieldType) -> Result<Value> {
        let be = |e: sqlx::Error| mismatch(i, ty, e);
        fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
            v.map(f).unwrap_or(Value::Null)
        }
        Ok(match ty {
            FieldType::Bool => opt(row.try_get(i).map_err(be)?, Value::Bool),
            FieldType::I64 => opt(row.try_get(i).map_err(be)?, Value::I64),
            FieldType::F64 => opt(row.try_get(i).map_err(be)?, Value::F64),
            FieldType::Decimal => opt(row.try_get(i).map_err(be)?, Value::Decimal),
            FieldType::Text => opt(row.try_get(i).map_err(be)?, Value::Text),
            FieldType::Bytes => opt(row.try_get(i).map_err(be)?, Value::Bytes),
            FieldType::Timestamp => opt(row.try_get(i).map_err(be)?, Value::Timestamp),
            FieldType::Uuid => opt(row.try_get(i).map_err(be)?, Value::Uuid),
            FieldType::Json => opt(row.try_get(i).map_err(be)?, |j| Value::Json(Box::new(j))),
        })
    }

    pub(crate) fn decode_native(row: &sqlx::postgres::PgRow, i: usize) -> Result<Value> {
        let raw = row.try_get_raw(i).map_err(|e| mismatch(i, "any", e))?;
        if raw.is_null() {
            return Ok(Value::Null);
        }
        let name = raw.type_info().name().to_ascii_uppercase();
        let err = |e: sqlx::Error| mismatch(i, name.clone(), e);
        Ok(match name.as_str() {
            "BOOL" => Value::Bool(row.try_get(i).map_err(err)?),
            "INT2" => Value::I64(i64::from(row.try_get::<i16, _>(i).map_err(err)?)),
            "INT4" => Value::I64(i64::from(row.try_get::<i32, _>(i).map_err(err)?)),
            "INT8" => Value::I64(row.try_get(i).map_err(err)?),
            "FLOAT4" => Value::F64(f64::from(row.try_get::<f32, _>(i).map_err(err)?)),
            "FLOAT8" => Value::F64(row.try_get(i).map_err(err)?),
            "NUMERIC" => Value::Decimal(row.try_get(i).map_err(err)?),
            "BYTEA" => Value::Bytes(row.try_get(i).map_err(err)?),
            "TIMESTAMPTZ" => Value::Timestamp(row.try_get(i).map_err(err)?),
            "TIMESTAMP" => Value::Timestamp(
                row.try_get::<chrono::NaiveDateTime, _>(i)
                    .map_err(err)?
                    .and_utc(),
            ),
            "UUID" => Value::Uuid(row.try_get(i).map_err(err)?),
            "JSON" | "JSONB" => Value::Json(Box::new(row.try_get(i).map_err(err)?)),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => {
                Value::Text(row.try_get(i).map_err(err)?)
            }
            other => {
                return Err(DbcError::TypeMismatch {
                    field: format!("column {i}"),
                    expected: "a type of the value model".into(),
                    got: other.to_string(),
                })
            }
        })
    }
}
