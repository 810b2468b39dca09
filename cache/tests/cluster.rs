//! Several cache nodes in one process on one in-process ownership hub, over one SQLite database.

mod common;

use keyward_cache::{
    log_def, registry_def, Cache, CacheConfig, CacheError, CacheTable, TableOptions, WriteMode,
};
use keyward_dbc::{Db, Field, FieldType, TableDef, Value};
use keyward_ownership::{Coordinator, InProcessHub, SessionConfig};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Counter {
    id: i64,
    n: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Item {
    id: String,
    v: String,
}

fn counters_def() -> TableDef {
    TableDef {
        name: "counters".into(),
        fields: vec![
            Field::new("id", FieldType::I64),
            Field::new("n", FieldType::I64),
        ],
        primary_key: vec!["id".into()],
    }
}

fn items_def(name: &str) -> TableDef {
    TableDef {
        name: name.into(),
        fields: vec![
            Field::new("id", FieldType::Text),
            Field::new("v", FieldType::Text),
        ],
        primary_key: vec!["id".into()],
    }
}

struct Node {
    cache: Cache,
    coord: Coordinator,
}

struct Cluster {
    _dir: tempfile::TempDir,
    hub: InProcessHub,
    db: Db,
    /// `journal_url` of every node (empty: the journal in the cache's database).
    journal: String,
}

fn sqlite_in(dir: &tempfile::TempDir, file: &str) -> String {
    format!("sqlite:{}?mode=rwc", dir.path().join(file).display())
}

impl Cluster {
    async fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&sqlite_in(&dir, "kw.db")).await.unwrap();
        Cluster {
            _dir: dir,
            hub: InProcessHub::new(),
            db,
            journal: String::new(),
        }
    }

    /// Nodes whose journal is in a database of its own.
    async fn with_journal_apart() -> Cluster {
        let mut c = Cluster::new().await;
        c.journal = sqlite_in(&c._dir, "journal.db");
        c
    }

    async fn node_with(&self, cfg: CacheConfig, lease: Duration) -> Node {
        let cfg = CacheConfig {
            journal_url: self.journal.clone(),
            ..cfg
        };
        let (cache, coord) = common::start_node(&self.hub, &self.db, cfg, lease).await;
        Node { cache, coord }
    }

    async fn node(&self) -> Node {
        self.node_with(cfg(), Duration::from_secs(5)).await
    }

    /// A node that flushes only when told: what it acknowledges lives in its memory and its
    /// journal only.
    async fn never_flushing_node(&self) -> Node {
        let cfg = CacheConfig {
            flush_max_age_ms: 3_600_000,
            ..cfg()
        };
        self.node_with(cfg, Duration::from_secs(5)).await
    }
}

fn cfg() -> CacheConfig {
    CacheConfig {
        secret: "s3cret".into(),
        flush_max_age_ms: 100,
        request_timeout_ms: 10_000,
        ..Default::default()
    }
}

async fn counters(n: &Node) -> CacheTable<Counter> {
    let t: CacheTable<Counter> = n
        .cache
        .table(counters_def(), TableOptions::default())
        .await
        .unwrap();
    t.register_update("incr", |cur: Option<Counter>, (id, by): (i64, i64)| {
        let mut c = cur.unwrap_or(Counter { id, n: 0 });
        c.n += by;
        Ok(Some(c))
    });
    t
}

async fn items(n: &Node, name: &str) -> CacheTable<Item> {
    n.cache
        .table(items_def(name), TableOptions::default())
        .await
        .unwrap()
}

fn k(i: i64) -> Vec<Value> {
    vec![Value::I64(i)]
}

