//! Shared scenarios, run against SQLite always and against each server when its URL is set.
#![allow(dead_code)]

use keyward_migrate::{run, MigrateArgs, MigrateContext};
pub use keyward_migrate::{MigrateCommand, MigrateError};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use std::time::Instant;

/// Which file family a scenario writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Sqlite,
    Postgres,
    Mysql,
    Mongo,
    Cql,
}

pub fn args(url: &str, dir: &Path, command: MigrateCommand) -> MigrateArgs {
    MigrateArgs {
        url: Some(url.to_owned()),
        dir: dir.to_path_buf(),
        json: true,
        dry_run: false,
        lock_wait: Duration::ZERO,
        lock_lease: Duration::from_secs(10),
        debug_hold_lock: None,
        command,
    }
}

pub async fn cmd(
    url: &str,
    dir: &Path,
    command: MigrateCommand,
) -> Result<serde_json::Value, MigrateError> {
    run(args(url, dir, command), MigrateContext::default())
        .await
        .map(|o| o.data)
}

pub async fn dry(
    url: &str,
    dir: &Path,
    command: MigrateCommand,
) -> Result<serde_json::Value, MigrateError> {
    let mut a = args(url, dir, command);
    a.dry_run = true;
    run(a, MigrateContext::default()).await.map(|o| o.data)
}

pub fn up() -> MigrateCommand {
    MigrateCommand::Up {
        to: None,
        out_of_order: false,
    }
}

pub fn up_to(v: &str) -> MigrateCommand {
    MigrateCommand::Up {
        to: Some(v.into()),
        out_of_order: false,
    }
}

pub fn down_to(v: Option<&str>) -> MigrateCommand {
    MigrateCommand::Down {
        to: v.map(str::to_owned),
    }
}

pub fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

