//! SQL text per backend: identifier quoting, placeholders, column types and the record-face
//! statements, generated once per table.

use crate::record::{Layout, DEAD_COLUMN, TOKEN_COLUMN};
use crate::value::FieldType;
use crate::BackendKind;
use crate::Field;

#[derive(Clone, Debug)]
pub(crate) struct Dialect {
    pub kind: BackendKind,
    /// MySQL only: a binary, no-pad utf8mb4 collation, so that keys differing in case or in
    /// trailing spaces stay distinct.
    pub mysql_collation: String,
}

impl Dialect {
    pub fn q(&self, ident: &str) -> String {
        match self.kind {
            BackendKind::Mysql => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }

    pub fn ph(&self, n: usize) -> String {
        match self.kind {
            BackendKind::Postgres => format!("${n}"),
            _ => "?".into(),
        }
    }

    /// Placeholders for `count` values starting at number `start`, joined by `sep`.
    fn phs(&self, start: usize, count: usize) -> Vec<String> {
        (start..start + count).map(|n| self.ph(n)).collect()
    }

    fn null_safe_eq(&self) -> &'static str {
        match self.kind {
            BackendKind::Postgres => "IS NOT DISTINCT FROM",
            BackendKind::Mysql => "<=>",
            _ => "IS",
        }
    }

    pub fn column_type(&self, ty: FieldType, key_text_chars: Option<usize>) -> String {
        let bin = &self.mysql_collation;
        match self.kind {
            BackendKind::Sqlite => match ty {
                FieldType::Bool => "BOOLEAN",
                FieldType::I64 | FieldType::Timestamp => "INTEGER",
                FieldType::F64 | FieldType::Bytes | FieldType::Uuid => "BLOB",
                FieldType::Decimal | FieldType::Text | FieldType::Json => "TEXT",
            }
            .into(),
            BackendKind::Postgres => match ty {
                FieldType::Bool => "BOOLEAN",
                FieldType::I64 => "BIGINT",
                FieldType::F64 => "DOUBLE PRECISION",
                FieldType::Decimal => "NUMERIC",
                FieldType::Text if key_text_chars.is_some() => "TEXT COLLATE \"C\"",
                FieldType::Text => "TEXT",
                FieldType::Bytes => "BYTEA",
                FieldType::Timestamp => "TIMESTAMPTZ",
                FieldType::Uuid => "UUID",
                FieldType::Json => "JSONB",
            }
            .into(),
            _ => match (ty, key_text_chars) {
                (FieldType::Bool, _) => "BOOLEAN".into(),
                (FieldType::I64 | FieldType::Timestamp, _) => "BIGINT".into(),
                (FieldType::F64, _) => "BINARY(8)".into(),
                (FieldType::Uuid, _) => "BINARY(16)".into(),
                (FieldType::Decimal, _) => {
                    format!("VARCHAR(64) CHARACTER SET utf8mb4 COLLATE {bin}")
                }
                (FieldType::Text, Some(n)) => {
                    format!("VARCHAR({n}) CHARACTER SET utf8mb4 COLLATE {bin}")
                }
                (FieldType::Text | FieldType::Json, _) => {
                    format!("LONGTEXT CHARACTER SET utf8mb4 COLLATE {bin}")
                }
                (FieldType::Bytes, Some(_)) => "VARBINARY(512)".into(),
                (FieldType::Bytes, None) => "LONGBLOB".into(),
            },
        }
    }

