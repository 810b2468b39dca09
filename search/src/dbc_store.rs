//! [`Store`] on DBC's record face: the catalog table `kw_search_indexes` and one table per
//! shard (`kw_search_<uid>_<shard>`: id, seq, body; a deleted document keeps its row with a
//! null body so that a resuming owner sees the delete). Document rows are written with
//! `put_fenced` and the shard owner's token.

use crate::error::{Result, SearchError};
use crate::schema::IndexMeta;
use crate::store::{DocRow, RowPage, Store};
use async_trait::async_trait;
use keyward_dbc::{Db, DbcError, Field, FieldType, ScanCursor, Table, TableDef, Value};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::Mutex;

const CATALOG: &str = "kw_search_indexes";

fn storage(what: &str, e: DbcError) -> SearchError {
    SearchError::Storage(format!("{what}: {e}"))
}

/// The search store of a DBC database.
pub struct DbcStore {
    db: Db,
    catalog: Table,
    tables: Mutex<HashMap<String, Table>>,
}

impl DbcStore {
    /// Opens (and creates if missing) the catalog table.
    pub async fn open(db: Db) -> Result<DbcStore> {
        let catalog = db
            .define_table(TableDef {
                name: CATALOG.into(),
                fields: vec![
                    Field::new("name", FieldType::Text),
                    Field::new("meta", FieldType::Json),
                ],
                primary_key: vec!["name".into()],
            })
            .await
            .map_err(|e| storage("defining the search catalog", e))?;
        Ok(DbcStore {
            db,
            catalog,
            tables: Mutex::new(HashMap::new()),
        })
    }

    async fn table(&self, name: &str) -> Result<Table> {
        if let Some(t) = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(t.clone());
        }
        let t = self
            .db
            .define_table(TableDef {
                name: name.to_owned(),
                fields: vec![
                    Field::new("id", FieldType::Text),
                    Field::new("seq", FieldType::I64),
                    Field::new("body", FieldType::Json).nullable(),
                ],
                primary_key: vec!["id".into()],
            })
            .await
            .map_err(|e| storage(&format!("defining table {name}"), e))?;
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), t.clone());
        Ok(t)
    }
}

fn meta_of(rec: &[Value]) -> Result<IndexMeta> {
    match rec.get(1) {
        Some(Value::Json(j)) => serde_json::from_value((**j).clone())
            .map_err(|e| SearchError::Storage(format!("unreadable index definition: {e}"))),
        _ => Err(SearchError::Storage(
            "catalog row without definition".into(),
        )),
    }
}

fn row_of(rec: Vec<Value>) -> Result<DocRow> {
    let mut it = rec.into_iter();
    let (Some(Value::Text(key)), Some(Value::I64(seq)), Some(body)) =
        (it.next(), it.next(), it.next())
    else {
        return Err(SearchError::Storage("malformed document row".into()));
    };
    let body = match body {
        Value::Json(j) if j.is_object() => match *j {
            Json::Object(m) => Some(m),
            _ => None,
        },
        Value::Null => None,
        _ => {
            return Err(SearchError::Storage(format!(
                "document {key:?}: body is not an object"
            )))
        }
    };
    Ok(DocRow { key, seq, body })
}

#[async_trait]
impl Store for DbcStore {
    async fn get_index(&self, name: &str) -> Result<Option<IndexMeta>> {
        let rec = self
            .catalog
            .get(&[Value::Text(name.to_owned())])
            .await
            .map_err(|e| storage("reading the search catalog", e))?;
        rec.map(|r| meta_of(&r)).transpose()
    }

    async fn list_indexes(&self) -> Result<Vec<IndexMeta>> {
        let mut out = Vec::new();
        let mut cursor: Option<ScanCursor> = None;
        loop {
            let page = self
                .catalog
                .scan(cursor.as_ref(), 500)
                .await
                .map_err(|e| storage("listing the search catalog", e))?;
            for r in &page.records {
                out.push(meta_of(r)?);
            }
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(out)
    }

    async fn create_index(&self, meta: &IndexMeta) -> Result<bool> {
        let json = serde_json::to_value(meta)
            .map_err(|e| SearchError::Internal(format!("index definition: {e}")))?;
        let key = [Value::Text(meta.def.name.clone())];
        let rec = vec![
            Value::Text(meta.def.name.clone()),
            Value::Json(Box::new(json)),
        ];
        self.catalog
            .compare_and_put(&key, None, Some(&rec))
            .await
            .map_err(|e| storage("writing the search catalog", e))
    }

    async fn delete_index(&self, name: &str) -> Result<bool> {
        self.catalog
            .delete(&[Value::Text(name.to_owned())])
            .await
            .map_err(|e| storage("writing the search catalog", e))
    }

    async fn put_rows(&self, table: &str, rows: &[DocRow], token: i64) -> Result<()> {
        let t = self.table(table).await?;
        let items: Vec<(Vec<Value>, i64)> = rows
            .iter()
            .map(|r| {
                (
                    vec![
                        Value::Text(r.key.clone()),
                        Value::I64(r.seq),
                        r.body
                            .as_ref()
                            .map(|b| Value::Json(Box::new(Json::Object(b.clone()))))
                            .unwrap_or(Value::Null),
                    ],
                    token,
                )
            })
            .collect();
        let results = t
            .put_fenced_many(&items)
            .await
            .map_err(|e| storage(&format!("writing documents to {table}"), e))?;
        for r in results {
            match r {
                Ok(()) => {}
                Err(DbcError::Fenced { stored, given, .. }) => {
                    return Err(SearchError::NotOwner {
                        shard: table.to_owned(),
                        reason: format!("token {given} is older than the stored {stored}"),
                    })
                }
                Err(e) => return Err(storage(&format!("writing documents to {table}"), e)),
            }
        }
        Ok(())
    }

    async fn get_rows(&self, table: &str, keys: &[String]) -> Result<Vec<Option<DocRow>>> {
        let t = self.table(table).await?;
        let keys: Vec<Vec<Value>> = keys.iter().map(|k| vec![Value::Text(k.clone())]).collect();
        let recs = t
            .get_many(&keys)
            .await
            .map_err(|e| storage(&format!("reading documents of {table}"), e))?;
        recs.into_iter()
            .map(|r| r.map(row_of).transpose())
            .collect()
    }

    async fn scan_rows(&self, table: &str, after: Option<&str>, limit: usize) -> Result<RowPage> {
        let t = self.table(table).await?;
        let cursor = match after {
            Some(s) => Some(
                s.parse::<ScanCursor>()
                    .map_err(|e| storage("scan position", e))?,
            ),
            None => None,
        };
        let page = t
            .scan(cursor.as_ref(), limit)
            .await
            .map_err(|e| storage(&format!("scanning {table}"), e))?;
        let rows = page
            .records
            .into_iter()
            .map(row_of)
            .collect::<Result<Vec<_>>>()?;
        Ok(RowPage {
            rows,
            next: page.next.map(|c| c.to_string()),
        })
    }
}
