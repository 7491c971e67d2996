//! antre's message store: checksummed append-only segment files with ack
//! logs, group-commit fsync and crash recovery.
//!
//! The store knows nothing about AMQP. A payload is opaque bytes; the broker
//! serialises whatever it needs (properties, routing key, body) into it.
//! Each durable queue owns one [`QueueStore`] and one directory; the
//! broker's definitions live in a separate file handled by [`definitions`].
//!
//! # Using it
//!
//! ```no_run
//! # fn main() -> Result<(), antre_store::StoreError> {
//! use antre_store::{QueueStore, StoreOptions};
//! let dir = std::path::Path::new("/var/lib/antre/queues/orders");
//! let mut backlog = Vec::new();
//! let (mut store, stats) = QueueStore::open(dir, StoreOptions::default(), |pos, _payload| {
//!     backlog.push(pos); // keep positions only; bodies stay on disk
//! })?;
//! let a = store.append(b"message 1")?;
//! let b = store.append(b"message 2")?;
//! store.sync()?; // one fsync covers both: now confirm them to publishers
//! let body = store.read(a)?; // read back from buffer or disk
//! store.ack(a)?; // consumer acked
//! store.close()?;
//! # let _ = (b, body, stats); Ok(()) }
//! ```
//!
//! # Durability contract
//!
//! * **Confirm** — when [`QueueStore::sync`] returns `Ok`, every record
//!   appended before the call is fsync'd (data and, for new segments, the
//!   directory entry) and survives `kill -9`, an OS crash or power loss until
//!   it is acked. Records appended after the last successful `sync` may be
//!   lost in a crash; they were never confirmed.
//! * **Acks** are buffered. After a clean [`QueueStore::close`] (or drop) no
//!   acked record comes back. After a crash, a bounded window of recently
//!   acked records may come back (at-least-once, never loss):
//!   - process crash (`kill -9`): the acks still buffered in memory, i.e.
//!     those made since the last `sync`, and never more than
//!     [`StoreOptions::max_pending_acks`];
//!   - OS crash / power loss: the acks since the last *ack checkpoint*. A
//!     checkpoint fsyncs the ack files; it runs whenever
//!     [`StoreOptions::ack_sync_every`] acks have been written since the
//!     last one, on [`QueueStore::sync_acks`], and on close. The window is
//!     thus at most `ack_sync_every + max_pending_acks` acks.
//! * An unacked, confirmed record is never lost and a corrupt payload is
//!   never returned.
//!
//! # On-disk format (version 1)
//!
//! A queue directory holds pairs of files, `NNNNNNNNNN` being the segment
//! number in ten decimal digits:
//!
//! ```text
//! msgs.NNNNNNNNNN   segment: append-only records
//! acks.NNNNNNNNNN   offsets of acked records in that segment (optional)
//! ```
//!
//! All integers are little-endian; CRCs are CRC32C (Castagnoli).
//!
//! ```text
//! segment = header record*
//! header  = "ANTRESEG" (8) | version u32 = 1 | segment number u32      16 bytes
//! record  = magic DE C0 7E A1 (4) | len u32 | crc32c(payload) u32
//!           | crc32c(first 12 header bytes) u32 | payload (len bytes)
//! acks    = entry*
//! entry   = record offset u32 | crc32c(segment u32 ++ offset u32) u32    8 bytes
//! ```
//!
//! A record is addressed by [`SegmentPosition`] (segment number, byte offset
//! of its header). A segment is closed once it reaches
//! [`StoreOptions::segment_size`]; a record larger than that gets a segment
//! of its own. A segment is deleted (segment file first, then its ack file)
//! when every record in it is acked and it is not the current write segment,
//! so disk use follows the backlog, not the history.
//!
//! The current segment may end in zeros written ahead of its records, so
//! that the fsyncs of later rounds write data only; a full or closed
//! segment is cut back to its last record, and recovery removes zeros after
//! the last record like any other tail.
//!
//! Segments that existed at open are never appended to again: writes go to a
//! fresh segment with a number higher than any file in the directory. So an
//! offset is never reused, and an ack entry can never apply to a record other
//! than the one it was written for, even if a crash cut the record away.
//!
//! # Recovery
//!
//! [`QueueStore::open`] reads each segment once, sequentially, and passes
//! every live record to a callback in append order, without keeping bodies.
//! The scan distinguishes two kinds of damage:
//!
//! * **Torn tail** — the scan meets bytes that are not a valid record, and no
//!   valid record follows anywhere after them. This is what a crash during a
//!   write leaves; those bytes were never confirmed. The segment is truncated
//!   there and a warning logs the byte count.
//! * **Mid-segment corruption** — a damaged record *is* followed by a valid
//!   one. If its header CRC holds, the length is trusted and exactly that
//!   record is skipped; otherwise the scan searches byte by byte for the next
//!   record that validates completely (magic, header CRC, payload CRC). The
//!   skipped bytes are reported as corrupt and never returned.
//!
//! A damaged ack entry is ignored (its record comes back) and a torn partial
//! entry at the end of an ack file is cut off. See `docs/store.md` for more.

