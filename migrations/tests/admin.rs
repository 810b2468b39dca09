//! `vfs rekey` and `search reindex` through the `keyward-migrate` binary: each interrupted
//! part-way (the hidden stop hooks), resumed, and checked end to end.

use keyward_dbc::{Db, Field, FieldType, TableDef, Value};
use keyward_ownership::{InProcessHub, SessionConfig};
use keyward_search::{IndexDefinition, SearchConfig, SearchService};
use keyward_vfs::{KeyId, Keyring, Vfs, VfsConfig};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyward-migrate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYWARD_") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run(args: &[&str]) -> (i32, serde_json::Value, Output) {
    let out = bin().args(args).output().expect("run keyward-migrate");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): stdout {text:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json, out)
}

async fn coord() -> keyward_ownership::Coordinator {
    InProcessHub::new()
        .connect(SessionConfig::default())
        .await
        .unwrap()
}

fn content(i: usize) -> Vec<u8> {
    // Sizes from empty to several segments, with content that differs per file.
    let len = [0usize, 1, 100, 4096, 65_535, 65_536, 200_003][i % 7] + i;
    (0..len).map(|b| ((b * 31 + i * 7) % 251) as u8).collect()
}

async fn read_all_with(cfg: &VfsConfig, ring: Keyring, files: &[String]) {
    let backend =
        std::sync::Arc::new(keyward_vfs::LocalBackend::new(&cfg.root, &cfg.volume).unwrap());
    let vfs = Vfs::new(
        &cfg.volume,
        backend,
        ring.clone(),
        keyward_vfs::VfsOptions::default(),
        coord().await,
    )
    .unwrap();
    for (i, f) in files.iter().enumerate() {
        let data = vfs.read(f).await.unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(data, content(i), "{f} differs after rekey");
        assert_eq!(vfs.stat(f).await.unwrap().key_id, ring.current_id(), "{f}");
    }
}

/// The keyring holding only its current key: what proves that no file needs an older one.
fn only_current(path: &Path) -> (Keyring, Vec<KeyId>) {
    let mut ring = Keyring::load(path, None).unwrap();
    let old: Vec<KeyId> = ring
        .ids()
        .into_iter()
        .filter(|k| *k != ring.current_id())
        .collect();
    for k in &old {
        ring.remove(*k).unwrap();
    }
    (ring, old)
}

#[tokio::test(flavor = "multi_thread")]
async fn vfs_rekey_interrupted_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("vfs");
    let cfg = VfsConfig {
        volume: "vol1".into(),
        root: root.clone(),
        ..VfsConfig::default()
    };
    Keyring::generate()
        .unwrap()
        .save(&cfg.key_file_path(), None)
        .unwrap();
    let vfs = Vfs::from_config(&cfg, coord().await).await.unwrap();
    let files: Vec<String> = (0..12)
        .map(|i| format!("d{}/file-{i:02}.bin", i % 3))
        .collect();
    for (i, f) in files.iter().enumerate() {
        vfs.write(f, &content(i)).await.unwrap();
    }
    drop(vfs);
    let first_key = Keyring::load(&cfg.key_file_path(), None)
        .unwrap()
        .current_id();
    let root_s = root.display().to_string();
    let base = [
        "--json", "vfs", "rekey", "--root", &root_s, "--volume", "vol1",
    ];

    // A dry run writes nothing and counts every file as needing the (still current) key: none.
    let (code, j, _) = run(&[&base[..], &["--dry-run"]].concat());
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["result"]["unchanged"], 12, "{j}");

    // Rotate, stop after 5 files: interrupted (130), checkpoint kept.
    let (code, j, _) = run(&[&base[..], &["--rotate", "--stop-after-files", "5"]].concat());
    assert_eq!(code, 130, "{j}");
    assert_eq!(j["error"]["kind"], "interrupted", "{j}");
    let ring = Keyring::load(&cfg.key_file_path(), None).unwrap();
    let new_key = ring.current_id();
    assert_ne!(new_key, first_key);
    assert!(root.join(".rekey-vol1.json").exists(), "checkpoint kept");

    // Resume (with --rotate again: a resumed run keeps its key and does not rotate).
    let (code, j, _) = run(&[&base[..], &["--rotate"]].concat());
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["result"]["resumed_from"], 5, "{j}");
    assert_eq!(j["result"]["files_done"], 12, "{j}");
    assert_eq!(j["result"]["rewrapped"], 12, "{j}");
    assert_eq!(j["result"]["rotated"], serde_json::Value::Null, "{j}");
    assert_eq!(
        Keyring::load(&cfg.key_file_path(), None)
            .unwrap()
            .current_id(),
        new_key
    );
    let (ring, old) = only_current(&cfg.key_file_path());
    assert_eq!(old, vec![first_key]);
    read_all_with(&cfg, ring, &files).await;

    // --reencrypt under yet another key, interrupted after 3 files, then resumed.
    let (code, j, _) = run(&[
        &base[..],
        &["--rotate", "--reencrypt", "--stop-after-files", "3"],
    ]
    .concat());
    assert_eq!(code, 130, "{j}");
    // A resumed run with other settings is refused rather than mixing two runs.
    let (code, j, _) = run(&base);
    assert_eq!(code, 3, "{j}");
    let (code, j, _) = run(&[&base[..], &["--reencrypt"]].concat());
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["result"]["resumed_from"], 3, "{j}");
    assert_eq!(j["result"]["reencrypted"], 12, "{j}");
    let (ring, old) = only_current(&cfg.key_file_path());
    assert_eq!(old.len(), 2);
    read_all_with(&cfg, ring, &files).await;
}

