//! `keyward-bench search`: Keyward's search over its HTTP API against Sphinx 2.2.11 (`indexer` +
//! `searchd`, queried over SphinxQL) on the same corpus, interleaved rounds, medians.
//!
//! Each round, each side builds a fresh index of the whole corpus and is timed until every
//! document is searchable (Keyward: batched `POST /documents`, the last one with `?wait=true`,
//! then a count query; Sphinx: `indexer --rotate` into the running `searchd`, then a count
//! query). Then the same fixed query set (Chinese, English, and both with a tag filter) runs
//! several passes, one request at a time, for p50/p99; then the judged set gives recall in the
//! top 10, per language. Both sides return the same thing per hit: id, title and tags.
//!
//! Inputs: `KEYWARD_SEARCH_CORPUS` (the `documents.jsonl` of `search/corpus/build.sh`, or its
//! directory; default `target/search-corpus/`, built with `build.sh … full` when missing),
//! `KEYWARD_SEARCH_JUDGED` (default `search/corpus/judged.json`), `KEYWARD_BENCH_SEARCH_DB`
//! (the DBC URL documents are stored in; default a SQLite file in a temp dir; `mem` for the
//! in-memory store, which skips durability and is for profiling only),
//! `KEYWARD_BENCH_SEARCH_DUMP` (a directory: each side's top 10 per judged query goes to
//! `<side>.jsonl` there, with the judged-relevant ids among them).

use crate::anchor::{ensure_package, free_port, wait_port};
use crate::harness::{
    fmt_number, get, interleave, BenchError, Contender, Measures, Plan, ResultLine,
};
use async_trait::async_trait;
use futures::StreamExt;
use keyward_ownership::{Endpoints, InProcessHub, SessionConfig};
use keyward_search::{DbcStore, MemStore, SearchConfig, SearchService, Store};
use serde_json::{json, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlSslMode};
use sqlx::{AssertSqlSafe, Connection, Executor, Row};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Documents per `POST /documents` request.
const BATCH: usize = 1000;
/// Write requests in flight at once.
const IN_FLIGHT: usize = 4;
/// Passes over the query set per round, for latency.
const PASSES: usize = 5;
const PASSES_QUICK: usize = 2;
/// How long a side may take to make the corpus searchable.
const INDEX_TIMEOUT: Duration = Duration::from_secs(600);

fn setup(m: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(m.to_string())
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// One corpus paragraph.
struct Doc {
    id: String,
    title: String,
    body: String,
    tags: Vec<String>,
    lang: String,
}

fn corpus_path() -> Result<PathBuf, BenchError> {
    let p = match std::env::var_os("KEYWARD_SEARCH_CORPUS") {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = workspace().join("target/search-corpus");
            if !dir.join("documents.jsonl").is_file() && !dir.join("corpus.jsonl").is_file() {
                eprintln!("building the corpus into {} (full set)", dir.display());
                let status = Command::new("sh")
                    .arg(workspace().join("search/corpus/build.sh"))
                    .arg(&dir)
                    .arg("full")
                    .status()
                    .map_err(|e| setup(format!("corpus build: {e}")))?;
                if !status.success() {
                    return Err(setup("search/corpus/build.sh failed"));
                }
            }
            dir
        }
    };
    if !p.is_dir() {
        return Ok(p);
    }
    // build.sh has written `documents.jsonl` (earlier versions: `corpus.jsonl`).
    let docs = p.join("documents.jsonl");
    Ok(if docs.is_file() {
        docs
    } else {
        p.join("corpus.jsonl")
    })
}

fn load_corpus(path: &Path) -> Result<Vec<Doc>, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| setup(format!("reading corpus {}: {e}", path.display())))?;
    let mut docs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| setup(format!("{}:{}: {e}", path.display(), n + 1)))?;
        let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
        docs.push(Doc {
            id: s("id"),
            title: s("title"),
            body: s("body"),
            tags: v["tags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            lang: s("lang"),
        });
    }
    if docs.is_empty() {
        return Err(setup(format!("corpus {} is empty", path.display())));
    }
    Ok(docs)
}

