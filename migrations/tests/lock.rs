//! The migration lock inside one process: two "processes" (two ownership hubs, as two
//! separate migrators would have) share one database.

use keyward_migrate::lock::{current_holder, LockOptions, MigrationLock};
use keyward_migrate::MigrateError;
use keyward_ownership::{InProcessHub, SessionConfig};
use std::time::Duration;

async fn coord() -> keyward_ownership::Coordinator {
    InProcessHub::new()
        .connect(SessionConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn sqlite_lock_excludes_renews_expires_and_detects_theft() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("l.db").display());
    let db = keyward_dbc::Db::connect(&url).await.unwrap();
    let key = "migrate/test-db";
    let opts = LockOptions {
        wait: Duration::ZERO,
        lease: Duration::from_millis(900),
    };
    let (c1, c2) = (coord().await, coord().await);
    let a = MigrationLock::acquire(&db, &c1, key, opts).await.unwrap();
    // Held: refused at once, naming the holder.
    let e = MigrationLock::acquire(&db, &c2, key, opts)
        .await
        .unwrap_err();
    assert!(matches!(e, MigrateError::LockHeld { .. }), "{e}");
    assert_eq!(e.exit_code(), 6);
    // Renewal keeps it held past several leases.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    a.check().unwrap();
    assert!(MigrationLock::acquire(&db, &c2, key, opts).await.is_err());
    // Same node claiming twice is refused by the coordinator as well.
    assert!(MigrationLock::acquire(&db, &c1, key, opts).await.is_err());
    // Released: free at once.
    a.release().await.unwrap();
    assert!(current_holder(&db, key).await.unwrap().is_none());
    let b = MigrationLock::acquire(&db, &c2, key, opts).await.unwrap();
    // A holder that stops renewing (dropped without release, as in a crash of its task) loses
    // the row when the lease ends, and a waiter takes it over.
    drop(b);
    let waiting = LockOptions {
        wait: Duration::from_secs(10),
        ..opts
    };
    let c = MigrationLock::acquire(&db, &c1, key, waiting)
        .await
        .unwrap();
    // Someone overwrites the row (a takeover we did not see): the next renewal notices and
    // `check` fails, so no further step runs.
    let lock_table = db
        .define_table(keyward_dbc::TableDef {
            name: keyward_migrate::lock::LOCK_TABLE.into(),
            fields: vec![
                keyward_dbc::Field::new("name", keyward_dbc::FieldType::Text),
                keyward_dbc::Field::new("holder", keyward_dbc::FieldType::Text),
                keyward_dbc::Field::new("owner", keyward_dbc::FieldType::Text),
                keyward_dbc::Field::new("acquired_at", keyward_dbc::FieldType::Timestamp),
                keyward_dbc::Field::new("expires_at", keyward_dbc::FieldType::Timestamp),
            ],
            primary_key: vec!["name".into()],
        })
        .await
        .unwrap();
    let mut row = lock_table
        .get(&[keyward_dbc::Value::Text(key.into())])
        .await
        .unwrap()
        .unwrap();
    row[1] = keyward_dbc::Value::Text("someone-else".into());
    lock_table.put(&row).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let e = c.check().unwrap_err();
    assert!(matches!(e, MigrateError::LockLost { .. }), "{e}");
}