#![forbid(unsafe_code)]
// A client's bytes or the disk must never panic the broker: no unwrap
// outside tests (clippy.toml lets tests unwrap).
#![warn(clippy::unwrap_used)]

pub mod definitions;
mod error;
mod format;
pub mod records;
mod recovery;
mod segment;
mod store;

#[cfg(test)]
mod model_tests;

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

pub use error::StoreError;
pub use format::{MAX_PAYLOAD_LEN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
pub use store::{DirtyHook, PendingSync, QueueStore, WriteBuffers};

/// Where a record lives: segment number and byte offset of its header in
/// that segment. Stable for the record's lifetime, across restarts. Orders
/// by append order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentPosition {
    /// Segment number (the `NNNNNNNNNN` in `msgs.NNNNNNNNNN`).
    pub segment: u32,
    /// Byte offset of the record's header within the segment file.
    pub offset: u32,
}

impl fmt::Display for SegmentPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "segment {} offset {}", self.segment, self.offset)
    }
}

/// Tuning knobs of a [`QueueStore`]. `Default` suits a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Target size of a segment file in bytes (default 8 MiB). Smaller
    /// segments free disk sooner after acks; larger ones mean fewer files.
    pub segment_size: u32,
    /// Appended records are gathered in a buffer of this size before a
    /// `write` call (default 256 KiB). Records at least this large are
    /// written directly from the caller's slice.
    pub write_buffer_size: usize,
    /// A budget the write buffers of many stores share (default none:
    /// each may grow to `write_buffer_size`). With one, a buffer grows past
    /// 4 KiB only while the budget has room, and is given back after a
    /// sync once half the budget is spent.
    pub write_buffers: Option<Arc<WriteBuffers>>,
    /// Acks buffered in memory before being written to the ack files
    /// (default 1024). Bounds the ack window after `kill -9`.
    pub max_pending_acks: usize,
    /// Acks written since the last ack fsync that trigger the next one
    /// (default 8192). Bounds the ack window after power loss.
    pub ack_sync_every: u64,
    /// Read handles kept open for non-current segments (default 8).
    pub max_open_read_files: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_size: 8 * 1024 * 1024,
            write_buffer_size: 256 * 1024,
            write_buffers: None,
            max_pending_acks: 1024,
            ack_sync_every: 8192,
            max_open_read_files: 8,
        }
    }
}

impl StoreOptions {
    fn validate(&self) -> Result<(), StoreError> {
        if self.segment_size < 64 {
            return Err(StoreError::InvalidOptions(
                "segment_size must be at least 64 bytes",
            ));
        }
        if self.segment_size > 1 << 31 {
            return Err(StoreError::InvalidOptions(
                "segment_size must be at most 2 GiB",
            ));
        }
        if self.write_buffer_size == 0 {
            return Err(StoreError::InvalidOptions(
                "write_buffer_size must be positive",
            ));
        }
        if self.max_pending_acks == 0 || self.ack_sync_every == 0 {
            return Err(StoreError::InvalidOptions(
                "max_pending_acks and ack_sync_every must be positive",
            ));
        }
        if self.max_open_read_files == 0 {
            return Err(StoreError::InvalidOptions(
                "max_open_read_files must be positive",
            ));
        }
        Ok(())
    }
}

/// What [`QueueStore::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Segment files read.
    pub segments_read: u32,
    /// Live records passed to the callback.
    pub records_recovered: u64,
    /// Valid records skipped because they are acked.
    pub records_acked: u64,
    /// Bytes cut off as torn tails (incomplete writes from a crash).
    pub bytes_truncated: u64,
    /// Damaged records skipped in the middle of a segment (valid records
    /// followed them). Nonzero means disk corruption: worth an alert.
    pub corrupt_records: u64,
    /// Bytes in those damaged records.
    pub corrupt_bytes: u64,
    /// Ack entries ignored: damaged, or naming no record (e.g. a record that
    /// was cut away as a torn tail).
    pub ack_entries_ignored: u64,
    /// Segments deleted because nothing in them was live.
    pub segments_deleted: u32,
}

/// fsyncs a directory so that entries created, renamed or removed in it are
/// durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}
