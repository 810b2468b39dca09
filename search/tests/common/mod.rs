//! Test nodes: a search service on 127.0.0.1:0 with its own ownership session.
#![allow(dead_code)]

use keyward_ownership::{Coordinator, Endpoints, InProcessHub, SessionConfig};
use keyward_search::{serve, SearchConfig, SearchService, Store};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub struct TestNode {
    pub addr: SocketAddr,
    pub service: SearchService,
    pub coord: Coordinator,
    stop: Option<oneshot::Sender<()>>,
    pub http: reqwest::Client,
}

impl TestNode {
    pub async fn start(hub: &InProcessHub, store: Arc<dyn Store>, dir: &Path) -> TestNode {
        Self::start_with(hub, store, dir, |_| {}).await
    }

    pub async fn start_with(
        hub: &InProcessHub,
        store: Arc<dyn Store>,
        dir: &Path,
        tweak: impl FnOnce(&mut SearchConfig),
    ) -> TestNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut endpoints = Endpoints::new();
        endpoints.insert("search".into(), addr.to_string());
        let coord = hub
            .connect(SessionConfig {
                endpoints,
                lease: Duration::from_secs(5),
                margin: Duration::from_millis(500),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut config = SearchConfig {
            data_dir: dir.to_path_buf(),
            commit_interval_ms: 50,
            ..Default::default()
        };
        tweak(&mut config);
        let service = SearchService::new(config, store, coord.clone()).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(serve(service.clone(), listener, async move {
            let _ = rx.await;
        }));
        TestNode {
            addr,
            service,
            coord,
            stop: Some(tx),
            http: reqwest::Client::new(),
        }
    }

    /// Kills the node: its session is closed (ports freed), its server stops, its shards close.
    pub async fn kill(mut self) {
        let _ = self.coord.close().await;
        self.service.shutdown();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.send_with(method, path, body, None).await
    }

    pub async fn send_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.http.request(m, self.url(path));
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        let resp = tokio::time::timeout(Duration::from_secs(60), rb.send())
            .await
            .expect("request hung")
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Value {
        let (s, v) = self.send("POST", path, Some(&body.to_string())).await;
        assert!((200..300).contains(&s), "POST {path} -> {s} {v}");
        v
    }

    pub async fn get(&self, path: &str) -> Value {
        let (s, v) = self.send("GET", path, None).await;
        assert!((200..300).contains(&s), "GET {path} -> {s} {v}");
        v
    }

    pub async fn search(&self, index: &str, body: Value) -> Value {
        self.post(&format!("/indexes/{index}/search"), &body).await
    }
}

pub fn ids(resp: &Value) -> Vec<Value> {
    resp["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].clone())
        .collect()
}

pub fn docs_schema(name: &str) -> Value {
    json!({
        "name": name,
        "id_field": "id",
        "fields": {
            "title": {"type": "text", "tokenizer": "mixed", "stored": true, "boost": 2.0},
            "body": {"type": "text", "tokenizer": "mixed"},
            "en": {"type": "text", "tokenizer": "standard"},
            "zh": {"type": "text", "tokenizer": "jieba"},
            "tags": {"type": "tags"},
            "lang": {"type": "tags"},
            "year": {"type": "i64"},
            "rating": {"type": "f64"},
            "published": {"type": "date"},
            "secret": {"type": "text", "stored": false}
        }
    })
}
