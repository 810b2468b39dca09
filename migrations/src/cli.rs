//! The command tree shared by the `keyward-migrate` binary and `keyward migrate …`.

use crate::admin::{SearchCommand, VfsCommand};
use crate::copy::{self, CopyOptions, CopyReport, OnCopied};
use crate::engine::{self, Plan, RunReport, Session, State, StatusReport};
use crate::error::{MigrateError, Result};
use crate::exec::Executor;
use crate::files::{MigrationSet, Target};
use crate::history::History;
use crate::lock::{current_holder, LockHolder, LockOptions, MigrationLock};
use crate::output::{table, Outcome};
use crate::version::Version;
use clap::{Args, Subcommand};
use keyward_dbc::Db;
use keyward_ownership::{Coordinator, InProcessHub, SessionConfig};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `keyward migrate [OPTIONS] <COMMAND>`.
#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Database URL (sqlite:PATH, postgres://, mysql://, mongodb://, scylla://).
    #[arg(long, global = true, env = "KEYWARD_DBC__URL", hide_env_values = true)]
    pub url: Option<String>,
    /// Folder of migration files.
    #[arg(
        long,
        global = true,
        env = "KEYWARD_MIGRATE__DIR",
        default_value = "migrations"
    )]
    pub dir: PathBuf,
    /// Print one JSON document instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show what a writing command would do, and write nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// How long to wait for the migration lock held by another migrator (e.g. 30s, 500ms).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "0s")]
    pub lock_wait: Duration,
    /// Lease of the migration lock: a dead holder's lock frees itself after this long.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "30s")]
    pub lock_lease: Duration,
    /// Test hook: hold the lock this long before working (for lock tests).
    #[arg(long, global = true, value_parser = parse_duration, hide = true)]
    pub debug_hold_lock: Option<Duration>,
    #[command(subcommand)]
    pub command: MigrateCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum MigrateCommand {
    /// Applied, pending, changed, missing and dirty migrations, and the lock holder.
    Status,
    /// Apply pending migrations (up to --to).
    Up {
        /// Last version to apply.
        #[arg(long)]
        to: Option<String>,
        /// Also apply pending versions older than the current one.
        #[arg(long)]
        out_of_order: bool,
    },
    /// Revert the latest migration, or every one above --to.
    Down {
        /// Keep this version and those below it applied.
        #[arg(long)]
        to: Option<String>,
    },
    /// Check applied migrations' checksums against their files.
    Verify,
    /// Mark an existing database as being at VERSION without running anything.
    Baseline {
        version: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Clear dirty rows and realign checksums of changed files.
    Repair {
        /// Mark dirty migrations as applied (you completed them by hand) instead of removing them.
        #[arg(long)]
        mark_applied: bool,
    },
    /// Copy tables between two databases, resumably, and compare checksums.
    Copy(CopyArgs),
    /// Encrypted file system maintenance (`vfs rekey`).
    Vfs {
        #[command(subcommand)]
        cmd: VfsCommand,
    },
    /// Search index maintenance (`search reindex`).
    Search {
        #[command(subcommand)]
        cmd: SearchCommand,
    },
}

#[derive(Args, Debug, Clone)]
pub struct CopyArgs {
    /// Source database URL.
    #[arg(long)]
    pub from: String,
    /// Target database URL.
    #[arg(long)]
    pub to: String,
    /// Tables to copy (comma separated or repeated); all user tables when absent.
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Rows per scan page and write batch.
    #[arg(long, default_value_t = 5000)]
    pub batch_size: usize,
    /// Batches written at once, each on its own connection (1 writes strictly in order).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Ignore checkpoints of an earlier run and copy from the start.
    #[arg(long)]
    pub restart: bool,
    /// Skip the final count and checksum comparison.
    #[arg(long)]
    pub no_verify: bool,
    /// Test hook: stop as if interrupted after this many rows in this run.
    #[arg(long, hide = true)]
    pub stop_after_rows: Option<u64>,
}

/// Parses `500ms`, `30s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 500ms, 30s, 2m"))?;
    if !v.is_finite() || v < 0.0 || v * mul > 1.0e9 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

/// What the embedding program provides: an ownership session (the in-process hub when
/// `None`), a stop signal, and the hook told about copied keys.
#[derive(Clone, Default)]
pub struct MigrateContext {
    pub coordinator: Option<Coordinator>,
    pub cancel: CancellationToken,
    /// Called after each batch `copy` writes, so cache owners can invalidate those keys.
    pub on_copied: Option<OnCopied>,
}

impl std::fmt::Debug for MigrateContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrateContext")
            .field("coordinator", &self.coordinator)
            .field("on_copied", &self.on_copied.is_some())
            .finish()
    }
}

