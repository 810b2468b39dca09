//! `keyward-bench dbc`: DBC against raw sqlx doing the same work, on SQLite (a temp file) and
//! PostgreSQL (a throwaway cluster, fsync on).
//!
//! Work per round and side, each phase timed on its own:
//! - get: 10,000 prepared point gets by primary key (keys spread over the 100,000 rows);
//! - put: 10,000 upserts in one transaction as multi-row INSERTs into an emptied table
//!   (raw: `QueryBuilder::push_values` in chunks within the backend's bind limit, as sqlx's
//!   docs show; DBC: `Table::put_many`);
//! - scan: a full read of 100,000 rows x 20 columns, rows streamed and every column decoded
//!   (raw: `query(..).fetch(..)` and `Row::try_get` by index into typed fields; DBC: one
//!   `Table::scan` page).
//!
//! The raw tables use the natural sqlx types of each backend (SQLite: REAL for f64, INTEGER
//! microseconds for timestamps; PostgreSQL: the same native types DBC uses). DBC's tables add
//! its bookkeeping columns (fencing token, tombstone flag) and SQLite's lossless f64 encoding.

use crate::harness::{get, interleave, BenchError, Contender, Measures, Plan, ResultLine};
use async_trait::async_trait;
use futures::TryStreamExt;
use keyward_dbc::{Db, Field, FieldType, Record, Table, TableDef, Value};
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};
use std::hint::black_box;
use std::str::FromStr;
use std::time::Instant;

const ROWS: usize = 100_000;
const GETS: usize = 10_000;
const PUTS: usize = 10_000;
const COLS: usize = 20;
const N_INT: usize = 6;
const N_TEXT: usize = 6;
const N_F64: usize = 3;
const N_BOOL: usize = 2;
const N_TS: usize = 2;
/// Base of the generated timestamps (2026-01-01T00:00:00Z) in microseconds.
const TS_BASE: i64 = 1_767_225_600_000_000;

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// Column names in table order: id, i1..i6, t1..t6, f1..f3, b1..b2, ts1..ts2.
fn columns() -> Vec<(String, FieldType)> {
    let mut c = vec![("id".to_string(), FieldType::I64)];
    let groups = [
        ("i", N_INT, FieldType::I64),
        ("t", N_TEXT, FieldType::Text),
        ("f", N_F64, FieldType::F64),
        ("b", N_BOOL, FieldType::Bool),
        ("ts", N_TS, FieldType::Timestamp),
    ];
    for (prefix, n, ty) in groups {
        for j in 1..=n {
            c.push((format!("{prefix}{j}"), ty));
        }
    }
    debug_assert_eq!(c.len(), COLS);
    c
}

fn def(name: &str) -> TableDef {
    TableDef {
        name: name.to_string(),
        fields: columns()
            .into_iter()
            .map(|(n, t)| Field::new(n, t))
            .collect(),
        primary_key: vec!["id".into()],
    }
}

/// One generated row, typed as raw sqlx code would hold it.
#[derive(Clone, Debug, PartialEq)]
struct RawRow {
    id: i64,
    ints: [i64; N_INT],
    texts: [String; N_TEXT],
    floats: [f64; N_F64],
    bools: [bool; N_BOOL],
    /// Microseconds since the epoch.
    ts: [i64; N_TS],
}

fn gen_row(id: i64, salt: i64) -> RawRow {
    let x = id.wrapping_mul(2_654_435_761).wrapping_add(salt);
    RawRow {
        id,
        ints: std::array::from_fn(|j| x.wrapping_mul(j as i64 + 3) % 1_000_003),
        texts: std::array::from_fn(|j| format!("row {id} col {j} ünïcödé {x:x}")),
        floats: std::array::from_fn(|j| (x % 100_000) as f64 / (j as f64 + 7.0)),
        bools: std::array::from_fn(|j| (x >> j) & 1 == 1),
        ts: std::array::from_fn(|j| TS_BASE + (x % 1_000_000_000) * 1000 + j as i64),
    }
}

