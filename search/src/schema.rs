//! Index definitions (the JSON of `POST /indexes`), their tantivy schema, and the checking and
//! conversion of documents.

use crate::error::{Result, SearchError};
use crate::tokenize;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use tantivy::schema::{
    DateOptions, DateTimePrecision, Field, IndexRecordOption, NumericOptions, Schema,
    TextFieldIndexing, TextOptions, STORED,
};
use tantivy::TantivyDocument;

/// Longest document id, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Longest tag value, in bytes.
pub const MAX_TAG_BYTES: usize = 256;
/// Most fields in one index.
pub const MAX_FIELDS: usize = 256;
/// Most shards of one index.
pub const MAX_SHARDS: u32 = 256;

/// Hidden tantivy fields. User field names cannot start with `_`.
pub(crate) const F_ID: &str = "_id";
pub(crate) const F_IDH: &str = "_idh";
pub(crate) const F_SRC: &str = "_src";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    Text,
    Tags,
    I64,
    F64,
    Date,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    Jieba,
    Standard,
    #[default]
    Mixed,
}

impl TokenizerKind {
    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::Jieba => tokenize::JIEBA,
            TokenizerKind::Standard => tokenize::STANDARD,
            TokenizerKind::Mixed => tokenize::MIXED,
        }
    }
}

fn yes() -> bool {
    true
}

/// One field of an index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    #[serde(rename = "type")]
    pub kind: FieldKind,
    /// Text fields only; `mixed` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerKind>,
    /// Whether the field comes back in hits (`doc`). Every field is searchable either way.
    #[serde(default = "yes")]
    pub stored: bool,
    /// Text fields only: weight of a match in this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boost: Option<f32>,
}

fn default_id_field() -> String {
    "id".into()
}

/// The body of `POST /indexes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexDefinition {
    pub name: String,
    #[serde(default = "default_id_field")]
    pub id_field: String,
    pub fields: BTreeMap<String, FieldDef>,
    /// Number of shards; the node's `shards_per_index` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// jieba user dictionary: one `word [freq [tag]]` per line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_dict: Vec<String>,
}

/// An index as persisted in the catalog table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    pub def: IndexDefinition,
    /// Fresh per creation, so a re-created index never sees its predecessor's documents.
    pub uid: String,
    pub shards: u32,
    pub created_at: String,
}

pub fn valid_index_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn valid_field_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

impl IndexDefinition {
    /// Checks names and options; returns the definition as it will be stored.
    pub fn validate(mut self, default_shards: u32) -> Result<IndexMeta> {
        if !valid_index_name(&self.name) {
            return Err(SearchError::InvalidRequest(format!(
                "index name {:?} must be 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter or digit",
                self.name
            )));
        }
        if !valid_field_name(&self.id_field) {
            return Err(SearchError::InvalidRequest(format!(
                "id_field {:?} is not a valid field name",
                self.id_field
            )));
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(SearchError::InvalidRequest(format!(
                "{} fields, at most {MAX_FIELDS}",
                self.fields.len()
            )));
        }
        for (name, f) in &mut self.fields {
            if !valid_field_name(name) {
                return Err(SearchError::InvalidRequest(format!(
                    "field name {name:?} must be 1-64 characters of A-Z, a-z, 0-9 or '_', starting with a letter"
                )));
            }
            if *name == self.id_field {
                return Err(SearchError::InvalidRequest(format!(
                    "{name:?} is the id field; it is not listed in fields"
                )));
            }
            if f.kind == FieldKind::Text {
                f.tokenizer.get_or_insert(TokenizerKind::Mixed);
                if let Some(b) = f.boost {
                    if !(b.is_finite() && b > 0.0 && b <= 100.0) {
                        return Err(SearchError::InvalidRequest(format!(
                            "boost of {name:?} must be in (0, 100]"
                        )));
                    }
                }
            } else if f.tokenizer.is_some() || f.boost.is_some() {
                return Err(SearchError::InvalidRequest(format!(
                    "tokenizer and boost apply to text fields only ({name:?})"
                )));
            }
        }
        let shards = self.shards.unwrap_or(default_shards);
        if shards == 0 || shards > MAX_SHARDS {
            return Err(SearchError::InvalidRequest(format!(
                "shards must be 1..={MAX_SHARDS}"
            )));
        }
        if self.user_dict.len() > 100_000 {
            return Err(SearchError::InvalidRequest(
                "user_dict holds at most 100000 words".into(),
            ));
        }
        Ok(IndexMeta {
            def: self,
            uid: uuid::Uuid::new_v4().simple().to_string(),
            shards,
            created_at: chrono::Utc::now().to_rfc3339(),
        })
    }
}

/// The tantivy schema of an index and the handles of its fields.
#[derive(Clone)]
pub struct Fields {
    pub schema: Schema,
    pub id: Field,
    pub idh: Field,
    pub src: Field,
    pub user: BTreeMap<String, (Field, FieldDef)>,
    pub id_field: String,
}

