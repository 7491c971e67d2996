//! Settling deliveries: basic.ack, basic.nack and basic.reject, at once or
//! at the commit of a transaction.

use std::sync::Arc;

use antre_amqp::method::*;

use super::unacked::{Origin, Settled};
use super::{Channel, Mode, PendingSettle, Settle};
use crate::error::BrokerError;
use crate::queue::{Queue, Unsettled};

impl Channel {
    pub(super) fn ack(&mut self, m: BasicAck) -> Result<(), BrokerError> {
        self.settle(PendingSettle {
            tag: m.delivery_tag,
            multiple: m.multiple,
            requeue: None,
        })
    }

    pub(super) fn reject(&mut self, m: BasicReject) -> Result<(), BrokerError> {
        self.settle(PendingSettle {
            tag: m.delivery_tag,
            multiple: false,
            requeue: Some(m.requeue),
        })
    }

    pub(super) fn nack(&mut self, m: BasicNack) -> Result<(), BrokerError> {
        self.settle(PendingSettle {
            tag: m.delivery_tag,
            multiple: m.multiple,
            requeue: Some(m.requeue),
        })
    }

    pub(super) fn settle(&mut self, s: PendingSettle) -> Result<(), BrokerError> {
        // Validate now so an unknown tag fails at once, even in a transaction.
        self.check_tag(s.tag, s.multiple)?;
        if s.requeue.is_some() {
            self.check_stream_settle(s)?;
        }
        if let Mode::Tx { settles, .. } = &mut self.mode {
            settles.push(s);
            self.note_uncommitted();
            return Ok(());
        }
        self.apply_settle(s)
    }

    pub(super) fn check_tag(&self, tag: u64, multiple: bool) -> Result<(), BrokerError> {
        if (multiple && tag == 0) || self.unacked.contains(tag) {
            Ok(())
        } else {
            Err(BrokerError::PreconditionFailed(format!(
                "unknown delivery tag {tag}"
            )))
        }
    }

    /// RabbitMQ 3.10's streams take acks only: a nack or reject of a
    /// stream delivery is refused.
    fn check_stream_settle(&self, s: PendingSettle) -> Result<(), BrokerError> {
        match self.unacked.stream_in(s.tag, s.multiple) {
            Some(stream) => Err(BrokerError::NotImplemented(format!(
                "basic.nack and basic.reject not supported by stream queues {}",
                stream.describe()
            ))),
            None => Ok(()),
        }
    }

    pub(super) fn apply_settle(&mut self, s: PendingSettle) -> Result<(), BrokerError> {
        self.check_tag(s.tag, s.multiple)?;
        let settled = self.unacked.take(s.tag, s.multiple);
        if s.requeue.is_none() {
            let acked: u32 = settled.groups.iter().map(|g| g.count).sum();
            self.stats.ack.add(u64::from(acked));
            for group in &settled.groups {
                if let Some(c) = self.counters(group.origin.queue_kind()) {
                    c.acked.add(u64::from(group.count));
                }
            }
        }
        let how = match s.requeue {
            None => Settle::Ack,
            Some(true) => Settle::Requeue,
            Some(false) => Settle::Reject,
        };
        self.finish(settled, how);
        Ok(())
    }

    /// Settles deliveries with their queues, releases their credit and lets
    /// the queues deliver more.
    ///
    /// The log groups deliveries by consumer, but a queue must hear of all
    /// of them at once: a queue dispatches after each call, so requeueing
    /// one consumer's deliveries before another's of the same channel would
    /// hand them back out of their queue order (RabbitMQ requeues all of a
    /// channel's deliveries from one queue together).
    pub(super) fn finish(&mut self, settled: Settled, how: Settle) {
        let mut remote = Vec::new();
        let mut by_queue: Vec<(Arc<Queue>, Vec<Unsettled>)> = Vec::new();
        for group in settled.groups {
            if let Some(c) = &group.credit {
                c.release(group.count);
                self.credit.release(group.count);
            }
            match group.origin {
                Origin::Queue(queue) => {
                    match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &queue)) {
                        Some((_, entries)) => entries.extend(group.entries),
                        None => by_queue.push((queue, group.entries)),
                    }
                }
                Origin::Remote(channel, ..) => remote.extend(
                    group
                        .remote_tags
                        .into_iter()
                        .map(|t| (Arc::clone(&channel), t)),
                ),
                // A stream keeps its messages: the credit was all.
                Origin::Stream(_) => {}
            }
        }
        for (queue, entries) in by_queue {
            match how {
                Settle::Ack => queue.ack(entries),
                Settle::Requeue => queue.requeue(entries),
                Settle::Reject => queue.reject(entries),
            }
            // Rejections, and requeues past a delivery limit, leave dead letters.
            if how != Settle::Ack {
                for durable in self.ctx.vhost.route_dead_letters(&queue) {
                    self.mark_dirty(durable);
                }
            }
        }
        if !remote.is_empty() {
            self.settle_remote(remote, how);
        }
        self.kick_consumers();
    }
}
