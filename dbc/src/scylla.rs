//! The Scylla/Cassandra backend (compiled here, tested only where KEYWARD_TEST_SCYLLA_URL
//! names a server). A record-face table is a CQL table whose partition key is the whole
//! primary key, so scans go in token order. Every write that must be conditional is a
//! lightweight transaction (`IF ...`); decimals and json are text, timestamps bigint µs.

use crate::config::ConnectOptions;
use crate::error::{redact_url, DbcError, Result};
use crate::record::{Layout, ScanCursor, ScanPage, DEAD_COLUMN, TOKEN_COLUMN};
use crate::table::Record;
use crate::value::{FieldType, Value};
use crate::BackendKind;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use std::sync::Arc;

const KIND: BackendKind = BackendKind::Scylla;
const RETRIES: usize = 8;

fn err(e: impl std::fmt::Display) -> DbcError {
    DbcError::backend(KIND, e)
}

pub(crate) async fn connect(url: &str, o: &ConnectOptions) -> Result<(Arc<Session>, String)> {
    let bad = |reason: &str| DbcError::InvalidUrl {
        url: redact_url(url),
        reason: reason.to_string(),
    };
    let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    let host = u.host_str().ok_or_else(|| bad("missing host"))?;
    let port = u.port().unwrap_or(9042);
    let keyspace = u.path().trim_start_matches('/').to_string();
    crate::record::check_ident("keyspace", &keyspace)
        .map_err(|_| bad("the path must name a keyspace"))?;
    let mut b = scylla::client::session_builder::SessionBuilder::new()
        .known_node(format!("{host}:{port}"))
        .connection_timeout(o.connect_timeout);
    if !u.username().is_empty() {
        b = b.user(u.username(), u.password().unwrap_or(""));
    }
    let session = b.build().await.map_err(|e| DbcError::Connection {
        url: redact_url(url),
        message: crate::sql::scrub(&e.to_string(), url),
    })?;
    session
        .use_keyspace(&keyspace, true)
        .await
        .map_err(|e| DbcError::Connection {
            url: redact_url(url),
            message: e.to_string(),
        })?;
    Ok((Arc::new(session), keyspace))
}

fn to_cql(v: &Value) -> Option<CqlValue> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => CqlValue::Boolean(*b),
        Value::I64(n) => CqlValue::BigInt(*n),
        Value::F64(f) => CqlValue::Double(*f),
        Value::Decimal(d) => CqlValue::Text(d.to_string()),
        Value::Text(s) => CqlValue::Text(s.clone()),
        Value::Bytes(b) => CqlValue::Blob(b.clone()),
        Value::Timestamp(t) => CqlValue::BigInt(t.timestamp_micros()),
        Value::Uuid(u) => CqlValue::Uuid(*u),
        Value::Json(j) => CqlValue::Text(serde_json::to_string(j).unwrap_or_default()),
    })
}

fn from_cql(c: Option<&CqlValue>, ty: FieldType, field: &str) -> Result<Value> {
    let bad = || DbcError::TypeMismatch {
        field: field.to_string(),
        expected: format!("{ty:?}"),
        got: format!("{c:?}"),
    };
    let Some(c) = c else { return Ok(Value::Null) };
    Ok(match (ty, c) {
        (FieldType::Bool, CqlValue::Boolean(b)) => Value::Bool(*b),
        (FieldType::I64, CqlValue::BigInt(n)) => Value::I64(*n),
        (FieldType::F64, CqlValue::Double(f)) => Value::F64(*f),
        (FieldType::Decimal, CqlValue::Text(s)) => Value::Decimal(s.parse().map_err(|_| bad())?),
        (FieldType::Text, CqlValue::Text(s)) => Value::Text(s.clone()),
        (FieldType::Bytes, CqlValue::Blob(b)) => Value::Bytes(b.clone()),
        (FieldType::Timestamp, CqlValue::BigInt(m)) => {
            Value::Timestamp(chrono::DateTime::from_timestamp_micros(*m).ok_or_else(bad)?)
        }
        (FieldType::Uuid, CqlValue::Uuid(u)) => Value::Uuid(*u),
        (FieldType::Json, CqlValue::Text(s)) => {
            Value::Json(Box::new(serde_json::from_str(s).map_err(|_| bad())?))
        }
        _ => return Err(bad()),
    })
}

