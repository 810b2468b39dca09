//! The DBC blob backend: sealed files as rows of DBC's record face, so that they live in
//! SQLite, PostgreSQL, MySQL/MariaDB, MongoDB or Scylla.
//!
//! Two tables:
//! * `kw_vfs_files` (volume, name) → object id, header, segment count, segment map, times:
//!   the file's **pointer row**, written only with `put_fenced` / `delete_fenced` under the
//!   writer's token.
//! * `kw_vfs_chunks` (object, segment, generation) → one sealed segment per row, so a
//!   random access reads one small row and no backend row limit is reached.
//!
//! A transaction writes its segments as rows of a fresh random generation (never visible:
//! nothing points at them yet) and commits by one fenced put of the pointer row whose map
//! names, per segment, the generation that holds it: the pointer flip is the atomic switch.
//! Rows the flip superseded are deleted afterwards, best effort; a crash before that leaves
//! unreferenced rows, never a mixed file.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use keyward_dbc::{Db, DbcError, Field, FieldType, Record, Table, TableDef, Value};
use keyward_ownership::Token;

use super::{Backend, BlobEntry, BlobMeta, BlobRead, BlobTxn};
use crate::crypto::random_array;
use crate::error::{Result, VfsError};

/// Largest sealed segment one chunk row may hold (DBC's per-value limit).
pub const MAX_ROW_BYTES: usize = keyward_dbc::MAX_VALUE_BYTES;

const FILES: &str = "kw_vfs_files";
const CHUNKS: &str = "kw_vfs_chunks";
/// Rows read per page when listing.
const SCAN_PAGE: usize = 500;

fn db_err(what: &str, e: DbcError) -> VfsError {
    match e {
        DbcError::Fenced { stored, given, .. } => VfsError::Fenced {
            path: what.to_owned(),
            stored,
            given,
        },
        e => VfsError::Backend(format!("{what}: {e}")),
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn micros_to_time(us: i64) -> Option<SystemTime> {
    u64::try_from(us)
        .ok()
        .map(|us| UNIX_EPOCH + std::time::Duration::from_micros(us))
}

/// Run-length encoding of the per-segment generation map: `(u32 run, i64 generation)*`.
fn encode_map(map: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < map.len() {
        let g = map[i];
        let mut run = 1usize;
        while i + run < map.len() && map[i + run] == g && run < u32::MAX as usize {
            run += 1;
        }
        out.extend_from_slice(&(run as u32).to_le_bytes());
        out.extend_from_slice(&g.to_le_bytes());
        i += run;
    }
    out
}

fn decode_map(b: &[u8], count: u64, name: &str) -> Result<Vec<i64>> {
    let bad = || VfsError::Backend(format!("{name}: malformed segment map"));
    if !b.len().is_multiple_of(12) {
        return Err(bad());
    }
    let mut map = Vec::new();
    for rec in b.chunks_exact(12) {
        let run = u32::from_le_bytes(rec[..4].try_into().map_err(|_| bad())?) as u64;
        let g = i64::from_le_bytes(rec[4..].try_into().map_err(|_| bad())?);
        if map.len() as u64 + run > count {
            return Err(bad());
        }
        map.extend(std::iter::repeat_n(g, run as usize));
    }
    if map.len() as u64 != count {
        return Err(bad());
    }
    Ok(map)
}

fn random_generation() -> Result<i64> {
    let b: [u8; 8] = random_array()?;
    Ok(i64::from_le_bytes(b) & i64::MAX)
}

/// A file's pointer row.
#[derive(Clone, Debug)]
struct Pointer {
    object: String,
    header: Vec<u8>,
    map: Vec<i64>,
    created: i64,
    modified: i64,
}

impl Pointer {
    fn meta(&self) -> BlobMeta {
        BlobMeta {
            created: micros_to_time(self.created),
            modified: micros_to_time(self.modified),
        }
    }
}

/// Files of one volume in a database.
#[derive(Clone)]
pub struct DbcBackend {
    volume: String,
    files: Table,
    chunks: Table,
}

impl std::fmt::Debug for DbcBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbcBackend")
            .field("volume", &self.volume)
            .finish()
    }
}

impl DbcBackend {
    /// Connects to `url` and defines the two tables if missing.
    pub async fn connect(url: &str, volume: &str) -> Result<DbcBackend> {
        let db = Db::connect(url).await.map_err(|e| db_err("connect", e))?;
        DbcBackend::with_db(&db, volume).await
    }

