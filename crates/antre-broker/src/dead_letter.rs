//! Dead-lettering: what a message becomes when it leaves a queue for the
//! queue's dead-letter exchange, and the rules that keep dead letters from
//! circulating forever.
//!
//! A queue collects its dead letters under its own lock (expired, dropped by
//! a length limit, rejected, past the delivery limit); whoever caused them
//! hands the queue to a [`DeadLetterWork`], and [`crate::vhost::Vhost`]
//! republishes each letter through its one publish path. Two rules bound
//! that work:
//! - RabbitMQ's cycle rule ([`is_cycle`]): a letter that would go back to a
//!   queue it already died in, with no rejection anywhere in its history, is
//!   dropped;
//! - a budget ([`DeadLetterWork::new`]): dead letters that land in full or
//!   expiring queues make more dead letters, and topologies where every queue
//!   dead-letters into a fanout that all of them are bound to grow
//!   factorially even with the cycle rule (ten queues: millions of copies of
//!   one message). One operation may therefore cause at most a fixed multiple
//!   of the letters it started with; the rest are dropped, counted and
//!   logged (a letter whose queue keeps it until it is held, at least once,
//!   is put off instead). RabbitMQ has no such bound and can be taken down
//!   this way.

use std::sync::Arc;

use antre_amqp::{FieldTable, FieldValue};

use crate::message::Message;
use crate::queue::{DeadLetter, DeathReason, Queue};

/// How many hops a dead letter may travel (dead-lettered again from the
/// queue it was dead-lettered into) within one operation.
pub const MAX_HOPS: usize = 16;

/// Dead letters one operation may route, per letter it started with.
pub const AMPLIFICATION: usize = 16;

/// The budget of an operation that started with few letters: a legitimate
/// chain of dead-letter queues never needs more.
pub const MIN_BUDGET: usize = 1024;

/// The dead letters an operation still has to route, with its budget.
#[derive(Debug, Default)]
pub struct DeadLetterWork {
    pending: Vec<(Arc<Queue>, Vec<DeadLetter>)>,
    /// Letters routed so far.
    routed: usize,
    /// Letters the operation may route in all; fixed by the first batch.
    budget: Option<usize>,
    /// Letters dropped for exceeding the budget or the hop limit.
    pub dropped: usize,
}

impl DeadLetterWork {
    /// No work yet.
    pub fn new() -> DeadLetterWork {
        DeadLetterWork::default()
    }

    /// Takes the dead letters `queue` collected, if it has a dead-letter
    /// exchange to send them to.
    pub fn collect(&mut self, queue: &Arc<Queue>) {
        if queue.args().dead_letter_exchange.is_none() {
            return;
        }
        let letters = queue.take_dead_letters();
        if !letters.is_empty() {
            self.pending.push((Arc::clone(queue), letters));
        }
    }

    /// The next round of letters to route: each letter comes with the queue
    /// it died in. Empty when done or out of hops.
    pub(crate) fn next_round(&mut self, round: usize) -> Vec<(Arc<Queue>, Vec<DeadLetter>)> {
        let batch = std::mem::take(&mut self.pending);
        if round >= MAX_HOPS {
            for (queue, letters) in &batch {
                for letter in letters {
                    self.put_off(letter, queue);
                }
            }
            return Vec::new();
        }
        if self.budget.is_none() {
            let first: usize = batch.iter().map(|(_, l)| l.len()).sum();
            self.budget = Some(MIN_BUDGET.max(first.saturating_mul(AMPLIFICATION)));
        }
        batch
    }

    /// Whether one more letter may be routed; counts it either way.
    pub(crate) fn spend(&mut self) -> bool {
        if self.routed >= self.budget.unwrap_or(MIN_BUDGET) {
            return false;
        }
        self.routed += 1;
        true
    }

    /// A letter over the budget or the hop limit: dropped, or, if its
    /// queue keeps its message until it is held, routed again later (see
    /// [`DeadLetter::unroutable`]), so that neither bound ever loses it.
    pub(crate) fn put_off(&mut self, letter: &DeadLetter, queue: &Queue) {
        match letter.hold {
            Some(_) => letter.unroutable(queue),
            None => self.dropped += 1,
        }
    }

    /// Whether nothing is left to route.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl DeadLetter {
    /// This letter is not routed now: a queue that keeps its message until
    /// it is held (at least once) routes it again later.
    pub(crate) fn unroutable(&self, queue: &Queue) {
        if let Some(seq) = self.hold {
            queue.dead_letter_routed(seq, None);
        }
    }
}

