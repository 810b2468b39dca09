//! Record-face plumbing shared by every backend: scan pages, cursors and input checks.

use crate::error::{DbcError, Result};
use crate::table::{Record, TableDef};
use crate::value::{FieldType, Value};
use serde::{Deserialize, Serialize};

/// Largest text, bytes or json value accepted, so that every backend can store it
/// (MySQL packets, MongoDB documents and Scylla cells all have limits near or above this).
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Largest text or bytes value accepted in a primary-key field.
pub const MAX_KEY_PART_BYTES: usize = 512;
/// The reserved column holding the fencing token.
pub const TOKEN_COLUMN: &str = "_kw_token";
/// The reserved column marking a tombstone (a fenced delete keeps the row and its token).
pub const DEAD_COLUMN: &str = "_kw_dead";

/// Where the next page of a scan starts: the last key returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanCursor {
    pub after: Vec<Value>,
}

impl std::fmt::Display for ScanCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&s)
    }
}

impl std::str::FromStr for ScanCursor {
    type Err = DbcError;
    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_str(s).map_err(|e| DbcError::invalid(format!("bad scan cursor: {e}")))
    }
}

/// One page of a scan; `next` is `None` after the last page.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanPage {
    pub records: Vec<Record>,
    pub next: Option<ScanCursor>,
}

pub(crate) fn check_ident(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(DbcError::invalid(format!(
            "{kind} name {name:?} must be 1-48 ASCII letters, digits or '_', not starting with a digit"
        )));
    }
    if name.to_ascii_lowercase().starts_with("_kw_") {
        return Err(DbcError::invalid(format!(
            "{kind} name {name:?} uses the reserved prefix _kw_"
        )));
    }
    Ok(())
}

