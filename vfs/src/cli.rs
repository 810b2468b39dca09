//! `keyward vfs …`: the commands the root binary mounts, on the volume its config names.

use std::path::PathBuf;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use keyward_ownership::Coordinator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::VfsConfig;
use crate::error::{Result, VfsError};
use crate::keys::{KdfParams, Keyring};
use crate::volume::Vfs;

/// Copies bigger than this show a progress bar (on a terminal).
const PROGRESS_MIN: u64 = 16 << 20;
const CHUNK: usize = 1 << 20;

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum VfsCommand {
    /// Copy a local file (or `-` for stdin) into the volume, streaming.
    Put {
        /// Local source file, or `-` for stdin.
        src: PathBuf,
        /// Destination path in the volume.
        dest: String,
    },
    /// Copy a file out of the volume to a local file (or `-` for stdout), streaming.
    Get {
        /// Path in the volume.
        src: String,
        /// Local destination, or `-` for stdout.
        dest: PathBuf,
    },
    /// List a directory of the volume.
    Ls {
        /// Directory in the volume (the root when omitted).
        #[arg(default_value = "")]
        dir: String,
        /// Show size and modification time.
        #[arg(short, long)]
        long: bool,
    },
    /// Show a file's size, times, cipher and key id.
    Stat { path: String },
    /// Delete a file.
    Rm { path: String },
    /// Rename a file.
    Mv { from: String, to: String },
    /// Manage the volume's keyring.
    Key {
        #[command(subcommand)]
        cmd: KeyCommand,
    },
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum KeyCommand {
    /// Create a new keyring at the configured key file (refuses to overwrite one).
    Init,
    /// Print the keyring (every master key) for backup, or write it to a file (mode 0600).
    /// Anyone holding the export can read the volume; losing every copy loses the data.
    Export {
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// List the keyring's key ids and which one is current.
    List,
    /// Add a new master key and make it current (existing files keep their key until rekeyed).
    Rotate,
    /// Re-seal files' data keys under the current master key (all files when no path).
    Rekey { path: Option<String> },
}

/// Runs one `keyward vfs` command. Output goes to stdout; progress to stderr.
pub async fn run(cmd: VfsCommand, cfg: &VfsConfig, coord: Coordinator) -> Result<(), VfsError> {
    match cmd {
        VfsCommand::Key { cmd } => return run_key(cmd, cfg, coord).await,
        other => {
            let vfs = Vfs::from_config(cfg, coord).await?;
            run_file(other, &vfs).await
        }
    }
}

fn progress(len: u64) -> ProgressBar {
    if len < PROGRESS_MIN {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} {eta}",
    ) {
        pb.set_style(style);
    }
    pb
}

fn local_err(p: &std::path::Path, e: std::io::Error) -> VfsError {
    VfsError::io(p.display().to_string(), e)
}

async fn run_file(cmd: VfsCommand, vfs: &Vfs) -> Result<()> {
    let mut stdout = tokio::io::stdout();
    let out = |s: String| async move {
        let mut o = tokio::io::stdout();
        o.write_all(s.as_bytes())
            .await
            .map_err(|e| VfsError::io("stdout", e))
    };
    match cmd {
        VfsCommand::Put { src, dest } => {
            let mut f = vfs.create(&dest).await?;
            let mut input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if src.as_os_str() == "-"
            {
                Box::new(tokio::io::stdin())
            } else {
                Box::new(
                    tokio::fs::File::open(&src)
                        .await
                        .map_err(|e| local_err(&src, e))?,
                )
            };
            let total = if src.as_os_str() == "-" {
                0
            } else {
                tokio::fs::metadata(&src)
                    .await
                    .map(|m| m.len())
                    .unwrap_or(0)
            };
            let pb = progress(total);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = input.read(&mut buf).await.map_err(|e| local_err(&src, e))?;
                if n == 0 {
                    break;
                }
                f.append(&buf[..n]).await?;
                pb.inc(n as u64);
            }
            f.close().await?;
            pb.finish_and_clear();
        }
        VfsCommand::Get { src, dest } => {
            let mut r = vfs.open(&src).await?;
            let pb = progress(r.len());
            let mut buf = vec![0u8; CHUNK];
            let mut off = 0u64;
            if dest.as_os_str() == "-" {
                loop {
                    let n = r.read_at(off, &mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    stdout
                        .write_all(&buf[..n])
                        .await
                        .map_err(|e| VfsError::io("stdout", e))?;
                    off += n as u64;
                    pb.inc(n as u64);
                }
                stdout
                    .flush()
                    .await
                    .map_err(|e| VfsError::io("stdout", e))?;
            } else {
                // Write beside the destination and rename, so a failed copy (say, tampered
                // data found halfway) leaves no partial plaintext under the final name.
                let mut tmp = dest.as_os_str().to_owned();
                tmp.push(".kwpart");
                let tmp = PathBuf::from(tmp);
                let mut file = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(|e| local_err(&tmp, e))?;
                let r2: Result<()> = async {
                    loop {
                        let n = r.read_at(off, &mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        file.write_all(&buf[..n])
                            .await
                            .map_err(|e| local_err(&tmp, e))?;
                        off += n as u64;
                        pb.inc(n as u64);
                    }
                    file.sync_all().await.map_err(|e| local_err(&tmp, e))?;
                    tokio::fs::rename(&tmp, &dest)
                        .await
                        .map_err(|e| local_err(&dest, e))
                }
                .await;
                if r2.is_err() {
                    let _ = tokio::fs::remove_file(&tmp).await;
                }
                r2?;
            }
            pb.finish_and_clear();
        }
        VfsCommand::Ls { dir, long } => {
            for e in vfs.list(&dir).await? {
                let line = if e.is_dir {
                    format!("{}/\n", e.name)
                } else if long {
                    let m = vfs.stat(&e.path).await?;
                    format!(
                        "{:>14} {:>12} {}\n",
                        m.size,
                        m.modified
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_secs().to_string())
                            .unwrap_or_else(|| "-".into()),
                        e.name
                    )
                } else {
                    format!("{}\n", e.name)
                };
                out(line).await?;
            }
        }
        VfsCommand::Stat { path } => {
            let m = vfs.stat(&path).await?;
            let t = |t: Option<std::time::SystemTime>| {
                t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| format!("{}.{:06}", d.as_secs(), d.subsec_micros()))
                    .unwrap_or_else(|| "-".into())
            };
            out(format!(
                "path: {}\nsize: {}\ncipher: {}\nkey: {}\nsegment_size: {}\ncreated: {}\nmodified: {}\n",
                m.path,
                m.size,
                m.cipher,
                m.key_id,
                m.segment_size,
                t(m.created),
                t(m.modified)
            ))
            .await?;
        }
        VfsCommand::Rm { path } => vfs.delete(&path).await?,
        VfsCommand::Mv { from, to } => vfs.rename(&from, &to).await?,
        VfsCommand::Key { .. } => {}
    }
    Ok(())
}

