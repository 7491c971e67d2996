//! Prefetch windows, the output window of a connection, and consumers as a
//! queue knows them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::{ConnectionId, ConsumerId, DeliverySink};

/// A prefetch window: how many unacked deliveries may be outstanding.
///
/// Shared between a channel and the queues its consumers read from, hence
/// atomics: the channel releases credit on ack, queues take it on dispatch.
#[derive(Debug, Default)]
pub struct Credit {
    limit: AtomicU32,
    in_flight: AtomicU32,
    pub(crate) paused: AtomicBool,
}

impl Credit {
    /// A window of `limit` deliveries (0 = unlimited).
    pub fn new(limit: u32) -> Arc<Credit> {
        let credit = Credit::default();
        credit.limit.store(limit, Ordering::Relaxed);
        Arc::new(credit)
    }

    /// Changes the window; deliveries already out stay out.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Stops or resumes all dispatch through this window (channel.flow).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// The window's size (0 = unlimited).
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Deliveries outstanding.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether no more deliveries may go out until some are settled.
    pub fn is_full(&self) -> bool {
        let limit = self.limit();
        limit != 0 && self.in_flight() >= limit
    }

    pub(crate) fn try_take(&self) -> bool {
        if self.paused.load(Ordering::Relaxed) {
            return false;
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                let limit = self.limit.load(Ordering::Relaxed);
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Returns `n` deliveries' worth of credit (on ack, reject or requeue).
    pub fn release(&self, n: u32) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// The bytes of deliveries one connection may have on their way to its
/// client: handed over by queues and not yet written to the socket.
///
/// Prefetch bounds what a client has *not acked*; this bounds what it has
/// *not read*, for every consumer of the connection, no-ack ones included.
/// Without it, a client that stops reading its socket makes its queues
/// push deliveries into an ever-growing buffer (and a no-ack queue looks
/// empty while the broker holds its whole backlog in that buffer). With it,
/// queues stop dispatching to the connection once the window is full; the
/// messages stay in the queue (counted, pageable to disk) until the
/// connection writes and frees room, which kicks the queues again.
#[derive(Debug)]
pub struct OutputWindow {
    limit: u64,
    in_flight: AtomicU64,
    /// What every connection of the node has in flight together.
    node: Arc<OutputBudget>,
    /// A queue found the window full: whoever frees room must kick the
    /// connection's queues.
    starved: AtomicBool,
}

/// What a delivery costs in an [`OutputWindow`] besides its body: its
/// frames (method, header, property table), roughly.
pub const DELIVERY_OVERHEAD: u64 = 256;

/// The bytes of deliveries all connections of a node may have on their
/// way to their clients together.
///
/// Each connection's [`OutputWindow`] bounds one slow reader; this bounds
/// many at once (a thousand consumers' connections with a full window of
/// 1 MiB each would otherwise hold a gigabyte). Past the budget, a
/// connection whose own output is over its fair share ([`FAIR_SHARE`])
/// gets no more deliveries until it writes: it has bytes in flight, so
/// its own write frees room and kicks its queues; nobody waits on another
/// connection's progress. Connections under their share always get
/// deliveries, so the budget can be exceeded by at most the number of
/// connections times the share.
#[derive(Debug)]
pub struct OutputBudget {
    limit: AtomicU64,
    in_flight: AtomicU64,
}

/// What a connection may always have in flight, whatever the node's
/// [`OutputBudget`]: a few deliveries of a few KiB, enough to keep a client
/// busy while it reads.
pub const FAIR_SHARE: u64 = 64 * 1024;

impl Default for OutputBudget {
    fn default() -> Self {
        OutputBudget {
            limit: AtomicU64::new(u64::MAX),
            in_flight: AtomicU64::new(0),
        }
    }
}

impl OutputBudget {
    /// Sets the budget in bytes (0: unlimited).
    pub fn set_limit(&self, limit: u64) {
        let limit = if limit == 0 { u64::MAX } else { limit };
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes every connection has in flight together.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn exhausted(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) >= self.limit.load(Ordering::Relaxed)
    }
}

impl OutputWindow {
    /// A window of `limit` bytes (0: unlimited) under the node's budget.
    pub fn new(limit: u64, node: Arc<OutputBudget>) -> Arc<OutputWindow> {
        Arc::new(OutputWindow {
            limit: if limit == 0 { u64::MAX } else { limit },
            in_flight: AtomicU64::new(0),
            node,
            starved: AtomicBool::new(false),
        })
    }

    /// Whether another delivery may go out. A delivery larger than the
    /// whole window still goes when nothing else is in flight.
    pub fn has_room(&self) -> bool {
        if self.room() {
            return true;
        }
        self.starved.store(true, Ordering::Release);
        // Room may have been freed between the two loads: look again, so a
        // release that missed the flag cannot strand the queue.
        self.room()
    }

    fn room(&self) -> bool {
        let own = self.in_flight.load(Ordering::Acquire);
        // Refused only with bytes of its own in flight, whose write will
        // release them and kick the queues (see OutputBudget).
        own < self.limit && (own < FAIR_SHARE || !self.node.exhausted())
    }

    /// Counts `bytes` handed over.
    pub fn take(&self, bytes: u64) {
        self.in_flight.fetch_add(bytes, Ordering::AcqRel);
        self.node.in_flight.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Returns `bytes` (written, or given back). Returns whether a queue was
    /// refused meanwhile and should now be kicked.
    pub fn release(&self, bytes: u64) -> bool {
        if bytes == 0 {
            return false;
        }
        let mut released = 0;
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                released = v.min(bytes);
                Some(v - released)
            });
        // Only what this window counted leaves the node's count, so a
        // release larger than what was taken cannot wrap it.
        self.node.in_flight.fetch_sub(released, Ordering::AcqRel);
        self.starved.swap(false, Ordering::AcqRel)
    }

    /// Bytes in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

impl Drop for OutputWindow {
    /// A connection that ends with output unwritten gives it back to the
    /// node (that output is dropped with the connection).
    fn drop(&mut self) {
        let left = *self.in_flight.get_mut();
        self.node.in_flight.fetch_sub(left, Ordering::AcqRel);
    }
}

/// A consumer as its queue knows it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Broker-wide id.
    pub id: ConsumerId,
    /// The connection it belongs to.
    pub connection: ConnectionId,
    /// Its channel number on that connection.
    pub channel: u16,
    /// Tag on its channel.
    pub tag: Arc<str>,
    /// Deliveries count as acked when sent.
    pub no_ack: bool,
    /// No other consumer may use the queue.
    pub exclusive: bool,
    /// The consumer's own prefetch window.
    pub credit: Arc<Credit>,
    /// Its channel's shared window (basic.qos global=true) and flow switch.
    pub channel_credit: Arc<Credit>,
    /// Where its deliveries go.
    pub sink: Arc<dyn DeliverySink>,
    /// Its `x-priority`: consumers of a higher priority get every message
    /// while they have credit; lower ones only when all higher are full.
    pub priority: i64,
}

impl ConsumerSpec {
    /// Takes one delivery's credit from both windows, or none.
    pub(crate) fn try_take_credit(&self) -> bool {
        if !self.sink.has_room() {
            return false;
        }
        if self.no_ack {
            return !self.channel_credit.paused.load(Ordering::Relaxed);
        }
        if !self.channel_credit.try_take() {
            return false;
        }
        if !self.credit.try_take() {
            self.channel_credit.release(1);
            return false;
        }
        true
    }

    /// Whether [`ConsumerSpec::try_take_credit`] would succeed now.
    pub(crate) fn has_room(&self) -> bool {
        let paused = self.channel_credit.paused.load(Ordering::Relaxed);
        if !self.sink.has_room() {
            return false;
        }
        if self.no_ack {
            return !paused;
        }
        !paused && !self.channel_credit.is_full() && !self.credit.is_full()
    }

    pub(crate) fn release_credit(&self) {
        if !self.no_ack {
            self.credit.release(1);
            self.channel_credit.release(1);
        }
    }
}

/// Whether a consumer is sent messages, as RabbitMQ's management API
/// says it (`activity_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// An ordinary consumer: it takes its turn.
    Up,
    /// The active member of a single-active-consumer queue or group.
    SingleActive,
    /// A member of one that waits for its turn.
    Waiting,
}

impl Activity {
    /// RabbitMQ's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Up => "up",
            Activity::SingleActive => "single_active",
            Activity::Waiting => "waiting",
        }
    }

    /// Whether it is sent messages (the API's `active`).
    pub fn active(self) -> bool {
        self != Activity::Waiting
    }
}

/// A consumer, as the management API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Its tag.
    pub tag: String,
    /// Whether it is sent messages.
    pub activity: Activity,
    /// The connection it belongs to.
    pub connection: ConnectionId,
    /// Its channel number.
    pub channel: u16,
    /// Whether deliveries count as acked when sent.
    pub no_ack: bool,
    /// Whether it is the queue's exclusive consumer.
    pub exclusive: bool,
    /// Its prefetch window (0 = unlimited).
    pub prefetch: u32,
    /// Deliveries it has not acked yet.
    pub unacked: u32,
}
