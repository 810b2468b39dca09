//! The lone server's epoch: a counter in the data directory, bumped and synced to disk at every
//! start, that forms the high bits of every fencing token. A restarted server therefore grants
//! tokens above all those of its previous lives, without remembering any port.

use super::ServerError;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Token bits below the epoch: about 1.1 trillion grants per epoch.
pub(crate) const COUNTER_BITS: u32 = 40;
/// Largest epoch that keeps tokens non-negative i64.
pub(crate) const MAX_EPOCH: u64 = (1 << (63 - COUNTER_BITS)) - 1;

const FILE: &str = "ownership-epoch";

/// Reads the last epoch (0 when the directory is new), stores the next one durably, returns it.
pub(crate) fn bump(dir: &Path) -> Result<u64, ServerError> {
    let err = |what: &str, e: std::io::Error| ServerError::Epoch {
        path: dir.join(FILE),
        reason: format!("{what}: {e}"),
    };
    std::fs::create_dir_all(dir).map_err(|e| err("create data directory", e))?;
    let path = dir.join(FILE);
    let last = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|_| ServerError::Epoch {
            path: path.clone(),
            reason: format!("not a number: {:?}", s.chars().take(40).collect::<String>()),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(err("read", e)),
    };
    let next = last + 1;
    if next > MAX_EPOCH {
        return Err(ServerError::Epoch {
            path,
            reason: format!("epoch space exhausted at {last}"),
        });
    }
    write_synced(&path, next).map_err(|e| err("write", e))?;
    Ok(next)
}

/// Write to a temporary file, sync, rename over the old one, sync the directory: a crash
/// leaves either the old or the new epoch, never a torn file.
fn write_synced(path: &Path, epoch: u64) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{epoch}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

const LEASE_FILE: &str = "ownership-max-lease-ms";

/// The longest lease any earlier life of this server granted, in milliseconds (0 if none).
/// A restarted server holds back new grants that long, so that no client of the previous life
/// still believes in a port that the new life hands to someone else.
pub(crate) fn max_lease_ms(dir: &Path) -> Result<u64, ServerError> {
    let path = dir.join(LEASE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|_| ServerError::Epoch {
            path,
            reason: "lease record is not a number".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(ServerError::Epoch {
            path,
            reason: format!("read: {e}"),
        }),
    }
}

/// Records a longer lease durably before the server grants it.
pub(crate) fn record_max_lease_ms(dir: &Path, ms: u64) -> std::io::Result<()> {
    write_synced(&dir.join(LEASE_FILE), ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn epochs_grow_and_bad_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(super::bump(d.path()).unwrap(), 1);
        assert_eq!(super::bump(d.path()).unwrap(), 2);
        std::fs::write(d.path().join(super::FILE), "garbage").unwrap();
        assert!(super::bump(d.path()).is_err());
    }
}
