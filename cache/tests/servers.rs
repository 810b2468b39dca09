//! The journal and its adoption on the server backends (the other cache tests run on SQLite):
//! an owner that acknowledged writes and never flushed dies; the next owner adopts its journal
//! through that backend's log and registry tables and serves every write; a clean stop leaves
//! the journal clean. Run with `--include-ignored` when the server's URL is set.
//!
//! Not on MongoDB: the suite's MongoDB-wire emulator was seen (2026-12-07) storing some of the
//! registry's booleans (`clean`, DBC's `_kw_dead`) as integers when a second document was
//! upserted, which DBC then refuses to read as `Bool`; a pass or a failure there says nothing
//! about real MongoDB, which no test here can reach.

mod common;

use keyward_cache::{CacheConfig, TableOptions};
use keyward_dbc::testing::{server_url, TestServer};
use keyward_dbc::{Db, Field, FieldType, TableDef, Value};
use keyward_ownership::InProcessHub;
use std::time::Duration;

fn hex_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

async fn exercise(url: &str) {
    let db = Db::connect(url).await.unwrap();
    let id = hex_id();
    let def = TableDef {
        name: format!("kwc_items_{id}"),
        fields: vec![
            Field::new("id", FieldType::I64),
            Field::new("v", FieldType::Text),
        ],
        primary_key: vec!["id".into()],
    };
    let cfg = CacheConfig {
        secret: "s".into(),
        journal_table: format!("kwc_log_{id}"),
        journal_slots: 16,
        flush_max_age_ms: 3_600_000,
        request_timeout_ms: 20_000,
        ..Default::default()
    };
    let hub = InProcessHub::new();
    let (a, ca) = common::start_node(&hub, &db, cfg.clone(), Duration::from_secs(5)).await;
    let ta = a
        .raw_table(def.clone(), TableOptions::default())
        .await
        .unwrap();
    // More commits than the ring has rows, one of them deleted again, a value with a quote and
    // non-ASCII text.
    for i in 0..40i64 {
        let v = format!("v{i} «{}» '", "é".repeat(i as usize));
        ta.put(vec![Value::I64(i), Value::Text(v)]).await.unwrap();
    }
    ta.delete(&[Value::I64(7)]).await.unwrap();
    ca.close().await.unwrap();
    a.abort();

    let (b, _cb) = common::start_node(&hub, &db, cfg.clone(), Duration::from_secs(5)).await;
    let tb = b
        .raw_table(def.clone(), TableOptions::default())
        .await
        .unwrap();
    for i in 0..40i64 {
        let got = tb.get(&[Value::I64(i)]).await.unwrap();
        let want = (i != 7).then(|| {
            vec![
                Value::I64(i),
                Value::Text(format!("v{i} «{}» '", "é".repeat(i as usize))),
            ]
        });
        assert_eq!(got.as_deref(), want.as_ref(), "key {i}");
    }
    assert!(b.stats().replays > 0, "{:?}", b.stats());
    b.shutdown().await.unwrap();
    // Everything is in the table, and the journal is clean.
    let raw = db.define_table(def).await.unwrap();
    assert_eq!(raw.count().await.unwrap(), 39);
    let reg = db
        .define_table(keyward_cache::registry_def(&cfg.journal_table))
        .await
        .unwrap();
    let page = reg.scan(None, 100).await.unwrap();
    assert!(!page.records.is_empty());
    for r in page.records {
        assert_eq!(r[3], Value::Bool(true), "registry row {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres"]
async fn journal_adoption_on_postgres() {
    let Some(url) = server_url(TestServer::Postgres) else {
        return;
    };
    exercise(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mysql"]
async fn journal_adoption_on_mariadb() {
    let Some(url) = server_url(TestServer::Mysql) else {
        return;
    };
    exercise(&url).await;
}
