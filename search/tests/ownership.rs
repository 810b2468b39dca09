//! Shards owned by one node, reached from another; the owner killed and a successor serving
//! from the index it rebuilt or resumed from the document table.

mod common;

use common::{docs_schema, ids, TestNode};
use keyward_ownership::InProcessHub;
use keyward_search::{MemStore, Store};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

fn batch(from: usize, to: usize) -> Value {
    Value::Array(
        (from..to)
            .map(|i| {
                json!({
                    "id": i,
                    "title": if i % 2 == 0 { format!("分布式数据库 第{i}篇") } else { format!("database note {i}") },
                    "tags": [if i % 3 == 0 { "three" } else { "other" }],
                    "year": 2000 + i as i64,
                })
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_owner_is_replaced_by_a_successor_that_rebuilds() {
    let hub = InProcessHub::new();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestNode::start(&hub, store.clone(), da.path()).await;
    let b = TestNode::start(&hub, store.clone(), db.path()).await;

    a.post("/indexes", &docs_schema("docs")).await;
    a.post("/indexes/docs/documents?wait=true", &batch(0, 40))
        .await;
    let st = b.get("/indexes/docs/stats").await;
    assert_eq!(
        st["shards"][0]["owner"],
        a.coord.node_id().to_string(),
        "{st}"
    );

    // Reads and writes at B are forwarded to A.
    let before = b
        .search(
            "docs",
            json!({"q": "数据库", "limit": 100, "facets": ["tags"]}),
        )
        .await;
    assert_eq!(before["total"], 20);
    b.post("/indexes/docs/documents?wait=true", &batch(40, 50))
        .await;
    let r = a
        .search("docs", json!({"q": "database", "limit": 100}))
        .await;
    assert_eq!(r["total"], 25);
    let owner_key = keyward_search::shard_key("docs", 0);
    let owner = b
        .coord
        .owner_of(&[&owner_key])
        .await
        .unwrap()
        .pop()
        .flatten()
        .unwrap();
    assert_eq!(owner.node, *a.coord.node_id());

    // Kill A. B answers from the index it rebuilds from the document table.
    let a_id = a.coord.node_id().clone();
    a.kill().await;
    let after = b
        .search(
            "docs",
            json!({"q": "数据库", "limit": 100, "facets": ["tags"]}),
        )
        .await;
    assert_eq!(after["total"], 25);
    let r = b
        .search("docs", json!({"q": "database", "limit": 100}))
        .await;
    assert_eq!(r["total"], 25);
    let st = b.get("/indexes/docs/stats").await;
    assert_eq!(st["shards"][0]["owner"], b.coord.node_id().to_string());
    assert_ne!(st["shards"][0]["owner"], a_id.to_string());
    assert_eq!(
        st["shards"][0]["caught_up_rows"], 50,
        "a fresh node rebuilds everything: {st}"
    );
    assert_eq!(st["documents"], 50);
    // Same answers as before the failover for the documents of that time.
    let before_ids: HashSet<String> = ids(&before).iter().map(|v| v.to_string()).collect();
    let after_ids: HashSet<String> = ids(&after).iter().map(|v| v.to_string()).collect();
    assert!(before_ids.is_subset(&after_ids));
    assert_eq!(
        after["facets"]["tags"]["three"].as_u64().unwrap()
            + after["facets"]["tags"]["other"].as_u64().unwrap(),
        25
    );

    // The successor takes writes.
    b.post("/indexes/docs/documents?wait=true", &batch(50, 52))
        .await;
    let r = b
        .search("docs", json!({"ranges": {"year": {"gte": 2050}}}))
        .await;
    assert_eq!(r["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_owner_resumes_from_its_committed_position() {
    let hub = InProcessHub::new();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let a = TestNode::start(&hub, store.clone(), da.path()).await;
    a.post("/indexes", &docs_schema("docs")).await;
    a.post("/indexes/docs/documents?wait=true", &batch(0, 30))
        .await;
    a.kill().await;

    let b = TestNode::start(&hub, store.clone(), db.path()).await;
    b.post("/indexes/docs/documents?wait=true", &batch(30, 35))
        .await;
    b.post(
        "/indexes/docs/documents/delete-batch?wait=true",
        &json!([0, 1]),
    )
    .await;
    b.kill().await;

    // A node on A's old data directory: only the rows written after its last commit are
    // applied again, deletes included.
    let a2 = TestNode::start(&hub, store.clone(), da.path()).await;
    let st = a2.get("/indexes/docs/stats").await;
    assert_eq!(st["shards"][0]["caught_up_rows"], 7, "{st}");
    assert_eq!(st["documents"], 33);
    let r = a2.search("docs", json!({"limit": 100})).await;
    assert_eq!(r["total"], 33);
    assert!(!ids(&r).contains(&json!(0)));
    assert!(ids(&r).contains(&json!(34)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_spread_over_nodes_merge_into_one_answer() {
    let hub = InProcessHub::new();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestNode::start(&hub, store.clone(), da.path()).await;
    let b = TestNode::start(&hub, store.clone(), db.path()).await;
    let mut schema = docs_schema("multi");
    schema["shards"] = json!(4);
    a.post("/indexes", &schema).await;
    // Claim shards 2 and 3 from B first, so both nodes own some.
    for s in [2, 3] {
        let (st, v) = b
            .send("GET", &format!("/_kw/indexes/multi/shards/{s}/stats"), None)
            .await;
        assert_eq!(st, 200, "{v}");
    }
    a.post("/indexes/multi/documents?wait=true", &batch(0, 80))
        .await;
    let st = a.get("/indexes/multi/stats").await;
    let owners: HashSet<String> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["owner"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(owners.len(), 2, "{st}");
    assert_eq!(st["documents"], 80);

    for n in [&a, &b] {
        let r = n
            .search(
                "multi",
                json!({"sort": [{"year": "desc"}], "limit": 5, "facets": ["tags"]}),
            )
            .await;
        assert_eq!(r["total"], 80);
        assert_eq!(
            ids(&r),
            vec![json!(79), json!(78), json!(77), json!(76), json!(75)]
        );
        assert_eq!(r["facets"]["tags"]["three"], 27);
        // Cursor pages over shards.
        let mut seen = ids(&r);
        let mut cur = r["next_cursor"].clone();
        while let Some(c) = cur.as_str() {
            let p = n.search("multi", json!({"sort": [{"year": "desc"}], "limit": 9, "facets": ["tags"], "cursor": c})).await;
            seen.extend(ids(&p));
            cur = p["next_cursor"].clone();
        }
        let years: Vec<u64> = seen.iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(years, (0..80).rev().collect::<Vec<u64>>());
        // Offset pages over shards.
        let p = n
            .search(
                "multi",
                json!({"sort": [{"year": "asc"}], "offset": 10, "limit": 3}),
            )
            .await;
        assert_eq!(ids(&p), vec![json!(10), json!(11), json!(12)]);
    }
    // A forwarded request to a node that is not the owner is refused, not bounced on.
    let st = a.get("/indexes/multi/stats").await;
    let a_owned = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["owner"] == a.coord.node_id().to_string())
        .unwrap()["shard"]
        .as_u64()
        .unwrap();
    let resp = b
        .http
        .get(b.url(&format!("/_kw/indexes/multi/shards/{a_owned}/stats")))
        .header("x-keyward-forwarded", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
}
