//! The migration set: one folder of versioned files, resolved for one backend.
//!
//! Names: `V<version>__<name>.<ext>` (up) and `U<version>__<name>.<ext>` (down), where `<ext>` is
//! `sql` (any SQL backend), `postgres.sql`, `mysql.sql`, `sqlite.sql` (one dialect, preferred
//! over the generic file), `mongo.json` (MongoDB command file) or `cql` (Scylla/Cassandra).

use crate::checksum::{canonical_json, normalize_text, sha256_hex};
use crate::error::{MigrateError, Result};
use crate::mongo_script::MongoScript;
use crate::version::Version;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The SQL dialect a file is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SqlDialect {
    Postgres,
    Mysql,
    Sqlite,
}

impl SqlDialect {
    pub fn as_str(self) -> &'static str {
        match self {
            SqlDialect::Postgres => "postgres",
            SqlDialect::Mysql => "mysql",
            SqlDialect::Sqlite => "sqlite",
        }
    }
}

/// What a backend runs: SQL of one dialect, MongoDB command files, or CQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Sql(SqlDialect),
    Mongo,
    Cql,
}

impl Target {
    pub fn from_backend(kind: keyward_dbc::BackendKind) -> Target {
        use keyward_dbc::BackendKind as B;
        match kind {
            B::Sqlite => Target::Sql(SqlDialect::Sqlite),
            B::Postgres => Target::Sql(SqlDialect::Postgres),
            B::Mysql => Target::Sql(SqlDialect::Mysql),
            B::Mongodb => Target::Mongo,
            B::Scylla => Target::Cql,
        }
    }
}

/// The kind of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    /// `None`: generic SQL for any SQL backend.
    Sql(Option<SqlDialect>),
    Mongo,
    Cql,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Up,
    Down,
}

/// One file of the folder, parsed from its name.
#[derive(Clone, Debug)]
pub struct MigrationFile {
    pub path: PathBuf,
    pub version: Version,
    pub name: String,
    pub direction: Direction,
    pub kind: FileKind,
}

/// The body of a resolved script, ready to run.
#[derive(Clone, Debug)]
pub enum ScriptBody {
    Sql(String),
    Mongo(MongoScript),
    Cql(String),
}

/// One script chosen for the backend, with the checksum of its normalized content.
#[derive(Clone, Debug)]
pub struct Script {
    pub path: PathBuf,
    pub body: ScriptBody,
    pub checksum: String,
}

/// One migration as the backend sees it.
#[derive(Clone, Debug)]
pub struct Migration {
    pub version: Version,
    pub name: String,
    pub up: Script,
    pub down: Option<Script>,
}

/// Every file of the folder, grouped by version.
#[derive(Debug, Default)]
pub struct MigrationSet {
    pub dir: PathBuf,
    files: BTreeMap<Version, Vec<MigrationFile>>,
}

/// Parses a file name; `Ok(None)` for files that are not migrations (README, hidden files).
pub fn parse_file_name(file_name: &str) -> Result<Option<(Version, String, Direction, FileKind)>> {
    let bad = |message: String| MigrateError::BadFile {
        file: file_name.to_owned(),
        message,
    };
    let kinds: [(&str, FileKind); 6] = [
        (".postgres.sql", FileKind::Sql(Some(SqlDialect::Postgres))),
        (".mysql.sql", FileKind::Sql(Some(SqlDialect::Mysql))),
        (".sqlite.sql", FileKind::Sql(Some(SqlDialect::Sqlite))),
        (".mongo.json", FileKind::Mongo),
        (".sql", FileKind::Sql(None)),
        (".cql", FileKind::Cql),
    ];
    let Some((stem, kind)) = kinds
        .iter()
        .find_map(|(ext, k)| file_name.strip_suffix(ext).map(|s| (s, *k)))
    else {
        return Ok(None);
    };
    if file_name.starts_with('.') {
        return Ok(None);
    }
    let direction = match stem.chars().next() {
        Some('V') => Direction::Up,
        Some('U') => Direction::Down,
        _ => {
            return Err(bad(
                "a migration file name starts with V (up) or U (down): V<version>__<name>.sql"
                    .into(),
            ))
        }
    };
    let rest = &stem[1..];
    let Some((ver, name)) = rest.split_once("__") else {
        return Err(bad("missing `__` between version and name".into()));
    };
    let version: Version = ver.parse().map_err(|_| {
        bad(format!(
            "bad version {ver:?}: numbers separated by '.' or '_'"
        ))
    })?;
    if name.is_empty()
        || name.contains('.')
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    {
        return Err(bad(format!(
            "bad name {name:?}: letters, digits, '_' and '-' only"
        )));
    }
    Ok(Some((version, name.to_owned(), direction, kind)))
}