/// States by version from a `status --json` result.
pub fn states(status: &serde_json::Value) -> Vec<(String, String)> {
    status["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["version"].as_str().unwrap().to_owned(),
                e["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn st(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Three migrations with downs: a table, a row that needs the table, a second table.
pub fn write_basic_set(dir: &Path, flavor: Flavor, prefix: &str) {
    match flavor {
        Flavor::Mongo => {
            write(
                dir,
                "V1__items.mongo.json",
                &format!(
                    r#"[{{"create_collection": "{prefix}items"}}, {{"create_index": {{"collection": "{prefix}items", "keys": {{"name": 1}}, "name": "{prefix}items_name", "unique": true}}}}]"#
                ),
            );
            write(
                dir,
                "U1__items.mongo.json",
                &format!(r#"[{{"drop_collection": "{prefix}items"}}]"#),
            );
            write(
                dir,
                "V2__rename.mongo.json",
                &format!(
                    r#"[{{"rename_field": {{"collection": "{prefix}items", "from": "name", "to": "title"}}}}]"#
                ),
            );
            write(
                dir,
                "U2__rename.mongo.json",
                &format!(
                    r#"[{{"rename_field": {{"collection": "{prefix}items", "from": "title", "to": "name"}}}}]"#
                ),
            );
            write(
                dir,
                "V3__tags.mongo.json",
                &format!(r#"[{{"create_collection": "{prefix}tags"}}]"#),
            );
            write(
                dir,
                "U3__tags.mongo.json",
                &format!(r#"[{{"drop_collection": "{prefix}tags"}}]"#),
            );
        }
        Flavor::Cql => {
            write(
                dir,
                "V1__items.cql",
                &format!("-- the first table\ncreate table {prefix}items (id int primary key, name text);\ncreate index {prefix}items_name on {prefix}items (name);\n"),
            );
            write(dir, "U1__items.cql", &format!("drop table {prefix}items;"));
            write(
                dir,
                "V2__seed.cql",
                &format!("insert into {prefix}items (id, name) values (1, 'it''s; here');\ninsert into {prefix}items (id, name) values (2, 'two');"),
            );
            write(
                dir,
                "U2__seed.cql",
                &format!("delete from {prefix}items where id in (1, 2);"),
            );
            write(
                dir,
                "V3__tags.cql",
                &format!("create table {prefix}tags (id int primary key, tag text);"),
            );
            write(dir, "U3__tags.cql", &format!("drop table {prefix}tags;"));
        }
        _ => {
            let text = if flavor == Flavor::Mysql {
                "varchar(100)"
            } else {
                "text"
            };
            write(
                dir,
                "V1__items.sql",
                &format!("-- the first table\ncreate table {prefix}items (id integer primary key, name {text} not null);\ncreate index {prefix}items_name on {prefix}items (name);\n"),
            );
            write(dir, "U1__items.sql", &format!("drop table {prefix}items;"));
            write(
                dir,
                "V2__seed.sql",
                &format!("insert into {prefix}items (id, name) values (1, 'it''s; here');\ninsert into {prefix}items (id, name) values (2, 'two');"),
            );
            write(
                dir,
                "U2__seed.sql",
                &format!("delete from {prefix}items where id in (1, 2);"),
            );
            write(
                dir,
                "V3__tags.sql",
                &format!("create table {prefix}tags (id integer primary key, tag {text});"),
            );
            write(dir, "U3__tags.sql", &format!("drop table {prefix}tags;"));
        }
    }
}

/// up, status, down one, down all, up again (which fails if a down left a table behind).
pub async fn round_trip(url: &str, flavor: Flavor) {
    let dir = tempfile::tempdir().unwrap();
    write_basic_set(dir.path(), flavor, "rt_");
    let d = dir.path();
    let s = cmd(url, d, MigrateCommand::Status).await.unwrap();
    assert_eq!(
        states(&s),
        st(&[("1", "pending"), ("2", "pending"), ("3", "pending")])
    );
    // A dry run writes nothing.
    let plan = dry(url, d, up()).await.unwrap();
    assert_eq!(plan["steps"].as_array().unwrap().len(), 3);
    let s = cmd(url, d, MigrateCommand::Status).await.unwrap();
    assert_eq!(s["counts"]["pending"], 3);

    let r = cmd(url, d, up_to("2")).await.unwrap();
    assert_eq!(r["steps"].as_array().unwrap().len(), 2);
    assert_eq!(r["current"], "2");
    let r = cmd(url, d, up()).await.unwrap();
    assert_eq!(r["steps"].as_array().unwrap().len(), 1);
    let s = cmd(url, d, MigrateCommand::Status).await.unwrap();
    assert_eq!(
        states(&s),
        st(&[("1", "applied"), ("2", "applied"), ("3", "applied")])
    );
    assert!(s["entries"][0]["applied_by"]
        .as_str()
        .unwrap()
        .contains('@'));
    cmd(url, d, MigrateCommand::Verify).await.unwrap();
    // Nothing left to apply.
    let r = cmd(url, d, up()).await.unwrap();
    assert!(r["steps"].as_array().unwrap().is_empty());

    let r = cmd(url, d, down_to(None)).await.unwrap();
    assert_eq!(r["steps"][0]["version"], "3");
    let r = dry(url, d, down_to(Some("0"))).await.unwrap();
    assert_eq!(r["steps"].as_array().unwrap().len(), 2);
    let r = cmd(url, d, down_to(Some("0"))).await.unwrap();
    assert_eq!(r["steps"].as_array().unwrap().len(), 2);
    assert_eq!(r["steps"][0]["version"], "2");
    let s = cmd(url, d, MigrateCommand::Status).await.unwrap();
    assert_eq!(s["counts"]["pending"], 3);
    assert_eq!(s["counts"]["applied"], 0);
    // Creating the tables again succeeds only if the downs really dropped them.
    let r = cmd(url, d, up()).await.unwrap();
    assert_eq!(r["steps"].as_array().unwrap().len(), 3);
    cmd(url, d, down_to(Some("0"))).await.unwrap();
}

/// A file changed after it ran: status shows it, verify and up refuse (exit 6), repair
/// realigns, verify passes.
pub async fn checksum_drift(url: &str, flavor: Flavor) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_basic_set(d, flavor, "cd_");
    cmd(url, d, up_to("2")).await.unwrap();
    // Layout noise is not drift.
    let p = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("V2__"))
        .unwrap();
    let body = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("{}  \r\n\r\n", body.replace('\n', "\r\n"))).unwrap();
    cmd(url, d, MigrateCommand::Verify).await.unwrap();
    // A real edit is.
    let edited = if flavor == Flavor::Mongo {
        body.replace("\"title\"", "\"label\"")
    } else {
        body.replace("'two'", "'deux'")
    };
    assert_ne!(edited, body);
    std::fs::write(&p, edited).unwrap();
    let s = cmd(url, d, MigrateCommand::Status).await.unwrap();
    assert_eq!(
        states(&s),
        st(&[("1", "applied"), ("2", "changed"), ("3", "pending")])
    );
    let e = cmd(url, d, MigrateCommand::Verify).await.unwrap_err();
    assert_eq!(e.exit_code(), 6, "{e}");
    let e = cmd(url, d, up()).await.unwrap_err();
    assert_eq!(e.exit_code(), 6, "{e}");
    let r = dry(
        url,
        d,
        MigrateCommand::Repair {
            mark_applied: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(r["realigned"].as_array().unwrap().len(), 1);
    assert!(
        cmd(url, d, MigrateCommand::Verify).await.is_err(),
        "a dry run must not repair"
    );
    cmd(
        url,
        d,
        MigrateCommand::Repair {
            mark_applied: false,
        },
    )
    .await
    .unwrap();
    cmd(url, d, MigrateCommand::Verify).await.unwrap();
    // A removed file shows as missing and fails verify.
    std::fs::remove_file(d.join(format!(
        "U{}",
        &p.file_name().unwrap().to_str().unwrap()[1..]
    )))
    .unwrap();
    std::fs::remove_file(&p).unwrap();
    let s = cmd(url, d, MigrateCommand::Status).await.unwrap();
    assert_eq!(s["counts"]["missing"], 1);
    assert_eq!(
        cmd(url, d, MigrateCommand::Verify)
            .await
            .unwrap_err()
            .exit_code(),
        6
    );
}

/// A migration that fails after a statement took effect outside a transaction leaves a dirty
/// row: status shows it, up refuses with 6, repair clears it, the fixed file then applies.
/// `no_tx_marker`: what makes the failing file run outside a transaction on this backend.
pub async fn dirty_state(url: &str, flavor: Flavor) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_basic_set(d, flavor, "ds_");
    let bad_name = if flavor == Flavor::Mongo {
        "V4__broken.mongo.json"
    } else {
        "V4__broken.sql"
    };
    let (bad, good) = match flavor {
        Flavor::Mongo => (
            // The second command fails: the index already exists with other options.
            r#"[{"create_collection": "ds_more"}, {"create_index": {"collection": "ds_items", "keys": {"other": 1}, "name": "ds_items_name", "unique": false}}]"#.to_owned(),
            r#"[{"create_index": {"collection": "ds_items", "keys": {"other": 1}, "name": "ds_items_other"}}]"#.to_owned(),
        ),
        _ => (
            "-- keyward:no-transaction\ncreate table ds_more (id integer primary key);\ninsert into no_such_table values (1);\n".to_owned(),
            "-- keyward:no-transaction\ninsert into ds_more (id) values (1);\n".to_owned(),
        ),
    };
    write(d, bad_name, &bad);
    let e = cmd(url, d, up()).await.unwrap_err();
    match &e {
        MigrateError::MigrationFailed { version, dirty, .. } => {
            assert_eq!(version, "4");
            assert!(dirty, "{e}");
        }
        other => panic!("expected a failed migration, got {other}"),
    }
    assert_eq!(e.exit_code(), 1);
    let s = cmd(url, d, MigrateCommand::Status).await.unwrap();
    assert_eq!(
        states(&s),
        st(&[
            ("1", "applied"),
            ("2", "applied"),
            ("3", "applied"),
            ("4", "dirty")
        ])
    );
    assert!(s["entries"][3]["error"]
        .as_str()
        .unwrap()
        .contains("statement 2"));
    let e = cmd(url, d, up()).await.unwrap_err();
    assert!(matches!(e, MigrateError::Dirty { .. }), "{e}");
    assert_eq!(e.exit_code(), 6);
    assert_eq!(cmd(url, d, down_to(None)).await.unwrap_err().exit_code(), 6);
    // The admin completes the migration by hand: the first statement already ran, so the file
    // now holds what is left.
    write(d, bad_name, &good);
    let r = cmd(
        url,
        d,
        MigrateCommand::Repair {
            mark_applied: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(r["removed_dirty"].as_array().unwrap().len(), 1);
    let r = cmd(url, d, up()).await.unwrap();
    assert_eq!(r["steps"].as_array().unwrap().len(), 1);
    cmd(url, d, MigrateCommand::Verify).await.unwrap();
}

/// On a backend with transactional DDL, a failing migration changes nothing: no dirty row,
/// the earlier statement rolled back (the fixed file can create the same table again).
pub async fn failing_migration_rolls_back(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "V1__a.sql",
        "create table rb_a (id integer primary key);",
    );
    write(
        d,
        "V2__b.sql",
        "create table rb_b (id integer primary key);\ninsert into rb_missing values (1);",
    );
    let e = cmd(url, d, up()).await.unwrap_err();
    match &e {
        MigrateError::MigrationFailed { version, dirty, .. } => {
            assert_eq!(version, "2");
            assert!(!dirty);
        }
        other => panic!("expected a failed migration, got {other}"),
    }
    let s = cmd(url, d, MigrateCommand::Status).await.unwrap();
    assert_eq!(states(&s), st(&[("1", "applied"), ("2", "pending")]));
    write(
        d,
        "V2__b.sql",
        "create table rb_b (id integer primary key);\ninsert into rb_b values (1);",
    );
    cmd(url, d, up()).await.unwrap();
}

/// baseline on a fresh database: lower files count as applied, higher ones apply, and no
/// revert goes below it; a second baseline is refused.
pub async fn baseline(url: &str, flavor: Flavor) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_basic_set(d, flavor, "bl_");
    // Pretend the first two already exist (they were made by hand).
    let r = dry(
        url,
        d,
        MigrateCommand::Baseline {
            version: "2".into(),
            name: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(r["covered"].as_array().unwrap().len(), 2);
    assert_eq!(
        cmd(url, d, MigrateCommand::Status).await.unwrap()["counts"]["pending"],
        3
    );
    cmd(
        url,
        d,
        MigrateCommand::Baseline {
            version: "2".into(),
            name: Some("legacy".into()),
        },
    )
    .await
    .unwrap();
    let s = cmd(url, d, MigrateCommand::Status).await.unwrap();
    assert_eq!(
        states(&s),
        st(&[("1", "below_baseline"), ("2", "baseline"), ("3", "pending")])
    );
    let e = cmd(
        url,
        d,
        MigrateCommand::Baseline {
            version: "3".into(),
            name: None,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_code(), 6);
    let r = cmd(url, d, up()).await.unwrap();
    assert_eq!(r["steps"].as_array().unwrap().len(), 1);
    assert_eq!(r["steps"][0]["version"], "3");
    assert_eq!(
        cmd(url, d, down_to(Some("1")))
            .await
            .unwrap_err()
            .exit_code(),
        6
    );
    cmd(url, d, down_to(Some("2"))).await.unwrap();
    cmd(url, d, MigrateCommand::Verify).await.unwrap();
}

/// A record-face table with every value type, filled with `n` rows.
pub async fn make_source(url: &str, name: &str, n: i64) -> keyward_dbc::Db {
    use keyward_dbc::{Db, Field, FieldType, TableDef, Value};
    let db = Db::connect(url).await.unwrap();
    let def = TableDef {
        name: name.to_owned(),
        fields: vec![
            Field::new("id", FieldType::I64),
            Field::new("label", FieldType::Text),
            Field::new("flag", FieldType::Bool),
            Field::new("score", FieldType::F64),
            Field::new("payload", FieldType::Bytes).nullable(),
            Field::new("at", FieldType::Timestamp),
            Field::new("doc", FieldType::Json).nullable(),
        ],
        primary_key: vec!["id".into()],
    };
    let t = db.define_table(def).await.unwrap();
    let base =
        chrono::DateTime::<chrono::Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap();
    let rows: Vec<Vec<Value>> = (0..n)
        .map(|i| {
            vec![
                Value::I64(i),
                Value::Text(format!("行 {i} 🦀")),
                Value::Bool(i % 3 == 0),
                Value::F64(i as f64 / 7.0),
                if i % 5 == 0 {
                    Value::Null
                } else {
                    Value::Bytes(vec![i as u8, 0, 255])
                },
                Value::Timestamp(base + chrono::Duration::microseconds(i)),
                if i % 4 == 0 {
                    Value::Null
                } else {
                    Value::Json(Box::new(serde_json::json!({"i": i, "tags": ["a", "b"]})))
                },
            ]
        })
        .collect();
    for chunk in rows.chunks(500) {
        for r in t.put_many(chunk).await.unwrap() {
            r.unwrap();
        }
    }
    db
}

/// A copy stopped part-way resumes from its checkpoint and ends with equal checksums; a
/// target changed afterwards fails the comparison with exit code 7.
pub async fn copy_interrupted_and_resumed(src_url: &str, dst_url: &str, table: &str) {
    use keyward_migrate::{copy::copy, CopyOptions};
    let src = make_source(src_url, table, 2_345).await;
    let opts = |stop: Option<u64>| CopyOptions {
        tables: vec![table.to_owned()],
        batch_size: 200,
        stop_after_rows: stop,
        ..CopyOptions::default()
    };
    let e = copy(src_url, dst_url, opts(Some(1_000))).await.unwrap_err();
    assert_eq!(e.exit_code(), 130, "{e}");
    let dst = keyward_dbc::Db::connect(dst_url).await.unwrap();
    let s_def = src.table(table).await.unwrap();
    let d_table = dst.define_table(s_def.def().clone()).await.unwrap();
    assert_eq!(d_table.count().await.unwrap(), 1_000);
    let rep = copy(src_url, dst_url, opts(None)).await.unwrap();
    let t = &rep.tables[0];
    assert_eq!(t.resumed_from, 1_000);
    assert_eq!(t.copied_this_run, 1_345);
    assert_eq!(t.source_rows, Some(2_345));
    assert_eq!(t.target_rows, Some(2_345));
    assert_eq!(t.matches, Some(true));
    assert_eq!(t.source_checksum, t.target_checksum);
    // A finished table is not copied again, only compared; a changed target row is caught.
    let mut row = d_table
        .get(&[keyward_dbc::Value::I64(7)])
        .await
        .unwrap()
        .unwrap();
    row[1] = keyward_dbc::Value::Text("tampered".into());
    d_table.put(&row).await.unwrap();
    let e = copy(src_url, dst_url, opts(None)).await.unwrap_err();
    assert_eq!(e.exit_code(), 7, "{e}");
    // --restart copies everything again and repairs the target.
    let rep = copy(
        src_url,
        dst_url,
        CopyOptions {
            restart: true,
            ..opts(None)
        },
    )
    .await
    .unwrap();
    assert_eq!(rep.tables[0].copied_this_run, 2_345);
    assert_eq!(rep.tables[0].matches, Some(true));
}

// ---- the lock, with real processes ----

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyward-migrate"));
    c.env_remove("KEYWARD_DBC__URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

pub fn json_of(o: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): stdout {text:?} stderr {:?}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn lock_set(dir: &Path) {
    write(
        dir,
        "V1__a.sql",
        "create table lk_a (id integer primary key);",
    );
    write(
        dir,
        "V2__b.sql",
        "create table lk_b (id integer primary key);",
    );
}

fn applied_steps(o: &Output) -> usize {
    json_of(o)["result"]["steps"]
        .as_array()
        .map_or(0, |s| s.len())
}

pub fn two_concurrent_up_runs_exactly_one_applies(url: &str) {
    let url = url.to_owned();
    let dir = tempfile::tempdir().unwrap();
    lock_set(dir.path());
    let spawn = |wait: &str| {
        bin()
            .args(["--url", &url, "--dir"])
            .arg(dir.path())
            .args([
                "--json",
                "--lock-wait",
                wait,
                "--debug-hold-lock",
                "1500ms",
                "up",
            ])
            .spawn()
            .unwrap()
    };
    // Without waiting: one applies, the other is refused with 6 (or, if it started after the
    // first finished, finds nothing to do).
    let (a, b) = (spawn("0s"), spawn("0s"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let codes = [a.status.code().unwrap(), b.status.code().unwrap()];
    let steps = [applied_steps(&a), applied_steps(&b)];
    assert_eq!(
        steps.iter().filter(|s| **s > 0).count(),
        1,
        "{codes:?} {steps:?}"
    );
    assert_eq!(steps.iter().sum::<usize>(), 2);
    for (o, c) in [(&a, codes[0]), (&b, codes[1])] {
        assert!(
            c == 0 || c == 6,
            "exit {c}: {}{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        if c == 6 {
            assert_eq!(json_of(o)["error"]["kind"], "conflict");
        }
    }
    // With waiting, both succeed, and still exactly one applies.
    write(
        dir.path(),
        "V3__c.sql",
        "create table lk_c (id integer primary key);",
    );
    let (a, b) = (spawn("30s"), spawn("30s"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(
        a.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
    assert_eq!(
        b.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&b.stderr)
    );
    assert_eq!(applied_steps(&a) + applied_steps(&b), 1);
    let s = bin()
        .args(["--url", &url, "--dir"])
        .arg(dir.path())
        .args(["--json", "status"])
        .output()
        .unwrap();
    assert_eq!(json_of(&s)["result"]["counts"]["applied"], 3);
}

pub fn lock_freed_after_holder_killed(url: &str) {
    let url = url.to_owned();
    let dir = tempfile::tempdir().unwrap();
    lock_set(dir.path());
    let mut holder = bin()
        .args(["--url", &url, "--dir"])
        .arg(dir.path())
        .args([
            "--json",
            "--lock-lease",
            "2s",
            "--debug-hold-lock",
            "120s",
            "up",
        ])
        .spawn()
        .unwrap();
    // Wait until status shows the lock held.
    let started = Instant::now();
    loop {
        let s = bin()
            .args(["--url", &url, "--dir"])
            .arg(dir.path())
            .args(["--json", "status"])
            .output()
            .unwrap();
        if s.status.success() && !json_of(&s)["result"]["lock"].is_null() {
            break;
        }
        if let Some(status) = holder.try_wait().unwrap() {
            let out = holder.wait_with_output().unwrap();
            panic!(
                "the holder exited early ({status}): {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "lock never taken; last status: {}",
            String::from_utf8_lossy(&s.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Child::kill sends SIGKILL on Unix: no cleanup runs in the holder.
    holder.kill().unwrap();
    let _ = holder.wait();
    let up = |wait: &str| {
        bin()
            .args(["--url", &url, "--dir"])
            .arg(dir.path())
            .args(["--json", "--lock-wait", wait, "up"])
            .output()
            .unwrap()
    };
    // Right after the kill the lease still runs: refused.
    let o = up("0s");
    assert_eq!(
        o.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Once it ends, the lock is taken over and the migrations apply.
    let o = up("20s");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(applied_steps(&o), 2);
}
