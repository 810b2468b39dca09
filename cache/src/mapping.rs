//! Maps serde types to and from records, through `serde_json` as the intermediate form: a
//! struct's fields are matched to the table's fields by name.

use crate::error::{CacheError, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use keyward_dbc::{FieldType, Record, TableDef, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Number, Value as Json};
use std::str::FromStr;

fn err(def: &TableDef, reason: impl Into<String>) -> CacheError {
    CacheError::Mapping {
        table: def.name.clone(),
        reason: reason.into(),
    }
}

fn from_json(def: &TableDef, field: &str, ty: FieldType, j: Json) -> Result<Value> {
    let mismatch = |j: &Json| err(def, format!("field {field:?}: {j} is not a {ty:?}"));
    Ok(match (ty, j) {
        (_, Json::Null) => Value::Null,
        (FieldType::Json, j) => Value::Json(Box::new(j)),
        (FieldType::Bool, Json::Bool(b)) => Value::Bool(b),
        (FieldType::I64, Json::Number(n)) => Value::I64(
            n.as_i64()
                .ok_or_else(|| mismatch(&Json::Number(n.clone())))?,
        ),
        (FieldType::F64, Json::Number(n)) => Value::F64(
            n.as_f64()
                .ok_or_else(|| mismatch(&Json::Number(n.clone())))?,
        ),
        (FieldType::Decimal, Json::String(s)) => Value::Decimal(
            rust_decimal::Decimal::from_str(&s)
                .map_err(|e| err(def, format!("field {field:?}: {e}")))?,
        ),
        (FieldType::Decimal, Json::Number(n)) => Value::Decimal(
            rust_decimal::Decimal::from_str(&n.to_string())
                .map_err(|e| err(def, format!("field {field:?}: {e}")))?,
        ),
        (FieldType::Text, Json::String(s)) => Value::Text(s),
        (FieldType::Bytes, Json::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for x in a {
                let b = x
                    .as_u64()
                    .filter(|b| *b <= 255)
                    .ok_or_else(|| mismatch(&x))?;
                out.push(b as u8);
            }
            Value::Bytes(out)
        }
        (FieldType::Timestamp, Json::String(s)) => Value::Timestamp(
            DateTime::parse_from_rfc3339(&s)
                .map_err(|e| err(def, format!("field {field:?}: {e}")))?
                .with_timezone(&Utc),
        ),
        (FieldType::Uuid, Json::String(s)) => Value::Uuid(
            s.parse()
                .map_err(|e| err(def, format!("field {field:?}: {e}")))?,
        ),
        (_, j) => return Err(mismatch(&j)),
    })
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::I64(i) => Json::Number((*i).into()),
        Value::F64(f) => Number::from_f64(*f).map(Json::Number).unwrap_or(Json::Null),
        Value::Decimal(d) => Json::String(d.to_string()),
        Value::Text(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::Array(b.iter().map(|x| Json::Number((*x).into())).collect()),
        Value::Timestamp(t) => Json::String(t.to_rfc3339_opts(SecondsFormat::Micros, true)),
        Value::Uuid(u) => Json::String(u.hyphenated().to_string()),
        Value::Json(j) => (**j).clone(),
    }
}

/// A serde value as a record of `def`: a struct (JSON object) whose keys name the fields.
pub fn to_record<T: Serialize>(def: &TableDef, value: &T) -> Result<Record> {
    let j = serde_json::to_value(value).map_err(|e| err(def, e.to_string()))?;
    let Json::Object(mut obj) = j else {
        return Err(err(def, "the value does not serialize as a struct or map"));
    };
    let mut rec = Vec::with_capacity(def.fields.len());
    for f in &def.fields {
        let j = obj.remove(&f.name).unwrap_or(Json::Null);
        rec.push(from_json(def, &f.name, f.ty, j)?);
    }
    if let Some(extra) = obj.keys().next() {
        return Err(err(
            def,
            format!("the value has a field {extra:?} the table lacks"),
        ));
    }
    Ok(rec)
}

/// A record of `def` as a serde value.
pub fn from_record<T: DeserializeOwned>(def: &TableDef, rec: &Record) -> Result<T> {
    if rec.len() != def.fields.len() {
        return Err(err(
            def,
            format!(
                "record has {} values for {} fields",
                rec.len(),
                def.fields.len()
            ),
        ));
    }
    let mut obj = Map::with_capacity(rec.len());
    for (f, v) in def.fields.iter().zip(rec) {
        obj.insert(f.name.clone(), to_json(v));
    }
    serde_json::from_value(Json::Object(obj)).map_err(|e| err(def, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_dbc::Field;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Row {
        id: i64,
        name: String,
        at: Option<DateTime<Utc>>,
        blob: Vec<u8>,
    }

    #[test]
    fn structs_round_trip() {
        let def = TableDef {
            name: "t".into(),
            fields: vec![
                Field::new("id", FieldType::I64),
                Field::new("name", FieldType::Text),
                Field::new("at", FieldType::Timestamp).nullable(),
                Field::new("blob", FieldType::Bytes),
            ],
            primary_key: vec!["id".into()],
        };
        let row = Row {
            id: 3,
            name: "é/x".into(),
            at: Some(Utc::now()),
            blob: vec![0, 255],
        };
        let rec = to_record(&def, &row).unwrap();
        assert_eq!(rec[0], Value::I64(3));
        let back: Row = from_record(&def, &rec).unwrap();
        assert_eq!(back.name, row.name);
        assert_eq!(back.blob, row.blob);
        assert!(from_record::<Row>(&def, &vec![Value::I64(1)]).is_err());
    }
}
