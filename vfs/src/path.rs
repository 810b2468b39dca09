//! Volume paths: normalised, relative to the volume root, never escaping it.

use crate::error::{Result, VfsError};

/// Longest accepted path in bytes (the ownership key `vfs/<volume>/<path>` must fit in 1 KiB,
/// and DBC key fields hold at most 512 bytes).
pub const MAX_PATH_LEN: usize = 512;

/// Prefix of names the VFS keeps for itself (temporary files); refused in user paths.
pub const RESERVED_PREFIX: &str = ".kw";

/// Normalises a volume path: `/` separated, a leading `/` means the volume root, `.` and empty
/// components are dropped, `..` goes up one level and is refused above the root. The result
/// has no leading or trailing slash; the root itself is `""`.
pub fn normalize(path: &str) -> Result<String> {
    let invalid = |reason: &str| VfsError::InvalidPath {
        path: path.chars().take(200).collect(),
        reason: reason.to_owned(),
    };
    if path.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if path.contains('\\') {
        return Err(invalid("contains a backslash"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(VfsError::PathEscape {
                        path: path.chars().take(200).collect(),
                    });
                }
            }
            c if c.starts_with(RESERVED_PREFIX) => {
                return Err(invalid("names starting with .kw are reserved"))
            }
            c if c.chars().any(char::is_control) => {
                return Err(invalid("contains a control character"))
            }
            c => parts.push(c),
        }
    }
    let out = parts.join("/");
    if out.len() > MAX_PATH_LEN {
        return Err(invalid("too long"));
    }
    Ok(out)
}

/// Normalises a path that must name a file (not the root).
pub fn file_path(path: &str) -> Result<String> {
    let p = normalize(path)?;
    if p.is_empty() {
        return Err(VfsError::InvalidPath {
            path: path.to_owned(),
            reason: "names the volume root, not a file".into(),
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_and_never_escape() {
        assert_eq!(normalize("/a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(normalize("a/../b").unwrap(), "b");
        assert_eq!(normalize("").unwrap(), "");
        assert!(matches!(
            normalize("../x"),
            Err(VfsError::PathEscape { .. })
        ));
        assert!(matches!(
            normalize("a/../../x"),
            Err(VfsError::PathEscape { .. })
        ));
        assert!(matches!(normalize("/.."), Err(VfsError::PathEscape { .. })));
        assert!(matches!(
            normalize("a\0b"),
            Err(VfsError::InvalidPath { .. })
        ));
        assert!(matches!(
            normalize("a/.kwtmp"),
            Err(VfsError::InvalidPath { .. })
        ));
        assert!(file_path("/").is_err());
    }
}