fn sk(s: &str) -> Vec<Value> {
    vec![Value::Text(s.into())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_from_any_node() {
    let c = Cluster::new().await;
    let nodes = vec![c.node().await, c.node().await, c.node().await];
    let mut tables = Vec::new();
    for n in &nodes {
        tables.push(items(n, "items").await);
    }
    for i in 0..30 {
        let id = format!("k/{i}");
        let item = Item {
            id: id.clone(),
            v: format!("v{i}"),
        };
        tables[i % 3].put(&item).await.unwrap();
        for t in &tables {
            assert_eq!(
                t.get(&sk(&id)).await.unwrap(),
                Some(item.clone()),
                "key {id}"
            );
        }
    }
    let all: Vec<Vec<Value>> = (0..30).map(|i| sk(&format!("k/{i}"))).collect();
    let many = tables[1].get_many(&all).await.unwrap();
    assert!(many.iter().all(|x| x.is_some()));
    tables[2].delete(&sk("k/4")).await.unwrap();
    for t in &tables {
        assert_eq!(t.get(&sk("k/4")).await.unwrap(), None);
    }
    assert!(tables[0]
        .compare_and_put(
            &sk("k/5"),
            Some(&Item {
                id: "k/5".into(),
                v: "v5".into()
            }),
            Some(&Item {
                id: "k/5".into(),
                v: "w".into()
            })
        )
        .await
        .unwrap());
    assert!(!tables[1]
        .compare_and_put(
            &sk("k/5"),
            None,
            Some(&Item {
                id: "k/5".into(),
                v: "x".into()
            })
        )
        .await
        .unwrap());
    assert_eq!(tables[2].get(&sk("k/5")).await.unwrap().unwrap().v, "w");
    let forwards: u64 = nodes.iter().map(|n| n.cache.stats().forwards).sum();
    assert!(forwards > 0, "some calls must have been forwarded");
    for n in &nodes {
        n.cache.shutdown().await.unwrap();
    }
    // Everything reached the table.
    let t = c.db.define_table(items_def("items")).await.unwrap();
    assert_eq!(
        t.get(&sk("k/5")).await.unwrap(),
        Some(vec![Value::Text("k/5".into()), Value::Text("w".into())])
    );
    assert_eq!(t.get(&sk("k/4")).await.unwrap(), None);
    assert_eq!(
        t.get(&sk("k/29")).await.unwrap(),
        Some(vec![Value::Text("k/29".into()), Value::Text("v29".into())])
    );
}

fn named(prefix: &str, i: usize, v: &str) -> Item {
    Item {
        id: format!("{prefix}/{i}"),
        v: v.into(),
    }
}

/// Two nodes on `table`: A wrote keys `<prefix>/0` to `<prefix>/19` (value "a") and owns them,
/// B wrote `<prefix>/21` (value "b").
async fn two_owners(
    c: &Cluster,
    table: &str,
    prefix: &str,
) -> (Node, Node, CacheTable<Item>, CacheTable<Item>) {
    let a = c.node().await;
    let b = c.node().await;
    let ta = items(&a, table).await;
    let tb = items(&b, table).await;
    for i in 0..20 {
        ta.put(&named(prefix, i, "a")).await.unwrap();
    }
    tb.put(&named(prefix, 21, "b")).await.unwrap();
    (a, b, ta, tb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_sends_one_frame_per_owner_and_routes_the_rest_alone() {
    let c = Cluster::new().await;
    // Keys 0..20 are A's; m/20 was never written (nobody owns it, so B claims it and reads
    // None); m/21 is B's own.
    let (a, b, ta, tb) = two_owners(&c, "many", "m").await;
    let item = |i: usize, v: &str| named("m", i, v);
    let pks: Vec<Vec<Value>> = (0..22).map(|i| sk(&format!("m/{i}"))).collect();
    let expect = |over: &[(usize, &str)]| -> Vec<Option<Item>> {
        (0..22)
            .map(|i| match i {
                20 => None,
                21 => Some(item(21, "b")),
                _ => Some(item(
                    i,
                    over.iter().find(|(j, _)| *j == i).map_or("a", |(_, v)| *v),
                )),
            })
            .collect()
    };
    // First call: no owner known yet, every key is routed alone and its owner remembered.
    assert_eq!(tb.get_many(&pks).await.unwrap(), expect(&[]));
    assert_eq!(b.cache.stats().forward_batches, 0);
    // Second call: A's keys go in one frame, and see A's latest writes.
    ta.put(&item(7, "a2")).await.unwrap();
    let before = b.cache.stats();
    assert_eq!(tb.get_many(&pks).await.unwrap(), expect(&[(7, "a2")]));
    let after = b.cache.stats();
    assert_eq!(after.forward_batches - before.forward_batches, 1);
    assert_eq!(after.forwards - before.forwards, 20);
    // A key A gave up (its route at B is now stale) comes back empty from the batch and is
    // routed alone: still the right value.
    ta.invalidate(&[sk("m/3")]).await.unwrap();
    ta.put(&item(5, "a3")).await.unwrap();
    assert_eq!(
        tb.get_many(&pks).await.unwrap(),
        expect(&[(7, "a2"), (5, "a3")])
    );
    a.cache.shutdown().await.unwrap();
    b.cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_many_sends_one_frame_per_owner_and_routes_the_rest_alone() {
    let c = Cluster::new().await;
    let (a, b, ta, tb) = two_owners(&c, "pm", "p").await;
    let item = |i: usize, v: &str| named("p", i, v);
    let pks: Vec<Vec<Value>> = (0..22).map(|i| sk(&format!("p/{i}"))).collect();
    let all = |v: &str| (0..22).map(|i| item(i, v)).collect::<Vec<_>>();
    let read_both = || async {
        let x = ta.get_many(&pks).await.unwrap();
        let y = tb.get_many(&pks).await.unwrap();
        assert_eq!(x, y, "both nodes read the same");
        x
    };
    // First call from B: no owner known yet, so A's keys go alone (and are remembered); p/20,
    // owned by nobody, is claimed by B; p/21 is B's own and written here.
    tb.put_many(&all("1")).await.unwrap();
    assert_eq!(b.cache.stats().forward_batches, 0);
    assert_eq!(
        read_both().await,
        all("1").into_iter().map(Some).collect::<Vec<_>>()
    );
    // Second call: A's twenty keys in one frame.
    let before = b.cache.stats();
    tb.put_many(&all("2")).await.unwrap();
    let after = b.cache.stats();
    assert_eq!(after.forward_batches - before.forward_batches, 1);
    assert_eq!(after.forwards - before.forwards, 20);
    assert_eq!(
        read_both().await,
        all("2").into_iter().map(Some).collect::<Vec<_>>()
    );
    // A key A gave up is not held there any more: it comes back from the frame and is routed
    // alone. Of two writes to one key, the last one is made.
    ta.invalidate(&[sk("p/3")]).await.unwrap();
    let mut w = all("3");
    w.push(item(5, "3-later"));
    w.insert(0, item(6, "3-earlier"));
    tb.put_many(&w).await.unwrap();
    let got = read_both().await;
    assert_eq!(got[3], Some(item(3, "3")));
    assert_eq!(got[5], Some(item(5, "3-later")));
    assert_eq!(got[6], Some(item(6, "3")));
    // Deletes, from the node that owns neither key of the pair.
    tb.delete_many(&[sk("p/4"), sk("p/5")]).await.unwrap();
    let got = read_both().await;
    assert_eq!((got[4].clone(), got[5].clone()), (None, None));
    // Bad input is a typed error before anything is sent.
    let bad = tb
        .raw()
        .put_many(vec![vec![Value::I64(1)]])
        .await
        .unwrap_err();
    assert!(
        matches!(bad, keyward_cache::CacheError::InvalidInput { .. }),
        "{bad}"
    );
    tb.put_many(&[]).await.unwrap();
    // Everything acknowledged reaches the table.
    a.cache.shutdown().await.unwrap();
    b.cache.shutdown().await.unwrap();
    let raw = c.db.define_table(items_def("pm")).await.unwrap();
    for i in 0..22 {
        let row = raw.get(&sk(&format!("p/{i}"))).await.unwrap();
        let want = match i {
            4 | 5 => None,
            _ => Some(vec![Value::Text(format!("p/{i}")), Value::Text("3".into())]),
        };
        assert_eq!(row, want, "row p/{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_owner_loses_no_write_acknowledged_by_put_many() {
    let c = Cluster::new().await;
    let b = c.node().await;
    let d = c.node().await;
    let tb = counters(&b).await;
    let td = counters(&d).await;
    const PER: i64 = 4;
    for round in 0..5i64 {
        let a = c.never_flushing_node().await;
        let ta = counters(&a).await;
        let writers: Vec<CacheTable<Counter>> = vec![ta.clone(), tb.clone(), td.clone()];
        let ids = |w: usize| -> Vec<i64> {
            (0..PER)
                .map(|j| 10_000 + round * 100 + w as i64 * PER + j)
                .collect()
        };
        for w in 0..writers.len() {
            for id in ids(w) {
                ta.get(&k(id)).await.unwrap(); // the victim owns them all
            }
        }
        // Each writer owns its keys' values: it writes 1, 2, 3, … to all of them at once, so
        // a key's value must end between its last acknowledged and its last attempted one.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acks: Vec<Arc<AtomicI64>> = (0..writers.len()).map(|_| Arc::default()).collect();
        let last_error = Arc::new(std::sync::Mutex::new(None::<String>));
        let mut tasks = Vec::new();
        for (w, t) in writers.into_iter().enumerate() {
            let stop = stop.clone();
            let acks = acks[w].clone();
            let last_error = last_error.clone();
            let ids = ids(w);
            tasks.push(tokio::spawn(async move {
                let (mut acked, mut n) = (0i64, 0i64);
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let batch: Vec<Counter> = ids.iter().map(|id| Counter { id: *id, n }).collect();
                    match t.put_many(&batch).await {
                        Ok(()) => {
                            acked = n;
                            acks.store(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut last) = last_error.lock() {
                                *last = Some(format!("writer {w}: {e}"));
                            }
                        }
                    }
                }
                (ids, acked, n)
            }));
        }
        // The kill must land while every writer, local and forwarding, has acknowledged
        // batches behind it. A slow machine gets there late, not never: wait, bounded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while acks.iter().any(|a| a.load(Ordering::Relaxed) < 3) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: writers acknowledged only {:?} batches in 20 s; last error {:?}",
                acks.iter()
                    .map(|a| a.load(Ordering::Relaxed))
                    .collect::<Vec<_>>(),
                last_error.lock().map(|e| e.clone())
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(a.cache.stats().writes > 0, "the victim acknowledged writes");
        a.coord.close().await.unwrap();
        a.cache.abort();
        tokio::time::sleep(Duration::from_millis(150)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let (ids, acked, tried) = t.await.unwrap();
            for id in ids {
                let got = tb.get(&k(id)).await.unwrap().map_or(0, |c| c.n);
                assert!(
                    got >= acked && got <= tried,
                    "round {round} key {id}: {got} served, {acked} acknowledged, {tried} tried"
                );
            }
        }
    }
    assert!(b.cache.stats().forward_batches + d.cache.stats().forward_batches > 0);
    b.cache.shutdown().await.unwrap();
    d.cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_of_many_large_values_is_cut_into_bounded_frames() {
    let c = Cluster::new().await;
    let a = c.node().await;
    let b = c.node().await;
    let ta = items(&a, "big").await;
    let tb = items(&b, "big").await;
    // 600 keys of 6 KiB: three frames of keys (256 + 256 + 88), and about 1.5 MiB of values
    // asked in each of the first two, past the reply budget: the keys past it come back empty
    // and must still be read right, one by one.
    let item = |i: usize| Item {
        id: format!("b/{i}"),
        v: format!("{i:0>6144}"),
    };
    for i in 0..600 {
        ta.put(&item(i)).await.unwrap();
    }
    let pks: Vec<Vec<Value>> = (0..600).map(|i| sk(&format!("b/{i}"))).collect();
    // The first call learns the owner of each key; the second batches.
    tb.get_many(&pks).await.unwrap();
    let before = b.cache.stats();
    let got = tb.get_many(&pks).await.unwrap();
    let after = b.cache.stats();
    assert_eq!(got, (0..600).map(|i| Some(item(i))).collect::<Vec<_>>());
    assert_eq!(after.forward_batches - before.forward_batches, 3);
    // Every key served once per call, whether in a frame or alone after the cut.
    assert_eq!(a.cache.stats().served_for_peers, 1200);
    a.cache.shutdown().await.unwrap();
    b.cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_updated_from_many_nodes_ends_exact() {
    let c = Cluster::new().await;
    let nodes = vec![c.node().await, c.node().await, c.node().await];
    let mut tables = Vec::new();
    for n in &nodes {
        tables.push(counters(n).await);
    }
    let mut tasks = Vec::new();
    for (ni, t) in tables.iter().enumerate() {
        for w in 0..4 {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    let id = ((ni + w + i) % 2) as i64;
                    t.update(&k(id), "incr", &(id, 1i64)).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 3 * 4 * 50;
    for t in &tables {
        let a = t.get(&k(0)).await.unwrap().unwrap().n;
        let b = t.get(&k(1)).await.unwrap().unwrap().n;
        assert_eq!(a + b, total);
        assert_eq!(a, total / 2);
    }
    let writes: u64 = nodes.iter().map(|n| n.cache.stats().writes).sum();
    assert_eq!(writes, total as u64);
    for n in &nodes {
        n.cache.shutdown().await.unwrap();
    }
    let t = c.db.define_table(counters_def()).await.unwrap();
    assert_eq!(
        t.get(&k(0)).await.unwrap(),
        Some(vec![Value::I64(0), Value::I64(total / 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_bounds_memory_and_keeps_every_write() {
    let c = Cluster::new().await;
    let budget = 64 * 1024;
    let n = c
        .node_with(
            CacheConfig {
                max_bytes: budget,
                shards: 1,
                flush_max_age_ms: 60_000,
                ..cfg()
            },
            Duration::from_secs(5),
        )
        .await;
    let t = n
        .cache
        .table::<Item>(items_def("big"), TableOptions::default())
        .await
        .unwrap();
    let count = 1500;
    for i in 0..count {
        t.put(&Item {
            id: format!("{i}"),
            v: format!("{i:0>200}"),
        })
        .await
        .unwrap();
        assert!(
            n.cache.stats().bytes as u64 <= budget + 1024,
            "memory over budget: {:?}",
            n.cache.stats()
        );
    }
    let s = n.cache.stats();
    assert!(s.evictions > 0, "{s:?}");
    assert!(s.entries < count, "{s:?}");
    // Evicted dirty keys were flushed (the flush age is a minute, so only eviction did it) and
    // their ports released.
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.cache.stats().flushed_rows == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(n.cache.stats().flushed_rows > 0);
    for i in 0..count {
        let got = t.get(&sk(&format!("{i}"))).await.unwrap().unwrap();
        assert_eq!(got.v, format!("{i:0>200}"));
    }
    let ports: usize = c.hub.nodes().iter().map(|x| x.ports).sum();
    assert!(
        ports < count as usize,
        "ports of evicted keys must be released: {ports}"
    );
    n.cache.shutdown().await.unwrap();
    let raw = c.db.define_table(items_def("big")).await.unwrap();
    assert_eq!(raw.count().await.unwrap(), count as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_invalidate_pick_up_outside_writes() {
    let c = Cluster::new().await;
    let a = c.node().await;
    let b = c.node().await;
    let opts = TableOptions {
        ttl: Some(Duration::from_millis(300)),
        mode: WriteMode::WriteBack,
    };
    let ta = a
        .cache
        .table::<Item>(items_def("ttl"), opts.clone())
        .await
        .unwrap();
    let tb = b.cache.table::<Item>(items_def("ttl"), opts).await.unwrap();
    let raw = c.db.define_table(items_def("ttl")).await.unwrap();
    let rec = |v: &str| vec![Value::Text("x".into()), Value::Text(v.into())];
    ta.put(&Item {
        id: "x".into(),
        v: "v1".into(),
    })
    .await
    .unwrap();
    a.cache.flush().await.unwrap();
    assert_eq!(raw.get(&sk("x")).await.unwrap(), Some(rec("v1")));
    // Another program writes behind the cache's back.
    raw.put(&rec("v2")).await.unwrap();
    assert_eq!(
        tb.get(&sk("x")).await.unwrap().unwrap().v,
        "v1",
        "still cached"
    );
    tb.invalidate(&[sk("x")]).await.unwrap();
    assert_eq!(
        tb.get(&sk("x")).await.unwrap().unwrap().v,
        "v2",
        "invalidate reloads"
    );
    raw.put(&rec("v3")).await.unwrap();
    assert_eq!(ta.get(&sk("x")).await.unwrap().unwrap().v, "v2");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        ta.get(&sk("x")).await.unwrap().unwrap().v,
        "v3",
        "ttl reloads"
    );
    assert!(a.cache.stats().expirations + b.cache.stats().expirations > 0);
    a.cache.shutdown().await.unwrap();
    b.cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_reaches_the_table_before_returning() {
    let c = Cluster::new().await;
    let a = c.node().await;
    let b = c.node().await;
    let opts = TableOptions {
        ttl: None,
        mode: WriteMode::WriteThrough,
    };
    let ta = a
        .cache
        .table::<Item>(items_def("wt"), opts.clone())
        .await
        .unwrap();
    let tb = b.cache.table::<Item>(items_def("wt"), opts).await.unwrap();
    let raw = c.db.define_table(items_def("wt")).await.unwrap();
    ta.put(&Item {
        id: "p".into(),
        v: "1".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        raw.get(&sk("p")).await.unwrap(),
        Some(vec![Value::Text("p".into()), Value::Text("1".into())])
    );
    tb.put(&Item {
        id: "p".into(),
        v: "2".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        raw.get(&sk("p")).await.unwrap(),
        Some(vec![Value::Text("p".into()), Value::Text("2".into())])
    );
    tb.delete(&sk("p")).await.unwrap();
    assert_eq!(raw.get(&sk("p")).await.unwrap(), None);
    assert_eq!(ta.get(&sk("p")).await.unwrap(), None);
    a.cache.shutdown().await.unwrap();
    b.cache.shutdown().await.unwrap();
}

/// An owner dies mid-storm without flushing (session closed at once, tasks aborted, memory
/// dropped); every increment that was acknowledged must be served by the next owner and end up
/// in the table. Repeated with a fresh victim each round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_owner_loses_no_acknowledged_write() {
    killed_owners_lose_no_acknowledged_write(Cluster::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_owner_loses_no_acknowledged_write_with_the_journal_apart() {
    killed_owners_lose_no_acknowledged_write(Cluster::with_journal_apart().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_naming_another_journal_database_is_refused() {
    let c = Cluster::new().await;
    let a = c.node().await;
    let other = sqlite_in(&c._dir, "elsewhere.db");
    let config = CacheConfig {
        listen: "127.0.0.1:0".into(),
        journal_url: other.clone(),
        ..cfg()
    };
    let coord = c.hub.connect(Default::default()).await.unwrap();
    match Cache::start(config, coord, c.db.clone()).await {
        Err(CacheError::Config(m)) => assert!(m.contains("same journal database"), "{m}"),
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("a node with another journal database was started"),
    }
    // Nor may a node of a cluster whose journal is apart keep it in the cache's database.
    let d = Cluster::with_journal_apart().await;
    let b = d.node().await;
    let coord = d.hub.connect(Default::default()).await.unwrap();
    let config = CacheConfig {
        listen: "127.0.0.1:0".into(),
        ..cfg()
    };
    assert!(matches!(
        Cache::start(config, coord, d.db.clone()).await,
        Err(CacheError::Config(_))
    ));
    a.cache.shutdown().await.unwrap();
    b.cache.shutdown().await.unwrap();
}

async fn killed_owners_lose_no_acknowledged_write(c: Cluster) {
    let b = c.node().await;
    let d = c.node().await;
    let tb = counters(&b).await;
    let td = counters(&d).await;
    const KEYS: i64 = 12;
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS * 100).map(|_| AtomicU64::new(0)).collect());
    let attempted: Arc<Vec<AtomicU64>> =
        Arc::new((0..KEYS * 100).map(|_| AtomicU64::new(0)).collect());
    let mut victim_writes = 0;
    for round in 0..10i64 {
        // The victim never flushes on its own: everything it acknowledged lives in its memory
        // and the journal only.
        let a = c.never_flushing_node().await;
        let ta = counters(&a).await;
        let ids: Vec<i64> = (0..KEYS).map(|i| round * 100 + i).collect();
        for id in &ids {
            ta.get(&k(*id)).await.unwrap(); // the victim owns them all
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for (wi, t) in [ta.clone(), tb.clone(), td.clone(), tb.clone(), td.clone()]
            .into_iter()
            .enumerate()
        {
            let ids = ids.clone();
            let stop = stop.clone();
            let acked = acked.clone();
            let attempted = attempted.clone();
            writers.push(tokio::spawn(async move {
                let mut i = wi;
                while !stop.load(Ordering::Relaxed) {
                    let id = ids[i % ids.len()];
                    i += 1;
                    attempted[id as usize].fetch_add(1, Ordering::Relaxed);
                    if t.update(&k(id), "incr", &(id, 1i64)).await.is_ok() {
                        acked[id as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        victim_writes += a.cache.stats().writes;
        // Kill: the session ends at once (the ports are free for others) and nothing flushes.
        a.coord.close().await.unwrap();
        a.cache.abort();
        tokio::time::sleep(Duration::from_millis(150)).await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        for id in &ids {
            let got = tb.get(&k(*id)).await.unwrap().map_or(0, |c| c.n) as u64;
            let ok = acked[*id as usize].load(Ordering::Relaxed);
            let tried = attempted[*id as usize].load(Ordering::Relaxed);
            assert!(
                got >= ok,
                "round {round} key {id}: {got} served, {ok} acknowledged"
            );
            assert!(
                got <= tried,
                "round {round} key {id}: {got} served, {tried} attempted"
            );
        }
    }
    let replays = b.cache.stats().replays + d.cache.stats().replays;
    eprintln!(
        "victims acknowledged {victim_writes} writes; successors replayed {replays} journal rows"
    );
    assert!(victim_writes > 0, "the victims acknowledged writes");
    assert!(replays > 0, "new owners replayed journal entries");
    if !c.journal.is_empty() {
        // The journal was written where it was told to be.
        let jdb = Db::connect(&c.journal).await.unwrap();
        let log = jdb.define_table(log_def("kw_cache_log")).await.unwrap();
        assert!(
            log.count().await.unwrap() > 0,
            "no journal rows in the journal database"
        );
    }
    b.cache.shutdown().await.unwrap();
    d.cache.shutdown().await.unwrap();
    let raw = c.db.define_table(counters_def()).await.unwrap();
    for id in 0..KEYS * 100 {
        let ok = acked[id as usize].load(Ordering::Relaxed);
        if ok == 0 {
            continue;
        }
        let got = match raw.get(&k(id)).await.unwrap() {
            Some(r) => match r[1] {
                Value::I64(n) => n as u64,
                _ => panic!("bad row"),
            },
            None => 0,
        };
        assert!(got >= ok, "key {id}: {got} in the table, {ok} acknowledged");
    }
}

/// A paused owner whose lease ran out: its successor replays its journal, writes, flushes; the
/// old owner's later flush is refused by fencing and the table keeps the newer value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_owner_flush_is_refused() {
    let c = Cluster::new().await;
    let lease = Duration::from_millis(400);
    let a = c.node_with(cfg(), lease).await;
    let b = c.node_with(cfg(), Duration::from_secs(5)).await;
    let ta = a
        .cache
        .table::<Item>(items_def("stale"), TableOptions::default())
        .await
        .unwrap();
    let tb = b
        .cache
        .table::<Item>(items_def("stale"), TableOptions::default())
        .await
        .unwrap();
    a.cache.pause_flusher(true);
    ta.put(&Item {
        id: "s".into(),
        v: "old".into(),
    })
    .await
    .unwrap();
    c.hub.set_paused(a.coord.node_id(), true);
    tokio::time::sleep(lease * 2).await;
    // The successor serves the stale owner's acknowledged write from the journal.
    assert_eq!(tb.get(&sk("s")).await.unwrap().unwrap().v, "old");
    tb.put(&Item {
        id: "s".into(),
        v: "new".into(),
    })
    .await
    .unwrap();
    b.cache.flush().await.unwrap();
    a.cache.flush().await.unwrap();
    assert!(a.cache.stats().fenced >= 1, "{:?}", a.cache.stats());
    let raw = c.db.define_table(items_def("stale")).await.unwrap();
    assert_eq!(
        raw.get(&sk("s")).await.unwrap(),
        Some(vec![Value::Text("s".into()), Value::Text("new".into())])
    );
    c.hub.set_paused(a.coord.node_id(), false);
    assert_eq!(ta.get(&sk("s")).await.unwrap().unwrap().v, "new");
    a.cache.shutdown().await.unwrap();
    b.cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_another_secret_are_refused() {
    let c = Cluster::new().await;
    let a = c.node().await;
    let b = c
        .node_with(
            CacheConfig {
                secret: "wrong".into(),
                request_timeout_ms: 500,
                ..cfg()
            },
            Duration::from_secs(5),
        )
        .await;
    let ta = a
        .cache
        .table::<Item>(items_def("sec"), TableOptions::default())
        .await
        .unwrap();
    let tb = b
        .cache
        .table::<Item>(items_def("sec"), TableOptions::default())
        .await
        .unwrap();
    ta.put(&Item {
        id: "z".into(),
        v: "1".into(),
    })
    .await
    .unwrap();
    assert!(tb.get(&sk("z")).await.is_err());
    assert_eq!(b.cache.stats().hits, 0);
    a.cache.shutdown().await.unwrap();
    b.cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error() {
    let c = Cluster::new().await;
    let a = c.node().await;
    let t = a
        .cache
        .raw_table(items_def("bad"), TableOptions::default())
        .await
        .unwrap();
    assert!(t.get(&[Value::I64(1)]).await.is_err());
    assert!(t.put(vec![Value::Text("a".into())]).await.is_err());
    assert!(t
        .update(&sk("a"), "nope", serde_json::Value::Null)
        .await
        .is_err());
    let _ = HashMap::<u8, u8>::new();
    a.cache.shutdown().await.unwrap();
}

/// A dead owner's journal is adopted exactly once, however many nodes need it at once; an
/// adopter that dies holding the journal's port (here a bare session that claimed it) leaves the
/// adoption to the next node, and nobody serves the dead owner's keys in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopters_take_turns_and_an_adopter_that_dies_is_taken_over() {
    let c = Cluster::new().await;
    let a = c.never_flushing_node().await;
    let ta = counters(&a).await;
    const N: i64 = 100;
    for id in 0..N {
        ta.put(&Counter { id, n: 1000 + id }).await.unwrap();
    }
    let port = format!("cache/journal/{}", a.coord.node_id().as_str());
    a.coord.close().await.unwrap();
    a.cache.abort();
    // An adopter that got the journal's port and then died before finishing.
    let adopter = c
        .hub
        .connect(SessionConfig {
            lease: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .unwrap();
    let g = adopter
        .claim(&[&port])
        .await
        .unwrap()
        .pop()
        .and_then(|c| c.granted())
        .expect("the dead node's journal port is free");
    let d = c.node().await;
    let e = c.node().await;
    let (td, te) = (counters(&d).await, counters(&e).await);
    let reader = |t: CacheTable<Counter>, ids: Vec<i64>| {
        tokio::spawn(async move {
            let mut out = Vec::new();
            for id in ids {
                out.push((id, t.get(&k(id)).await.unwrap().map(|c| c.n)));
            }
            out
        })
    };
    let rd = reader(td.clone(), (0..N).step_by(2).collect());
    let re = reader(te.clone(), (1..N).step_by(2).collect());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !rd.is_finished() && !re.is_finished(),
        "a key of the dead owner was served while its journal was being adopted"
    );
    std::mem::forget(g); // the adopter's process dies: nothing is released
    adopter.close().await.unwrap();
    for r in [rd, re] {
        for (id, n) in r.await.unwrap() {
            assert_eq!(n, Some(1000 + id), "key {id}");
        }
    }
    let replays = d.cache.stats().replays + e.cache.stats().replays;
    assert_eq!(replays, N as u64, "the journal was replayed once");
    d.cache.shutdown().await.unwrap();
    e.cache.shutdown().await.unwrap();
}

/// A journal whose registry row carries a newer fencing token than the group grants (the
/// group's tokens went back, or another group shares the database) refuses the write, with an
/// error that names the cause instead of a bare "fenced out".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_fenced_by_newer_tokens_refuses_writes_and_says_why() {
    let c = Cluster::new().await;
    let reg =
        c.db.define_table(registry_def(&cfg().journal_table))
            .await
            .unwrap();
    // A clean journal left by a group whose tokens ran far ahead of this one's.
    let row = vec![
        Value::Text("ghost".into()),
        Value::Text("node-of-another-group".into()),
        Value::I64(3),
        Value::Bool(true),
        Value::I64(0),
        Value::I64(cfg().journal_slots as i64),
    ];
    reg.put_fenced(&row, i64::MAX / 2).await.unwrap();
    let a = c.node().await;
    let ta = counters(&a).await;
    let e = ta.put(&Counter { id: 1, n: 1 }).await.unwrap_err();
    assert!(
        e.to_string().contains("tokens went back"),
        "the error names the cause: {e}"
    );
    a.cache.abort();
}

/// Makes the counters table refuse (or accept again) every write of the row with id 0.
async fn refuse_id_0(c: &Cluster, refuse: bool) {
    for trigger in ["INSERT", "UPDATE"] {
        let sql = if refuse {
            format!(
                "CREATE TRIGGER stuck_{trigger} BEFORE {trigger} ON counters WHEN NEW.id = 0 \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        } else {
            format!("DROP TRIGGER stuck_{trigger}")
        };
        c.db.execute(&sql, &[]).await.unwrap();
    }
}

/// A row the table refuses fails alone: the rows flushed in the same batch are written at once,
/// not held back with it (the batch is cut up until the refused row is found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_does_not_hold_back_its_batch() {
    let c = Cluster::new().await;
    let quick = CacheConfig {
        request_timeout_ms: 1_000,
        ..cfg()
    };
    let a = c.node_with(quick, Duration::from_secs(5)).await;
    let ta = counters(&a).await;
    refuse_id_0(&c, true).await;
    a.cache.pause_flusher(true);
    for id in 0..=50 {
        ta.put(&Counter { id, n: id + 1 }).await.unwrap();
    }
    let e = a.cache.flush().await;
    assert!(e.is_err(), "the refused row cannot be flushed");
    let s = a.cache.stats();
    assert_eq!(s.flushed_rows, 50, "{s:?}");
    assert_eq!(s.dirty_keys, 1, "{s:?}");
    let t = c.db.define_table(counters_def()).await.unwrap();
    for id in 1..=50 {
        let row = t.get(&k(id)).await.unwrap();
        assert_eq!(
            row,
            Some(vec![Value::I64(id), Value::I64(id + 1)]),
            "row {id} is in the table"
        );
    }
    assert_eq!(t.get(&k(0)).await.unwrap(), None);
    refuse_id_0(&c, false).await;
    a.cache.flush().await.unwrap();
    assert_eq!(ta.get(&k(0)).await.unwrap().map(|c| c.n), Some(1));
    a.cache.shutdown().await.unwrap();
}

/// A key whose flush keeps failing pins the oldest rows of its owner's journal; the journal
/// writes its entry again at the tail and goes on (a small ring here, wrapped several times),
/// and when the owner dies, the adopter finds every write in the wrapped ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unflushable_key_does_not_stop_the_journal() {
    let c = Cluster::new().await;
    let small = CacheConfig {
        flush_max_age_ms: 10,
        journal_slots: 32,
        ..cfg()
    };
    let a = c.node_with(small, Duration::from_secs(5)).await;
    let ta = counters(&a).await;
    refuse_id_0(&c, true).await;
    ta.put(&Counter { id: 0, n: 7 }).await.unwrap();
    // One commit per write: 200 rows through a ring of 32.
    for id in 1..=200 {
        ta.put(&Counter { id, n: id }).await.unwrap();
    }
    // The flusher runs on its own clock: give it a bounded while to write the 200 other keys.
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.cache.stats().dirty_keys > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = a.cache.stats();
    assert!(s.journal_commits >= 200, "{s:?}");
    assert_eq!(s.dirty_keys, 1, "only the refused key is left: {s:?}");
    assert!(s.flushed_rows >= 200, "the other keys were flushed: {s:?}");
    refuse_id_0(&c, false).await;
    // Unflushed at the kill: key 0 and a run of rewrites that wrap the ring again.
    a.cache.pause_flusher(true);
    ta.put(&Counter { id: 0, n: 99 }).await.unwrap();
    for id in 1..=40 {
        ta.put(&Counter { id, n: 5000 + id }).await.unwrap();
    }
    a.coord.close().await.unwrap();
    a.cache.abort();
    let b = c.node().await;
    let tb = counters(&b).await;
    assert_eq!(tb.get(&k(0)).await.unwrap().map(|c| c.n), Some(99));
    for id in 1..=200 {
        let want = if id <= 40 { 5000 + id } else { id };
        assert_eq!(
            tb.get(&k(id)).await.unwrap().map(|c| c.n),
            Some(want),
            "key {id}"
        );
    }
    b.cache.shutdown().await.unwrap();
}

/// Nodes get fresh ids at each start; a journal left clean by a node that stopped is taken
/// over by the next node that writes, so the journals stay as many as the nodes writing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journals_of_stopped_nodes_are_reused() {
    let c = Cluster::new().await;
    let journals = || async {
        match c
            .db
            .query("SELECT COUNT(*) FROM kw_cache_log_journals", &[])
            .await
            .unwrap()[0][0]
        {
            Value::I64(n) => n,
            ref v => panic!("count is {v:?}"),
        }
    };
    for round in 0..3i64 {
        let n = c.node().await;
        let t = counters(&n).await;
        t.put(&Counter {
            id: round,
            n: round,
        })
        .await
        .unwrap();
        n.cache.shutdown().await.unwrap();
        assert_eq!(journals().await, 1, "round {round}");
    }
    let (a, b) = (c.node().await, c.node().await);
    let (ta, tb) = (counters(&a).await, counters(&b).await);
    ta.put(&Counter { id: 10, n: 1 }).await.unwrap();
    // Owned by a, written through b: only a's journal holds it.
    tb.put(&Counter { id: 10, n: 2 }).await.unwrap();
    tb.put(&Counter { id: 11, n: 1 }).await.unwrap();
    assert_eq!(journals().await, 2, "two nodes writing at once");
    a.cache.shutdown().await.unwrap();
    b.cache.shutdown().await.unwrap();
    let d = c.node().await;
    let td = counters(&d).await;
    for (id, n) in [(0, 0), (1, 1), (2, 2), (10, 2), (11, 1)] {
        assert_eq!(
            td.get(&k(id)).await.unwrap().map(|c| c.n),
            Some(n),
            "key {id}"
        );
    }
    d.cache.shutdown().await.unwrap();
}
