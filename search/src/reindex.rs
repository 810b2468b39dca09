//! Rebuilding an index from a DBC table, for the migration CLI (`keyward migrate search
//! reindex`).

use crate::error::{Result, SearchError};
use crate::node::SearchService;
use keyward_dbc::{ScanCursor, Table, Value};
use serde_json::{Map, Value as Json};

/// How a reindex runs.
#[derive(Clone, Debug)]
pub struct ReindexOptions {
    /// Records per write batch.
    pub batch_size: usize,
    /// Empty the index first (it is deleted and created again with the same definition), so
    /// that documents absent from the table disappear.
    pub recreate: bool,
}

impl Default for ReindexOptions {
    fn default() -> Self {
        ReindexOptions {
            batch_size: 1000,
            recreate: true,
        }
    }
}

/// What a reindex did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReindexReport {
    pub documents: u64,
    pub batches: u64,
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::I64(i) => Json::from(*i),
        Value::F64(x) => serde_json::Number::from_f64(*x)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Value::Decimal(d) => Json::String(d.to_string()),
        Value::Text(s) => Json::String(s.clone()),
        Value::Bytes(_) => Json::Null,
        Value::Timestamp(t) => Json::String(t.to_rfc3339()),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Json(j) => (**j).clone(),
    }
}

/// Loads every record of `table` into index `index`: each record becomes a document of the
/// table's fields that the index knows (its id field and schema fields; other columns are
/// skipped). Records that do not fit the schema stop the reindex with the record's id.
pub async fn reindex_from_table(
    service: &SearchService,
    index: &str,
    table: &Table,
    opts: ReindexOptions,
) -> Result<ReindexReport> {
    let mut meta = service.index(index).await?;
    if opts.recreate {
        service.delete_index(index).await?;
        let mut def = meta.def.clone();
        def.shards = Some(meta.shards);
        meta = service.create_index(def).await?;
    }
    let names: Vec<String> = table.def().fields.iter().map(|f| f.name.clone()).collect();
    if !names.contains(&meta.def.id_field) {
        return Err(SearchError::InvalidRequest(format!(
            "table {} has no column {:?} (the index's id field)",
            table.def().name,
            meta.def.id_field
        )));
    }
    let keep: Vec<bool> = names
        .iter()
        .map(|n| *n == meta.def.id_field || meta.def.fields.contains_key(n))
        .collect();
    let mut report = ReindexReport::default();
    let mut cursor: Option<ScanCursor> = None;
    let batch = opts.batch_size.clamp(1, crate::node::MAX_BATCH);
    loop {
        let page = table
            .scan(cursor.as_ref(), batch)
            .await
            .map_err(|e| SearchError::Storage(format!("scanning {}: {e}", table.def().name)))?;
        let mut docs = Vec::with_capacity(page.records.len());
        for rec in &page.records {
            let mut m = Map::new();
            for ((name, v), k) in names.iter().zip(rec).zip(&keep) {
                if *k && *v != Value::Null {
                    m.insert(name.clone(), to_json(v));
                }
            }
            docs.push(Json::Object(m));
        }
        if !docs.is_empty() {
            report.documents += docs.len() as u64;
            report.batches += 1;
            // Waiting per batch keeps memory flat and leaves everything searchable at the end.
            service.add_documents(index, docs, false, true).await?;
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(report)
}