struct Judged {
    q: String,
    lang: String,
    relevant: HashSet<String>,
}

fn load_judged() -> Result<Vec<Judged>, BenchError> {
    let path = std::env::var_os("KEYWARD_SEARCH_JUDGED")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("search/corpus/judged.json"));
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .map_err(|e| setup(format!("reading {}: {e}", path.display())))?,
    )
    .map_err(|e| setup(format!("{}: {e}", path.display())))?;
    let qs = v["queries"]
        .as_array()
        .ok_or_else(|| setup("judged set without \"queries\""))?;
    Ok(qs
        .iter()
        .filter_map(|q| {
            Some(Judged {
                q: q["q"].as_str()?.to_owned(),
                lang: q["lang"].as_str()?.to_owned(),
                relevant: q["relevant"]
                    .as_array()?
                    .iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect(),
            })
        })
        .filter(|j| !j.relevant.is_empty())
        .collect())
}

#[derive(Clone, Debug)]
enum Filter {
    None,
    Lang(String),
    Tag(String),
}

#[derive(Clone, Debug)]
struct Query {
    text: String,
    filter: Filter,
}

/// The fixed latency set: every judged query plain, filtered by its language, and filtered by
/// the largest package tag of its language; plus common single words of both languages.
fn query_set(judged: &[Judged], docs: &[Doc]) -> Vec<Query> {
    let mut top_pkg: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for d in docs {
        if let Some(p) = d.tags.first() {
            *top_pkg
                .entry(d.lang.as_str())
                .or_default()
                .entry(p.as_str())
                .or_default() += 1;
        }
    }
    let pkg_of = |lang: &str| -> Option<String> {
        top_pkg.get(lang).and_then(|m| {
            m.iter()
                .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(k, _)| (*k).to_owned())
        })
    };
    let mut out = Vec::new();
    let mut add = |text: &str, lang: &str| {
        out.push(Query {
            text: text.to_owned(),
            filter: Filter::None,
        });
        out.push(Query {
            text: text.to_owned(),
            filter: Filter::Lang(lang.to_owned()),
        });
        if let Some(p) = pkg_of(lang) {
            out.push(Query {
                text: text.to_owned(),
                filter: Filter::Tag(p),
            });
        }
    };
    for j in judged {
        add(&j.q, &j.lang);
    }
    for w in ["文件", "配置", "网络", "内核", "用户", "安装软件包"] {
        add(w, "zh");
    }
    for w in [
        "file",
        "configuration",
        "network",
        "kernel",
        "user",
        "install package",
    ] {
        add(w, "en");
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// With `KEYWARD_BENCH_SEARCH_DUMP=DIR`, each side's top 10 per judged query, and which of
/// them are judged relevant, go to `DIR/<side>.jsonl` (one line per query): to see where two
/// engines differ, not only by how much.
fn dump_top10(side: &str, judged: &[Judged], results: &[Vec<String>]) {
    let Some(dir) = std::env::var_os("KEYWARD_BENCH_SEARCH_DUMP") else {
        return;
    };
    let mut out = String::new();
    for (j, got) in judged.iter().zip(results) {
        let top: Vec<&String> = got.iter().take(10).collect();
        let hits: Vec<&&String> = top.iter().filter(|id| j.relevant.contains(**id)).collect();
        let line = json!({"q": j.q, "lang": j.lang, "relevant": j.relevant.len(), "top10": top, "hits": hits});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    let path = Path::new(&dir).join(format!("{side}.jsonl"));
    if let Err(e) = std::fs::write(&path, out) {
        eprintln!("KEYWARD_BENCH_SEARCH_DUMP: {}: {e}", path.display());
    }
}

/// Mean over queries of |relevant ∩ top 10| / min(|relevant|, 10), per language.
fn recall(judged: &[Judged], results: &[Vec<String>]) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (j, got) in judged.iter().zip(results) {
        let found = got
            .iter()
            .take(10)
            .filter(|id| j.relevant.contains(*id))
            .count();
        let r = found as f64 / j.relevant.len().min(10) as f64;
        let e = sums.entry(j.lang.clone()).or_default();
        e.0 += r;
        e.1 += 1;
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

fn latency_measures(
    mut lat_ms: Vec<f64>,
    docs_per_s: f64,
    rec: &BTreeMap<String, f64>,
) -> Measures {
    lat_ms.sort_by(|a, b| a.total_cmp(b));
    let mut m: Measures = [
        ("docs_per_s".to_owned(), docs_per_s),
        ("p50_ms".to_owned(), percentile(&lat_ms, 0.50)),
        ("p99_ms".to_owned(), percentile(&lat_ms, 0.99)),
    ]
    .into();
    for (lang, r) in rec {
        m.insert(format!("recall10_{lang}"), *r);
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Keyward

struct Keyward {
    base: String,
    http: reqwest::Client,
    service: SearchService,
    bodies: Vec<String>,
    n: usize,
    queries: Arc<Vec<Query>>,
    judged: Arc<Vec<Judged>>,
    passes: usize,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Keyward {
    async fn start(
        docs: &[Doc],
        queries: Arc<Vec<Query>>,
        judged: Arc<Vec<Judged>>,
        passes: usize,
    ) -> Result<Keyward, BenchError> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = match std::env::var("KEYWARD_BENCH_SEARCH_DB").ok() {
            Some(u) if u == "mem" => Arc::new(MemStore::new()),
            other => {
                let url = other.unwrap_or_else(|| {
                    format!("sqlite:{}?mode=rwc", dir.path().join("kw.db").display())
                });
                let db = keyward_dbc::Db::connect(&url)
                    .await
                    .map_err(|e| setup(format!("DBC {url}: {e}")))?;
                Arc::new(DbcStore::open(db).await.map_err(setup)?)
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut endpoints = Endpoints::new();
        endpoints.insert("search".into(), addr.to_string());
        let hub = InProcessHub::new();
        let coord = hub
            .connect(SessionConfig {
                endpoints,
                ..Default::default()
            })
            .await
            .map_err(setup)?;
        // Bulk-load settings, as an operator would set them for a large index: one indexing
        // thread per core and a writer heap as large as Sphinx's indexer `mem_limit`.
        let env = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let config = SearchConfig {
            data_dir: dir.path().join("search"),
            shards_per_index: env("KEYWARD_BENCH_SEARCH_SHARDS", 1) as u32,
            writer_threads: env("KEYWARD_BENCH_SEARCH_THREADS", 2),
            writer_memory_mb: env("KEYWARD_BENCH_SEARCH_MEM_MB", 512),
            ..Default::default()
        };
        let service = SearchService::new(config, store, coord).map_err(setup)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(keyward_search::serve(
            service.clone(),
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        let bodies = docs
            .chunks(BATCH)
            .map(|c| {
                let arr: Vec<Value> = c
                    .iter()
                    .map(|d| {
                        json!({"id": d.id, "title": d.title, "body": d.body,
                               "tags": d.tags, "lang": [d.lang]})
                    })
                    .collect();
                Value::Array(arr).to_string()
            })
            .collect();
        Ok(Keyward {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            service,
            bodies,
            n: docs.len(),
            queries,
            judged,
            passes,
            stop: Some(tx),
            _dir: dir,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: String,
    ) -> Result<Value, String> {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| format!("{path}: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "{path}: {status} {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))
    }

    fn search_body(q: &Query, limit: usize) -> String {
        let mut b = json!({"q": q.text, "limit": limit});
        match &q.filter {
            Filter::None => {}
            Filter::Lang(l) => b["tags"] = json!({"all": {"lang": [l]}}),
            Filter::Tag(t) => b["tags"] = json!({"all": {"tags": [t]}}),
        }
        b.to_string()
    }

    async fn total(&self, index: &str) -> Result<u64, String> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/indexes/{index}/search"),
                r#"{"limit": 0}"#.into(),
            )
            .await?;
        v["total"]
            .as_u64()
            .ok_or_else(|| format!("no total in {v}"))
    }
}

#[async_trait]
impl Contender for Keyward {
    fn name(&self) -> &str {
        "keyward"
    }

    async fn run(&mut self, round: usize) -> Result<Measures, String> {
        let index = format!("bench{round}");
        let def = json!({
            "name": index,
            "id_field": "id",
            "fields": {
                "title": {"type": "text", "tokenizer": "mixed"},
                "body": {"type": "text", "tokenizer": "mixed", "stored": false},
                "tags": {"type": "tags"},
                "lang": {"type": "tags"}
            }
        });
        self.call(reqwest::Method::POST, "/indexes", def.to_string())
            .await?;
        let mut bodies = self.bodies.clone();
        let last = bodies.pop().ok_or("no documents")?;
        let path = format!("/indexes/{index}/documents");
        let start = Instant::now();
        let this = &*self;
        let results: Vec<Result<Value, String>> = futures::stream::iter(bodies)
            .map(|b| this.call(reqwest::Method::POST, &path, b))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for r in results {
            r?;
        }
        self.call(reqwest::Method::POST, &format!("{path}?wait=true"), last)
            .await?;
        loop {
            let t = self.total(&index).await?;
            if t == self.n as u64 {
                break;
            }
            if start.elapsed() > INDEX_TIMEOUT {
                return Err(format!("{t} of {} documents searchable", self.n));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let docs_per_s = self.n as f64 / start.elapsed().as_secs_f64();

        let spath = format!("/indexes/{index}/search");
        let mut lat = Vec::with_capacity(self.queries.len() * self.passes);
        for _ in 0..self.passes {
            for q in self.queries.iter() {
                let body = Self::search_body(q, 10);
                let t = Instant::now();
                let v = self.call(reqwest::Method::POST, &spath, body).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                if !v["hits"].is_array() {
                    return Err(format!("no hits in {v}"));
                }
            }
        }
        let mut got = Vec::with_capacity(self.judged.len());
        for j in self.judged.iter() {
            let q = Query {
                text: j.q.clone(),
                filter: Filter::None,
            };
            let v = self
                .call(reqwest::Method::POST, &spath, Self::search_body(&q, 10))
                .await?;
            let ids: Vec<String> = v["hits"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|h| h["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            got.push(ids);
        }
        dump_top10("keyward", &self.judged, &got);
        let rec = recall(&self.judged, &got);
        self.call(
            reqwest::Method::DELETE,
            &format!("/indexes/{index}"),
            String::new(),
        )
        .await?;
        Ok(latency_measures(lat, docs_per_s, &rec))
    }
}

impl Drop for Keyward {
    fn drop(&mut self) {
        self.service.shutdown();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sphinx

struct Sphinx {
    dir: tempfile::TempDir,
    conf: PathBuf,
    indexer: PathBuf,
    child: Child,
    conn: MySqlConnection,
    ids: Vec<String>,
    tag_ids: HashMap<String, u32>,
    queries: Arc<Vec<Query>>,
    judged: Arc<Vec<Judged>>,
    passes: usize,
}

fn lang_id(lang: &str) -> u32 {
    match lang {
        "zh" => 1,
        "en" => 2,
        _ => 3,
    }
}

/// Text as XML character data: markup escaped, characters XML forbids dropped.
fn xml_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push(' '),
            c => out.push(c),
        }
    }
}

/// Query text for `MATCH('…')`: Sphinx's operator characters and quotes become spaces (the
/// query set is plain words), so the same words reach both engines.
fn sphinx_match(q: &str) -> String {
    q.chars()
        .map(|c| {
            if "\\()|-!@~\"&/^$=<>'*?%[]{}:;,.".contains(c) {
                ' '
            } else {
                c
            }
        })
        .collect()
}

impl Sphinx {
    fn conf_text(dir: &Path, port: u16, rounds: usize) -> String {
        let d = dir.display();
        let mut s = format!(
            "source corpus\n{{\n  type = xmlpipe2\n  xmlpipe_command = cat {d}/docs.xml\n}}\n\n\
             source warm_src\n{{\n  type = xmlpipe2\n  xmlpipe_command = cat {d}/warm.xml\n}}\n\n\
             index warm\n{{\n  source = warm_src\n  path = {d}/warm\n  ngram_len = 1\n  \
             ngram_chars = U+3000..U+2FA1F, U+FF10..U+FF19, U+FF21..U+FF3A, U+FF41..U+FF5A\n  \
             charset_table = 0..9, A..Z->a..z, _, a..z, U+410..U+42F->U+430..U+44F, U+430..U+44F\n  \
             min_word_len = 1\n  morphology = stem_en\n}}\n\n"
        );
        for r in 0..rounds {
            s.push_str(&format!(
                "index idx_r{r} : warm\n{{\n  source = corpus\n  path = {d}/idx_r{r}\n}}\n\n"
            ));
        }
        s.push_str(&format!(
            "indexer\n{{\n  mem_limit = 512M\n}}\n\n\
             searchd\n{{\n  listen = 127.0.0.1:{port}:mysql41\n  log = {d}/searchd.log\n  \
             pid_file = {d}/searchd.pid\n  binlog_path =\n  workers = threads\n  \
             max_matches = 1000\n}}\n"
        ));
        s
    }

    async fn start(
        docs: &[Doc],
        rounds: usize,
        queries: Arc<Vec<Query>>,
        judged: Arc<Vec<Judged>>,
        passes: usize,
    ) -> Result<Sphinx, BenchError> {
        let indexer = ensure_package("sphinxsearch", "indexer")?;
        let searchd = ensure_package("sphinxsearch", "searchd")?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;

        let mut all_tags: Vec<&str> = docs
            .iter()
            .flat_map(|d| d.tags.iter().map(String::as_str))
            .collect();
        all_tags.sort_unstable();
        all_tags.dedup();
        let tag_ids: HashMap<String, u32> = all_tags
            .iter()
            .enumerate()
            .map(|(i, t)| ((*t).to_owned(), i as u32 + 1))
            .collect();
        let header =
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<sphinx:docset>\n<sphinx:schema>\n\
             <sphinx:field name=\"title\" attr=\"string\"/>\n<sphinx:field name=\"body\"/>\n\
             <sphinx:attr name=\"lang\" type=\"int\" bits=\"8\"/>\n\
             <sphinx:attr name=\"tags\" type=\"multi\"/>\n</sphinx:schema>\n";
        let mut xml = String::with_capacity(docs.iter().map(|d| d.body.len() + 200).sum());
        xml.push_str(header);
        for (i, d) in docs.iter().enumerate() {
            xml.push_str(&format!("<sphinx:document id=\"{}\"><title>", i + 1));
            xml_text(&d.title, &mut xml);
            xml.push_str("</title><body>");
            xml_text(&d.body, &mut xml);
            let tags: Vec<String> = d
                .tags
                .iter()
                .filter_map(|t| tag_ids.get(t).map(u32::to_string))
                .collect();
            xml.push_str(&format!(
                "</body><lang>{}</lang><tags>{}</tags></sphinx:document>\n",
                lang_id(&d.lang),
                tags.join(",")
            ));
        }
        xml.push_str("</sphinx:docset>\n");
        std::fs::write(dir.path().join("docs.xml"), xml)?;
        std::fs::write(
            dir.path().join("warm.xml"),
            format!(
                "{header}<sphinx:document id=\"1\"><title>warm</title><body>warm</body>\
                 <lang>2</lang><tags>1</tags></sphinx:document>\n</sphinx:docset>\n"
            ),
        )?;
        let conf = dir.path().join("sphinx.conf");
        std::fs::write(&conf, Self::conf_text(dir.path(), port, rounds))?;

        let fail = |m: String| BenchError::Anchor {
            name: "sphinx".into(),
            message: m,
        };
        let out = Command::new(&indexer)
            .arg("--config")
            .arg(&conf)
            .arg("warm")
            .output()?;
        if !out.status.success() {
            return Err(fail(format!(
                "indexer warm: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        let log = std::fs::File::create(dir.path().join("searchd.out"))?;
        let mut child = Command::new(&searchd)
            .arg("--config")
            .arg(&conf)
            .arg("--nodetach")
            .current_dir(dir.path())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| fail(format!("spawn searchd: {e}")))?;
        if !wait_port(port, Duration::from_secs(30)) {
            let _ = child.kill();
            let _ = child.wait();
            let out = std::fs::read_to_string(dir.path().join("searchd.out")).unwrap_or_default();
            return Err(fail(format!("searchd did not listen: {out}")));
        }
        // SphinxQL speaks the MySQL protocol but not every statement of it: no session
        // settings, no TLS, text protocol only (sqlx sends unprepared statements as text).
        let opts = MySqlConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("root")
            .ssl_mode(MySqlSslMode::Disabled)
            .pipes_as_concat(false)
            .no_engine_substitution(false)
            .timezone(None)
            .set_names(false);
        let conn = match MySqlConnection::connect_with(&opts).await {
            Ok(c) => c,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("SphinxQL connect: {e}")));
            }
        };
        Ok(Sphinx {
            dir,
            conf,
            indexer,
            child,
            conn,
            ids: docs.iter().map(|d| d.id.clone()).collect(),
            tag_ids,
            queries,
            judged,
            passes,
        })
    }

    fn sql(&self, index: &str, q: &Query, limit: usize) -> String {
        let mut s = format!(
            "SELECT id, title, tags FROM {index} WHERE MATCH('{}')",
            sphinx_match(&q.text)
        );
        match &q.filter {
            Filter::None => {}
            Filter::Lang(l) => s.push_str(&format!(" AND lang = {}", lang_id(l))),
            Filter::Tag(t) => s.push_str(&format!(
                " AND tags = {}",
                self.tag_ids.get(t).unwrap_or(&0)
            )),
        }
        s.push_str(&format!(
            " LIMIT {limit} OPTION field_weights = (title = 2, body = 1)"
        ));
        s
    }

    async fn query_ids(&mut self, sql: String) -> Result<Vec<u64>, String> {
        let rows = self
            .conn
            .fetch_all(AssertSqlSafe(sql))
            .await
            .map_err(|e| format!("SphinxQL: {e}"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            // Read every column, as the Keyward side parses its whole answer.
            let id: u64 = r
                .try_get_unchecked::<u64, _>(0)
                .or_else(|_| r.try_get_unchecked::<i64, _>(0).map(|v| v as u64))
                .map_err(|e| format!("id column: {e}"))?;
            let _title: String = r.try_get_unchecked(1).unwrap_or_default();
            let _tags: String = r.try_get_unchecked(2).unwrap_or_default();
            out.push(id);
        }
        Ok(out)
    }

    async fn count(&mut self, index: &str) -> Result<u64, String> {
        let rows = self
            .conn
            .fetch_all(AssertSqlSafe(format!("SELECT COUNT(*) FROM {index}")))
            .await
            .map_err(|e| e.to_string())?;
        let r = rows.first().ok_or("no row")?;
        r.try_get_unchecked::<i64, _>(0)
            .map(|v| v as u64)
            .or_else(|_| r.try_get_unchecked::<u64, _>(0))
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Contender for Sphinx {
    fn name(&self) -> &str {
        "sphinx"
    }

    async fn run(&mut self, round: usize) -> Result<Measures, String> {
        let index = format!("idx_r{round}");
        let n = self.ids.len() as u64;
        let start = Instant::now();
        let indexer = self.indexer.clone();
        let conf = self.conf.clone();
        let idx = index.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(indexer)
                .arg("--config")
                .arg(conf)
                .arg("--rotate")
                .arg(&idx)
                .output()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("indexer: {e}"))?;
        if !out.status.success() {
            return Err(format!("indexer: {}", String::from_utf8_lossy(&out.stdout)));
        }
        loop {
            // Not served until searchd has rotated the new index in.
            if let Ok(c) = self.count(&index).await {
                if c == n {
                    break;
                }
            }
            if start.elapsed() > INDEX_TIMEOUT {
                return Err("searchd did not serve the new index".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let docs_per_s = n as f64 / start.elapsed().as_secs_f64();

        let queries = self.queries.clone();
        let mut lat = Vec::with_capacity(queries.len() * self.passes);
        for _ in 0..self.passes {
            for q in queries.iter() {
                let sql = self.sql(&index, q, 10);
                let t = Instant::now();
                self.query_ids(sql).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let judged = self.judged.clone();
        let mut got = Vec::with_capacity(judged.len());
        for j in judged.iter() {
            let q = Query {
                text: j.q.clone(),
                filter: Filter::None,
            };
            let sql = self.sql(&index, &q, 10);
            let ids = self.query_ids(sql).await?;
            got.push(
                ids.into_iter()
                    .filter_map(|i| self.ids.get((i as usize).wrapping_sub(1)).cloned())
                    .collect(),
            );
        }
        dump_top10("sphinx", &judged, &got);
        let rec = recall(&judged, &got);
        Ok(latency_measures(lat, docs_per_s, &rec))
    }
}

impl Drop for Sphinx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.dir.path());
    }
}

pub async fn run(plan: Plan) -> Result<ResultLine, BenchError> {
    let path = corpus_path()?;
    let docs = load_corpus(&path)?;
    let judged = Arc::new(load_judged()?);
    let queries = Arc::new(query_set(&judged, &docs));
    let zh = docs.iter().filter(|d| d.lang == "zh").count();
    eprintln!(
        "corpus {}: {} documents ({} zh), {} latency queries, {} judged queries",
        path.display(),
        docs.len(),
        zh,
        queries.len(),
        judged.len()
    );
    let passes = if plan.quick { PASSES_QUICK } else { PASSES };
    let mut sphinx =
        Sphinx::start(&docs, plan.rounds, queries.clone(), judged.clone(), passes).await?;
    let mut kw = Keyward::start(&docs, queries, judged, passes).await?;
    drop(docs);
    let _ = std::io::stderr().flush();
    let medians = interleave(plan, &mut [&mut kw, &mut sphinx]).await;
    let k = |m: &str| get(&medians, "keyward", m);
    let s = |m: &str| get(&medians, "sphinx", m);
    eprintln!(
        "keyward: {} docs/s, p50 {} ms, p99 {} ms; sphinx: {} docs/s, p50 {} ms, p99 {} ms",
        fmt_number(k("docs_per_s").unwrap_or(f64::NAN)),
        fmt_number(k("p50_ms").unwrap_or(f64::NAN)),
        fmt_number(k("p99_ms").unwrap_or(f64::NAN)),
        fmt_number(s("docs_per_s").unwrap_or(f64::NAN)),
        fmt_number(s("p50_ms").unwrap_or(f64::NAN)),
        fmt_number(s("p99_ms").unwrap_or(f64::NAN)),
    );
    let mut r = ResultLine::default();
    r.set("index_docs_per_s", k("docs_per_s"))
        .set(
            "index_ratio_vs_sphinx",
            ResultLine::ratio(k("docs_per_s"), s("docs_per_s")),
        )
        .set(
            "p50_ratio_vs_sphinx",
            ResultLine::ratio(k("p50_ms"), s("p50_ms")),
        )
        .set(
            "p99_ratio_vs_sphinx",
            ResultLine::ratio(k("p99_ms"), s("p99_ms")),
        )
        .set("recall10_zh", k("recall10_zh"))
        .set("recall10_en", k("recall10_en"))
        .set("sphinx_recall10_zh", s("recall10_zh"))
        .set("sphinx_recall10_en", s("recall10_en"));
    Ok(r)
}
