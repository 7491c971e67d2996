//! Delayed messages, compatible with RabbitMQ's delayed-message plugin: an
//! exchange of type `x-delayed-message` routes like its `x-delayed-type`,
//! but holds each message with an `x-delay` header (ms) until it is due.
//!
//! Unlike the plugin, which keeps its schedule in memory (Mnesia), a durable
//! delayed exchange writes every held message to a store: the schedule
//! survives a restart, and past a memory limit only (due time, store
//! position) stays in memory, so millions can wait without their bodies in
//! RAM. A message leaves the store only after the queues it was routed to
//! have synced it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use antre_store::{QueueStore, SegmentPosition, StoreOptions};
use parking_lot::Mutex;

use crate::error::BrokerError;
use crate::message::Message;

#[derive(Debug)]
struct Held {
    message: Option<Arc<Message>>,
    pos: Option<SegmentPosition>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Held messages by (due time, arrival), so equal due times keep order.
    schedule: BTreeMap<(u64, u64), Held>,
    next_seq: u64,
    store: Option<QueueStore>,
    in_memory: u64,
}

impl Inner {
    /// Adds a message to the schedule; past `memory_limit` a stored one
    /// keeps only its position in memory.
    fn hold(&mut self, message: Arc<Message>, pos: Option<SegmentPosition>, memory_limit: u64) {
        let keep = pos.is_none() || self.in_memory < memory_limit;
        if keep {
            self.in_memory += message.memory_size();
        }
        let key = (due_of(&message), self.next_seq);
        self.next_seq += 1;
        self.schedule.insert(
            key,
            Held {
                message: keep.then_some(message),
                pos,
            },
        );
    }
}

/// The schedule of one delayed exchange.
#[derive(Debug)]
pub struct DelayedMessages {
    label: String,
    memory_limit: u64,
    inner: Mutex<Inner>,
}

/// A message that came due, with what is needed to drop it from the store
/// once it was routed.
#[derive(Debug)]
pub struct Due {
    /// The message.
    pub message: Arc<Message>,
    pos: Option<SegmentPosition>,
}

/// The delay a message asks for: its `x-delay` header in ms, if positive.
pub fn delay_of(message: &Message) -> Option<u64> {
    let v = message.properties.headers.as_ref()?.get("x-delay")?;
    let ms = v
        .as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))?;
    u64::try_from(ms).ok().filter(|ms| *ms > 0)
}

fn due_of(message: &Message) -> u64 {
    message
        .published_at
        .saturating_add(delay_of(message).unwrap_or(0))
}

impl DelayedMessages {
    /// An in-memory schedule.
    pub fn new(label: String) -> DelayedMessages {
        DelayedMessages {
            label,
            memory_limit: u64::MAX,
            inner: Mutex::default(),
        }
    }

    /// A schedule kept in the store in `dir`, recovering what it held.
    pub fn open_durable(
        label: String,
        dir: &Path,
        options: StoreOptions,
        memory_limit: u64,
    ) -> Result<DelayedMessages, BrokerError> {
        let delayed = DelayedMessages {
            label,
            memory_limit,
            inner: Mutex::default(),
        };
        {
            let mut inner = delayed.inner.lock();
            let inner = &mut *inner;
            let mut bad = Vec::new();
            let (store, _) = QueueStore::open(dir, options, |pos, payload| {
                match Message::from_record(payload) {
                    Ok(m) => inner.hold(Arc::new(m), Some(pos), memory_limit),
                    Err(e) => {
                        tracing::error!(%pos, "dropping undecodable delayed message: {e}");
                        bad.push(pos);
                    }
                }
            })
            .map_err(|e| BrokerError::Internal(format!("opening {}: {e}", delayed.label)))?;
            inner.store = Some(store);
            if let Some(store) = inner.store.as_mut() {
                for pos in bad {
                    let _ = store.ack(pos);
                }
            }
        }
        Ok(delayed)
    }

    /// Holds a message until `published_at + x-delay`. Returns whether it
    /// was written to the store (so a confirm must wait for a sync).
    pub fn schedule(&self, message: Arc<Message>) -> Result<bool, BrokerError> {
        let mut inner = self.inner.lock();
        let pos = match inner.store.as_mut() {
            Some(store) => Some(
                store
                    .append(message.record())
                    .map_err(|e| BrokerError::Internal(format!("{}: {e}", self.label)))?,
            ),
            None => None,
        };
        inner.hold(message, pos, self.memory_limit);
        Ok(pos.is_some())
    }

