//! The schema commands: compare the migration set with the history, then apply, revert,
//! verify, baseline or repair.

use crate::error::{MigrateError, Result};
use crate::exec::{ExecFailure, Executor};
use crate::files::{Migration, Script, Target};
use crate::history::{now_micros, whoami, History, HistoryRow, RowOutcome};
use crate::lock::MigrationLock;
use crate::version::Version;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// The state of one version, comparing files and history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Applied and its file still has the recorded checksum.
    Applied,
    /// Has a file, not applied yet.
    Pending,
    /// Applied, but its file changed since (checksum drift).
    Changed,
    /// Applied, but its file is gone.
    Missing,
    /// A run failed part-way; blocks `up` until `repair`.
    Dirty,
    /// The baseline row itself.
    Baseline,
    /// A file at or below the baseline version: counts as applied.
    BelowBaseline,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Applied => "applied",
            State::Pending => "pending",
            State::Changed => "changed",
            State::Missing => "missing",
            State::Dirty => "dirty",
            State::Baseline => "baseline",
            State::BelowBaseline => "below_baseline",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusEntry {
    pub version: String,
    pub name: String,
    pub state: State,
    /// A pending version lower than the highest applied one.
    pub out_of_order: bool,
    pub file: Option<String>,
    pub file_checksum: Option<String>,
    pub recorded_checksum: Option<String>,
    pub applied_by: Option<String>,
    pub applied_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub has_down: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusCounts {
    pub applied: usize,
    pub pending: usize,
    pub changed: usize,
    pub missing: usize,
    pub dirty: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub entries: Vec<StatusEntry>,
    pub counts: StatusCounts,
    pub current: Option<String>,
}

/// Files and history side by side.
pub struct Plan {
    pub migrations: BTreeMap<Version, Migration>,
    pub rows: BTreeMap<Version, HistoryRow>,
}

impl Plan {
    pub fn new(migrations: Vec<Migration>, rows: Vec<HistoryRow>) -> Plan {
        Plan {
            migrations: migrations
                .into_iter()
                .map(|m| (m.version.clone(), m))
                .collect(),
            rows: rows.into_iter().map(|r| (r.version.clone(), r)).collect(),
        }
    }

    fn baseline(&self) -> Option<&Version> {
        self.rows
            .values()
            .filter(|r| r.outcome == RowOutcome::Baseline)
            .map(|r| &r.version)
            .max()
    }

    /// The highest version that counts as applied.
    pub fn current(&self) -> Option<&Version> {
        self.rows
            .values()
            .filter(|r| r.outcome != RowOutcome::Dirty)
            .map(|r| &r.version)
            .max()
    }

    pub fn status(&self) -> StatusReport {
        let baseline = self.baseline().cloned();
        let current = self.current().cloned();
        let mut versions: Vec<&Version> = self.migrations.keys().chain(self.rows.keys()).collect();
        versions.sort();
        versions.dedup();
        let mut entries = Vec::new();
        let mut counts = StatusCounts::default();
        for v in versions {
            let m = self.migrations.get(v);
            let r = self.rows.get(v);
            let state = match (m, r) {
                (_, Some(r)) if r.outcome == RowOutcome::Dirty => State::Dirty,
                (_, Some(r)) if r.outcome == RowOutcome::Baseline => State::Baseline,
                (Some(m), Some(r)) if r.checksum.as_deref() == Some(m.up.checksum.as_str()) => {
                    State::Applied
                }
                (Some(_), Some(_)) => State::Changed,
                (None, Some(_)) => State::Missing,
                (Some(_), None) if baseline.as_ref().is_some_and(|b| v <= b) => {
                    State::BelowBaseline
                }
                (Some(_), None) => State::Pending,
                (None, None) => continue,
            };
            match state {
                State::Applied | State::Baseline | State::BelowBaseline => counts.applied += 1,
                State::Pending => counts.pending += 1,
                State::Changed => {
                    counts.applied += 1;
                    counts.changed += 1
                }
                State::Missing => {
                    counts.applied += 1;
                    counts.missing += 1
                }
                State::Dirty => counts.dirty += 1,
            }
            entries.push(StatusEntry {
                version: v.to_string(),
                name: m
                    .map(|m| m.name.clone())
                    .or_else(|| r.map(|r| r.name.clone()))
                    .unwrap_or_default(),
                state,
                out_of_order: state == State::Pending && current.as_ref().is_some_and(|c| v < c),
                file: m.map(|m| m.up.path.display().to_string()),
                file_checksum: m.map(|m| m.up.checksum.clone()),
                recorded_checksum: r.and_then(|r| r.checksum.clone()),
                applied_by: r.map(|r| r.applied_by.clone()),
                applied_at: r.map(|r| r.applied_at.to_rfc3339()),
                duration_ms: r.map(|r| r.duration_ms),
                has_down: m.is_some_and(|m| m.down.is_some()),
                error: r.and_then(|r| r.error.clone()),
            });
        }
        StatusReport {
            entries,
            counts,
            current: current.map(|c| c.to_string()),
        }
    }

    fn first_dirty(&self) -> Option<&HistoryRow> {
        self.rows.values().find(|r| r.outcome == RowOutcome::Dirty)
    }
}

/// What `up` or `down` did (or, in a dry run, would do).
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub direction: &'static str,
    pub dry_run: bool,
    pub steps: Vec<StepReport>,
    pub warnings: Vec<String>,
    pub current: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub version: String,
    pub name: String,
    pub file: String,
    pub statements: usize,
    pub transactional: bool,
    pub duration_ms: Option<i64>,
}

