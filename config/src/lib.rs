//! Layered configuration: a TOML file, then `KEYWARD_<SECTION>__<KEY>` environment overrides
//! (double underscore between levels), deserialized into any serde type. Errors name the key
//! and where its value came from, so "bad value" is never a guessing game.
//!
//! `KEYWARD_TEST_*`, `KEYWARD_REQUIRE_SERVERS` and `KEYWARD_BENCH_*` are reserved for tests and
//! benchmarks and are never read as config.

use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use toml::{Table, Value};

/// Prefix of every configuration variable.
pub const ENV_PREFIX: &str = "KEYWARD_";

/// Where a setting came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the built-in defaults"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown config key `{key}` (from {origin})")]
    UnknownKey { key: String, origin: Source },
    #[error("bad value for config key `{key}` (from {origin}): {message}")]
    BadValue {
        key: String,
        origin: Source,
        message: String,
    },
    #[error("environment variable {var} is not of the form KEYWARD_<SECTION>__<KEY>")]
    BadVariable { var: String },
}

/// True for the variables that tests and benchmarks own.
pub fn is_reserved(var: &str) -> bool {
    var.starts_with("KEYWARD_TEST_")
        || var == "KEYWARD_REQUIRE_SERVERS"
        || var.starts_with("KEYWARD_BENCH_")
}

/// The merged settings with the source of every key, before they are typed.
#[derive(Debug, Default)]
pub struct Layers {
    table: Table,
    sources: BTreeMap<String, Source>,
}

impl Layers {
    /// Reads `file` (if any) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`load`](Self::load), with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut layers = Layers::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let table: Table = text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
            layers.merge(table, &Source::File(path.to_owned()), "");
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !is_reserved(k))
            .collect();
        vars.sort();
        for (var, raw) in vars {
            layers.set_from_env(&var, &raw)?;
        }
        Ok(layers)
    }

    fn merge(&mut self, table: Table, source: &Source, prefix: &str) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Table(t) => self.merge(t, source, &path),
                v => {
                    self.sources.insert(path.clone(), source.clone());
                    insert_path(&mut self.table, &path, v);
                }
            }
        }
    }

    fn set_from_env(&mut self, var: &str, raw: &str) -> Result<(), ConfigError> {
        let rest = &var[ENV_PREFIX.len()..];
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::BadVariable {
                var: var.to_owned(),
            });
        }
        let path = parts.join(".");
        self.sources
            .insert(path.clone(), Source::Env(var.to_owned()));
        insert_path(&mut self.table, &path, parse_env_value(raw));
        Ok(())
    }

    /// Where the value at `key` (dotted) came from: the key itself or its nearest parent.
    pub fn source_of(&self, key: &str) -> Source {
        let mut k = key;
        loop {
            if let Some(s) = self.sources.get(k) {
                return s.clone();
            }
            // A table given as a whole (e.g. an inline table) records its own path.
            if let Some(s) = self
                .sources
                .iter()
                .find(|(p, _)| p.starts_with(&format!("{k}.")))
                .map(|(_, s)| s.clone())
            {
                return s;
            }
            match k.rsplit_once('.') {
                Some((parent, _)) => k = parent,
                None => return Source::Default,
            }
        }
    }

    /// Types the settings. Unset keys take the type's serde defaults.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let value = Value::Table(self.table.clone());
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let message = err.inner().to_string();
            let base = if path == "." { String::new() } else { path };
            if let Some(field) = unknown_field(&message) {
                // serde_path_to_error already ends the path with the unknown field.
                let key = if base.is_empty() {
                    field
                } else if base == field || base.ends_with(&format!(".{field}")) {
                    base
                } else {
                    format!("{base}.{field}")
                };
                let source = self.source_of(&key);
                return ConfigError::UnknownKey {
                    key,
                    origin: source,
                };
            }
            let source = self.source_of(&base);
            ConfigError::BadValue {
                key: base,
                origin: source,
                message,
            }
        })
    }
}

/// Loads `file` plus the environment and types the result in one step.
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, ConfigError> {
    Layers::load(file)?.deserialize()
}

/// An environment value is TOML when it parses as one (`5000`, `true`, `["a", "b"]`), else text,
/// so that `KEYWARD_DBC__URL=sqlite:x.db` needs no quotes.
fn parse_env_value(raw: &str) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_owned())),
        Err(_) => Value::String(raw.to_owned()),
    }
}

fn insert_path(root: &mut Table, path: &str, value: Value) {
    let mut table = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.to_owned(), value);
            return;
        }
        let entry = table
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        match entry {
            Value::Table(t) => table = t,
            _ => return,
        }
    }
}