    pub async fn with_db(db: &Db, volume: &str) -> Result<DbcBackend> {
        let files = db
            .define_table(TableDef {
                name: FILES.into(),
                fields: vec![
                    Field::new("volume", FieldType::Text),
                    Field::new("name", FieldType::Text),
                    Field::new("object", FieldType::Text),
                    Field::new("header", FieldType::Bytes),
                    Field::new("segments", FieldType::I64),
                    Field::new("map", FieldType::Bytes),
                    Field::new("created_us", FieldType::I64),
                    Field::new("modified_us", FieldType::I64),
                ],
                primary_key: vec!["volume".into(), "name".into()],
            })
            .await
            .map_err(|e| db_err("define kw_vfs_files", e))?;
        let chunks = db
            .define_table(TableDef {
                name: CHUNKS.into(),
                fields: vec![
                    Field::new("object", FieldType::Text),
                    Field::new("seg", FieldType::I64),
                    Field::new("gen", FieldType::I64),
                    Field::new("data", FieldType::Bytes),
                ],
                primary_key: vec!["object".into(), "seg".into(), "gen".into()],
            })
            .await
            .map_err(|e| db_err("define kw_vfs_chunks", e))?;
        Ok(DbcBackend {
            volume: volume.to_owned(),
            files,
            chunks,
        })
    }

    fn key(&self, name: &str) -> Vec<Value> {
        vec![
            Value::Text(self.volume.clone()),
            Value::Text(name.to_owned()),
        ]
    }

    async fn pointer(&self, name: &str) -> Result<Option<Pointer>> {
        let Some(rec) = self
            .files
            .get(&self.key(name))
            .await
            .map_err(|e| db_err(name, e))?
        else {
            return Ok(None);
        };
        let bad = || VfsError::Backend(format!("{name}: malformed pointer row"));
        match rec.as_slice() {
            [_, _, Value::Text(object), Value::Bytes(header), Value::I64(segments), Value::Bytes(map), Value::I64(created), Value::I64(modified)] =>
            {
                let count = u64::try_from(*segments).map_err(|_| bad())?;
                Ok(Some(Pointer {
                    object: object.clone(),
                    header: header.clone(),
                    map: decode_map(map, count, name)?,
                    created: *created,
                    modified: *modified,
                }))
            }
            _ => Err(bad()),
        }
    }

    fn pointer_record(&self, name: &str, p: &Pointer) -> Record {
        vec![
            Value::Text(self.volume.clone()),
            Value::Text(name.to_owned()),
            Value::Text(p.object.clone()),
            Value::Bytes(p.header.clone()),
            Value::I64(p.map.len() as i64),
            Value::Bytes(encode_map(&p.map)),
            Value::I64(p.created),
            Value::I64(p.modified),
        ]
    }

    fn chunk_key(object: &str, seg: u64, gen: i64) -> Vec<Value> {
        vec![
            Value::Text(object.to_owned()),
            Value::I64(seg as i64),
            Value::I64(gen),
        ]
    }

    /// Reads segment `index` of the file `p` points at, from the generation its map names.
    async fn read_segment_of(
        &self,
        name: &str,
        p: &Pointer,
        index: u64,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let gen = *p
            .map
            .get(index as usize)
            .ok_or_else(|| VfsError::InvalidArgument(format!("segment {index} out of range")))?;
        self.read_chunk(name, &p.object, index, gen, out).await
    }

    async fn read_chunk(
        &self,
        name: &str,
        object: &str,
        seg: u64,
        gen: i64,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let rec = self
            .chunks
            .get(&DbcBackend::chunk_key(object, seg, gen))
            .await
            .map_err(|e| db_err(name, e))?
            .ok_or_else(|| VfsError::Truncated {
                path: name.to_owned(),
                what: format!("segment {seg} is missing from the database"),
            })?;
        match rec.into_iter().nth(3) {
            Some(Value::Bytes(b)) => {
                out.clear();
                out.extend_from_slice(&b);
                Ok(())
            }
            _ => Err(VfsError::Backend(format!("{name}: malformed chunk row"))),
        }
    }

