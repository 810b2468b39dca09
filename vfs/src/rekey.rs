//! Re-keying a whole volume (`keyward migrate vfs rekey`): every file's data key is re-sealed
//! under the keyring's current master key, or with `reencrypt` every file's content is
//! rewritten under a fresh data key. Resumable: files are visited in sorted path order and a
//! checkpoint file records the last one finished, so a run that was interrupted picks up after
//! it. Both operations are idempotent, so a file finished after the last checkpoint write is
//! merely done again.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Result, VfsError};
use crate::volume::Vfs;

/// How a volume rekey runs.
#[derive(Clone, Debug)]
pub struct RekeyOptions {
    /// Rewrite every file's content under a new data key (not only re-seal the data key).
    pub reencrypt: bool,
    /// Where the progress of the run is kept.
    pub checkpoint: PathBuf,
    /// Ignore an existing checkpoint and start from the first file.
    pub restart: bool,
    /// Test hook: stop as if interrupted after this many files in this run.
    pub stop_after: Option<u64>,
    /// Bytes read and written at a time when re-encrypting.
    pub chunk: usize,
}

impl RekeyOptions {
    pub fn new(checkpoint: PathBuf) -> Self {
        RekeyOptions {
            reencrypt: false,
            checkpoint,
            restart: false,
            stop_after: None,
            chunk: 1 << 20,
        }
    }
}

/// The checkpoint file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RekeyCheckpoint {
    pub volume: String,
    /// The master key files are being moved to (hex key id).
    pub key_id: String,
    pub reencrypt: bool,
    /// The last path finished, in sorted order.
    pub last_done: Option<String>,
    pub files_done: u64,
    pub rewrapped: u64,
    pub reencrypted: u64,
    pub unchanged: u64,
    pub vanished: u64,
}

/// What a run did (counts include the files an interrupted earlier run finished).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RekeyReport {
    pub volume: String,
    pub key_id: String,
    pub reencrypt: bool,
    /// Files in the volume when the run listed it.
    pub files: u64,
    /// Files finished before this run started (by an interrupted earlier run).
    pub resumed_from: u64,
    pub files_done: u64,
    /// Data keys re-sealed under the current master key.
    pub rewrapped: u64,
    /// Files rewritten under a new data key.
    pub reencrypted: u64,
    /// Files already sealed with the current key (re-seal only).
    pub unchanged: u64,
    /// Files deleted by someone else while the run went on.
    pub vanished: u64,
    /// False when the run stopped early (`stop_after`, or a stop request): run again to resume.
    pub complete: bool,
}

/// Progress told to the caller after each file.
#[derive(Clone, Copy, Debug)]
pub struct RekeyProgress<'a> {
    pub path: &'a str,
    pub files_done: u64,
    pub files: u64,
}

/// The default checkpoint location: next to the key file, named after the volume.
pub fn default_checkpoint(key_file: &Path, volume: &str) -> PathBuf {
    let dir = key_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    dir.join(format!(".rekey-{volume}.json"))
}

const CHECKPOINT_MAGIC: &str = "keyward-vfs-rekey v1";

impl RekeyCheckpoint {
    /// One `name value` line per field; the path in hex, so that any path fits on a line.
    fn encode(&self) -> String {
        let last = self
            .last_done
            .as_ref()
            .map(hex::encode)
            .unwrap_or_else(|| "-".into());
        format!(
            "{CHECKPOINT_MAGIC}\nvolume {}\nkey_id {}\nreencrypt {}\nlast_done {last}\nfiles_done {}\nrewrapped {}\nreencrypted {}\nunchanged {}\nvanished {}\n",
            self.volume,
            self.key_id,
            self.reencrypt,
            self.files_done,
            self.rewrapped,
            self.reencrypted,
            self.unchanged,
            self.vanished
        )
    }

    fn decode(text: &str) -> std::result::Result<RekeyCheckpoint, String> {
        let mut lines = text.lines();
        if lines.next() != Some(CHECKPOINT_MAGIC) {
            return Err("not a rekey checkpoint".into());
        }
        let mut cp = RekeyCheckpoint::default();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let (k, v) = line
                .split_once(' ')
                .ok_or_else(|| format!("bad line {line:?}"))?;
            let num = || v.parse::<u64>().map_err(|e| format!("{k}: {e}"));
            match k {
                "volume" => cp.volume = v.to_owned(),
                "key_id" => cp.key_id = v.to_owned(),
                "reencrypt" => cp.reencrypt = v == "true",
                "last_done" if v == "-" => cp.last_done = None,
                "last_done" => {
                    let b = hex::decode(v).map_err(|e| format!("last_done: {e}"))?;
                    cp.last_done =
                        Some(String::from_utf8(b).map_err(|e| format!("last_done: {e}"))?);
                }
                "files_done" => cp.files_done = num()?,
                "rewrapped" => cp.rewrapped = num()?,
                "reencrypted" => cp.reencrypted = num()?,
                "unchanged" => cp.unchanged = num()?,
                "vanished" => cp.vanished = num()?,
                _ => return Err(format!("unknown field {k}")),
            }
        }
        Ok(cp)
    }
}