impl Fields {
    pub fn build(meta: &IndexMeta) -> Fields {
        let mut b = Schema::builder();
        let id = b.add_text_field(
            F_ID,
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("raw")
                    .set_index_option(IndexRecordOption::Basic),
            ),
        );
        let idh = b.add_u64_field(F_IDH, NumericOptions::default().set_fast());
        let src = b.add_text_field(F_SRC, STORED);
        let mut user = BTreeMap::new();
        for (name, def) in &meta.def.fields {
            let f = match def.kind {
                FieldKind::Text => b.add_text_field(
                    name,
                    TextOptions::default().set_indexing_options(
                        TextFieldIndexing::default()
                            .set_tokenizer(def.tokenizer.unwrap_or_default().name())
                            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
                    ),
                ),
                FieldKind::Tags => b.add_text_field(
                    name,
                    TextOptions::default()
                        .set_indexing_options(
                            TextFieldIndexing::default()
                                .set_tokenizer("raw")
                                .set_index_option(IndexRecordOption::Basic),
                        )
                        .set_fast("raw"),
                ),
                FieldKind::I64 => {
                    b.add_i64_field(name, NumericOptions::default().set_indexed().set_fast())
                }
                FieldKind::F64 => {
                    b.add_f64_field(name, NumericOptions::default().set_indexed().set_fast())
                }
                FieldKind::Date => b.add_date_field(
                    name,
                    DateOptions::default()
                        .set_indexed()
                        .set_fast()
                        .set_precision(DateTimePrecision::Microseconds),
                ),
            };
            user.insert(name.clone(), (f, def.clone()));
        }
        Fields {
            schema: b.build(),
            id,
            idh,
            src,
            user,
            id_field: meta.def.id_field.clone(),
        }
    }

    /// Whether a body key is kept in the stored source: what hits return.
    fn keeps(&self, key: &str) -> bool {
        returned(&self.id_field, self.user.get(key).map(|(_, d)| d), key)
    }
}

/// The part of a body kept in the index's stored source, serialized without copying it.
struct StoredPart<'a>(&'a Fields, &'a Map<String, Json>);

impl serde::Serialize for StoredPart<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.1.iter().filter(|(k, _)| self.0.keeps(k)))
    }
}

/// A document id as given (a string or a non-negative integer) and its canonical text.
#[derive(Clone, Debug, PartialEq)]
pub struct DocId {
    pub json: Json,
    pub key: String,
}

impl DocId {
    pub fn from_json(v: &Json) -> Result<DocId> {
        match v {
            Json::String(s) => DocId::from_key(s).map(|mut d| {
                d.json = v.clone();
                d
            }),
            Json::Number(n) => match n.as_u64() {
                Some(u) => Ok(DocId {
                    json: v.clone(),
                    key: u.to_string(),
                }),
                None => Err(SearchError::InvalidType(format!(
                    "document id {n} must be a string or a non-negative integer"
                ))),
            },
            other => Err(SearchError::InvalidType(format!(
                "document id must be a string or a non-negative integer, not {}",
                json_kind(other)
            ))),
        }
    }

    /// An id given as text (a URL path segment).
    pub fn from_key(s: &str) -> Result<DocId> {
        if s.is_empty() || s.len() > MAX_ID_BYTES || s.chars().any(char::is_control) {
            return Err(SearchError::InvalidRequest(format!(
                "document id must be 1-{MAX_ID_BYTES} bytes without control characters"
            )));
        }
        Ok(DocId {
            json: Json::String(s.to_owned()),
            key: s.to_owned(),
        })
    }

    /// Stable 64-bit hash (FNV-1a): picks the shard and breaks ranking ties.
    pub fn hash(&self) -> u64 {
        id_hash(&self.key)
    }
}

pub fn id_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Parses a date value: an RFC 3339 string or integer seconds since the epoch; microseconds.
pub fn parse_date(field: &str, v: &Json) -> Result<i64> {
    match v {
        Json::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|d| d.timestamp_micros())
            .map_err(|e| {
                SearchError::InvalidType(format!("{field}: {s:?} is not an RFC 3339 date: {e}"))
            }),
        Json::Number(n) => n
            .as_i64()
            .and_then(|s| s.checked_mul(1_000_000))
            .ok_or_else(|| {
                SearchError::InvalidType(format!("{field}: {n} is not whole seconds in range"))
            }),
        other => Err(SearchError::InvalidType(format!(
            "{field}: a date is an RFC 3339 string or integer seconds, not {}",
            json_kind(other)
        ))),
    }
}

/// A checked document, ready to store.
#[derive(Clone, Debug)]
pub struct CheckedDoc {
    pub id: DocId,
    pub body: Map<String, Json>,
}

