//! The same scenarios against PostgreSQL, MariaDB/MySQL and MongoDB (the emulator in CI).
//! Each test works in a database of its own, created on the test server.

mod common;

use common::*;
use keyward_dbc::testing::{server_url, TestServer};

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The server URL with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A new, empty database on the server of `server`; `None` when the server is not configured.
async fn fresh(server: TestServer) -> Option<String> {
    let url = server_url(server)?;
    let name = unique("kwmig");
    match server {
        TestServer::Postgres => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        TestServer::Mysql => {
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "create database {name} character set utf8mb4"
            )))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        // MongoDB creates databases on first write.
        TestServer::Mongodb | TestServer::Scylla => {}
    }
    Some(with_database(&url, &name))
}

#[test]
fn urls_get_their_database_replaced() {
    assert_eq!(
        with_database("postgres://u:p@127.0.0.1:5432/keyward", "x"),
        "postgres://u:p@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database(
            "mongodb://127.0.0.1:27017/keyward?directConnection=true",
            "x"
        ),
        "mongodb://127.0.0.1:27017/x?directConnection=true"
    );
    assert_eq!(with_database("mysql://h:1", "x"), "mysql://h:1/x");
}

/// Drops a database `fresh` made (after a passing test; a failing one keeps it to look at).
async fn drop_fresh(server: TestServer, url: &str) {
    let Some(admin) = server_url(server) else {
        return;
    };
    let name = url
        .split('?')
        .next()
        .and_then(|b| b.rsplit('/').next())
        .unwrap_or_default()
        .to_owned();
    if !name.starts_with("kwmig_") {
        return;
    }
    let r = match server {
        TestServer::Postgres => match sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
        {
            Ok(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "drop database if exists {name} with (force)"
            )))
            .execute(&p)
            .await
            .map(|_| ()),
            Err(e) => Err(e),
        },
        TestServer::Mysql => match sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
        {
            Ok(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "drop database if exists {name}"
            )))
            .execute(&p)
            .await
            .map(|_| ()),
            Err(e) => Err(e),
        },
        TestServer::Mongodb | TestServer::Scylla => Ok(()),
    };
    if let Err(e) = r {
        eprintln!("could not drop test database {name}: {e}");
    }
}

/// Whether DBC can open this backend yet (its MongoDB and Scylla adapters come later).
async fn dbc_supports(url: &str) -> bool {
    match keyward_dbc::Db::connect(url).await {
        Ok(db) => {
            db.close().await;
            true
        }
        Err(keyward_dbc::DbcError::Unsupported { .. }) => {
            eprintln!("SKIPPED: keyward-dbc has no adapter for {url} yet");
            false
        }
        Err(e) => panic!("cannot connect to {url}: {e}"),
    }
}

macro_rules! server_tests {
    ($server:expr, $flavor:expr, $need:literal, { $($name:ident => $body:expr;)* }) => {
        $(
            #[tokio::test]
            #[ignore = $need]
            async fn $name() {
                let Some(url) = fresh($server).await else { return };
                if !dbc_supports(&url).await {
                    return;
                }
                #[allow(clippy::redundant_closure_call)]
                ($body)(url.clone(), $flavor).await;
                drop_fresh($server, &url).await;
            }
        )*
    };
}

server_tests!(TestServer::Postgres, Flavor::Postgres, "needs postgres", {
    postgres_up_down_round_trip => |u: String, f| async move { round_trip(&u, f).await };
    postgres_checksum_drift_detected => |u: String, f| async move { checksum_drift(&u, f).await };
    postgres_dirty_state_after_failing_migration => |u: String, f| async move { dirty_state(&u, f).await };
    postgres_failing_migration_rolls_back => |u: String, _f| async move { failing_migration_rolls_back(&u).await };
    postgres_baseline => |u: String, f| async move { baseline(&u, f).await };
    postgres_copy_interrupted_and_resumed_from_sqlite => |u: String, _f| async move {
        let dir = tempfile::tempdir().unwrap();
        let src = format!("sqlite:{}?mode=rwc", dir.path().join("src.db").display());
        copy_interrupted_and_resumed(&src, &u, "copy_items").await
    };
    postgres_two_concurrent_up_runs_exactly_one_applies => |u: String, _f| async move {
        tokio::task::spawn_blocking(move || two_concurrent_up_runs_exactly_one_applies(&u)).await.unwrap()
    };
    postgres_lock_freed_after_holder_killed => |u: String, _f| async move {
        tokio::task::spawn_blocking(move || lock_freed_after_holder_killed(&u)).await.unwrap()
    };
});

server_tests!(TestServer::Mysql, Flavor::Mysql, "needs mysql", {
    mysql_up_down_round_trip => |u: String, f| async move { round_trip(&u, f).await };
    mysql_checksum_drift_detected => |u: String, f| async move { checksum_drift(&u, f).await };
    mysql_dirty_state_after_failing_migration => |u: String, f| async move { dirty_state(&u, f).await };
    mysql_baseline => |u: String, f| async move { baseline(&u, f).await };
    mysql_copy_interrupted_and_resumed_from_sqlite => |u: String, _f| async move {
        let dir = tempfile::tempdir().unwrap();
        let src = format!("sqlite:{}?mode=rwc", dir.path().join("src.db").display());
        copy_interrupted_and_resumed(&src, &u, "copy_items").await
    };
    mysql_two_concurrent_up_runs_exactly_one_applies => |u: String, _f| async move {
        tokio::task::spawn_blocking(move || two_concurrent_up_runs_exactly_one_applies(&u)).await.unwrap()
    };
    mysql_lock_freed_after_holder_killed => |u: String, _f| async move {
        tokio::task::spawn_blocking(move || lock_freed_after_holder_killed(&u)).await.unwrap()
    };
});

server_tests!(TestServer::Mongodb, Flavor::Mongo, "needs mongodb", {
    mongodb_up_down_round_trip => |u: String, f| async move { round_trip(&u, f).await };
    mongodb_checksum_drift_detected => |u: String, f| async move { checksum_drift(&u, f).await };
    // Needs real MongoDB: the emulator accepts a conflicting index definition instead of failing.
    mongodb_dirty_state_after_failing_migration => |u: String, f| async move {
        if keyward_dbc::testing::mongodb_is_emulator() {
            eprintln!("skipped on the MongoDB emulator: it does not refuse conflicting indexes");
            return;
        }
        dirty_state(&u, f).await
    };
    mongodb_baseline => |u: String, f| async move { baseline(&u, f).await };
    mongodb_copy_interrupted_and_resumed_from_sqlite => |u: String, _f| async move {
        // Needs real MongoDB: the emulator reads composite `_id` documents as query operators.
        if keyward_dbc::testing::mongodb_is_emulator() {
            eprintln!("skipped on the MongoDB emulator: composite keys are not supported there");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = format!("sqlite:{}?mode=rwc", dir.path().join("src.db").display());
        copy_interrupted_and_resumed(&src, &u, "copy_items").await
    };
});

// Scylla/Cassandra: opt-in by URL (nothing here speaks CQL). The keyspace must exist.
server_tests!(TestServer::Scylla, Flavor::Cql, "needs Scylla: set KEYWARD_TEST_SCYLLA_URL=scylla://HOST:9042/KEYSPACE", {
    scylla_cql_up_down_round_trip => |u: String, f| async move { round_trip(&u, f).await };
});
