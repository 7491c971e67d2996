//! Publishing: basic.publish with its content, publisher confirms (sent
//! once the disk has what they promise) and transactions.

use std::sync::Arc;

use antre_amqp::method::*;
use antre_amqp::{ContentHeader, Method};
use bytes::Bytes;

use super::{reply, Channel, Mode, Outgoing, PendingPublish, NACK_TOKEN_FLAG, TX_COMMIT_TOKEN};
use crate::durable::{add_once, Durable};
use crate::error::BrokerError;
use crate::message::Message;
use crate::vhost::{PublishOptions, PublishSource, REPLY_TO};

impl Channel {
    /// Handles basic.publish with its assembled content.
    pub(super) fn publish_now(
        &mut self,
        m: BasicPublish,
        header: ContentHeader,
        body: Bytes,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        if m.immediate {
            return Err(BrokerError::NotImplemented("immediate=true".into()));
        }
        // RabbitMQ's order: write on the exchange, its existence (in the
        // publish path), the topic permission, the user_id property.
        self.permit_publish(&m.exchange, &m.routing_key)?;
        self.check_user_id(header.properties.user_id.as_deref())?;
        let mut header = header;
        if header.properties.reply_to.as_deref() == Some(REPLY_TO) {
            // The responder replies to this channel's own address.
            let Some(queue) = self.live_reply_queue() else {
                return Err(BrokerError::PreconditionFailed(
                    "fast reply consumer does not exist".into(),
                ));
            };
            header.properties.reply_to = Some(queue.name.clone());
        }
        let now = self.ctx.broker.clock().now_ms();
        let message =
            Message::new(m.exchange, m.routing_key, header.properties, body).published_at(now);
        if let Err(why) = message.ttl() {
            return Err(BrokerError::PreconditionFailed(why));
        }
        let message = Arc::new(message);
        let metrics = &self.ctx.broker.metrics;
        self.stats.publish.inc();
        if matches!(self.mode, Mode::Confirm { .. }) {
            metrics.received_confirm.inc();
        }
        if !self.publisher {
            self.publisher = true;
            metrics.publishers.inc();
        }
        if let Mode::Tx { publishes, .. } = &mut self.mode {
            // Check the exchange now: RabbitMQ fails the publish, not the commit.
            self.ctx.vhost.check_publishable(&message.exchange)?;
            publishes.push(PendingPublish {
                mandatory: m.mandatory,
                message,
            });
            self.note_uncommitted();
            return Ok(());
        }
        self.route(m.mandatory, message, out)
    }

    /// Checks a content header before its body is read: the class must be
    /// basic and the size within the limit.
    pub fn check_header(&self, header: &ContentHeader) -> Result<(), BrokerError> {
        if header.class_id != antre_amqp::CLASS_BASIC {
            return Err(BrokerError::UnexpectedFrame(format!(
                "expected content header for class 60, got one for class {} instead",
                header.class_id
            )));
        }
        if header.body_size > self.ctx.max_message_size {
            return Err(BrokerError::PreconditionFailed(format!(
                "message size {} is larger than configured max size {}",
                header.body_size, self.ctx.max_message_size
            )));
        }
        Ok(())
    }

    pub(super) fn route(
        &mut self,
        mandatory: bool,
        message: Arc<Message>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let rejected = self.enqueue(mandatory, message, out)?;
        let remote = self.remote_pending.take();
        let seq = match &mut self.mode {
            Mode::Confirm { next, .. } => {
                *next += 1;
                self.stats.published_seq(*next - 1);
                *next - 1
            }
            _ => {
                if let Some(item) = remote {
                    self.window_remote(item, 0);
                }
                return Ok(());
            }
        };
        if let Some(item) = remote {
            self.window_remote(item, seq);
        }
        if rejected && self.remote_active() {
            self.refuse_in_group(seq);
        } else if rejected {
            // RabbitMQ nacks a publish that any of its queues refused.
            self.nack_publish(seq, out);
        } else if let Mode::Confirm { unconfirmed, .. } = &mut self.mode {
            *unconfirmed = Some(seq);
        }
        Ok(())
    }

    pub(super) fn mark_dirty(&mut self, durable: Arc<dyn Durable>) {
        add_once(&mut self.dirty, durable);
    }

