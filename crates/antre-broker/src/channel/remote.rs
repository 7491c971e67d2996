//! Queues another cluster node owns, used through this channel: publishes
//! forwarded in batches with their confirms, and consumers, gets, purges
//! and settles run on a proxy channel on the owner (see [`crate::remote`]).
//!
//! **Confirms.** A publish routed to another node's queue is collected in
//! the channel's window; when the session flushes confirms (once per batch
//! of frames) the window becomes a *group*: one [`RemoteQueues::publish`]
//! per owner, plus, if the batch wrote to local stores, one syncer request.
//! Each answer comes back as a sync token; a group is released (its
//! returns, nacks and the ack up to its last publish) once all its answers
//! are in and every group before it was released, so a `multiple` ack
//! never covers a message that one of its queues, here or on another node,
//! does not have yet. While any group is outstanding, later flushes become
//! groups too (possibly with nothing remote), to keep that order.
//!
//! **Prefetch.** A forwarded consumer's own prefetch is its credit on the
//! owner. The channel-wide window (`basic.qos` with `global=true`) is
//! this channel's, shared with its local consumers: each proxy channel
//! gets it as its own global window (so an owner never sends more than
//! it), and a forwarded delivery takes a place in this channel's window
//! before it goes to the client; one that finds the window full waits
//! here, in order, until a settle frees a place.
//!
//! [`RemoteQueues::publish`]: crate::remote::RemoteQueues::publish

use std::sync::Arc;

use antre_amqp::method::*;
use antre_amqp::Method;
use parking_lot::Mutex;

use super::{Channel, Mode, Outgoing, Source, Unacked, TX_COMMIT_TOKEN};
use crate::error::BrokerError;
use crate::message::Message;
use crate::queue::Took;
use crate::queue::{Credit, Queue, QueueKind};
use crate::remote::{RemoteChannel, RemoteDelivery, RemotePublish, RemoteResult};

/// Sync token flag: every remote answer of the group in the low bits came.
pub(crate) const REMOTE_TOKEN_FLAG: u64 = 1 << 61;
/// Sync token flag: the local stores of the group in the low bits synced.
pub(crate) const GROUP_SYNC_FLAG: u64 = 1 << 60;
/// A group of a channel without confirms or transaction: it only owes
/// basic.returns.
const NO_CONFIRM: u64 = 0;

/// A consumer of this channel on another node's queue.
#[derive(Debug)]
pub(crate) struct RemoteSub {
    pub(crate) channel: Arc<dyn RemoteChannel>,
    pub(crate) no_ack: bool,
    /// Its window here: unlimited (the owner enforces its prefetch), it
    /// only counts, so that a settle gives the channel-wide window back.
    pub(crate) credit: Arc<Credit>,
    /// The queue's consumer timeout (ms), if it has one: this node's
    /// session enforces it, as the owner does for its own clients.
    pub(crate) timeout: Option<u64>,
    /// The queue's type, for the per-type counters.
    pub(crate) kind: QueueKind,
}

/// A publish routed (also) to other nodes' queues, waiting for the flush.
#[derive(Debug)]
pub(crate) struct RemoteItem {
    pub(crate) seq: u64,
    pub(crate) message: Arc<Message>,
    pub(crate) mandatory: bool,
    /// A queue of this node took it.
    pub(crate) local_routed: bool,
    pub(crate) targets: Vec<(Arc<str>, String)>,
}

type Slot = Arc<Mutex<Option<Vec<RemoteResult>>>>;

#[derive(Debug)]
struct GroupItem {
    seq: u64,
    /// Kept for a basic.return: mandatory, and no local queue took it.
    returnable: Option<Arc<Message>>,
    accepted: bool,
    refused: bool,
}

/// Publishes flushed together, released together (see the module docs).
#[derive(Debug)]
pub(crate) struct Group {
    id: u64,
    /// The last publish sequence number, [`TX_COMMIT_TOKEN`] or
    /// [`NO_CONFIRM`].
    token: u64,
    /// Remote answers not in yet.
    waiting: usize,
    /// A syncer request for its local stores is out.
    local_pending: bool,
    local_ok: bool,
    items: Vec<GroupItem>,
    /// Each owner's answer, and the items (indices) of its batch.
    batches: Vec<(Slot, Vec<usize>)>,
    /// Publishes a local queue refused.
    refused: Vec<u64>,
}

