//! `keyward status`: the view of a running node (its `/cluster.json`), or, when no node answers
//! at the configured HTTP address, the ownership group's view straight from its servers.

use crate::config::KeywardConfig;
use serde_json::{json, Value};
use std::fmt::Write;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StatusError {
    #[error("no node answers at http://{addr} ({http}) and no ownership servers are configured")]
    NoNode { addr: String, http: String },
    #[error("no node answers at http://{addr} ({http}); ownership servers: {ownership}")]
    Nothing {
        addr: String,
        http: String,
        ownership: String,
    },
}

/// The group's view from its master: any member answers, but only the master's table holds
/// the sessions and ports, so a member naming another as master is asked again there.
pub async fn group_stats(
    servers: &[String],
    options: &keyward_ownership::ClientOptions,
) -> keyward_ownership::Result<keyward_ownership::ServerStats> {
    let first = keyward_ownership::server_stats(servers, options).await?;
    if let Some(master) = &first.master {
        if let Ok(s) = keyward_ownership::server_stats(std::slice::from_ref(master), options).await
        {
            return Ok(s);
        }
    }
    Ok(first)
}

/// The ownership section of `/cluster.json` (and of `keyward status --json`) from the
/// group's stats.
pub fn stats_json(mode: &str, s: &keyward_ownership::ServerStats) -> Value {
    json!({
        "mode": mode, "members": s.members, "master": s.master,
        "epoch": s.epoch, "sessions": s.sessions, "ports": s.ports,
        "reregistration_ms": s.reregistration_ms,
        "nodes": s.nodes.iter().map(|n| json!({
            "node": n.node, "ports": n.ports, "push_channel": n.push_channel,
            "mode": n.mode, "lease_ms": n.lease_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The node's view as JSON, in the shape of `/cluster.json`.
pub async fn fetch(config: &KeywardConfig) -> Result<Value, StatusError> {
    let addr = config
        .search
        .advertise
        .clone()
        .unwrap_or_else(|| config.search.listen.clone());
    let http_err = match from_node(config, &addr).await {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let o = &config.ownership;
    let servers = if o.servers.is_empty() {
        o.group.members.clone()
    } else {
        o.servers.clone()
    };
    if servers.is_empty() {
        return Err(StatusError::NoNode {
            addr,
            http: http_err,
        });
    }
    let options = o.client_options();
    let ask = group_stats(&servers, &options);
    match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(Ok(s)) => Ok(json!({
            "node": null,
            "ownership": stats_json("servers", &s),
            "cache": null, "search": null,
        })),
        Ok(Err(e)) => Err(StatusError::Nothing {
            addr,
            http: http_err,
            ownership: e.to_string(),
        }),
        Err(_) => Err(StatusError::Nothing {
            addr,
            http: http_err,
            ownership: "no answer within 5 s".into(),
        }),
    }
}

async fn from_node(config: &KeywardConfig, addr: &str) -> Result<Value, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client.get(format!("http://{addr}/cluster.json"));
    let key = config
        .search
        .read_keys
        .first()
        .or(config.search.write_keys.first());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    resp.json().await.map_err(|e| e.to_string())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The view as a few lines for people.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let o = &v["ownership"];
    let _ = writeln!(out, "node:       {}", text(&v["node"]));
    let _ = writeln!(out, "ownership:  {}", text(&o["mode"]));
    if let Some(m) = o["members"].as_array().filter(|m| !m.is_empty()) {
        let list: Vec<String> = m.iter().map(text).collect();
        let _ = writeln!(out, "members:    {}", list.join(", "));
    }
    let _ = writeln!(out, "master:     {}", text(&o["master"]));
    let _ = writeln!(out, "epoch:      {}", text(&o["epoch"]));
    let _ = writeln!(
        out,
        "sessions:   {}   ports: {}",
        text(&o["sessions"]),
        text(&o["ports"])
    );
    if let Some(e) = o.get("error") {
        let _ = writeln!(out, "error:      {}", text(e));
    }
    if let Some(nodes) = o["nodes"].as_array() {
        let _ = writeln!(out, "{:<40} {:>10}  push", "NODE", "PORTS");
        for n in nodes {
            let _ = writeln!(
                out,
                "{:<40} {:>10}  {}",
                text(&n["node"]),
                text(&n["ports"]),
                text(&n["push_channel"])
            );
        }
    }
    let c = &v["cache"];
    if !c.is_null() {
        let _ = writeln!(
            out,
            "cache:      hits {}  misses {}  hit rate {}  forwards {}  entries {}  dirty {}  journal lag {}",
            text(&c["hits"]),
            text(&c["misses"]),
            c["hit_rate"]
                .as_f64()
                .map(|r| format!("{:.1}%", r * 100.0))
                .unwrap_or_else(|| "-".into()),
            text(&c["forwards"]),
            text(&c["entries"]),
            text(&c["dirty"]),
            text(&c["journal_lag"]),
        );
    }
    if let Some(ix) = v["search"]["indexes"].as_array() {
        let _ = writeln!(out, "indexes:    {}", ix.len());
        for i in ix {
            let _ = writeln!(
                out,
                "  {:<30} {:>10} documents  {} shards",
                text(&i["name"]),
                text(&i["documents"]),
                text(&i["shards"])
            );
        }
    }
    out
}