fn to_record(r: &RawRow) -> Result<Record, BenchError> {
    let mut v = Vec::with_capacity(COLS);
    v.push(Value::I64(r.id));
    v.extend(r.ints.iter().map(|&n| Value::I64(n)));
    v.extend(r.texts.iter().map(|s| Value::Text(s.clone())));
    v.extend(r.floats.iter().map(|&f| Value::F64(f)));
    v.extend(r.bools.iter().map(|&b| Value::Bool(b)));
    for &m in &r.ts {
        let t = DateTime::<Utc>::from_timestamp_micros(m).ok_or_else(|| setup("timestamp"))?;
        v.push(Value::Timestamp(t));
    }
    Ok(v)
}

/// A fixed pseudo-random spread of keys over the seeded rows, the same for both sides.
fn get_keys(round: usize) -> Vec<i64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ round as u64;
    (0..GETS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % ROWS as u64) as i64
        })
        .collect()
}

/// Ids of the put phase, disjoint from nothing (the put table is emptied before each round).
fn put_rows(round: usize) -> Vec<RawRow> {
    (0..PUTS as i64)
        .map(|i| gen_row(i, round as i64 + 1))
        .collect()
}

fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// DBC

struct DbcSide {
    name: String,
    db: Db,
    main: Table,
    put: Table,
}

impl DbcSide {
    async fn open(name: &str, url: &str) -> Result<Self, BenchError> {
        let db = Db::connect(url).await.map_err(setup)?;
        let main = db.define_table(def("bench_main")).await.map_err(setup)?;
        let put = db.define_table(def("bench_put")).await.map_err(setup)?;
        db.execute("DELETE FROM bench_main", &[])
            .await
            .map_err(setup)?;
        let mut seeded = 0usize;
        for chunk in (0..ROWS as i64).collect::<Vec<_>>().chunks(10_000) {
            let recs = chunk
                .iter()
                .map(|&i| to_record(&gen_row(i, 0)))
                .collect::<Result<Vec<_>, _>>()?;
            for r in main.put_many(&recs).await.map_err(setup)? {
                r.map_err(setup)?;
                seeded += 1;
            }
        }
        if main.count().await.map_err(setup)? != seeded as u64 {
            return Err(setup("dbc seed count differs"));
        }
        Ok(DbcSide {
            name: name.to_string(),
            db,
            main,
            put,
        })
    }
}

#[async_trait]
impl Contender for DbcSide {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&mut self, round: usize) -> Result<Measures, String> {
        let e = |e: keyward_dbc::DbcError| e.to_string();
        // get
        let keys: Vec<Vec<Value>> = get_keys(round)
            .into_iter()
            .map(|k| vec![Value::I64(k)])
            .collect();
        let start = Instant::now();
        let mut found = 0usize;
        for k in &keys {
            if let Some(rec) = self.main.get(k).await.map_err(e)? {
                found += black_box(rec).len();
            }
        }
        let get_s = secs(start);
        if found != GETS * COLS {
            return Err(format!("dbc get: {found} values, expected {}", GETS * COLS));
        }
        // put
        self.db
            .execute("DELETE FROM bench_put", &[])
            .await
            .map_err(e)?;
        let recs = put_rows(round)
            .iter()
            .map(to_record)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        let results = self.put.put_many(&recs).await.map_err(e)?;
        let put_s = secs(start);
        for r in results {
            r.map_err(e)?;
        }
        if self.put.count().await.map_err(e)? != PUTS as u64 {
            return Err("dbc put: row count differs".into());
        }
        // scan
        let start = Instant::now();
        let page = self.main.scan(None, ROWS).await.map_err(e)?;
        let scan_s = secs(start);
        let values: usize = black_box(&page.records).iter().map(Vec::len).sum();
        if values != ROWS * COLS {
            return Err(format!("dbc scan: {values} values"));
        }
        drop(page);
        Ok([
            ("get_s".to_owned(), get_s),
            ("put_s".to_owned(), put_s),
            ("scan_s".to_owned(), scan_s),
            ("values_per_s".to_owned(), (ROWS * COLS) as f64 / scan_s),
        ]
        .into())
    }
}

