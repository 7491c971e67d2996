//! The ready messages of a queue: one FIFO per priority level, each kept in
//! order of arrival, with the counts the queue's limits need, paged to disk
//! beyond the node's message budget (see [`super::paging`]).
//!
//! A level is three runs in order: `front` (in memory, where deliveries are
//! taken and requeued messages return), `pages` (index entries on disk, a
//! page of them per scratch record) and `back` (in memory, where new
//! messages arrive). While the budget has room, a level is all `front`.
//! Once a message is refused by the budget, new ones gather in `back`, and
//! each full `back` is written as a page; when `front` runs out, the first
//! page is read back. So a level holds at most a page of entries at each
//! end in memory beyond what the budget paid for.
//!
//! Requeued messages always belong in `front`: a message can only have been
//! delivered from `front`, so its sequence number is below every number in
//! `pages` and `back`.

use std::collections::VecDeque;
use std::sync::Arc;

use antre_store::SegmentPosition;

use super::paging::{decode_page, encode_page, Page, Pager, MAX_PAGE_ENTRIES};
use crate::message::Message;

/// Where a ready message's body is.
#[derive(Debug)]
pub(crate) enum Body {
    /// In memory (charged to the budget).
    Memory(Arc<Message>),
    /// Only in the durable queue's store, at the entry's `pos`.
    Stored,
    /// In the queue's scratch store, at this position.
    Scratch(SegmentPosition),
}

/// A message waiting in a queue; its body may be on disk only.
#[derive(Debug)]
pub(crate) struct Ready {
    pub seq: u64,
    pub body: Body,
    /// Where the durable store keeps it, if it is persisted.
    pub pos: Option<SegmentPosition>,
    /// Body size, known even when the body is on disk.
    pub size: u32,
    /// When it expires (ms since the epoch), from queue or message TTL.
    pub expires_at: Option<u64>,
    /// Times it came back unacked (for `x-delivery-limit`).
    pub delivery_count: u32,
    pub redelivered: bool,
    pub priority: u8,
    /// Bytes of the memory budget this entry holds.
    pub charged: u32,
    /// Its deduplication key, if the queue deduplicates.
    pub dedup_key: Option<String>,
}

#[derive(Debug, Default)]
struct Level {
    front: VecDeque<Ready>,
    pages: VecDeque<Page>,
    back: VecDeque<Ready>,
    /// Highest sequence number that arrived at the tail.
    tail_seq: Option<u64>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.front.is_empty()
    }
}

/// How many messages, and their bodies' bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages.
    pub count: u64,
    /// Their bodies' bytes.
    pub bytes: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, size: u32) {
        self.count += 1;
        self.bytes += u64::from(size);
    }

    pub(crate) fn sub(&mut self, size: u32) {
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(u64::from(size));
    }

    /// Both together.
    pub fn plus(self, other: Tally) -> Tally {
        Tally {
            count: self.count + other.count,
            bytes: self.bytes + other.bytes,
        }
    }

    /// What `self` has beyond `other`.
    pub fn minus(self, other: Tally) -> Tally {
        Tally {
            count: self.count.saturating_sub(other.count),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
    }
}

/// Ready messages by priority, highest first on the way out.
#[derive(Debug)]
pub(crate) struct ReadyList {
    levels: Vec<Level>,
    len: usize,
    bytes: u64,
    /// Those the durable store keeps (RabbitMQ's persistent messages).
    persistent: Tally,
    /// Those whose bodies are in memory.
    in_memory: Tally,
    /// The budget and the scratch store.
    pub pager: Pager,
}

impl ReadyList {
    pub fn new(max_priority: u8, pager: Pager) -> ReadyList {
        ReadyList {
            levels: (0..=max_priority).map(|_| Level::default()).collect(),
            len: 0,
            bytes: 0,
            persistent: Tally::default(),
            in_memory: Tally::default(),
            pager,
        }
    }

