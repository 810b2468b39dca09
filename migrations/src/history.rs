//! The history table (a collection on MongoDB), kept through DBC's record face so that it has
//! the same shape on every backend: one row per applied (or dirty, or baseline) version.

use crate::error::{MigrateError, Result};
use crate::version::Version;
use chrono::{DateTime, Utc};
use keyward_dbc::{Db, Field, FieldType, Record, Table, TableDef, Value};
use serde::Serialize;

/// Name of the history table.
pub const HISTORY_TABLE: &str = "keyward_schema_history";

/// What a history row says about its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowOutcome {
    /// Applied completely.
    Success,
    /// A run started and did not finish cleanly: the database may hold part of it.
    Dirty,
    /// Recorded by `baseline`: this version and all below it count as applied.
    Baseline,
}

impl RowOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RowOutcome::Success => "success",
            RowOutcome::Dirty => "dirty",
            RowOutcome::Baseline => "baseline",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "success" => RowOutcome::Success,
            "dirty" => RowOutcome::Dirty,
            "baseline" => RowOutcome::Baseline,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryRow {
    #[serde(serialize_with = "ser_display")]
    pub version: Version,
    pub name: String,
    /// `sql`, `mongo`, `cql` or `baseline`; for a dirty row also `down` when a revert failed.
    pub kind: String,
    pub checksum: Option<String>,
    pub applied_by: String,
    pub applied_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub outcome: RowOutcome,
    pub error: Option<String>,
}

fn ser_display<S: serde::Serializer>(v: &Version, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub fn history_def() -> TableDef {
    TableDef {
        name: HISTORY_TABLE.to_owned(),
        fields: vec![
            Field::new("version", FieldType::Text),
            Field::new("name", FieldType::Text),
            Field::new("kind", FieldType::Text),
            Field::new("checksum", FieldType::Text).nullable(),
            Field::new("applied_by", FieldType::Text),
            Field::new("applied_at", FieldType::Timestamp),
            Field::new("duration_ms", FieldType::I64),
            Field::new("outcome", FieldType::Text),
            Field::new("error", FieldType::Text).nullable(),
        ],
        primary_key: vec!["version".to_owned()],
    }
}

fn opt_text(s: &Option<String>) -> Value {
    match s {
        Some(s) => Value::Text(s.clone()),
        None => Value::Null,
    }
}

/// Timestamps are stored with whole microseconds (the value model refuses finer parts).
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::<Utc>::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

impl HistoryRow {
    pub fn to_record(&self) -> Record {
        vec![
            Value::Text(self.version.to_string()),
            Value::Text(self.name.clone()),
            Value::Text(self.kind.clone()),
            opt_text(&self.checksum),
            Value::Text(self.applied_by.clone()),
            Value::Timestamp(self.applied_at),
            Value::I64(self.duration_ms),
            Value::Text(self.outcome.as_str().to_owned()),
            opt_text(&self.error),
        ]
    }

    pub fn from_record(r: &Record) -> Result<HistoryRow> {
        let bad = |what: &str| {
            MigrateError::Conflict(format!(
                "history table {HISTORY_TABLE} has a malformed row ({what}): {r:?}"
            ))
        };
        let text = |i: usize| match r.get(i) {
            Some(Value::Text(s)) => Some(s.clone()),
            _ => None,
        };
        let version: Version = text(0)
            .ok_or_else(|| bad("version"))?
            .parse()
            .map_err(|_| bad("version"))?;
        let applied_at = match r.get(5) {
            Some(Value::Timestamp(t)) => *t,
            _ => return Err(bad("applied_at")),
        };
        let duration_ms = match r.get(6) {
            Some(Value::I64(n)) => *n,
            _ => return Err(bad("duration_ms")),
        };
        Ok(HistoryRow {
            version,
            name: text(1).ok_or_else(|| bad("name"))?,
            kind: text(2).ok_or_else(|| bad("kind"))?,
            checksum: text(3),
            applied_by: text(4).ok_or_else(|| bad("applied_by"))?,
            applied_at,
            duration_ms,
            outcome: text(7)
                .as_deref()
                .and_then(RowOutcome::parse)
                .ok_or_else(|| bad("outcome"))?,
            error: text(8),
        })
    }
}

/// The history of one database.
#[derive(Clone)]
pub struct History {
    table: Table,
}

impl History {
    /// Opens the history table, creating it if missing.
    pub async fn open(db: &Db) -> Result<History> {
        Ok(History {
            table: db.define_table(history_def()).await?,
        })
    }

    /// Every row, in version order.
    pub async fn rows(&self) -> Result<Vec<HistoryRow>> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.table.scan(cursor.as_ref(), 500).await?;
            for r in &page.records {
                out.push(HistoryRow::from_record(r)?);
            }
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        out.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(out)
    }

    pub async fn put(&self, row: &HistoryRow) -> Result<()> {
        Ok(self.table.put(&row.to_record()).await?)
    }

    pub async fn delete(&self, version: &Version) -> Result<bool> {
        Ok(self
            .table
            .delete(&[Value::Text(version.to_string())])
            .await?)
    }
}

/// `user@host` of this process, for `applied_by` and lock holders.
pub fn whoami() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_records() {
        let row = HistoryRow {
            version: "1.2".parse().unwrap(),
            name: "init".into(),
            kind: "sql".into(),
            checksum: Some("ab".into()),
            applied_by: "me@host".into(),
            applied_at: now_micros(),
            duration_ms: 12,
            outcome: RowOutcome::Dirty,
            error: None,
        };
        assert_eq!(HistoryRow::from_record(&row.to_record()).unwrap(), row);
        let mut bad = row.to_record();
        bad[7] = Value::Text("weird".into());
        assert!(HistoryRow::from_record(&bad).is_err());
    }
}