/// The owner-side method for settling `tag` (and all before it, `multiple`).
fn settle_method(how: super::Settle, tag: u64, multiple: bool) -> Method {
    match how {
        super::Settle::Ack => BasicAck {
            delivery_tag: tag,
            multiple,
        }
        .into(),
        super::Settle::Requeue => BasicNack {
            delivery_tag: tag,
            multiple,
            requeue: true,
        }
        .into(),
        super::Settle::Reject if multiple => BasicNack {
            delivery_tag: tag,
            multiple,
            requeue: false,
        }
        .into(),
        super::Settle::Reject => BasicReject {
            delivery_tag: tag,
            requeue: false,
        }
        .into(),
    }
}

fn same(a: &Arc<dyn RemoteChannel>, b: &Arc<dyn RemoteChannel>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl Channel {
    /// Whether confirms must go through groups (something remote is in the
    /// window or outstanding).
    pub(super) fn remote_active(&self) -> bool {
        !self.remote_window.is_empty() || !self.remote_groups.is_empty()
    }

    /// The proxy channel on `owner`, opened on first use.
    fn remote_channel(
        &mut self,
        queue: &str,
        owner: &str,
    ) -> Result<Arc<dyn RemoteChannel>, BrokerError> {
        if let Some(rc) = self.remote_channels.get(owner) {
            if rc.is_open() {
                return Ok(Arc::clone(rc));
            }
        }
        let Some(remote) = self.ctx.broker.remote_queues() else {
            return Err(self.ctx.vhost.remote_queue_error(queue, owner));
        };
        let rc = remote.open_channel(
            owner,
            &self.ctx.vhost.name,
            &self.ctx.user,
            Arc::clone(&self.sink),
        );
        self.remote_channels
            .insert(Arc::from(owner), Arc::clone(&rc));
        Ok(rc)
    }

    /// basic.consume of a queue (or stream) `owner` owns: a consumer with
    /// the client's prefetch on the owner's proxy channel, under the same
    /// tag. `local` is this node's queue, if the name is a queue's.
    pub(super) fn consume_remote(
        &mut self,
        m: BasicConsume,
        queue: String,
        local: Option<&Arc<Queue>>,
        owner: &str,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let global = u16::try_from(self.credit.limit()).unwrap_or(u16::MAX);
        if local.is_some_and(|q| q.kind() == QueueKind::Quorum) && global > 0 {
            // As for a local quorum queue: no channel-wide prefetch.
            return Err(BrokerError::NotImplemented(format!(
                "{} does not support global qos",
                crate::error::queue_ref(&self.ctx.vhost.name, &queue)
            )));
        }
        let tag = self.new_consumer_tag(&m.consumer_tag)?;
        self.flush_remote_window(out);
        let rc = self.remote_channel(&queue, owner)?;
        let prefetch_count = u16::try_from(self.prefetch).unwrap_or(u16::MAX);
        rc.call(
            BasicQos {
                prefetch_size: 0,
                prefetch_count,
                global: false,
            }
            .into(),
        )?;
        if global > 0 {
            // The owner never sends this channel more than its window.
            rc.call(
                BasicQos {
                    prefetch_size: 0,
                    prefetch_count: global,
                    global: true,
                }
                .into(),
            )?;
        }
        // Registered before the call: the owner may deliver before its
        // consume-ok comes back, and deliveries wait behind this handler.
        self.remotes.insert(
            Arc::clone(&tag),
            RemoteSub {
                channel: Arc::clone(&rc),
                no_ack: m.no_ack,
                credit: Credit::new(0),
                timeout: local.and_then(|q| q.args().consumer_timeout),
                // No local queue: the name is a stream's.
                kind: local.map_or(QueueKind::Stream, |q| q.kind()),
            },
        );
        let call = rc.call(
            BasicConsume {
                ticket: 0,
                queue,
                consumer_tag: tag.to_string(),
                no_local: m.no_local,
                no_ack: m.no_ack,
                exclusive: m.exclusive,
                nowait: false,
                arguments: m.arguments,
            }
            .into(),
        );
        if let Err(e) = call {
            self.remotes.remove(&tag);
            return Err(e);
        }
        if !m.nowait {
            out.push(Outgoing::Method(
                BasicConsumeOk {
                    consumer_tag: tag.to_string(),
                }
                .into(),
            ));
        }
        Ok(())
    }

    /// A queue's counts as its owner answers a passive queue.declare;
    /// `None` if it cannot (the caller keeps this node's answer).
    pub(super) fn remote_counts(
        &mut self,
        queue: &str,
        owner: &str,
        out: &mut Vec<Outgoing>,
    ) -> Option<crate::queue::QueueCounts> {
        self.owner_counts(queue, owner, out).ok()
    }

    /// The counts of `queue` as its owner (another node) has them, or why
    /// the owner could not say.
    pub(super) fn owner_counts(
        &mut self,
        queue: &str,
        owner: &str,
        out: &mut Vec<Outgoing>,
    ) -> Result<crate::queue::QueueCounts, BrokerError> {
        self.flush_remote_window(out);
        let rc = self.remote_channel(queue, owner)?;
        let reply = rc.call(
            QueueDeclare {
                ticket: 0,
                queue: queue.to_owned(),
                passive: true,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: Default::default(),
            }
            .into(),
        )?;
        reply
            .into_iter()
            .find_map(|o| match o {
                Outgoing::Method(Method::QueueDeclareOk(ok)) => Some(crate::queue::QueueCounts {
                    ready: ok.message_count,
                    unacked: 0,
                    consumers: ok.consumer_count,
                }),
                _ => None,
            })
            .ok_or_else(|| {
                BrokerError::Internal(format!(
                    "cluster node '{owner}' did not answer with the counts of queue '{queue}'"
                ))
            })
    }

    /// Sends what the window holds before a method that must see it (a
    /// get after a publish in the same batch of frames finds the message,
    /// as on a local queue).
    fn flush_remote_window(&mut self, out: &mut Vec<Outgoing>) {
        if !self.remote_window.is_empty() && !matches!(self.mode, Mode::Tx { .. }) {
            self.flush_confirms_now(out);
        }
    }

    /// basic.cancel of a consumer of another node's queue: waits for the
    /// owner's cancel-ok, so that once the client has its cancel-ok the
    /// owner delivers nothing more to it. False if `tag` is not one.
    pub(super) fn cancel_remote_and_wait(&mut self, tag: &str) -> bool {
        let Some(sub) = self.remotes.remove(tag) else {
            return false;
        };
        self.release_held_remote_of(tag);
        let cancel = BasicCancel {
            consumer_tag: tag.to_owned(),
            nowait: false,
        };
        if let Err(e) = sub.channel.call(cancel.into()) {
            // The owner is gone: it cancelled the consumer itself.
            tracing::debug!("forwarded basic.cancel: {e}");
        }
        true
    }

    /// Cancels a consumer of another node's queue; false if `tag` is not one.
    pub(super) fn cancel_remote(&mut self, tag: &str) -> bool {
        let Some(sub) = self.remotes.remove(tag) else {
            return false;
        };
        self.release_held_remote_of(tag);
        sub.channel.cast(vec![BasicCancel {
            consumer_tag: tag.to_owned(),
            nowait: true,
        }
        .into()]);
        true
    }

    /// basic.get of a queue `owner` owns: one request and its answer.
    /// `(timeout, kind)` are the queue's consumer timeout and type.
    pub(super) fn get_remote(
        &mut self,
        m: BasicGet,
        queue: String,
        owner: &str,
        (timeout, kind): (Option<u64>, QueueKind),
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        self.flush_remote_window(out);
        let rc = self.remote_channel(&queue, owner)?;
        let no_ack = m.no_ack;
        let reply = rc.call(
            BasicGet {
                ticket: 0,
                queue,
                no_ack,
            }
            .into(),
        )?;
        for item in reply {
            match item {
                Outgoing::Content(Method::BasicGetOk(ok), message) => {
                    let delivery_tag = self.next_tag;
                    self.next_tag += 1;
                    self.count_delivery(kind, ok.redelivered, Took::Get { no_ack });
                    if !no_ack {
                        self.unacked.insert(
                            delivery_tag,
                            Unacked {
                                source: Source::Remote {
                                    channel: Arc::clone(&rc),
                                    tag: ok.delivery_tag,
                                    timeout,
                                    kind,
                                },
                                credit: None,
                                delivered_at: self.ctx.broker.clock().now_ms(),
                            },
                        );
                    }
                    out.push(Outgoing::Content(
                        BasicGetOk { delivery_tag, ..ok }.into(),
                        message,
                    ));
                    return Ok(());
                }
                Outgoing::Method(Method::BasicGetEmpty(_)) => {
                    self.stats.get_empty.inc();
                    if let Some(c) = self.counters(kind) {
                        c.get_empty.inc();
                    }
                    out.push(Outgoing::Method(BasicGetEmpty::default().into()));
                    return Ok(());
                }
                _ => {}
            }
        }
        Err(BrokerError::Internal(
            "the queue's node answered basic.get with neither get-ok nor get-empty".into(),
        ))
    }

    /// queue.purge of a queue `owner` owns.
    pub(super) fn purge_remote(
        &mut self,
        queue: String,
        owner: &str,
        out: &mut Vec<Outgoing>,
    ) -> Result<u32, BrokerError> {
        self.flush_remote_window(out);
        let rc = self.remote_channel(&queue, owner)?;
        let reply = rc.call(
            QueuePurge {
                ticket: 0,
                queue,
                nowait: false,
            }
            .into(),
        )?;
        reply
            .into_iter()
            .find_map(|o| match o {
                Outgoing::Method(Method::QueuePurgeOk(ok)) => Some(ok.message_count),
                _ => None,
            })
            .ok_or_else(|| {
                BrokerError::Internal(
                    "the queue's node answered queue.purge without purge-ok".into(),
                )
            })
    }

    /// Accepts a delivery from a queue on another node: assigns its tag and
    /// emits basic.deliver. One for a consumer cancelled meanwhile goes
    /// back. Returns false (the owner keeps the consumer's window).
    pub fn deliver_remote(&mut self, d: RemoteDelivery, out: &mut Vec<Outgoing>) -> bool {
        d.channel
            .taken(d.message.body.len() as u64 + crate::queue::DELIVERY_OVERHEAD);
        let (no_ack, credit, timeout, kind) = match self.remotes.get(d.consumer_tag.as_str()) {
            Some(sub) if same(&sub.channel, &d.channel) => {
                (sub.no_ack, Arc::clone(&sub.credit), sub.timeout, sub.kind)
            }
            _ => {
                Self::refuse_remote(&d);
                return false;
            }
        };
        // No-ack consumers ignore windows, as local ones do; others wait
        // for a place in the channel-wide window, behind those waiting.
        if !no_ack && (!self.remote_held.is_empty() || !self.credit.try_take()) {
            self.remote_held.push_back(d);
            return false;
        }
        self.emit_remote(d, no_ack, credit, (timeout, kind), out);
        false
    }

    /// Hands the deliveries the channel-wide window held to the client, in
    /// order, as far as the window has room now.
    pub(super) fn release_held_remote(&mut self, out: &mut Vec<Outgoing>) {
        while let Some(d) = self.remote_held.front() {
            let sub = match self.remotes.get(d.consumer_tag.as_str()) {
                Some(sub) if same(&sub.channel, &d.channel) => {
                    Some((Arc::clone(&sub.credit), (sub.timeout, sub.kind)))
                }
                _ => None,
            };
            let Some((credit, of_queue)) = sub else {
                if let Some(d) = self.remote_held.pop_front() {
                    Self::refuse_remote(&d);
                }
                continue;
            };
            if !self.credit.try_take() {
                return;
            }
            if let Some(d) = self.remote_held.pop_front() {
                self.emit_remote(d, false, credit, of_queue, out);
            }
        }
    }

    /// A consumer was cancelled: what the window held for it goes back to
    /// its queue on the owner.
    fn release_held_remote_of(&mut self, tag: &str) {
        self.remote_held.retain(|d| {
            let keep = d.consumer_tag != tag;
            if !keep {
                Self::refuse_remote(d);
            }
            keep
        });
    }

    /// Lets this channel's queues dispatch again (on a queue's owner, once
    /// the forwarding node gave back room for a proxy channel's
    /// deliveries).
    pub fn resume_deliveries(&self) {
        self.kick_consumers();
    }

    /// Sends the channel-wide window to the proxy channels (basic.qos with
    /// `global=true` changed it).
    pub(super) fn qos_remote(&self, limit: u16) {
        for rc in self.remote_channels.values() {
            rc.cast(vec![BasicQos {
                prefetch_size: 0,
                prefetch_count: limit,
                global: true,
            }
            .into()]);
        }
    }

    /// Emits basic.deliver for a forwarded delivery under this channel's
    /// next tag (its place in the channel's window already taken).
    /// `(timeout, kind)` are its queue's consumer timeout and type.
    fn emit_remote(
        &mut self,
        d: RemoteDelivery,
        no_ack: bool,
        credit: Arc<Credit>,
        (timeout, kind): (Option<u64>, QueueKind),
        out: &mut Vec<Outgoing>,
    ) {
        let start = out.len();
        let delivery_tag = self.next_tag;
        self.next_tag += 1;
        self.count_delivery(kind, d.redelivered, Took::Consume { no_ack });
        out.push(Outgoing::Content(
            BasicDeliver {
                consumer_tag: d.consumer_tag,
                delivery_tag,
                redelivered: d.redelivered,
                exchange: d.message.exchange.clone(),
                routing_key: d.message.routing_key.clone(),
            }
            .into(),
            d.message,
        ));
        if !no_ack {
            credit.try_take();
            self.unacked.insert(
                delivery_tag,
                Unacked {
                    source: Source::Remote {
                        channel: d.channel,
                        tag: d.remote_tag,
                        timeout,
                        kind,
                    },
                    credit: Some(credit),
                    delivered_at: self.ctx.broker.clock().now_ms(),
                },
            );
        }
        self.hold_after(out, start, false);
    }

    /// Gives a delivery for a consumer that is gone back to its queue on
    /// the owner.
    pub fn refuse_remote(d: &RemoteDelivery) {
        d.channel.cast(vec![BasicReject {
            delivery_tag: d.remote_tag,
            requeue: true,
        }
        .into()]);
    }

    /// Settles deliveries of other nodes' queues on their proxy channels:
    /// one method per proxy channel when the settled deliveries are all
    /// those of that channel up to the highest (a `multiple` settle there,
    /// as the client's was here), else one per delivery.
    pub(super) fn settle_remote(
        &self,
        settled: Vec<(Arc<dyn RemoteChannel>, u64)>,
        how: super::Settle,
    ) {
        let mut by_channel: Vec<(Arc<dyn RemoteChannel>, Vec<u64>)> = Vec::new();
        for (rc, tag) in settled {
            match by_channel.iter_mut().find(|(c, _)| same(c, &rc)) {
                Some((_, tags)) => tags.push(tag),
                None => by_channel.push((rc, vec![tag])),
            }
        }
        for (rc, mut tags) in by_channel {
            tags.sort_unstable();
            let max = tags.last().copied().unwrap_or(0);
            // The owner numbers a proxy channel's deliveries one by one, in
            // the order this channel receives them: if these are
            // consecutive and nothing of it below them is still unacked
            // here, the owner's unacked up to `max` are exactly these (a gap
            // could be a delivery still on its way here).
            let prefix = tags.len() > 1
                && tags.windows(2).all(|w| w[1] == w[0] + 1)
                && !self
                    .unacked
                    .remote_tags()
                    .any(|(channel, tag)| same(channel, &rc) && tag < max);
            let methods: Vec<Method> = if prefix {
                vec![settle_method(how, max, true)]
            } else {
                tags.into_iter()
                    .map(|t| settle_method(how, t, false))
                    .collect()
            };
            rc.cast(methods);
        }
    }

    /// A node this channel forwards publishes to whose link is congested
    /// (see [`crate::remote::RemoteQueues::congested`]): the session then
    /// blocks the connection, as the memory alarm does.
    pub fn forward_congested(&self) -> Option<&str> {
        let remote = self.ctx.broker.remote_queues()?;
        self.forwarded_to
            .iter()
            .find(|owner| remote.congested(owner))
            .map(|owner| &**owner)
    }

    /// Channel close, after its consumers were cancelled: closes the proxy
    /// channels (the owners requeue what this channel did not settle).
    pub(super) fn close_remote(&mut self) {
        // The owners requeue what the window held with the rest.
        self.remote_held.clear();
        for (_, rc) in self.remote_channels.drain() {
            rc.close();
        }
    }

    /// Takes a publish's remote targets into the window (called by
    /// `route` once the publish has its sequence number).
    pub(super) fn window_remote(&mut self, mut item: RemoteItem, seq: u64) {
        item.seq = seq;
        self.remote_window.push(item);
    }

    /// Flushes the window as a group (see the module docs); `token` is the
    /// last publish to confirm, [`TX_COMMIT_TOKEN`], or `None` without
    /// confirms.
    pub(super) fn flush_remote(&mut self, token: Option<u64>, out: &mut Vec<Outgoing>) {
        let token = token.unwrap_or(NO_CONFIRM);
        let id = self.next_group;
        self.next_group += 1;
        let window = std::mem::take(&mut self.remote_window);
        let mut items = Vec::with_capacity(window.len());
        let mut per_owner: Vec<(Arc<str>, Vec<RemotePublish>, Vec<usize>)> = Vec::new();
        for (i, item) in window.into_iter().enumerate() {
            for (owner, queue) in &item.targets {
                let idx = match per_owner.iter().position(|(o, _, _)| o == owner) {
                    Some(idx) => idx,
                    None => {
                        per_owner.push((Arc::clone(owner), Vec::new(), Vec::new()));
                        per_owner.len() - 1
                    }
                };
                let (_, batch, indices) = &mut per_owner[idx];
                if indices.last() == Some(&i) {
                    if let Some(p) = batch.last_mut() {
                        p.queues.push(queue.clone());
                    }
                } else {
                    batch.push(RemotePublish {
                        queues: vec![queue.clone()],
                        message: Arc::clone(&item.message),
                        seqs: Vec::new(),
                    });
                    indices.push(i);
                }
            }
            items.push(GroupItem {
                seq: item.seq,
                returnable: (item.mandatory && !item.local_routed).then_some(item.message),
                accepted: false,
                refused: false,
            });
        }
        let local_pending = match token {
            NO_CONFIRM => {
                for durable in self.dirty.drain(..) {
                    durable.flush();
                }
                false
            }
            _ => self.request_group_sync(id),
        };
        let mut group = Group {
            id,
            token,
            waiting: per_owner.len(),
            local_pending,
            local_ok: true,
            items,
            batches: Vec::new(),
            refused: std::mem::take(&mut self.window_refused),
        };
        let remote = self.ctx.broker.remote_queues().cloned();
        for (owner, batch, indices) in per_owner {
            if !self.forwarded_to.contains(&owner) {
                self.forwarded_to.push(Arc::clone(&owner));
            }
            let slot: Slot = Arc::default();
            group.batches.push((Arc::clone(&slot), indices));
            let sink = Arc::clone(&self.sink);
            // Node-local queues (exclusive, direct reply-to) die with
            // their node: when it cannot be reached they are gone, and the
            // message is unroutable there, not refused (a subscriber's
            // node down must not nack every publish to its exchange).
            let node_local = batch.iter().all(|p| {
                p.queues
                    .iter()
                    .all(|q| self.ctx.vhost.named_elsewhere(q).is_some())
            });
            // And one its node says is gone (its subscriber left while
            // this node had the binding, or the node restarted without
            // it) is deleted through the metadata, so that no node keeps
            // forwarding to it.
            // Only a name bound here: a publish to a made-up name must not
            // cost the cluster a metadata change.
            let cleanup = node_local
                .then(|| {
                    let log = self.ctx.broker.metadata_log().cloned()?;
                    let names: Vec<Vec<String>> = batch.iter().map(|p| p.queues.clone()).collect();
                    Some((log, Arc::clone(&self.ctx.vhost), names, Arc::clone(&owner)))
                })
                .flatten();
            let done: crate::remote::RemoteDone = Box::new(move |mut results| {
                if let Some((log, vhost, names, owner)) = &cleanup {
                    let gone: std::collections::BTreeSet<&String> = results
                        .iter()
                        .zip(names)
                        .filter(|(r, _)| **r == RemoteResult::Gone)
                        .flat_map(|(_, queues)| queues)
                        .collect();
                    for command in gone.into_iter().filter_map(|n| vhost.forget_gone(n, owner)) {
                        log.propose_later(command);
                    }
                }
                if node_local {
                    for r in &mut results {
                        if *r == RemoteResult::Failed {
                            *r = RemoteResult::Gone;
                        }
                    }
                }
                *slot.lock() = Some(results);
                sink.synced(REMOTE_TOKEN_FLAG | id, true);
            });
            match &remote {
                Some(r) => r.publish(&owner, &self.ctx.vhost.name, batch, done),
                None => done(vec![RemoteResult::Failed; batch.len()]),
            }
        }
        self.remote_groups.push_back(group);
        self.release_groups(out);
    }

    /// Asks the syncer for the group's local stores, when it has some (or
    /// earlier requests are out, whose answers must come first).
    fn request_group_sync(&mut self, id: u64) -> bool {
        self.request_sync(GROUP_SYNC_FLAG | id)
    }

    /// A sync token of a group came back; returns false if `token` is not
    /// a group's.
    pub(super) fn on_group_synced(
        &mut self,
        token: u64,
        ok: bool,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        if token == TX_COMMIT_TOKEN
            || token & super::NACK_TOKEN_FLAG != 0
            || token & (REMOTE_TOKEN_FLAG | GROUP_SYNC_FLAG) == 0
        {
            return false;
        }
        let id = token & !(REMOTE_TOKEN_FLAG | GROUP_SYNC_FLAG);
        let local = token & GROUP_SYNC_FLAG != 0;
        if local {
            self.syncs_outstanding = self.syncs_outstanding.saturating_sub(1);
            if let Some(started) = self.sync_started.pop_front() {
                self.ctx
                    .broker
                    .metrics
                    .confirm_seconds
                    .observe(started.elapsed());
            }
        }
        if let Some(g) = self.remote_groups.iter_mut().find(|g| g.id == id) {
            if local {
                g.local_pending = false;
                g.local_ok &= ok;
            } else {
                g.waiting = g.waiting.saturating_sub(1);
            }
        }
        self.release_groups(out);
        true
    }

    /// Releases, in order, the groups whose answers are all in.
    fn release_groups(&mut self, out: &mut Vec<Outgoing>) {
        while self
            .remote_groups
            .front()
            .is_some_and(|g| g.waiting == 0 && !g.local_pending)
        {
            if let Some(g) = self.remote_groups.pop_front() {
                self.release_group(g, out);
            }
        }
    }

    fn release_group(&mut self, mut g: Group, out: &mut Vec<Outgoing>) {
        for (slot, indices) in &g.batches {
            let results = slot.lock().take().unwrap_or_default();
            for (k, &i) in indices.iter().enumerate() {
                let Some(item) = g.items.get_mut(i) else {
                    continue;
                };
                match results.get(k).copied().unwrap_or(RemoteResult::Failed) {
                    RemoteResult::Accepted => item.accepted = true,
                    RemoteResult::Rejected | RemoteResult::Failed => item.refused = true,
                    RemoteResult::Gone => {}
                }
            }
        }
        let mut nacks = std::mem::take(&mut g.refused);
        for item in &mut g.items {
            if item.refused {
                nacks.push(item.seq);
            } else if let Some(message) = item.returnable.take().filter(|_| !item.accepted) {
                // Its only queues were deleted before the owner had it: as
                // for a local queue gone by the time of routing.
                let metrics = &self.ctx.broker.metrics;
                metrics.unroutable.inc();
                metrics.returned.inc();
                out.push(super::publish::returned_no_route(message));
            }
        }
        match g.token {
            NO_CONFIRM => {}
            TX_COMMIT_TOKEN => out.push(Outgoing::Method(TxCommitOk {}.into())),
            token if !g.local_ok => {
                self.confirmed_to(token);
                out.push(Outgoing::Method(
                    BasicNack {
                        delivery_tag: token,
                        multiple: true,
                        requeue: false,
                    }
                    .into(),
                ));
            }
            token => {
                nacks.sort_unstable();
                nacks.dedup();
                for seq in nacks {
                    if seq <= self.confirmed_up_to {
                        continue;
                    }
                    if seq - 1 > self.confirmed_up_to {
                        let ack = self.ack_up_to(seq - 1);
                        out.push(Outgoing::Method(ack.into()));
                    }
                    self.confirmed_to(seq);
                    out.push(Outgoing::Method(
                        super::publish::refused_publish(seq).into(),
                    ));
                }
                if token > self.confirmed_up_to {
                    let ack = self.ack_up_to(token);
                    out.push(Outgoing::Method(ack.into()));
                }
            }
        }
    }

    /// In confirm mode, the publish `seq` a local queue refused while
    /// remote publishes are in flight: its nack waits for its group.
    pub(super) fn refuse_in_group(&mut self, seq: u64) {
        self.window_refused.push(seq);
        if let Mode::Confirm { unconfirmed, .. } = &mut self.mode {
            *unconfirmed = Some(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;
    use crate::channel::ChannelContext;
    use crate::queue::tests::CollectSink;
    use crate::queue::DeliverySink;
    use crate::remote::{RemoteDone, RemoteQueues};
    use antre_amqp::{BasicProperties, ContentHeader};
    use bytes::Bytes;

    /// Records forwarded batches; the test answers them.
    /// A forwarded batch: owner, messages, and its answer once given.
    type Batch = (String, Vec<RemotePublish>, Option<RemoteDone>);

    #[derive(Default)]
    struct FakeRemote {
        batches: Mutex<Vec<Batch>>,
    }

    impl std::fmt::Debug for FakeRemote {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FakeRemote")
        }
    }

    impl RemoteQueues for FakeRemote {
        fn publish(&self, owner: &str, _: &str, batch: Vec<RemotePublish>, done: RemoteDone) {
            self.batches
                .lock()
                .push((owner.to_owned(), batch, Some(done)));
        }
        fn open_channel(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: Arc<dyn DeliverySink>,
        ) -> Arc<dyn RemoteChannel> {
            unimplemented!("not used")
        }
    }

    impl FakeRemote {
        fn answer(&self, i: usize, results: Vec<RemoteResult>) {
            let done = self.batches.lock()[i].2.take().expect("answered once");
            done(results);
        }
    }

    fn setup() -> (Arc<FakeRemote>, Arc<CollectSink>, Channel) {
        let broker = Arc::new(Broker::new());
        let remote = Arc::new(FakeRemote::default());
        broker.set_remote_queues(Arc::clone(&remote) as Arc<dyn RemoteQueues>);
        let vhost = broker.vhost("/").expect("vhost");
        for q in ["mine", "theirs"] {
            vhost
                .declare_queue(
                    crate::vhost::QueueDeclaration {
                        name: q.into(),
                        durable: false,
                        exclusive: false,
                        auto_delete: false,
                        arguments: Default::default(),
                    },
                    false,
                    1,
                )
                .expect("declare");
        }
        vhost.set_remote_owner("theirs", Some("n1"));
        let sink = Arc::new(CollectSink::default());
        let ctx = ChannelContext {
            broker,
            vhost,
            connection: 1,
            user: "guest".into(),
            max_message_size: 1024,
        };
        let channel = Channel::new(1, ctx, Arc::clone(&sink) as Arc<dyn DeliverySink>);
        (remote, sink, channel)
    }

    fn publish(ch: &mut Channel, key: &str, mandatory: bool, out: &mut Vec<Outgoing>) {
        let header = ContentHeader {
            class_id: 60,
            body_size: 1,
            properties: BasicProperties::default(),
        };
        let m = BasicPublish {
            routing_key: key.into(),
            mandatory,
            ..Default::default()
        };
        ch.publish(m, header, Bytes::from_static(b"x"), out)
            .expect("publish");
    }

    /// Feeds the sync answers the sink collected back to the channel.
    fn pump(sink: &CollectSink, ch: &mut Channel, out: &mut Vec<Outgoing>) {
        for (token, ok) in std::mem::take(&mut *sink.synced.lock()) {
            ch.on_synced(token, ok, out).expect("synced");
        }
    }

    fn methods(out: &mut Vec<Outgoing>) -> Vec<Method> {
        out.drain(..)
            .map(|o| match o {
                Outgoing::Method(m) | Outgoing::Content(m, _) => m,
            })
            .collect()
    }

    #[test]
    fn confirms_wait_for_the_owner_and_keep_their_order() {
        let (remote, sink, mut ch) = setup();
        let mut out = Vec::new();
        ch.handle(ConfirmSelect { nowait: false }.into(), &mut out)
            .expect("confirm.select");
        out.clear();
        // 1: local only; 2 and 3: the owner's queue; one batch for both.
        publish(&mut ch, "mine", false, &mut out);
        publish(&mut ch, "theirs", false, &mut out);
        publish(&mut ch, "theirs", false, &mut out);
        ch.flush_confirms(&mut out);
        assert!(
            methods(&mut out).is_empty(),
            "nothing confirmed before the owner answers"
        );
        assert_eq!(remote.batches.lock().len(), 1);
        assert_eq!(remote.batches.lock()[0].1.len(), 2);
        // A later, local-only batch waits behind it.
        publish(&mut ch, "mine", false, &mut out);
        ch.flush_confirms(&mut out);
        assert!(methods(&mut out).is_empty(), "a later confirm waits behind");
        remote.answer(0, vec![RemoteResult::Accepted, RemoteResult::Failed]);
        pump(&sink, &mut ch, &mut out);
        assert_eq!(
            methods(&mut out),
            vec![
                BasicAck {
                    delivery_tag: 2,
                    multiple: true
                }
                .into(),
                BasicNack {
                    delivery_tag: 3,
                    multiple: true,
                    requeue: true
                }
                .into(),
                BasicAck {
                    delivery_tag: 4,
                    multiple: false
                }
                .into(),
            ]
        );
        assert!(!ch.waiting_for_disk());
    }

    #[test]
    fn a_mandatory_message_whose_remote_queue_is_gone_is_returned() {
        let (remote, sink, mut ch) = setup();
        let mut out = Vec::new();
        ch.handle(ConfirmSelect { nowait: false }.into(), &mut out)
            .expect("confirm.select");
        out.clear();
        publish(&mut ch, "theirs", true, &mut out);
        ch.flush_confirms(&mut out);
        remote.answer(0, vec![RemoteResult::Gone]);
        pump(&sink, &mut ch, &mut out);
        let sent = methods(&mut out);
        assert!(matches!(&sent[0], Method::BasicReturn(r) if r.reply_code == 312));
        assert_eq!(
            sent[1],
            BasicAck {
                delivery_tag: 1,
                multiple: false
            }
            .into()
        );
    }
}
