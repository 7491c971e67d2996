//! Counters and histograms the broker keeps for monitoring.
//!
//! Plain atomics, updated on the hot path without locks; the server renders
//! them for Prometheus and the management API. Broker-wide counters live on
//! [`BrokerMetrics`] so they stay monotonic when queues are deleted.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::queue::{DeathReason, QueueKind};

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter one owner writes (a channel's figures): a plain load and
/// store rather than the locked add a counter many threads bump needs, so
/// its owner pays no more than for a field of its own. Readers on other
/// threads see it as of its last store. Its owner moving between threads
/// (a task) is fine: the move orders its stores before its next loads.
#[derive(Debug, Default)]
pub struct OwnedCounter(AtomicU64);

impl OwnedCounter {
    /// Adds one (its owner only).
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n` (its owner only).
    pub fn add(&self, n: u64) {
        let now = self.0.load(Ordering::Relaxed);
        self.0.store(now.wrapping_add(n), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value (never below 0).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed).max(0) as u64
    }
}

/// Upper bounds (bytes) of message size buckets: RabbitMQ's, so that its
/// Grafana dashboards' `le` selectors find them.
pub const SIZE_BUCKETS: [u64; 8] = [
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
];

/// A histogram of message body sizes.
#[derive(Debug, Default)]
pub struct SizeHistogram {
    buckets: [AtomicU64; SIZE_BUCKETS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

impl SizeHistogram {
    /// Records a message of `bytes`.
    pub fn observe(&self, bytes: u64) {
        if let Some(i) = SIZE_BUCKETS.iter().position(|b| bytes <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The histogram now, with cumulative buckets.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let buckets = SIZE_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (*bound as f64, running)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed) as f64,
        }
    }
}

/// Upper bounds (seconds) of latency buckets, from 50 µs to 5 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// A latency histogram with Prometheus semantics (cumulative on render).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A point-in-time copy of a histogram.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or below it), cumulative.
    pub buckets: Vec<(f64, u64)>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// The histogram now, with cumulative buckets.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (*bound, running)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Login attempts over one protocol, as RabbitMQ's
/// `rabbitmq_auth_attempts_*` count them: every set of credentials
/// checked (an AMQP or stream connection's login, each HTTP request's).
#[derive(Debug, Default)]
pub struct AuthAttempts {
    /// Accepted.
    pub succeeded: Counter,
    /// Refused (an unknown user, a wrong password, a loopback-only user
    /// from elsewhere, an EXTERNAL login without a usable certificate).
    pub failed: Counter,
}

impl AuthAttempts {
    /// Counts one attempt.
    pub fn record(&self, succeeded: bool) {
        if succeeded {
            self.succeeded.inc();
        } else {
            self.failed.inc();
        }
    }
}

/// What became of a message that left its queue for a dead-letter reason,
/// as RabbitMQ labels it (`dead_letter_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterMode {
    /// The queue has no dead-letter exchange, or the exchange is gone:
    /// the message was dropped.
    Disabled,
    /// Routed to the dead-letter exchange as it left.
    AtMostOnce,
    /// Kept by its quorum queue until the queues it was routed to hold it.
    AtLeastOnce,
}

impl DeadLetterMode {
    /// Every mode, in the order RabbitMQ lists their series (by label).
    pub const ALL: [DeadLetterMode; 3] = [
        DeadLetterMode::AtLeastOnce,
        DeadLetterMode::AtMostOnce,
        DeadLetterMode::Disabled,
    ];

    /// RabbitMQ's label value.
    pub fn label(self) -> &'static str {
        match self {
            DeadLetterMode::Disabled => "disabled",
            DeadLetterMode::AtMostOnce => "at_most_once",
            DeadLetterMode::AtLeastOnce => "at_least_once",
        }
    }
}

/// Messages that left a queue for a dead-letter reason, by the queue's
/// type, [`DeadLetterMode`] and reason: RabbitMQ's
/// `rabbitmq_global_messages_dead_lettered_*` counters, which count a
/// dropped message (no dead-letter exchange) as well as a routed one.
/// Streams never dead-letter.
#[derive(Debug, Default)]
pub struct DeadLettered {
    /// Indexed by queue type (classic, quorum), mode, reason.
    counts: [[[Counter; 4]; 3]; 2],
    /// At-least-once dead letters every target queue held.
    pub confirmed: Counter,
}

impl DeadLettered {
    fn slot(&self, kind: QueueKind, mode: DeadLetterMode, reason: DeathReason) -> Option<&Counter> {
        let kind = match kind {
            QueueKind::Classic => 0,
            QueueKind::Quorum => 1,
            QueueKind::Stream => return None,
        };
        let mode = match mode {
            DeadLetterMode::Disabled => 0,
            DeadLetterMode::AtMostOnce => 1,
            DeadLetterMode::AtLeastOnce => 2,
        };
        let reason = match reason {
            DeathReason::MaxLen => 0,
            DeathReason::Expired => 1,
            DeathReason::Rejected => 2,
            DeathReason::DeliveryLimit => 3,
        };
        Some(&self.counts[kind][mode][reason])
    }

    /// Counts `n` messages of a queue of type `kind` that left it.
    pub fn count(&self, kind: QueueKind, mode: DeadLetterMode, reason: DeathReason, n: u64) {
        if let Some(c) = self.slot(kind, mode, reason) {
            c.add(n);
        }
    }

    /// The count so far.
    pub fn get(&self, kind: QueueKind, mode: DeadLetterMode, reason: DeathReason) -> u64 {
        self.slot(kind, mode, reason).map_or(0, Counter::get)
    }
}

/// Broker-wide message counters and latencies.
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    /// Logins over AMQP 0-9-1.
    pub auth_amqp: AuthAttempts,
    /// Logins to the management API (each request's credentials).
    pub auth_http: AuthAttempts,
    /// Logins over RabbitMQ's stream protocol.
    pub auth_stream: AuthAttempts,
    /// Messages published (accepted from clients).
    pub published: Counter,
    /// Messages routed to no queue.
    pub unroutable: Counter,
    /// Messages returned to publishers (mandatory, unroutable).
    pub returned: Counter,
    /// Publisher confirms sent (messages covered).
    pub confirmed: Counter,
    /// Dead letters dropped because one operation caused more than the
    /// dead-letter budget allows (see [`crate::dead_letter`]).
    pub dead_letters_dropped: Counter,
    /// Messages that left their queues for a dead-letter reason (shared
    /// with every queue, which counts into it).
    pub dead_lettered: Arc<DeadLettered>,
    /// Messages the broker routed itself (dead letters, delayed releases)
    /// to a queue on another cluster node that did not get there (its
    /// node unreachable or failing); each is logged.
    pub internal_forwards_failed: Counter,
    /// Messages forwarded to a quorum queue's leader that this node sent
    /// again (to the next leader, or the same node) because the leader
    /// died or no longer led the queue with them on their way.
    pub forwards_sent_again: Counter,
    /// Messages published on channels in confirm mode.
    pub received_confirm: Counter,
    /// Deliveries and acks from classic queues.
    pub classic: DeliveryCounters,
    /// Deliveries and acks from quorum queues.
    pub quorum: DeliveryCounters,
    /// Deliveries and acks from streams.
    pub stream: DeliveryCounters,
    /// What RabbitMQ's stream protocol carried (`protocol="stream"`): the
    /// counters above are AMQP 0-9-1's.
    pub stream_protocol: StreamProtocolCounters,
    /// Open channels that have published at least once (RabbitMQ's
    /// publishers).
    pub publishers: Gauge,
    /// Body sizes of published messages.
    pub message_size: SizeHistogram,
    /// Time of each fsync round of the store.
    pub fsync_seconds: Histogram,
    /// Time from a publish to its confirm, for confirms that waited for the disk.
    pub confirm_seconds: Histogram,
}

