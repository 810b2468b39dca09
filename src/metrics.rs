//! `/metrics` in the Prometheus text exposition format (version 0.0.4). The figures already
//! live in the parts (cache stats, search stats, the ownership master's table); this module
//! only names and prints them, so it is written out rather than pulled in as a registry crate.

use crate::http::NodeView;
use serde_json::Value;
use std::fmt::Write;

/// One metric family being written: `# HELP`, `# TYPE`, then samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
        self
    }
}

/// Label values escape backslash, double quote and newline (the format's only three).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    Family::new(out, name, "gauge", help).sample(name, &[], value);
}

fn counter(out: &mut String, name: &str, help: &str, value: f64) {
    Family::new(out, name, "counter", help).sample(name, &[], value);
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// The whole exposition for one node.
pub async fn render(view: &NodeView) -> String {
    let mut out = String::new();
    Family::new(
        &mut out,
        "keyward_node_info",
        "gauge",
        "Constant 1, labelled with the node id and its ownership role.",
    )
    .sample(
        "keyward_node_info",
        &[("node", &view.node), ("ownership", view.role.name())],
        1.0,
    );
    gauge(
        &mut out,
        "keyward_ownership_session_valid",
        "1 while this node's ownership lease is believed valid.",
        if view.coordinator.lease_valid() {
            1.0
        } else {
            0.0
        },
    );

    let own = view.ownership_json().await;
    if let Some(v) = num(&own["epoch"]) {
        gauge(
            &mut out,
            "keyward_ownership_epoch",
            "Epoch of the ownership master (high bits of its fencing tokens).",
            v,
        );
    }
    if let Some(v) = num(&own["sessions"]) {
        gauge(
            &mut out,
            "keyward_ownership_sessions",
            "Live sessions on the ownership master.",
            v,
        );
    }
    if let Some(v) = num(&own["ports"]) {
        gauge(
            &mut out,
            "keyward_ownership_ports",
            "Ports registered on the ownership master.",
            v,
        );
    }
    if let Some(nodes) = own["nodes"].as_array() {
        let mut f = Family::new(
            &mut out,
            "keyward_ownership_node_ports",
            "gauge",
            "Ports held per node, as the master sees them.",
        );
        for n in nodes {
            if let (Some(node), Some(p)) = (n["node"].as_str(), num(&n["ports"])) {
                f.sample("keyward_ownership_node_ports", &[("node", node)], p);
            }
        }
    }
    gauge(
        &mut out,
        "keyward_ownership_master_reachable",
        "1 when the ownership master answered the last stats request (or the hub is in-process).",
        if own.get("error").is_some() { 0.0 } else { 1.0 },
    );

    if let Some(cache) = &view.cache {
        let s = cache.stats();
        let c = |out: &mut String, n: &str, h: &str, v: u64| counter(out, n, h, v as f64);
        c(
            &mut out,
            "keyward_cache_hits_total",
            "Calls served from this node's memory as the owner.",
            s.hits,
        );
        c(
            &mut out,
            "keyward_cache_misses_total",
            "Loads from the database (journal replays included).",
            s.misses,
        );
        c(
            &mut out,
            "keyward_cache_forwards_total",
            "Calls forwarded one hop to another owner.",
            s.forwards,
        );
        c(
            &mut out,
            "keyward_cache_served_for_peers_total",
            "Calls served for other nodes.",
            s.served_for_peers,
        );
        c(
            &mut out,
            "keyward_cache_writes_total",
            "Writes applied at this node as the owner.",
            s.writes,
        );
        c(
            &mut out,
            "keyward_cache_flushed_rows_total",
            "Rows written to the database by flushes.",
            s.flushed_rows,
        );
        c(
            &mut out,
            "keyward_cache_flush_batches_total",
            "Batched flushes.",
            s.flush_batches,
        );
        c(
            &mut out,
            "keyward_cache_flush_errors_total",
            "Flush batches that failed (retried with backoff).",
            s.flush_errors,
        );
        c(
            &mut out,
            "keyward_cache_fenced_total",
            "Flushes refused because this node was a stale owner.",
            s.fenced,
        );
        c(
            &mut out,
            "keyward_cache_evictions_total",
            "Entries evicted under memory pressure.",
            s.evictions,
        );
        c(
            &mut out,
            "keyward_cache_journal_commits_total",
            "Journal group commits.",
            s.journal_commits,
        );
        c(
            &mut out,
            "keyward_cache_journal_entries_total",
            "Journal entries made durable.",
            s.journal_entries,
        );
        gauge(
            &mut out,
            "keyward_cache_journal_lag",
            "Journal entries waiting for their commit.",
            s.journal_lag as f64,
        );
        gauge(
            &mut out,
            "keyward_cache_dirty_keys",
            "Keys written but not yet flushed to the database.",
            s.dirty_keys as f64,
        );
        gauge(
            &mut out,
            "keyward_cache_bytes",
            "Estimated bytes of cached records.",
            s.bytes as f64,
        );
        gauge(
            &mut out,
            "keyward_cache_entries",
            "Cached records.",
            s.entries as f64,
        );
        let merge = if s.writes == 0 {
            f64::NAN
        } else {
            s.flushed_rows as f64 / s.writes as f64
        };
        gauge(
            &mut out,
            "keyward_cache_rows_per_write",
            "Database rows written per cache write (lower means more merging).",
            merge,
        );
    }

    let search = view.search_json().await;
    if let Some(indexes) = search["indexes"].as_array() {
        gauge(
            &mut out,
            "keyward_search_indexes",
            "Search indexes known to this node.",
            indexes.len() as f64,
        );
        let mut f = Family::new(
            &mut out,
            "keyward_search_documents",
            "gauge",
            "Documents per search index.",
        );
        for i in indexes {
            if let (Some(name), Some(d)) = (i["name"].as_str(), num(&i["documents"])) {
                f.sample("keyward_search_documents", &[("index", name)], d);
            }
        }
    }

    if let Some(db) = &view.db {
        Family::new(
            &mut out,
            "keyward_dbc_info",
            "gauge",
            "Constant 1, labelled with the backend of the node's database.",
        )
        .sample(
            "keyward_dbc_info",
            &[("backend", &format!("{:?}", db.kind()).to_lowercase())],
            1.0,
        );
        if let Some(p) = db.pool_stats() {
            let help = "Open connections in the DBC pool.";
            gauge(
                &mut out,
                "keyward_dbc_pool_connections",
                help,
                p.size as f64,
            );
            let help = "Idle connections in the DBC pool.";
            gauge(&mut out, "keyward_dbc_pool_idle", help, p.idle as f64);
            let help = "Configured connection limit of the DBC pool.";
            gauge(&mut out, "keyward_dbc_pool_max", help, p.max as f64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_numbers_plain() {
        let mut out = String::new();
        Family::new(&mut out, "m", "gauge", "help")
            .sample("m", &[("k", "a\"b\\c\nd")], 3.0)
            .sample("m", &[], 0.25);
        assert_eq!(
            out,
            "# HELP m help\n# TYPE m gauge\nm{k=\"a\\\"b\\\\c\\nd\"} 3\nm 0.25\n"
        );
        assert_eq!(number(f64::NAN), "NaN");
    }
}
