//! Runs migration scripts through DBC's native face: SQL statements (in one transaction where
//! the backend has transactional DDL), MongoDB database commands, CQL statements.

use crate::files::{ScriptBody, SqlDialect, Target};
use crate::sql_split::{split_statements, SplitOptions};
use std::fmt;

/// A line in a SQL file that makes it run outside a transaction (for statements such as
/// PostgreSQL's `CREATE INDEX CONCURRENTLY`, which refuse to run inside one).
pub const NO_TRANSACTION_DIRECTIVE: &str = "-- keyward:no-transaction";

/// Why a script failed, and whether the database may now hold part of it.
#[derive(Debug, Clone)]
pub struct ExecFailure {
    /// 1-based number of the failing statement or command.
    pub statement: usize,
    pub message: String,
    /// True when earlier statements took effect and were not rolled back.
    pub partial: bool,
}

impl fmt::Display for ExecFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "statement {}: {}", self.statement, self.message)?;
        if self.partial {
            f.write_str(" (earlier statements stay applied)")?;
        } else {
            f.write_str(" (nothing was applied)")?;
        }
        Ok(())
    }
}

fn split_opts(target: Target) -> SplitOptions {
    match target {
        Target::Sql(SqlDialect::Postgres) => SplitOptions {
            backslash_escapes: false,
            dollar_quotes: true,
        },
        Target::Sql(SqlDialect::Mysql) => SplitOptions {
            backslash_escapes: true,
            dollar_quotes: false,
        },
        _ => SplitOptions::default(),
    }
}

/// The statements a script runs.
pub fn statements(body: &ScriptBody, target: Target) -> Vec<String> {
    match body {
        ScriptBody::Sql(s) | ScriptBody::Cql(s) => split_statements(s, split_opts(target)),
        ScriptBody::Mongo(m) => m.commands.iter().map(|c| c.describe()).collect(),
    }
}

pub fn statement_count(body: &ScriptBody, target: Target) -> usize {
    match body {
        ScriptBody::Mongo(m) => m.commands.len(),
        _ => statements(body, target).len(),
    }
}

/// Whether the script runs all-or-nothing: SQL on PostgreSQL and SQLite (transactional DDL),
/// unless the file opts out. MySQL commits DDL implicitly; MongoDB and CQL have no
/// transactions for these commands.
pub fn is_transactional(body: &ScriptBody, target: Target) -> bool {
    match (body, target) {
        (ScriptBody::Sql(s), Target::Sql(SqlDialect::Postgres | SqlDialect::Sqlite)) => !s
            .lines()
            .any(|l| l.trim().eq_ignore_ascii_case(NO_TRANSACTION_DIRECTIVE)),
        _ => false,
    }
}

fn mismatch(body: &ScriptBody, target: Target) -> Option<ExecFailure> {
    let ok = matches!(
        (body, target),
        (ScriptBody::Sql(_), Target::Sql(_))
            | (ScriptBody::Mongo(_), Target::Mongo)
            | (ScriptBody::Cql(_), Target::Cql)
    );
    (!ok).then(|| ExecFailure {
        statement: 0,
        message: format!("this script kind cannot run on {target:?}"),
        partial: false,
    })
}

/// Runs scripts on the database at `url`, on a connection of its own opened at first use.
///
/// Scripts need exact transaction control (several DDL statements, one commit) and raw,
/// unprepared statements; this executor talks to the driver directly for that, while the
/// history, the lock and `copy` go through DBC's record face.
pub struct Executor {
    url: String,
    target: Target,
    conn: tokio::sync::OnceCell<driver::Conn>,
}

impl Executor {
    pub fn new(url: &str, target: Target) -> Executor {
        Executor {
            url: url.to_owned(),
            target,
            conn: tokio::sync::OnceCell::new(),
        }
    }

    async fn conn(&self) -> Result<&driver::Conn, ExecFailure> {
        self.conn
            .get_or_try_init(|| driver::open(&self.url, self.target))
            .await
            .map_err(|message| ExecFailure {
                statement: 0,
                message: format!("cannot connect to run the script: {message}"),
                partial: false,
            })
    }

    pub async fn close(&self) {
        if let Some(c) = self.conn.get() {
            c.close().await;
        }
    }

