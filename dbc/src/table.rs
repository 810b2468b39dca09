//! Table definitions for the record face: named, typed fields and a primary key.

use crate::value::{FieldType, Value};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    pub nullable: bool,
}

impl Field {
    pub fn new(name: impl Into<String>, ty: FieldType) -> Self {
        Field {
            name: name.into(),
            ty,
            nullable: false,
        }
    }
    pub fn nullable(mut self) -> Self {
        self.nullable = true;
        self
    }
}

/// A table of the record face. Records are `Vec<Value>` in the order of `fields`; keys are
/// `Vec<Value>` in the order of `primary_key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    pub name: String,
    pub fields: Vec<Field>,
    /// Names of the primary-key fields, in key order (one or more).
    pub primary_key: Vec<String>,
}

/// One row of a record-face table, values in the order of the table's fields.
pub type Record = Vec<Value>;
/// A primary key, values in the order of the table's primary-key fields.
pub type Key = Vec<Value>;
