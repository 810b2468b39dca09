//! Batched fenced writes: many rows in one statement, one commit for the whole batch.
//!
//! DBC's `put_fenced_many` / `delete_fenced_many` write row by row today (one transaction and,
//! on a durable database, one disk sync per row). The journal's group commit and the flusher's
//! merged writes only pay off when a batch is one commit, so on SQLite and PostgreSQL the rows
//! are written here through DBC's native face with the same SQL the record face uses for one
//! row (`INSERT … ON CONFLICT … DO UPDATE … WHERE token <= new token`), many rows per statement
//! and all statements of a batch in one transaction. Other backends use DBC's calls.

use keyward_dbc::{
    BackendKind, Db, DbcError, FieldType, Key, Record, Table, TableDef, Value, DEAD_COLUMN,
    TOKEN_COLUMN,
};

/// Statement sizes (rows). A batch is cut greedily into these, so that the database sees a few
/// distinct statements it can keep prepared instead of one new text per batch size.
const SIZES: [usize; 6] = [512, 128, 32, 8, 2, 1];

/// Parameters per statement stay under SQLite's default limit (32766) and PostgreSQL's (65535).
const MAX_PARAMS: usize = 30_000;

fn invalid(message: impl Into<String>) -> DbcError {
    DbcError::InvalidInput {
        message: message.into(),
    }
}

fn native(db: &Db) -> bool {
    matches!(db.kind(), BackendKind::Sqlite | BackendKind::Postgres)
}

fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A placeholder, cast on PostgreSQL to the column's type: a NULL is bound as text, and the
/// cast keeps it acceptable for columns of any type.
fn ph(kind: BackendKind, n: usize, ty: FieldType) -> String {
    if kind != BackendKind::Postgres {
        return format!("${n}");
    }
    let t = match ty {
        FieldType::Bool => "BOOLEAN",
        FieldType::I64 => "BIGINT",
        FieldType::F64 => "DOUBLE PRECISION",
        FieldType::Decimal => "NUMERIC",
        FieldType::Text => "TEXT",
        FieldType::Bytes => "BYTEA",
        FieldType::Timestamp => "TIMESTAMPTZ",
        FieldType::Uuid => "UUID",
        FieldType::Json => "JSONB",
    };
    format!("CAST(${n} AS {t})")
}

struct Shape {
    key_idx: Vec<usize>,
    rest_idx: Vec<usize>,
}

fn shape(def: &TableDef) -> Result<Shape, DbcError> {
    let mut key_idx = Vec::new();
    for k in &def.primary_key {
        let i = def
            .fields
            .iter()
            .position(|f| &f.name == k)
            .ok_or_else(|| invalid(format!("primary key field {k:?} is not a field")))?;
        key_idx.push(i);
    }
    let rest_idx = (0..def.fields.len())
        .filter(|i| !key_idx.contains(i))
        .collect();
    Ok(Shape { key_idx, rest_idx })
}

fn upsert_sql(kind: BackendKind, def: &TableDef, rows: usize) -> Result<String, DbcError> {
    let s = shape(def)?;
    let t = q(&def.name);
    let tok = q(TOKEN_COLUMN);
    let dead = q(DEAD_COLUMN);
    let cols: Vec<String> = def.fields.iter().map(|f| q(&f.name)).collect();
    let per = def.fields.len() + 1;
    let mut values = Vec::with_capacity(rows);
    for r in 0..rows {
        let mut v: Vec<String> = def
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| ph(kind, r * per + i + 1, f.ty))
            .collect();
        v.push(ph(kind, r * per + per, FieldType::I64));
        values.push(format!("({}, 0)", v.join(", ")));
    }
    let keys: Vec<String> = s.key_idx.iter().map(|i| cols[*i].clone()).collect();
    let mut set: Vec<String> = s
        .rest_idx
        .iter()
        .map(|i| format!("{0} = excluded.{0}", cols[*i]))
        .collect();
    set.push(format!("{tok} = excluded.{tok}"));
    set.push(format!("{dead} = 0"));
    Ok(format!(
        "INSERT INTO {t} ({}, {tok}, {dead}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {} WHERE {t}.{tok} <= excluded.{tok}",
        cols.join(", "),
        values.join(", "),
        keys.join(", "),
        set.join(", ")
    ))
}

fn tombstone_sql(kind: BackendKind, def: &TableDef, rows: usize) -> Result<String, DbcError> {
    let s = shape(def)?;
    let t = q(&def.name);
    let tok = q(TOKEN_COLUMN);
    let dead = q(DEAD_COLUMN);
    let keys: Vec<String> = s.key_idx.iter().map(|i| q(&def.fields[*i].name)).collect();
    let per = keys.len() + 1;
    let mut values = Vec::with_capacity(rows);
    for r in 0..rows {
        let mut v: Vec<String> = s
            .key_idx
            .iter()
            .enumerate()
            .map(|(n, i)| ph(kind, r * per + n + 1, def.fields[*i].ty))
            .collect();
        v.push(ph(kind, r * per + per, FieldType::I64));
        values.push(format!("({}, 1)", v.join(", ")));
    }
    let mut set: Vec<String> = s
        .rest_idx
        .iter()
        .map(|i| format!("{} = NULL", q(&def.fields[*i].name)))
        .collect();
    set.push(format!("{tok} = excluded.{tok}"));
    set.push(format!("{dead} = 1"));
    Ok(format!(
        "INSERT INTO {t} ({}, {tok}, {dead}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {} WHERE {t}.{tok} <= excluded.{tok}",
        keys.join(", "),
        values.join(", "),
        keys.join(", "),
        set.join(", ")
    ))
}

