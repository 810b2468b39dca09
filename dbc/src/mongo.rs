//! The MongoDB backend: a record-face table is a collection; the key is `_id` (the value
//! itself, or a sub-document for a composite key). Values are stored losslessly: decimals,
//! json as strings, timestamps as Int64 microseconds (BSON dates hold milliseconds), uuids as
//! binary subtype 4. Fenced writes are single conditional upserts: a filter on the stored
//! token that fails turns the upsert into an insert of an existing `_id`, which the server
//! refuses with a duplicate-key error.

use crate::config::ConnectOptions;
use crate::error::{redact_url, DbcError, Result};
use crate::record::{Layout, ScanCursor, ScanPage, DEAD_COLUMN, TOKEN_COLUMN};
use crate::table::Record;
use crate::value::{FieldType, Value};
use crate::BackendKind;
use futures::TryStreamExt;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};

const KIND: BackendKind = BackendKind::Mongodb;

pub(crate) fn err(e: mongodb::error::Error) -> DbcError {
    match code(&e) {
        Some(11000) => DbcError::Constraint {
            constraint: "_id (duplicate key)".into(),
            message: e.to_string(),
        },
        _ => DbcError::backend(KIND, e),
    }
}

fn code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

pub(crate) async fn connect(url: &str, o: &ConnectOptions) -> Result<mongodb::Database> {
    let mut opts = mongodb::options::ClientOptions::parse(url)
        .await
        .map_err(|e| DbcError::InvalidUrl {
            url: redact_url(url),
            reason: crate::sql::scrub(&e.to_string(), url),
        })?;
    opts.max_pool_size = Some(o.max_connections.max(1));
    opts.min_pool_size = Some(o.min_connections);
    opts.connect_timeout = Some(o.connect_timeout);
    opts.server_selection_timeout = Some(o.connect_timeout);
    let client = mongodb::Client::with_options(opts).map_err(|e| DbcError::Connection {
        url: redact_url(url),
        message: crate::sql::scrub(&e.to_string(), url),
    })?;
    let db = client
        .default_database()
        .ok_or_else(|| DbcError::InvalidUrl {
            url: redact_url(url),
            reason: "the URL names no database (mongodb://host/DBNAME)".into(),
        })?;
    db.run_command(doc! {"ping": 1})
        .await
        .map_err(|e| DbcError::Connection {
            url: redact_url(url),
            message: crate::sql::scrub(&e.to_string(), url),
        })?;
    Ok(db)
}

pub(crate) fn to_bson(v: &Value) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::I64(n) => Bson::Int64(*n),
        Value::F64(f) => Bson::Double(*f),
        Value::Decimal(d) => Bson::String(d.to_string()),
        Value::Text(s) => Bson::String(s.clone()),
        Value::Bytes(b) => Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: b.clone(),
        }),
        Value::Timestamp(t) => Bson::Int64(t.timestamp_micros()),
        Value::Uuid(u) => Bson::Binary(Binary {
            subtype: BinarySubtype::Uuid,
            bytes: u.as_bytes().to_vec(),
        }),
        Value::Json(j) => Bson::String(serde_json::to_string(j).unwrap_or_default()),
    }
}

pub(crate) fn from_bson(b: &Bson, ty: FieldType, field: &str) -> Result<Value> {
    let bad = || DbcError::TypeMismatch {
        field: field.to_string(),
        expected: format!("{ty:?}"),
        got: format!("{:?}", b.element_type()),
    };
    Ok(match (ty, b) {
        (_, Bson::Null) => Value::Null,
        (FieldType::Bool, Bson::Boolean(x)) => Value::Bool(*x),
        (FieldType::I64, Bson::Int64(n)) => Value::I64(*n),
        (FieldType::I64, Bson::Int32(n)) => Value::I64(i64::from(*n)),
        (FieldType::F64, Bson::Double(f)) => Value::F64(*f),
        (FieldType::Decimal, Bson::String(s)) => Value::Decimal(s.parse().map_err(|_| bad())?),
        (FieldType::Text, Bson::String(s)) => Value::Text(s.clone()),
        (FieldType::Bytes, Bson::Binary(x)) => Value::Bytes(x.bytes.clone()),
        // Another writer (or a server that narrows small integers) may hand back Int32.
        (FieldType::Timestamp, Bson::Int64(m)) => {
            Value::Timestamp(chrono::DateTime::from_timestamp_micros(*m).ok_or_else(bad)?)
        }
        (FieldType::Timestamp, Bson::Int32(m)) => Value::Timestamp(
            chrono::DateTime::from_timestamp_micros(i64::from(*m)).ok_or_else(bad)?,
        ),
        (FieldType::Uuid, Bson::Binary(x)) => {
            Value::Uuid(uuid::Uuid::from_slice(&x.bytes).map_err(|_| bad())?)
        }
        (FieldType::Json, Bson::String(s)) => {
            Value::Json(Box::new(serde_json::from_str(s).map_err(|_| bad())?))
        }
        _ => return Err(bad()),
    })
}