fn cql_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Bool => "boolean",
        FieldType::I64 | FieldType::Timestamp => "bigint",
        FieldType::F64 => "double",
        FieldType::Decimal | FieldType::Text | FieldType::Json => "text",
        FieldType::Bytes => "blob",
        FieldType::Uuid => "uuid",
    }
}

pub(crate) struct ScyllaTable {
    session: Arc<Session>,
    layout: Layout,
    get: PreparedStatement,
    put: PreparedStatement,
    fenced_update: PreparedStatement,
    fenced_update_null: PreparedStatement,
    insert_with_token: PreparedStatement,
    tomb_update: PreparedStatement,
    tomb_update_null: PreparedStatement,
    tomb_insert: PreparedStatement,
    delete: PreparedStatement,
    cas_update: PreparedStatement,
    cas_delete: PreparedStatement,
    cas_revive: PreparedStatement,
    insert0: PreparedStatement,
    scan_first: PreparedStatement,
    scan_after: PreparedStatement,
    count: PreparedStatement,
}

impl std::fmt::Debug for ScyllaTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaTable")
            .field("table", &self.layout.def.name)
            .finish()
    }
}

type Vals = Vec<Option<CqlValue>>;

impl ScyllaTable {
    pub async fn define(session: Arc<Session>, layout: Layout) -> Result<Self> {
        let q = |s: &str| format!("\"{s}\"");
        let t = q(&layout.def.name);
        let names = |idx: &[usize]| -> Vec<String> {
            idx.iter().map(|&i| q(&layout.def.fields[i].name)).collect()
        };
        let keys = names(&layout.key_idx);
        let rest = names(&layout.rest_idx);
        let all: Vec<String> = layout.def.fields.iter().map(|f| q(&f.name)).collect();
        let cols = all.join(", ");
        let mut ddl: Vec<String> = layout
            .def
            .fields
            .iter()
            .map(|f| format!("{} {}", q(&f.name), cql_type(f.ty)))
            .collect();
        ddl.push(format!("{TOKEN_COLUMN} bigint"));
        ddl.push(format!("{DEAD_COLUMN} boolean"));
        ddl.push(format!("PRIMARY KEY (({}))", keys.join(", ")));
        session
            .query_unpaged(
                format!("CREATE TABLE IF NOT EXISTS {t} ({})", ddl.join(", ")),
                &[],
            )
            .await
            .map_err(err)?;
        let key_eq = keys
            .iter()
            .map(|k| format!("{k} = ?"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let set = |extra: &[&str]| -> String {
            let mut v: Vec<String> = rest.iter().map(|c| format!("{c} = ?")).collect();
            v.extend(extra.iter().map(|s| s.to_string()));
            v.join(", ")
        };
        let set_null = |extra: &[&str]| -> String {
            let mut v: Vec<String> = rest.iter().map(|c| format!("{c} = null")).collect();
            v.extend(extra.iter().map(|s| s.to_string()));
            v.join(", ")
        };
        let match_old: String = rest.iter().map(|c| format!(" AND {c} = ?")).collect();
        let marks = |n: usize| vec!["?"; n].join(", ");
        let tok_eq = format!("{TOKEN_COLUMN} = ?");
        let live = format!("{DEAD_COLUMN} = false");
        let dead = format!("{DEAD_COLUMN} = true");
        let stmts = [
            format!("SELECT {cols}, {DEAD_COLUMN} FROM {t} WHERE {key_eq}"),
            format!("UPDATE {t} SET {} WHERE {key_eq}", set(&[&live])),
            format!("UPDATE {t} SET {} WHERE {key_eq} IF {TOKEN_COLUMN} <= ?", set(&[&tok_eq, &live])),
            format!("UPDATE {t} SET {} WHERE {key_eq} IF {TOKEN_COLUMN} = null", set(&[&tok_eq, &live])),
            format!("INSERT INTO {t} ({cols}, {TOKEN_COLUMN}, {DEAD_COLUMN}) VALUES ({}, ?, false) IF NOT EXISTS", marks(all.len())),
            format!("UPDATE {t} SET {} WHERE {key_eq} IF {TOKEN_COLUMN} <= ?", set_null(&[&tok_eq, &dead])),
            format!("UPDATE {t} SET {} WHERE {key_eq} IF {TOKEN_COLUMN} = null", set_null(&[&tok_eq, &dead])),
            format!("INSERT INTO {t} ({}, {TOKEN_COLUMN}, {DEAD_COLUMN}) VALUES ({}, ?, true) IF NOT EXISTS", keys.join(", "), marks(keys.len())),
            format!("UPDATE {t} SET {} WHERE {key_eq} IF {DEAD_COLUMN} = false", set_null(&[&dead])),
            format!("UPDATE {t} SET {} WHERE {key_eq} IF {DEAD_COLUMN} = false{match_old}", set(&[&live])),
            format!("UPDATE {t} SET {} WHERE {key_eq} IF {DEAD_COLUMN} = false{match_old}", set_null(&[&dead])),
            format!("UPDATE {t} SET {} WHERE {key_eq} IF {DEAD_COLUMN} = true", set(&[&live])),
            format!("INSERT INTO {t} ({cols}, {TOKEN_COLUMN}, {DEAD_COLUMN}) VALUES ({}, 0, false) IF NOT EXISTS", marks(all.len())),
            format!("SELECT {cols}, {DEAD_COLUMN} FROM {t} LIMIT ?"),
            format!("SELECT {cols}, {DEAD_COLUMN} FROM {t} WHERE token({}) > token({}) LIMIT ?", keys.join(", "), marks(keys.len())),
            format!("SELECT COUNT(*) FROM {t} WHERE {DEAD_COLUMN} = false ALLOW FILTERING"),
        ];
        let mut p = Vec::with_capacity(stmts.len());
        for s in stmts {
            p.push(session.prepare(s).await.map_err(err)?);
        }
        let mut it = p.into_iter();
        let mut next = || it.next().ok_or_else(|| err("statement count"));
        Ok(ScyllaTable {
            get: next()?,
            put: next()?,
            fenced_update: next()?,
            fenced_update_null: next()?,
            insert_with_token: next()?,
            tomb_update: next()?,
            tomb_update_null: next()?,
            tomb_insert: next()?,
            delete: next()?,
            cas_update: next()?,
            cas_delete: next()?,
            cas_revive: next()?,
            insert0: next()?,
            scan_first: next()?,
            scan_after: next()?,
            count: next()?,
            session,
            layout,
        })
    }

    async fn rows(&self, st: &PreparedStatement, vals: Vals) -> Result<Vec<Row>> {
        let r = self.session.execute_unpaged(st, vals).await.map_err(err)?;
        let Ok(rows) = r.into_rows_result() else {
            return Ok(Vec::new());
        };
        rows.rows::<Row>()
            .map_err(err)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(err)
    }

    /// Runs a lightweight transaction: (applied, the row's current condition columns).
    async fn lwt(
        &self,
        st: &PreparedStatement,
        vals: Vals,
    ) -> Result<(bool, Vec<Option<CqlValue>>)> {
        let rows = self.rows(st, vals).await?;
        let Some(row) = rows.into_iter().next() else {
            return Err(err("a conditional write returned no [applied] row"));
        };
        let applied = matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))));
        Ok((applied, row.columns.into_iter().skip(1).collect()))
    }

    fn key(&self, key: &[Value]) -> Vals {
        key.iter().map(to_cql).collect()
    }

    fn rest(&self, rec: &Record) -> Vals {
        self.layout
            .rest_idx
            .iter()
            .map(|&i| to_cql(&rec[i]))
            .collect()
    }

    fn decode(&self, row: &Row) -> Result<Option<Record>> {
        let n = self.layout.def.fields.len();
        if matches!(row.columns.get(n), Some(Some(CqlValue::Boolean(true)))) {
            return Ok(None);
        }
        let mut rec = Vec::with_capacity(n);
        for (i, f) in self.layout.def.fields.iter().enumerate() {
            rec.push(from_cql(
                row.columns.get(i).and_then(Option::as_ref),
                f.ty,
                &f.name,
            )?);
        }
        Ok(Some(rec))
    }

    fn fenced(&self, stored: Option<&CqlValue>, token: i64) -> DbcError {
        DbcError::Fenced {
            table: self.layout.def.name.clone(),
            stored: match stored {
                Some(CqlValue::BigInt(t)) => *t,
                _ => i64::MAX,
            },
            given: token,
        }
    }

    pub async fn get(&self, key: &[Value]) -> Result<Option<Record>> {
        self.layout.check_key(key)?;
        let rows = self.rows(&self.get, self.key(key)).await?;
        match rows.first() {
            Some(r) => self.decode(r),
            None => Ok(None),
        }
    }

    pub async fn put(&self, rec: &Record) -> Result<()> {
        self.layout.check_record(rec)?;
        let mut v = self.rest(rec);
        v.extend(self.key(&self.layout.key_of(rec)));
        self.session
            .execute_unpaged(&self.put, v)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// A conditional write on the token: update if `stored <= token` (or no token yet),
    /// insert if absent; retried when the row appears or vanishes in between.
    async fn fenced_write(
        &self,
        key: &[Value],
        token: i64,
        update: (&PreparedStatement, &PreparedStatement, Vals),
        insert: (&PreparedStatement, Vals),
    ) -> Result<()> {
        let tok = Some(CqlValue::BigInt(token));
        for _ in 0..RETRIES {
            let mut v = update.2.clone();
            v.push(tok.clone());
            v.extend(self.key(key));
            let mut cond = v.clone();
            cond.push(tok.clone());
            let (applied, current) = self.lwt(update.0, cond).await?;
            if applied {
                return Ok(());
            }
            match current.first() {
                Some(Some(stored)) => return Err(self.fenced(Some(stored), token)),
                Some(None) => {
                    // The row exists without a token (written by plain puts only).
                    if self.lwt(update.1, v).await?.0 {
                        return Ok(());
                    }
                }
                None => {
                    let mut ins = insert.1.clone();
                    ins.push(tok.clone());
                    if self.lwt(insert.0, ins).await?.0 {
                        return Ok(());
                    }
                }
            }
        }
        Err(self.fenced(None, token))
    }

    pub async fn put_fenced(&self, rec: &Record, token: i64) -> Result<()> {
        self.layout.check_record(rec)?;
        let key = self.layout.key_of(rec);
        let all: Vals = rec.iter().map(to_cql).collect();
        self.fenced_write(
            &key,
            token,
            (
                &self.fenced_update,
                &self.fenced_update_null,
                self.rest(rec),
            ),
            (&self.insert_with_token, all),
        )
        .await
    }

    pub async fn delete(&self, key: &[Value]) -> Result<bool> {
        self.layout.check_key(key)?;
        Ok(self.lwt(&self.delete, self.key(key)).await?.0)
    }

    pub async fn delete_fenced(&self, key: &[Value], token: i64) -> Result<bool> {
        self.layout.check_key(key)?;
        let was_live = self.get(key).await?.is_some();
        self.fenced_write(
            key,
            token,
            (&self.tomb_update, &self.tomb_update_null, Vec::new()),
            (&self.tomb_insert, self.key(key)),
        )
        .await?;
        Ok(was_live)
    }

    pub async fn compare_and_put(
        &self,
        key: &[Value],
        expected: Option<&Record>,
        new: Option<&Record>,
    ) -> Result<bool> {
        self.layout.check_cas(key, expected, new)?;
        match (expected, new) {
            (None, None) => Ok(self.get(key).await?.is_none()),
            (Some(old), Some(new)) => {
                let mut v = self.rest(new);
                v.extend(self.key(key));
                v.extend(self.rest(old));
                Ok(self.lwt(&self.cas_update, v).await?.0)
            }
            (Some(old), None) => {
                let mut v = self.key(key);
                v.extend(self.rest(old));
                Ok(self.lwt(&self.cas_delete, v).await?.0)
            }
            (None, Some(new)) => {
                let mut v = self.rest(new);
                v.extend(self.key(key));
                if self.lwt(&self.cas_revive, v).await?.0 {
                    return Ok(true);
                }
                Ok(self
                    .lwt(&self.insert0, new.iter().map(to_cql).collect())
                    .await?
                    .0)
            }
        }
    }

    pub async fn scan(&self, cursor: Option<&ScanCursor>, limit: usize) -> Result<ScanPage> {
        if limit == 0 {
            return Err(DbcError::invalid("scan limit must be at least 1"));
        }
        let lim = Some(CqlValue::Int(i32::try_from(limit).unwrap_or(i32::MAX)));
        let rows = match cursor {
            None => self.rows(&self.scan_first, vec![lim]).await?,
            Some(c) => {
                self.layout.check_key(&c.after)?;
                let mut v = self.key(&c.after);
                v.push(lim);
                self.rows(&self.scan_after, v).await?
            }
        };
        // Tombstones count towards the limit but are not returned; the cursor moves past them.
        let full = rows.len() == limit;
        let mut last_key = None;
        let mut records = Vec::new();
        for r in &rows {
            let mut k = Vec::new();
            for &i in &self.layout.key_idx {
                let f = &self.layout.def.fields[i];
                k.push(from_cql(
                    r.columns.get(i).and_then(Option::as_ref),
                    f.ty,
                    &f.name,
                )?);
            }
            last_key = Some(k);
            if let Some(rec) = self.decode(r)? {
                records.push(rec);
            }
        }
        let next = if full {
            last_key.map(|after| ScanCursor { after })
        } else {
            None
        };
        Ok(ScanPage { records, next })
    }

    pub async fn count(&self) -> Result<u64> {
        let rows = self.rows(&self.count, Vec::new()).await?;
        match rows.first().and_then(|r| r.columns.first()) {
            Some(Some(CqlValue::BigInt(n))) => Ok(u64::try_from(*n).unwrap_or(0)),
            _ => Err(err("COUNT(*) returned no row")),
        }
    }
}

pub(crate) async fn ensure_meta(s: &Session) -> Result<()> {
    for t in ["_kw_meta", "_kw_tables"] {
        s.query_unpaged(
            format!("CREATE TABLE IF NOT EXISTS {t} (name text PRIMARY KEY, value text)"),
            &[],
        )
        .await
        .map_err(err)?;
    }
    Ok(())
}

pub(crate) async fn meta_get(s: &Session, table: &str, name: &str) -> Result<Option<String>> {
    let r = s
        .query_unpaged(format!("SELECT value FROM {table} WHERE name = ?"), (name,))
        .await
        .map_err(err)?;
    let Ok(rows) = r.into_rows_result() else {
        return Ok(None);
    };
    let row: Option<(Option<String>,)> = rows.maybe_first_row().map_err(err)?;
    Ok(row.and_then(|r| r.0))
}

pub(crate) async fn meta_insert(s: &Session, table: &str, name: &str, value: &str) -> Result<()> {
    s.query_unpaged(
        format!("INSERT INTO {table} (name, value) VALUES (?, ?) IF NOT EXISTS"),
        (name, value),
    )
    .await
    .map_err(err)?;
    Ok(())
}
