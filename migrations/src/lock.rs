//! The migration lock `migrate/<db>`: a Coordinator claim (one migrator per process group that
//! shares an ownership service) plus a lease row in the database itself, so that two migrator
//! processes on one database never run at once even without a shared ownership server, and a
//! dead holder's row expires by itself after its lease.
//!
//! The lease row lives in `keyward_migrate_lock` and is taken and renewed with
//! `compare_and_put`, so it works on every backend. Expiry is judged on the clock of the
//! process that wants the lock; hosts' clocks must agree to well within the lease.

use crate::error::{MigrateError, Result};
use crate::history::{now_micros, whoami};
use chrono::{DateTime, Utc};
use keyward_dbc::{Db, Field, FieldType, Record, Table, TableDef, Value};
use keyward_ownership::{Claim, Coordinator, Guard};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

pub const LOCK_TABLE: &str = "keyward_migrate_lock";

/// How long to wait for the lock and how long a lease lasts without renewal.
#[derive(Clone, Copy, Debug)]
pub struct LockOptions {
    pub wait: Duration,
    pub lease: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            wait: Duration::ZERO,
            lease: Duration::from_secs(30),
        }
    }
}

/// Who holds the lease row, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LockHolder {
    pub owner: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub expired: bool,
}

fn lock_def() -> TableDef {
    TableDef {
        name: LOCK_TABLE.to_owned(),
        fields: vec![
            Field::new("name", FieldType::Text),
            Field::new("holder", FieldType::Text),
            Field::new("owner", FieldType::Text),
            Field::new("acquired_at", FieldType::Timestamp),
            Field::new("expires_at", FieldType::Timestamp),
        ],
        primary_key: vec!["name".to_owned()],
    }
}

fn holder_of(r: &Record) -> Option<LockHolder> {
    match (r.get(2), r.get(3), r.get(4)) {
        (Some(Value::Text(o)), Some(Value::Timestamp(a)), Some(Value::Timestamp(e))) => {
            Some(LockHolder {
                owner: o.clone(),
                acquired_at: *a,
                expires_at: *e,
                expired: *e <= Utc::now(),
            })
        }
        _ => None,
    }
}

fn expires(r: &Record) -> Option<DateTime<Utc>> {
    match r.get(4) {
        Some(Value::Timestamp(e)) => Some(*e),
        _ => None,
    }
}

/// The current lease holder of `migrate/<db>`, if any (without taking anything).
pub async fn current_holder(db: &Db, key: &str) -> Result<Option<LockHolder>> {
    let table = db.define_table(lock_def()).await?;
    Ok(table
        .get(&[Value::Text(key.to_owned())])
        .await?
        .as_ref()
        .and_then(holder_of))
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(30))
}

struct Shared {
    /// The row as last written by us; `None` once lost.
    row: Option<Record>,
    lost: Option<String>,
}

/// A held migration lock. Call [`check`](Self::check) before each step that writes; call
/// [`release`](Self::release) at the end (dropping it leaves the lease to expire).
pub struct MigrationLock {
    key: String,
    table: Table,
    guard: Option<Guard>,
    shared: Arc<Mutex<Shared>>,
    renew: JoinHandle<()>,
    margin: chrono::Duration,
}

impl std::fmt::Debug for MigrationLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationLock")
            .field("key", &self.key)
            .finish()
    }
}