    /// Publishes through the vhost's one publish path; returns a mandatory
    /// message no queue took, and whether a queue refused it.
    pub(super) fn enqueue(
        &mut self,
        mandatory: bool,
        message: Arc<Message>,
        out: &mut Vec<Outgoing>,
    ) -> Result<bool, BrokerError> {
        let options = PublishOptions::new(PublishSource::Client, mandatory);
        // Only a mandatory message can come back; any other is handed over
        // alone, so the publish path may seal it (see Message::seal_record).
        // In a cluster, a message for another node's queue is forwarded:
        // keep it for that.
        let kept =
            (mandatory || self.ctx.vhost.may_forward(&message)).then(|| Arc::clone(&message));
        if !matches!(&self.flow, Some(flow) if flow.is_for(&message.exchange)) {
            self.flow = Some(self.stats.flow(&message.exchange));
        }
        let outcome = self.ctx.vhost.publish(message, options)?;
        if let Some(flow) = &self.flow {
            flow.publish_in.inc();
            flow.publish_out
                .add((outcome.routed + outcome.remote.len()) as u64);
        }
        for durable in outcome.stored {
            self.mark_dirty(durable);
        }
        if !outcome.remote.is_empty() {
            if let Some(message) = &kept {
                self.remote_pending = Some(super::remote::RemoteItem {
                    seq: 0,
                    message: Arc::clone(message),
                    mandatory,
                    local_routed: outcome.routed > 0,
                    targets: outcome.remote,
                });
            }
        }
        if outcome.unroutable {
            match outcome.returned {
                true => self.stats.return_unroutable.inc(),
                false => self.stats.drop_unroutable.inc(),
            }
        }
        if let Some(message) = kept.filter(|_| outcome.returned) {
            out.push(returned_no_route(message));
        }
        Ok(outcome.rejected)
    }

    /// Sends basic.nack for one publish, after the acks owed for the
    /// publishes before it (which may be waiting for the disk).
    pub(super) fn nack_publish(&mut self, seq: u64, out: &mut Vec<Outgoing>) {
        self.flush_confirms_now(out);
        if self.syncs_outstanding == 0 {
            out.push(Outgoing::Method(refused_publish(seq).into()));
            self.confirmed_to(seq);
            return;
        }
        if let Some(syncer) = self.ctx.broker.syncer() {
            self.syncs_outstanding += 1;
            self.sync_started.push_back(std::time::Instant::now());
            syncer.request(Vec::new(), Arc::clone(&self.sink), NACK_TOKEN_FLAG | seq);
        }
    }

    /// Emits the publisher confirms owed so far as one basic.ack with
    /// multiple=true. The server calls this once per batch of frames, so a
    /// fast publisher gets one confirm frame per read, not one per message.
    /// When the batch wrote to a store, the ack waits for the syncer instead
    /// and comes back through [`Channel::on_synced`].
    pub(super) fn flush_confirms_now(&mut self, out: &mut Vec<Outgoing>) {
        if self.remote_active() {
            let token = match &mut self.mode {
                Mode::Confirm { unconfirmed, .. } => unconfirmed.take(),
                Mode::Tx { .. } => return,
                Mode::Plain => None,
            };
            if token.is_some() || !self.remote_window.is_empty() {
                self.flush_remote(token, out);
            } else if matches!(self.mode, Mode::Plain) {
                for durable in self.dirty.drain(..) {
                    durable.flush();
                }
            }
            return;
        }
        let Mode::Confirm { unconfirmed, .. } = &mut self.mode else {
            // Without confirms nobody waits: the syncer's sweep writes these.
            for durable in self.dirty.drain(..) {
                durable.flush();
            }
            return;
        };
        let Some(tag) = unconfirmed.take() else {
            return;
        };
        if !self.request_sync(tag) {
            let ack = self.ack_up_to(tag);
            out.push(Outgoing::Method(ack.into()));
        }
    }

    /// The basic.ack confirming every publish up to `tag`: multiple only
    /// when it covers more than one, as RabbitMQ sends them.
    pub(super) fn ack_up_to(&mut self, tag: u64) -> BasicAck {
        let multiple = tag > self.confirmed_up_to + 1;
        self.count_confirms(tag);
        BasicAck {
            delivery_tag: tag,
            multiple,
        }
    }

    pub(super) fn count_confirms(&mut self, up_to: u64) {
        let n = up_to.saturating_sub(self.confirmed_up_to);
        self.confirmed_to(up_to);
        self.ctx.broker.metrics.confirmed.add(n);
        self.stats.confirm.add(n);
    }

    /// Asks the syncer to make this channel's appends durable, if there are
    /// any (or earlier requests are still out, to keep answers in order).
    /// Returns false when the answer can be given at once.
    pub(super) fn request_sync(&mut self, token: u64) -> bool {
        let Some(syncer) = self.ctx.broker.syncer() else {
            self.dirty.clear();
            return false;
        };
        if self.dirty.is_empty() && self.syncs_outstanding == 0 {
            return false;
        }
        self.syncs_outstanding += 1;
        self.sync_started.push_back(std::time::Instant::now());
        syncer.request(
            std::mem::take(&mut self.dirty),
            Arc::clone(&self.sink),
            token,
        );
        true
    }