/// The message as it goes to the dead-letter exchange: with an `x-death`
/// entry for this death (newest first; a repeat death in the same queue for
/// the same reason bumps that entry's count), the `x-first-death-*` headers
/// on its first death, its `expiration` moved to the entry's
/// `original-expiration` so it does not expire again, and the dead-letter
/// routing key if the queue sets one.
pub fn dead_lettered(letter: &DeadLetter, queue: &Queue, dlx: &str, now_ms: u64) -> Message {
    let original = &letter.message;
    let mut properties = original.properties.clone();
    let mut headers = properties.headers.take().unwrap_or_default();
    let mut deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(items)) => items,
        _ => Vec::new(),
    };
    let reason = letter.reason.as_str();
    let same = |t: &FieldTable| {
        t.get("queue").and_then(FieldValue::as_str) == Some(queue.name.as_str())
            && t.get("reason").and_then(FieldValue::as_str) == Some(reason)
    };
    let previous = deaths
        .iter()
        .position(|d| matches!(d, FieldValue::Table(t) if same(t)))
        .map(|i| deaths.remove(i));
    let mut entry = match previous {
        Some(FieldValue::Table(t)) => t,
        _ => FieldTable::new(),
    };
    let count = entry.get("count").and_then(FieldValue::as_i64).unwrap_or(0) + 1;
    entry.insert("count", FieldValue::I64(count));
    entry.insert("reason", FieldValue::string(reason));
    entry.insert("queue", FieldValue::string(queue.name.clone()));
    entry.insert("time", FieldValue::Timestamp(now_ms / 1000));
    entry.insert("exchange", FieldValue::string(original.exchange.clone()));
    entry.insert(
        "routing-keys",
        FieldValue::Array(vec![FieldValue::string(original.routing_key.clone())]),
    );
    if let Some(expiration) = properties.expiration.take() {
        entry.insert("original-expiration", FieldValue::string(expiration));
    }
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death", FieldValue::Array(deaths));
    if headers.get("x-first-death-reason").is_none() {
        headers.insert("x-first-death-reason", FieldValue::string(reason));
        headers.insert(
            "x-first-death-queue",
            FieldValue::string(queue.name.clone()),
        );
        headers.insert(
            "x-first-death-exchange",
            FieldValue::string(original.exchange.clone()),
        );
    }
    properties.headers = Some(headers);
    let routing_key = queue
        .args()
        .dead_letter_routing_key
        .clone()
        .unwrap_or_else(|| original.routing_key.clone());
    Message::new(
        dlx.to_owned(),
        routing_key,
        properties,
        original.body.clone(),
    )
    .published_at(now_ms)
}

/// Whether a dead letter would go back to a queue it already died in with
/// no rejection anywhere in its history (RabbitMQ's rule against cycles
/// that would loop forever). A letter that died by rejection may cycle: a
/// consumer decided, so the loop is its own.
pub fn is_cycle(message: &Message, reason: DeathReason, target: &str) -> bool {
    if reason == DeathReason::Rejected {
        return false;
    }
    let Some(FieldValue::Array(deaths)) = message
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
    else {
        return false;
    };
    let tables = deaths.iter().filter_map(|d| match d {
        FieldValue::Table(t) => Some(t),
        _ => None,
    });
    let mut seen_target = false;
    for t in tables {
        if t.get("reason").and_then(FieldValue::as_str) == Some("rejected") {
            return false;
        }
        if t.get("queue").and_then(FieldValue::as_str) == Some(target) {
            seen_target = true;
        }
    }
    seen_target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_a_multiple_of_the_first_batch_with_a_floor() {
        let mut work = DeadLetterWork::new();
        work.budget = None;
        work.pending = Vec::new();
        assert!(work.next_round(0).is_empty());
        assert_eq!(work.budget, Some(MIN_BUDGET));
        for _ in 0..MIN_BUDGET {
            assert!(work.spend());
        }
        assert!(!work.spend());
        // Over the budget: an ordinary letter is dropped, one whose queue
        // keeps it (at least once) is only put off.
        let clock = Arc::new(crate::clock::ManualClock::at(0));
        let queue = crate::queue::tests::queue_with(&[], clock);
        let letter = |hold| DeadLetter {
            message: Arc::new(Message::new(
                String::new(),
                String::new(),
                antre_amqp::BasicProperties::default(),
                bytes::Bytes::new(),
            )),
            reason: DeathReason::Rejected,
            hold,
        };
        work.put_off(&letter(Some(3)), &queue);
        assert_eq!(work.dropped, 0);
        work.put_off(&letter(None), &queue);
        assert_eq!(work.dropped, 1);
    }
}