/// What the stream protocol carried, as RabbitMQ's stream plugin counts it:
/// every publish there asks for a confirm, and its deliveries come from
/// streams only.
#[derive(Debug, Default)]
pub struct StreamProtocolCounters {
    /// Messages published (each with a confirm asked for).
    pub received: Counter,
    /// Messages confirmed to publishers.
    pub confirmed: Counter,
    /// Messages delivered to consumers.
    pub delivered: Counter,
}

/// What consumers got from one type of queue and settled, counted on the
/// node of their channel: RabbitMQ keeps these (`rabbitmq_global_messages_*`)
/// per queue type, so a dashboard tells classic, quorum and stream traffic
/// apart.
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    /// Deliveries to consumers and basic.get answers.
    pub delivered: Counter,
    /// Deliveries that were redeliveries.
    pub redelivered: Counter,
    /// Messages acknowledged by consumers.
    pub acked: Counter,
    /// Deliveries to consumers that acknowledge automatically (no_ack).
    pub delivered_consume_auto_ack: Counter,
    /// Deliveries to consumers that acknowledge explicitly.
    pub delivered_consume_manual_ack: Counter,
    /// basic.get answers with a message, no_ack.
    pub delivered_get_auto_ack: Counter,
    /// basic.get answers with a message to acknowledge.
    pub delivered_get_manual_ack: Counter,
    /// basic.get answers with no message.
    pub get_empty: Counter,
}

