//! `vfs rekey` and `search reindex`: maintenance of the encrypted file system and of search
//! indexes, both resumable after an interruption and with a progress bar.

use crate::error::{MigrateError, Result};
use crate::history::now_micros;
use crate::output::{table, Outcome};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keyward_dbc::{Db, Field, FieldType, ScanCursor, Table, TableDef, Value};
use keyward_ownership::Coordinator;
use keyward_search::{SearchConfig, SearchError, SearchService};
use keyward_vfs::rekey::{self, RekeyOptions, RekeyReport};
use keyward_vfs::{CipherKind, Keyring, Vfs, VfsConfig, VfsError};
use serde::Serialize;
use serde_json::{Map, Value as Json};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Subcommand, Debug, Clone)]
pub enum VfsCommand {
    /// Re-seal every file's data key under the keyring's current master key (after
    /// `--rotate` or `keyward vfs key rotate`); with --reencrypt, rewrite every file's content
    /// under a new data key. Resumable: run the same command again after an interruption.
    Rekey(RekeyArgs),
}

/// The volume to work on: the same settings as the `[vfs]` config section.
#[derive(Args, Debug, Clone)]
pub struct VolumeArgs {
    /// Volume name.
    #[arg(long, env = "KEYWARD_VFS__VOLUME", default_value = "default")]
    pub volume: String,
    /// Local backend: files live under ROOT/<volume>/ (also the default keyring location).
    #[arg(long, env = "KEYWARD_VFS__ROOT", default_value = "./keyward-data/vfs")]
    pub root: PathBuf,
    /// Where the sealed files are: `local` or `dbc`.
    #[arg(long, env = "KEYWARD_VFS__BACKEND", default_value = "local")]
    pub backend: String,
    /// DBC backend: the database URL.
    #[arg(long, env = "KEYWARD_VFS__DBC_URL", hide_env_values = true)]
    pub dbc_url: Option<String>,
    /// The keyring file (ROOT/keyring.kwk when unset).
    #[arg(long, env = "KEYWARD_VFS__KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Name of the environment variable holding the keyring's passphrase.
    #[arg(long, env = "KEYWARD_VFS__PASSPHRASE_ENV")]
    pub passphrase_env: Option<String>,
    /// The volume hashes file names (fixed for the life of a volume).
    #[arg(long, env = "KEYWARD_VFS__NAME_ENCRYPTION")]
    pub name_encryption: bool,
    /// Cipher of re-encrypted files.
    #[arg(long, value_enum, default_value = "aes-256-gcm")]
    pub cipher: CipherKind,
}

