//! The search HTTP API, through real requests to a node on 127.0.0.1.

mod common;

use common::{docs_schema, ids, TestNode};
use keyward_ownership::InProcessHub;
use keyward_search::{MemStore, Store};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

async fn node() -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let hub = InProcessHub::new();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    (TestNode::start(&hub, store, dir.path()).await, dir)
}

async fn corpus(n: &TestNode) {
    n.post("/indexes", &docs_schema("docs")).await;
    let docs = json!([
        {"id": 1, "title": "分布式数据库系统的设计与实现", "tags": ["db", "zh"], "lang": "zh", "year": 2010, "rating": 4.5, "published": "2010-05-01T00:00:00Z"},
        {"id": 2, "title": "数量与根据：仓库管理", "tags": ["zh", "ops"], "lang": "zh", "year": 2004, "rating": 3.0, "published": "2004-01-01T00:00:00Z"},
        {"id": "three", "title": "Rust async runtime internals", "tags": ["rust", "en"], "lang": "en", "year": 2021, "rating": 4.9, "published": "2021-03-01T12:00:00Z"},
        {"id": 4, "title": "PostgreSQL database tuning guide", "tags": ["db", "en"], "lang": "en", "year": 2015, "rating": 4.0},
        {"id": 5, "title": "使用 Rust 编写高性能数据库引擎", "tags": ["db", "rust", "zh", "en"], "lang": ["zh", "en"], "year": 2022, "rating": 4.7},
        {"id": 6, "title": "我们研究生命起源", "tags": ["bio", "zh"], "lang": "zh", "year": 1999},
        {"id": 7, "title": "生活中的命运", "tags": ["zh"], "lang": "zh", "year": 2001},
        {"id": 8, "title": "Databases are everywhere", "body": "Indexing many databases", "tags": ["db", "en"], "lang": "en", "year": 2018, "secret": "hidden words"},
        {"id": 9, "title": "tuning a guitar", "tags": ["music", "en"], "lang": "en", "year": 2012}
    ]);
    n.post("/indexes/docs/documents?wait=true", &docs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chinese_english_and_mixed_known_answers() {
    let (n, _d) = node().await;
    corpus(&n).await;

    // A Chinese word inside unsegmented sentences; holders of the word above holders of its
    // characters apart.
    let r = n.search("docs", json!({"q": "数据库"})).await;
    let got = ids(&r);
    assert_eq!(r["total"], 3, "{r}");
    let pos = |id: Value| got.iter().position(|x| *x == id).unwrap();
    assert!(pos(json!(1)) < pos(json!(2)), "{got:?}");
    assert!(pos(json!(5)) < pos(json!(2)), "{got:?}");
    assert_eq!(got[2], json!(2));

    let r = n.search("docs", json!({"q": "生命"})).await;
    let got = ids(&r);
    assert_eq!(got[0], json!(6), "{r}");
    assert!(got.contains(&json!(7)), "characters apart still match: {r}");

    // English with stemming: "database" finds "databases".
    let r = n.search("docs", json!({"q": "database"})).await;
    let got: HashSet<String> = ids(&r).iter().map(|v| v.to_string()).collect();
    assert_eq!(
        got,
        HashSet::from(["4".to_string(), "8".to_string()]),
        "{r}"
    );

    // Phrases keep word order.
    let r = n.search("docs", json!({"q": "\"database tuning\""})).await;
    assert_eq!(ids(&r), vec![json!(4)]);
    let r = n.search("docs", json!({"q": "\"tuning database\""})).await;
    assert_eq!(r["total"], 0);
    // A Chinese phrase matches contiguous characters only.
    let r = n.search("docs", json!({"q": "\"数据库\""})).await;
    let got: HashSet<String> = ids(&r).iter().map(|v| v.to_string()).collect();
    assert_eq!(
        got,
        HashSet::from(["1".to_string(), "5".to_string()]),
        "{r}"
    );

    // Mixed query across scripts; string ids come back as given.
    let r = n.search("docs", json!({"q": "rust runtime"})).await;
    assert_eq!(ids(&r)[0], json!("three"));
    assert!(ids(&r).contains(&json!(5)));

    // Non-stored fields are searchable but not returned.
    let r = n.search("docs", json!({"q": "hidden"})).await;
    assert_eq!(ids(&r), vec![json!(8)]);
    assert!(r["hits"][0]["doc"].get("secret").is_none(), "{r}");
    assert_eq!(r["hits"][0]["doc"]["title"], "Databases are everywhere");
    // Nor highlighted: the index does not even keep their text.
    let r = n
        .search("docs", json!({"q": "hidden", "highlight": true}))
        .await;
    assert_eq!(ids(&r), vec![json!(8)]);
    assert_eq!(r["hits"][0]["highlights"].get("secret"), None, "{r}");

    // Nothing matches a word absent from the corpus.
    let r = n.search("docs", json!({"q": "kubernetes"})).await;
    assert_eq!(r["total"], 0);
    assert_eq!(r["hits"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyphenated_words_match_joined_and_adjacent_forms() {
    let (n, _d) = node().await;
    n.post("/indexes", &docs_schema("docs")).await;
    let docs = json!([
        {"id": 1, "title": "the socket is nonblocking"},
        {"id": 2, "title": "a blocking call on a socket"},
        {"id": 3, "title": "mount the disk read-only now"},
        {"id": 4, "title": "only root may read this disk"}
    ]);
    n.post("/indexes/docs/documents?wait=true", &docs).await;

    // The joined spelling is one more alternative, and it outranks a partial match.
    let r = n.search("docs", json!({"q": "non-blocking socket"})).await;
    assert_eq!(ids(&r)[0], json!(1), "{r}");
    assert!(ids(&r).contains(&json!(2)), "{r}");

    // The parts of a compound next to each other beat the same words apart.
    let r = n.search("docs", json!({"q": "read-only disk"})).await;
    assert_eq!(ids(&r), vec![json!(3), json!(4)], "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_logic_ranges_sort_and_facets() {
    let (n, _d) = node().await;
    corpus(&n).await;
    let set = |r: &Value| -> HashSet<String> { ids(r).iter().map(|v| v.to_string()).collect() };
    let s = |xs: &[&str]| -> HashSet<String> { xs.iter().map(|x| x.to_string()).collect() };

    let r = n
        .search("docs", json!({"tags": {"all": {"tags": ["db", "zh"]}}}))
        .await;
    assert_eq!(set(&r), s(&["1", "5"]));
    let r = n
        .search("docs", json!({"tags": {"any": {"tags": ["rust", "bio"]}}}))
        .await;
    assert_eq!(set(&r), s(&["\"three\"", "5", "6"]));
    let r = n
        .search(
            "docs",
            json!({"tags": {"all": {"tags": ["db"]}, "none": {"tags": ["zh"]}}}),
        )
        .await;
    assert_eq!(set(&r), s(&["4", "8"]));
    let r = n
        .search("docs", json!({"tags": {"any": {"tags": ["db", "music"]}, "all": {"lang": ["en"]}, "none": {"tags": ["rust"]}}}))
        .await;
    assert_eq!(set(&r), s(&["4", "8", "9"]));
    // Text and tags together.
    let r = n
        .search(
            "docs",
            json!({"q": "数据库", "tags": {"all": {"tags": ["rust"]}}}),
        )
        .await;
    assert_eq!(ids(&r), vec![json!(5)]);

    // Ranges: integer, float, date; bounds inclusive and strict.
    let r = n
        .search(
            "docs",
            json!({"ranges": {"year": {"gte": 2010, "lt": 2018}}}),
        )
        .await;
    assert_eq!(set(&r), s(&["1", "4", "9"]));
    let r = n
        .search(
            "docs",
            json!({"ranges": {"year": {"gt": 2010, "lte": 2018}}}),
        )
        .await;
    assert_eq!(set(&r), s(&["4", "8", "9"]));
    let r = n
        .search("docs", json!({"ranges": {"rating": {"gte": 4.5}}}))
        .await;
    assert_eq!(set(&r), s(&["1", "\"three\"", "5"]));
    let r = n
        .search("docs", json!({"ranges": {"published": {"gte": "2005-01-01T00:00:00Z", "lt": "2021-03-01T12:00:00Z"}}}))
        .await;
    assert_eq!(set(&r), s(&["1"]));

    // Sort by field both ways; documents without the field come last.
    let r = n
        .search("docs", json!({"sort": [{"year": "desc"}], "limit": 3}))
        .await;
    assert_eq!(ids(&r), vec![json!(5), json!("three"), json!(8)]);
    let r = n
        .search("docs", json!({"sort": [{"year": "asc"}], "limit": 3}))
        .await;
    assert_eq!(ids(&r), vec![json!(6), json!(7), json!(2)]);
    let r = n.search("docs", json!({"sort": [{"rating": "asc"}]})).await;
    let got = ids(&r);
    assert_eq!(
        &got[..5],
        &[json!(2), json!(4), json!(1), json!(5), json!("three")]
    );
    assert_eq!(got.len(), 9);
    // Score sort with a field tie-breaker.
    let r = n
        .search(
            "docs",
            json!({"q": "数据库", "sort": [{"_score": "desc"}, {"year": "asc"}]}),
        )
        .await;
    assert_eq!(ids(&r)[2], json!(2));

    // Facets count over all matches, not only the page.
    let r = n
        .search(
            "docs",
            json!({"q": "", "facets": ["tags", "lang"], "limit": 1}),
        )
        .await;
    assert_eq!(r["total"], 9);
    assert_eq!(r["facets"]["tags"]["db"], 4);
    assert_eq!(r["facets"]["tags"]["zh"], 5);
    assert_eq!(r["facets"]["tags"]["en"], 5);
    assert_eq!(r["facets"]["lang"]["zh"], 5);
    let r = n
        .search("docs", json!({"q": "database", "facets": ["tags"]}))
        .await;
    assert_eq!(r["facets"]["tags"], json!({"db": 2, "en": 2}));

    // Tag values endpoint.
    let t = n.get("/indexes/docs/tags/lang").await;
    assert_eq!(t["values"], json!({"en": 5, "zh": 5}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn highlights_have_right_offsets_on_multibyte_text() {
    let (n, _d) = node().await;
    corpus(&n).await;
    let r = n
        .search(
            "docs",
            json!({"q": "数据库", "highlight": true, "limit": 3}),
        )
        .await;
    let hl: Vec<&Value> = r["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["highlights"]["title"])
        .collect();
    let by_id = |id: Value| {
        let i = ids(&r).iter().position(|x| *x == id).unwrap();
        hl[i].as_str().unwrap().to_owned()
    };
    assert_eq!(by_id(json!(1)), "分布式<em>数据库</em>系统的设计与实现");
    assert_eq!(by_id(json!(5)), "使用 Rust 编写高性能<em>数据库</em>引擎");
    assert_eq!(
        by_id(json!(2)),
        "<em>数</em>量与根<em>据</em>：仓<em>库</em>管理"
    );

    // A long text with 4-byte characters and markup: cut on character boundaries, escaped.
    let long = format!(
        "{}<b>数据库</b> 😀 {}",
        "😀文".repeat(120),
        "尾".repeat(300)
    );
    n.post(
        "/indexes/docs/documents?wait=true",
        &json!([{"id": "long", "body": long}]),
    )
    .await;
    let r = n
        .search(
            "docs",
            json!({"q": "数据库", "highlight": true, "tags": {"none": {"tags": ["zh"]}}}),
        )
        .await;
    assert_eq!(ids(&r), vec![json!("long")]);
    let h = r["hits"][0]["highlights"]["body"].as_str().unwrap();
    assert!(h.starts_with('…') && h.ends_with('…'), "{h}");
    assert!(
        h.contains("&lt;b&gt;<em>数据库</em>&lt;/b&gt; 😀 尾"),
        "{h}"
    );
    let plain = h
        .replace("<em>", "")
        .replace("</em>", "")
        .replace("&lt;", "<")
        .replace("&gt;", ">");
    assert_eq!(
        plain.chars().count(),
        200 + 2,
        "200 characters and two ellipses: {h}"
    );
    assert!(long.contains(plain.trim_matches('…')));

    // English: whole words, case kept as written.
    let r = n
        .search("docs", json!({"q": "Tuning", "highlight": true}))
        .await;
    let i = ids(&r).iter().position(|x| *x == json!(4)).unwrap();
    assert_eq!(
        r["hits"][i]["highlights"]["title"],
        "PostgreSQL database <em>tuning</em> guide"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_is_stable_under_concurrent_writes() {
    let (n, _d) = node().await;
    n.post("/indexes", &docs_schema("p")).await;
    let docs: Vec<Value> = (0..60)
        .map(|i| json!({"id": i, "title": format!("item number {i}"), "year": 1000 + (i % 7), "tags": ["x"]}))
        .collect();
    n.post("/indexes/p/documents?wait=true", &Value::Array(docs))
        .await;

    // Offset pages agree with one big page.
    let all = n
        .search(
            "p",
            json!({"q": "item", "sort": [{"year": "asc"}], "limit": 60}),
        )
        .await;
    let all_ids = ids(&all);
    assert_eq!(all_ids.len(), 60);
    let mut paged = Vec::new();
    for off in (0..60).step_by(9) {
        let r = n
            .search(
                "p",
                json!({"q": "item", "sort": [{"year": "asc"}], "limit": 9, "offset": off}),
            )
            .await;
        paged.extend(ids(&r));
    }
    assert_eq!(paged, all_ids);

    // Cursor pages, with writes between pages: every original document exactly once, in the
    // order of the first snapshot, none of the new ones.
    for sort in [json!([{"year": "desc"}]), json!([])] {
        let body = json!({"q": "item", "sort": sort, "limit": 7});
        let first = n.search("p", body.clone()).await;
        let mut seen = ids(&first);
        let mut cursor = first["next_cursor"].clone();
        let mut round = 0;
        while let Some(c) = cursor.as_str() {
            round += 1;
            n.post(
                "/indexes/p/documents?wait=true",
                &json!([{"id": format!("new-{round}-{}", sort.to_string().len()), "title": "item item item new", "year": 999}]),
            )
            .await;
            let mut b = body.clone();
            b["cursor"] = json!(c);
            let r = n.search("p", b).await;
            assert_eq!(r["total"], 60, "the page comes from the cursor's snapshot");
            seen.extend(ids(&r));
            cursor = r["next_cursor"].clone();
            assert!(round < 20);
        }
        assert_eq!(seen.len(), 60, "{seen:?}");
        let uniq: HashSet<String> = seen.iter().map(|v| v.to_string()).collect();
        assert_eq!(uniq.len(), 60);
        assert!(seen.iter().all(|v| v.is_u64()));
        // Clean the new ones for the next round.
        let (_, r) = n
            .send(
                "POST",
                "/indexes/p/search",
                Some(&json!({"ranges": {"year": {"lt": 1000}}, "limit": 100}).to_string()),
            )
            .await;
        let new_ids: Vec<Value> = ids(&r);
        n.post(
            "/indexes/p/documents/delete-batch?wait=true",
            &Value::Array(new_ids),
        )
        .await;
    }

    // A cursor from another query is refused.
    let r = n.search("p", json!({"q": "item", "limit": 5})).await;
    let c = r["next_cursor"].as_str().unwrap().to_owned();
    let (s, e) = n
        .send(
            "POST",
            "/indexes/p/search",
            Some(&json!({"q": "number", "limit": 5, "cursor": c}).to_string()),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["code"], "invalid_cursor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replace_update_delete_and_stats() {
    let (n, _d) = node().await;
    corpus(&n).await;
    // Replace drops fields not given again.
    n.post(
        "/indexes/docs/documents?wait=true",
        &json!([{"id": 9, "title": "tuning a piano"}]),
    )
    .await;
    let d = n.get("/indexes/docs/documents/9").await;
    assert_eq!(d, json!({"id": 9, "title": "tuning a piano"}));
    // Partial update merges.
    let (s, _) = n
        .send(
            "PUT",
            "/indexes/docs/documents?wait=true",
            Some(&json!([{"id": 9, "year": 2020}]).to_string()),
        )
        .await;
    assert_eq!(s, 200);
    let d = n.get("/indexes/docs/documents/9").await;
    assert_eq!(d, json!({"id": 9, "title": "tuning a piano", "year": 2020}));
    let r = n
        .search(
            "docs",
            json!({"q": "piano", "ranges": {"year": {"gte": 2020}}}),
        )
        .await;
    assert_eq!(ids(&r), vec![json!(9)]);
    // Delete one, then it is gone from search and from the store.
    let (s, _) = n
        .send("DELETE", "/indexes/docs/documents/9?wait=true", None)
        .await;
    assert_eq!(s, 200);
    let (s, e) = n.send("GET", "/indexes/docs/documents/9", None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("document_not_found"))
    );
    let (s, e) = n.send("DELETE", "/indexes/docs/documents/9", None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("document_not_found"))
    );
    let r = n.search("docs", json!({"q": "piano"})).await;
    assert_eq!(r["total"], 0);
    // Batch delete.
    n.post(
        "/indexes/docs/documents/delete-batch?wait=true",
        &json!([1, "three"]),
    )
    .await;
    let r = n.search("docs", json!({})).await;
    assert_eq!(r["total"], 6);

    let st = n.get("/indexes/docs/stats").await;
    assert_eq!(st["documents"], 6, "{st}");
    assert_eq!(st["shards"][0]["owner"], n.coord.node_id().to_string());
    assert!(st["shards"][0]["visible_seq"].as_i64().unwrap() >= 13);

    // Without ?wait, a write becomes searchable within the commit interval (50 ms here).
    n.post(
        "/indexes/docs/documents",
        &json!([{"id": 100, "title": "eventually visible"}]),
    )
    .await;
    let mut found = false;
    for _ in 0..100 {
        if n.search("docs", json!({"q": "eventually"})).await["total"] == 1 {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(found);

    // Index list and delete.
    let l = n.get("/indexes").await;
    assert_eq!(l["indexes"][0]["def"]["name"], "docs");
    let (s, _) = n.send("DELETE", "/indexes/docs", None).await;
    assert_eq!(s, 200);
    let (s, e) = n.send("POST", "/indexes/docs/search", Some("{}")).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("index_not_found"))
    );
    // A new index of the same name starts empty.
    n.post("/indexes", &docs_schema("docs")).await;
    let r = n.search("docs", json!({})).await;
    assert_eq!(r["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_deleted_and_made_again_is_served_at_once() {
    let (n, _d) = node().await;
    // Deleting an index closes its shard and releases the shard's port in the background;
    // a new index of the same name must wait that release out, not answer 503.
    for i in 0..30 {
        n.post("/indexes", &docs_schema("again")).await;
        n.post(
            "/indexes/again/documents?wait=true",
            &json!([{"id": i, "title": "again and again"}]),
        )
        .await;
        assert_eq!(n.search("again", json!({"q": "again"})).await["total"], 1);
        let (s, _) = n.send("DELETE", "/indexes/again", None).await;
        assert_eq!(s, 200, "round {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_4xx_with_the_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let hub = InProcessHub::new();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let n = TestNode::start_with(&hub, store, dir.path(), |c| c.max_body_bytes = 64 * 1024).await;
    corpus(&n).await;
    let big = format!("[{{\"id\": 1, \"title\": \"{}\"}}]", "x".repeat(100 * 1024));
    let long_q = json!({"q": "字".repeat(400)}).to_string();
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/indexes/docs/search",
            "{\"q\": ".into(),
            400,
            "bad_json",
        ),
        (
            "POST",
            "/indexes/docs/search",
            "not json".into(),
            400,
            "bad_json",
        ),
        ("POST", "/indexes/docs/search", "".into(), 400, "bad_json"),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"query": "x"}"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"limit": "ten"}"#.into(),
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"limit": -1}"#.into(),
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"sort": [{"year": "up"}]}"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"sort": [{"nope": "asc"}]}"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"sort": [{"title": "asc"}]}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"facets": ["nope"]}"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"tags": {"all": {"nope": ["a"]}}}"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"tags": {"some": {"tags": ["a"]}}}"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"ranges": {"year": {"gte": "x"}}}"#.into(),
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"ranges": {"year": {"from": 1}}}"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"ranges": {"published": {"gte": "yesterday"}}}"#.into(),
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/indexes/docs/search",
            long_q,
            400,
            "query_too_long",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"offset": 20000}"#.into(),
            400,
            "page_too_deep",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"offset": 18446744073709551615, "limit": 10}"#.into(),
            400,
            "page_too_deep",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"limit": 5000}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"cursor": "zz"}"#.into(),
            400,
            "invalid_cursor",
        ),
        (
            "POST",
            "/indexes/docs/search",
            r#"{"cursor": "7b7d"}"#.into(),
            400,
            "invalid_cursor",
        ),
        (
            "POST",
            "/indexes/nope/search",
            "{}".into(),
            404,
            "index_not_found",
        ),
        (
            "POST",
            "/indexes/docs/documents",
            r#"{"id": 1}"#.into(),
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/indexes/docs/documents",
            r#"[{"id": 1, "color": "red"}]"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes/docs/documents",
            r#"[{"id": 1, "year": "2010"}]"#.into(),
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/indexes/docs/documents",
            r#"[{"id": 1, "year": 1.5}]"#.into(),
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/indexes/docs/documents",
            r#"[{"id": 1, "tags": [1, 2]}]"#.into(),
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/indexes/docs/documents",
            r#"[{"id": -1}]"#.into(),
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/indexes/docs/documents",
            r#"[{"id": {"a": 1}}]"#.into(),
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/indexes/docs/documents",
            r#"[{"title": "no id"}]"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/indexes/docs/documents",
            r#"[{"id": ""}]"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/indexes/docs/documents?wait=maybe",
            r#"[]"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/indexes/docs/documents?colour=1",
            r#"[]"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes/docs/documents",
            big,
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/indexes",
            r#"{"name": "Bad Name", "fields": {}}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/indexes",
            r#"{"name": "x", "fields": {"a": {"type": "blob"}}}"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes",
            r#"{"name": "x", "fields": {"a": {"type": "text", "tokenizer": "klingon"}}}"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes",
            r#"{"name": "x", "fields": {}, "extra": 1}"#.into(),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/indexes",
            r#"{"name": "x", "fields": {"_a": {"type": "i64"}}}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/indexes",
            r#"{"name": "x", "fields": {"a": {"type": "i64"}}, "shards": 0}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/indexes",
            docs_schema("docs").to_string(),
            409,
            "index_exists",
        ),
        (
            "GET",
            "/no/such/route",
            String::new(),
            404,
            "route_not_found",
        ),
        (
            "PATCH",
            "/indexes/docs",
            "{}".into(),
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let b = (!body.is_empty() || method == "POST").then_some(body.as_str());
        let (s, v) = n.send(method, path, b).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body:.80} -> {v}"
        );
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    // Nothing of the refused writes was stored.
    let r = n.search("docs", json!({})).await;
    assert_eq!(r["total"], 9);
    let d = n.get("/indexes/docs/documents/1").await;
    assert_eq!(d["year"], 2010);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_read_and_write() {
    let dir = tempfile::tempdir().unwrap();
    let hub = InProcessHub::new();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let n = TestNode::start_with(&hub, store, dir.path(), |c| {
        c.read_keys = vec!["reader-key".into()];
        c.write_keys = vec!["writer-key".into()];
    })
    .await;
    let schema = docs_schema("k").to_string();
    let (s, v) = n.send("POST", "/indexes", Some(&schema)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, _) = n
        .send_with("POST", "/indexes", Some(&schema), Some("wrong"))
        .await;
    assert_eq!(s, 401);
    let (s, v) = n
        .send_with("POST", "/indexes", Some(&schema), Some("reader-key"))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, _) = n
        .send_with("POST", "/indexes", Some(&schema), Some("writer-key"))
        .await;
    assert_eq!(s, 201);
    let (s, _) = n
        .send_with("POST", "/indexes/k/search", Some("{}"), Some("reader-key"))
        .await;
    assert_eq!(s, 200);
    let (s, _) = n
        .send_with("GET", "/indexes/k/stats", None, Some("writer-key"))
        .await;
    assert_eq!(s, 200);
    let (s, _) = n
        .send_with(
            "POST",
            "/indexes/k/documents",
            Some(r#"[{"id": 1}]"#),
            Some("reader-key"),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = n.send("GET", "/health", None).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_service_refuses_non_loopback_clients() {
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;
    let (n, _d) = node().await;
    for (addr, want) in [
        ("10.1.2.3:5000", 403u16),
        ("127.0.0.1:5000", 200),
        ("[::1]:5000", 200),
    ] {
        let mut req = axum::http::Request::builder()
            .uri("/indexes")
            .body(axum::body::Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(addr.parse::<std::net::SocketAddr>().unwrap()));
        let resp = keyward_search::router(n.service.clone())
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want, "{addr}");
    }
    // Without a client address at all, refuse (fail closed).
    let req = axum::http::Request::builder()
        .uri("/indexes")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = keyward_search::router(n.service.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_exactly_the_served_routes() {
    let (n, _d) = node().await;
    corpus(&n).await;
    let doc = n.get("/openapi.json").await;
    let paths = doc["paths"].as_object().unwrap();
    let mut count = 0;
    for (path, ops) in paths {
        for (method, _) in ops.as_object().unwrap() {
            count += 1;
            // Deletes hit their own targets, so the other calls still find theirs.
            let (name, id) = match (method.as_str(), path.as_str()) {
                ("delete", "/indexes/{name}") => ("other", "4"),
                ("delete", _) => ("docs", "5"),
                _ => ("docs", "4"),
            };
            let p = path
                .replace("{name}", name)
                .replace("{id}", id)
                .replace("{field}", "tags")
                .replace("{shard}", "0");
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/indexes") => Some(docs_schema("other").to_string()),
                ("post", p) if p.ends_with("/write") => Some("[]".to_string()),
                ("post", p) if p.ends_with("/shards/{shard}/search") => Some(
                    json!({"req": {}, "k": 1, "skip": 0, "after": null, "snapshot": null, "keep_snapshot": false}).to_string(),
                ),
                ("post" | "put", _) => Some("[]".to_string()),
                _ => None,
            };
            let body = if path == "/indexes/{name}/search" {
                Some("{}".to_string())
            } else {
                body
            };
            let (s, v) = n.send(&method.to_uppercase(), &p, body.as_deref()).await;
            assert!(s < 300, "{method} {path} -> {s} {v}");
        }
    }
    assert_eq!(count, keyward_search::ROUTES.len());
    // A method the description does not list is not served.
    let (s, _) = n.send("PUT", "/indexes/docs/search", Some("{}")).await;
    assert_eq!(s, 405);
}
