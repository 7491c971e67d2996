//! Node-wide budgets for the read and write buffers of all connections.
//!
//! A client that sends faster than one small buffer per wake-up gets a
//! larger read buffer (up to 256 KiB), which saves wake-ups and syscalls.
//! One fast publisher should have that; a thousand publishers that each
//! send a confirm window at once should not each hold 64–256 KiB, since
//! the bytes would otherwise simply wait in the kernel's socket buffers.
//! So growth past a small size ([`READ_SMALL`]) takes from a node-wide
//! budget, and a connection that gets none reads in small buffers.
//!
//! Output is the same: a consumer's connection encodes a few hundred
//! coalesced deliveries per write, and keeping that buffer between writes
//! saves an allocation each time. A thousand consumers each keeping
//! 256 KiB would hold 256 MB while their queues drain, so a connection
//! keeps an output buffer larger than [`WRITE_SMALL`] only while the
//! node's write budget lets it, and gives it back after the write
//! otherwise.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A connection's read buffer may grow to this without the budget.
pub(crate) const READ_SMALL: usize = 8 * 1024;

/// A connection may keep an output buffer of this size between writes
/// without the budget.
pub(crate) const WRITE_SMALL: usize = 16 * 1024;

/// What all connections' buffers of one kind may hold beyond a small size
/// each.
#[derive(Debug)]
pub struct BufferBudget {
    limit: usize,
    /// What each connection may have without the budget.
    small: usize,
    used: AtomicUsize,
}

impl BufferBudget {
    /// A budget of `limit` bytes for buffers above `small` bytes.
    pub fn new(limit: usize, small: usize) -> Arc<BufferBudget> {
        Arc::new(BufferBudget {
            limit,
            small,
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

/// The node's two buffer budgets, which every connection draws from.
#[derive(Debug, Clone)]
pub struct Buffers {
    /// Read buffers beyond [`READ_SMALL`] each.
    pub read: Arc<BufferBudget>,
    /// Output buffers kept between writes beyond [`WRITE_SMALL`] each.
    pub write: Arc<BufferBudget>,
}

impl Buffers {
    /// Budgets of `read` and `write` bytes.
    pub fn new(read: usize, write: usize) -> Buffers {
        Buffers {
            read: BufferBudget::new(read, READ_SMALL),
            write: BufferBudget::new(write, WRITE_SMALL),
        }
    }
}

/// One connection's share of a budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct BufferShare {
    budget: Arc<BufferBudget>,
    /// Bytes taken (the buffer's size beyond the budget's small size).
    taken: usize,
}

impl BufferShare {
    pub(crate) fn new(budget: Arc<BufferBudget>) -> BufferShare {
        BufferShare { budget, taken: 0 }
    }

    /// The largest buffer (at most `want`) the connection may have now.
    pub(crate) fn allow(&mut self, want: usize) -> usize {
        let small = self.budget.small;
        let over = want.saturating_sub(small);
        if over <= self.taken || self.budget.try_take(over - self.taken) {
            self.taken = self.taken.max(over);
            return want;
        }
        small.max(small + self.taken).min(want)
    }

    /// Whether the connection may keep a buffer of `size` bytes from now
    /// on, its share resized to it (given back when it may not, or when
    /// the buffer is small).
    pub(crate) fn keep(&mut self, size: usize) -> bool {
        let over = size.saturating_sub(self.budget.small);
        if over < self.taken {
            self.budget.give(self.taken - over);
            self.taken = over;
        }
        if self.allow(size) >= size {
            return true;
        }
        self.release();
        false
    }

    /// The connection dropped its buffer: its share goes back.
    pub(crate) fn release(&mut self) {
        self.budget.give(std::mem::take(&mut self.taken));
    }
}

impl Drop for BufferShare {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_small_size_needs_the_budget() {
        let budget = BufferBudget::new(100 * 1024, READ_SMALL);
        let mut a = BufferShare::new(Arc::clone(&budget));
        let mut b = BufferShare::new(Arc::clone(&budget));
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

    #[test]
    fn a_large_output_buffer_is_kept_only_within_the_budget() {
        let budget = BufferBudget::new(300 * 1024, WRITE_SMALL);
        let mut a = BufferShare::new(Arc::clone(&budget));
        let mut b = BufferShare::new(Arc::clone(&budget));
        assert!(a.keep(WRITE_SMALL), "small buffers are always kept");
        assert_eq!(budget.used(), 0);
        assert!(a.keep(WRITE_SMALL + 256 * 1024));
        assert_eq!(budget.used(), 256 * 1024);
        assert!(!b.keep(WRITE_SMALL + 256 * 1024), "no room left for b");
        assert_eq!(budget.used(), 256 * 1024, "b took nothing");
        // a's buffer shrank: the difference goes back, and b fits now.
        assert!(a.keep(WRITE_SMALL + 16 * 1024));
        assert_eq!(budget.used(), 16 * 1024);
        assert!(b.keep(WRITE_SMALL + 256 * 1024));
        assert_eq!(budget.used(), 272 * 1024);
        assert!(!a.keep(WRITE_SMALL + 64 * 1024), "a may not grow past it");
        assert_eq!(budget.used(), 256 * 1024, "a gave its share back");
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
