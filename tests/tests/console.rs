//! The web console in a real browser: a `keyward serve` node on loopback, headless Chromium
//! driven over WebDriver (plain JSON over HTTP to chromedriver), a Chinese query with
//! highlighted results, a tag filter, and the cluster page.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`. The test reads
//! `KEYWARD_TEST_CHROMEDRIVER` (path of the chromedriver binary; when unset, `chromedriver` is
//! looked up on PATH) and optionally `KEYWARD_TEST_CHROMIUM` (path of the browser; when unset,
//! `chromium` on PATH or chromedriver's own default). Without a chromedriver it is skipped,
//! unless `KEYWARD_REQUIRE_SERVERS=1`, which makes that a failure.

use keyward_tests::cluster::{free_port, wait_for};
use keyward_tests::keyward;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODE_ID: &str = "console-node";
const INDEX: &str = "console_docs";
/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Kills what the test started, on success and on failure alike.
struct Guard {
    node: Option<Child>,
    driver: Option<Child>,
    node_log: PathBuf,
    driver_log: PathBuf,
}

impl Guard {
    fn logs(&self) -> String {
        let tail = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().rev().take(30).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        format!(
            "----- node log (tail)\n{}\n----- chromedriver log (tail)\n{}",
            tail(&self.node_log),
            tail(&self.driver_log)
        )
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut d) = self.driver.take() {
            // chromedriver runs in its own process group with the browser it started: killing
            // the group also ends a Chromium the session could not close.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", d.id())])
                .status();
            let _ = d.kill();
            let _ = d.wait();
        }
        if let Some(mut n) = self.node.take() {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The chromedriver to use, or `None` (skip) when there is none and none is required.
fn chromedriver() -> Option<PathBuf> {
    if let Some(p) = env_path("KEYWARD_TEST_CHROMEDRIVER") {
        assert!(
            p.is_file(),
            "KEYWARD_TEST_CHROMEDRIVER={} is not a file",
            p.display()
        );
        return Some(p);
    }
    if let Some(p) = on_path("chromedriver") {
        return Some(p);
    }
    let required = std::env::var("KEYWARD_REQUIRE_SERVERS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "no chromedriver (KEYWARD_TEST_CHROMEDRIVER unset, none on PATH) but \
         KEYWARD_REQUIRE_SERVERS=1: install chromium and chromium-driver"
    );
    eprintln!("skipped: no chromedriver (set KEYWARD_TEST_CHROMEDRIVER)");
    None
}

fn chromium() -> Option<PathBuf> {
    env_path("KEYWARD_TEST_CHROMIUM").or_else(|| on_path("chromium"))
}

/// A WebDriver session over plain HTTP.
struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: bad JSON: {e}"));
        assert!(
            status.is_success(),
            "webdriver {method} {path}: {status} {v}"
        );
        v["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Runs `script` (a function body) in the page and returns its result.
    async fn js(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element for {css}: {v}"))
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/value"), json!({"text": text}))
            .await;
    }

    /// Polls `script` until `ok` accepts its result; panics with the last result on timeout.
    async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(script).await;
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last page state: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The search page's state as the test reads it: settled only when the last search answered.
const RESULTS_STATE: &str = r#"
const r = document.getElementById('results');
return {
  state: r.getAttribute('data-state'),
  ids: Array.from(r.querySelectorAll('li.hit')).map(l => l.getAttribute('data-id')).sort(),
  total: document.getElementById('total').textContent,
  marks: Array.from(r.querySelectorAll('em.hl')).map(e => e.textContent),
  injected: r.querySelectorAll('b, script').length,
  text: r.textContent,
  error: document.getElementById('search-error').hidden ? null : document.getElementById('search-error').textContent,
  facets: Array.from(document.querySelectorAll('#facets .facet-value')).map(b => b.getAttribute('data-value')),
};
"#;

const CLUSTER_STATE: &str = r#"
const t = (id) => document.getElementById(id).textContent;
return {
  visible: !document.getElementById('page-cluster').hidden,
  node: t('cluster-node'),
  mode: t('cluster-mode'),
  master: t('cluster-master'),
  epoch: t('cluster-epoch'),
  hit_rate: t('cache-hit-rate'),
  nodes: Array.from(document.querySelectorAll('#cluster-nodes tr.node-row')).map(r => ({
    node: r.getAttribute('data-node'), ports: r.querySelector('.node-ports').textContent })),
  indexes: Array.from(document.querySelectorAll('#cluster-indexes tr[data-index]')).map(r => r.getAttribute('data-index')),
  error: document.getElementById('cluster-error').hidden ? null : t('cluster-error'),
};
"#;

fn ids(v: &Value) -> Vec<String> {
    v["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver"]
async fn console_searches_filters_and_shows_the_cluster_in_headless_chromium() {
    let Some(driver_bin) = chromedriver() else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let own_port = free_port();
    let driver_port = free_port();
    let config = dir.path().join("keyward.toml");
    std::fs::write(
        &config,
        format!(
            r#"[node]
id = "{NODE_ID}"
data_dir = "{data}"

[ownership]
listen = "127.0.0.1:{own_port}"
servers = ["127.0.0.1:{own_port}"]
secret = "console-test-secret"

[cache]
listen = "127.0.0.1:0"
secret = "console-test-secret"

[search]
listen = "127.0.0.1:{http_port}"
commit_interval_ms = 100
"#,
            data = dir.path().join("data").display()
        ),
    )
    .unwrap();

    let mut guard = Guard {
        node: None,
        driver: None,
        node_log: dir.path().join("node.log"),
        driver_log: dir.path().join("chromedriver.log"),
    };
    let node_log = std::fs::File::create(&guard.node_log).unwrap();
    guard.node = Some(
        keyward()
            .current_dir(dir.path())
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::from(node_log))
            .spawn()
            .expect("spawn keyward serve"),
    );

    // chromedriver starts while the node opens, in its own process group (see Guard).
    let driver_log = std::fs::File::create(&guard.driver_log).unwrap();
    {
        use std::os::unix::process::CommandExt;
        guard.driver = Some(
            Command::new(&driver_bin)
                .arg(format!("--port={driver_port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdout(Stdio::from(driver_log.try_clone().unwrap()))
                .stderr(Stdio::from(driver_log))
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", driver_bin.display())),
        );
    }

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let node = format!("http://127.0.0.1:{http_port}");

    // The node is up when /health answers with its id.
    let health = wait_for(Duration::from_secs(90), || {
        let http = http.clone();
        let url = format!("{node}/health");
        async move {
            let r = http.get(url).send().await.ok()?;
            r.status().is_success().then_some(())?;
            r.json::<Value>().await.ok()
        }
    })
    .await;
    let health = health.unwrap_or_else(|| panic!("node did not answer /health\n{}", guard.logs()));
    assert_eq!(health["node"], NODE_ID, "{health}");

    // The console's own assets come from the binary.
    let page = http.get(format!("{node}/")).send().await.unwrap();
    assert!(page.status().is_success());
    assert!(page
        .headers()
        .get("content-security-policy")
        .is_some_and(|v| v.to_str().unwrap_or("").contains("script-src 'self'")));
    assert!(page.text().await.unwrap().contains("/console/app.js"));
    let js = http
        .get(format!("{node}/console/app.js"))
        .send()
        .await
        .unwrap();
    assert!(js.status().is_success());

    // An index with a jieba text field, a mixed one and a tag field; a few documents.
    let r = http
        .post(format!("{node}/indexes"))
        .json(&json!({
            "name": INDEX,
            "id_field": "id",
            "fields": {
                "title": {"type": "text", "tokenizer": "jieba"},
                "body": {"type": "text", "tokenizer": "mixed"},
                "tags": {"type": "tags"}
            }
        }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(
        status.is_success(),
        "create index: {status} {}",
        r.text().await.unwrap()
    );
    let docs = json!([
        {"id": 1, "title": "分布式缓存系统设计", "body": "键的所有权模型决定每个缓存条目由哪个节点负责", "tags": ["中文", "架构"]},
        {"id": 2, "title": "写回缓存与数据库", "body": "脏数据在后台批量刷新到数据库", "tags": ["中文", "数据库"]},
        {"id": 3, "title": "<b>缓存</b> & 标签", "body": "标题里的尖括号必须原样显示", "tags": ["中文", "html"]},
        {"id": 4, "title": "全文搜索与中文分词", "body": "结巴分词让中文搜索更准确", "tags": ["中文", "搜索"]},
        {"id": 5, "title": "Write-back cache design", "body": "The cache flushes dirty keys to the database", "tags": ["english", "数据库"]},
        {"id": 6, "title": "Search with tag filters", "body": "Facets count the documents per tag", "tags": ["english"]}
    ]);
    let r = http
        .post(format!("{node}/indexes/{INDEX}/documents?wait=true"))
        .json(&docs)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(
        status.is_success(),
        "add documents: {status} {}",
        r.text().await.unwrap()
    );

    // chromedriver is ready when /status says so.
    let driver = format!("http://127.0.0.1:{driver_port}");
    let ready = wait_for(Duration::from_secs(30), || {
        let http = http.clone();
        let url = format!("{driver}/status");
        async move {
            let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        }
    })
    .await;
    assert!(ready.is_some(), "chromedriver not ready\n{}", guard.logs());

    let mut options = json!({
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,900", "--no-first-run", "--no-default-browser-check",
            format!("--user-data-dir={}", dir.path().join("profile").display()),
        ]
    });
    if let Some(bin) = chromium() {
        options["binary"] = json!(bin.display().to_string());
    }
    let created: Value = http
        .post(format!("{driver}/session"))
        .json(&json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "timeouts": {"pageLoad": 20000, "script": 10000, "implicit": 0}
        }}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("new session: {e}\n{}", guard.logs()))
        .json()
        .await
        .unwrap();
    let session = created["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {created}\n{}", guard.logs()))
        .to_owned();
    let b = Browser {
        http: http.clone(),
        base: format!("{driver}/session/{session}"),
    };

    b.post("/url", json!({"url": format!("{node}/#search")}))
        .await;

    // The page picks the only index and lists every document before any query.
    let v = b
        .wait_until(
            "the first search",
            Duration::from_secs(20),
            RESULTS_STATE,
            |v| v["state"] == "done" && v["total"] == "6",
        )
        .await;
    let facets = v["facets"].as_array().cloned().unwrap_or_default();
    assert!(facets.contains(&json!("数据库")), "facets: {v}");

    // A Chinese query: jieba matches 缓存 in three titles, and the match is highlighted.
    b.type_into("#q", "缓存").await;
    b.click("#search-btn").await;
    let v = b
        .wait_until(
            "the hits of 缓存",
            Duration::from_secs(20),
            RESULTS_STATE,
            |v| v["state"] == "done" && ids(v) == ["1", "2", "3"],
        )
        .await;
    assert_eq!(v["total"], "3", "{v}");
    let marks = v["marks"].as_array().cloned().unwrap_or_default();
    assert!(
        !marks.is_empty() && marks.iter().all(|m| m == "缓存"),
        "highlights: {v}"
    );
    // Document text is shown as text: the angle brackets are visible, no element was made.
    assert_eq!(v["injected"], 0, "{v}");
    assert!(
        v["text"]
            .as_str()
            .unwrap_or("")
            .contains("<b>缓存</b> & 标签"),
        "{v}"
    );
    assert!(v["error"].is_null(), "{v}");

    // Ticking the tag 数据库 ("all" mode) narrows the hits to the one document that has it.
    b.click(r#"#tag-filters input.tag-filter[data-field="tags"][data-value="数据库"]"#)
        .await;
    let v = b
        .wait_until(
            "the hits of 缓存 with tag 数据库",
            Duration::from_secs(20),
            RESULTS_STATE,
            |v| v["state"] == "done" && ids(v) == ["2"],
        )
        .await;
    assert_eq!(v["total"], "1", "{v}");

    // The cluster page lists this node, its master and epoch.
    b.click("#nav-cluster").await;
    let v = b
        .wait_until(
            "the cluster page",
            Duration::from_secs(20),
            CLUSTER_STATE,
            |v| {
                v["visible"] == true
                    && v["node"] == NODE_ID
                    && v["nodes"]
                        .as_array()
                        .is_some_and(|n| n.iter().any(|r| r["node"] == NODE_ID))
            },
        )
        .await;
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(v["mode"], "server", "{v}");
    assert_eq!(v["master"], format!("127.0.0.1:{own_port}"), "{v}");
    assert!(
        v["epoch"]
            .as_str()
            .is_some_and(|e| e.parse::<u64>().is_ok()),
        "{v}"
    );
    let ours = v["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|r| r["node"] == NODE_ID).cloned())
        .unwrap();
    assert!(
        ours["ports"]
            .as_str()
            .is_some_and(|p| p.parse::<u64>().is_ok()),
        "{v}"
    );
    assert!(
        v["indexes"]
            .as_array()
            .is_some_and(|i| i.contains(&json!(INDEX))),
        "{v}"
    );

    // Back to search: the page still holds the query and the filter.
    b.click("#nav-search").await;
    b.wait_until(
        "the search page again",
        Duration::from_secs(10),
        "return !document.getElementById('page-search').hidden",
        |v| v == &json!(true),
    )
    .await;

    b.call(reqwest::Method::DELETE, "", None).await;
    eprintln!("console test took {:?}", started.elapsed());
}