#[derive(Args, Debug, Clone)]
pub struct RekeyArgs {
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// First add a new master key to the keyring and make it current (skipped when resuming
    /// an interrupted run, which keeps the key it started with).
    #[arg(long)]
    pub rotate: bool,
    /// Rewrite every file's content under a new data key, not only re-seal its data key.
    #[arg(long)]
    pub reencrypt: bool,
    /// Checkpoint file (default: next to the keyring, `.rekey-<volume>`).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Ignore an existing checkpoint and start from the first file.
    #[arg(long)]
    pub restart: bool,
    /// Test hook: stop as if interrupted after this many files.
    #[arg(long, hide = true)]
    pub stop_after_files: Option<u64>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum SearchCommand {
    /// Rebuild INDEX from a record-face table: the index is emptied (unless --keep) and every
    /// row of the table becomes a document. Resumable: run the same command again after an
    /// interruption.
    Reindex(ReindexArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ReindexArgs {
    /// The index to rebuild (it must exist: its definition is kept).
    pub index: String,
    /// Database URL of the source table.
    #[arg(long)]
    pub from: String,
    /// The source table (a record-face table of --from).
    #[arg(long)]
    pub table: String,
    /// Database URL of the search service's documents (its catalog and shard tables); the
    /// source database when unset.
    #[arg(long, env = "KEYWARD_SEARCH__STORE_URL", hide_env_values = true)]
    pub store: Option<String>,
    /// Where this process keeps the shard indexes it writes.
    #[arg(
        long,
        env = "KEYWARD_SEARCH__DATA_DIR",
        default_value = "./keyward-data/search"
    )]
    pub data_dir: PathBuf,
    /// Rows per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Keep the index's current documents (add and replace only; rows deleted from the table
    /// stay in the index).
    #[arg(long)]
    pub keep: bool,
    /// Ignore a checkpoint of an interrupted run and start over.
    #[arg(long)]
    pub restart: bool,
    /// Test hook: stop as if interrupted after this many rows.
    #[arg(long, hide = true)]
    pub stop_after_rows: Option<u64>,
}

impl From<VfsError> for MigrateError {
    fn from(e: VfsError) -> Self {
        match e {
            VfsError::Key(m) | VfsError::Config(m) => MigrateError::Config(m),
            VfsError::InvalidArgument(m) | VfsError::InvalidPath { reason: m, .. } => {
                MigrateError::Usage(m)
            }
            other => match other.exit_code() {
                4 => MigrateError::Unavailable(other.to_string()),
                5 => MigrateError::NotFound(other.to_string()),
                6 => MigrateError::Conflict(other.to_string()),
                7 => MigrateError::Integrity(other.to_string()),
                8 => MigrateError::Permission(other.to_string()),
                _ => MigrateError::Other(other.to_string()),
            },
        }
    }
}

impl From<SearchError> for MigrateError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::IndexNotFound(_) | SearchError::DocumentNotFound(_) => {
                MigrateError::NotFound(e.to_string())
            }
            SearchError::Unavailable(_) => MigrateError::Unavailable(e.to_string()),
            SearchError::NotOwner { .. } | SearchError::IndexExists(_) => {
                MigrateError::Conflict(e.to_string())
            }
            SearchError::Unauthorized | SearchError::Forbidden(_) => {
                MigrateError::Permission(e.to_string())
            }
            SearchError::BadJson(_)
            | SearchError::UnknownField(_)
            | SearchError::InvalidType(_)
            | SearchError::InvalidRequest(_) => {
                MigrateError::Conflict(format!("a row does not fit the index schema: {e}"))
            }
            other => MigrateError::Other(other.to_string()),
        }
    }
}

fn bar(enabled: bool, prefix: &str, total: u64, done: u64, unit: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(total),
        if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{prefix:>20}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}"
    )) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(prefix.to_owned());
    pb.set_position(done);
    pb.reset_eta();
    pb
}

fn vfs_config(v: &VolumeArgs) -> Result<VfsConfig> {
    let backend = match v.backend.as_str() {
        "local" => keyward_vfs::BackendKind::Local,
        "dbc" => keyward_vfs::BackendKind::Dbc,
        other => {
            return Err(MigrateError::Usage(format!(
                "--backend {other:?}: use local or dbc"
            )))
        }
    };
    let cfg = VfsConfig {
        volume: v.volume.clone(),
        root: v.root.clone(),
        backend,
        dbc_url: v.dbc_url.clone(),
        cipher: v.cipher,
        key_file: v.key_file.clone(),
        passphrase_env: v.passphrase_env.clone(),
        name_encryption: v.name_encryption,
        ..VfsConfig::default()
    };
    cfg.validate()?;
    Ok(cfg)
}

#[derive(Serialize)]
struct RekeyOutcome {
    dry_run: bool,
    rotated: Option<String>,
    checkpoint: String,
    #[serde(flatten)]
    report: RekeyReport,
}

