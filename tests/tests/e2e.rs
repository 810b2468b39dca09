//! Three `keyward serve` processes on loopback forming one ownership group over one database
//! (PostgreSQL when KEYWARD_TEST_POSTGRES_URL is set, else a shared SQLite file): writes through
//! the cache from all three, files through the VFS, search writes, then SIGKILL of the ownership
//! master and later of a cache owner. Checked: no acknowledged write lost, every node serves the
//! same value for every key (one owner), the killed node's keys are served again within the
//! lease plus the re-registration window, files readable from every node, search documents
//! reach the shard owner and are found from every node.

use keyward_tests::cluster::{wait_for, Cluster, LEASE_MS};
use reqwest::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos % 0xffff_ffff)
}

async fn cluster_json(http: &Client, c: &Cluster, i: usize) -> Option<Value> {
    let r = http.get(c.url(i, "/cluster.json")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// The master's ownership address once node `i` sees a master and `sessions` live sessions.
async fn wait_group(http: &Client, c: &Cluster, i: usize, sessions: u64, t: Duration) -> String {
    let got = wait_for(t, || async {
        let v = cluster_json(http, c, i).await?;
        let o = &v["ownership"];
        let master = o["master"].as_str()?.to_owned();
        (o["sessions"].as_u64()? >= sessions).then_some(master)
    })
    .await;
    match got {
        Some(m) => m,
        None => panic!(
            "node {i} saw no master with {sessions} sessions within {t:?}\n{}",
            c.logs()
        ),
    }
}

async fn put(http: &Client, c: &Cluster, i: usize, key: &str, v: &Value) -> Result<(), String> {
    let r = http
        .put(c.url(i, &format!("/kv/{key}")))
        .json(v)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ))
    }
}

async fn get(http: &Client, c: &Cluster, i: usize, key: &str) -> Result<Option<Value>, String> {
    let r = http
        .get(c.url(i, &format!("/kv/{key}")))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match r.status().as_u16() {
        200 => {
            let v: Value = r.json().await.map_err(|e| e.to_string())?;
            Ok(Some(v["value"].clone()))
        }
        404 => Ok(None),
        s => Err(format!("{s}: {}", r.text().await.unwrap_or_default())),
    }
}

/// Every acknowledged key, read from every live node, has its acknowledged value. Returns the
/// first mismatch or error, so the caller can retry while ownership settles.
async fn check_all(
    http: &Client,
    c: &Cluster,
    live: &[usize],
    acked: &BTreeMap<String, Value>,
) -> Result<(), String> {
    for (k, want) in acked {
        for &i in live {
            match get(http, c, i, k).await? {
                Some(v) if v == *want => {}
                other => return Err(format!("node {i} key {k}: got {other:?}, acked {want}")),
            }
        }
    }
    Ok(())
}