#[derive(Debug)]
pub(crate) struct MongoTable {
    pub coll: mongodb::Collection<Document>,
    pub layout: Layout,
}

impl MongoTable {
    fn id_of(&self, key: &[Value]) -> Bson {
        if key.len() == 1 {
            return to_bson(&key[0]);
        }
        let mut d = Document::new();
        for (v, &i) in key.iter().zip(&self.layout.key_idx) {
            d.insert(self.layout.def.fields[i].name.clone(), to_bson(v));
        }
        Bson::Document(d)
    }

    fn rest_doc(&self, rec: &Record) -> Document {
        let mut d = Document::new();
        for &i in &self.layout.rest_idx {
            d.insert(self.layout.def.fields[i].name.clone(), to_bson(&rec[i]));
        }
        d
    }

    fn unset_doc(&self) -> Document {
        let mut d = Document::new();
        for &i in &self.layout.rest_idx {
            d.insert(self.layout.def.fields[i].name.clone(), "");
        }
        d
    }

    fn decode(&self, d: &Document) -> Result<Record> {
        let id = d.get("_id").cloned().unwrap_or(Bson::Null);
        let single = self.layout.key_idx.len() == 1;
        let mut rec = Vec::with_capacity(self.layout.def.fields.len());
        for (i, f) in self.layout.def.fields.iter().enumerate() {
            let b = if self.layout.key_idx.contains(&i) {
                if single {
                    id.clone()
                } else {
                    match &id {
                        Bson::Document(k) => k.get(&f.name).cloned().unwrap_or(Bson::Null),
                        _ => Bson::Null,
                    }
                }
            } else {
                d.get(&f.name).cloned().unwrap_or(Bson::Null)
            };
            rec.push(from_bson(&b, f.ty, &f.name)?);
        }
        Ok(rec)
    }

    async fn token_of(&self, key: &[Value]) -> Result<Option<(i64, bool)>> {
        let d = self
            .coll
            .find_one(doc! {"_id": self.id_of(key)})
            .await
            .map_err(err)?;
        Ok(d.map(|d| {
            (
                match d.get(TOKEN_COLUMN) {
                    Some(Bson::Int64(t)) => *t,
                    Some(Bson::Int32(t)) => i64::from(*t),
                    _ => 0,
                },
                d.get_bool(DEAD_COLUMN).unwrap_or(false),
            )
        }))
    }

    async fn fenced(&self, key: &[Value], token: i64) -> DbcError {
        let stored = match self.token_of(key).await {
            Ok(Some((t, _))) => t,
            _ => i64::MAX,
        };
        DbcError::Fenced {
            table: self.layout.def.name.clone(),
            stored,
            given: token,
        }
    }

    pub async fn get(&self, key: &[Value]) -> Result<Option<Record>> {
        self.layout.check_key(key)?;
        let d = self
            .coll
            .find_one(doc! {"_id": self.id_of(key), DEAD_COLUMN: false})
            .await
            .map_err(err)?;
        d.map(|d| self.decode(&d)).transpose()
    }

    pub async fn put(&self, rec: &Record) -> Result<()> {
        self.layout.check_record(rec)?;
        let mut set = self.rest_doc(rec);
        set.insert(DEAD_COLUMN, false);
        self.coll
            .update_one(
                doc! {"_id": self.id_of(&self.layout.key_of(rec))},
                doc! {"$set": set, "$setOnInsert": {TOKEN_COLUMN: 0i64}},
            )
            .upsert(true)
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn put_fenced(&self, rec: &Record, token: i64) -> Result<()> {
        self.layout.check_record(rec)?;
        let key = self.layout.key_of(rec);
        let mut set = self.rest_doc(rec);
        set.insert(DEAD_COLUMN, false);
        set.insert(TOKEN_COLUMN, token);
        match self
            .coll
            .update_one(
                doc! {"_id": self.id_of(&key), TOKEN_COLUMN: {"$lte": token}},
                doc! {"$set": set},
            )
            .upsert(true)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some(11000) => Err(self.fenced(&key, token).await),
            Err(e) => Err(err(e)),
        }
    }