    /// Takes the messages whose due millisecond has passed at `now`, in
    /// due order, reading bodies back from disk where needed. They stay in
    /// the store until [`DelayedMessages::release`].
    ///
    /// Past, not reached: the clock reads whole milliseconds, so a message
    /// published at 10.9 ms was stamped 10, and released at a reading of
    /// its due time it arrived up to a millisecond before its delay was
    /// over (seen in CI: an `x-delay` of 300 ms delivered less than 300
    /// ms after it was published).
    pub fn take_due(&self, now: u64) -> Vec<Due> {
        let mut inner = self.inner.lock();
        let later = inner.schedule.split_off(&(now, 0));
        let due = std::mem::replace(&mut inner.schedule, later);
        let mut out = Vec::with_capacity(due.len());
        for (_, held) in due {
            let message = match held.message {
                Some(m) => {
                    inner.in_memory = inner.in_memory.saturating_sub(m.memory_size());
                    m
                }
                None => {
                    let read = held.pos.and_then(|pos| {
                        let store = inner.store.as_ref()?;
                        let raw = store
                            .read(pos)
                            .map_err(|e| tracing::error!(%pos, "dropping unreadable delayed message: {e}"))
                            .ok()?;
                        Message::from_record(&raw).ok()
                    });
                    match read {
                        Some(m) => Arc::new(m),
                        None => continue,
                    }
                }
            };
            out.push(Due {
                message,
                pos: held.pos,
            });
        }
        out
    }

    /// Drops routed messages from the store.
    pub fn release(&self, due: &[Due]) {
        let mut inner = self.inner.lock();
        if let Some(store) = inner.store.as_mut() {
            for d in due {
                if let Some(pos) = d.pos {
                    if let Err(e) = store.ack(pos) {
                        tracing::warn!(%pos, "could not drop released delayed message: {e}");
                    }
                }
            }
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.inner.lock().schedule.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::durable::OwnsStore for DelayedMessages {
    fn store_label(&self) -> &str {
        &self.label
    }

    fn with_store<R>(&self, f: impl FnOnce(&mut Option<QueueStore>) -> R) -> R {
        f(&mut self.inner.lock().store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::OwnsStore;
    use antre_amqp::{BasicProperties, FieldTable, FieldValue};

    fn delayed(body: &str, at: u64, delay: i64) -> Arc<Message> {
        let headers: FieldTable = [("x-delay", FieldValue::I64(delay))].into_iter().collect();
        Arc::new(
            Message::new(
                "d".into(),
                "k".into(),
                BasicProperties {
                    headers: Some(headers),
                    delivery_mode: Some(2),
                    ..Default::default()
                },
                bytes::Bytes::copy_from_slice(body.as_bytes()),
            )
            .published_at(at),
        )
    }

    fn bodies(due: &[Due]) -> Vec<String> {
        due.iter()
            .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
            .collect()
    }

    #[test]
    fn messages_come_due_in_due_order() {
        let d = DelayedMessages::new("test".into());
        d.schedule(delayed("late", 1000, 500)).unwrap();
        d.schedule(delayed("early", 1000, 100)).unwrap();
        d.schedule(delayed("early too", 1000, 100)).unwrap();
        assert!(d.take_due(1099).is_empty());
        // Stamped 1000 may mean 1000.9: at a reading of 1100 the delay may
        // not be over yet.
        assert!(d.take_due(1100).is_empty());
        assert_eq!(bodies(&d.take_due(1101)), ["early", "early too"]);
        assert_eq!(bodies(&d.take_due(5000)), ["late"]);
        assert!(d.is_empty());
    }

    #[test]
    fn schedule_survives_restart_without_bodies_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        {
            let d =
                DelayedMessages::open_durable("t".into(), dir.path(), StoreOptions::default(), 0)
                    .unwrap();
            for i in 0..100 {
                assert!(d
                    .schedule(delayed(&format!("m{i}"), 1000, 1000 + i))
                    .unwrap());
            }
            let due = d.take_due(2010);
            assert_eq!(due.len(), 10);
            d.release(&due);
            d.close_store();
        }
        let d = DelayedMessages::open_durable("t".into(), dir.path(), StoreOptions::default(), 0)
            .unwrap();
        assert_eq!(d.len(), 90, "released ones are gone, the rest wait");
        assert_eq!(
            d.inner.lock().in_memory,
            0,
            "a zero memory limit keeps bodies on disk"
        );
        let due = d.take_due(u64::MAX);
        assert_eq!(bodies(&due)[0], "m10");
        assert_eq!(due.len(), 90);
    }
}