    /// Deletes chunk rows nothing points at any more. Best effort: leftovers are garbage,
    /// never visible.
    async fn collect(&self, rows: Vec<(String, u64, i64)>) {
        for (object, seg, gen) in rows {
            if let Err(e) = self
                .chunks
                .delete(&DbcBackend::chunk_key(&object, seg, gen))
                .await
            {
                tracing::warn!(error = %e, "vfs dbc: could not delete a superseded chunk");
            }
        }
    }

    fn rows_of(p: &Pointer) -> Vec<(String, u64, i64)> {
        p.map
            .iter()
            .enumerate()
            .map(|(i, g)| (p.object.clone(), i as u64, *g))
            .collect()
    }
}

struct DbcRead {
    backend: DbcBackend,
    name: String,
    p: Pointer,
}

#[async_trait]
impl BlobRead for DbcRead {
    fn header(&self) -> &[u8] {
        &self.p.header
    }
    fn segment_count(&self) -> u64 {
        self.p.map.len() as u64
    }
    fn meta(&self) -> BlobMeta {
        self.p.meta()
    }
    async fn read_segment(&self, index: u64, out: &mut Vec<u8>) -> Result<()> {
        self.backend
            .read_segment_of(&self.name, &self.p, index, out)
            .await
    }
}

struct DbcTxn {
    backend: DbcBackend,
    name: String,
    /// The committed pointer this transaction replaces, if any.
    base: Option<Pointer>,
    p: Pointer,
    gen: i64,
    /// Chunk rows this transaction wrote (for cleanup on abort).
    written: Vec<u64>,
    done: bool,
}

impl Drop for DbcTxn {
    fn drop(&mut self) {
        if self.done || self.written.is_empty() {
            return;
        }
        // Never committed: remove its rows in the background (a runtime is running, since
        // transactions are only made inside one).
        let rows: Vec<_> = self
            .written
            .iter()
            .map(|s| (self.p.object.clone(), *s, self.gen))
            .collect();
        let b = self.backend.clone();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move { b.collect(rows).await });
        }
    }
}

#[async_trait]
impl BlobRead for DbcTxn {
    fn header(&self) -> &[u8] {
        &self.p.header
    }
    fn segment_count(&self) -> u64 {
        self.p.map.len() as u64
    }
    fn meta(&self) -> BlobMeta {
        self.p.meta()
    }
    async fn read_segment(&self, index: u64, out: &mut Vec<u8>) -> Result<()> {
        self.backend
            .read_segment_of(&self.name, &self.p, index, out)
            .await
    }
}

#[async_trait]
impl BlobTxn for DbcTxn {
    async fn set_header(&mut self, header: &[u8]) -> Result<()> {
        self.p.header = header.to_vec();
        Ok(())
    }

    async fn write_segment(&mut self, index: u64, sealed: &[u8]) -> Result<()> {
        let count = self.p.map.len() as u64;
        if index > count {
            return Err(VfsError::InvalidArgument(format!(
                "segment {index} written past the end ({count} segments)"
            )));
        }
        let rec = vec![
            Value::Text(self.p.object.clone()),
            Value::I64(index as i64),
            Value::I64(self.gen),
            Value::Bytes(sealed.to_vec()),
        ];
        self.backend
            .chunks
            .put(&rec)
            .await
            .map_err(|e| db_err(&self.name, e))?;
        if index == count {
            self.p.map.push(self.gen);
        } else {
            self.p.map[index as usize] = self.gen;
        }
        if !self.written.contains(&index) {
            self.written.push(index);
        }
        Ok(())
    }

    async fn truncate_segments(&mut self, count: u64) -> Result<()> {
        self.p.map.truncate(count as usize);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, token: Token) -> Result<()> {
        self.p.modified = now_micros();
        let rec = self.backend.pointer_record(&self.name, &self.p);
        self.backend
            .files
            .put_fenced(&rec, token)
            .await
            .map_err(|e| db_err(&self.name, e))?;
        self.done = true;
        // Rows the new pointer no longer names: superseded generations, truncated segments,
        // rows this transaction overwrote twice, and a replaced object's rows.
        let mut garbage = Vec::new();
        if let Some(base) = &self.base {
            for (i, g) in base.map.iter().enumerate() {
                let still = base.object == self.p.object && self.p.map.get(i) == Some(g);
                if !still {
                    garbage.push((base.object.clone(), i as u64, *g));
                }
            }
        }
        for s in &self.written {
            if self.p.map.get(*s as usize) != Some(&self.gen) {
                garbage.push((self.p.object.clone(), *s, self.gen));
            }
        }
        self.backend.collect(garbage).await;
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        let rows: Vec<_> = self
            .written
            .iter()
            .map(|s| (self.p.object.clone(), *s, self.gen))
            .collect();
        self.done = true;
        self.backend.collect(rows).await;
        Ok(())
    }
}

