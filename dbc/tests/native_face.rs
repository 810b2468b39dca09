//! The native SQL face on every SQL backend.

use futures::StreamExt;
use keyward_dbc::testing::{server_url, TestServer};
use keyward_dbc::{Db, DbcError, Field, FieldType, TableDef, Value};

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

async fn native_suite(db: Db) {
    assert!(db.capabilities().sql && db.capabilities().transactions);
    let t = unique("nat");
    db.execute(
        &format!("CREATE TABLE {t} (k VARCHAR(64) NOT NULL PRIMARY KEY, n BIGINT NOT NULL)"),
        &[],
    )
    .await
    .unwrap();
    // Placeholders out of order and repeated; a '$1' inside a string literal is left alone.
    db.execute(
        &format!("INSERT INTO {t} (k, n) VALUES ($2, $1)"),
        &[Value::I64(7), Value::Text("a".into())],
    )
    .await
    .unwrap();
    let rows = db
        .query(
            &format!("SELECT k, n, '$1' FROM {t} WHERE n = $1 AND k = $2 AND n >= $1"),
            &[Value::I64(7), Value::Text("a".into())],
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![
            Value::Text("a".into()),
            Value::I64(7),
            Value::Text("$1".into())
        ]]
    );
    // Parameter count mismatches are bad input.
    assert!(matches!(
        db.execute(
            &format!("INSERT INTO {t} (k, n) VALUES ($1, $3)"),
            &[Value::I64(1), Value::I64(2)]
        )
        .await,
        Err(DbcError::InvalidInput { .. })
    ));

    // A transaction rolled back on error leaves nothing behind.
    let mut tx = db.begin().await.unwrap();
    tx.execute(
        &format!("INSERT INTO {t} (k, n) VALUES ($1, $2)"),
        &[Value::Text("b".into()), Value::I64(1)],
    )
    .await
    .unwrap();
    let dup = tx
        .execute(
            &format!("INSERT INTO {t} (k, n) VALUES ($1, $2)"),
            &[Value::Text("a".into()), Value::I64(2)],
        )
        .await;
    assert!(matches!(dup, Err(DbcError::Constraint { .. })), "{dup:?}");
    tx.rollback().await.unwrap();
    let n = db
        .query(&format!("SELECT COUNT(*) FROM {t}"), &[])
        .await
        .unwrap();
    assert_eq!(n, vec![vec![Value::I64(1)]]);
    // A committed one stays.
    let mut tx = db.begin().await.unwrap();
    for i in 0..100 {
        tx.execute(
            &format!("INSERT INTO {t} (k, n) VALUES ($1, $2)"),
            &[Value::Text(format!("r{i:03}")), Value::I64(i)],
        )
        .await
        .unwrap();
    }
    let inside = tx
        .query(&format!("SELECT COUNT(*) FROM {t}"), &[])
        .await
        .unwrap();
    assert_eq!(inside, vec![vec![Value::I64(101)]]);
    tx.commit().await.unwrap();
    // Rows stream in order.
    let mut s = db.query_stream(
        &format!("SELECT k, n FROM {t} WHERE k LIKE 'r%' ORDER BY k"),
        vec![],
    );
    let mut count = 0;
    while let Some(row) = s.next().await {
        let row = row.unwrap();
        assert_eq!(row[1], Value::I64(count));
        count += 1;
    }
    assert_eq!(count, 100);
    // A bad statement surfaces as an error item.
    let mut s = db.query_stream("SELECT * FROM no_such_table_kw", vec![]);
    assert!(matches!(s.next().await, Some(Err(_))));

    // Introspection sees record-face tables with their reserved columns.
    let def = TableDef {
        name: unique("intro"),
        fields: vec![
            Field::new("id", FieldType::I64),
            Field::new("body", FieldType::Text).nullable(),
        ],
        primary_key: vec!["id".into()],
    };
    db.define_table(def.clone()).await.unwrap();
    let tables = db.list_tables().await.unwrap();
    assert!(tables.contains(&def.name), "{tables:?}");
    assert!(tables.contains(&t), "{tables:?}");
    let cols = db.columns(&def.name).await.unwrap();
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["id", "body", "_kw_token", "_kw_dead"]);
    assert!(!cols[0].nullable && cols[1].nullable);
    assert!(db.columns(&unique("absent")).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("n.db").display());
    native_suite(Db::connect(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres"]
async fn native_postgres() {
    let Some(url) = server_url(TestServer::Postgres) else {
        return;
    };
    native_suite(Db::connect(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mysql"]
async fn native_mysql() {
    let Some(url) = server_url(TestServer::Mysql) else {
        return;
    };
    native_suite(Db::connect(&url).await.unwrap()).await;
}
