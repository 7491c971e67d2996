//! One budget for the read buffers of all connections.
//!
//! A client that sends faster than one small buffer per wake-up gets a
//! larger read buffer (up to 256 KiB), which saves wake-ups and syscalls.
//! One fast publisher should have that; a thousand publishers that each
//! send a confirm window at once should not each hold 64–256 KiB, since
//! the bytes would otherwise simply wait in the kernel's socket buffers.
//! So growth past [`READ_SMALL`] takes from a node-wide budget, and a
//! connection that gets none reads in small buffers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A connection's read buffer may grow to this without the budget.
pub(crate) const READ_SMALL: usize = 8 * 1024;

/// What all connections' read buffers may hold beyond [`READ_SMALL`] each.
#[derive(Debug)]
pub struct ReadBuffers {
    limit: usize,
    used: AtomicUsize,
}

impl ReadBuffers {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<ReadBuffers> {
        Arc::new(ReadBuffers {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes taken now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes <= self.limit {
            return true;
        }
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        false
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One connection's share of the budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct ReadShare {
    budget: Arc<ReadBuffers>,
    /// Bytes taken (the buffer's size beyond [`READ_SMALL`]).
    taken: usize,
}

impl ReadShare {
    pub(crate) fn new(budget: Arc<ReadBuffers>) -> ReadShare {
        ReadShare { budget, taken: 0 }
    }

    /// The largest buffer (at most `want`) the connection may have now.
    pub(crate) fn allow(&mut self, want: usize) -> usize {
        let over = want.saturating_sub(READ_SMALL);
        if over <= self.taken || self.budget.try_take(over - self.taken) {
            self.taken = self.taken.max(over);
            return want;
        }
        READ_SMALL.max(READ_SMALL + self.taken).min(want)
    }

    /// The connection dropped its buffer: its share goes back.
    pub(crate) fn release(&mut self) {
        self.budget.give(std::mem::take(&mut self.taken));
    }
}

impl Drop for ReadShare {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_small_size_needs_the_budget() {
        let budget = ReadBuffers::new(100 * 1024);
        let mut a = ReadShare::new(Arc::clone(&budget));
        let mut b = ReadShare::new(Arc::clone(&budget));
        assert_eq!(a.allow(READ_SMALL), READ_SMALL);
        assert_eq!(budget.used(), 0);
        assert_eq!(a.allow(READ_SMALL + 60 * 1024), READ_SMALL + 60 * 1024);
        assert_eq!(budget.used(), 60 * 1024);
        // b gets what is left of the budget, not more.
        assert_eq!(b.allow(256 * 1024), READ_SMALL);
        assert_eq!(b.allow(READ_SMALL + 40 * 1024), READ_SMALL + 40 * 1024);
        assert_eq!(budget.used(), 100 * 1024);
        assert_eq!(
            b.allow(READ_SMALL + 64 * 1024),
            READ_SMALL + 40 * 1024,
            "keeps what it has"
        );
        a.release();
        assert_eq!(budget.used(), 40 * 1024);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