async fn coordinator(ctx: &MigrateContext) -> Result<Coordinator> {
    match &ctx.coordinator {
        Some(c) => Ok(c.clone()),
        None => Ok(InProcessHub::new()
            .connect(SessionConfig::default())
            .await?),
    }
}

fn parse_version(s: &str) -> Result<Version> {
    s.parse()
}

pub(crate) async fn connect(url: &str) -> Result<Db> {
    Db::connect(url).await.map_err(|e| {
        let code = MigrateError::Db(e);
        match code.exit_code() {
            crate::error::exit::UNAVAILABLE => MigrateError::Unavailable(code.to_string()),
            _ => code,
        }
    })
}

/// Runs one command. Printing is the caller's job: see [`Outcome::render`].
pub async fn run(args: MigrateArgs, ctx: MigrateContext) -> Result<Outcome> {
    match &args.command {
        MigrateCommand::Copy(c) => return run_copy(c, args.dry_run, args.json, &ctx).await,
        MigrateCommand::Vfs {
            cmd: VfsCommand::Rekey(a),
        } => {
            let coord = coordinator(&ctx).await?;
            return crate::admin::run_rekey(a, args.dry_run, !args.json, coord, &ctx.cancel).await;
        }
        MigrateCommand::Search {
            cmd: SearchCommand::Reindex(a),
        } => {
            let coord = coordinator(&ctx).await?;
            return crate::admin::run_reindex(a, args.dry_run, !args.json, coord, &ctx.cancel)
                .await;
        }
        _ => {}
    }
    let url = args.url.clone().ok_or_else(|| {
        MigrateError::Config("no database URL: pass --url or set KEYWARD_DBC__URL".into())
    })?;
    let set = MigrationSet::load(&args.dir)?;
    let db = connect(&url).await?;
    let exec = Executor::new(&url, Target::from_backend(db.kind()));
    let result = run_schema(&args, &ctx, &db, &exec, &set).await;
    exec.close().await;
    db.close().await;
    result
}