    pub fn create_table(&self, l: &Layout) -> String {
        let key_types = l.key_types();
        let n_text = key_types
            .iter()
            .filter(|t| **t == FieldType::Text)
            .count()
            .max(1);
        let n_bytes = key_types.iter().filter(|t| **t == FieldType::Bytes).count();
        let fixed: usize = key_types
            .iter()
            .map(|t| match t {
                FieldType::Decimal => 256,
                FieldType::Uuid => 16,
                FieldType::Bytes | FieldType::Text => 0,
                _ => 8,
            })
            .sum();
        // InnoDB keys are at most 3072 bytes; utf8mb4 reserves 4 bytes per character.
        let text_chars = (3072usize.saturating_sub(fixed + 512 * n_bytes) / (4 * n_text)).min(512);
        let mut cols = Vec::new();
        for (i, f) in l.def.fields.iter().enumerate() {
            let is_key = l.key_idx.contains(&i);
            let ty = self.column_type(f.ty, is_key.then_some(text_chars));
            // Non-key columns are nullable in the database: a tombstone keeps only its key.
            let nn = if is_key { " NOT NULL" } else { "" };
            cols.push(format!("{} {ty}{nn}", self.q(&f.name)));
        }
        cols.push(format!(
            "{} BIGINT NOT NULL DEFAULT 0",
            self.q(TOKEN_COLUMN)
        ));
        cols.push(format!(
            "{} SMALLINT NOT NULL DEFAULT 0",
            self.q(DEAD_COLUMN)
        ));
        cols.push(format!("PRIMARY KEY ({})", self.key_list(l)));
        let tail = match self.kind {
            BackendKind::Mysql => format!(
                " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={}",
                self.mysql_collation
            ),
            _ => String::new(),
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}){tail}",
            self.q(&l.def.name),
            cols.join(", ")
        )
    }

    pub fn meta_tables(&self) -> Vec<String> {
        let (name_ty, tail) = match self.kind {
            BackendKind::Mysql => (
                format!(
                    "VARCHAR(190) CHARACTER SET utf8mb4 COLLATE {}",
                    self.mysql_collation
                ),
                format!(" DEFAULT CHARSET=utf8mb4 COLLATE={}", self.mysql_collation),
            ),
            _ => ("TEXT".into(), String::new()),
        };
        let value_ty = match self.kind {
            BackendKind::Mysql => "LONGTEXT",
            _ => "TEXT",
        };
        ["_kw_meta", "_kw_tables"]
            .iter()
            .map(|t| {
                format!(
                    "CREATE TABLE IF NOT EXISTS {} ({} {name_ty} NOT NULL PRIMARY KEY, {} {value_ty} NOT NULL){tail}",
                    self.q(t),
                    self.q("name"),
                    self.q("value")
                )
            })
            .collect()
    }

    pub fn meta_get(&self, table: &str) -> String {
        format!(
            "SELECT {} FROM {} WHERE {} = {}",
            self.q("value"),
            self.q(table),
            self.q("name"),
            self.ph(1)
        )
    }

    pub fn meta_insert(&self, table: &str) -> String {
        match self.kind {
            BackendKind::Mysql => format!(
                "INSERT IGNORE INTO {} ({}, {}) VALUES (?, ?)",
                self.q(table),
                self.q("name"),
                self.q("value")
            ),
            _ => format!(
                "INSERT INTO {} ({}, {}) VALUES ({}, {}) ON CONFLICT DO NOTHING",
                self.q(table),
                self.q("name"),
                self.q("value"),
                self.ph(1),
                self.ph(2)
            ),
        }
    }

    fn key_list(&self, l: &Layout) -> String {
        l.key_idx
            .iter()
            .map(|&i| self.q(&l.def.fields[i].name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The quoted names of the fields that `keep` selects, in table order.
    pub(crate) fn field_names(&self, l: &Layout, keep: impl Fn(&Field) -> bool) -> Vec<String> {
        l.def
            .fields
            .iter()
            .filter(|f| keep(f))
            .map(|f| self.q(&f.name))
            .collect()
    }

    pub(crate) fn all_cols(&self, l: &Layout) -> String {
        self.field_names(l, |_| true).join(", ")
    }

    /// `k1 = $s AND k2 = $s+1 ...`
    fn key_eq(&self, l: &Layout, start: usize) -> String {
        l.key_idx
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("{} = {}", self.q(&l.def.fields[i].name), self.ph(start + n)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    fn rest_names(&self, l: &Layout) -> Vec<String> {
        l.rest_idx
            .iter()
            .map(|&i| self.q(&l.def.fields[i].name))
            .collect()
    }

    fn excluded(&self, col: &str) -> String {
        match self.kind {
            BackendKind::Mysql => format!("VALUES({col})"),
            _ => format!("excluded.{col}"),
        }
    }

    /// `head (row 1), (row 2), ... tail`, each row `binds` placeholders numbered on from the
    /// previous row's, then the literal `extra` (e.g. `, 0, 0` for token and tombstone).
    pub fn multi_row(
        &self,
        head: &str,
        tail: &str,
        rows: usize,
        binds: usize,
        extra: &str,
    ) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(head.len() + tail.len() + rows * binds * 7);
        s.push_str(head);
        for r in 0..rows {
            if r > 0 {
                s.push_str(", ");
            }
            s.push('(');
            for b in 0..binds {
                if b > 0 {
                    s.push_str(", ");
                }
                match self.kind {
                    // Writing into a String cannot fail.
                    BackendKind::Postgres => {
                        let _ = write!(s, "${}", r * binds + b + 1);
                    }
                    _ => s.push('?'),
                }
            }
            s.push_str(extra);
            s.push(')');
        }
        s.push_str(tail);
        s
    }

    /// The most parameters one statement may carry on this backend.
    pub fn bind_limit(&self) -> usize {
        match self.kind {
            // SQLITE_MAX_VARIABLE_NUMBER of SQLite 3.32 and later.
            BackendKind::Sqlite => 32_766,
            _ => 65_535,
        }
    }

    pub fn statements(&self, l: &Layout) -> Statements {
        let t = self.q(&l.def.name);
        let tok = self.q(TOKEN_COLUMN);
        let dead = self.q(DEAD_COLUMN);
        let nf = l.def.fields.len();
        let nk = l.key_idx.len();
        let nr = l.rest_idx.len();
        let cols = self.all_cols(l);
        let keys = self.key_list(l);
        let rest = self.rest_names(l);
        let vals = self.phs(1, nf).join(", ");
        let set_rest_excluded: Vec<String> = rest
            .iter()
            .map(|c| format!("{c} = {}", self.excluded(c)))
            .collect();
        let set_rest_null: Vec<String> = rest.iter().map(|c| format!("{c} = NULL")).collect();
        let join = |mut parts: Vec<String>, extra: &[String]| {
            parts.extend_from_slice(extra);
            parts.join(", ")
        };
        let is_mysql = self.kind == BackendKind::Mysql;
        let conflict = |set: String, cond: Option<String>| -> String {
            if is_mysql {
                format!(" ON DUPLICATE KEY UPDATE {set}")
            } else {
                let w = cond.map(|c| format!(" WHERE {c}")).unwrap_or_default();
                format!(" ON CONFLICT ({keys}) DO UPDATE SET {set}{w}")
            }
        };
        let get = format!(
            "SELECT {cols} FROM {t} WHERE {} AND {dead} = 0",
            self.key_eq(l, 1)
        );
        let key_tuple = if nk == 1 {
            keys.clone()
        } else {
            format!("({keys})")
        };
        let get_many_head = format!("SELECT {cols} FROM {t} WHERE {dead} = 0 AND {key_tuple} IN (");
        let token_of = format!(
            "SELECT {tok}, CAST({dead} AS {}) FROM {t} WHERE {}",
            if is_mysql { "SIGNED" } else { "BIGINT" },
            self.key_eq(l, 1)
        );
        let put_head = format!("INSERT INTO {t} ({cols}, {tok}, {dead}) VALUES ");
        let put_tail = conflict(
            join(set_rest_excluded.clone(), &[format!("{dead} = 0")]),
            None,
        );
        let put = format!("{put_head}({vals}, 0, 0){put_tail}");
        let fenced_guard = format!("{t}.{tok} <= excluded.{tok}");
        // MySQL has no conditional upsert: every assignment is guarded instead, the token's
        // last (assignments see the values assigned before them). A refused row is left as
        // it was and reports its stored token through LAST_INSERT_ID(expr), which the server
        // returns with the statement's result (0 otherwise: these tables have no
        // AUTO_INCREMENT column, and a refused token is above a given one, so at least 1).
        let my_guard = format!("{tok} <= VALUES({tok})");
        let my_fenced = |rest_value: &dyn Fn(&str) -> String, dead_value: u8| -> String {
            let mut set: Vec<String> = rest
                .iter()
                .map(|c| format!("{c} = IF({my_guard}, {}, {c})", rest_value(c)))
                .collect();
            set.push(format!("{dead} = IF({my_guard}, {dead_value}, {dead})"));
            set.push(format!(
                "{tok} = IF({my_guard}, VALUES({tok}), LAST_INSERT_ID({tok}))"
            ));
            format!(" ON DUPLICATE KEY UPDATE {}", set.join(", "))
        };
        let put_fenced_tail = if is_mysql {
            my_fenced(&|c| format!("VALUES({c})"), 0)
        } else {
            conflict(
                join(
                    set_rest_excluded.clone(),
                    &[format!("{tok} = excluded.{tok}"), format!("{dead} = 0")],
                ),
                Some(fenced_guard.clone()),
            )
        };
        let put_fenced = format!(
            "{put_head}({vals}, {}, 0){put_fenced_tail}",
            self.ph(nf + 1)
        );
        let key_vals = self.phs(1, nk).join(", ");
        let delete_fenced_tail = if is_mysql {
            my_fenced(&|_| "NULL".to_string(), 1)
        } else {
            conflict(
                join(
                    set_rest_null.clone(),
                    &[format!("{tok} = excluded.{tok}"), format!("{dead} = 1")],
                ),
                Some(fenced_guard),
            )
        };
        let delete_fenced = format!(
            "INSERT INTO {t} ({keys}, {tok}, {dead}) VALUES ({key_vals}, {}, 1){delete_fenced_tail}",
            self.ph(nk + 1),
        );
        let set_rest_ph: Vec<String> = rest
            .iter()
            .enumerate()
            .map(|(n, c)| format!("{c} = {}", self.ph(n + 1)))
            .collect();
        let delete = format!(
            "UPDATE {t} SET {} WHERE {} AND {dead} = 0",
            join(set_rest_null.clone(), &[format!("{dead} = 1")]),
            self.key_eq(l, 1)
        );
        let eq = self.null_safe_eq();
        let match_old = |start: usize| -> String {
            rest.iter()
                .enumerate()
                .map(|(n, c)| format!(" AND {c} {eq} {}", self.ph(start + n)))
                .collect::<String>()
        };
        // binds: new rest, key, old rest
        let cas_update = format!(
            "UPDATE {t} SET {} WHERE {} AND {dead} = 0{}",
            join(set_rest_ph.clone(), &[format!("{dead} = 0")]),
            self.key_eq(l, nr + 1),
            match_old(nr + nk + 1)
        );
        // binds: key, old rest
        let cas_delete = format!(
            "UPDATE {t} SET {} WHERE {} AND {dead} = 0{}",
            join(set_rest_null, &[format!("{dead} = 1")]),
            self.key_eq(l, 1),
            match_old(nk + 1)
        );
        // binds: full record; revives only a tombstone
        let cas_insert = format!(
            "INSERT INTO {t} ({cols}, {tok}, {dead}) VALUES ({vals}, 0, 0){}",
            conflict(
                join(set_rest_excluded, &[format!("{dead} = 0")]),
                Some(format!("{t}.{dead} = 1"))
            )
        );
        // binds: new rest, key
        let mysql_cas_revive = format!(
            "UPDATE {t} SET {} WHERE {} AND {dead} = 1",
            join(set_rest_ph, &[format!("{dead} = 0")]),
            self.key_eq(l, nr + 1)
        );
        let mysql_insert = format!("INSERT INTO {t} ({cols}, {tok}, {dead}) VALUES ({vals}, 0, 0)");
        let order = keys.clone();
        // `{dead} <> 1`, not `= 0` (same rows: the column is 0 or 1). Without statistics (a
        // table just filled, before autovacuum analyzed it) PostgreSQL guesses that an
        // equality keeps 0.5% of the rows and a range a third, and either guess makes a page
        // of thousands look like the whole table: it plans a parallel full scan and sort
        // (130 ms per 5,000-row page at a million rows against 2 ms through the key's index;
        // a 100,000-row read 97 ms against 35 ms). It guesses 99.5% for `<>`, as if there
        // were no filter, and walks the key's index like a plain `ORDER BY key` would.
        let scan_first = format!(
            "SELECT {cols} FROM {t} WHERE {dead} <> 1 ORDER BY {order} LIMIT {}",
            self.ph(1)
        );
        let after = if nk == 1 {
            format!("{keys} > {}", self.ph(1))
        } else {
            format!("({keys}) > ({})", self.phs(1, nk).join(", "))
        };
        let scan_after = format!(
            "SELECT {cols} FROM {t} WHERE {dead} <> 1 AND {after} ORDER BY {order} LIMIT {}",
            self.ph(nk + 1)
        );
        let count = format!("SELECT COUNT(*) FROM {t} WHERE {dead} = 0");
        Statements {
            get,
            get_many_head,
            token_of,
            put_head,
            put_tail,
            put_fenced_tail,
            put,
            put_fenced,
            delete_fenced,
            delete,
            cas_update,
            cas_delete,
            cas_insert,
            mysql_cas_revive,
            mysql_insert,
            scan_first,
            scan_after,
            count,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Statements {
    pub get: String,
    /// `SELECT fields FROM t WHERE live AND key IN (`: the head of a multi-key get.
    pub get_many_head: String,
    pub token_of: String,
    /// `INSERT INTO t (fields, token, dead) VALUES `: the head of the multi-row writes.
    pub put_head: String,
    /// The conflict clause of `put`, and of `put_fenced` (its token guard included).
    pub put_tail: String,
    pub put_fenced_tail: String,
    pub put: String,
    pub put_fenced: String,
    pub delete_fenced: String,
    pub delete: String,
    pub cas_update: String,
    pub cas_delete: String,
    pub cas_insert: String,
    pub mysql_cas_revive: String,
    pub mysql_insert: String,
    pub scan_first: String,
    pub scan_after: String,
    pub count: String,
}
