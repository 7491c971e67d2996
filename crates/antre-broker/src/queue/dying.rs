//! At-least-once dead-lettering (`x-dead-letter-strategy: at-least-once`,
//! quorum queues): a dead-lettered message stays in its queue, out of
//! consumers' reach, until every queue its letter reached holds it.
//!
//! The queue only keeps the messages and their stage
//! ([`super::state::DyingStage`]); the vhost routes the letters and reports
//! back ([`Queue::dead_letter_routed`]), and the broker's timer checks
//! whether the targets hold them yet and routes again those that went
//! nowhere ([`crate::vhost::Vhost::tick`]). As in RabbitMQ's dead-letter
//! worker, a letter may reach a target twice (a retry after a failover),
//! never zero times while its queue exists.

use std::sync::Arc;

use super::state::{DyingStage, QueueState, DYING_RETRY_MAX_MS};
use super::{DeadLetter, Queue};
use crate::durable::Durable;

impl Queue {
    /// The router's report on a held dead letter: `held_by` the stores
    /// (and commits, and forwards) that must complete before the message
    /// may go, or None if it reached no queue (no route, no exchange, a
    /// target refused it): it is routed again later, waiting longer after
    /// each failure.
    pub fn dead_letter_routed(&self, seq: u64, held_by: Option<Vec<Arc<dyn Durable>>>) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        let Some(dying) = st.dying.get_mut(&seq) else {
            return;
        };
        match held_by {
            Some(stores) if stores.is_empty() => st.settle_dying(seq, &self.name),
            Some(stores) => dying.stage = DyingStage::Routed(stores),
            None => {
                dying.stage = DyingStage::RetryAt(now + dying.backoff);
                dying.backoff = (dying.backoff * 2).min(DYING_RETRY_MAX_MS);
                tracing::debug!(
                    queue = self.name,
                    "a dead letter reached no queue; it stays in the queue and is retried"
                );
            }
        }
        drop(st);
        self.mark_timed();
    }

    /// The dead letters routed and not known to be held yet, with what
    /// each waits for.
    pub fn dying_in_flight(&self) -> Vec<(u64, Vec<Arc<dyn Durable>>)> {
        let st = self.state.lock();
        st.dying
            .iter()
            .filter_map(|(&seq, d)| match &d.stage {
                DyingStage::Routed(stores) => Some((seq, stores.clone())),
                _ => None,
            })
            .collect()
    }

    /// What became of dead letters in flight: held (the message goes for
    /// good) or lost on the way (routed again at once).
    pub fn dying_settled(&self, results: impl IntoIterator<Item = (u64, bool)>) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        for (seq, held) in results {
            if held {
                st.settle_dying(seq, &self.name);
            } else if let Some(d) = st.dying.get_mut(&seq) {
                d.stage = DyingStage::RetryAt(now);
            }
        }
    }

    /// Hands the dead letters whose retry is due to the queue's dead
    /// letters to route ([`Queue::take_dead_letters`]); returns how many.
    pub fn dying_due(&self, now: u64) -> usize {
        let mut st = self.state.lock();
        let QueueState { dying, dead, .. } = &mut *st;
        let mut n = 0;
        for (&seq, d) in dying.iter_mut() {
            if matches!(d.stage, DyingStage::RetryAt(at) if at <= now) {
                d.stage = DyingStage::Routing;
                dead.push(DeadLetter {
                    message: Arc::clone(&d.message),
                    reason: d.reason,
                    hold: Some(seq),
                });
                n += 1;
            }
        }
        n
    }

    /// Messages dead-lettered at least once that the queue still keeps
    /// (RabbitMQ's `messages_dlx`), and their body bytes.
    pub fn dying(&self) -> (u32, u64) {
        let st = self.state.lock();
        (st.dying.len() as u32, st.dying_bytes)
    }
}

impl QueueState {
    /// At-least-once dead-lettering was turned off (a policy changed): the
    /// kept messages go, those waiting for a retry dead-lettered at most
    /// once, as the queue now does.
    pub(super) fn release_dying(&mut self, queue: &str) {
        let dlx = self.args.dead_letter_exchange.is_some();
        for (seq, d) in std::mem::take(&mut self.dying) {
            if dlx && matches!(d.stage, DyingStage::RetryAt(_)) {
                self.dead.push(DeadLetter {
                    message: d.message,
                    reason: d.reason,
                    hold: None,
                });
            }
            self.forget(seq, d.pos, d.dedup_key.as_deref(), queue);
        }
        self.dying_bytes = 0;
    }
}
