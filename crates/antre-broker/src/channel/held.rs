//! Output held until the disk has what it promises.
//!
//! A method that changed durable definitions (declaring a durable queue or
//! exchange, binding them, deleting them) is answered only once the vhost's
//! definitions log is synced, so a declare-ok means the queue survives a
//! crash, as a confirm means the message does. Everything the channel emits
//! after such an answer waits behind it (replies, deliveries, confirms), so
//! the client sees its replies in order. A client that pipelines many
//! declares gets them all answered after one group-committed fsync.
//!
//! Every way output leaves the channel passes through here: the public
//! entry points below run their handler, then [`Channel::hold_after`].

use antre_amqp::ContentHeader;
use bytes::Bytes;

use super::{Channel, Outgoing};
use crate::error::BrokerError;
use crate::queue::Delivery;

/// The sync token that releases held output (confirm tokens are publish
/// sequence numbers, which never get this high).
pub(super) const HOLD_TOKEN: u64 = u64::MAX - 1;

/// Output that waits, in order.
#[derive(Debug, Default)]
pub(crate) struct Segment {
    items: Vec<Outgoing>,
    /// It answers a change of durable definitions: it waits for a sync.
    needs_sync: bool,
    /// That sync was requested.
    requested: bool,
}

impl Channel {
    /// Handles basic.publish with its assembled content.
    pub fn publish(
        &mut self,
        m: antre_amqp::method::BasicPublish,
        header: ContentHeader,
        body: Bytes,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let start = out.len();
        let result = self.publish_now(m, header, body, out);
        self.hold_after(out, start, false);
        result
    }

    /// Accepts a delivery a queue pushed to this channel: assigns its tag and
    /// emits basic.deliver. A delivery for a consumer that was cancelled in
    /// the meantime goes back to its queue.
    ///
    /// Returns whether the consumer's prefetch window (or the channel's) is
    /// now full: nothing more will be delivered to it until the client
    /// settles something, so what was delivered should not be held back.
    pub fn deliver(&mut self, delivery: Delivery, out: &mut Vec<Outgoing>) -> bool {
        let start = out.len();
        let full = self.deliver_now(delivery, out);
        self.hold_after(out, start, false);
        full
    }

    /// Emits the publisher confirms owed so far as one basic.ack with
    /// multiple=true, and asks for the sync that releases output held since
    /// the last call. The session calls this once per batch of frames, so a
    /// fast publisher gets one confirm frame per read, and a client that
    /// pipelines declares waits for one fsync.
    pub fn flush_confirms(&mut self, out: &mut Vec<Outgoing>) {
        let start = out.len();
        self.flush_confirms_now(out);
        self.hold_after(out, start, false);
        let waiting = self
            .held
            .back()
            .is_some_and(|s| s.needs_sync && !s.requested);
        if !waiting {
            return;
        }
        if let Some(definitions) = self.ctx.vhost.definitions_store() {
            self.mark_dirty(definitions);
        }
        if self.request_sync(HOLD_TOKEN) {
            if let Some(last) = self.held.back_mut() {
                last.requested = true;
            }
        } else {
            // Nothing to wait for after all (no syncer): let it go.
            self.release_held(out);
        }
    }

    /// The syncer finished a request of this channel: send the confirm (a
    /// nack if the disk failed), the commit-ok or the held output it was
    /// waiting for.
    pub fn on_synced(
        &mut self,
        token: u64,
        ok: bool,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        if token == HOLD_TOKEN {
            self.syncs_outstanding = self.syncs_outstanding.saturating_sub(1);
            self.sync_started.pop_front();
            if !ok {
                return Err(BrokerError::Internal(
                    "could not write definitions to disk".into(),
                ));
            }
            self.release_held(out);
            return Ok(());
        }
        let start = out.len();
        let result = self.on_synced_now(token, ok, out);
        self.hold_after(out, start, false);
        result
    }

    /// Makes this channel answer and deliver at once, never holding its
    /// output for a sync of the definitions: for a proxy channel a cluster
    /// node runs for a client of another node (`antre-cluster`'s forward
    /// module). Nothing there would ever ask for that sync (a session asks
    /// once per batch of frames), so a handler that changed definitions
    /// there (or, while the count was the vhost's, merely ran while another
    /// connection did) held the channel's deliveries for good. Nothing is
    /// lost by it: what that client is answered comes from its own node's
    /// channel, and a change to definitions in a cluster is durable once
    /// the metadata group committed it, before any node applies it.
    pub fn answer_at_once(&mut self) {
        self.at_once = true;
    }

    /// Whether output waits behind a sync (what the channel emits now is
    /// held, not written).
    pub fn holds_output(&self) -> bool {
        !self.held.is_empty()
    }

    /// Moves what a handler emitted (from `start` on) behind held output,
    /// if any; `changed` says the handler changed durable definitions, so
    /// its answer must wait for a sync.
    pub(super) fn hold_after(&mut self, out: &mut Vec<Outgoing>, start: usize, changed: bool) {
        if self.at_once {
            return;
        }
        if changed {
            match self.held.back_mut() {
                Some(last) if !last.requested => last.needs_sync = true,
                _ => self.held.push_back(Segment {
                    needs_sync: true,
                    ..Segment::default()
                }),
            }
        }
        if self.held.is_empty() || out.len() <= start {
            return;
        }
        if self.held.back().is_some_and(|s| s.requested) {
            self.held.push_back(Segment::default());
        }
        if let Some(last) = self.held.back_mut() {
            last.items.extend(out.drain(start..));
        }
    }

    /// A sync came back: the oldest waiting segment goes out, with the
    /// segments behind it that wait for nothing but their turn.
    fn release_held(&mut self, out: &mut Vec<Outgoing>) {
        if let Some(first) = self.held.pop_front() {
            out.extend(first.items);
        }
        while self.held.front().is_some_and(|s| !s.needs_sync) {
            if let Some(next) = self.held.pop_front() {
                out.extend(next.items);
            }
        }
    }
}