/// `vfs rekey`.
pub async fn run_rekey(
    a: &RekeyArgs,
    dry_run: bool,
    progress: bool,
    coord: Coordinator,
    cancel: &CancellationToken,
) -> Result<Outcome> {
    let cfg = vfs_config(&a.volume)?;
    let key_file = cfg.key_file_path();
    let checkpoint = a
        .checkpoint
        .clone()
        .unwrap_or_else(|| rekey::default_checkpoint(&key_file, &cfg.volume));
    let resuming = !a.restart && checkpoint.exists();
    let mut rotated = None;
    if a.rotate && !resuming {
        if dry_run {
            rotated = Some("(a new key)".to_owned());
        } else {
            let pass = cfg.passphrase()?;
            let mut ring = Keyring::load(&key_file, pass.as_ref().map(|p| p.as_bytes()))?;
            let id = ring.rotate()?;
            let seal = pass
                .as_ref()
                .map(|p| (p.as_bytes(), keyward_vfs::KdfParams::default()));
            ring.save(&key_file, seal)?;
            rotated = Some(id.to_string());
        }
    } else if a.rotate {
        tracing::info!("resuming an interrupted rekey: --rotate is skipped, the run keeps its key");
    }
    let vfs = Vfs::from_config(&cfg, coord).await?;
    let opts = RekeyOptions {
        reencrypt: a.reencrypt,
        checkpoint: checkpoint.clone(),
        restart: a.restart,
        stop_after: a.stop_after_files,
        ..RekeyOptions::new(checkpoint.clone())
    };
    let report = if dry_run {
        rekey_plan(&vfs, &opts).await?
    } else {
        let files_hint = rekey::load_checkpoint(&vfs, &opts)?
            .map(|c| c.files_done)
            .unwrap_or(0);
        let pb = bar(progress, &cfg.volume, 0, files_hint, "files");
        let stop = {
            let c = cancel.clone();
            move || c.is_cancelled()
        };
        let pb2 = pb.clone();
        let mut tell = move |p: rekey::RekeyProgress<'_>| {
            pb2.set_length(p.files);
            pb2.set_position(p.files_done);
        };
        let r = rekey::rekey_volume(&vfs, &opts, &stop, &mut tell).await;
        match &r {
            Ok(rep) if rep.complete => pb.finish(),
            _ => pb.abandon(),
        }
        r?
    };
    if !report.complete {
        return Err(MigrateError::Interrupted(format!(
            "rekey of volume {} stopped after {} of {} files; run the same command again to resume",
            report.volume, report.files_done, report.files
        )));
    }
    let mut human = String::new();
    if dry_run {
        human.push_str("[dry run] nothing written\n");
    }
    if let Some(k) = &rotated {
        human.push_str(&format!("new current master key {k}\n"));
    }
    let verb = if dry_run { "would " } else { "" };
    human.push_str(&table(
        &[
            "volume",
            "key",
            "files",
            "resumed at",
            "re-sealed",
            "re-encrypted",
            "unchanged",
            "vanished",
        ],
        &[vec![
            report.volume.clone(),
            report.key_id.clone(),
            report.files.to_string(),
            report.resumed_from.to_string(),
            report.rewrapped.to_string(),
            report.reencrypted.to_string(),
            report.unchanged.to_string(),
            report.vanished.to_string(),
        ]],
    ));
    human.push_str(&format!(
        "\n{verb}{} file(s) now sealed with key {}; remove older keys only after a backup of the keyring",
        report.files_done, report.key_id
    ));
    Ok(Outcome::new(
        "vfs rekey",
        &RekeyOutcome {
            dry_run,
            rotated,
            checkpoint: checkpoint.display().to_string(),
            report,
        },
        human,
    ))
}