async fn run_schema(
    args: &MigrateArgs,
    ctx: &MigrateContext,
    db: &Db,
    exec: &Executor,
    set: &MigrationSet,
) -> Result<Outcome> {
    let target = Target::from_backend(db.kind());
    let migrations = set.resolve(target)?;
    let history = History::open(db).await?;
    let db_id = db.database_id().await?;
    let key = format!("migrate/{db_id}");
    let session = Session {
        exec,
        target,
        history: history.clone(),
        cancel: ctx.cancel.clone(),
    };
    // Bad version text is a usage error before anything is locked or written.
    match &args.command {
        MigrateCommand::Up { to: Some(v), .. } | MigrateCommand::Down { to: Some(v) } => {
            parse_version(v)?;
        }
        MigrateCommand::Baseline { version, .. } => {
            parse_version(version)?;
        }
        _ => {}
    }
    let writes = !args.dry_run
        && matches!(
            args.command,
            MigrateCommand::Up { .. }
                | MigrateCommand::Down { .. }
                | MigrateCommand::Baseline { .. }
                | MigrateCommand::Repair { .. }
        );
    let lock = if writes {
        let coord = coordinator(ctx).await?;
        let lock = MigrationLock::acquire(
            db,
            &coord,
            &key,
            LockOptions {
                wait: args.lock_wait,
                lease: args.lock_lease,
            },
        )
        .await?;
        if let Some(hold) = args.debug_hold_lock {
            tracing::info!(?hold, "holding the lock (test hook)");
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = ctx.cancel.cancelled() => {}
            }
        }
        Some(lock)
    } else {
        None
    };
    // History is read under the lock, so a concurrent migrator's work is seen.
    let plan = Plan::new(migrations, history.rows().await?);
    // Every path below ends at the release of the lock, errors included.
    let result = async {
        match &args.command {
            MigrateCommand::Status => {
                let holder = current_holder(db, &key).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read the lock row");
                    None
                });
                let st = plan.status();
                Ok(status_outcome(&st, holder, db, &db_id))
            }
            MigrateCommand::Verify => {
                let st = engine::verify(&plan)?;
                let human = format!(
                    "verify ok: {} applied migration(s) match their files",
                    st.counts.applied
                );
                Ok(Outcome::new("verify", &st, human))
            }
            MigrateCommand::Up { to, out_of_order } => {
                let to = to.as_deref().map(parse_version).transpose()?;
                let rep = session
                    .up(
                        &plan,
                        to.as_ref(),
                        *out_of_order,
                        lock.as_ref(),
                        args.dry_run,
                    )
                    .await;
                rep.map(|r| run_outcome("up", &r))
            }
            MigrateCommand::Down { to } => {
                let to = to.as_deref().map(parse_version).transpose()?;
                let rep = session
                    .down(&plan, to.as_ref(), lock.as_ref(), args.dry_run)
                    .await;
                rep.map(|r| run_outcome("down", &r))
            }
            MigrateCommand::Baseline { version, name } => {
                let v = parse_version(version)?;
                engine::baseline(&history, &plan, &v, name.clone(), args.dry_run)
                    .await
                    .map(|r| {
                        let human = format!(
                            "{}baseline at {} ({}); {} file(s) at or below it count as applied",
                            if r.dry_run { "[dry run] " } else { "" },
                            r.version,
                            r.name,
                            r.covered.len()
                        );
                        Outcome::new("baseline", &r, human)
                    })
            }
            MigrateCommand::Repair { mark_applied } => {
                engine::repair(&history, &plan, *mark_applied, lock.as_ref(), args.dry_run)
                    .await
                    .map(|r| {
                        let mut lines = vec![format!(
                            "{}repair:",
                            if r.dry_run { "[dry run] " } else { "" }
                        )];
                        let list = |v: &Vec<String>| {
                            if v.is_empty() {
                                "none".to_owned()
                            } else {
                                v.join(", ")
                            }
                        };
                        lines.push(format!("  dirty rows removed: {}", list(&r.removed_dirty)));
                        lines.push(format!(
                            "  dirty rows marked applied: {}",
                            list(&r.marked_applied)
                        ));
                        lines.push(format!("  checksums realigned: {}", list(&r.realigned)));
                        lines.push(format!(
                            "  applied without a file (kept): {}",
                            list(&r.missing)
                        ));
                        Outcome::new("repair", &r, lines.join("\n"))
                    })
            }
            MigrateCommand::Copy(_)
            | MigrateCommand::Vfs { .. }
            | MigrateCommand::Search { .. } => Err(MigrateError::Other("handled above".into())),
        }
    }
    .await;
    if let Some(lock) = lock {
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "could not release the migration lock; its lease will expire");
        }
    }
    result
}

#[derive(Serialize)]
struct StatusJson<'a> {
    backend: String,
    database_id: String,
    #[serde(flatten)]
    status: &'a StatusReport,
    lock: Option<LockHolder>,
}

fn status_outcome(
    st: &StatusReport,
    lock: Option<LockHolder>,
    db: &Db,
    db_id: &uuid::Uuid,
) -> Outcome {
    let rows: Vec<Vec<String>> = st
        .entries
        .iter()
        .map(|e| {
            let mut state = e.state.as_str().to_owned();
            if e.out_of_order {
                state.push_str(" (out of order)");
            }
            vec![
                e.version.clone(),
                e.name.clone(),
                state,
                e.applied_at.clone().unwrap_or_default(),
                e.applied_by.clone().unwrap_or_default(),
                e.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default(),
            ]
        })
        .collect();
    let mut human = format!(
        "database {db_id} ({:?}), current version {}\n\n",
        db.kind(),
        st.current.as_deref().unwrap_or("none")
    );
    human.push_str(&table(
        &["version", "name", "state", "applied at", "by", "took"],
        &rows,
    ));
    let c = &st.counts;
    human.push_str(&format!(
        "\n\n{} applied, {} pending, {} changed, {} missing, {} dirty",
        c.applied, c.pending, c.changed, c.missing, c.dirty
    ));
    for e in st.entries.iter().filter(|e| e.state == State::Dirty) {
        human.push_str(&format!(
            "\ndirty {}: {}",
            e.version,
            e.error.as_deref().unwrap_or("failed part-way")
        ));
    }
    if let Some(l) = &lock {
        human.push_str(&format!(
            "\nlock: held by {} until {}{}",
            l.owner,
            l.expires_at.to_rfc3339(),
            if l.expired { " (expired)" } else { "" }
        ));
    }
    Outcome::new(
        "status",
        &StatusJson {
            backend: format!("{:?}", db.kind()).to_lowercase(),
            database_id: db_id.to_string(),
            status: st,
            lock,
        },
        human,
    )
}

