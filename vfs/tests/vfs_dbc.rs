//! The DBC blob backend: SQLite always; PostgreSQL and MariaDB when the test servers are set.

mod common;

use std::sync::Arc;

use common::*;
use keyward_dbc::testing::{server_url, TestServer};
use keyward_ownership::SessionConfig;
use keyward_vfs::backend::dbc::DbcBackend;
use keyward_vfs::{Backend, CipherKind, Vfs, VfsError, VfsOptions};

async fn exercise(url: &str) {
    let env = Env::new().await;
    // A fresh volume name per run, so reruns on a shared server do not collide.
    let volume = format!("t{}", hex_id());
    let backend: Arc<dyn Backend> = Arc::new(DbcBackend::connect(url, &volume).await.unwrap());
    let o = VfsOptions {
        cipher: CipherKind::Aes256Gcm,
        segment_size: 4096,
        name_encryption: false,
    };
    let vfs = Vfs::new(
        &volume,
        backend.clone(),
        env.keyring.clone(),
        o,
        env.coord.clone(),
    )
    .unwrap();
    for size in [0usize, 1, 4095, 4096, 4097, 300_001] {
        let data = pattern(size, size as u64);
        let p = format!("dir/f{size}");
        vfs.write(&p, &data).await.unwrap();
        assert!(vfs.read(&p).await.unwrap() == data, "size {size}");
        assert_eq!(vfs.stat(&p).await.unwrap().size, size as u64);
    }
    // Random writes, truncation, and an uncommitted edit that stays invisible.
    let mut model = pattern(20_000, 1);
    vfs.write("e", &model).await.unwrap();
    let mut f = vfs.edit("e").await.unwrap();
    f.write_at(5000, b"patch").await.unwrap();
    model[5000..5005].copy_from_slice(b"patch");
    f.write_at(30_000, b"end").await.unwrap();
    model.resize(30_000, 0);
    model.extend_from_slice(b"end");
    assert_eq!(vfs.read("e").await.unwrap().len(), 20_000);
    f.commit().await.unwrap();
    f.truncate(4100).await.unwrap();
    model.truncate(4100);
    f.close().await.unwrap();
    assert_eq!(vfs.read("e").await.unwrap(), model);

    let names: Vec<_> = vfs
        .list("dir")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names.len(), 6);
    vfs.rename("e", "dir/e2").await.unwrap();
    assert_eq!(vfs.read("dir/e2").await.unwrap(), model);
    assert!(matches!(
        vfs.read("e").await,
        Err(VfsError::NotFound { .. })
    ));
    vfs.delete("dir/e2").await.unwrap();
    assert!(matches!(
        vfs.read("dir/e2").await,
        Err(VfsError::NotFound { .. })
    ));

    // Fencing: a commit under an older token than the stored one is refused.
    let node_b = env.hub.connect(SessionConfig::default()).await.unwrap();
    let vfs_b = Vfs::new(&volume, backend.clone(), env.keyring.clone(), o, node_b).unwrap();
    let stale = vfs.create("fenced").await.unwrap();
    let stale_token = stale.token();
    stale.abort().await.unwrap();
    vfs_b.write("fenced", b"newer owner").await.unwrap();
    let header = backend
        .open("fenced")
        .await
        .unwrap()
        .unwrap()
        .header()
        .to_vec();
    let txn = backend
        .create("fenced", &header, stale_token)
        .await
        .unwrap();
    let e = txn.commit(stale_token).await.unwrap_err();
    assert!(matches!(e, VfsError::Fenced { .. }), "{e}");
    assert_eq!(vfs.read("fenced").await.unwrap(), b"newer owner");
}

fn hex_id() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn dbc_blobs_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("vfs.db").display());
    exercise(&url).await;
}

#[tokio::test]
#[ignore = "needs postgres"]
async fn dbc_blobs_on_postgres() {
    let Some(url) = server_url(TestServer::Postgres) else {
        return;
    };
    exercise(&url).await;
}

#[tokio::test]
#[ignore = "needs mysql"]
async fn dbc_blobs_on_mariadb() {
    let Some(url) = server_url(TestServer::Mysql) else {
        return;
    };
    exercise(&url).await;
}