    pub async fn delete(&self, key: &[Value]) -> Result<bool> {
        self.layout.check_key(key)?;
        let mut update = doc! {"$set": {DEAD_COLUMN: true}};
        if !self.layout.rest_idx.is_empty() {
            update.insert("$unset", self.unset_doc());
        }
        let r = self
            .coll
            .update_one(doc! {"_id": self.id_of(key), DEAD_COLUMN: false}, update)
            .await
            .map_err(err)?;
        Ok(r.matched_count == 1)
    }

    pub async fn delete_fenced(&self, key: &[Value], token: i64) -> Result<bool> {
        self.layout.check_key(key)?;
        let was_live = matches!(self.token_of(key).await?, Some((_, false)));
        let mut update = doc! {"$set": {DEAD_COLUMN: true, TOKEN_COLUMN: token}};
        if !self.layout.rest_idx.is_empty() {
            update.insert("$unset", self.unset_doc());
        }
        match self
            .coll
            .update_one(
                doc! {"_id": self.id_of(key), TOKEN_COLUMN: {"$lte": token}},
                update,
            )
            .upsert(true)
            .await
        {
            Ok(_) => Ok(was_live),
            Err(e) if code(&e) == Some(11000) => Err(self.fenced(key, token).await),
            Err(e) => Err(err(e)),
        }
    }

    pub async fn compare_and_put(
        &self,
        key: &[Value],
        expected: Option<&Record>,
        new: Option<&Record>,
    ) -> Result<bool> {
        self.layout.check_cas(key, expected, new)?;
        let id = self.id_of(key);
        match (expected, new) {
            (None, None) => Ok(self.get(key).await?.is_none()),
            (Some(old), new) => {
                let mut filter = doc! {"_id": id, DEAD_COLUMN: false};
                filter.extend(self.rest_doc(old));
                let update = match new {
                    Some(n) => doc! {"$set": self.rest_doc(n)},
                    None => {
                        let mut u = doc! {"$set": {DEAD_COLUMN: true}};
                        if !self.layout.rest_idx.is_empty() {
                            u.insert("$unset", self.unset_doc());
                        }
                        u
                    }
                };
                if let Some(Bson::Document(set)) = update.get("$set") {
                    if set.is_empty() {
                        // Nothing to change: the swap is a match test.
                        let n = self.coll.count_documents(filter).await.map_err(err)?;
                        return Ok(n == 1);
                    }
                }
                let r = self.coll.update_one(filter, update).await.map_err(err)?;
                Ok(r.matched_count == 1)
            }
            (None, Some(n)) => {
                let mut set = self.rest_doc(n);
                set.insert(DEAD_COLUMN, false);
                let r = self
                    .coll
                    .update_one(
                        doc! {"_id": id.clone(), DEAD_COLUMN: true},
                        doc! {"$set": set.clone()},
                    )
                    .await
                    .map_err(err)?;
                if r.matched_count == 1 {
                    return Ok(true);
                }
                let mut d = doc! {"_id": id};
                d.extend(set);
                d.insert(TOKEN_COLUMN, 0i64);
                match self.coll.insert_one(d).await {
                    Ok(_) => Ok(true),
                    Err(e) if code(&e) == Some(11000) => Ok(false),
                    Err(e) => Err(err(e)),
                }
            }
        }
    }

    pub async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        if limit == 0 {
            return Err(DbcError::invalid("scan limit must be at least 1"));
        }
        let mut filter = doc! {DEAD_COLUMN: false};
        if let Some(c) = cursor {
            self.layout.check_key(&c.after)?;
            filter.insert("_id", doc! {"$gt": self.id_of(&c.after)});
        }
        let mut cur = self
            .coll
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(err)?;
        let mut records = Vec::new();
        while let Some(d) = cur.try_next().await.map_err(err)? {
            records.push(self.decode(&d)?);
        }
        Ok(self.layout.page(records, limit))
    }

    pub async fn count(&self) -> Result<u64> {
        self.coll
            .count_documents(doc! {DEAD_COLUMN: false})
            .await
            .map_err(err)
    }
}

/// Metadata kept in a collection: `{_id: name, value: text}`.
pub(crate) async fn meta_get(
    db: &mongodb::Database,
    coll: &str,
    name: &str,
) -> Result<Option<String>> {
    let d = db
        .collection::<Document>(coll)
        .find_one(doc! {"_id": name})
        .await
        .map_err(err)?;
    Ok(d.and_then(|d| d.get_str("value").ok().map(str::to_string)))
}

pub(crate) async fn meta_insert(
    db: &mongodb::Database,
    coll: &str,
    name: &str,
    value: &str,
) -> Result<()> {
    match db
        .collection::<Document>(coll)
        .insert_one(doc! {"_id": name, "value": value})
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if code(&e) == Some(11000) => Ok(()),
        Err(e) => Err(err(e)),
    }
}
