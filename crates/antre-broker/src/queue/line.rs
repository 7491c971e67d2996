//! The consumers of a queue and whose turn it is, by RabbitMQ's rule.
//!
//! Consumers stand in a line. The next message goes to the first one in
//! line whose prefetch window has room; it then goes to the back. Consumers
//! passed over on the way, for want of room, step out of the line and rejoin
//! it at the back, in the order they stepped out, once room frees up (the
//! channel settles something, and every settle makes the queue dispatch). A
//! new consumer joins at the back. So a consumer whose window was full does
//! not jump ahead of those that waited with room, as in RabbitMQ's classic
//! queues (`rabbit_queue_consumers`: blocked consumers are re-added at the
//! tail when unblocked).
//!
//! Consumer priorities (`x-priority` on basic.consume) come first: the line
//! is walked once per priority, highest first, so a consumer gets a message
//! only when every consumer of a higher priority is out of room; within one
//! priority the rule above holds.
//!
//! With a single active consumer there is no line: the first subscriber
//! gets everything while it is there.
//!
//! Stored as a ring: `slots[next]` is first in line and the one before
//! it last. Consumers that stepped out keep their slot but are skipped.

use super::{ConsumerId, ConsumerSpec};

#[derive(Debug)]
struct Slot {
    spec: ConsumerSpec,
    /// When it stepped out of the line (an increasing number), if it did.
    out: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct ConsumerLine {
    slots: Vec<Slot>,
    /// Index of the first in line.
    next: usize,
    /// How many slots are out of the line.
    out: usize,
    /// Orders the stepping out, so consumers rejoin in that order.
    stepped_out: u64,
    /// Single active consumer: subscription order, no turns.
    single_active: bool,
}

impl ConsumerLine {
    pub fn new(single_active: bool) -> ConsumerLine {
        ConsumerLine {
            single_active,
            ..ConsumerLine::default()
        }
    }

    /// Whether the queue has a single active consumer (the first).
    pub fn single_active(&self) -> bool {
        self.single_active
    }

    /// Every consumer, in line or not.
    pub fn all(&self) -> impl Iterator<Item = &ConsumerSpec> {
        self.slots.iter().map(|s| &s.spec)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, at: usize) -> &ConsumerSpec {
        &self.slots[at].spec
    }

    /// A new consumer joins at the back of the line.
    pub fn join(&mut self, spec: ConsumerSpec) {
        let slot = Slot { spec, out: None };
        if self.single_active || self.slots.is_empty() {
            self.slots.push(slot);
            return;
        }
        let at = self.next;
        self.slots.insert(at, slot);
        self.next = at + 1;
    }

    /// Removes a consumer; the others keep their places in line.
    pub fn remove(&mut self, at: usize) -> ConsumerSpec {
        let gone = self.slots.remove(at);
        if gone.out.is_some() {
            self.out -= 1;
        }
        if at < self.next {
            self.next -= 1;
        }
        if self.next >= self.slots.len() {
            self.next = 0;
        }
        gone.spec
    }

    /// Removes every consumer (the queue was deleted).
    pub fn take_all(&mut self) -> Vec<ConsumerSpec> {
        self.next = 0;
        self.out = 0;
        self.slots.drain(..).map(|s| s.spec).collect()
    }

    /// Finds the consumer that gets the next message and takes one
    /// delivery's credit from its windows; it goes to the back of the line.
    /// Returns its index, or None when nobody has room.
    pub fn take_turn(&mut self) -> Option<usize> {
        if self.single_active {
            return self
                .slots
                .first()
                .is_some_and(|s| s.spec.try_take_credit())
                .then_some(0);
        }
        self.rejoin();
        let mut levels: Vec<i64> = self.slots.iter().map(|s| s.spec.priority).collect();
        levels.sort_unstable_by(|a, b| b.cmp(a));
        levels.dedup();
        levels
            .into_iter()
            .find_map(|level| self.take_turn_at(level))
    }

    /// [`ConsumerLine::take_turn`] among the consumers of one priority.
    fn take_turn_at(&mut self, priority: i64) -> Option<usize> {
        let n = self.slots.len();
        for i in 0..n {
            let at = (self.next + i) % n;
            let slot = &mut self.slots[at];
            if slot.out.is_some() || slot.spec.priority != priority {
                continue;
            }
            if slot.spec.try_take_credit() {
                self.next = (at + 1) % n;
                return Some(at);
            }
            slot.out = Some(self.stepped_out);
            self.stepped_out += 1;
            self.out += 1;
        }
        None
    }

    /// Consumers out of the line whose windows have room again go to the
    /// back, in the order they stepped out.
    fn rejoin(&mut self) {
        if self.out == 0 {
            return;
        }
        let mut back: Vec<(u64, ConsumerId)> = self
            .slots
            .iter()
            .filter_map(|s| match s.out {
                Some(stepped_out) if s.spec.has_room() => Some((stepped_out, s.spec.id)),
                _ => None,
            })
            .collect();
        back.sort_unstable();
        for (_, id) in back {
            if let Some(at) = self.slots.iter().position(|s| s.spec.id == id) {
                let spec = self.remove(at);
                self.join(spec);
            }
        }
    }
}