/// Retries [`check_all`] until it passes or `bound` passes; the last failure on timeout.
async fn settle(
    http: &Client,
    c: &Cluster,
    live: &[usize],
    acked: &BTreeMap<String, Value>,
    bound: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    loop {
        let last = match check_all(http, c, live, acked).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `n` keys through node `via`, all acknowledged, and records them.
async fn write_batch(
    http: &Client,
    c: &Cluster,
    via: usize,
    prefix: &str,
    n: usize,
    acked: &mut BTreeMap<String, Value>,
) {
    for j in 0..n {
        let k = format!("{prefix}-{j}");
        let v = json!({"via": via, "j": j, "text": "写入 ✓ 𝄞"});
        put(http, c, via, &k, &v)
            .await
            .unwrap_or_else(|e| panic!("put {k} via node {via}: {e}\n{}", c.logs()));
        acked.insert(k, v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_master_and_owner_kills() {
    let pg = std::env::var("KEYWARD_TEST_POSTGRES_URL").ok();
    if pg.is_none() && std::env::var("KEYWARD_REQUIRE_SERVERS").is_ok_and(|v| v == "1") {
        panic!("KEYWARD_REQUIRE_SERVERS=1 but KEYWARD_TEST_POSTGRES_URL is not set");
    }
    let mut c = Cluster::new(3, pg);
    for i in 0..3 {
        c.start(i);
    }
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let id = run_id();
    let up = Duration::from_secs(90);
    let started = Instant::now();
    // Where the time goes, for a run that fails or drags on a loaded machine.
    let phase = |what: &str| eprintln!("{:>7.2?} {what}", started.elapsed());
    let master = wait_group(&http, &c, 0, 3, up).await;
    for i in 1..3 {
        wait_group(&http, &c, i, 3, up).await;
    }
    phase("group up");

    // Writes through the cache from all three nodes; each key's first writer becomes its owner.
    let mut acked = BTreeMap::new();
    for via in 0..3 {
        write_batch(&http, &c, via, &format!("{id}-a{via}"), 20, &mut acked).await;
    }
    // A counter incremented from all three nodes at once ends exact: the owner applies each.
    let counter = format!("{id}-counter");
    let mut tasks = Vec::new();
    for via in 0..3 {
        for _ in 0..20 {
            let http = http.clone();
            let url = c.url(via, &format!("/kv/{counter}/incr"));
            tasks.push(tokio::spawn(async move {
                let r = http.post(url).json(&json!({"by": 1})).send().await;
                r.map(|r| r.status().as_u16()).unwrap_or(0)
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "an incr failed\n{}", c.logs());
    }
    acked.insert(counter.clone(), json!(60));
    phase("cache writes and counter done");
    check_all(&http, &c, &[0, 1, 2], &acked)
        .await
        .unwrap_or_else(|e| panic!("before any kill: {e}\n{}", c.logs()));

    // Files through the VFS, written on one node, read on every node.
    let file = format!("e2e/{id}/hello.txt");
    let body = "你好, Keyward ✓".repeat(1000);
    let r = http
        .put(c.url(1, &format!("/files/{file}")))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "file put: {}",
        r.text().await.unwrap_or_default()
    );
    for i in 0..3 {
        let got = http
            .get(c.url(i, &format!("/files/{file}")))
            .send()
            .await
            .unwrap();
        assert!(got.status().is_success(), "file get on node {i}");
        assert_eq!(got.text().await.unwrap(), body, "file content on node {i}");
    }

    phase("file written and read on every node");
    // Search: the index is created on one node, written through another (forwarded to the
    // shard owner), and found from all three.
    let index = format!("e2e{id}");
    let def = json!({"name": index, "id_field": "id", "fields": {
        "body": {"type": "text", "tokenizer": "mixed", "stored": true},
        "tags": {"type": "tags"}}});
    let r = http
        .post(c.url(0, "/indexes"))
        .json(&def)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "create index: {}",
        r.text().await.unwrap_or_default()
    );
    let docs = json!([
        {"id": 1, "body": "数据库连接池的配置方法", "tags": ["zh"]},
        {"id": 2, "body": "configure the connection pool", "tags": ["en"]},
    ]);
    let r = http
        .post(c.url(2, &format!("/indexes/{index}/documents?wait=true")))
        .json(&docs)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "add documents: {}",
        r.text().await.unwrap_or_default()
    );
    for i in 0..3 {
        let found = wait_for(Duration::from_secs(20), || {
            let http = http.clone();
            let url = c.url(i, &format!("/indexes/{index}/search"));
            async move {
                let r = http
                    .post(url)
                    .json(&json!({"q": "连接池"}))
                    .send()
                    .await
                    .ok()?;
                let v: Value = r.json().await.ok()?;
                (v["total"].as_u64()? >= 1).then_some(v)
            }
        })
        .await;
        let v = found.unwrap_or_else(|| panic!("search on node {i} found nothing\n{}", c.logs()));
        assert_eq!(v["hits"][0]["id"], json!(1), "{v}");
    }

    phase("search documents found on every node");
    // Kill the ownership master. Its ports lived only in its RAM: the keys it owned must be
    // served again (from the journal / the database) by a new owner within the lease plus the
    // re-registration window (plus the election, which the bound below allows for).
    let m = c
        .node_of_ownership_addr(&master)
        .unwrap_or_else(|| panic!("master {master} is not one of ours"));
    let live: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    let killed_at = Instant::now();
    c.kill(m);
    // The lease plus the re-registration window (as long as the lease), plus 4 s for the
    // election, the polling and debug builds on a loaded machine. Measured here: 3.2 s after the
    // master kill and 2.2 s after the owner kill, with 2 s leases.
    let bound = Duration::from_millis(2 * LEASE_MS) + Duration::from_secs(4);
    let ok = settle(&http, &c, &live, &acked, bound).await;
    let failover = killed_at.elapsed();
    if let Err(last) = ok {
        panic!(
            "after killing master node {m}: not every acknowledged write was served within {bound:?}: {last}\n{}",
            c.logs()
        );
    }
    eprintln!("master node {m} killed: every acknowledged key served again after {failover:?}");

    // The killed node comes back and rejoins; then a cache owner is killed while it owns keys.
    c.start(m);
    let master2 = wait_group(&http, &c, live[0], 3, up).await;
    phase("killed node back in the group");
    let m2 = c.node_of_ownership_addr(&master2).unwrap();
    let owner = (0..3).find(|&i| i != m2).unwrap();
    write_batch(&http, &c, owner, &format!("{id}-b{owner}"), 30, &mut acked).await;
    let live: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    let killed_at = Instant::now();
    c.kill(owner);
    let ok = settle(&http, &c, &live, &acked, bound).await;
    if let Err(last) = ok {
        panic!(
            "after killing cache owner node {owner}: not every acknowledged write was served within {bound:?}: {last}\n{}",
            c.logs()
        );
    }
    eprintln!(
        "cache owner node {owner} killed: every acknowledged key served again after {:?}",
        killed_at.elapsed()
    );
    // The file is still readable from the survivors.
    for &i in &live {
        phase(&format!("reading the file on node {i}"));
        let got = http
            .get(c.url(i, &format!("/files/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            got.text().await.unwrap(),
            body,
            "file after kills on node {i}"
        );
    }
    phase("done");
}
