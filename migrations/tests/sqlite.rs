//! Every scenario against SQLite files (always run), plus the lock tests with real processes.

mod common;

use common::*;
use std::path::Path;

fn sqlite_url(dir: &Path, name: &str) -> String {
    format!("sqlite:{}?mode=rwc", dir.join(name).display())
}

#[tokio::test]
async fn sqlite_up_down_round_trip() {
    let db = tempfile::tempdir().unwrap();
    round_trip(&sqlite_url(db.path(), "a.db"), Flavor::Sqlite).await;
}

#[tokio::test]
async fn sqlite_checksum_drift_detected() {
    let db = tempfile::tempdir().unwrap();
    checksum_drift(&sqlite_url(db.path(), "a.db"), Flavor::Sqlite).await;
}

#[tokio::test]
async fn sqlite_dirty_state_after_failing_migration() {
    let db = tempfile::tempdir().unwrap();
    dirty_state(&sqlite_url(db.path(), "a.db"), Flavor::Sqlite).await;
}

#[tokio::test]
async fn sqlite_failing_migration_rolls_back() {
    let db = tempfile::tempdir().unwrap();
    failing_migration_rolls_back(&sqlite_url(db.path(), "a.db")).await;
}

#[tokio::test]
async fn sqlite_baseline() {
    let db = tempfile::tempdir().unwrap();
    baseline(&sqlite_url(db.path(), "a.db"), Flavor::Sqlite).await;
}

#[tokio::test]
async fn sqlite_copy_interrupted_and_resumed() {
    let db = tempfile::tempdir().unwrap();
    copy_interrupted_and_resumed(
        &sqlite_url(db.path(), "src.db"),
        &sqlite_url(db.path(), "dst.db"),
        "copy_items",
    )
    .await;
}

#[tokio::test]
async fn sqlite_bad_input_is_typed() {
    let db = tempfile::tempdir().unwrap();
    let url = sqlite_url(db.path(), "a.db");
    let dir = tempfile::tempdir().unwrap();
    // No such folder: config (3).
    let e = cmd(&url, &dir.path().join("nope"), MigrateCommand::Status)
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3, "{e}");
    // A malformed file name: config (3).
    write(dir.path(), "V1_missing_separator.sql", "select 1;");
    assert_eq!(
        cmd(&url, dir.path(), MigrateCommand::Status)
            .await
            .unwrap_err()
            .exit_code(),
        3
    );
    std::fs::remove_file(dir.path().join("V1_missing_separator.sql")).unwrap();
    // A bad --to: usage (2).
    write(
        dir.path(),
        "V1__a.sql",
        "create table a (id integer primary key);",
    );
    assert_eq!(
        cmd(&url, dir.path(), up_to("x.y"))
            .await
            .unwrap_err()
            .exit_code(),
        2
    );
    // down without a down file: not found (5), and nothing reverted.
    cmd(&url, dir.path(), up()).await.unwrap();
    assert_eq!(
        cmd(&url, dir.path(), down_to(None))
            .await
            .unwrap_err()
            .exit_code(),
        5
    );
    let s = cmd(&url, dir.path(), MigrateCommand::Status).await.unwrap();
    assert_eq!(states(&s), st(&[("1", "applied")]));
    // No URL at all: config (3).
    let mut a = args(&url, dir.path(), MigrateCommand::Status);
    a.url = None;
    let e = keyward_migrate::run(a, keyward_migrate::MigrateContext::default())
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3);
}

#[tokio::test]
async fn sqlite_out_of_order_needs_flag() {
    let db = tempfile::tempdir().unwrap();
    let url = sqlite_url(db.path(), "a.db");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "V1__a.sql", "create table a (id integer primary key);");
    write(d, "V3__c.sql", "create table c (id integer primary key);");
    cmd(&url, d, up()).await.unwrap();
    write(d, "V2__b.sql", "create table b (id integer primary key);");
    let s = cmd(&url, d, MigrateCommand::Status).await.unwrap();
    assert_eq!(s["entries"][1]["out_of_order"], true);
    assert_eq!(cmd(&url, d, up()).await.unwrap_err().exit_code(), 6);
    let r = cmd(
        &url,
        d,
        MigrateCommand::Up {
            to: None,
            out_of_order: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(r["steps"][0]["version"], "2");
}

#[test]
fn sqlite_two_concurrent_up_runs_exactly_one_applies() {
    let db = tempfile::tempdir().unwrap();
    two_concurrent_up_runs_exactly_one_applies(&sqlite_url(db.path(), "a.db"));
}

#[test]
fn sqlite_lock_freed_after_holder_killed() {
    let db = tempfile::tempdir().unwrap();
    lock_freed_after_holder_killed(&sqlite_url(db.path(), "a.db"));
}

#[test]
fn sqlite_cli_usage_and_json_errors() {
    let o = bin().args(["up", "--no-such-flag"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["--json", "--dir"])
        .arg(dir.path())
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(json_of(&o)["error"]["kind"], "config");
}

#[test]
fn sqlite_cli_human_output_and_copy_via_binary() {
    let db = tempfile::tempdir().unwrap();
    let url = sqlite_url(db.path(), "a.db");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "V1__a.sql",
        "create table h_a (id integer primary key);",
    );
    write(
        dir.path(),
        "V2__b.sql",
        "create table h_b (id integer primary key);",
    );
    let run = |args: &[&str]| {
        bin()
            .args(["--url", &url, "--dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["--dry-run", "up"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("would apply 2 migration(s)"), "{text}");
    let o = run(&["up", "--to", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["status"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("applied") && text.contains("pending"),
        "{text}"
    );
    assert!(
        text.contains("1 applied, 1 pending, 0 changed, 0 missing, 0 dirty"),
        "{text}"
    );
    // copy through the binary, with the same resumable semantics.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let src = sqlite_url(db.path(), "src.db");
    let dst = sqlite_url(db.path(), "dst.db");
    rt.block_on(async {
        make_source(&src, "bin_items", 300).await;
    });
    let o = bin()
        .args([
            "--json",
            "copy",
            "--from",
            &src,
            "--to",
            &dst,
            "--tables",
            "bin_items",
            "--batch-size",
            "64",
            "--stop-after-rows",
            "100",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = bin()
        .args([
            "--json",
            "copy",
            "--from",
            &src,
            "--to",
            &dst,
            "--tables",
            "bin_items",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j = json_of(&o);
    assert_eq!(j["result"]["tables"][0]["resumed_from"], 100);
    assert_eq!(j["result"]["tables"][0]["matches"], true);
    assert_eq!(j["result"]["tables"][0]["target_rows"], 300);
}