/// What a rekey would do, from each file's header (nothing is written).
async fn rekey_plan(vfs: &Vfs, opts: &RekeyOptions) -> Result<RekeyReport> {
    let current = vfs.keyring().current_id();
    let files = vfs.walk().await?;
    let mut r = RekeyReport {
        volume: vfs.volume().to_owned(),
        key_id: current.to_string(),
        reencrypt: opts.reencrypt,
        files: files.len() as u64,
        files_done: files.len() as u64,
        complete: true,
        ..RekeyReport::default()
    };
    for f in &files {
        match vfs.stat(f).await {
            Ok(_) if opts.reencrypt => r.reencrypted += 1,
            Ok(m) if m.key_id == current => r.unchanged += 1,
            Ok(_) => r.rewrapped += 1,
            Err(VfsError::NotFound { .. }) => r.vanished += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(r)
}

// ---- search reindex ----

/// Name of the checkpoint table kept in the search store's database.
pub const REINDEX_CHECKPOINT_TABLE: &str = "keyward_reindex_checkpoint";

fn reindex_checkpoint_def() -> TableDef {
    TableDef {
        name: REINDEX_CHECKPOINT_TABLE.to_owned(),
        fields: vec![
            Field::new("index_name", FieldType::Text),
            Field::new("source", FieldType::Text),
            // The index incarnation the run fills: a re-created index starts over.
            Field::new("index_uid", FieldType::Text),
            Field::new("scan_cursor", FieldType::Text).nullable(),
            Field::new("documents", FieldType::I64),
            Field::new("done", FieldType::Bool),
            Field::new("updated_at", FieldType::Timestamp),
        ],
        primary_key: vec!["index_name".to_owned(), "source".to_owned()],
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ReindexCheckpoint {
    uid: String,
    cursor: Option<String>,
    documents: u64,
    done: bool,
}

async fn load_reindex_cp(
    t: &Table,
    index: &str,
    source: &str,
) -> Result<Option<ReindexCheckpoint>> {
    let r = t
        .get(&[Value::Text(index.into()), Value::Text(source.into())])
        .await?;
    Ok(r.map(|r| ReindexCheckpoint {
        uid: match r.get(2) {
            Some(Value::Text(s)) => s.clone(),
            _ => String::new(),
        },
        cursor: match r.get(3) {
            Some(Value::Text(s)) => Some(s.clone()),
            _ => None,
        },
        documents: match r.get(4) {
            Some(Value::I64(n)) => (*n).max(0) as u64,
            _ => 0,
        },
        done: matches!(r.get(5), Some(Value::Bool(true))),
    }))
}

async fn save_reindex_cp(
    t: &Table,
    index: &str,
    source: &str,
    c: &ReindexCheckpoint,
) -> Result<()> {
    t.put(&vec![
        Value::Text(index.into()),
        Value::Text(source.into()),
        Value::Text(c.uid.clone()),
        c.cursor.clone().map(Value::Text).unwrap_or(Value::Null),
        Value::I64(c.documents as i64),
        Value::Bool(c.done),
        Value::Timestamp(now_micros()),
    ])
    .await?;
    Ok(())
}

/// The same mapping as `keyward_search::reindex_from_table`: bytes have no JSON form and are
/// left out, like NULLs.
fn to_json(v: &Value) -> Json {
    match v {
        Value::Null | Value::Bytes(_) => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::I64(i) => Json::from(*i),
        Value::F64(x) => serde_json::Number::from_f64(*x)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Value::Decimal(d) => Json::String(d.to_string()),
        Value::Text(s) => Json::String(s.clone()),
        Value::Timestamp(t) => Json::String(t.to_rfc3339()),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Json(j) => (**j).clone(),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ReindexOutcome {
    pub index: String,
    pub table: String,
    pub dry_run: bool,
    pub recreated: bool,
    pub resumed_from: u64,
    pub indexed_this_run: u64,
    pub documents: u64,
    pub source_rows: u64,
    pub seconds: f64,
}

/// `search reindex`.
pub async fn run_reindex(
    a: &ReindexArgs,
    dry_run: bool,
    progress: bool,
    coord: Coordinator,
    cancel: &CancellationToken,
) -> Result<Outcome> {
    if a.batch_size == 0 || a.batch_size > 10_000 {
        return Err(MigrateError::Usage(
            "--batch-size must be between 1 and 10000".into(),
        ));
    }
    let started = std::time::Instant::now();
    let src = crate::cli::connect(&a.from).await?;
    let store_db = match &a.store {
        Some(u) => crate::cli::connect(u).await?,
        None => src.clone(),
    };
    let res = reindex_on(a, dry_run, progress, coord, cancel, &src, &store_db).await;
    if a.store.is_some() {
        store_db.close().await;
    }
    src.close().await;
    let mut out = res?;
    out.seconds = started.elapsed().as_secs_f64();
    let human = format!(
        "{}index {}: {} document(s) from table {} ({} this run, resumed at {}{}) in {:.1} s",
        if dry_run { "[dry run] " } else { "" },
        out.index,
        out.documents,
        out.table,
        out.indexed_this_run,
        out.resumed_from,
        if out.recreated {
            ", index emptied first"
        } else {
            ""
        },
        out.seconds
    );
    Ok(Outcome::new("search reindex", &out, human))
}

async fn reindex_on(
    a: &ReindexArgs,
    dry_run: bool,
    progress: bool,
    coord: Coordinator,
    cancel: &CancellationToken,
    src: &Db,
    store_db: &Db,
) -> Result<ReindexOutcome> {
    let table = match src.table(&a.table).await {
        Ok(t) => t,
        Err(keyward_dbc::DbcError::NotFound { .. }) => {
            return Err(MigrateError::NotFound(format!(
                "table {:?} is not a record-face table of the source database",
                a.table
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let total = table.count().await?;
    let config = SearchConfig {
        data_dir: a.data_dir.clone(),
        ..SearchConfig::default()
    };
    let service = SearchService::with_db(config, store_db.clone(), coord).await?;
    let result = reindex_with(
        a, dry_run, progress, cancel, src, store_db, &service, &table, total,
    )
    .await;
    service.shutdown();
    result
}

#[allow(clippy::too_many_arguments)]
async fn reindex_with(
    a: &ReindexArgs,
    dry_run: bool,
    progress: bool,
    cancel: &CancellationToken,
    src: &Db,
    store_db: &Db,
    service: &SearchService,
    table: &Table,
    total: u64,
) -> Result<ReindexOutcome> {
    let mut meta = service.index(&a.index).await?;
    let names: Vec<String> = table.def().fields.iter().map(|f| f.name.clone()).collect();
    if !names.contains(&meta.def.id_field) {
        return Err(MigrateError::Usage(format!(
            "table {} has no column {:?} (the index's id field)",
            a.table, meta.def.id_field
        )));
    }
    let mut out = ReindexOutcome {
        index: a.index.clone(),
        table: a.table.clone(),
        dry_run,
        recreated: false,
        resumed_from: 0,
        indexed_this_run: 0,
        documents: 0,
        source_rows: total,
        seconds: 0.0,
    };
    if dry_run {
        out.recreated = !a.keep;
        out.documents = total;
        return Ok(out);
    }
    let source = format!("{}/{}", src.database_id().await?, a.table);
    let cps = store_db.define_table(reindex_checkpoint_def()).await?;
    let mut cp = match load_reindex_cp(&cps, &a.index, &source).await? {
        // An interrupted run on the same incarnation of the index: go on from its cursor.
        Some(c) if !a.restart && !c.done && c.uid == meta.uid => c,
        _ => {
            if !a.keep {
                service.delete_index(&a.index).await?;
                let mut def = meta.def.clone();
                def.shards = Some(meta.shards);
                meta = service.create_index(def).await?;
                out.recreated = true;
            }
            let c = ReindexCheckpoint {
                uid: meta.uid.clone(),
                ..ReindexCheckpoint::default()
            };
            save_reindex_cp(&cps, &a.index, &source, &c).await?;
            c
        }
    };
    out.resumed_from = cp.documents;
    let keep: Vec<bool> = names
        .iter()
        .map(|n| *n == meta.def.id_field || meta.def.fields.contains_key(n))
        .collect();
    let mut cursor: Option<ScanCursor> = match &cp.cursor {
        Some(s) => Some(s.parse().map_err(|_| {
            MigrateError::Conflict(format!(
                "reindex checkpoint of {} has an unreadable cursor; rerun with --restart",
                a.index
            ))
        })?),
        None => None,
    };
    let pb = bar(progress, &a.index, total, cp.documents, "rows");
    let mut budget = a.stop_after_rows;
    loop {
        if cancel.is_cancelled() || budget == Some(0) {
            pb.abandon();
            return Err(MigrateError::Interrupted(format!(
                "reindex of {} stopped after {} rows; run the same command again to resume",
                a.index, cp.documents
            )));
        }
        let limit = budget.map_or(a.batch_size, |b| a.batch_size.min(b as usize));
        let page = table.scan(cursor.as_ref(), limit).await?;
        let mut docs = Vec::with_capacity(page.records.len());
        for rec in &page.records {
            let mut m = Map::new();
            for ((name, v), k) in names.iter().zip(rec).zip(&keep) {
                if *k && !matches!(v, Value::Null | Value::Bytes(_)) {
                    m.insert(name.clone(), to_json(v));
                }
            }
            docs.push(Json::Object(m));
        }
        let n = docs.len() as u64;
        if n > 0 {
            // Waiting per batch leaves every checkpointed row searchable.
            service.add_documents(&a.index, docs, false, true).await?;
        }
        cp.documents += n;
        out.indexed_this_run += n;
        if let Some(b) = budget.as_mut() {
            *b = b.saturating_sub(n);
        }
        pb.inc(n);
        cursor = page.next;
        cp.cursor = cursor.as_ref().map(|c| c.to_string());
        cp.done = cursor.is_none();
        save_reindex_cp(&cps, &a.index, &source, &cp).await?;
        if cp.done {
            break;
        }
    }
    pb.finish();
    out.documents = cp.documents;
    Ok(out)
}
