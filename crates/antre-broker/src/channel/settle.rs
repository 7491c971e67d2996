//! Settling deliveries: basic.ack, basic.nack and basic.reject, at once or
//! at the commit of a transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use antre_amqp::method::*;

use super::{Channel, Mode, PendingSettle, Settle, Source, Unacked};
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
            return Ok(());
        }
        self.apply_settle(s)
    }

    pub(super) fn check_tag(&self, tag: u64, multiple: bool) -> Result<(), BrokerError> {
        if (multiple && tag == 0) || self.unacked.contains_key(&tag) {
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
        let covered: Box<dyn Iterator<Item = &Unacked>> = if s.multiple {
            let upto = if s.tag == 0 { u64::MAX } else { s.tag };
            Box::new(self.unacked.range(..=upto).map(|(_, u)| u))
        } else {
            Box::new(self.unacked.get(&s.tag).into_iter())
        };
        for u in covered {
            if let Source::Stream(stream) = &u.source {
                return Err(BrokerError::NotImplemented(format!(
                    "basic.nack and basic.reject not supported by stream queues {}",
                    stream.describe()
                )));
            }
        }
        Ok(())
    }

    pub(super) fn apply_settle(&mut self, s: PendingSettle) -> Result<(), BrokerError> {
        self.check_tag(s.tag, s.multiple)?;
        let settled: Vec<Unacked> = if s.multiple {
            let rest = if s.tag == 0 {
                BTreeMap::new()
            } else {
                self.unacked.split_off(&(s.tag + 1))
            };
            std::mem::replace(&mut self.unacked, rest)
                .into_values()
                .collect()
        } else {
            self.unacked.remove(&s.tag).into_iter().collect()
        };
        if s.requeue.is_none() {
            self.ctx.broker.metrics.acked.add(settled.len() as u64);
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
    pub(super) fn finish(&mut self, settled: Vec<Unacked>, how: Settle) {
        let mut by_queue: Vec<(Arc<Queue>, Vec<Unsettled>)> = Vec::new();
        let mut remote = Vec::new();
        for u in settled {
            if let Some(c) = &u.credit {
                c.release(1);
                self.credit.release(1);
            }
            let (queue, entry) = match u.source {
                Source::Queue { queue, entry } => (queue, entry),
                Source::Remote { channel, tag, .. } => {
                    remote.push((channel, tag));
                    continue;
                }
                // A stream keeps its messages: the credit was all.
                Source::Stream(_) => continue,
            };
            match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &queue)) {
                Some((_, entries)) => entries.push(entry),
                None => by_queue.push((queue, vec![entry])),
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
