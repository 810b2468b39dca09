//! How each value type is stored per SQL backend, both ways.
//!
//! SQLite and MySQL store lossless forms where their native types are narrower: decimals as
//! their exact text, timestamps as microseconds since the epoch (MySQL DATETIME stops at year
//! 9999), uuids as 16 bytes and json as text. MySQL stores f64 as its 8 big-endian bytes (it
//! has no NaN or infinities). SQLite stores f64 as REAL in a column without affinity (a REAL
//! column would store -0.0 as the integer 0), except NaN, which SQLite would turn into NULL:
//! NaN is stored as its 8 big-endian bytes, the form SQLite files written before 2026-11-26
//! used for every f64 and which is still read. PostgreSQL stores every type natively.

use crate::error::{DbcError, Result};
use crate::value::{FieldType, Value};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::error::BoxDynError;
use sqlx::{Arguments, Row, TypeInfo, ValueRef};

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

/// A statement with its arguments encoded up front (one growth of the argument list, not one
/// move of the whole query per value as `Query::bind` does).
macro_rules! query_fn {
    () => {
        pub(crate) fn query<'q>(sql: &str, binds: &[(&Value, FieldType)]) -> Result<Q<'q>> {
            let mut a = Args::default();
            a.reserve(binds.len(), 0);
            for (n, (v, t)) in binds.iter().enumerate() {
                add(&mut a, v, *t).map_err(|e| bind_error(n, *t, e))?;
            }
            Ok(sqlx::query_with(sqlx::AssertSqlSafe(sql.to_owned()), a))
        }
    };
}

fn bind_error(n: usize, ty: FieldType, e: BoxDynError) -> DbcError {
    DbcError::TypeMismatch {
        field: format!("parameter {}", n + 1),
        expected: format!("{ty:?}"),
        got: format!("a value the driver could not encode: {e}"),
    }
}

