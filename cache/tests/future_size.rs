//! A call's future is moved whole into a task cell for every request a peer forwards: it must
//! stay small, so rare paths (claims, loads, write-through, invalidation, forwarding) are
//! boxed. 10 KB futures cost a fifth of the owner's time under forwarded puts (2026-12-07).

use keyward_cache::{Cache, CacheConfig, TableOptions};
use keyward_dbc::{Db, Field, FieldType, TableDef, Value};
use keyward_ownership::{InProcessHub, SessionConfig};

#[tokio::test]
async fn the_common_calls_are_small_futures() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("f.db").display());
    let db = Db::connect(&url).await.unwrap();
    let hub = InProcessHub::new();
    let coord = hub.connect(SessionConfig::default()).await.unwrap();
    let cfg = CacheConfig {
        listen: "127.0.0.1:0".into(),
        ..Default::default()
    };
    let cache = Cache::start(cfg, coord, db).await.unwrap();
    let def = TableDef {
        name: "t".into(),
        fields: vec![
            Field::new("id", FieldType::I64),
            Field::new("v", FieldType::Text),
        ],
        primary_key: vec!["id".into()],
    };
    let t = cache.raw_table(def, TableOptions::default()).await.unwrap();
    let put = t.put(vec![Value::I64(1), Value::Text("x".into())]);
    let put_size = std::mem::size_of_val(&put);
    drop(put);
    let key = [Value::I64(1)];
    let get = t.get(&key);
    let get_size = std::mem::size_of_val(&get);
    drop(get);
    assert!(put_size <= 2048, "put future: {put_size} bytes");
    assert!(get_size <= 2048, "get future: {get_size} bytes");
    cache.shutdown().await.unwrap();
}