/// Pulls the field name out of serde's "unknown field `x`, expected …" message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Db {
        url: String,
        max_connections: u32,
    }

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        dbc: Db,
        names: Vec<String>,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn file_then_env_overrides() {
        let f = file("[dbc]\nurl = \"sqlite:a.db\"\nmax_connections = 4\n");
        let l = Layers::load_from(
            Some(f.path()),
            env(&[("KEYWARD_DBC__MAX_CONNECTIONS", "9"), ("PATH", "/bin")]),
        )
        .unwrap();
        let c: Cfg = l.deserialize().unwrap();
        assert_eq!(c.dbc.url, "sqlite:a.db");
        assert_eq!(c.dbc.max_connections, 9);
    }

    #[test]
    fn env_values_are_toml_or_text() {
        let l = Layers::load_from(
            None,
            env(&[
                ("KEYWARD_DBC__URL", "postgres://u@h/db"),
                ("KEYWARD_CFG__X", "[1]"),
            ]),
        )
        .unwrap();
        assert_eq!(
            l.source_of("dbc.url"),
            Source::Env("KEYWARD_DBC__URL".into())
        );
        let v: toml::Table = l.deserialize().unwrap();
        assert_eq!(v["dbc"]["url"].as_str(), Some("postgres://u@h/db"));
    }

    #[test]
    fn unknown_key_in_file_names_key_and_file() {
        let f = file("[dbc]\nurll = \"x\"\n");
        let err = Layers::load_from(Some(f.path()), env(&[]))
            .unwrap()
            .deserialize::<Cfg>()
            .unwrap_err();
        match &err {
            ConfigError::UnknownKey {
                key,
                origin: source,
            } => {
                assert_eq!(key, "dbc.urll");
                assert_eq!(source, &Source::File(f.path().to_owned()));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("dbc.urll"));
    }

    #[test]
    fn unknown_key_from_env_names_the_variable() {
        let err = Layers::load_from(None, env(&[("KEYWARD_DBC__NOPE", "1")]))
            .unwrap()
            .deserialize::<Cfg>()
            .unwrap_err();
        match err {
            ConfigError::UnknownKey {
                key,
                origin: source,
            } => {
                assert_eq!(key, "dbc.nope");
                assert_eq!(source, Source::Env("KEYWARD_DBC__NOPE".into()));
            }
            other => panic!("{other:?}"),
        }
        let err = Layers::load_from(None, env(&[("KEYWARD_NOSECTION__X", "1")]))
            .unwrap()
            .deserialize::<Cfg>()
            .unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "nosection"));
    }

    #[test]
    fn bad_value_names_key_and_source() {
        let err = Layers::load_from(None, env(&[("KEYWARD_DBC__MAX_CONNECTIONS", "lots")]))
            .unwrap()
            .deserialize::<Cfg>()
            .unwrap_err();
        match err {
            ConfigError::BadValue {
                key,
                origin: source,
                ..
            } => {
                assert_eq!(key, "dbc.max_connections");
                assert_eq!(source, Source::Env("KEYWARD_DBC__MAX_CONNECTIONS".into()));
            }
            other => panic!("{other:?}"),
        }
        let f = file("[dbc]\nmax_connections = -3\n");
        let err = Layers::load_from(Some(f.path()), env(&[]))
            .unwrap()
            .deserialize::<Cfg>()
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::BadValue { ref key, origin: Source::File(_), .. } if key == "dbc.max_connections"),
            "{err:?}"
        );
    }

    #[test]
    fn reserved_variables_are_never_config() {
        let l = Layers::load_from(
            None,
            env(&[
                ("KEYWARD_TEST_POSTGRES_URL", "postgres://x"),
                ("KEYWARD_REQUIRE_SERVERS", "1"),
                ("KEYWARD_BENCH_ROUNDS", "3"),
            ]),
        )
        .unwrap();
        let c: Cfg = l.deserialize().unwrap();
        assert_eq!(c, Cfg::default());
    }

    #[test]
    fn malformed_variables_and_files_are_errors() {
        assert!(matches!(
            Layers::load_from(None, env(&[("KEYWARD_LOG", "debug")])),
            Err(ConfigError::BadVariable { .. })
        ));
        assert!(matches!(
            Layers::load_from(None, env(&[("KEYWARD_DBC____URL", "x")])),
            Err(ConfigError::BadVariable { .. })
        ));
        let f = file("[dbc\nurl=");
        assert!(matches!(
            Layers::load_from(Some(f.path()), env(&[])),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            Layers::load_from(Some(Path::new("/nonexistent/k.toml")), env(&[])),
            Err(ConfigError::Read { .. })
        ));
    }
}
