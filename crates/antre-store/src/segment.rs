//! In-memory state of one segment: which record offsets it holds, which of
//! them are still live, and its file sizes.
//!
//! Only positions are kept, never bodies: 4 bytes and one bit per record,
//! so a backlog far larger than RAM costs little memory.

use std::fs::File;

/// Which records of one segment are live, in memory that does not grow
/// with the backlog: a count of live records, the offsets of records acked
/// since the store was opened (a FIFO queue acks a segment from its start
/// and the segment goes once all are acked, so this stays short), and the
/// offsets of records not yet written to the file (the ones a failed write
/// can take away).
///
/// It does not know every record's offset (4 bytes a record would be 40 MB
/// for a backlog of ten million), so it trusts the caller to name offsets
/// it was given by `append` or recovery; the store checks bounds, and reads
/// check each record's header CRC.
#[derive(Debug, Default)]
pub(crate) struct SegmentIndex {
    live: u32,
    /// Offsets acked since open, ascending.
    acked: Vec<u32>,
    /// Offsets of records appended but not yet written to the file.
    unflushed: Vec<u32>,
}

impl SegmentIndex {
    /// Records a new live record, not yet written to the file.
    pub fn push(&mut self, offset: u32) {
        debug_assert!(self.unflushed.last().is_none_or(|&l| l < offset));
        self.unflushed.push(offset);
        self.live += 1;
    }

    /// Records a live record found on disk at recovery.
    pub fn push_recovered(&mut self) {
        self.live += 1;
    }

    /// Everything appended so far reached the file.
    pub fn flushed(&mut self) {
        self.unflushed.clear();
    }

    /// True unless the record at `offset` was acked (the caller checks that
    /// a record starts there).
    pub fn is_live(&self, offset: u32) -> bool {
        self.acked.binary_search(&offset).is_err()
    }

    /// Marks the record at `offset` acked. False if it already was, so a
    /// double ack can never make the live count drift (which would delete a
    /// segment that still holds messages).
    pub fn ack(&mut self, offset: u32) -> bool {
        if self.live == 0 {
            return false;
        }
        match self.acked.binary_search(&offset) {
            Ok(_) => false,
            Err(at) => {
                self.acked.insert(at, offset);
                self.live -= 1;
                true
            }
        }
    }

    /// Number of live records.
    pub fn live(&self) -> u32 {
        self.live
    }

    /// Forgets every record at or after `offset`, which must all be
    /// unflushed (their bytes never reached the file). Returns how many live
    /// records were dropped.
    pub fn truncate_from(&mut self, offset: u32) -> u32 {
        let keep = self.unflushed.partition_point(|&o| o < offset);
        let mut dropped = 0;
        for &o in &self.unflushed[keep..] {
            match self.acked.binary_search(&o) {
                Ok(at) => {
                    self.acked.remove(at);
                }
                Err(_) => dropped += 1,
            }
        }
        self.unflushed.truncate(keep);
        self.live -= dropped;
        dropped
    }

    /// Bytes of memory this index holds (for tests of its bound).
    #[cfg(test)]
    pub fn memory(&self) -> usize {
        (self.acked.capacity() + self.unflushed.capacity()) * 4
    }
}

/// One segment as the store tracks it.
#[derive(Debug, Default)]
pub(crate) struct Segment {
    pub index: SegmentIndex,
    /// Length of the `msgs` file, counting bytes still in the write buffer.
    pub len: u64,
    /// Length of the `acks` file.
    pub ack_len: u64,
    /// Length of the `acks` file known to be fsync'd.
    pub ack_synced_len: u64,
    /// Open while the ack file has bytes that are not fsync'd yet; closed at
    /// the next ack fsync so idle segments hold no descriptor.
    pub ack_file: Option<File>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_once_only() {
        let mut ix = SegmentIndex::default();
        for o in [16, 40, 90] {
            ix.push(o);
        }
        ix.flushed();
        assert!(ix.ack(40));
        assert!(!ix.ack(40));
        assert_eq!(ix.live(), 2);
        assert!(ix.is_live(16) && !ix.is_live(40));
    }

    #[test]
    fn truncate_drops_only_unflushed_records() {
        let mut ix = SegmentIndex::default();
        for i in 0..100u32 {
            ix.push(16 + i * 10);
        }
        ix.flushed();
        for i in 100..200u32 {
            ix.push(16 + i * 10);
        }
        // One flushed and one unflushed record acked.
        assert!(ix.ack(16 + 50 * 10));
        assert!(ix.ack(16 + 150 * 10));
        assert_eq!(ix.live(), 198);
        let dropped = ix.truncate_from(16 + 100 * 10);
        assert_eq!(dropped, 99, "the acked one was not live");
        assert_eq!(ix.live(), 99);
        assert!(!ix.is_live(16 + 50 * 10));
        // New records after the cut start unacked.
        ix.push(16 + 100 * 10);
        assert!(ix.is_live(16 + 100 * 10));
    }

    #[test]
    fn memory_does_not_grow_with_live_records() {
        let mut ix = SegmentIndex::default();
        for _ in 0..100_000 {
            ix.push_recovered();
        }
        assert_eq!(ix.live(), 100_000);
        assert_eq!(ix.memory(), 0);
    }
}