/// Checks one document against the schema: an object with a valid id, only known fields, each
/// of its type.
pub fn check_doc(meta: &IndexMeta, doc: Json) -> Result<CheckedDoc> {
    let Json::Object(body) = doc else {
        return Err(SearchError::InvalidType(format!(
            "a document is a JSON object, not {}",
            json_kind(&doc)
        )));
    };
    let id_field = &meta.def.id_field;
    let id = match body.get(id_field) {
        Some(v) => DocId::from_json(v)?,
        None => {
            return Err(SearchError::InvalidRequest(format!(
                "document without its id field {id_field:?}"
            )))
        }
    };
    for (name, v) in &body {
        if name == id_field {
            continue;
        }
        let Some(def) = meta.def.fields.get(name) else {
            return Err(SearchError::UnknownField(format!(
                "document {:?}: field {name:?} is not in the schema of index {:?}",
                id.key, meta.def.name
            )));
        };
        check_value(name, def.kind, v)?;
    }
    Ok(CheckedDoc { id, body })
}

fn check_value(name: &str, kind: FieldKind, v: &Json) -> Result<()> {
    let wrong = |what: &str| {
        Err(SearchError::InvalidType(format!(
            "field {name:?} expects {what}, got {}",
            json_kind(v)
        )))
    };
    match (kind, v) {
        (_, Json::Null) => Ok(()),
        (FieldKind::Text, Json::String(_)) => Ok(()),
        (FieldKind::Text, Json::Array(a)) if a.iter().all(Json::is_string) => Ok(()),
        (FieldKind::Text, _) => wrong("a string or an array of strings"),
        (FieldKind::Tags, Json::String(s)) => check_tag(name, s),
        (FieldKind::Tags, Json::Array(a)) => {
            for t in a {
                match t {
                    Json::String(s) => check_tag(name, s)?,
                    _ => return wrong("an array of strings"),
                }
            }
            Ok(())
        }
        (FieldKind::Tags, _) => wrong("an array of strings"),
        (FieldKind::I64, Json::Number(n)) if n.as_i64().is_some() => Ok(()),
        (FieldKind::I64, _) => wrong("an integer in the i64 range"),
        (FieldKind::F64, Json::Number(_)) => Ok(()),
        (FieldKind::F64, _) => wrong("a number"),
        (FieldKind::Date, _) => parse_date(name, v).map(|_| ()),
    }
}

fn check_tag(name: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_TAG_BYTES {
        return Err(SearchError::InvalidRequest(format!(
            "field {name:?}: a tag is 1-{MAX_TAG_BYTES} bytes"
        )));
    }
    Ok(())
}

fn strings(v: &Json) -> Vec<&str> {
    match v {
        Json::String(s) => vec![s.as_str()],
        Json::Array(a) => a.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Texts of a text or tags value (one or many).
pub fn texts(v: &Json) -> Vec<&str> {
    strings(v)
}

/// Builds the tantivy document of a stored document. The body was checked when written; a
/// value that no longer fits (never expected) is skipped rather than failing a rebuild.
pub fn to_tantivy(fields: &Fields, id: &DocId, body: &Map<String, Json>) -> TantivyDocument {
    let mut d = TantivyDocument::new();
    d.add_text(fields.id, &id.key);
    d.add_u64(fields.idh, id.hash());
    // Only what a hit returns: the id and stored fields. Unstored text (often the long part
    // of a document) would otherwise be serialized, compressed and, on every hit,
    // decompressed and parsed for nothing.
    d.add_text(
        fields.src,
        serde_json::to_string(&StoredPart(fields, body)).unwrap_or_else(|_| "{}".into()),
    );
    for (name, v) in body {
        let Some((f, def)) = fields.user.get(name) else {
            continue;
        };
        match def.kind {
            FieldKind::Text | FieldKind::Tags => {
                for s in strings(v) {
                    d.add_text(*f, s);
                }
            }
            FieldKind::I64 => {
                if let Some(i) = v.as_i64() {
                    d.add_i64(*f, i);
                }
            }
            FieldKind::F64 => {
                if let Some(x) = v.as_f64() {
                    d.add_f64(*f, x);
                }
            }
            FieldKind::Date => {
                if let Ok(us) = parse_date(name, v) {
                    d.add_date(*f, tantivy::DateTime::from_timestamp_micros(us));
                }
            }
        }
    }
    d
}

/// Whether a body key comes back in hits and documents: the id and the stored fields.
fn returned(id_field: &str, def: Option<&FieldDef>, key: &str) -> bool {
    key == id_field || def.is_some_and(|d| d.stored)
}

/// The document as returned in hits: the stored fields and the id.
pub fn visible_doc(meta: &IndexMeta, body: &Map<String, Json>) -> Json {
    let mut out = Map::new();
    for (k, v) in body {
        if returned(&meta.def.id_field, meta.def.fields.get(k), k) {
            out.insert(k.clone(), v.clone());
        }
    }
    Json::Object(out)
}