// ---------------------------------------------------------------------------------------------
// Raw sqlx, written per backend as its docs show. The two backends differ only in the
// placeholder, the bind limit and how a timestamp is held, so one macro writes both.

macro_rules! raw_side {
    ($module:ident, $db:ty, $pool:ty, $ph:literal, $bind_limit:expr, $ts_sql:literal,
     ts_bind: $ts_bind:expr, ts_get: $ts_get:ty => $ts_back:expr) => {
        mod $module {
            use super::*;

            pub(super) struct RawSide {
                pub name: String,
                pub pool: $pool,
                pub get_sql: &'static str,
                pub scan_sql: &'static str,
                pub insert_head: String,
                pub upsert_tail: String,
            }

            fn sql_types() -> Vec<(String, &'static str)> {
                columns()
                    .into_iter()
                    .map(|(n, t)| {
                        let ty = match t {
                            FieldType::I64 if n == "id" => "BIGINT PRIMARY KEY",
                            FieldType::I64 => "BIGINT NOT NULL",
                            FieldType::Text => "TEXT NOT NULL",
                            FieldType::F64 => {
                                if $ph == "?" {
                                    "REAL NOT NULL"
                                } else {
                                    "DOUBLE PRECISION NOT NULL"
                                }
                            }
                            FieldType::Bool => "BOOLEAN NOT NULL",
                            _ => $ts_sql,
                        };
                        (n, ty)
                    })
                    .collect()
            }

            fn leak(s: String) -> &'static str {
                Box::leak(s.into_boxed_str())
            }

            fn decode(row: &<$db as sqlx::Database>::Row) -> Result<RawRow, sqlx::Error> {
                let mut i = 0;
                let mut next = || {
                    i += 1;
                    i - 1
                };
                Ok(RawRow {
                    id: row.try_get(next())?,
                    ints: {
                        let mut a = [0i64; N_INT];
                        for v in &mut a {
                            *v = row.try_get(next())?;
                        }
                        a
                    },
                    texts: {
                        let mut a: [String; N_TEXT] = Default::default();
                        for v in &mut a {
                            *v = row.try_get(next())?;
                        }
                        a
                    },
                    floats: {
                        let mut a = [0f64; N_F64];
                        for v in &mut a {
                            *v = row.try_get(next())?;
                        }
                        a
                    },
                    bools: {
                        let mut a = [false; N_BOOL];
                        for v in &mut a {
                            *v = row.try_get(next())?;
                        }
                        a
                    },
                    ts: {
                        let mut a = [0i64; N_TS];
                        for v in &mut a {
                            let t: $ts_get = row.try_get(next())?;
                            *v = $ts_back(t);
                        }
                        a
                    },
                })
            }

            impl RawSide {
                pub async fn open(name: &str, pool: $pool) -> Result<RawSide, BenchError> {
                    let types = sql_types();
                    let cols: Vec<&str> = types.iter().map(|(n, _)| n.as_str()).collect();
                    let list = cols.join(", ");
                    for t in ["raw_main", "raw_put"] {
                        sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                            .execute(&pool)
                            .await
                            .map_err(setup)?;
                        let ddl = types
                            .iter()
                            .map(|(n, ty)| format!("{n} {ty}"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        sqlx::query(AssertSqlSafe(format!("CREATE TABLE {t} ({ddl})")))
                            .execute(&pool)
                            .await
                            .map_err(setup)?;
                    }
                    let set = cols[1..]
                        .iter()
                        .map(|c| format!("{c} = excluded.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let side = RawSide {
                        name: name.to_string(),
                        get_sql: leak(format!("SELECT {list} FROM raw_main WHERE id = {}", $ph)),
                        scan_sql: leak(format!("SELECT {list} FROM raw_main ORDER BY id")),
                        insert_head: format!("({list}) "),
                        upsert_tail: format!(" ON CONFLICT (id) DO UPDATE SET {set}"),
                        pool,
                    };
                    let rows: Vec<RawRow> = (0..ROWS as i64).map(|i| gen_row(i, 0)).collect();
                    side.insert(&rows, "raw_main").await.map_err(setup)?;
                    Ok(side)
                }

                /// Upserts `rows` in one transaction, one multi-row INSERT per chunk.
                async fn insert(&self, rows: &[RawRow], table: &str) -> Result<(), sqlx::Error> {
                    let mut tx = self.pool.begin().await?;
                    for chunk in rows.chunks($bind_limit / COLS) {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                            "INSERT INTO {table} {}",
                            self.insert_head
                        ));
                        qb.push_values(chunk, |mut b, r| {
                            b.push_bind(r.id);
                            for v in &r.ints {
                                b.push_bind(*v);
                            }
                            for v in &r.texts {
                                b.push_bind(v.as_str());
                            }
                            for v in &r.floats {
                                b.push_bind(*v);
                            }
                            for v in &r.bools {
                                b.push_bind(*v);
                            }
                            for &m in &r.ts {
                                b.push_bind($ts_bind(m));
                            }
                        });
                        qb.push(&self.upsert_tail);
                        qb.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await
                }
            }

            #[async_trait]
            impl Contender for RawSide {
                fn name(&self) -> &str {
                    &self.name
                }

                async fn run(&mut self, round: usize) -> Result<Measures, String> {
                    let e = |e: sqlx::Error| e.to_string();
                    // get
                    let keys = get_keys(round);
                    let start = Instant::now();
                    let mut found = 0usize;
                    for k in keys {
                        let row = sqlx::query(self.get_sql)
                            .bind(k)
                            .fetch_optional(&self.pool)
                            .await
                            .map_err(e)?;
                        if let Some(row) = row {
                            black_box(decode(&row).map_err(e)?);
                            found += COLS;
                        }
                    }
                    let get_s = secs(start);
                    if found != GETS * COLS {
                        return Err(format!("raw get: {found} values"));
                    }
                    // put
                    sqlx::query("DELETE FROM raw_put")
                        .execute(&self.pool)
                        .await
                        .map_err(e)?;
                    let rows = put_rows(round);
                    let start = Instant::now();
                    self.insert(&rows, "raw_put").await.map_err(e)?;
                    let put_s = secs(start);
                    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM raw_put")
                        .fetch_one(&self.pool)
                        .await
                        .map_err(e)?;
                    if n != PUTS as i64 {
                        return Err(format!("raw put: {n} rows"));
                    }
                    // scan
                    let start = Instant::now();
                    let mut out = Vec::new();
                    let mut stream = sqlx::query(self.scan_sql).fetch(&self.pool);
                    while let Some(row) = stream.try_next().await.map_err(e)? {
                        out.push(decode(&row).map_err(e)?);
                    }
                    drop(stream);
                    let scan_s = secs(start);
                    if black_box(&out).len() != ROWS {
                        return Err(format!("raw scan: {} rows", out.len()));
                    }
                    Ok([
                        ("get_s".to_owned(), get_s),
                        ("put_s".to_owned(), put_s),
                        ("scan_s".to_owned(), scan_s),
                    ]
                    .into())
                }
            }
        }
    };
}

raw_side!(raw_sqlite, sqlx::Sqlite, sqlx::SqlitePool, "?", 32_766, "BIGINT NOT NULL",
    ts_bind: |m: i64| m, ts_get: i64 => |t: i64| t);
raw_side!(raw_pg, sqlx::Postgres, sqlx::PgPool, "$1", 65_535, "TIMESTAMPTZ NOT NULL",
    ts_bind: |m: i64| DateTime::<Utc>::from_timestamp_micros(m).unwrap_or_default(),
    ts_get: DateTime<Utc> => |t: DateTime<Utc>| t.timestamp_micros());

/// Figures of one backend: (get, put, scan) ratios and DBC's decoded values per second.
struct Figures {
    get: Option<f64>,
    put: Option<f64>,
    scan: Option<f64>,
    values_per_s: Option<f64>,
}

fn figures(m: &crate::harness::Medians, dbc: &str, raw: &str) -> Figures {
    let r = |measure: &str| ResultLine::ratio(get(m, dbc, measure), get(m, raw, measure));
    for side in [dbc, raw] {
        eprintln!(
            "{side}: get {:?} s, put {:?} s, scan {:?} s (medians)",
            get(m, side, "get_s"),
            get(m, side, "put_s"),
            get(m, side, "scan_s")
        );
    }
    Figures {
        get: r("get_s"),
        put: r("put_s"),
        scan: r("scan_s"),
        values_per_s: get(m, dbc, "values_per_s"),
    }
}

async fn sqlite(plan: Plan) -> Result<Figures, BenchError> {
    let dir = tempfile::tempdir()?;
    let dbc_url = format!("sqlite:{}?mode=rwc", dir.path().join("dbc.db").display());
    let raw_path = dir.path().join("raw.db");
    let mut dbc = DbcSide::open("dbc_sqlite", &dbc_url).await?;
    // The same settings DBC applies to a file database: WAL, and sqlx's defaults otherwise.
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&format!(
        "sqlite:{}?mode=rwc",
        raw_path.display()
    ))
    .map_err(setup)?
    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(opts)
        .await
        .map_err(setup)?;
    let mut raw = raw_sqlite::RawSide::open("raw_sqlite", pool).await?;
    let m = interleave(plan, &mut [&mut dbc, &mut raw]).await;
    dbc.db.close().await;
    raw.pool.close().await;
    Ok(figures(&m, "dbc_sqlite", "raw_sqlite"))
}

