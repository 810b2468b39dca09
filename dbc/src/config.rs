//! Connection settings: the `[dbc]` config section and per-connection options.

use serde::Deserialize;
use std::time::Duration;

/// The `[dbc]` section of Keyward's config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbcConfig {
    pub url: String,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
    pub call_timeout_ms: u64,
}

impl Default for DbcConfig {
    fn default() -> Self {
        let o = ConnectOptions::default();
        DbcConfig {
            url: "sqlite:./keyward-data/keyward.db?mode=rwc".into(),
            max_connections: o.max_connections,
            connect_timeout_ms: o.connect_timeout.as_millis() as u64,
            call_timeout_ms: o.call_timeout.as_millis() as u64,
        }
    }
}

impl DbcConfig {
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            max_connections: self.max_connections,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            ..ConnectOptions::default()
        }
    }
}

/// Pool limits and timeouts. Every call of [`crate::Db`] and [`crate::Table`] is bounded by
/// `call_timeout`; connecting (and acquiring a pooled connection) by `connect_timeout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    pub max_connections: u32,
    pub min_connections: u32,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_connections: 10,
            min_connections: 0,
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
        }
    }
}