    /// Runs a script. On failure, `partial` says whether the database kept part of it.
    pub async fn run_script(&self, body: &ScriptBody) -> Result<(), ExecFailure> {
        let target = self.target;
        if let Some(f) = mismatch(body, target) {
            return Err(f);
        }
        let conn = self.conn().await?;
        match body {
            ScriptBody::Sql(_) => {
                let stmts = statements(body, target);
                if is_transactional(body, target) {
                    conn.sql_in_transaction(&stmts).await
                } else {
                    run_each(&stmts, |s| conn.sql_one(s)).await
                }
            }
            // CQL has no transactions: each statement stands alone, and a failure after the
            // first leaves the version dirty.
            ScriptBody::Cql(_) => {
                let stmts = statements(body, target);
                run_each(&stmts, |s| conn.cql_one(s)).await
            }
            ScriptBody::Mongo(m) => {
                for (i, c) in m.commands.iter().enumerate() {
                    if let Err(message) = conn.mongo_command(&c.to_command()).await {
                        // A failing update_many may have changed some documents before it stopped.
                        let partial = i > 0
                            || matches!(
                                c,
                                crate::mongo_script::MongoCommand::UpdateMany { .. }
                                    | crate::mongo_script::MongoCommand::RenameField { .. }
                            );
                        return Err(ExecFailure {
                            statement: i + 1,
                            message,
                            partial,
                        });
                    }
                }
                Ok(())
            }
        }
    }
}

async fn run_each<'a, F, Fut>(stmts: &'a [String], mut one: F) -> Result<(), ExecFailure>
where
    F: FnMut(&'a str) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    for (i, s) in stmts.iter().enumerate() {
        if let Err(message) = one(s).await {
            return Err(ExecFailure {
                statement: i + 1,
                message,
                partial: i > 0,
            });
        }
    }
    Ok(())
}

mod driver {
    //! Direct driver connections for running scripts.
    use super::ExecFailure;
    use crate::files::{SqlDialect, Target};
    use crate::mongo_script::CommandDoc;
    use sqlx::AssertSqlSafe;
    use std::str::FromStr;

    pub enum Conn {
        Sqlite(sqlx::SqlitePool),
        Postgres(sqlx::PgPool),
        Mysql(sqlx::MySqlPool),
        Mongo(mongodb::Database),
        Cql(Box<scylla::client::session::Session>),
    }