impl BrokerMetrics {
    /// Login attempts by protocol, under RabbitMQ's protocol names.
    pub fn auth_attempts(&self) -> [(&'static str, &AuthAttempts); 3] {
        [
            ("amqp091", &self.auth_amqp),
            ("http", &self.auth_http),
            ("stream", &self.auth_stream),
        ]
    }

    /// The counters of queues of type `kind`.
    pub fn of(&self, kind: QueueKind) -> &DeliveryCounters {
        match kind {
            QueueKind::Classic => &self.classic,
            QueueKind::Quorum => &self.quorum,
            QueueKind::Stream => &self.stream,
        }
    }

    /// Each queue type with its counters, in RabbitMQ's order.
    pub fn by_queue_type(&self) -> [(QueueKind, &DeliveryCounters); 3] {
        [
            (QueueKind::Classic, &self.classic),
            (QueueKind::Quorum, &self.quorum),
            (QueueKind::Stream, &self.stream),
        ]
    }

    /// One counter summed over every queue type.
    pub fn total(&self, counter: impl Fn(&DeliveryCounters) -> &Counter) -> u64 {
        self.by_queue_type()
            .iter()
            .map(|(_, c)| counter(c).get())
            .sum()
    }
}

/// Per-queue message counters.
#[derive(Debug, Default)]
pub struct QueueMetrics {
    /// Messages enqueued.
    pub published: Counter,
    /// Messages delivered or fetched.
    pub delivered: Counter,
    /// Redeliveries among them.
    pub redelivered: Counter,
    /// Messages acked (or rejected without requeue).
    pub acked: Counter,
    /// Of the deliveries, those to consumers that do not ack.
    pub consumed_no_ack: Counter,
    /// Of the deliveries, basic.get answers to ack.
    pub got: Counter,
    /// Of the deliveries, basic.get answers acked on the way.
    pub got_no_ack: Counter,
    /// basic.get answered with no message.
    pub get_empty: Counter,
}

impl QueueMetrics {
    /// Deliveries to consumers that ack (RabbitMQ's `deliver`).
    pub fn consumed(&self) -> u64 {
        self.delivered
            .get()
            .saturating_sub(self.consumed_no_ack.get() + self.got.get() + self.got_no_ack.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_buckets_are_cumulative_and_inclusive() {
        let h = SizeHistogram::default();
        for bytes in [0, 100, 101, 200_000_000] {
            h.observe(bytes);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (100.0, 2));
        assert_eq!(s.buckets[1], (1000.0, 3));
        assert_eq!(s.buckets.last().unwrap().1, 3);
        assert_eq!(s.sum, 200_000_201.0);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(10));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.000_05, 1));
        assert_eq!(s.buckets[4], (0.001, 2));
        assert_eq!(
            s.buckets.last().unwrap().1,
            2,
            "10 s is beyond the last bucket, counted only in +Inf"
        );
        assert!((s.sum - 10.00073).abs() < 1e-6);
    }
}