async fn run_key(cmd: KeyCommand, cfg: &VfsConfig, coord: Coordinator) -> Result<()> {
    let path = cfg.key_file_path();
    let pass = cfg.passphrase()?;
    let seal = pass.as_ref().map(|p| (p.as_bytes(), KdfParams::default()));
    let say = |s: String| async move {
        tokio::io::stdout()
            .write_all(s.as_bytes())
            .await
            .map_err(|e| VfsError::io("stdout", e))
    };
    match cmd {
        KeyCommand::Init => {
            if path.exists() {
                return Err(VfsError::AlreadyExists {
                    path: path.display().to_string(),
                });
            }
            let k = Keyring::generate()?;
            k.save(&path, seal)?;
            say(format!(
                "created keyring {} with key {}\nBack it up (`keyward vfs key export`): losing it loses the data.\n",
                path.display(),
                k.current_id()
            ))
            .await?;
        }
        KeyCommand::Export { out } => {
            let k = Keyring::load(&path, pass.as_ref().map(|p| p.as_bytes()))?;
            match out {
                Some(o) => k.save(&o, None)?,
                None => say(k.export().to_string()).await?,
            }
        }
        KeyCommand::List => {
            let k = Keyring::load(&path, pass.as_ref().map(|p| p.as_bytes()))?;
            for id in k.ids() {
                let cur = if id == k.current_id() {
                    " (current)"
                } else {
                    ""
                };
                say(format!("{id}{cur}\n")).await?;
            }
        }
        KeyCommand::Rotate => {
            let mut k = Keyring::load(&path, pass.as_ref().map(|p| p.as_bytes()))?;
            let id = k.rotate()?;
            k.save(&path, seal)?;
            say(format!("new current key {id}\n")).await?;
        }
        KeyCommand::Rekey { path: file } => {
            let vfs = Vfs::from_config(cfg, coord).await?;
            let files = match file {
                Some(f) => vec![f],
                None => vfs.walk().await?,
            };
            let mut changed = 0usize;
            for f in &files {
                if vfs.rekey(f).await? {
                    changed += 1;
                }
            }
            say(format!("rekeyed {changed} of {} files\n", files.len())).await?;
        }
    }
    Ok(())
}