    /// `scylla://[user:pass@]host[:port]/keyspace`, as DBC reads it.
    async fn open_cql(url: &str) -> Result<Conn, String> {
        let u = url::Url::parse(url).map_err(|e| e.to_string())?;
        let host = u.host_str().ok_or("the CQL URL names no host")?;
        let port = u.port().unwrap_or(9042);
        let keyspace = u.path().trim_start_matches('/').to_owned();
        if keyspace.is_empty() {
            return Err("the CQL URL names no keyspace (scylla://host:port/KEYSPACE)".into());
        }
        let mut b = scylla::client::session_builder::SessionBuilder::new()
            .known_node(format!("{host}:{port}"))
            .connection_timeout(std::time::Duration::from_secs(10));
        if !u.username().is_empty() {
            b = b.user(u.username(), u.password().unwrap_or(""));
        }
        let session = b.build().await.map_err(|e| redact(&e.to_string(), url))?;
        session
            .use_keyspace(&keyspace, true)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Conn::Cql(Box::new(session)))
    }

    pub async fn open(url: &str, target: Target) -> Result<Conn, String> {
        // Driver messages can echo the URL; never let a password through.
        let clean = |e: &dyn std::fmt::Display| redact(&e.to_string(), url);
        Ok(match target {
            Target::Sql(SqlDialect::Sqlite) => {
                let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                    .map_err(|e| clean(&e))?
                    .create_if_missing(true)
                    .busy_timeout(std::time::Duration::from_secs(30));
                Conn::Sqlite(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(1)
                        .connect_with(opts)
                        .await
                        .map_err(|e| clean(&e))?,
                )
            }
            Target::Sql(SqlDialect::Postgres) => Conn::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .map_err(|e| clean(&e))?,
            ),
            Target::Sql(SqlDialect::Mysql) => Conn::Mysql(
                sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .map_err(|e| clean(&e))?,
            ),
            Target::Mongo => {
                let opts = mongodb::options::ClientOptions::parse(url)
                    .await
                    .map_err(|e| clean(&e))?;
                let name = opts
                    .default_database
                    .clone()
                    .ok_or_else(|| "the MongoDB URL names no database".to_owned())?;
                let client = mongodb::Client::with_options(opts).map_err(|e| clean(&e))?;
                Conn::Mongo(client.database(&name))
            }
            Target::Cql => open_cql(url).await?,
        })
    }

    /// The message without the URL's password (if the URL has one).
    fn redact(message: &str, url: &str) -> String {
        let pass = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(auth, _)| auth.split_once(':'))
            .map(|(_, p)| p)
            .filter(|p| !p.is_empty());
        match pass {
            Some(p) => message.replace(p, "***"),
            None => message.to_owned(),
        }
    }

    macro_rules! in_tx {
        ($pool:expr, $stmts:expr) => {{
            let fail = |statement: usize, e: &dyn std::fmt::Display| ExecFailure {
                statement,
                message: e.to_string(),
                partial: false,
            };
            let mut tx = $pool.begin().await.map_err(|e| fail(0, &e))?;
            for (i, s) in $stmts.iter().enumerate() {
                if let Err(e) = sqlx::raw_sql(AssertSqlSafe(s.clone()))
                    .execute(&mut *tx)
                    .await
                {
                    // Dropping the transaction rolls it back; say so explicitly all the same.
                    let _ = tx.rollback().await;
                    return Err(fail(i + 1, &e));
                }
            }
            tx.commit().await.map_err(|e| fail($stmts.len(), &e))
        }};
    }

    impl Conn {
        pub async fn close(&self) {
            match self {
                Conn::Sqlite(p) => p.close().await,
                Conn::Postgres(p) => p.close().await,
                Conn::Mysql(p) => p.close().await,
                Conn::Mongo(_) | Conn::Cql(_) => {}
            }
        }

        pub async fn sql_in_transaction(&self, stmts: &[String]) -> Result<(), ExecFailure> {
            match self {
                Conn::Sqlite(p) => in_tx!(p, stmts),
                Conn::Postgres(p) => in_tx!(p, stmts),
                Conn::Mysql(p) => in_tx!(p, stmts),
                Conn::Mongo(_) | Conn::Cql(_) => Err(ExecFailure {
                    statement: 0,
                    message: "SQL transaction on a database without SQL".into(),
                    partial: false,
                }),
            }
        }

        pub async fn sql_one(&self, stmt: &str) -> Result<(), String> {
            let q = || sqlx::raw_sql(AssertSqlSafe(stmt.to_owned()));
            let r = match self {
                Conn::Sqlite(p) => q().execute(p).await.map(|_| ()),
                Conn::Postgres(p) => q().execute(p).await.map(|_| ()),
                Conn::Mysql(p) => q().execute(p).await.map(|_| ()),
                Conn::Mongo(_) | Conn::Cql(_) => return Err("SQL on a database without SQL".into()),
            };
            r.map_err(|e| e.to_string())
        }

        /// One CQL statement, then a wait for schema agreement so that the next statement
        /// (and the next migration) sees the change on every node.
        pub async fn cql_one(&self, stmt: &str) -> Result<(), String> {
            let Conn::Cql(session) = self else {
                return Err("CQL on a database that does not speak CQL".into());
            };
            let st = scylla::statement::unprepared::Statement::new(stmt.to_owned());
            session
                .query_unpaged(st, ())
                .await
                .map_err(|e| e.to_string())?;
            session
                .await_schema_agreement()
                .await
                .map_err(|e| format!("schema agreement: {e}"))?;
            Ok(())
        }

        pub async fn mongo_command(&self, doc: &CommandDoc) -> Result<(), String> {
            let Conn::Mongo(db) = self else {
                return Err("a MongoDB command on a SQL database".into());
            };
            let mut d = mongodb::bson::Document::new();
            for (k, v) in doc {
                let b = mongodb::bson::Bson::try_from(v.clone()).map_err(|e| e.to_string())?;
                d.insert(k.clone(), b);
            }
            let reply = db.run_command(d).await.map_err(|e| e.to_string())?;
            // `update` reports per-document write errors in the reply, not as a failure.
            if let Ok(errs) = reply.get_array("writeErrors") {
                if !errs.is_empty() {
                    return Err(format!("write errors: {errs:?}"));
                }
            }
            Ok(())
        }
    }
}