    /// Of the ready messages, those the durable store keeps. After a page
    /// of the index was lost (logged) it may count some that are gone, so
    /// it is capped by what the list holds.
    pub fn persistent(&self) -> Tally {
        Tally {
            count: self.persistent.count.min(self.len as u64),
            bytes: self.persistent.bytes.min(self.bytes),
        }
    }

    /// Of the ready messages, those whose bodies are in memory.
    pub fn in_memory(&self) -> Tally {
        self.in_memory
    }

    /// The next message to deliver, if its body is in memory (RabbitMQ
    /// reports a queue's head only when it is).
    pub fn head_in_memory(&self) -> Option<&Arc<Message>> {
        let level = self.levels.iter().rev().find(|l| !l.is_empty())?;
        match &level.front.front()?.body {
            Body::Memory(m) => Some(m),
            Body::Stored | Body::Scratch(_) => None,
        }
    }

    /// Counts `r` in or out of the persistent and in-memory tallies.
    fn tally(&mut self, r: &Ready, adding: bool) {
        let count: fn(&mut Tally, u32) = if adding { Tally::add } else { Tally::sub };
        if r.pos.is_some() {
            count(&mut self.persistent, r.size);
        }
        if matches!(r.body, Body::Memory(_)) {
            count(&mut self.in_memory, r.size);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of ready message bodies.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn level_of(&self, priority: u8) -> usize {
        usize::from(priority).min(self.levels.len() - 1)
    }

    /// Adds a message at its place by sequence number in its level (at the
    /// back for new messages, at its old place for requeued ones).
    pub fn insert(&mut self, r: Ready) {
        self.len += 1;
        self.bytes += u64::from(r.size);
        self.tally(&r, true);
        let level = self.level_of(r.priority);
        let l = &mut self.levels[level];
        let arriving = l.tail_seq.is_none_or(|t| r.seq > t);
        if !arriving {
            let q = &mut l.front;
            if q.back().is_none_or(|last| last.seq < r.seq) {
                q.push_back(r);
            } else {
                let at = q.partition_point(|e| e.seq < r.seq);
                q.insert(at, r);
            }
            return;
        }
        l.tail_seq = Some(r.seq);
        let page = self.pager.page_entries();
        let paging = !l.pages.is_empty() || !l.back.is_empty();
        if !paging && (r.charged > 0 || l.front.len() < page) {
            l.front.push_back(r);
            return;
        }
        // The budget is spent (or the level is paging already): gather at
        // the tail, and write a full tail out as a page.
        let refused = r.charged == 0;
        l.back.push_back(r);
        if refused && l.back.len() >= page {
            self.spill(level);
        }
    }

    /// Writes a level's `back` to disk as one page. Bodies still in memory
    /// go to disk first. If the disk refuses, the entries stay in memory.
    fn spill(&mut self, level: usize) {
        if !self.pager.enabled() {
            return;
        }
        // Taken whole, capacity and all: a level that pages holds no
        // empty page-sized buffer between two pages.
        let mut entries: Vec<Ready> = Vec::from(std::mem::take(&mut self.levels[level].back));
        for r in &mut entries {
            if let Body::Memory(m) = &r.body {
                let paged = match r.pos {
                    Some(_) => Some(Body::Stored),
                    None => self.pager.write(m.record()).map(Body::Scratch),
                };
                match paged {
                    Some(body) => {
                        self.in_memory.sub(r.size);
                        r.body = body;
                        self.pager.release(u64::from(r.charged));
                        r.charged = 0;
                    }
                    None => {
                        self.levels[level].back.extend(entries);
                        return;
                    }
                }
            }
        }
        // Normally one page; a `back` that grew while the disk refused
        // pages is written as several, none over what a page can count.
        while !entries.is_empty() {
            let rest = entries.split_off(entries.len().min(MAX_PAGE_ENTRIES));
            let Some(pos) = self.pager.write(&encode_page(&entries)) else {
                let back = &mut self.levels[level].back;
                back.extend(entries);
                back.extend(rest);
                return;
            };
            let bytes = entries.iter().map(|r| u64::from(r.size)).sum();
            self.levels[level]
                .pages
                .push_back(Page::new(pos, entries.len(), bytes));
            // The index entries are on disk now; what they charged (only
            // requeued or budgeted ones) goes back.
            for r in &entries {
                self.pager.release(u64::from(r.charged));
            }
            entries = rest;
        }
    }

    /// Refills an empty `front` from the first page, or from `back`.
    fn refill(&mut self, level: usize) {
        while self.levels[level].front.is_empty() {
            let Some(page) = self.levels[level].pages.pop_front() else {
                let l = &mut self.levels[level];
                std::mem::swap(&mut l.front, &mut l.back);
                return;
            };
            let entries = self
                .pager
                .read(page.pos)
                .and_then(decode_page)
                .filter(|e| e.len() == page.count() as usize);
            self.pager.free(page.pos);
            match entries {
                Some(entries) => self.levels[level].front.extend(entries),
                None => {
                    // Lost with its page (logged by the pager): their
                    // durable records stay and come back at a restart.
                    tracing::error!(
                        lost = page.count(),
                        "ready messages lost: a page of the queue's index could not be read"
                    );
                    self.len -= page.count() as usize;
                    self.bytes -= page.bytes();
                }
            }
            let l = &mut self.levels[level];
            if l.pages.is_empty() {
                let back = std::mem::take(&mut l.back);
                l.front.extend(back);
            }
        }
    }

    fn taken(&mut self, r: &Ready) {
        self.len -= 1;
        self.bytes -= u64::from(r.size);
        self.tally(r, false);
        self.pager.release(u64::from(r.charged));
    }

    /// The next message to deliver: highest priority, oldest first. Its
    /// budget is given back (the caller holds it now).
    pub fn pop_front(&mut self) -> Option<Ready> {
        let level = (0..self.levels.len())
            .rev()
            .find(|&l| !self.levels[l].is_empty())?;
        let front = &mut self.levels[level].front;
        let r = front.pop_front()?;
        // A front that held a large in-memory backlog gives the room back
        // as it drains (a level that pages never needs more than a page).
        if front.capacity() > 1024 && front.capacity() > 8 * front.len() {
            front.shrink_to(2 * front.len());
        }
        self.refill(level);
        self.taken(&r);
        Some(r)
    }

    /// Takes the expired messages at the head of each level. Like RabbitMQ's
    /// classic queues, only heads are checked: a message behind a live one
    /// expires when it reaches the head (and is never delivered expired,
    /// because delivery checks too).
    pub fn take_expired(&mut self, now: u64) -> Vec<Ready> {
        let mut out = Vec::new();
        for level in 0..self.levels.len() {
            while self.levels[level]
                .front
                .front()
                .and_then(|r| r.expires_at)
                .is_some_and(|at| at <= now)
            {
                if let Some(r) = self.levels[level].front.pop_front() {
                    self.refill(level);
                    self.taken(&r);
                    out.push(r);
                }
            }
        }
        out
    }

    /// Takes everything, reading pages back (purge).
    pub fn drain(&mut self) -> Vec<Ready> {
        let mut all = Vec::with_capacity(self.len.min(1 << 20));
        while let Some(r) = self.pop_front() {
            all.push(r);
        }
        all
    }

    /// Drops everything without reading pages (the queue is deleted with
    /// its stores). Returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        for level in &mut self.levels {
            let charged: u64 = level
                .front
                .iter()
                .chain(level.back.iter())
                .map(|r| u64::from(r.charged))
                .sum();
            self.pager.release(charged);
            *level = Level::default();
        }
        self.pager.discard();
        self.len = 0;
        self.bytes = 0;
        self.persistent = Tally::default();
        self.in_memory = Tally::default();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::Alarms;
    use crate::queue::paging::{MessageMemory, Paging, PAGE_ENTRIES};

    fn ready(seq: u64, priority: u8, expires_at: Option<u64>) -> Ready {
        Ready {
            seq,
            body: Body::Stored,
            pos: Some(SegmentPosition {
                segment: 1,
                offset: 16 + seq as u32,
            }),
            redelivered: false,
            priority,
            expires_at,
            size: 10,
            delivery_count: 0,
            charged: 0,
            dedup_key: None,
        }
    }

    fn list(max_priority: u8) -> ReadyList {
        ReadyList::new(max_priority, Pager::new(None, "q"))
    }

    #[test]
    fn higher_priority_first_fifo_within_a_priority() {
        let mut l = list(5);
        for (seq, p) in [(0, 1), (1, 5), (2, 1), (3, 9), (4, 0)] {
            l.insert(ready(seq, p, None));
        }
        assert_eq!(l.len(), 5);
        assert_eq!(l.bytes(), 50);
        let order: Vec<u64> = std::iter::from_fn(|| l.pop_front())
            .map(|r| r.seq)
            .collect();
        // Priority 9 is capped to the queue's maximum, 5.
        assert_eq!(order, [1, 3, 0, 2, 4]);
    }

    #[test]
    fn requeued_messages_return_to_their_place() {
        let mut l = list(0);
        for seq in [0, 1, 2, 3] {
            l.insert(ready(seq, 0, None));
        }
        let taken: Vec<Ready> = (0..2).filter_map(|_| l.pop_front()).collect();
        for r in taken.into_iter().rev() {
            l.insert(r);
        }
        let order: Vec<u64> = std::iter::from_fn(|| l.pop_front())
            .map(|r| r.seq)
            .collect();
        assert_eq!(order, [0, 1, 2, 3]);
    }

    #[test]
    fn expiry_takes_expired_heads_only() {
        let mut l = list(0);
        l.insert(ready(0, 0, Some(100)));
        l.insert(ready(1, 0, Some(50)));
        l.insert(ready(2, 0, Some(500)));
        assert!(
            l.take_expired(99).is_empty(),
            "head not expired, so nothing goes"
        );
        let gone: Vec<u64> = l.take_expired(100).into_iter().map(|r| r.seq).collect();
        assert_eq!(gone, [0, 1]);
        assert_eq!(l.len(), 1);
    }

    /// With no budget, a long level keeps two pages of entries in memory
    /// and the rest on disk, and gives everything back in order, requeued
    /// messages at their places, across priorities.
    #[test]
    fn a_long_backlog_pages_its_index_and_keeps_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let pager = Pager::new(
            Some(Paging {
                memory: MessageMemory::new(0),
                scratch_dir: dir.path().join("scratch"),
                store_options: Default::default(),
                alarms: Arc::new(Alarms::default()),
                page_entries: PAGE_ENTRIES,
            }),
            "q",
        );
        let mut l = ReadyList::new(1, pager);
        let n = 10 * PAGE_ENTRIES as u64 + 7;
        for seq in 0..n {
            l.insert(ready(seq, (seq % 3 == 0) as u8, None));
        }
        assert_eq!(l.len() as u64, n);
        let in_memory: usize = l
            .levels
            .iter()
            .map(|lv| lv.front.len() + lv.back.len())
            .sum();
        assert!(
            in_memory <= 4 * PAGE_ENTRIES,
            "{in_memory} entries in memory"
        );
        let high: Vec<u64> = (0..n).filter(|s| s % 3 == 0).collect();
        let low: Vec<u64> = (0..n).filter(|s| s % 3 != 0).collect();
        // Take some, put two back (a requeue), then take everything.
        let first: Vec<Ready> = (0..5).filter_map(|_| l.pop_front()).collect();
        assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), high[..5]);
        for r in first.into_iter().skip(3) {
            l.insert(r);
        }
        let order: Vec<u64> = std::iter::from_fn(|| l.pop_front())
            .map(|r| r.seq)
            .collect();
        let expected: Vec<u64> = high[3..].iter().chain(&low).copied().collect();
        assert_eq!(order, expected);
        assert!(l.is_empty() && l.bytes() == 0);
    }
}
