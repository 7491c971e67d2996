//! The version of a data directory's layout, in its `format` file.
//!
//! Segment headers and message records carry their own version, but the rest
//! of a data directory does not: `definitions.json`, `users.json`, the logs
//! of deduplicating and delayed exchanges, directory naming. One number for
//! the whole directory makes a change to any of them deliberate: it bumps
//! [`CURRENT`], ships a migration from the previous version, and leaves the
//! golden fixture of every older version loading (`tests/fixtures/`).
//!
//! The file is checked before anything else in the directory is read or
//! written, so an older antre never "repairs" data it does not understand.

use std::path::Path;

use crate::error::BrokerError;

/// The data format this build writes.
///
/// - 1: `definitions.json` rewritten whole on every change; users in
///   `users.json` with a per-user loopback flag.
/// - 2: `definitions.json` is a snapshot, and changes since it are logged
///   in the vhost's `definitions-log/` store. A version-1 directory is a
///   version-2 one with an empty log, so the migration only records the
///   new number; a version-1 antre must not open a version-2 directory,
///   since it would not see the logged changes.
/// - 3: `access.json` (users with tags, permissions, topic permissions)
///   replaces `users.json`; loopback-only is the `loopback_users` setting.
///   [`crate::access::AccessControl::open`] migrates a version 1 or 2
///   directory (its users keep what they could do: everything), and does
///   so whenever it finds `users.json` without `access.json`, so a
///   migration cut short by a crash finishes at the next start; a version-2
///   antre must not open a version-3 directory, since it would seed a new
///   `guest` and ignore every permission.
/// - 4: a vhost's definitions hold its policies and operator policies
///   (`policies` and `operator_policies` in `definitions.json`, and
///   `put_policy`, `delete_policy`, `put_operator_policy`,
///   `delete_operator_policy` changes in its log). A version-3 directory
///   is a version-4 one without policies, so the migration only records the
///   new number; a version-3 antre must not open a version-4 directory,
///   since it would drop the policies without a word.
pub const CURRENT: u32 = 4;

/// The file, in the data directory, that names its format version.
pub const FILE: &str = "format";

const PREFIX: &str = "antre data format ";

/// Checks the format version of `data_dir` and records the current one.
///
/// A directory whose version is newer than [`CURRENT`] is refused. One
/// without a `format` file is either new or was written before the file
/// existed, which makes it version 1. Returns the version found.
pub fn check(data_dir: &Path) -> Result<u32, BrokerError> {
    let path = data_dir.join(FILE);
    let recorded = antre_store::definitions::read(&path)
        .map_err(|e| BrokerError::Internal(format!("reading {}: {e}", path.display())))?;
    let found = match &recorded {
        Some(raw) => parse(raw).ok_or_else(|| {
            BrokerError::Internal(format!(
                "unreadable {}: expected one line '{PREFIX}N'",
                path.display()
            ))
        })?,
        None if holds_data(data_dir) => 1,
        None => CURRENT,
    };
    if found > CURRENT {
        return Err(BrokerError::Internal(format!(
            "data directory {} has data format {found}, but this antre reads data format {CURRENT} \
             and older: it was written by a newer antre, so run that version (or newer)",
            data_dir.display()
        )));
    }
    // Older versions are migrated here, one version at a time. From 1 to 2
    // and from 3 to 4 nothing on disk changes; from 2 to 3 the broker
    // migrates `users.json` as it opens it, idempotently, so the version can
    // be recorded first (see CURRENT).
    if recorded.is_none() || found < CURRENT {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| BrokerError::Internal(format!("creating {}: {e}", data_dir.display())))?;
        antre_store::definitions::write_atomic(&path, format!("{PREFIX}{CURRENT}\n").as_bytes())
            .map_err(|e| BrokerError::Internal(format!("writing {}: {e}", path.display())))?;
    }
    Ok(found)
}

fn parse(raw: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(raw).ok()?;
    let version: u32 = text.trim_end().strip_prefix(PREFIX)?.parse().ok()?;
    (version >= 1).then_some(version)
}

/// Whether the directory holds what a broker writes (so it is not new).
fn holds_data(data_dir: &Path) -> bool {
    data_dir.join("vhosts").exists()
        || data_dir.join(crate::access::V1_USERS_FILE).exists()
        || data_dir.join(crate::access::ACCESS_FILE).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(FILE)).unwrap()
    }

    #[test]
    fn a_new_directory_gets_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert_eq!(check(&data).unwrap(), CURRENT);
        assert_eq!(recorded(&data), format!("antre data format {CURRENT}\n"));
        assert_eq!(check(&data).unwrap(), CURRENT, "and reads it back");
    }

    #[test]
    fn a_directory_from_before_the_format_file_is_version_1_and_migrated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("vhosts")).unwrap();
        assert_eq!(check(dir.path()).unwrap(), 1);
        assert_eq!(
            recorded(dir.path()),
            format!("antre data format {CURRENT}\n")
        );
    }

    #[test]
    fn a_version_1_directory_is_migrated_to_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "antre data format 1\n").unwrap();
        assert_eq!(check(dir.path()).unwrap(), 1);
        assert_eq!(
            recorded(dir.path()),
            format!("antre data format {CURRENT}\n")
        );
    }

    #[test]
    fn a_newer_version_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let newer = format!("antre data format {}\n", CURRENT + 1);
        std::fs::write(dir.path().join(FILE), &newer).unwrap();
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("has data format {}", CURRENT + 1))
                && err.contains(&format!("reads data format {CURRENT}")),
            "{err}"
        );
        assert_eq!(recorded(dir.path()), newer, "left alone");
    }

    #[test]
    fn an_unreadable_format_file_is_refused() {
        for junk in [
            "",
            "antre data format",
            "antre data format 0",
            "format 1",
            "\u{0}",
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(FILE), junk).unwrap();
            let err = check(dir.path()).unwrap_err().to_string();
            assert!(err.contains("unreadable"), "{junk:?}: {err}");
        }
    }
}
