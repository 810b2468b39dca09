//! `keyward-bench migrate`: `keyward migrate copy` of 1,000,000 rows (10 columns of mixed types)
//! from a SQLite file into PostgreSQL, against pgloader loading the same file into the same
//! PostgreSQL. Each round gets a fresh target database. The copy side runs what a user runs:
//! `keyward_migrate::copy::copy` with the CLI's defaults, including its end-of-run row counts
//! and checksums on both sides; pgloader runs with its defaults (it creates the table, loads
//! with COPY, then builds the primary key).

use crate::harness::{get, interleave, BenchError, Contender, Measures, Plan, ResultLine};
use crate::pg::Postgres;
use async_trait::async_trait;
use keyward_dbc::{Db, Field, FieldType, Record, TableDef, Value};
use keyward_migrate::copy::CopyOptions;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::types::Decimal;
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::time::Instant;

const ROWS: u64 = 1_000_000;
const TABLE: &str = "bench_rows";

fn def() -> TableDef {
    TableDef {
        name: TABLE.into(),
        fields: vec![
            Field::new("id", FieldType::I64),
            Field::new("name", FieldType::Text),
            Field::new("qty", FieldType::I64),
            Field::new("price", FieldType::F64),
            Field::new("active", FieldType::Bool),
            Field::new("created_at", FieldType::Timestamp),
            Field::new("amount", FieldType::Decimal),
            Field::new("payload", FieldType::Bytes).nullable(),
            Field::new("note", FieldType::Text).nullable(),
            Field::new("rating", FieldType::I64).nullable(),
        ],
        primary_key: vec!["id".into()],
    }
}

/// A cheap deterministic mix, so every run writes the same data without storing it.
fn mix(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const WORDS: [&str; 8] = [
    "alpha",
    "Grüße",
    "数据库",
    "café",
    "Ελληνικά",
    "naïve",
    "日本語テキスト",
    "plain ascii words",
];

fn row(id: u64) -> Record {
    let h = mix(id);
    let name = format!("{} #{id}", WORDS[(h % 8) as usize]);
    let ts = DateTime::<Utc>::from_timestamp_micros(
        1_600_000_000_000_000 + (h % 100_000_000_000) as i64,
    )
    .unwrap_or_default();
    vec![
        Value::I64(id as i64),
        Value::Text(name),
        Value::I64((h >> 8) as i64 % 100_000 - 50_000),
        Value::F64((h % 1_000_000) as f64 / 97.0),
        Value::Bool(h & 1 == 1),
        Value::Timestamp(ts),
        Value::Decimal(Decimal::new((h % 100_000_000) as i64, 2)),
        if h.is_multiple_of(5) {
            Value::Null
        } else {
            Value::Bytes(h.to_le_bytes()[..(h % 8 + 1) as usize].to_vec())
        },
        if h.is_multiple_of(3) {
            Value::Null
        } else {
            Value::Text(format!(
                "note {} {}",
                WORDS[((h >> 4) % 8) as usize],
                h % 1000
            ))
        },
        if h.is_multiple_of(7) {
            Value::Null
        } else {
            Value::I64((h >> 20) as i64 % 5)
        },
    ]
}

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// Builds the source file: the table is defined through DBC (so it is a record-face table
/// `copy` can read), then filled in one transaction with raw sqlx in DBC's SQLite encodings
/// (timestamps as microseconds, decimals as text; f64 as 8 big-endian bytes, the form of files
/// written before 2026-11-26, which DBC still reads), and spot-checked through DBC.
async fn make_source(path: &Path) -> Result<(), BenchError> {
    let url = format!("sqlite:{}?mode=rwc", path.display());
    let db = Db::connect(&url).await.map_err(setup)?;
    db.define_table(def()).await.map_err(setup)?;
    db.close().await;
    let mut conn = sqlx::SqliteConnection::connect(&url).await.map_err(setup)?;
    let mut tx = conn.begin().await.map_err(setup)?;
    let sql = "INSERT INTO bench_rows (id, name, qty, price, active, created_at, amount, payload, note, rating) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    for id in 0..ROWS {
        let r = row(id);
        let mut q = sqlx::query(sql);
        for v in r {
            q = match v {
                Value::Null => q.bind(None::<i64>),
                Value::Bool(b) => q.bind(b),
                Value::I64(n) => q.bind(n),
                Value::F64(f) => q.bind(f.to_be_bytes().to_vec()),
                Value::Decimal(d) => q.bind(d.to_string()),
                Value::Text(s) => q.bind(s),
                Value::Bytes(b) => q.bind(b),
                Value::Timestamp(t) => q.bind(t.timestamp_micros()),
                other => return Err(setup(format!("unexpected value {other:?}"))),
            };
        }
        q.execute(&mut *tx).await.map_err(setup)?;
    }
    tx.commit().await.map_err(setup)?;
    conn.close().await.map_err(setup)?;
    let db = Db::connect(&url).await.map_err(setup)?;
    let t = db.table(TABLE).await.map_err(setup)?;
    for id in [0, 1, 12_345, ROWS - 1] {
        let got = t.get(&[Value::I64(id as i64)]).await.map_err(setup)?;
        if got.as_ref() != Some(&row(id)) {
            return Err(setup(format!(
                "source row {id} reads back as {got:?}, not {:?}",
                row(id)
            )));
        }
    }
    let n = t.count().await.map_err(setup)?;
    db.close().await;
    if n != ROWS {
        return Err(setup(format!("source has {n} rows, not {ROWS}")));
    }
    Ok(())
}