impl MigrationSet {
    /// Reads the folder's file names (not contents). Subfolders are not searched.
    pub fn load(dir: &Path) -> Result<MigrationSet> {
        let rd = std::fs::read_dir(dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                MigrateError::Config(format!(
                    "migration folder {} does not exist (set --dir)",
                    dir.display()
                ))
            } else {
                MigrateError::io(dir.display(), e)
            }
        })?;
        let mut files: BTreeMap<Version, Vec<MigrationFile>> = BTreeMap::new();
        for entry in rd {
            let entry = entry.map_err(|e| MigrateError::io(dir.display(), e))?;
            let ft = entry
                .file_type()
                .map_err(|e| MigrateError::io(entry.path().display(), e))?;
            if !ft.is_file() {
                continue;
            }
            let fname = entry.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            let Some((version, name, direction, kind)) = parse_file_name(fname)? else {
                continue;
            };
            files
                .entry(version.clone())
                .or_default()
                .push(MigrationFile {
                    path: entry.path(),
                    version,
                    name,
                    direction,
                    kind,
                });
        }
        for (v, fs) in &mut files {
            fs.sort_by_key(|f| (f.direction, f.kind));
            // One version, one name: a second name is almost surely a numbering mistake.
            if let Some(first) = fs.first() {
                if let Some(other) = fs.iter().find(|f| f.name != first.name) {
                    return Err(MigrateError::BadFile {
                        file: other.path.display().to_string(),
                        message: format!(
                            "version {v} is also used by {} (named {:?}); each version has one name",
                            first.path.display(),
                            first.name
                        ),
                    });
                }
            }
        }
        Ok(MigrationSet {
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// Every version that has a file, in order.
    pub fn versions(&self) -> impl Iterator<Item = &Version> {
        self.files.keys()
    }

    /// The migrations that apply to `target`, in version order, with their scripts read and
    /// checksummed. Versions with no file for the target's family are left out.
    pub fn resolve(&self, target: Target) -> Result<Vec<Migration>> {
        let mut out = Vec::new();
        for (version, files) in &self.files {
            let pick = |dir: Direction| -> Result<Option<&MigrationFile>> {
                let of_dir = files.iter().filter(|f| f.direction == dir);
                match target {
                    Target::Sql(d) => {
                        let sql: Vec<&MigrationFile> = of_dir
                            .filter(|f| matches!(f.kind, FileKind::Sql(_)))
                            .collect();
                        if let Some(f) = sql.iter().find(|f| f.kind == FileKind::Sql(Some(d))) {
                            return Ok(Some(f));
                        }
                        if let Some(f) = sql.iter().find(|f| f.kind == FileKind::Sql(None)) {
                            return Ok(Some(f));
                        }
                        if let Some(f) = sql.first() {
                            return Err(MigrateError::BadFile {
                                file: f.path.display().to_string(),
                                message: format!(
                                    "version {version} has SQL for other dialects but neither a {} variant nor a generic .sql file",
                                    d.as_str()
                                ),
                            });
                        }
                        Ok(None)
                    }
                    Target::Mongo => Ok(files
                        .iter()
                        .find(|f| f.direction == dir && f.kind == FileKind::Mongo)),
                    Target::Cql => Ok(files
                        .iter()
                        .find(|f| f.direction == dir && f.kind == FileKind::Cql)),
                }
            };
            let up = pick(Direction::Up)?;
            let down = pick(Direction::Down)?;
            let Some(up) = up else {
                if let Some(d) = down {
                    return Err(MigrateError::BadFile {
                        file: d.path.display().to_string(),
                        message: format!("down file without an up file for version {version}"),
                    });
                }
                continue;
            };
            out.push(Migration {
                version: version.clone(),
                name: up.name.clone(),
                up: read_script(up)?,
                down: down.map(read_script).transpose()?,
            });
        }
        Ok(out)
    }
}

/// Reads one file and checksums its normalized content.
pub fn read_script(f: &MigrationFile) -> Result<Script> {
    let raw = std::fs::read(&f.path).map_err(|e| MigrateError::io(f.path.display(), e))?;
    let text = String::from_utf8(raw).map_err(|_| MigrateError::BadFile {
        file: f.path.display().to_string(),
        message: "not valid UTF-8".into(),
    })?;
    let (body, canonical) = match f.kind {
        FileKind::Sql(_) => {
            let n = normalize_text(&text);
            (ScriptBody::Sql(n.clone()), n)
        }
        FileKind::Cql => {
            let n = normalize_text(&text);
            (ScriptBody::Cql(n.clone()), n)
        }
        FileKind::Mongo => {
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| MigrateError::BadFile {
                    file: f.path.display().to_string(),
                    message: format!("not valid JSON: {e}"),
                })?;
            let script =
                MongoScript::from_json(&json).map_err(|message| MigrateError::BadFile {
                    file: f.path.display().to_string(),
                    message,
                })?;
            (ScriptBody::Mongo(script), canonical_json(&json))
        }
    };
    Ok(Script {
        path: f.path.clone(),
        body,
        checksum: sha256_hex(canonical.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    #[test]
    fn names_parse() {
        let (v, n, d, k) = parse_file_name("V1.2__add_users.postgres.sql")
            .unwrap()
            .unwrap();
        assert_eq!(v.to_string(), "1.2");
        assert_eq!(n, "add_users");
        assert_eq!(d, Direction::Up);
        assert_eq!(k, FileKind::Sql(Some(SqlDialect::Postgres)));
        assert!(parse_file_name("README.md").unwrap().is_none());
        assert!(parse_file_name("V1_add.sql").is_err());
        assert!(parse_file_name("X1__a.sql").is_err());
        assert!(parse_file_name("Vx__a.sql").is_err());
        assert!(parse_file_name("V1__a b.sql").is_err());
        let (_, _, d, k) = parse_file_name("U3__x.mongo.json").unwrap().unwrap();
        assert_eq!((d, k), (Direction::Down, FileKind::Mongo));
    }

    #[test]
    fn dialect_variant_wins_and_families_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "V1__init.sql", "create table a (x int);");
        write(
            dir.path(),
            "V1__init.postgres.sql",
            "create table a (x bigint);",
        );
        write(dir.path(), "U1__init.sql", "drop table a;");
        write(
            dir.path(),
            "V1__init.mongo.json",
            r#"[{"create_collection":"a"}]"#,
        );
        write(
            dir.path(),
            "V2__only_mongo.mongo.json",
            r#"[{"create_collection":"b"}]"#,
        );
        let set = MigrationSet::load(dir.path()).unwrap();
        let pg = set.resolve(Target::Sql(SqlDialect::Postgres)).unwrap();
        assert_eq!(pg.len(), 1);
        assert!(pg[0].up.path.ends_with("V1__init.postgres.sql"));
        assert!(pg[0].down.is_some());
        let lite = set.resolve(Target::Sql(SqlDialect::Sqlite)).unwrap();
        assert!(lite[0].up.path.ends_with("V1__init.sql"));
        assert_ne!(pg[0].up.checksum, lite[0].up.checksum);
        let mongo = set.resolve(Target::Mongo).unwrap();
        assert_eq!(mongo.len(), 2);
        assert!(mongo[0].down.is_none());
        assert!(set.resolve(Target::Cql).unwrap().is_empty());
    }

    #[test]
    fn missing_dialect_and_conflicting_names_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "V1__init.postgres.sql", "select 1;");
        let set = MigrationSet::load(dir.path()).unwrap();
        assert!(set.resolve(Target::Sql(SqlDialect::Sqlite)).is_err());
        write(dir.path(), "V1__other.sql", "select 1;");
        assert!(MigrationSet::load(dir.path()).is_err());
        assert!(MigrationSet::load(&dir.path().join("nope")).is_err());
    }
}
