//! Settling deliveries: basic.ack, basic.nack and basic.reject, at once or
//! at the commit of a transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use antre_amqp::method::*;

use super::{Channel, Mode, PendingSettle, Settle, Unacked};
use crate::error::BrokerError;
use crate::queue::{Entry, Queue};

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
        let mut by_queue: Vec<(Arc<Queue>, Vec<Entry>)> = Vec::new();
        for u in settled {
            if let Some(c) = &u.credit {
                c.release(1);
                self.credit.release(1);
            }
            match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
                Some((_, entries)) => entries.push(u.entry),
                None => by_queue.push((u.queue, vec![u.entry])),
            }
        }
        for (queue, entries) in by_queue {
            match how {
                Settle::Ack => queue.ack(&entries),
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
        self.kick_consumers();
    }
}
