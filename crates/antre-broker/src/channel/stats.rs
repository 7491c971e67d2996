//! A channel's figures, as RabbitMQ's management API shows a channel: its
//! `message_stats` counters and the gauges beside them. The channel writes
//! them as it works (single-writer counters, see [`OwnedCounter`]); the server's
//! registry holds the same `Arc` and reads them when the API asks.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::OwnedCounter;
use crate::queue::Took;

/// What a channel did and holds.
#[derive(Debug, Default)]
pub struct ChannelStats {
    /// Messages published (in a transaction, when published, as RabbitMQ).
    pub publish: OwnedCounter,
    /// Publishes confirmed.
    pub confirm: OwnedCounter,
    /// Mandatory publishes no queue took, returned.
    pub return_unroutable: OwnedCounter,
    /// Other publishes no queue took, dropped.
    pub drop_unroutable: OwnedCounter,
    /// Deliveries to its consumers that ack.
    pub deliver: OwnedCounter,
    /// Deliveries to its consumers that do not.
    pub deliver_no_ack: OwnedCounter,
    /// basic.get answers to ack.
    pub get: OwnedCounter,
    /// basic.get answers acked on the way.
    pub get_no_ack: OwnedCounter,
    /// basic.get answered empty.
    pub get_empty: OwnedCounter,
    /// Of the deliveries and gets, those redelivered.
    pub redeliver: OwnedCounter,
    /// Messages acked.
    pub ack: OwnedCounter,
    /// In confirm mode: the last publish's sequence number, and the
    /// number up to which every publish was confirmed or nacked.
    confirm_published: AtomicU64,
    confirm_settled: AtomicU64,
    uncommitted_messages: AtomicU64,
    uncommitted_acks: AtomicU64,
    prefetch: AtomicU64,
    global_prefetch: AtomicU64,
}

impl ChannelStats {
    /// Counts a delivery or basic.get answer.
    pub(crate) fn delivered(&self, took: Took, redelivered: bool) {
        match took {
            Took::Consume { no_ack: false } => self.deliver.inc(),
            Took::Consume { no_ack: true } => self.deliver_no_ack.inc(),
            Took::Get { no_ack: false } => self.get.inc(),
            Took::Get { no_ack: true } => self.get_no_ack.inc(),
        }
        if redelivered {
            self.redeliver.inc();
        }
    }

    /// Publishes in confirm mode not confirmed (or nacked) yet.
    pub fn unconfirmed(&self) -> u64 {
        let settled = self.confirm_settled.load(Ordering::Relaxed);
        self.confirm_published
            .load(Ordering::Relaxed)
            .saturating_sub(settled)
    }

    pub(crate) fn published_seq(&self, seq: u64) {
        self.confirm_published.store(seq, Ordering::Relaxed);
    }

    pub(crate) fn settled_up_to(&self, seq: u64) {
        self.confirm_settled.store(seq, Ordering::Relaxed);
    }

    /// Publishes and settles in the open transaction.
    pub fn uncommitted(&self) -> (u64, u64) {
        (
            self.uncommitted_messages.load(Ordering::Relaxed),
            self.uncommitted_acks.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn set_uncommitted(&self, messages: usize, acks: usize) {
        self.uncommitted_messages
            .store(messages as u64, Ordering::Relaxed);
        self.uncommitted_acks.store(acks as u64, Ordering::Relaxed);
    }

    /// The prefetch of its consumers created from now on (basic.qos
    /// global=false) and its own window (global=true); 0 is no limit.
    pub fn prefetch(&self) -> (u64, u64) {
        (
            self.prefetch.load(Ordering::Relaxed),
            self.global_prefetch.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn set_prefetch(&self, consumers: u32, global: u32) {
        self.prefetch.store(u64::from(consumers), Ordering::Relaxed);
        self.global_prefetch
            .store(u64::from(global), Ordering::Relaxed);
    }

    /// Its `message_stats` counters by RabbitMQ's names
    /// ([`ChannelStats::NAMES`]), with `deliver_get` (every delivery and
    /// get) among them.
    pub fn counters(&self) -> [(&'static str, u64); 12] {
        let deliver_get =
            self.deliver.get() + self.deliver_no_ack.get() + self.get.get() + self.get_no_ack.get();
        let values = [
            self.publish.get(),
            self.confirm.get(),
            self.return_unroutable.get(),
            self.drop_unroutable.get(),
            deliver_get,
            self.deliver.get(),
            self.deliver_no_ack.get(),
            self.get.get(),
            self.get_no_ack.get(),
            self.get_empty.get(),
            self.redeliver.get(),
            self.ack.get(),
        ];
        std::array::from_fn(|i| (Self::NAMES[i], values[i]))
    }

    /// The names of [`ChannelStats::counters`], in their order.
    pub const NAMES: [&'static str; 12] = [
        "publish",
        "confirm",
        "return_unroutable",
        "drop_unroutable",
        "deliver_get",
        "deliver",
        "deliver_no_ack",
        "get",
        "get_no_ack",
        "get_empty",
        "redeliver",
        "ack",
    ];
}
