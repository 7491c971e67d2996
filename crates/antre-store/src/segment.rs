//! In-memory state of one segment: which record offsets it holds, which of
//! them are still live, and its file sizes.
//!
//! Only positions are kept, never bodies: 4 bytes and one bit per record,
//! so a backlog far larger than RAM costs little memory.

use std::fs::File;

/// Record offsets of one segment, in append order, with an acked bit each.
#[derive(Debug, Default)]
pub(crate) struct SegmentIndex {
    /// Start offset of every record still tracked, ascending. Binary search
    /// finds a record without a hash map's per-entry overhead.
    offsets: Vec<u32>,
    /// Bit `i` set = `offsets[i]` is acked.
    acked: Vec<u64>,
    live: u32,
}

impl SegmentIndex {
    /// Records a new live record. Offsets only grow within a segment.
    pub fn push(&mut self, offset: u32) {
        debug_assert!(self.offsets.last().copied().unwrap_or(0) < offset);
        if self.offsets.len().is_multiple_of(64) {
            self.acked.push(0);
        }
        self.offsets.push(offset);
        self.live += 1;
    }

    fn slot(&self, offset: u32) -> Option<usize> {
        self.offsets.binary_search(&offset).ok()
    }

    fn is_acked(&self, i: usize) -> bool {
        self.acked[i / 64] & (1 << (i % 64)) != 0
    }

    /// True if a record starts at `offset` and is not acked.
    pub fn is_live(&self, offset: u32) -> bool {
        self.slot(offset).is_some_and(|i| !self.is_acked(i))
    }

    /// Marks the record at `offset` acked. False if there is no live record
    /// there, so a double ack can never make the live count drift (which
    /// would delete a segment that still holds messages).
    pub fn ack(&mut self, offset: u32) -> bool {
        match self.slot(offset) {
            Some(i) if !self.is_acked(i) => {
                self.acked[i / 64] |= 1 << (i % 64);
                self.live -= 1;
                true
            }
            _ => false,
        }
    }

    /// Number of live records.
    pub fn live(&self) -> u32 {
        self.live
    }

    /// Offsets of live records, ascending.
    #[cfg(test)]
    pub fn live_offsets(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.offsets.len())
            .filter(|&i| !self.is_acked(i))
            .map(|i| self.offsets[i])
    }

    /// Forgets every record at or after `offset` (their bytes never reached
    /// the file). Returns how many live records were dropped.
    pub fn truncate_from(&mut self, offset: u32) -> u32 {
        let keep = self.offsets.partition_point(|&o| o < offset);
        let dropped = (keep..self.offsets.len())
            .filter(|&i| !self.is_acked(i))
            .count() as u32;
        self.offsets.truncate(keep);
        self.acked.truncate(keep.div_ceil(64));
        if let Some(last) = self.acked.last_mut() {
            let bits = keep % 64;
            if bits != 0 {
                *last &= (1u64 << bits) - 1;
            }
        }
        self.live -= dropped;
        dropped
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
        assert!(ix.ack(40));
        assert!(!ix.ack(40));
        assert!(!ix.ack(41));
        assert_eq!(ix.live(), 2);
        assert!(ix.is_live(16) && !ix.is_live(40));
        assert_eq!(ix.live_offsets().collect::<Vec<_>>(), vec![16, 90]);
    }

    #[test]
    fn truncate_across_words() {
        let mut ix = SegmentIndex::default();
        for i in 0..200u32 {
            ix.push(16 + i * 10);
        }
        for i in (0..200u32).step_by(3) {
            assert!(ix.ack(16 + i * 10));
        }
        let live_before = ix.live();
        let dropped = ix.truncate_from(16 + 70 * 10);
        assert_eq!(live_before - dropped, ix.live());
        assert_eq!(ix.live_offsets().count() as u32, ix.live());
        // New records after the cut start unacked.
        ix.push(16 + 70 * 10);
        assert!(ix.is_live(16 + 70 * 10));
        assert!(!ix.is_live(16 + 69 * 10));
    }
}
