//! Helpers for Keyward's cross-crate end-to-end tests: finding and running the real binaries.

pub mod cluster;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Path of a workspace binary (`keyward`, `keyward-migrate`, …), built once per test process so
/// that the tests never run a stale one.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            // The same selection as scripts/test's prebuild, so that features unify the same
            // way and this build is a no-op there instead of recompiling the drivers.
            .args(["build", "--quiet", "--workspace", "--bins"])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "building the binaries for the end-to-end tests failed"
        );
    });
    // current_exe is target/<profile>/deps/<test>-<hash>; the binaries sit in target/<profile>.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    dir.join(name)
}

/// A `keyward` command with a clean environment as far as Keyward is concerned: no `KEYWARD_*`
/// configuration variables leak in from the caller (reserved test variables are kept).
pub fn keyward() -> Command {
    let mut cmd = Command::new(binary("keyward"));
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYWARD_") && !keyward::config::is_reserved(&k) {
            cmd.env_remove(k);
        }
    }
    cmd
}