/// Codec shared by SQLite and MySQL, whose lossless encodings are the same.
macro_rules! narrow_codec {
    ($db:ty, bind_f64: $bind_f64:path, decode_f64: $decode_f64:path) => {
        pub(crate) type Args = <$db as sqlx::Database>::Arguments;
        pub(crate) type Q<'q> = sqlx::query::Query<'q, $db, Args>;

        pub(crate) fn add(
            a: &mut Args,
            v: &Value,
            ty: FieldType,
        ) -> std::result::Result<(), BoxDynError> {
            match v {
                Value::Null => match ty {
                    FieldType::Bool | FieldType::I64 | FieldType::Timestamp => a.add(None::<i64>),
                    FieldType::F64 | FieldType::Bytes | FieldType::Uuid => a.add(None::<Vec<u8>>),
                    _ => a.add(None::<String>),
                },
                Value::Bool(b) => a.add(*b),
                Value::I64(n) => a.add(*n),
                Value::F64(f) => $bind_f64(a, *f),
                Value::Decimal(d) => a.add(d.to_string()),
                Value::Text(s) => a.add(s.clone()),
                Value::Bytes(b) => a.add(b.clone()),
                Value::Timestamp(t) => a.add(t.timestamp_micros()),
                Value::Uuid(u) => a.add(u.as_bytes().to_vec()),
                Value::Json(j) => a.add(json_text(j)),
            }
        }

        query_fn!();

        /// Never: SQLite types each value on its own (and MySQL keeps the per-value path).
        pub(crate) fn trusts_columns(
            _row: &<$db as sqlx::Database>::Row,
            _types: &[FieldType],
        ) -> bool {
            false
        }

        /// As `decode` (see `trusts_columns`).
        pub(crate) fn decode_trusted(
            row: &<$db as sqlx::Database>::Row,
            i: usize,
            ty: FieldType,
        ) -> Result<Value> {
            decode(row, i, ty)
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
                FieldType::F64 => $decode_f64(row, i)?,
                // Borrowed: these decode from the row's bytes without an allocation.
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
    };
}

/// The f64 decoder of a column stored as 8 big-endian bytes.
macro_rules! f64_bytes_decoder {
    ($db:ty) => {
        fn decode_f64_bytes(row: &<$db as sqlx::Database>::Row, i: usize) -> Result<Value> {
            // Borrowed: decodes from the row's bytes without an allocation.
            match row
                .try_get::<Option<&[u8]>, _>(i)
                .map_err(|e| mismatch(i, FieldType::F64, e))?
            {
                Some(b) => f64_from_bytes(i, b),
                None => Ok(Value::Null),
            }
        }
    };
}

pub(crate) mod sqlite {
    use super::*;
    use sqlx::Sqlite;
    narrow_codec!(Sqlite, bind_f64: bind_f64, decode_f64: decode_f64);
    f64_bytes_decoder!(Sqlite);

    fn bind_f64(a: &mut Args, f: f64) -> std::result::Result<(), BoxDynError> {
        if f.is_nan() {
            a.add(f.to_be_bytes().to_vec())
        } else {
            a.add(f)
        }
    }

    /// REAL, or 8 bytes (NaN, and every f64 of files written before REAL was used).
    fn decode_f64(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Value> {
        let raw = row
            .try_get_raw(i)
            .map_err(|e| mismatch(i, FieldType::F64, e))?;
        if raw.is_null() {
            return Ok(Value::Null);
        }
        if raw.type_info().name() == "BLOB" {
            return decode_f64_bytes(row, i);
        }
        row.try_get::<f64, _>(i)
            .map(Value::F64)
            .map_err(|e| mismatch(i, FieldType::F64, e))
    }

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
    narrow_codec!(MySql, bind_f64: bind_f64, decode_f64: decode_f64_bytes);
    f64_bytes_decoder!(MySql);

    fn bind_f64(a: &mut Args, f: f64) -> std::result::Result<(), BoxDynError> {
        a.add(f.to_be_bytes().to_vec())
    }

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
    pub(crate) type Args = sqlx::postgres::PgArguments;
    pub(crate) type Q<'q> = sqlx::query::Query<'q, Postgres, Args>;

    pub(crate) fn add(
        a: &mut Args,
        v: &Value,
        ty: FieldType,
    ) -> std::result::Result<(), BoxDynError> {
        match v {
            Value::Null => match ty {
                FieldType::Bool => a.add(None::<bool>),
                FieldType::I64 => a.add(None::<i64>),
                FieldType::F64 => a.add(None::<f64>),
                FieldType::Decimal => a.add(None::<Decimal>),
                FieldType::Text => a.add(None::<String>),
                FieldType::Bytes => a.add(None::<Vec<u8>>),
                FieldType::Timestamp => a.add(None::<DateTime<Utc>>),
                FieldType::Uuid => a.add(None::<uuid::Uuid>),
                FieldType::Json => a.add(None::<serde_json::Value>),
            },
            Value::Bool(b) => a.add(*b),
            Value::I64(n) => a.add(*n),
            Value::F64(f) => a.add(*f),
            Value::Decimal(d) => a.add(*d),
            // PostgreSQL arguments are encoded on bind, so borrowing saves a copy.
            Value::Text(s) => a.add(s.as_str()),
            Value::Bytes(b) => a.add(b.as_slice()),
            Value::Timestamp(t) => a.add(*t),
            Value::Uuid(u) => a.add(*u),
            Value::Json(j) => a.add(sqlx::types::Json(&**j)),
        }
    }

    query_fn!();

    /// Rows affected, and 0 for the insert id (only MySQL's is used).
    pub(crate) fn ids(r: &sqlx::postgres::PgQueryResult) -> (u64, u64) {
        (r.rows_affected(), 0)
    }

    pub(crate) fn decode(row: &sqlx::postgres::PgRow, i: usize, ty: FieldType) -> Result<Value> {
        decode_with(row, i, ty, false)
    }

    /// As [`decode`], for a row of a result that passed [`trusts_columns`]: a column's type is
    /// fixed for the whole result (PostgreSQL describes it once, before the rows), so sqlx's
    /// check of every value (a tenth of a large scan's decoding) is the same check again.
    /// Values are still decoded by sqlx, which checks their lengths.
    pub(crate) fn decode_trusted(
        row: &sqlx::postgres::PgRow,
        i: usize,
        ty: FieldType,
    ) -> Result<Value> {
        decode_with(row, i, ty, true)
    }

    /// Whether each column of a result has the type `types` expects (what sqlx checks per
    /// non-null value), checked once on its first row.
    pub(crate) fn trusts_columns(row: &sqlx::postgres::PgRow, types: &[FieldType]) -> bool {
        use sqlx::{Column, Type};
        let cols = row.columns();
        cols.len() >= types.len()
            && cols.iter().zip(types).all(|(c, ty)| {
                let ti = c.type_info();
                match ty {
                    FieldType::Bool => <bool as Type<Postgres>>::compatible(ti),
                    FieldType::I64 => <i64 as Type<Postgres>>::compatible(ti),
                    FieldType::F64 => <f64 as Type<Postgres>>::compatible(ti),
                    FieldType::Decimal => <Decimal as Type<Postgres>>::compatible(ti),
                    FieldType::Text => <String as Type<Postgres>>::compatible(ti),
                    FieldType::Bytes => <Vec<u8> as Type<Postgres>>::compatible(ti),
                    FieldType::Timestamp => <DateTime<Utc> as Type<Postgres>>::compatible(ti),
                    FieldType::Uuid => <uuid::Uuid as Type<Postgres>>::compatible(ti),
                    FieldType::Json => <serde_json::Value as Type<Postgres>>::compatible(ti),
                }
            })
    }

    fn decode_with(
        row: &sqlx::postgres::PgRow,
        i: usize,
        ty: FieldType,
        trusted: bool,
    ) -> Result<Value> {
        let be = |e: sqlx::Error| mismatch(i, ty, e);
        fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
            v.map(f).unwrap_or(Value::Null)
        }
        fn get<'r, T>(row: &'r sqlx::postgres::PgRow, i: usize, trusted: bool) -> sqlx::Result<T>
        where
            T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
        {
            if trusted {
                row.try_get_unchecked(i)
            } else {
                row.try_get(i)
            }
        }
        Ok(match ty {
            FieldType::Bool => opt(get(row, i, trusted).map_err(be)?, Value::Bool),
            FieldType::I64 => opt(get(row, i, trusted).map_err(be)?, Value::I64),
            FieldType::F64 => opt(get(row, i, trusted).map_err(be)?, Value::F64),
            FieldType::Decimal => opt(get(row, i, trusted).map_err(be)?, Value::Decimal),
            FieldType::Text => opt(get(row, i, trusted).map_err(be)?, Value::Text),
            FieldType::Bytes => opt(get(row, i, trusted).map_err(be)?, Value::Bytes),
            FieldType::Timestamp => opt(get(row, i, trusted).map_err(be)?, Value::Timestamp),
            FieldType::Uuid => opt(get(row, i, trusted).map_err(be)?, Value::Uuid),
            FieldType::Json => opt(get(row, i, trusted).map_err(be)?, |j| {
                Value::Json(Box::new(j))
            }),
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