const ROWS: usize = 2_345;

fn articles() -> TableDef {
    TableDef {
        name: "articles".into(),
        fields: vec![
            Field::new("id", FieldType::Text),
            Field::new("title", FieldType::Text),
            Field::new("views", FieldType::I64).nullable(),
            Field::new("secret", FieldType::Bytes).nullable(),
        ],
        primary_key: vec!["id".into()],
    }
}

async fn service(store: &str, data: &Path) -> (SearchService, Db) {
    let db = Db::connect(store).await.unwrap();
    let s = SearchService::with_db(
        SearchConfig {
            data_dir: data.to_owned(),
            ..SearchConfig::default()
        },
        db.clone(),
        coord().await,
    )
    .await
    .unwrap();
    (s, db)
}

#[tokio::test(flavor = "multi_thread")]
async fn search_reindex_interrupted_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let src_url = format!("sqlite:{}?mode=rwc", dir.path().join("src.db").display());
    let store_url = format!("sqlite:{}?mode=rwc", dir.path().join("store.db").display());
    let data = dir.path().join("search");
    let db = Db::connect(&src_url).await.unwrap();
    let t = db.define_table(articles()).await.unwrap();
    let rows: Vec<Vec<Value>> = (0..ROWS)
        .map(|i| {
            vec![
                Value::Text(format!("a-{i:05}")),
                Value::Text(format!(
                    "article number {i} about {}",
                    ["rust", "数据库", "café"][i % 3]
                )),
                if i % 4 == 0 {
                    Value::Null
                } else {
                    Value::I64(i as i64)
                },
                Value::Bytes(vec![1, 2, 3]),
            ]
        })
        .collect();
    for chunk in rows.chunks(500) {
        for r in t.put_many(chunk).await.unwrap() {
            r.unwrap();
        }
    }
    db.close().await;
    {
        let (s, db) = service(&store_url, &data).await;
        let def: IndexDefinition = serde_json::from_value(serde_json::json!({
            "name": "articles",
            "id_field": "id",
            "fields": {"title": {"type": "text"}, "views": {"type": "i64"}}
        }))
        .unwrap();
        s.create_index(def).await.unwrap();
        // A document the table does not have: a reindex (not --keep) must drop it.
        s.add_documents(
            "articles",
            vec![serde_json::json!({"id": "stale", "title": "gone"})],
            false,
            true,
        )
        .await
        .unwrap();
        s.shutdown();
        db.close().await;
    }
    let data_s = data.display().to_string();
    let base = [
        "--json",
        "search",
        "reindex",
        "articles",
        "--from",
        &src_url,
        "--table",
        "articles",
        "--store",
        &store_url,
        "--data-dir",
        &data_s,
        "--batch-size",
        "200",
    ];
    let (code, j, _) = run(&[&base[..], &["--stop-after-rows", "1000"]].concat());
    assert_eq!(code, 130, "{j}");
    let (code, j, _) = run(&base);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["result"]["resumed_from"], 1000, "{j}");
    assert_eq!(j["result"]["indexed_this_run"], 1345, "{j}");
    assert_eq!(j["result"]["documents"], ROWS, "{j}");
    // An unknown index is "not found" (5).
    let mut other = base.to_vec();
    other[3] = "nope";
    let (code, j, _) = run(&other);
    assert_eq!(code, 5, "{j}");

    let (s, db) = service(&store_url, &data).await;
    assert_eq!(s.stats("articles").await.unwrap().documents, ROWS as u64);
    for i in [0usize, 999, 1000, ROWS - 1] {
        let d = s
            .get_document("articles", &format!("a-{i:05}"))
            .await
            .unwrap();
        assert_eq!(
            d["title"],
            serde_json::json!(format!(
                "article number {i} about {}",
                ["rust", "数据库", "café"][i % 3]
            )),
            "{d}"
        );
    }
    assert!(s.get_document("articles", "stale").await.is_err());
    s.shutdown();
    db.close().await;
}
