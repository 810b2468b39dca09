//! The one value model every backend round-trips exactly (DESIGN.md section 6).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A typed value. Timestamps carry microseconds (finer parts are refused, not rounded).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    I64(i64),
    F64(f64),
    Decimal(Decimal),
    Text(String),
    Bytes(Vec<u8>),
    Timestamp(DateTime<Utc>),
    Uuid(uuid::Uuid),
    /// Boxed: an unboxed `serde_json::Value` (72 bytes with `preserve_order`) made every
    /// `Value` 80 bytes, and a decoded row of 20 columns 1.6 KB.
    Json(#[serde(with = "json_text::boxed")] Box<serde_json::Value>),
}

/// Serde for a JSON value held inside another value: the value itself in human-readable
/// formats (JSON, where it always appeared as itself), its JSON text in compact binary formats,
/// which cannot read back a value whose shape only the data reveals.
pub mod json_text {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            v.serialize(s)
        } else {
            s.serialize_str(&v.to_string())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text).map_err(D::Error::custom)
        }
    }

    /// The same for a boxed value.
    pub mod boxed {
        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
            super::serialize(v, s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Box<serde_json::Value>, D::Error> {
            super::deserialize(d).map(Box::new)
        }
    }
}

/// The type of a field in a table definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Bool,
    I64,
    F64,
    Decimal,
    Text,
    Bytes,
    Timestamp,
    Uuid,
    Json,
}

impl Value {
    /// The field type this value belongs to; `None` for `Null`.
    pub fn field_type(&self) -> Option<FieldType> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(_) => FieldType::Bool,
            Value::I64(_) => FieldType::I64,
            Value::F64(_) => FieldType::F64,
            Value::Decimal(_) => FieldType::Decimal,
            Value::Text(_) => FieldType::Text,
            Value::Bytes(_) => FieldType::Bytes,
            Value::Timestamp(_) => FieldType::Timestamp,
            Value::Uuid(_) => FieldType::Uuid,
            Value::Json(_) => FieldType::Json,
        })
    }
}
