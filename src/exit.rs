//! The one table of exit codes shared by every `keyward` command (and `keyward-migrate`).

/// Success.
pub const OK: u8 = 0;
/// A failure that fits no class below.
pub const FAILURE: u8 = 1;
/// Bad command line (unknown flag, missing argument).
pub const USAGE: u8 = 2;
/// Bad configuration: unreadable file, unknown key, bad value.
pub const CONFIG: u8 = 3;
/// A server (database, ownership group, peer) could not be reached or timed out.
pub const UNAVAILABLE: u8 = 4;
/// What was asked for does not exist (file, table, index, migration).
pub const NOT_FOUND: u8 = 5;
/// Another node owns the key, a lock is held, or the state is dirty and needs repair.
pub const CONFLICT: u8 = 6;
/// Data failed verification: tampered or truncated file, wrong key, checksum mismatch.
pub const INTEGRITY: u8 = 7;
/// Authentication or permission refused.
pub const PERMISSION: u8 = 8;
/// Stopped by Ctrl-C or SIGTERM before the work finished.
pub const INTERRUPTED: u8 = 130;

/// The table as `--help` and the README show it.
pub const TABLE: &str = "\
Exit codes:
  0    success
  1    failure of another kind
  2    bad command line
  3    bad configuration (file, key or value)
  4    a server could not be reached or timed out
  5    not found
  6    conflict: owned elsewhere, lock held, or dirty state
  7    integrity: tampered data, wrong key, checksum mismatch
  8    authentication or permission refused
  130  interrupted (Ctrl-C / SIGTERM) before the work finished";

#[cfg(test)]
mod tests {
    #[test]
    fn table_lists_every_code() {
        for code in [
            super::OK,
            super::FAILURE,
            super::USAGE,
            super::CONFIG,
            super::UNAVAILABLE,
            super::NOT_FOUND,
            super::CONFLICT,
            super::INTEGRITY,
            super::PERMISSION,
            super::INTERRUPTED,
        ] {
            assert!(
                super::TABLE
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "exit code {code} missing from the table"
            );
        }
    }
}