/// Everything a command needs about the database it works on.
pub struct Session<'a> {
    pub exec: &'a Executor,
    pub target: Target,
    pub history: History,
    pub cancel: CancellationToken,
}

fn drift_error(plan: &Plan) -> Option<MigrateError> {
    let changed: Vec<String> = plan
        .status()
        .entries
        .into_iter()
        .filter(|e| e.state == State::Changed)
        .map(|e| format!("{} ({})", e.version, e.name))
        .collect();
    if changed.is_empty() {
        None
    } else {
        Some(MigrateError::Conflict(format!(
            "checksum drift: applied migration files changed since they ran: {}; restore them, or run `repair` to accept the new checksums",
            changed.join(", ")
        )))
    }
}

fn dirty_error(plan: &Plan) -> Option<MigrateError> {
    plan.first_dirty().map(|r| MigrateError::Dirty {
        version: r.version.to_string(),
        name: r.name.clone(),
    })
}

fn step_of(m: &Migration, s: &Script, target: Target) -> StepReport {
    StepReport {
        version: m.version.to_string(),
        name: m.name.clone(),
        file: s.path.display().to_string(),
        statements: crate::exec::statement_count(&s.body, target),
        transactional: crate::exec::is_transactional(&s.body, target),
        duration_ms: None,
    }
}

fn kind_of(s: &Script) -> &'static str {
    match s.body {
        crate::files::ScriptBody::Sql(_) => "sql",
        crate::files::ScriptBody::Mongo(_) => "mongo",
        crate::files::ScriptBody::Cql(_) => "cql",
    }
}

