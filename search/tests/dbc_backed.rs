//! Search over DBC's record face (SQLite): documents survive in the database, a successor
//! rebuilds from it, stale owners are fenced, and an index is rebuilt from an ordinary table.

mod common;

use common::{docs_schema, ids, TestNode};
use keyward_dbc::{Db, Field, FieldType, TableDef, Value};
use keyward_ownership::InProcessHub;
use keyward_search::{reindex_from_table, DbcStore, DocRow, ReindexOptions, SearchError, Store};
use serde_json::json;
use std::sync::Arc;

async fn sqlite(dir: &std::path::Path) -> Db {
    let url = format!("sqlite:{}?mode=rwc", dir.join("kw.db").display());
    Db::connect(&url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_live_in_dbc_and_a_successor_rebuilds_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let db = sqlite(tmp.path()).await;
    let hub = InProcessHub::new();
    let store_a: Arc<dyn Store> = Arc::new(DbcStore::open(db.clone()).await.unwrap());
    let store_b: Arc<dyn Store> = Arc::new(DbcStore::open(db.clone()).await.unwrap());
    let (da, dbd) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = TestNode::start(&hub, store_a, &da).await;
    let b = TestNode::start(&hub, store_b, &dbd).await;
    a.post("/indexes", &docs_schema("docs")).await;
    a.post(
        "/indexes/docs/documents?wait=true",
        &json!([
            {"id": 1, "title": "分布式数据库系统", "tags": ["db"], "year": 2010, "published": "2010-05-01T00:00:00Z"},
            {"id": "two", "title": "数量与根据", "tags": ["x"], "year": 2011},
            {"id": 3, "title": "database internals", "tags": ["db"], "year": 2012}
        ]),
    )
    .await;
    // The catalog and the documents are in the database.
    let meta = b.get("/indexes/docs").await;
    let uid = meta["uid"].as_str().unwrap();
    let table = db
        .define_table(TableDef {
            name: format!("kw_search_{uid}_0"),
            fields: vec![
                Field::new("id", FieldType::Text),
                Field::new("seq", FieldType::I64),
                Field::new("body", FieldType::Json).nullable(),
            ],
            primary_key: vec!["id".into()],
        })
        .await
        .unwrap();
    assert_eq!(table.count().await.unwrap(), 3);
    let rec = table
        .get(&[Value::Text("two".into())])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rec[2],
        Value::Json(Box::new(
            json!({"id": "two", "title": "数量与根据", "tags": ["x"], "year": 2011})
        ))
    );

    let before = b.search("docs", json!({"q": "数据库"})).await;
    assert_eq!(ids(&before), vec![json!(1), json!("two")]);
    a.kill().await;
    let after = b.search("docs", json!({"q": "数据库"})).await;
    assert_eq!(ids(&after), ids(&before));
    let st = b.get("/indexes/docs/stats").await;
    assert_eq!(st["shards"][0]["owner"], b.coord.node_id().to_string());
    assert_eq!(st["shards"][0]["caught_up_rows"], 3);
    let r = b
        .search(
            "docs",
            json!({"ranges": {"published": {"gte": "2010-01-01T00:00:00Z"}}}),
        )
        .await;
    assert_eq!(ids(&r), vec![json!(1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_writes_are_fenced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DbcStore::open(sqlite(tmp.path()).await).await.unwrap();
    let row = |seq| DocRow {
        key: "k".into(),
        seq,
        body: Some(serde_json::Map::new()),
    };
    store
        .put_rows("kw_search_t_0", &[row(1)], 10)
        .await
        .unwrap();
    store
        .put_rows("kw_search_t_0", &[row(2)], 11)
        .await
        .unwrap();
    let e = store
        .put_rows("kw_search_t_0", &[row(3)], 10)
        .await
        .unwrap_err();
    assert!(matches!(e, SearchError::NotOwner { .. }), "{e}");
    let got = store
        .get_rows("kw_search_t_0", &["k".into()])
        .await
        .unwrap();
    assert_eq!(got[0].as_ref().unwrap().seq, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_rebuilt_from_a_dbc_table() {
    let tmp = tempfile::tempdir().unwrap();
    let db = sqlite(tmp.path()).await;
    let hub = InProcessHub::new();
    let store: Arc<dyn Store> = Arc::new(DbcStore::open(db.clone()).await.unwrap());
    let n = TestNode::start(&hub, store, &tmp.path().join("n")).await;
    let articles = db
        .define_table(TableDef {
            name: "articles".into(),
            fields: vec![
                Field::new("id", FieldType::I64),
                Field::new("title", FieldType::Text),
                Field::new("tags", FieldType::Json).nullable(),
                Field::new("year", FieldType::I64).nullable(),
                Field::new("internal", FieldType::Text).nullable(),
            ],
            primary_key: vec!["id".into()],
        })
        .await
        .unwrap();
    for i in 0..25i64 {
        articles
            .put(&vec![
                Value::I64(i),
                Value::Text(if i % 5 == 0 {
                    format!("中文数据库文章 {i}")
                } else {
                    format!("english article {i}")
                }),
                Value::Json(Box::new(json!([
                    "imported",
                    if i % 2 == 0 { "even" } else { "odd" }
                ]))),
                if i == 3 {
                    Value::Null
                } else {
                    Value::I64(2000 + i)
                },
                Value::Text("not in the index".into()),
            ])
            .await
            .unwrap();
    }
    n.post("/indexes", &docs_schema("art")).await;
    n.post(
        "/indexes/art/documents?wait=true",
        &json!([{"id": 999, "title": "stale"}]),
    )
    .await;

    let report = reindex_from_table(
        &n.service,
        "art",
        &articles,
        ReindexOptions {
            batch_size: 7,
            recreate: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.documents, 25);
    assert_eq!(report.batches, 4);
    let r = n.search("art", json!({"q": "数据库", "limit": 50})).await;
    assert_eq!(r["total"], 5);
    let r = n
        .search(
            "art",
            json!({"tags": {"all": {"tags": ["even"]}}, "limit": 50}),
        )
        .await;
    assert_eq!(r["total"], 13);
    let r = n.search("art", json!({"q": "stale"})).await;
    assert_eq!(
        r["total"], 0,
        "recreate drops documents absent from the table"
    );
    let d = n.get("/indexes/art/documents/3").await;
    assert_eq!(
        d,
        json!({"id": 3, "title": "english article 3", "tags": ["imported", "odd"]})
    );
}
