//! Anchor servers from Debian packages (etcd, Redis, Sphinx, pgloader's PostgreSQL): installed
//! when missing, started on a free loopback port in a throwaway directory, stopped on drop.

use crate::harness::BenchError;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> Result<u16, BenchError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Finds `binary` on PATH (or as an absolute path), installing Debian `package` when missing.
pub fn ensure_package(package: &str, binary: &str) -> Result<PathBuf, BenchError> {
    if let Some(p) = which(binary) {
        return Ok(p);
    }
    eprintln!("installing Debian package {package} for {binary}");
    let fail = |message: String| BenchError::Anchor {
        name: package.to_owned(),
        message,
    };
    let _ = Command::new("apt-get")
        .args(["update", "-qq"])
        .stdout(Stdio::null())
        .status();
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| fail(format!("apt-get: {e}")))?;
    if !status.success() {
        return Err(fail(format!("apt-get install {package} failed")));
    }
    which(binary).ok_or_else(|| fail(format!("{binary} not found after installing {package}")))
}

fn which(binary: &str) -> Option<PathBuf> {
    let p = Path::new(binary);
    if p.is_absolute() {
        return p.exists().then(|| p.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(binary))
        .find(|c| c.is_file())
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A running anchor server. Dropping it kills the process and removes its directory.
pub struct Anchor {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Anchor {
    /// Starts `binary` (from Debian `package`) with `args`, in which `{port}` and `{dir}` are
    /// replaced, and waits for its port.
    pub fn start(
        name: &str,
        package: &str,
        binary: &str,
        args: &[&str],
    ) -> Result<Anchor, BenchError> {
        let exe = ensure_package(package, binary)?;
        let port = free_port()?;
        let dir = tempfile::tempdir()?;
        let dir_s = dir.path().display().to_string();
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{port}", &port.to_string())
                    .replace("{dir}", &dir_s)
            })
            .collect();
        let log = std::fs::File::create(dir.path().join("anchor.log"))?;
        let child = Command::new(&exe)
            .args(&args)
            .current_dir(dir.path())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| BenchError::Anchor {
                name: name.to_owned(),
                message: format!("spawn {}: {e}", exe.display()),
            })?;
        let mut anchor = Anchor { port, dir, child };
        if !wait_port(port, Duration::from_secs(30)) {
            let log =
                std::fs::read_to_string(anchor.dir.path().join("anchor.log")).unwrap_or_default();
            anchor.stop();
            return Err(BenchError::Anchor {
                name: name.to_owned(),
                message: format!("did not open port {port} within 30 s; log:\n{log}"),
            });
        }
        Ok(anchor)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        self.stop();
    }
}