fn run_outcome(cmd: &str, r: &RunReport) -> Outcome {
    let mut human = String::new();
    let verb = match (cmd, r.dry_run) {
        ("up", true) => "would apply",
        ("up", false) => "applied",
        (_, true) => "would revert",
        _ => "reverted",
    };
    for w in &r.warnings {
        human.push_str(&format!("warning: {w}\n"));
    }
    if r.steps.is_empty() {
        human.push_str(&format!(
            "nothing to do; current version {}",
            r.current.as_deref().unwrap_or("none")
        ));
    } else {
        let rows: Vec<Vec<String>> = r
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.version.clone(),
                    s.name.clone(),
                    s.statements.to_string(),
                    if s.transactional { "yes" } else { "no" }.to_owned(),
                    s.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default(),
                    s.file.clone(),
                ]
            })
            .collect();
        human.push_str(&format!("{verb} {} migration(s)\n", r.steps.len()));
        human.push_str(&table(
            &[
                "version",
                "name",
                "statements",
                "transaction",
                "took",
                "file",
            ],
            &rows,
        ));
        human.push_str(&format!(
            "\ncurrent version {}",
            r.current.as_deref().unwrap_or("none")
        ));
    }
    Outcome::new(cmd, r, human)
}

async fn run_copy(
    c: &CopyArgs,
    dry_run: bool,
    json: bool,
    ctx: &MigrateContext,
) -> Result<Outcome> {
    if c.batch_size == 0 || c.batch_size > 100_000 {
        return Err(MigrateError::Usage(
            "--batch-size must be between 1 and 100000".into(),
        ));
    }
    if c.parallel == 0 || c.parallel > 64 {
        return Err(MigrateError::Usage(
            "--parallel must be between 1 and 64".into(),
        ));
    }
    let opts = CopyOptions {
        tables: c.tables.clone(),
        batch_size: c.batch_size,
        parallel: c.parallel,
        restart: c.restart,
        verify: !c.no_verify,
        dry_run,
        progress: !json,
        stop_after_rows: c.stop_after_rows,
        cancel: ctx.cancel.clone(),
        on_copied: ctx.on_copied.clone(),
    };
    let rep = copy::copy(&c.from, &c.to, opts).await?;
    Ok(copy_outcome(&rep))
}

fn copy_outcome(r: &CopyReport) -> Outcome {
    let rows: Vec<Vec<String>> = r
        .tables
        .iter()
        .map(|t| {
            vec![
                t.table.clone(),
                t.copied_this_run.to_string(),
                t.resumed_from.to_string(),
                t.source_rows.map(|n| n.to_string()).unwrap_or_default(),
                t.target_rows.map(|n| n.to_string()).unwrap_or_default(),
                t.source_checksum.clone().unwrap_or_default(),
                match t.matches {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "-",
                }
                .to_owned(),
            ]
        })
        .collect();
    let mut human = String::new();
    if r.dry_run {
        human.push_str("[dry run] nothing written\n");
    }
    human.push_str(&table(
        &[
            "table",
            "copied",
            "resumed at",
            "source rows",
            "target rows",
            "checksum",
            "match",
        ],
        &rows,
    ));
    human.push_str(&format!(
        "\n{} row(s) in {:.1} s ({:.0} rows/s)",
        r.rows_copied, r.seconds, r.rows_per_second
    ));
    Outcome::new("copy", r, human)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