fn lock_guard(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MigrationLock {
    /// Takes `key` through the coordinator, then the lease row, waiting up to `opts.wait`.
    pub async fn acquire(
        db: &Db,
        coordinator: &Coordinator,
        key: &str,
        opts: LockOptions,
    ) -> Result<MigrationLock> {
        let deadline = Instant::now() + opts.wait;
        let guard = if opts.wait.is_zero() {
            match coordinator.claim(&[key]).await?.pop() {
                Some(Claim::Granted(g)) => g,
                Some(Claim::OwnedBy(o)) => {
                    return Err(MigrateError::LockHeld {
                        key: key.to_owned(),
                        holder: format!("node {} (token {})", o.node, o.token),
                    })
                }
                None => return Err(MigrateError::Other("empty claim reply".into())),
            }
        } else {
            coordinator
                .claim_wait(key, opts.wait)
                .await
                .map_err(|e| match e {
                    keyward_ownership::OwnershipError::Timeout { .. } => MigrateError::LockHeld {
                        key: key.to_owned(),
                        holder: "another node of this ownership service".into(),
                    },
                    e => e.into(),
                })?
        };
        let table = db.define_table(lock_def()).await?;
        let me = format!(
            "{} pid {} ({})",
            whoami(),
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let lease = chrono_dur(opts.lease);
        let pk = Value::Text(key.to_owned());
        let row = loop {
            let now = now_micros();
            let mine: Record = vec![
                pk.clone(),
                Value::Text(uuid::Uuid::new_v4().to_string()),
                Value::Text(me.clone()),
                Value::Timestamp(now),
                Value::Timestamp(now + lease),
            ];
            let current = table.get(std::slice::from_ref(&pk)).await?;
            let free = match &current {
                None => true,
                Some(r) => expires(r).is_none_or(|e| e <= now),
            };
            if free {
                if let Some(old) = &current {
                    tracing::warn!(
                        key,
                        holder = ?holder_of(old),
                        "taking over an expired migration lock (its holder died or stalled)"
                    );
                }
                if table
                    .compare_and_put(std::slice::from_ref(&pk), current.as_ref(), Some(&mine))
                    .await?
                {
                    break mine;
                }
                // Someone else won the race; look again.
                continue;
            }
            if Instant::now() >= deadline {
                let h = current.as_ref().and_then(holder_of);
                return Err(MigrateError::LockHeld {
                    key: key.to_owned(),
                    holder: match h {
                        Some(h) => format!("{} until {}", h.owner, h.expires_at.to_rfc3339()),
                        None => "an unreadable lock row".into(),
                    },
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(200))).await;
        };
        let shared = Arc::new(Mutex::new(Shared {
            row: Some(row),
            lost: None,
        }));
        let renew = tokio::spawn(renew_loop(
            table.clone(),
            pk,
            shared.clone(),
            opts.lease,
            guard.lost(),
        ));
        tracing::info!(key, "migration lock taken");
        Ok(MigrationLock {
            key: key.to_owned(),
            table,
            guard: Some(guard),
            shared,
            renew,
            margin: chrono_dur(opts.lease / 5),
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Err when the lock may no longer be ours: lost, or the lease end (minus a margin) passed
    /// without a renewal.
    pub fn check(&self) -> Result<()> {
        let st = lock_guard(&self.shared);
        if let Some(reason) = &st.lost {
            return Err(MigrateError::LockLost {
                key: self.key.clone(),
                reason: reason.clone(),
            });
        }
        let deadline = st.row.as_ref().and_then(expires);
        match deadline {
            Some(e) if Utc::now() + self.margin < e => {}
            _ => {
                return Err(MigrateError::LockLost {
                    key: self.key.clone(),
                    reason: "the lease was not renewed in time".into(),
                })
            }
        }
        if let Some(g) = &self.guard {
            if !g.is_valid() {
                return Err(MigrateError::LockLost {
                    key: self.key.clone(),
                    reason: "the coordinator claim was lost".into(),
                });
            }
        }
        Ok(())
    }

    /// Deletes the lease row (if still ours) and releases the coordinator claim.
    pub async fn release(mut self) -> Result<()> {
        self.renew.abort();
        let row = lock_guard(&self.shared).row.take();
        let mut result = Ok(());
        if let Some(row) = row {
            if let Err(e) = self
                .table
                .compare_and_put(&[Value::Text(self.key.clone())], Some(&row), None)
                .await
            {
                result = Err(e.into());
            }
        }
        if let Some(g) = self.guard.take() {
            g.release().await?;
        }
        result
    }
}

impl Drop for MigrationLock {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

async fn renew_loop(
    table: Table,
    pk: Value,
    shared: Arc<Mutex<Shared>>,
    lease: Duration,
    coordinator_lost: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let every = (lease / 3).max(Duration::from_millis(50));
    tokio::pin!(coordinator_lost);
    loop {
        tokio::select! {
            _ = &mut coordinator_lost => {
                let mut st = lock_guard(&shared);
                st.lost = Some("the coordinator claim was lost".into());
                st.row = None;
                return;
            }
            _ = tokio::time::sleep(every) => {}
        }
        let Some(current) = lock_guard(&shared).row.clone() else {
            return;
        };
        let mut next = current.clone();
        if let Some(slot) = next.get_mut(4) {
            *slot = Value::Timestamp(now_micros() + chrono_dur(lease));
        }
        match table
            .compare_and_put(std::slice::from_ref(&pk), Some(&current), Some(&next))
            .await
        {
            Ok(true) => lock_guard(&shared).row = Some(next),
            Ok(false) => {
                let mut st = lock_guard(&shared);
                st.lost = Some("another migrator took the lease row over".into());
                st.row = None;
                return;
            }
            Err(e) => {
                // Keep trying; `check` fails by itself once the old lease end comes near.
                tracing::warn!(error = %e, "could not renew the migration lock lease");
            }
        }
    }
}