/// Cuts `n` rows into statement sizes; every size fits the parameter limit.
fn cut(n: usize, params_per_row: usize) -> Vec<usize> {
    let max = (MAX_PARAMS / params_per_row.max(1)).max(1);
    let mut out = Vec::new();
    let mut left = n;
    while left > 0 {
        let s = SIZES
            .iter()
            .copied()
            .find(|s| *s <= left && *s <= max)
            .unwrap_or(1);
        out.push(s);
        left -= s;
    }
    out
}

/// What a batched write did: per row Ok or its error.
pub(crate) struct Written<T> {
    pub results: Vec<Result<T, DbcError>>,
}

/// Runs the statements of one batch in one transaction; returns, per statement, whether every
/// row was written (a row whose stored token is newer is skipped by the `WHERE`).
async fn run_batch(
    db: &Db,
    stmts: Vec<(String, Vec<Value>, usize)>,
) -> Result<Vec<bool>, DbcError> {
    if stmts.len() == 1 {
        let (sql, params, rows) = &stmts[0];
        return Ok(vec![db.execute(sql, params).await? as usize == *rows]);
    }
    let mut tx = db.begin().await?;
    let mut full = Vec::with_capacity(stmts.len());
    for (sql, params, rows) in &stmts {
        match tx.execute(sql, params).await {
            Ok(n) => full.push(n as usize == *rows),
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        }
    }
    tx.commit().await?;
    Ok(full)
}

/// `put_fenced` of every item, as few commits as possible.
pub(crate) async fn put_fenced_many(
    db: &Db,
    table: &Table,
    items: &[(Record, i64)],
) -> Result<Written<()>, DbcError> {
    if items.is_empty() {
        return Ok(Written {
            results: Vec::new(),
        });
    }
    if !native(db) {
        let results = table.put_fenced_many(items).await?;
        return Ok(Written { results });
    }
    let def = table.def();
    let nf = def.fields.len();
    for (rec, tok) in items {
        if rec.len() != nf {
            return Err(invalid(format!(
                "record has {} values for {nf} fields of {:?}",
                rec.len(),
                def.name
            )));
        }
        if *tok < 0 {
            return Err(invalid("fencing token must not be negative"));
        }
    }
    let kind = db.kind();
    let mut stmts = Vec::new();
    let mut ranges = Vec::new();
    let mut at = 0;
    for size in cut(items.len(), nf + 1) {
        let mut params = Vec::with_capacity(size * (nf + 1));
        for (rec, tok) in &items[at..at + size] {
            params.extend(rec.iter().cloned());
            params.push(Value::I64(*tok));
        }
        stmts.push((upsert_sql(kind, def, size)?, params, size));
        ranges.push(at..at + size);
        at += size;
    }
    let full = run_batch(db, stmts).await?;
    let mut results: Vec<Result<(), DbcError>> = (0..items.len()).map(|_| Ok(())).collect();
    // A statement that skipped rows (stale tokens): write those rows one by one to learn which
    // (rewriting a row that was written is harmless: same image, same token).
    for (r, ok) in ranges.into_iter().zip(full) {
        if !ok {
            for i in r {
                results[i] = table.put_fenced(&items[i].0, items[i].1).await;
            }
        }
    }
    Ok(Written { results })
}

/// `delete_fenced` of every item (a tombstone keeps the token), as few commits as possible.
pub(crate) async fn delete_fenced_many(
    db: &Db,
    table: &Table,
    items: &[(Key, i64)],
) -> Result<Written<bool>, DbcError> {
    if items.is_empty() {
        return Ok(Written {
            results: Vec::new(),
        });
    }
    if !native(db) {
        let results = table.delete_fenced_many(items).await?;
        return Ok(Written { results });
    }
    let def = table.def();
    let nk = def.primary_key.len();
    for (key, tok) in items {
        if key.len() != nk {
            return Err(invalid(format!(
                "key has {} values for {nk} key fields of {:?}",
                key.len(),
                def.name
            )));
        }
        if *tok < 0 {
            return Err(invalid("fencing token must not be negative"));
        }
    }
    let kind = db.kind();
    let mut stmts = Vec::new();
    let mut ranges = Vec::new();
    let mut at = 0;
    for size in cut(items.len(), nk + 1) {
        let mut params = Vec::with_capacity(size * (nk + 1));
        for (key, tok) in &items[at..at + size] {
            params.extend(key.iter().cloned());
            params.push(Value::I64(*tok));
        }
        stmts.push((tombstone_sql(kind, def, size)?, params, size));
        ranges.push(at..at + size);
        at += size;
    }
    let full = run_batch(db, stmts).await?;
    // Whether a live record was there is not known from a batched write; callers here do not
    // use it.
    let mut results: Vec<Result<bool, DbcError>> = (0..items.len()).map(|_| Ok(true)).collect();
    for (r, ok) in ranges.into_iter().zip(full) {
        if !ok {
            for i in r {
                results[i] = table.delete_fenced(&items[i].0, items[i].1).await;
            }
        }
    }
    Ok(Written { results })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_few_sizes() {
        assert_eq!(cut(0, 3), Vec::<usize>::new());
        assert_eq!(cut(700, 3), vec![512, 128, 32, 8, 8, 8, 2, 2]);
        assert_eq!(cut(3, 3).iter().sum::<usize>(), 3);
        // The parameter limit caps the statement size.
        assert!(cut(5000, 100).iter().all(|s| *s * 100 <= MAX_PARAMS));
    }
}
