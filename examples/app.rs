//! An app server's use of Keyward: open a node from code (embedded defaults in a temporary
//! directory) and use its four handles, which share one ownership session:
//! DBC for plain records, the cache for hot records, the VFS for encrypted files, search for
//! Chinese and English full text.
//!
//!     cargo run --example app

use keyward::cache::{TableOptions, WriteMode};
use keyward::config::KeywardConfig;
use keyward::dbc::{Field, FieldType, TableDef, Value};
use keyward::Keyward;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Account {
    id: String,
    name: String,
    balance: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = KeywardConfig::default();
    config.node.data_dir = dir.path().to_path_buf();
    // Port 0: the node picks free ports and announces the real ones to its peers.
    config.cache.listen = "127.0.0.1:0".into();
    config.search.listen = "127.0.0.1:0".into();
    config.rebase_paths();
    let node = Keyward::builder().config(config).build().await?;
    println!(
        "node {} is up; console at http://{}/",
        node.coordinator().node_id(),
        node.http_addr().map(|a| a.to_string()).unwrap_or_default()
    );

    // DBC: one record face on every backend (here the embedded SQLite).
    let db = node.dbc()?;
    let notes = db
        .define_table(TableDef {
            name: "notes".into(),
            fields: vec![
                Field::new("id", FieldType::I64),
                Field::new("text", FieldType::Text),
            ],
            primary_key: vec!["id".into()],
        })
        .await?;
    notes
        .put(&vec![Value::I64(1), Value::Text("第一条笔记 ✓".into())])
        .await?;
    println!("dbc: {:?}", notes.get(&[Value::I64(1)]).await?);

    // Cache: records served from the owner's memory, journaled before the write returns.
    let accounts = node
        .cache()?
        .table::<Account>(
            TableDef {
                name: "accounts".into(),
                fields: vec![
                    Field::new("id", FieldType::Text),
                    Field::new("name", FieldType::Text),
                    Field::new("balance", FieldType::I64),
                ],
                primary_key: vec!["id".into()],
            },
            TableOptions {
                ttl: None,
                mode: WriteMode::WriteBack,
            },
        )
        .await?;
    accounts
        .put(&Account {
            id: "a-1".into(),
            name: "张三".into(),
            balance: 100,
        })
        .await?;
    println!(
        "cache: {:?}",
        accounts.get(&[Value::Text("a-1".into())]).await?
    );

    // VFS: the file is sealed segment by segment; only this node may write it while it owns it.
    let vfs = node.vfs()?;
    vfs.write(
        "reports/2026/summary.txt",
        "季度报告: all figures sealed".as_bytes(),
    )
    .await?;
    let back = vfs.read("reports/2026/summary.txt").await?;
    println!("vfs: {}", String::from_utf8_lossy(&back));

    // Search: a mixed-script text field and a tag field.
    let search = node.search()?;
    search
        .create_index(serde_json::from_value(json!({
            "name": "articles", "id_field": "id",
            "fields": {"body": {"type": "text", "tokenizer": "mixed", "stored": true},
                       "tags": {"type": "tags"}}
        }))?)
        .await?;
    search
        .add_documents(
            "articles",
            vec![
                json!({"id": 1, "body": "如何配置数据库连接池", "tags": ["zh", "db"]}),
                json!({"id": 2, "body": "How to size a connection pool", "tags": ["en", "db"]}),
            ],
            false,
            true,
        )
        .await?;
    let found = search
        .search(
            "articles",
            serde_json::from_value(json!({"q": "连接池", "highlight": true}))?,
        )
        .await?;
    println!(
        "search: {} hit(s), first {:?}",
        found.total,
        found.hits.first().map(|h| &h.id)
    );

    node.shutdown().await?;
    Ok(())
}
