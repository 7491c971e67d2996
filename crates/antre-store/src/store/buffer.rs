//! Write buffers and the budget many stores' buffers share.
//!
//! A store gathers appended records in a buffer so that a burst costs one
//! `write`. With one durable queue that buffer is worth 256 KiB; with a
//! thousand queues whose publishers each land a confirm window between two
//! syncs, a thousand such buffers were a quarter of a gigabyte the message
//! budget never saw. So buffers grow only while a shared budget
//! ([`WriteBuffers`]) has room; past it a store writes out at a small
//! floor, and after each sync a store gives its buffer back unless it is
//! busy and the budget is far from spent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A store's buffer may grow to this size whatever the budget says, so a
/// store refused by the budget still gathers a few records per `write`.
pub(super) const FLOOR: usize = 4 * 1024;

/// One budget for the write buffers of many stores (a broker's durable
/// queues and scratch stores): the bytes their buffers may hold together
/// beyond [`FLOOR`] each. Set it in [`crate::StoreOptions::write_buffers`].
#[derive(Debug)]
pub struct WriteBuffers {
    limit: usize,
    used: AtomicUsize,
}

impl WriteBuffers {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<WriteBuffers> {
        Arc::new(WriteBuffers {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// The budget.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes of buffer capacity the stores hold now (floors included).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit.
    fn try_take(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes <= self.limit {
            return true;
        }
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        false
    }

    /// Half the budget is spent: stores give their buffers back after a
    /// sync instead of keeping them for the next round.
    fn pressed(&self) -> bool {
        self.used() > self.limit / 2
    }
}

/// Budgets are compared by identity: two stores share one or they do not.
impl PartialEq for WriteBuffers {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for WriteBuffers {}

/// A store's write buffer, its capacity counted in the budget (if any)
/// for as long as it exists.
#[derive(Debug, Default)]
pub(super) struct Buffer {
    bytes: Vec<u8>,
    /// Capacity counted in the budget.
    charged: usize,
    budget: Option<Arc<WriteBuffers>>,
}

impl Buffer {
    pub fn new(budget: Option<Arc<WriteBuffers>>) -> Buffer {
        Buffer {
            bytes: Vec::new(),
            charged: 0,
            budget,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Appends bytes the caller made room for with [`Buffer::reserve`]
    /// (anything beyond is counted all the same).
    pub fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.account();
    }

    /// Makes room for `extra` more bytes: grows to at least `hint` (what
    /// the store needed last time, so it grows once rather than doubling
    /// its way up) and at most `max` (unless `extra` alone needs more), if
    /// the budget allows; to [`FLOOR`] in any case. False if neither gives
    /// room: the caller writes out what is buffered and tries again, or
    /// writes the record directly.
    pub fn reserve(&mut self, extra: usize, hint: usize, max: usize) -> bool {
        let need = self.bytes.len() + extra;
        if need <= self.bytes.capacity() {
            return true;
        }
        let want = need
            .max(self.bytes.capacity() * 2)
            .max(hint)
            .min(max.max(need));
        let target = if want <= FLOOR {
            // Taken by account() below, whatever the budget says.
            want
        } else if self.take(want) {
            want
        } else if need <= FLOOR {
            FLOOR
        } else {
            return false;
        };
        self.bytes.reserve_exact(target - self.bytes.len());
        self.account();
        true
    }

    /// Asks the budget for what growing to `want` bytes adds; once
    /// granted, it counts as charged (account() settles the difference
    /// with the capacity the allocator gives).
    fn take(&mut self, want: usize) -> bool {
        let granted = self
            .budget
            .as_ref()
            .is_none_or(|b| b.try_take(want.saturating_sub(self.charged)));
        if granted && self.budget.is_some() {
            self.charged = self.charged.max(want);
        }
        granted
    }

    /// Frees the buffer (it must be empty: its records were written out).
    pub fn release(&mut self) {
        debug_assert!(self.bytes.is_empty());
        self.bytes = Vec::new();
        self.account();
    }

    /// Whether, after a sync, the buffer should go: kept only by a store
    /// that used a fair part of it (`peak` bytes) while the budget is far
    /// from spent.
    pub fn should_release(&self, peak: usize) -> bool {
        let busy = peak >= self.bytes.capacity() / 4;
        let pressed = self.budget.as_ref().is_some_and(|b| b.pressed());
        self.bytes.capacity() > 0 && (!busy || pressed)
    }

    /// Brings the charge in line with the real capacity.
    fn account(&mut self) {
        let cap = self.bytes.capacity();
        if let Some(b) = &self.budget {
            if cap > self.charged {
                b.used.fetch_add(cap - self.charged, Ordering::Relaxed);
            } else if cap < self.charged {
                b.used.fetch_sub(self.charged - cap, Ordering::Relaxed);
            }
        }
        self.charged = cap;
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.used.fetch_sub(self.charged, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_floor_needs_the_budget() {
        let budget = WriteBuffers::new(64 * 1024);
        let mut a = Buffer::new(Some(Arc::clone(&budget)));
        assert!(a.reserve(1000, 0, 256 * 1024));
        assert!(a.capacity() >= 1000);
        // 64 KiB fits the budget.
        assert!(a.reserve(60 * 1024, 0, 256 * 1024));
        assert_eq!(budget.used(), a.capacity());
        // A second buffer gets its floor, not more.
        let mut b = Buffer::new(Some(Arc::clone(&budget)));
        assert!(b.reserve(2000, 0, 256 * 1024));
        assert!(
            b.reserve(FLOOR, 0, 256 * 1024),
            "the floor is always granted"
        );
        assert!(!b.reserve(FLOOR + 1, 0, 256 * 1024));
        assert!(b.capacity() <= FLOOR);
        assert_eq!(budget.used(), a.capacity() + b.capacity());
        drop(a);
        assert_eq!(budget.used(), b.capacity());
        b.release();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_hint_sizes_the_buffer_at_once() {
        let mut a = Buffer::new(None);
        assert!(a.reserve(10, 100_000, 256 * 1024));
        assert!(a.capacity() >= 100_000);
        assert!(a.reserve(10, 1 << 30, 256 * 1024));
    }
}