    /// The syncer finished a request of this channel: send the confirm (a
    /// nack if the disk failed) or the commit-ok it was holding back.
    pub(super) fn on_synced_now(
        &mut self,
        token: u64,
        ok: bool,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        if self.on_group_synced(token, ok, out) {
            return Ok(());
        }
        self.syncs_outstanding = self.syncs_outstanding.saturating_sub(1);
        if let Some(started) = self.sync_started.pop_front() {
            self.ctx
                .broker
                .metrics
                .confirm_seconds
                .observe(started.elapsed());
        }
        if token != TX_COMMIT_TOKEN && token & NACK_TOKEN_FLAG != 0 {
            let seq = token & !NACK_TOKEN_FLAG;
            self.confirmed_to(seq);
            out.push(Outgoing::Method(refused_publish(seq).into()));
            return Ok(());
        }
        if token == TX_COMMIT_TOKEN {
            if !ok {
                return Err(BrokerError::Internal(
                    "could not write the transaction to disk".into(),
                ));
            }
            out.push(Outgoing::Method(TxCommitOk {}.into()));
            return Ok(());
        }
        let method: Method = if ok {
            self.ack_up_to(token).into()
        } else {
            BasicNack {
                delivery_tag: token,
                multiple: true,
                requeue: false,
            }
            .into()
        };
        out.push(Outgoing::Method(method));
        Ok(())
    }

    pub(super) fn confirm_select(
        &mut self,
        m: ConfirmSelect,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        self.select_mode(false)?;
        reply(out, ConfirmSelectOk {}, m.nowait);
        Ok(())
    }

    pub(super) fn tx_select(&mut self, out: &mut Vec<Outgoing>) -> Result<(), BrokerError> {
        self.select_mode(true)?;
        reply(out, TxSelectOk {}, false);
        Ok(())
    }

    /// Puts the channel in transaction (`tx`) or confirm mode; selecting
    /// the mode it is in is harmless, switching between them is refused.
    fn select_mode(&mut self, tx: bool) -> Result<(), BrokerError> {
        match (&self.mode, tx) {
            (Mode::Tx { .. }, false) => Err(BrokerError::PreconditionFailed(
                "cannot switch from tx to confirm mode".into(),
            )),
            (Mode::Confirm { .. }, true) => Err(BrokerError::PreconditionFailed(
                "cannot switch from confirm to tx mode".into(),
            )),
            (Mode::Plain, false) => {
                self.mode = Mode::Confirm {
                    next: 1,
                    unconfirmed: None,
                };
                Ok(())
            }
            (Mode::Plain, true) => {
                self.mode = Mode::Tx {
                    publishes: Vec::new(),
                    settles: Vec::new(),
                };
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Shows what the open transaction holds.
    pub(super) fn note_uncommitted(&self) {
        if let Mode::Tx { publishes, settles } = &self.mode {
            self.stats.set_uncommitted(publishes.len(), settles.len());
        }
    }

    pub(super) fn tx_commit(&mut self, out: &mut Vec<Outgoing>) -> Result<(), BrokerError> {
        let Mode::Tx { publishes, settles } = &mut self.mode else {
            return Err(BrokerError::PreconditionFailed(
                "channel is not transactional".into(),
            ));
        };
        let publishes = std::mem::take(publishes);
        let settles = std::mem::take(settles);
        self.stats.set_uncommitted(0, 0);
        // Acks first: they refer to deliveries made before the commit.
        for s in settles {
            self.apply_settle(s)?;
        }
        for p in publishes {
            self.route(p.mandatory, p.message, out)?;
        }
        // Persistent messages of a transaction are on disk before
        // commit-ok, as in RabbitMQ (and with the other nodes that own
        // some of its queues).
        if self.remote_active() {
            self.flush_remote(Some(TX_COMMIT_TOKEN), out);
        } else if !self.request_sync(TX_COMMIT_TOKEN) {
            out.push(Outgoing::Method(TxCommitOk {}.into()));
        }
        Ok(())
    }

    pub(super) fn tx_rollback(&mut self, out: &mut Vec<Outgoing>) -> Result<(), BrokerError> {
        let Mode::Tx { publishes, settles } = &mut self.mode else {
            return Err(BrokerError::PreconditionFailed(
                "channel is not transactional".into(),
            ));
        };
        publishes.clear();
        settles.clear();
        self.stats.set_uncommitted(0, 0);
        out.push(Outgoing::Method(TxRollbackOk {}.into()));
        Ok(())
    }
}

/// The basic.nack for a publish a queue refused (x-overflow=reject-publish),
/// in RabbitMQ's form: multiple and requeue set. Every earlier publish is
/// confirmed by the time it is sent, so multiple covers only this one.
pub(super) fn refused_publish(seq: u64) -> BasicNack {
    BasicNack {
        delivery_tag: seq,
        multiple: true,
        requeue: true,
    }
}

/// A mandatory message that reached no queue, going back to its publisher
/// (basic.return 312 NO_ROUTE).
pub(super) fn returned_no_route(message: Arc<Message>) -> Outgoing {
    Outgoing::Content(
        BasicReturn {
            reply_code: antre_amqp::reply::NO_ROUTE,
            reply_text: "NO_ROUTE".into(),
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
        }
        .into(),
        message,
    )
}
