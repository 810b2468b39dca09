//! A throwaway PostgreSQL for the benches that need one (`dbc`, `migrate`): the machine's
//! PostgreSQL binaries, a fresh cluster in a temp dir on a free loopback port, default durability
//! settings (fsync on) so that figures mean what they would in production. Set
//! `KEYWARD_BENCH_POSTGRES_URL` to use a server of your own instead.

use crate::anchor::{free_port, wait_port};
use crate::harness::BenchError;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct Postgres {
    url: String,
    /// `Some` when this process started the cluster and must stop it.
    owned: Option<(PathBuf, tempfile::TempDir)>,
}

fn fail(message: String) -> BenchError {
    BenchError::Anchor {
        name: "postgresql".into(),
        message,
    }
}

fn pg_bin() -> Result<PathBuf, BenchError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            fail(format!(
                "no PostgreSQL binaries in /usr/lib/postgresql: {e}"
            ))
        })?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| fail("no initdb under /usr/lib/postgresql/*/bin".into()))
}

/// Runs a PostgreSQL tool as the `postgres` user: the server refuses to run as root.
fn as_postgres(bin: &Path, tool: &str, args: &[&str], log: &Path) -> Result<(), BenchError> {
    let out = std::fs::File::create(log)?;
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args)
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .status()
        .map_err(|e| fail(format!("{tool}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        Err(fail(format!("{tool} failed: {text}")))
    }
}

impl Postgres {
    /// Uses `KEYWARD_BENCH_POSTGRES_URL` when set, else starts a cluster of its own.
    pub fn start() -> Result<Postgres, BenchError> {
        if let Ok(url) = std::env::var("KEYWARD_BENCH_POSTGRES_URL") {
            return Ok(Postgres { url, owned: None });
        }
        let bin = pg_bin()?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let d = dir.path().display().to_string();
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres", &d])
            .status()
            .map_err(|e| fail(format!("chown: {e}")))?;
        if !chown.success() {
            return Err(fail(format!("chown postgres {d} failed")));
        }
        let data_s = data.display().to_string();
        as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                &data_s,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            &dir.path().join("initdb.log"),
        )?;
        let port = free_port()?;
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={d} -c max_connections=300"
        );
        let log = format!("{d}/server.log");
        as_postgres(
            &bin,
            "pg_ctl",
            &["-D", &data_s, "-l", &log, "-w", "-o", &opts, "start"],
            &dir.path().join("pg_ctl.log"),
        )?;
        let pg = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/keyward"),
            owned: Some((bin.clone(), dir)),
        };
        if !wait_port(port, Duration::from_secs(30)) {
            return Err(fail(format!("did not open port {port}")));
        }
        let p = port.to_string();
        if let Some((_, dir)) = &pg.owned {
            as_postgres(
                &bin,
                "createdb",
                &["-h", "127.0.0.1", "-p", &p, "-U", "postgres", "keyward"],
                &dir.path().join("createdb.log"),
            )?;
        }
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/keyward` (trust auth on loopback).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some((bin, dir)) = &self.owned {
            let data = dir.path().join("data").display().to_string();
            let _ = as_postgres(
                bin,
                "pg_ctl",
                &["-D", &data, "-m", "fast", "-w", "stop"],
                &dir.path().join("stop.log"),
            );
        }
    }
}
