//! Typed errors of the store. Every variant names the file or position
//! involved and says what the caller can do about it.

use std::io;
use std::path::PathBuf;

use crate::SegmentPosition;

/// Linux/macOS `ENOSPC`. Matched by number because `ErrorKind::StorageFull`
/// is newer than the workspace's minimum Rust version.
const ENOSPC: i32 = 28;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An operating-system call failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What the store was doing, e.g. "write segment".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The disk is full. Nothing already written was damaged; records
    /// appended since the last successful [`sync`](crate::QueueStore::sync)
    /// may have been discarded (check with
    /// [`contains`](crate::QueueStore::contains)). Free space and retry.
    #[error("disk full while trying to {action} {}; free disk space and retry", path.display())]
    DiskFull {
        /// What the store was doing.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A payload is larger than [`MAX_PAYLOAD_LEN`](crate::MAX_PAYLOAD_LEN).
    #[error("message of {len} bytes is larger than the store's limit of {max} bytes")]
    RecordTooLarge {
        /// Size of the rejected payload.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// No live record at this position: it was never appended, is already
    /// acked, or was discarded after a write error.
    #[error("no live record at {0}")]
    NotFound(SegmentPosition),
    /// The record's bytes on disk fail their checksum; the payload is never
    /// returned. The caller should ack (drop) the record.
    #[error("record at {pos} in {} is corrupt ({reason})", path.display())]
    Corrupt {
        /// Position of the damaged record.
        pos: SegmentPosition,
        /// Its segment file.
        path: PathBuf,
        /// What failed to check out.
        reason: &'static str,
    },
    /// A member's record segments do not hold what its snapshot refers to
    /// ([`crate::records`]): damaged, truncated or missing.
    #[error("record segments in {} are damaged at offset {offset}: {reason}", path.display())]
    Records {
        /// The segment file (or the one expected).
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What failed to check out.
        reason: String,
    },
    /// A segment file was written by a newer, incompatible format version.
    /// The store refuses to touch it rather than "repair" data it does not
    /// understand.
    #[error("{} has format version {version}, this build only reads version 1; use a newer antre", path.display())]
    UnsupportedVersion {
        /// The segment file.
        path: PathBuf,
        /// The version found in its header.
        version: u32,
    },
    /// An fsync failed earlier. After a failed fsync the kernel may have
    /// dropped dirty pages, so the store can no longer say what is durable;
    /// every mutating call fails until the queue is reopened, which recovers
    /// exactly what is on disk.
    #[error("store in {} stopped after an fsync failure ({cause}); reopen the queue to recover", dir.display())]
    Poisoned {
        /// The queue directory.
        dir: PathBuf,
        /// The original failure.
        cause: String,
    },
    /// [`StoreOptions`](crate::StoreOptions) has a value out of range.
    #[error("invalid store options: {0}")]
    InvalidOptions(&'static str),
    /// All 2^32 segment numbers have been used in this directory.
    #[error("segment numbers exhausted in {}; move the queue's messages to a new queue", dir.display())]
    SegmentNumbersExhausted {
        /// The queue directory.
        dir: PathBuf,
    },
}

impl StoreError {
    /// Wraps an I/O error, recognising a full disk.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(ENOSPC) {
            StoreError::DiskFull {
                action,
                path,
                source,
            }
        } else {
            StoreError::Io {
                action,
                path,
                source,
            }
        }
    }
}
