//! A channel's figures, as RabbitMQ's management API shows a channel: its
//! `message_stats` counters and the gauges beside them. The channel writes
//! them as it works (single-writer counters, see [`OwnedCounter`]); the server's
//! registry holds the same `Arc` and reads them when the API asks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

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
    /// Per exchange it published to, what went in and out. A map behind a
    /// lock rather than counters on the exchange: a busy exchange's many
    /// publishers would share one counter's cache line on every publish.
    /// The channel keeps its last one at hand (see [`ExchangeFlow`]), so
    /// the lock is taken when it changes exchange, not per publish.
    exchanges: Mutex<HashMap<String, Arc<ExchangeFlow>>>,
}

/// A vhost's book of what its channels published through each exchange:
/// the open channels' figures, and what closed ones left. An exchange's
/// deletion forgets its figures here at once (one declared again with the
/// name starts from nothing, as in RabbitMQ).
#[derive(Debug, Default)]
pub struct ExchangeFlows(Mutex<FlowBook>);

#[derive(Debug, Default)]
struct FlowBook {
    /// The open channels, by address.
    open: HashMap<usize, Weak<ChannelStats>>,
    /// Per exchange, what closed channels and the management API
    /// published there, in and out.
    closed: HashMap<String, [u64; 2]>,
}

impl ExchangeFlows {
    /// Counts an open channel's publishes from now on.
    pub(crate) fn join(&self, stats: &Arc<ChannelStats>) {
        let key = Arc::as_ptr(stats) as usize;
        self.0.lock().open.insert(key, Arc::downgrade(stats));
    }

    /// Keeps what a closing channel published.
    pub(crate) fn leave(&self, stats: &Arc<ChannelStats>) {
        let mut book = self.0.lock();
        if book.open.remove(&(Arc::as_ptr(stats) as usize)).is_some() {
            stats.add_flows_to(&mut book.closed);
        }
    }

    /// Counts a publish made without a channel (the management API's,
    /// which RabbitMQ makes over one) that `routed` queues took.
    pub fn count(&self, exchange: &str, routed: usize) {
        add_flow(&mut self.0.lock().closed, exchange, [1, routed as u64]);
    }

    /// Forgets what was published through `exchange` (deleted).
    pub(crate) fn forget(&self, exchange: &str) {
        let mut book = self.0.lock();
        book.closed.remove(exchange);
        book.open.retain(|_, stats| match stats.upgrade() {
            Some(stats) => {
                stats.forget_exchange(exchange);
                true
            }
            None => false,
        });
    }

    /// Per exchange published to, messages in and copies out.
    pub fn totals(&self) -> HashMap<String, [u64; 2]> {
        let book = self.0.lock();
        let mut all = book.closed.clone();
        for stats in book.open.values().filter_map(Weak::upgrade) {
            stats.add_flows_to(&mut all);
        }
        all
    }
}

/// Adds `flow` (in, out) to `exchange`'s sum in `sums`.
fn add_flow(sums: &mut HashMap<String, [u64; 2]>, exchange: &str, flow: [u64; 2]) {
    let sum = match sums.get_mut(exchange) {
        Some(sum) => sum,
        None => sums.entry(exchange.to_owned()).or_default(),
    };
    sum[0] += flow[0];
    sum[1] += flow[1];
}

/// What one channel published through one exchange: RabbitMQ's exchange
/// `publish_in` and `publish_out`, which the management API adds up over
/// every channel.
#[derive(Debug)]
pub struct ExchangeFlow {
    exchange: String,
    /// Messages published to the exchange.
    pub publish_in: OwnedCounter,
    /// Their copies it routed to queues (a message three queues took
    /// counts three).
    pub publish_out: OwnedCounter,
    /// Dropped from its channel's map (the exchange was deleted): the
    /// channel takes a new one if it publishes there again.
    forgotten: AtomicBool,
}

impl ExchangeFlow {
    /// Whether this is the current flow of `exchange`.
    pub(crate) fn is_for(&self, exchange: &str) -> bool {
        self.exchange == exchange && !self.forgotten.load(Ordering::Relaxed)
    }
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

    /// The flow of `exchange`, made at its first publish there.
    pub(crate) fn flow(&self, exchange: &str) -> Arc<ExchangeFlow> {
        let mut flows = self.exchanges.lock();
        if let Some(flow) = flows.get(exchange) {
            return Arc::clone(flow);
        }
        let flow = Arc::new(ExchangeFlow {
            exchange: exchange.to_owned(),
            publish_in: OwnedCounter::default(),
            publish_out: OwnedCounter::default(),
            forgotten: AtomicBool::new(false),
        });
        flows.insert(exchange.to_owned(), Arc::clone(&flow));
        flow
    }

    /// Adds what it published through each exchange, in and out, to
    /// `sums`.
    fn add_flows_to(&self, sums: &mut HashMap<String, [u64; 2]>) {
        for (name, flow) in self.exchanges.lock().iter() {
            // Made for a publish the exchange refused (no such exchange).
            if flow.publish_in.get() > 0 {
                add_flow(sums, name, [flow.publish_in.get(), flow.publish_out.get()]);
            }
        }
    }

    /// Forgets what it published through `exchange` (deleted); its
    /// channel takes a new flow if it publishes there again.
    fn forget_exchange(&self, exchange: &str) {
        if let Some(flow) = self.exchanges.lock().remove(exchange) {
            flow.forgotten.store(true, Ordering::Relaxed);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(stats: &ChannelStats, exchange: &str, routed: u64) {
        let flow = stats.flow(exchange);
        flow.publish_in.inc();
        flow.publish_out.add(routed);
    }

    #[test]
    fn a_vhosts_book_adds_open_and_closed_channels_and_forgets_a_deleted_exchange() {
        let book = ExchangeFlows::default();
        let (a, b) = (
            Arc::new(ChannelStats::default()),
            Arc::new(ChannelStats::default()),
        );
        book.join(&a);
        book.join(&b);
        publish(&a, "x", 2);
        publish(&b, "x", 2);
        publish(&b, "y", 0);
        // A flow made for a publish the exchange refused shows nothing.
        let _ = a.flow("missing");
        book.count("x", 1);
        let totals = book.totals();
        assert_eq!(totals.get("x"), Some(&[3, 5]));
        assert_eq!(totals.get("y"), Some(&[1, 0]));
        assert_eq!(totals.get("missing"), None);

        book.leave(&b);
        book.leave(&b);
        assert_eq!(book.totals(), totals, "a closed channel's are kept, once");

        let held = a.flow("x");
        book.forget("x");
        assert!(!held.is_for("x"), "the channel takes a new flow");
        publish(&a, "x", 1);
        let totals = book.totals();
        assert_eq!(totals.get("x"), Some(&[1, 1]));
        assert_eq!(totals.get("y"), Some(&[1, 0]));
    }
}