impl Session<'_> {
    fn interrupted(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(MigrateError::Interrupted(
                "stopped between migrations; completed ones are recorded".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// Applies pending migrations up to `to` (all when `None`).
    pub async fn up(
        &self,
        plan: &Plan,
        to: Option<&Version>,
        out_of_order: bool,
        lock: Option<&MigrationLock>,
        dry_run: bool,
    ) -> Result<RunReport> {
        if let Some(e) = dirty_error(plan) {
            return Err(e);
        }
        if let Some(e) = drift_error(plan) {
            return Err(e);
        }
        let status = plan.status();
        let mut warnings: Vec<String> = status
            .entries
            .iter()
            .filter(|e| e.state == State::Missing)
            .map(|e| {
                format!(
                    "applied migration {} ({}) has no file any more",
                    e.version, e.name
                )
            })
            .collect();
        let pending: Vec<&StatusEntry> = status
            .entries
            .iter()
            .filter(|e| e.state == State::Pending)
            .collect();
        let late: Vec<String> = pending
            .iter()
            .filter(|e| e.out_of_order)
            .map(|e| e.version.clone())
            .collect();
        if !late.is_empty() && !out_of_order {
            return Err(MigrateError::Conflict(format!(
                "pending migrations older than the current version {}: {}; pass --out-of-order to apply them",
                status.current.as_deref().unwrap_or("-"),
                late.join(", ")
            )));
        }
        if !late.is_empty() {
            warnings.push(format!("applying out of order: {}", late.join(", ")));
        }
        let todo: Vec<&Migration> = plan
            .migrations
            .values()
            .filter(|m| pending.iter().any(|e| e.version == m.version.to_string()))
            .filter(|m| to.is_none_or(|t| &m.version <= t))
            .collect();
        let mut steps = Vec::new();
        let mut current = status.current.clone();
        for m in todo {
            let mut step = step_of(m, &m.up, self.target);
            if !dry_run {
                self.interrupted()?;
                if let Some(l) = lock {
                    l.check()?;
                }
                step.duration_ms = Some(self.apply(m).await?);
                current = Some(m.version.to_string());
            }
            steps.push(step);
        }
        Ok(RunReport {
            direction: "up",
            dry_run,
            steps,
            warnings,
            current,
        })
    }

    /// Runs one up script, keeping the history honest about it.
    async fn apply(&self, m: &Migration) -> Result<i64> {
        let mut row = HistoryRow {
            version: m.version.clone(),
            name: m.name.clone(),
            kind: kind_of(&m.up).to_owned(),
            checksum: Some(m.up.checksum.clone()),
            applied_by: whoami(),
            applied_at: now_micros(),
            duration_ms: 0,
            outcome: RowOutcome::Dirty,
            error: Some("started, not finished (the migrator stopped part-way)".into()),
        };
        // Marked dirty first: if this process dies mid-script, the history says so.
        self.history.put(&row).await?;
        tracing::info!(version = %m.version, name = %m.name, "applying");
        let started = Instant::now();
        let res = self.exec.run_script(&m.up.body).await;
        let ms = started.elapsed().as_millis() as i64;
        match res {
            Ok(()) => {
                row.outcome = RowOutcome::Success;
                row.error = None;
                row.duration_ms = ms;
                self.history.put(&row).await?;
                Ok(ms)
            }
            Err(f) => self.record_failure(row, f, ms).await,
        }
    }

    async fn record_failure(&self, mut row: HistoryRow, f: ExecFailure, ms: i64) -> Result<i64> {
        let message = f.to_string();
        if f.partial {
            row.error = Some(message.clone());
            row.duration_ms = ms;
            self.history.put(&row).await?;
        } else if row.kind == "down" {
            // A revert that changed nothing: the version is still applied as before.
            row.outcome = RowOutcome::Success;
            row.kind = row.error.take().unwrap_or_default();
            self.history.put(&row).await?;
        } else {
            self.history.delete(&row.version).await?;
        }
        Err(MigrateError::MigrationFailed {
            version: row.version.to_string(),
            name: row.name,
            message,
            dirty: f.partial,
        })
    }

    /// Reverts applied migrations above `to`; only the latest one when `to` is `None`.
    pub async fn down(
        &self,
        plan: &Plan,
        to: Option<&Version>,
        lock: Option<&MigrationLock>,
        dry_run: bool,
    ) -> Result<RunReport> {
        if let Some(e) = dirty_error(plan) {
            return Err(e);
        }
        let mut applied: Vec<&HistoryRow> = plan
            .rows
            .values()
            .filter(|r| r.outcome == RowOutcome::Success)
            .collect();
        applied.sort_by(|a, b| b.version.cmp(&a.version));
        let selected: Vec<&HistoryRow> = match to {
            Some(t) => applied.into_iter().filter(|r| &r.version > t).collect(),
            None => applied.into_iter().take(1).collect(),
        };
        if let Some(b) = plan.baseline() {
            if let Some(r) = selected.iter().find(|r| &r.version <= b) {
                return Err(MigrateError::Conflict(format!(
                    "cannot revert {} below the baseline {b}",
                    r.version
                )));
            }
            if to.is_some_and(|t| t < b) {
                return Err(MigrateError::Conflict(format!(
                    "--to is below the baseline {b}; versions up to the baseline cannot be reverted"
                )));
            }
        }
        // Every down file must exist before anything runs.
        let mut todo = Vec::new();
        let mut warnings = Vec::new();
        for r in &selected {
            let m = plan.migrations.get(&r.version).ok_or_else(|| {
                MigrateError::NotFound(format!(
                    "no migration file for applied version {} ({})",
                    r.version, r.name
                ))
            })?;
            let down = m.down.as_ref().ok_or_else(|| {
                MigrateError::NotFound(format!(
                    "no down file (U{}__{}…) for version {}",
                    r.version, r.name, r.version
                ))
            })?;
            if r.checksum.as_deref() != Some(m.up.checksum.as_str()) {
                warnings.push(format!(
                    "version {} changed since it was applied; its down file may not match",
                    r.version
                ));
            }
            todo.push((*r, m, down));
        }
        let mut steps = Vec::new();
        let mut current = plan.current().map(|c| c.to_string());
        for (r, m, down) in todo {
            let mut step = step_of(m, down, self.target);
            if !dry_run {
                self.interrupted()?;
                if let Some(l) = lock {
                    l.check()?;
                }
                let mut row = r.clone();
                row.outcome = RowOutcome::Dirty;
                // Kept aside so that a revert that changed nothing restores the row's kind.
                row.error = Some(r.kind.clone());
                row.kind = "down".into();
                self.history.put(&row).await?;
                tracing::info!(version = %m.version, name = %m.name, "reverting");
                let started = Instant::now();
                let res = self.exec.run_script(&down.body).await;
                let ms = started.elapsed().as_millis() as i64;
                match res {
                    Ok(()) => {
                        self.history.delete(&r.version).await?;
                    }
                    Err(f) => {
                        let mut failed = row.clone();
                        if f.partial {
                            failed.error = Some(format!("down failed: {f}"));
                        }
                        self.record_failure(failed, f, ms).await?;
                    }
                }
                step.duration_ms = Some(ms);
                current = plan
                    .rows
                    .values()
                    .filter(|x| x.outcome != RowOutcome::Dirty && x.version < r.version)
                    .map(|x| x.version.to_string())
                    .next_back();
            }
            steps.push(step);
        }
        Ok(RunReport {
            direction: "down",
            dry_run,
            steps,
            warnings,
            current,
        })
    }
}

/// `verify`: Err(Conflict) listing every changed, missing or dirty version.
pub fn verify(plan: &Plan) -> Result<StatusReport> {
    let st = plan.status();
    let bad: Vec<String> = st
        .entries
        .iter()
        .filter(|e| matches!(e.state, State::Changed | State::Missing | State::Dirty))
        .map(|e| format!("{} ({}): {}", e.version, e.name, e.state.as_str()))
        .collect();
    if bad.is_empty() {
        Ok(st)
    } else {
        Err(MigrateError::Conflict(format!(
            "verify failed: {}",
            bad.join("; ")
        )))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    /// Dirty rows removed (the version counts as not applied).
    pub removed_dirty: Vec<String>,
    /// Dirty rows marked applied (`--mark-applied`).
    pub marked_applied: Vec<String>,
    /// Applied rows whose checksum was realigned to the current file.
    pub realigned: Vec<String>,
    /// Applied versions without a file (left as they are).
    pub missing: Vec<String>,
}

pub async fn repair(
    history: &History,
    plan: &Plan,
    mark_applied: bool,
    lock: Option<&MigrationLock>,
    dry_run: bool,
) -> Result<RepairReport> {
    let mut rep = RepairReport {
        dry_run,
        removed_dirty: vec![],
        marked_applied: vec![],
        realigned: vec![],
        missing: vec![],
    };
    for r in plan.rows.values() {
        if let Some(l) = lock {
            l.check()?;
        }
        let m = plan.migrations.get(&r.version);
        let label = format!("{} ({})", r.version, r.name);
        match r.outcome {
            RowOutcome::Dirty if mark_applied && r.kind == "down" => {
                // The admin finished the revert by hand: the version is no longer applied.
                rep.removed_dirty.push(label);
                if !dry_run {
                    history.delete(&r.version).await?;
                }
            }
            RowOutcome::Dirty if mark_applied => {
                let mut row = r.clone();
                row.outcome = RowOutcome::Success;
                row.error = None;
                if let Some(m) = m {
                    row.checksum = Some(m.up.checksum.clone());
                }
                rep.marked_applied.push(label);
                if !dry_run {
                    history.put(&row).await?;
                }
            }
            RowOutcome::Dirty if r.kind == "down" => {
                // The admin undid the partial revert: the version stays applied.
                let mut row = r.clone();
                row.outcome = RowOutcome::Success;
                row.kind = m.map(|m| kind_of(&m.up)).unwrap_or("sql").to_owned();
                row.error = None;
                rep.removed_dirty.push(label);
                if !dry_run {
                    history.put(&row).await?;
                }
            }
            RowOutcome::Dirty => {
                rep.removed_dirty.push(label);
                if !dry_run {
                    history.delete(&r.version).await?;
                }
            }
            RowOutcome::Success => match m {
                Some(m) if r.checksum.as_deref() != Some(m.up.checksum.as_str()) => {
                    let mut row = r.clone();
                    row.checksum = Some(m.up.checksum.clone());
                    rep.realigned.push(label);
                    if !dry_run {
                        history.put(&row).await?;
                    }
                }
                Some(_) => {}
                None => rep.missing.push(label),
            },
            RowOutcome::Baseline => {}
        }
    }
    Ok(rep)
}

#[derive(Clone, Debug, Serialize)]
pub struct BaselineReport {
    pub dry_run: bool,
    pub version: String,
    pub name: String,
    /// Files at or below the baseline that now count as applied.
    pub covered: Vec<String>,
}

pub async fn baseline(
    history: &History,
    plan: &Plan,
    version: &Version,
    name: Option<String>,
    dry_run: bool,
) -> Result<BaselineReport> {
    if !plan.rows.is_empty() {
        return Err(MigrateError::Conflict(format!(
            "the history already has {} row(s); baseline is only for a database that has never been migrated",
            plan.rows.len()
        )));
    }
    let name = name.unwrap_or_else(|| "baseline".into());
    let covered = plan
        .migrations
        .values()
        .filter(|m| &m.version <= version)
        .map(|m| format!("{} ({})", m.version, m.name))
        .collect();
    if !dry_run {
        history
            .put(&HistoryRow {
                version: version.clone(),
                name: name.clone(),
                kind: "baseline".into(),
                checksum: plan.migrations.get(version).map(|m| m.up.checksum.clone()),
                applied_by: whoami(),
                applied_at: now_micros(),
                duration_ms: 0,
                outcome: RowOutcome::Baseline,
                error: None,
            })
            .await?;
    }
    Ok(BaselineReport {
        dry_run,
        version: version.to_string(),
        name,
        covered,
    })
}