#[async_trait]
impl Backend for DbcBackend {
    fn kind(&self) -> &'static str {
        "dbc"
    }

    async fn open(&self, name: &str) -> Result<Option<Box<dyn BlobRead>>> {
        Ok(self.pointer(name).await?.map(|p| {
            Box::new(DbcRead {
                backend: self.clone(),
                name: name.to_owned(),
                p,
            }) as Box<dyn BlobRead>
        }))
    }

    async fn create(&self, name: &str, header: &[u8], _token: Token) -> Result<Box<dyn BlobTxn>> {
        let base = self.pointer(name).await?;
        let object: [u8; 16] = random_array()?;
        let now = now_micros();
        Ok(Box::new(DbcTxn {
            backend: self.clone(),
            name: name.to_owned(),
            p: Pointer {
                object: hex::encode(object),
                header: header.to_vec(),
                map: Vec::new(),
                created: now,
                modified: now,
            },
            base,
            gen: random_generation()?,
            written: Vec::new(),
            done: false,
        }))
    }

    async fn edit(&self, name: &str, _token: Token) -> Result<Box<dyn BlobTxn>> {
        let base = self
            .pointer(name)
            .await?
            .ok_or_else(|| VfsError::NotFound {
                path: name.to_owned(),
            })?;
        Ok(Box::new(DbcTxn {
            backend: self.clone(),
            name: name.to_owned(),
            p: base.clone(),
            base: Some(base),
            gen: random_generation()?,
            written: Vec::new(),
            done: false,
        }))
    }

    async fn remove(&self, name: &str, token: Token) -> Result<bool> {
        let Some(p) = self.pointer(name).await? else {
            return Ok(false);
        };
        let removed = self
            .files
            .delete_fenced(&self.key(name), token)
            .await
            .map_err(|e| db_err(name, e))?;
        self.collect(DbcBackend::rows_of(&p)).await;
        Ok(removed)
    }

    async fn rename(&self, from: &str, to: &str, from_token: Token, to_token: Token) -> Result<()> {
        let p = self
            .pointer(from)
            .await?
            .ok_or_else(|| VfsError::NotFound {
                path: from.to_owned(),
            })?;
        let replaced = self.pointer(to).await?;
        // Destination first: a crash in between leaves both names on the same object,
        // never none.
        self.files
            .put_fenced(&self.pointer_record(to, &p), to_token)
            .await
            .map_err(|e| db_err(to, e))?;
        self.files
            .delete_fenced(&self.key(from), from_token)
            .await
            .map_err(|e| db_err(from, e))?;
        if let Some(old) = replaced.filter(|o| o.object != p.object) {
            self.collect(DbcBackend::rows_of(&old)).await;
        }
        Ok(())
    }

    async fn list(&self, dir: &str) -> Result<Vec<BlobEntry>> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut files = std::collections::BTreeSet::new();
        let mut dirs = std::collections::BTreeSet::new();
        let mut cursor = None;
        loop {
            let page = self
                .files
                .scan(cursor.as_ref(), SCAN_PAGE)
                .await
                .map_err(|e| db_err("list", e))?;
            for rec in &page.records {
                let (Some(Value::Text(vol)), Some(Value::Text(name))) = (rec.first(), rec.get(1))
                else {
                    continue;
                };
                if vol != &self.volume {
                    continue;
                }
                if let Some(rest) = name.strip_prefix(&prefix) {
                    match rest.split_once('/') {
                        Some((d, _)) => {
                            dirs.insert(d.to_owned());
                        }
                        None => {
                            files.insert(rest.to_owned());
                        }
                    }
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let mut out: Vec<BlobEntry> = dirs
            .into_iter()
            .map(|name| BlobEntry { name, is_dir: true })
            .chain(files.into_iter().map(|name| BlobEntry {
                name,
                is_dir: false,
            }))
            .collect();
        out.sort();
        Ok(out)
    }
}