fn read_checkpoint(path: &Path) -> Result<Option<RekeyCheckpoint>> {
    match std::fs::read_to_string(path) {
        Ok(t) => RekeyCheckpoint::decode(&t).map(Some).map_err(|e| {
            VfsError::Config(format!(
                "rekey checkpoint {} is unreadable ({e}); rerun with --restart",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VfsError::io(path.display().to_string(), e)),
    }
}

/// Replaces the checkpoint atomically (write then rename), so a crash leaves the old or the
/// new one, never half of either.
fn write_checkpoint(path: &Path, cp: &RekeyCheckpoint) -> Result<()> {
    let p = path.display().to_string();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| VfsError::io(p.clone(), e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, cp.encode()).map_err(|e| VfsError::io(p.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| VfsError::io(p, e))
}

/// Where a resumed run stands; refuses a checkpoint written for another key, volume or mode.
pub fn load_checkpoint(vfs: &Vfs, opts: &RekeyOptions) -> Result<Option<RekeyCheckpoint>> {
    if opts.restart {
        return Ok(None);
    }
    let Some(cp) = read_checkpoint(&opts.checkpoint)? else {
        return Ok(None);
    };
    let key = vfs.keyring().current_id().to_string();
    if cp.volume != vfs.volume() || cp.key_id != key || cp.reencrypt != opts.reencrypt {
        return Err(VfsError::Config(format!(
            "rekey checkpoint {} belongs to another run (volume {}, key {}, reencrypt {}; now volume {}, key {key}, reencrypt {}); finish that run or rerun with --restart",
            opts.checkpoint.display(),
            cp.volume,
            cp.key_id,
            cp.reencrypt,
            vfs.volume(),
            opts.reencrypt
        )));
    }
    Ok(Some(cp))
}

/// Rewrites a file's content under a fresh data key sealed with the current master key. The
/// new version replaces the old one at commit, all at once; the file is owned throughout.
pub async fn reencrypt_file(vfs: &Vfs, path: &str, chunk: usize) -> Result<()> {
    // Claim first (create owns the file), then read the committed content: nobody can commit
    // a change in between.
    let mut out = vfs.create(path).await?;
    let mut src = vfs.open(path).await?;
    let mut buf = vec![0u8; chunk.max(4096)];
    let mut off = 0u64;
    loop {
        let n = src.read_at(off, &mut buf).await?;
        if n == 0 {
            break;
        }
        out.write_at(off, &buf[..n]).await?;
        off += n as u64;
    }
    if off != src.len() {
        return Err(VfsError::Truncated {
            path: path.to_owned(),
            what: format!("read {off} of {} bytes while re-encrypting", src.len()),
        });
    }
    out.close().await
}

/// Re-keys every file of the volume, resuming from the checkpoint. `stop` is polled between
/// files (a stop request ends the run with `complete: false` and the checkpoint kept).
pub async fn rekey_volume(
    vfs: &Vfs,
    opts: &RekeyOptions,
    stop: &(dyn Fn() -> bool + Send + Sync),
    progress: &mut (dyn FnMut(RekeyProgress<'_>) + Send),
) -> Result<RekeyReport> {
    let key_id = vfs.keyring().current_id().to_string();
    let mut cp = load_checkpoint(vfs, opts)?.unwrap_or_else(|| RekeyCheckpoint {
        volume: vfs.volume().to_owned(),
        key_id: key_id.clone(),
        reencrypt: opts.reencrypt,
        ..RekeyCheckpoint::default()
    });
    let files = vfs.walk().await?;
    let mut report = RekeyReport {
        volume: vfs.volume().to_owned(),
        key_id,
        reencrypt: opts.reencrypt,
        files: files.len() as u64,
        resumed_from: cp.files_done,
        ..RekeyReport::default()
    };
    let todo: Vec<&String> = files
        .iter()
        .filter(|p| {
            cp.last_done
                .as_ref()
                .is_none_or(|d| p.as_str() > d.as_str())
        })
        .collect();
    let total = cp.files_done + todo.len() as u64;
    let mut stopped = false;
    for (this_run, path) in (0u64..).zip(todo) {
        if stop() || opts.stop_after.is_some_and(|n| this_run >= n) {
            stopped = true;
            break;
        }
        let r = if opts.reencrypt {
            reencrypt_file(vfs, path, opts.chunk).await.map(|_| true)
        } else {
            vfs.rekey(path).await
        };
        match r {
            Ok(true) if opts.reencrypt => cp.reencrypted += 1,
            Ok(true) => cp.rewrapped += 1,
            Ok(false) => cp.unchanged += 1,
            Err(VfsError::NotFound { .. }) => cp.vanished += 1,
            Err(e) => {
                tracing::warn!(path = %path, error = %e, "rekey stopped at a file; the checkpoint is kept");
                return Err(e);
            }
        }
        cp.files_done += 1;
        cp.last_done = Some(path.clone());
        write_checkpoint(&opts.checkpoint, &cp)?;
        progress(RekeyProgress {
            path,
            files_done: cp.files_done,
            files: total,
        });
    }
    report.files_done = cp.files_done;
    report.rewrapped = cp.rewrapped;
    report.reencrypted = cp.reencrypted;
    report.unchanged = cp.unchanged;
    report.vanished = cp.vanished;
    report.complete = !stopped;
    if report.complete {
        // Finished: a later run starts over (and finds re-sealed files unchanged).
        match std::fs::remove_file(&opts.checkpoint) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(VfsError::io(opts.checkpoint.display().to_string(), e)),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips() {
        let cp = RekeyCheckpoint {
            volume: "v1".into(),
            key_id: "00112233aabbccdd".into(),
            reencrypt: true,
            last_done: Some("dir/a file\nwith newline".into()),
            files_done: 7,
            rewrapped: 1,
            reencrypted: 5,
            unchanged: 0,
            vanished: 1,
        };
        assert_eq!(RekeyCheckpoint::decode(&cp.encode()), Ok(cp));
        assert!(RekeyCheckpoint::decode("garbage").is_err());
    }
}