pub(crate) fn check_def(def: &TableDef) -> Result<()> {
    check_ident("table", &def.name)?;
    if def.fields.is_empty() {
        return Err(DbcError::invalid(format!(
            "table {} has no fields",
            def.name
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for f in &def.fields {
        check_ident("field", &f.name)?;
        if !seen.insert(f.name.to_ascii_lowercase()) {
            return Err(DbcError::invalid(format!(
                "table {}: field {} appears twice (names are compared ignoring case)",
                def.name, f.name
            )));
        }
    }
    if def.primary_key.is_empty() {
        return Err(DbcError::invalid(format!(
            "table {} has no primary key",
            def.name
        )));
    }
    for k in &def.primary_key {
        let f = def.fields.iter().find(|f| &f.name == k).ok_or_else(|| {
            DbcError::invalid(format!(
                "table {}: primary key field {k} is not a field",
                def.name
            ))
        })?;
        if f.nullable {
            return Err(DbcError::invalid(format!(
                "table {}: primary key field {k} cannot be nullable",
                def.name
            )));
        }
        if matches!(f.ty, FieldType::Json | FieldType::F64) {
            return Err(DbcError::invalid(format!(
                "table {}: primary key field {k} cannot be of type {:?}",
                def.name, f.ty
            )));
        }
        if def.primary_key.iter().filter(|x| *x == k).count() > 1 {
            return Err(DbcError::invalid(format!(
                "table {}: primary key names {k} twice",
                def.name
            )));
        }
    }
    Ok(())
}

/// Precomputed positions of the key fields.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub def: TableDef,
    pub key_idx: Vec<usize>,
    pub rest_idx: Vec<usize>,
    /// Per field, whether it is part of the key (checked per value of every batch record).
    is_key: Vec<bool>,
}

impl Layout {
    pub fn new(def: TableDef) -> Self {
        let key_idx: Vec<usize> = def
            .primary_key
            .iter()
            .filter_map(|k| def.fields.iter().position(|f| &f.name == k))
            .collect();
        let rest_idx = (0..def.fields.len())
            .filter(|i| !key_idx.contains(i))
            .collect();
        let is_key = (0..def.fields.len())
            .map(|i| key_idx.contains(&i))
            .collect();
        Layout {
            def,
            key_idx,
            rest_idx,
            is_key,
        }
    }

    pub fn key_types(&self) -> Vec<FieldType> {
        self.key_idx
            .iter()
            .map(|&i| self.def.fields[i].ty)
            .collect()
    }

    pub fn key_of(&self, rec: &Record) -> Vec<Value> {
        self.key_idx.iter().map(|&i| rec[i].clone()).collect()
    }

    /// Checks one value and returns about how many bytes it carries (text and bytes exactly,
    /// 8 per scalar or null, a flat 1 KiB per json value): what batches are cut by.
    fn check_value(&self, idx: usize, v: &Value, is_key: bool) -> Result<usize> {
        let f = &self.def.fields[idx];
        match v {
            Value::Null if f.nullable && !is_key => return Ok(8),
            Value::Null => {
                return Err(DbcError::TypeMismatch {
                    field: format!("{}.{}", self.def.name, f.name),
                    expected: format!("{:?} (not null)", f.ty),
                    got: "null".into(),
                })
            }
            _ => {}
        }
        if v.field_type() != Some(f.ty) {
            return Err(DbcError::TypeMismatch {
                field: format!("{}.{}", self.def.name, f.name),
                expected: format!("{:?}", f.ty),
                got: format!("{:?}", v.field_type()),
            });
        }
        let (size, carried) = match v {
            Value::Text(s) => (s.len(), s.len()),
            Value::Bytes(b) => (b.len(), b.len()),
            Value::Json(j) => (serde_json::to_string(j).map(|s| s.len()).unwrap_or(0), 1024),
            Value::Timestamp(t) => {
                if t.timestamp_subsec_nanos() % 1000 != 0 {
                    return Err(DbcError::invalid(format!(
                        "{}.{}: timestamps carry at most microseconds",
                        self.def.name, f.name
                    )));
                }
                (0, 8)
            }
            _ => (0, 8),
        };
        let max = if is_key {
            MAX_KEY_PART_BYTES
        } else {
            MAX_VALUE_BYTES
        };
        if size > max {
            return Err(DbcError::invalid(format!(
                "{}.{}: value of {size} bytes exceeds the limit of {max}",
                self.def.name, f.name
            )));
        }
        Ok(carried)
    }

    pub fn check_record(&self, rec: &Record) -> Result<()> {
        self.checked_size(rec).map(drop)
    }

    /// Checks a record and returns about how many bytes it carries (see `check_value`).
    pub fn checked_size(&self, rec: &Record) -> Result<usize> {
        if rec.len() != self.def.fields.len() {
            return Err(DbcError::invalid(format!(
                "table {} has {} fields, record has {}",
                self.def.name,
                self.def.fields.len(),
                rec.len()
            )));
        }
        let mut size = 0;
        for (i, (v, &is_key)) in rec.iter().zip(&self.is_key).enumerate() {
            size += self.check_value(i, v, is_key)?;
        }
        Ok(size)
    }

    /// A scan page of `records` read with `limit`: a full page may have a next one.
    pub fn page(&self, records: Vec<Record>, limit: usize) -> ScanPage {
        let next = if records.len() == limit {
            records.last().map(|r| ScanCursor {
                after: self.key_of(r),
            })
        } else {
            None
        };
        ScanPage { records, next }
    }

    /// The input checks of `compare_and_put`, the same on every backend.
    pub fn check_cas(
        &self,
        key: &[Value],
        expected: Option<&Record>,
        new: Option<&Record>,
    ) -> Result<()> {
        self.check_key(key)?;
        for r in expected.iter().chain(new.iter()) {
            self.check_record(r)?;
            if self.key_of(r) != key {
                return Err(DbcError::invalid(
                    "compare_and_put: a record's key differs from the key given",
                ));
            }
        }
        Ok(())
    }

    pub fn check_key(&self, key: &[Value]) -> Result<()> {
        if key.len() != self.key_idx.len() {
            return Err(DbcError::invalid(format!(
                "table {} has a key of {} fields, got {}",
                self.def.name,
                self.key_idx.len(),
                key.len()
            )));
        }
        for (v, &i) in key.iter().zip(&self.key_idx) {
            self.check_value(i, v, true)?;
        }
        Ok(())
    }
}

pub(crate) fn check_token(token: i64) -> Result<()> {
    if token < 0 {
        return Err(DbcError::invalid(format!(
            "fencing tokens are non-negative, got {token}"
        )));
    }
    Ok(())
}
