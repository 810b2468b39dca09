//! `keyward migrate copy` writes rows behind the cache's back; the hook the `keyward` binary
//! installs (`keyward::invalidate::copy_hook`) makes the owners of the copied keys drop them,
//! so a cache node serves the copied values, not the ones it held before.

use keyward::cache::{Cache, CacheConfig, PeerListener, TableOptions};
use keyward::dbc::{Db, Field, FieldType, TableDef, Value};
use keyward::migrate::copy::{copy_between, CopyOptions};
use keyward::ownership::{Endpoints, InProcessHub, SessionConfig};
use std::time::Duration;

const SECRET: &str = "copy-secret";

fn items() -> TableDef {
    TableDef {
        name: "items".into(),
        fields: vec![
            Field::new("id", FieldType::Text),
            Field::new("v", FieldType::Text),
        ],
        primary_key: vec!["id".into()],
    }
}

fn row(id: &str, v: &str) -> Vec<Value> {
    vec![Value::Text(id.into()), Value::Text(v.into())]
}

async fn sqlite(dir: &std::path::Path, name: &str) -> Db {
    let url = format!("sqlite:{}?mode=rwc", dir.join(name).display());
    Db::connect(&url).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_keys_are_invalidated_at_their_cache_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = sqlite(dir.path(), "src.db").await;
    let dst = sqlite(dir.path(), "dst.db").await;
    let s = src.define_table(items()).await.expect("source table");
    let d = dst.define_table(items()).await.expect("target table");
    d.put(&row("a", "old")).await.expect("put");
    s.put(&row("a", "first copy")).await.expect("put");
    s.put(&row("b", "first copy")).await.expect("put");

    // A cache node over the target, owning key "a" with the value it loaded.
    let hub = InProcessHub::new();
    let l = PeerListener::bind("127.0.0.1:0").await.expect("bind");
    let mut endpoints = Endpoints::new();
    endpoints.insert("cache".into(), l.local_addr().expect("addr").to_string());
    let coord = hub
        .connect(SessionConfig {
            endpoints,
            lease: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .expect("session");
    let cfg = CacheConfig {
        secret: SECRET.into(),
        ..Default::default()
    };
    let cache = Cache::start_on(l, cfg, coord, dst.clone())
        .await
        .expect("cache");
    let t = cache
        .raw_table(items(), TableOptions::default())
        .await
        .expect("cache table");
    let a = [Value::Text("a".into())];
    assert_eq!(
        t.get(&a).await.expect("get").as_deref(),
        Some(&row("a", "old"))
    );

    // Without the hook the cache keeps serving what it held: the reason for the hook.
    let plain = CopyOptions {
        tables: vec!["items".into()],
        ..CopyOptions::default()
    };
    let rep = copy_between(&src, &dst, &plain).await.expect("copy");
    assert_eq!(rep.rows_copied, 2);
    assert_eq!(d.get(&a).await.expect("get"), Some(row("a", "first copy")));
    assert_eq!(
        t.get(&a).await.expect("get").as_deref(),
        Some(&row("a", "old"))
    );

    // With the hook, run from another session (as `keyward migrate copy` is), the owner drops
    // the key and the next read loads the copied row.
    s.put(&row("a", "second copy")).await.expect("put");
    let migrator = hub
        .connect(SessionConfig::default())
        .await
        .expect("migrator session");
    // Copies every row again, telling owners through `session` with the cache `secret`.
    let hooked = |session, secret| CopyOptions {
        tables: vec!["items".into()],
        restart: true,
        on_copied: Some(keyward::invalidate::copy_hook(session, secret)),
        ..CopyOptions::default()
    };
    let rep = copy_between(&src, &dst, &hooked(migrator, SECRET))
        .await
        .expect("copy");
    assert_eq!(rep.rows_copied, 2);
    assert_eq!(
        t.get(&a).await.expect("get").as_deref(),
        Some(&row("a", "second copy"))
    );

    // A wrong secret is refused by the owner: the copy fails instead of leaving stale keys.
    t.get(&a).await.expect("get"); // owned again
    let wrong = hub
        .connect(SessionConfig::default())
        .await
        .expect("session");
    let err = copy_between(&src, &dst, &hooked(wrong, "not the secret"))
        .await
        .expect_err("wrong secret");
    assert!(err.to_string().contains("cache"), "{err}");
    cache.shutdown().await.expect("shutdown");
}

/// The same path through the `keyward` binary (embedded defaults: the in-process coordinator,
/// so nobody owns the copied keys), as an admin runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyward_migrate_copy_copies_through_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = sqlite(dir.path(), "src.db").await;
    let s = src.define_table(items()).await.expect("source table");
    for (id, v) in [("a", "Grüße"), ("A", "数据库"), ("b", "plain")] {
        s.put(&row(id, v)).await.expect("put");
    }
    src.close().await;
    let from = format!("sqlite:{}", dir.path().join("src.db").display());
    let to = format!("sqlite:{}?mode=rwc", dir.path().join("dst.db").display());
    let out = keyward_tests::keyward()
        .current_dir(dir.path())
        .args(["migrate", "--json", "copy", "--from", &from, "--to", &to])
        .args(["--tables", "items"])
        .output()
        .expect("run keyward");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {stdout} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"rows_copied\":3"), "{stdout}");
    let dst = sqlite(dir.path(), "dst.db").await;
    let d = dst.table("items").await.expect("copied table");
    assert_eq!(
        d.get(&[Value::Text("A".into())]).await.expect("get"),
        Some(row("A", "数据库"))
    );
    assert_eq!(d.count().await.expect("count"), 3);
}
