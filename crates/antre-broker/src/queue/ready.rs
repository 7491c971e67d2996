//! The ready messages of a queue: one FIFO per priority level, each kept in
//! order of arrival, with the counts the queue's limits need.

use std::collections::VecDeque;
use std::sync::Arc;

use antre_store::SegmentPosition;

use crate::message::Message;

/// A message waiting in a queue; its body may be on disk only.
#[derive(Debug)]
pub(crate) struct Ready {
    pub seq: u64,
    /// None when the body was left on disk (paged out).
    pub message: Option<Arc<Message>>,
    pub pos: Option<SegmentPosition>,
    pub redelivered: bool,
    pub priority: u8,
    /// When it expires (ms since the epoch), from queue or message TTL.
    pub expires_at: Option<u64>,
    /// Body size, known even when the body is on disk.
    pub size: u64,
    /// Times it came back unacked (for `x-delivery-limit`).
    pub delivery_count: u32,
    /// Its deduplication key, if the queue deduplicates.
    pub dedup_key: Option<String>,
}

/// Ready messages by priority, highest first on the way out.
#[derive(Debug)]
pub(crate) struct ReadyList {
    levels: Vec<VecDeque<Ready>>,
    len: usize,
    bytes: u64,
    /// Memory held by bodies that are in memory.
    pub in_memory: u64,
}

impl ReadyList {
    pub fn new(max_priority: u8) -> ReadyList {
        ReadyList {
            levels: (0..=max_priority).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
            in_memory: 0,
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
        self.bytes += r.size;
        if let Some(m) = &r.message {
            self.in_memory += m.memory_size();
        }
        let level = self.level_of(r.priority);
        let q = &mut self.levels[level];
        if q.back().is_none_or(|last| last.seq < r.seq) {
            q.push_back(r);
        } else {
            let at = q.partition_point(|e| e.seq < r.seq);
            q.insert(at, r);
        }
    }

    fn taken(&mut self, r: &Ready) {
        self.len -= 1;
        self.bytes -= r.size;
        if let Some(m) = &r.message {
            self.in_memory = self.in_memory.saturating_sub(m.memory_size());
        }
    }

    /// The next message to deliver: highest priority, oldest first.
    pub fn pop_front(&mut self) -> Option<Ready> {
        let r = self.levels.iter_mut().rev().find_map(VecDeque::pop_front)?;
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
                .front()
                .and_then(|r| r.expires_at)
                .is_some_and(|at| at <= now)
            {
                if let Some(r) = self.levels[level].pop_front() {
                    out.push(r);
                }
            }
        }
        for r in &out {
            self.taken(r);
        }
        out
    }

    /// Takes everything (purge, delete).
    pub fn drain(&mut self) -> Vec<Ready> {
        let all: Vec<Ready> = self.levels.iter_mut().flat_map(|l| l.drain(..)).collect();
        self.len = 0;
        self.bytes = 0;
        self.in_memory = 0;
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(seq: u64, priority: u8, expires_at: Option<u64>) -> Ready {
        Ready {
            seq,
            message: None,
            pos: None,
            redelivered: false,
            priority,
            expires_at,
            size: 10,
            delivery_count: 0,
            dedup_key: None,
        }
    }

    #[test]
    fn higher_priority_first_fifo_within_a_priority() {
        let mut l = ReadyList::new(5);
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
        let mut l = ReadyList::new(0);
        for seq in [2, 3, 0, 1] {
            l.insert(ready(seq, 0, None));
        }
        let order: Vec<u64> = std::iter::from_fn(|| l.pop_front())
            .map(|r| r.seq)
            .collect();
        assert_eq!(order, [0, 1, 2, 3]);
    }

    #[test]
    fn expiry_takes_expired_heads_only() {
        let mut l = ReadyList::new(0);
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
}
