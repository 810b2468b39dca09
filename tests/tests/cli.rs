//! The `keyward` binary's exit codes and config errors, as a user meets them.

use keyward_tests::keyward;
use std::process::Stdio;
use std::time::Duration;

fn run(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.output().expect("run keyward");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_documents_the_exit_codes() {
    let (code, out, _) = run(keyward().arg("--help"));
    assert_eq!(code, 0);
    assert!(out.contains("Exit codes:"), "{out}");
    assert!(out.contains("130"), "{out}");
}

#[test]
fn bad_command_line_exits_2() {
    let (code, _, err) = run(keyward().arg("--no-such-flag"));
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = run(keyward().arg("no-such-command"));
    assert_eq!(code, 2);
}

#[test]
fn unknown_key_in_file_exits_3_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.toml");
    std::fs::write(&file, "[node]\ndata_dirr = \"x\"\n").unwrap();
    let (code, _, err) = run(keyward().arg("--config").arg(&file).arg("status"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("node.data_dirr"), "{err}");
    assert!(err.contains("k.toml"), "{err}");
}

#[test]
fn bad_value_from_env_exits_3_naming_the_variable() {
    let (code, _, err) = run(keyward().env("KEYWARD_LOG__FORMAT", "xml").arg("status"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("log.format"), "{err}");
    assert!(err.contains("KEYWARD_LOG__FORMAT"), "{err}");
}

#[test]
fn missing_config_file_exits_3() {
    let (code, _, err) = run(keyward().args(["--config", "/nonexistent/keyward.toml", "status"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("/nonexistent/keyward.toml"), "{err}");
}

#[test]
fn reserved_variables_are_not_config() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the port given, so status finds no node (exit 4), but it got that far:
    // the reserved variables were not read as config (which would have been exit 3).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _, err) = run(keyward()
        .current_dir(dir.path())
        .env("KEYWARD_TEST_ANYTHING", "x")
        .env("KEYWARD_BENCH_ROUNDS", "zz")
        .env("KEYWARD_REQUIRE_SERVERS", "1")
        .env("KEYWARD_SEARCH__LISTEN", format!("127.0.0.1:{port}"))
        .arg("status"));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no node answers"), "{err}");
}

#[test]
fn serve_starts_on_embedded_defaults_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let child = keyward()
        .current_dir(dir.path())
        .env("KEYWARD_LOG__LEVEL", "info")
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the data directory exists: the node is up.
    let data = dir.path().join("keyward-data");
    for _ in 0..300 {
        if data.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(data.is_dir(), "keyward serve did not create ./keyward-data");
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("stopped"), "{err}");
}
