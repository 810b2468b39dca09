//! Several `keyward serve` processes on loopback forming one ownership group, for end-to-end
//! tests: config files on free ports, start, SIGKILL, restart, and HTTP helpers.

use crate::keyward;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for the node to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The lease the test nodes use: short, so that failover tests stay short.
pub const LEASE_MS: u64 = 2_000;

pub struct NodeSpec {
    pub id: String,
    pub ownership: u16,
    pub cache: u16,
    pub http: u16,
    pub config: PathBuf,
    pub log: PathBuf,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeSpec>,
    children: Vec<Option<Child>>,
    pub db_url: String,
}

impl Cluster {
    /// Writes the configs of `n` group members sharing `db_url` and one VFS volume (a shared
    /// directory and keyring), and creates that keyring.
    pub fn new(n: usize, db_url: Option<String>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_url = db_url.unwrap_or_else(|| {
            format!("sqlite:{}?mode=rwc", dir.path().join("shared.db").display())
        });
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let members: Vec<String> = ports
            .iter()
            .map(|(o, _, _)| format!("\"127.0.0.1:{o}\""))
            .collect();
        let vfs_root = dir.path().join("vfs");
        // A journal of its own per cluster: a shared database keeps the registry rows of earlier
        // clusters, fenced with their groups' tokens, which a new group's tokens do not pass.
        let journal: String = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let mut nodes = Vec::new();
        for (i, (o, c, h)) in ports.iter().enumerate() {
            let id = format!("node-{i}");
            let data = dir.path().join(&id);
            let config = dir.path().join(format!("{id}.toml"));
            let text = format!(
                r#"[node]
id = "{id}"
data_dir = "{data}"

[log]
level = "info"

[ownership]
listen = "127.0.0.1:{o}"
secret = "e2e-secret"
lease_ms = {LEASE_MS}
margin_ms = 500

[ownership.group]
members = [{members}]

[dbc]
url = "{db_url}"

[cache]
listen = "127.0.0.1:{c}"
secret = "e2e-secret"
flush_max_age_ms = 300
journal_table = "kw_e2e_log_{journal}"
request_timeout_ms = 20000

[search]
listen = "127.0.0.1:{h}"
commit_interval_ms = 200

[vfs]
root = "{vfs}"
"#,
                data = data.display(),
                members = members.join(", "),
                vfs = vfs_root.display(),
            );
            std::fs::write(&config, text).expect("write config");
            nodes.push(NodeSpec {
                log: dir.path().join(format!("{id}.log")),
                id,
                ownership: *o,
                cache: *c,
                http: *h,
                config,
            });
        }
        // One keyring for the shared volume, made before any node starts (nodes that each made
        // their own would race and disagree).
        let key_cfg = dir.path().join("keyinit.toml");
        std::fs::write(
            &key_cfg,
            format!("[vfs]\nroot = \"{}\"\n", vfs_root.display()),
        )
        .expect("write keyinit config");
        let out = keyward()
            .current_dir(dir.path())
            .arg("--config")
            .arg(&key_cfg)
            .args(["vfs", "key", "init"])
            .output()
            .expect("run keyward vfs key init");
        assert!(
            out.status.success(),
            "keyward vfs key init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster {
            dir,
            children: (0..n).map(|_| None).collect(),
            nodes,
            db_url,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts node `i` (again, after a kill: same config, same data directory).
    pub fn start(&mut self, i: usize) {
        let spec = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .expect("open log");
        let child = keyward()
            .current_dir(self.dir.path())
            .arg("--config")
            .arg(&spec.config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn keyward serve");
        self.children[i] = Some(child);
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nodes[i].http)
    }

    /// Which node runs the ownership server at `addr`.
    pub fn node_of_ownership_addr(&self, addr: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| addr == format!("127.0.0.1:{}", n.ownership))
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            all.push_str(&format!("----- {} (last 40 lines)\n", n.id));
            for l in tail.into_iter().rev() {
                all.push_str(l);
                all.push('\n');
            }
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