async fn postgres(plan: Plan) -> Result<Figures, BenchError> {
    let pg = tokio::task::spawn_blocking(crate::pg::Postgres::start)
        .await
        .map_err(setup)??;
    let url = pg.url().to_string();
    let result = async {
        let mut dbc = DbcSide::open("dbc_postgres", &url).await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect(&url)
            .await
            .map_err(setup)?;
        let mut raw = raw_pg::RawSide::open("raw_postgres", pool).await?;
        let m = interleave(plan, &mut [&mut dbc, &mut raw]).await;
        dbc.db.close().await;
        raw.pool.close().await;
        Ok(figures(&m, "dbc_postgres", "raw_postgres"))
    }
    .await;
    let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
    result
}

pub async fn run(plan: Plan) -> Result<ResultLine, BenchError> {
    // A phase lasts 40-1,000 ms, where a neighbour's burst or a WAL checkpoint moves one
    // figure by 10-20%; a round of both sides takes a few seconds, so seven rounds cost
    // little and give medians that repeat.
    let plan = if plan.quick {
        plan
    } else {
        Plan {
            rounds: plan.rounds.max(7),
            ..plan
        }
    };
    let lite = sqlite(plan).await?;
    let pg = match postgres(plan).await {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("postgresql: {e}");
            None
        }
    };
    let p = |f: fn(&Figures) -> Option<f64>| pg.as_ref().and_then(f);
    let decode = lite.values_per_s;
    if let Some(v) = p(|f| f.values_per_s) {
        eprintln!("dbc full read on PostgreSQL: {v:.0} values decoded per second");
    }
    if let Some(v) = decode {
        eprintln!("dbc full read on SQLite: {v:.0} values decoded per second (query included)");
    }
    let mut r = ResultLine::default();
    r.set("dbc_get_ratio_sqlite", lite.get)
        .set("dbc_put_ratio_sqlite", lite.put)
        .set("dbc_scan_ratio_sqlite", lite.scan)
        .set("dbc_get_ratio_postgres", p(|f| f.get))
        .set("dbc_put_ratio_postgres", p(|f| f.put))
        .set("dbc_scan_ratio_postgres", p(|f| f.scan))
        .set("decode_values_per_s", decode);
    Ok(r)
}