/// The server URL with another database name.
fn db_url(base: &str, name: &str) -> String {
    match base.rsplit_once('/') {
        Some((head, _)) => format!("{head}/{name}"),
        None => format!("{base}/{name}"),
    }
}

async fn admin(base: &str, sql: &str) -> Result<(), String> {
    let mut c = sqlx::PgConnection::connect(&db_url(base, "postgres"))
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    c.close().await.map_err(|e| e.to_string())
}

async fn fresh_db(base: &str, name: &str) -> Result<String, String> {
    admin(base, &format!("DROP DATABASE IF EXISTS {name}")).await?;
    admin(base, &format!("CREATE DATABASE {name}")).await?;
    Ok(db_url(base, name))
}

async fn count_rows(url: &str) -> Result<i64, String> {
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM bench_rows")
        .fetch_one(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    c.close().await.map_err(|e| e.to_string())?;
    Ok(n)
}

fn rate(rows: u64, started: Instant) -> Measures {
    [(
        "rows_per_s".to_owned(),
        rows as f64 / started.elapsed().as_secs_f64(),
    )]
    .into()
}

struct Copy {
    source: String,
    pg: String,
}

#[async_trait]
impl Contender for Copy {
    fn name(&self) -> &str {
        "copy"
    }
    async fn run(&mut self, round: usize) -> Result<Measures, String> {
        let name = format!("kw_copy_{round}");
        let target = fresh_db(&self.pg, &name).await?;
        let opts = CopyOptions {
            tables: vec![TABLE.into()],
            ..CopyOptions::default()
        };
        let started = Instant::now();
        let rep = keyward_migrate::copy::copy(&self.source, &target, opts)
            .await
            .map_err(|e| e.to_string())?;
        let m = rate(ROWS, started);
        let t = rep.tables.first().ok_or("copy reported no table")?;
        eprintln!(
            "  copy round {round}: {:.2} s copying, {:.2} s verifying",
            t.copy_seconds, t.verify_seconds
        );
        if rep.rows_copied != ROWS || t.matches != Some(true) || t.target_rows != Some(ROWS) {
            return Err(format!("copy did not copy every row intact: {rep:?}"));
        }
        let n = count_rows(&target).await?;
        admin(&self.pg, &format!("DROP DATABASE {name}")).await?;
        if n != ROWS as i64 {
            return Err(format!("target holds {n} rows, not {ROWS}"));
        }
        Ok(m)
    }
}

struct Pgloader {
    source: PathBuf,
    pg: String,
    dir: PathBuf,
}

#[async_trait]
impl Contender for Pgloader {
    fn name(&self) -> &str {
        "pgloader"
    }
    async fn run(&mut self, round: usize) -> Result<Measures, String> {
        let name = format!("kw_pgloader_{round}");
        let target = fresh_db(&self.pg, &name).await?;
        let load = self.dir.join(format!("round{round}.load"));
        std::fs::write(
            &load,
            format!(
                "LOAD DATABASE\n  FROM sqlite://{}\n  INTO {}\n  INCLUDING ONLY TABLE NAMES LIKE '{TABLE}';\n",
                self.source.display(),
                target.replace("postgres://", "postgresql://")
            ),
        )
        .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let out = tokio::process::Command::new("pgloader")
            .arg(&load)
            .current_dir(&self.dir)
            .output()
            .await
            .map_err(|e| format!("pgloader: {e}"))?;
        let m = rate(ROWS, started);
        if !out.status.success() {
            return Err(format!(
                "pgloader failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let n = count_rows(&target).await?;
        admin(&self.pg, &format!("DROP DATABASE {name}")).await?;
        if n != ROWS as i64 {
            return Err(format!(
                "pgloader loaded {n} rows, not {ROWS}: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        Ok(m)
    }
}

pub async fn run(plan: Plan) -> Result<ResultLine, BenchError> {
    crate::anchor::ensure_package("pgloader", "pgloader")?;
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("source.db");
    let t = Instant::now();
    make_source(&src).await?;
    eprintln!(
        "source: {ROWS} rows in {} ({:.1} s)",
        src.display(),
        t.elapsed().as_secs_f64()
    );
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .map_err(setup)??;
    let mut a = Copy {
        source: format!("sqlite:{}", src.display()),
        pg: pg.url().to_owned(),
    };
    let mut b = Pgloader {
        source: src.clone(),
        pg: pg.url().to_owned(),
        dir: dir.path().to_owned(),
    };
    let medians = interleave(plan, &mut [&mut a, &mut b]).await;
    let c = get(&medians, "copy", "rows_per_s");
    let p = get(&medians, "pgloader", "rows_per_s");
    let mut r = ResultLine::default();
    r.set("copy_rows_per_s", c)
        .set("pgloader_rows_per_s", p)
        .set("copy_ratio_vs_pgloader", ResultLine::ratio(c, p));
    drop(pg);
    Ok(r)
}
