//! The definitions file (vhosts, users, exchanges, queues, bindings,
//! policies): small, rewritten as a whole, and never seen half-written.
//!
//! [`write_atomic`] writes a temporary file next to the target, fsyncs it,
//! renames it over the target and fsyncs the directory. Rename is atomic, so
//! after a crash a reader finds either the old content or the new, never a
//! mix; the directory fsync makes the new name itself durable. The content's
//! format is the caller's business.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{sync_dir, StoreError};

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(OsString::from)
        .unwrap_or_else(|| OsString::from("definitions"));
    name.push(".tmp");
    path.with_file_name(name)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces the content of `path` with `bytes`, atomically and durably.
///
/// When this returns `Ok`, a crash at any later point leaves `bytes` in
/// place. A crash before it returns leaves the old content (or no file, if
/// there was none). A stale `<name>.tmp` from an interrupted earlier write is
/// simply overwritten.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = temp_path(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| StoreError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| StoreError::io("write", &tmp, e))?;
    // Data must be on disk before the rename makes it visible under the real
    // name, or a crash could leave the real name pointing at an empty file.
    f.sync_all().map_err(|e| StoreError::io("fsync", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| StoreError::io("rename into place", path, e))?;
    sync_dir(parent_dir(path))
}

/// Reads the file written by [`write_atomic`]; `Ok(None)` if it does not
/// exist yet (first start).
pub fn read(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_overwrite() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::io("tempdir", "/tmp", e))?;
        let p = dir.path().join("definitions.json");
        assert_eq!(read(&p)?, None);
        write_atomic(&p, b"{\"v\":1}")?;
        assert_eq!(read(&p)?.as_deref(), Some(&b"{\"v\":1}"[..]));
        // A leftover temp file from a crash does not matter.
        fs::write(temp_path(&p), b"junk").map_err(|e| StoreError::io("w", &p, e))?;
        write_atomic(&p, b"two")?;
        assert_eq!(read(&p)?.as_deref(), Some(&b"two"[..]));
        assert!(!temp_path(&p).exists());
        Ok(())
    }
}
