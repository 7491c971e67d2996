//! The reference model: AMQP 0-9-1 queue semantics as RabbitMQ implements
//! them, written to be obviously right rather than fast. Plain vectors and
//! maps, no sharing, no locks; each rule is a few lines that say what the
//! specification or RabbitMQ's documentation says.
//!
//! The rules it encodes:
//! - a queue hands out its oldest ready message first; a requeued message
//!   goes back to its original position, marked redelivered;
//! - consumers of a queue take turns, standing in a line: a message goes to
//!   the first consumer in line whose prefetch window has room, which then
//!   goes to the back; consumers passed over for want of room step out of
//!   the line and rejoin at the back, in the order they stepped out, once
//!   they have room again; new consumers join at the back (RabbitMQ's
//!   `rabbit_queue_consumers`, checked against RabbitMQ 3.10);
//! - a consumer's window (basic.qos global=false, set before it subscribed)
//!   and its channel's window (global=true) both bound its unacked
//!   deliveries; no-ack consumers have no window (the specification's rule:
//!   RabbitMQ also holds them back while their channel's window is full);
//! - delivery tags count from 1 per channel, for consumer deliveries and
//!   basic.get alike; ack/nack with multiple settle every tag up to theirs,
//!   tag 0 with multiple means all; an unknown tag is 406 PRECONDITION_FAILED
//!   and closes the channel;
//! - closing a channel (or basic.recover) requeues everything it had unacked;
//! - a delivery a queue pushed towards a channel that has not reached the
//!   channel yet, whose consumer is cancelled meanwhile, goes back to the
//!   queue as it was (unmarked: the client never saw it). The specification
//!   allows this; RabbitMQ delivers it instead;
//! - after a restart, only persistent messages of durable queues are left,
//!   all ready and marked redelivered, in their original order; every
//!   channel and consumer is gone.
//!
//! Where the core may legitimately differ in order, the model takes that
//! order as a parameter: when settling frees a channel's shared window,
//! which of the channel's queues uses it first is not specified, so the
//! driver tries each order of queues (`order`).

use std::collections::{BTreeMap, VecDeque};

use crate::steps::{
    Action, ChannelView, Delivered, InTransit, Observation, QueueView, Reply, CHANNELS, QUEUES,
};

#[derive(Debug, Clone)]
struct Msg {
    /// Position in arrival order, also its body: `m<seq>`.
    seq: u64,
    persistent: bool,
    redelivered: bool,
}

impl Msg {
    fn body(&self) -> String {
        format!("m{}", self.seq)
    }

    fn size(&self) -> u64 {
        self.body().len() as u64
    }
}

#[derive(Debug, Clone)]
struct Queue {
    durable: bool,
    /// Ready messages by position.
    ready: BTreeMap<u64, Msg>,
    /// Consumers waiting for their turn, first in line first: (channel, tag).
    line: VecDeque<(usize, String)>,
    /// Consumers that stepped out of the line for want of room, in order.
    out_of_line: Vec<(usize, String)>,
}

#[derive(Debug, Clone)]
struct Consumer {
    tag: String,
    queue: usize,
    no_ack: bool,
    /// Its own window (0: none) and deliveries it has out.
    window: u32,
    out: u32,
}

#[derive(Debug, Clone)]
struct Unacked {
    queue: usize,
    msg: Msg,
    /// None for basic.get.
    consumer: Option<String>,
}

#[derive(Debug, Clone)]
struct Transit {
    queue: usize,
    consumer: String,
    no_ack: bool,
    msg: Msg,
}

#[derive(Debug, Clone, Default)]
struct Chan {
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    /// In subscription order.
    consumers: Vec<Consumer>,
    /// basic.qos global=false: the window of consumers created from now on.
    prefetch: u32,
    /// basic.qos global=true: the channel's window (0: none), and its use.
    window: u32,
    out: u32,
    in_transit: VecDeque<Transit>,
}

impl Chan {
    fn new() -> Chan {
        Chan {
            next_tag: 1,
            ..Chan::default()
        }
    }

    fn consumer(&mut self, tag: &str) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|c| c.tag == tag)
    }
}

/// The whole broker as the model sees it.
#[derive(Debug, Clone)]
pub struct Model {
    queues: Vec<Queue>,
    channels: Vec<Chan>,
    next_seq: u64,
}

/// How a settled delivery ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Drop,
    Requeue,
}

impl Model {
    pub fn new() -> Model {
        Model {
            queues: QUEUES
                .iter()
                .enumerate()
                .map(|(i, _)| Queue {
                    durable: i == 0,
                    ready: BTreeMap::new(),
                    line: VecDeque::new(),
                    out_of_line: Vec::new(),
                })
                .collect(),
            channels: (0..CHANNELS).map(|_| Chan::new()).collect(),
            next_seq: 0,
        }
    }

    /// The delivery tags a channel has unacked, oldest first.
    pub fn unacked_tags(&self, channel: usize) -> Vec<u64> {
        self.channels[channel].unacked.keys().copied().collect()
    }

    /// The tag the channel will give its next delivery.
    pub fn next_tag(&self, channel: usize) -> u64 {
        self.channels[channel].next_tag
    }

    /// The consumer tags of a channel, in subscription order.
    pub fn consumer_tags(&self, channel: usize) -> Vec<String> {
        self.channels[channel]
            .consumers
            .iter()
            .map(|c| c.tag.clone())
            .collect()
    }

    /// Performs one step; `order` is the order in which queues get to use
    /// prefetch windows that the step freed.
    pub fn apply(&mut self, action: &Action, order: &[usize]) -> Observation {
        let reply = match action {
            Action::Publish { queue, persistent } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let msg = Msg {
                    seq,
                    persistent: *persistent,
                    redelivered: false,
                };
                self.queues[*queue].ready.insert(seq, msg);
                Reply::Ok
            }
            Action::Consume {
                channel,
                queue,
                no_ack,
                tag,
            } => {
                let ch = &mut self.channels[*channel];
                ch.consumers.push(Consumer {
                    tag: tag.clone(),
                    queue: *queue,
                    no_ack: *no_ack,
                    window: ch.prefetch,
                    out: 0,
                });
                self.queues[*queue].line.push_back((*channel, tag.clone()));
                Reply::Ok
            }
            Action::Cancel { channel, tag } => {
                self.cancel(*channel, tag);
                Reply::Ok
            }
            Action::Get {
                channel,
                queue,
                no_ack,
            } => self.get(*channel, *queue, *no_ack),
            Action::Ack {
                channel,
                tag,
                multiple,
            } => self.settle(*channel, *tag, *multiple, Settle::Drop, order),
            Action::Nack {
                channel,
                tag,
                multiple,
                requeue,
            } => {
                let how = if *requeue {
                    Settle::Requeue
                } else {
                    Settle::Drop
                };
                self.settle(*channel, *tag, *multiple, how, order)
            }
            Action::Reject {
                channel,
                tag,
                requeue,
            } => {
                let how = if *requeue {
                    Settle::Requeue
                } else {
                    Settle::Drop
                };
                self.settle(*channel, *tag, false, how, order)
            }
            Action::Qos {
                channel,
                prefetch,
                global,
            } => {
                let ch = &mut self.channels[*channel];
                if *global {
                    ch.window = u32::from(*prefetch);
                } else {
                    // RabbitMQ 3.8+: a per-consumer qos lifts the
                    // channel's window.
                    ch.prefetch = u32::from(*prefetch);
                    ch.window = 0;
                }
                Reply::Ok
            }
            Action::Recover { channel } => {
                self.requeue_all(*channel, order);
                Reply::Ok
            }
            Action::Pump { channel } => Reply::Delivered(self.pump(*channel, order)),
            Action::Close { channel } => {
                self.close(*channel, order);
                Reply::Ok
            }
            Action::Restart => {
                self.restart();
                Reply::Ok
            }
        };
        self.dispatch_all(order);
        self.observe(reply)
    }

    fn observe(&self, reply: Reply) -> Observation {
        let queues = (0..self.queues.len())
            .map(|q| {
                let queue = &self.queues[q];
                let unacked: Vec<&Msg> = self
                    .channels
                    .iter()
                    .flat_map(|ch| {
                        let held = ch.unacked.values().filter(|u| u.queue == q);
                        let coming = ch.in_transit.iter().filter(|t| t.queue == q && !t.no_ack);
                        held.map(|u| &u.msg).chain(coming.map(|t| &t.msg))
                    })
                    .collect();
                let kept = |m: &Msg| queue.durable && m.persistent;
                QueueView {
                    ready: queue.ready.len() as u64,
                    unacked: unacked.len() as u64,
                    consumers: (queue.line.len() + queue.out_of_line.len()) as u32,
                    ready_bytes: queue.ready.values().map(Msg::size).sum(),
                    unacked_bytes: unacked.iter().map(|m| m.size()).sum(),
                    persistent: (queue.ready.values().filter(|m| kept(m)).count()
                        + unacked.iter().filter(|m| kept(m)).count())
                        as u64,
                }
            })
            .collect();
        let channels = self
            .channels
            .iter()
            .map(|ch| ChannelView {
                unacked: ch.unacked.len(),
                consumers: ch.consumers.len(),
                in_transit: ch
                    .in_transit
                    .iter()
                    .map(|t| InTransit {
                        queue: QUEUES[t.queue].into(),
                        consumer: t.consumer.clone(),
                        body: t.msg.body(),
                        redelivered: t.msg.redelivered,
                    })
                    .collect(),
            })
            .collect();
        Observation {
            reply,
            queues,
            channels,
        }
    }

    fn get(&mut self, channel: usize, queue: usize, no_ack: bool) -> Reply {
        let Some((_, msg)) = self.queues[queue].ready.pop_first() else {
            return Reply::GetEmpty;
        };
        let ch = &mut self.channels[channel];
        let tag = ch.next_tag;
        ch.next_tag += 1;
        let reply = Reply::GetOk {
            tag,
            body: msg.body(),
            redelivered: msg.redelivered,
            message_count: self.queues[queue].ready.len() as u32,
        };
        if !no_ack {
            ch.unacked.insert(
                tag,
                Unacked {
                    queue,
                    msg,
                    consumer: None,
                },
            );
        }
        reply
    }

    /// ack, nack and reject: settles one tag or, with `multiple`, every
    /// tag up to it (all of them for tag 0).
    fn settle(
        &mut self,
        channel: usize,
        tag: u64,
        multiple: bool,
        how: Settle,
        order: &[usize],
    ) -> Reply {
        let known = (multiple && tag == 0) || self.channels[channel].unacked.contains_key(&tag);
        if !known {
            self.close(channel, order);
            return Reply::ChannelError(406);
        }
        let ch = &self.channels[channel];
        let tags: Vec<u64> = if multiple {
            ch.unacked
                .keys()
                .copied()
                .filter(|t| tag == 0 || *t <= tag)
                .collect()
        } else {
            vec![tag]
        };
        self.finish(channel, &tags, how);
        Reply::Ok
    }

    /// Takes deliveries off a channel, frees their windows, and drops or
    /// requeues them.
    fn finish(&mut self, channel: usize, tags: &[u64], how: Settle) {
        for tag in tags {
            let ch = &mut self.channels[channel];
            let Some(u) = ch.unacked.remove(tag) else {
                continue;
            };
            if let Some(consumer) = &u.consumer {
                ch.out -= 1;
                if let Some(c) = ch.consumer(consumer) {
                    c.out -= 1;
                }
            }
            if how == Settle::Requeue {
                let mut msg = u.msg;
                msg.redelivered = true;
                self.queues[u.queue].ready.insert(msg.seq, msg);
            }
        }
    }

    fn requeue_all(&mut self, channel: usize, order: &[usize]) {
        let tags = self.unacked_tags(channel);
        self.finish(channel, &tags, Settle::Requeue);
        self.dispatch_all(order);
    }

    fn cancel(&mut self, channel: usize, tag: &str) {
        let ch = &mut self.channels[channel];
        let Some(at) = ch.consumers.iter().position(|c| c.tag == tag) else {
            // Cancelling an unknown consumer is not an error.
            return;
        };
        let consumer = ch.consumers.remove(at);
        let queue = &mut self.queues[consumer.queue];
        let this = |(c, t): &(usize, String)| !(*c == channel && t == tag);
        queue.line.retain(this);
        queue.out_of_line.retain(this);
    }

    /// The channel takes what its queues pushed to it: a delivery for a
    /// consumer it still has gets the next tag; one for a consumer cancelled
    /// meanwhile goes back to its queue as it was, freeing the channel's
    /// window.
    fn pump(&mut self, channel: usize, order: &[usize]) -> Vec<Delivered> {
        let batch: Vec<Transit> = self.channels[channel].in_transit.drain(..).collect();
        let mut delivered = Vec::new();
        for t in batch {
            let ch = &mut self.channels[channel];
            if ch.consumer(&t.consumer).is_none() {
                self.return_undelivered(channel, t);
                self.dispatch_all(order);
                continue;
            }
            let tag = ch.next_tag;
            ch.next_tag += 1;
            delivered.push(Delivered {
                consumer: t.consumer.clone(),
                tag,
                body: t.msg.body(),
                redelivered: t.msg.redelivered,
            });
            if !t.no_ack {
                ch.unacked.insert(
                    tag,
                    Unacked {
                        queue: t.queue,
                        msg: t.msg,
                        consumer: Some(t.consumer),
                    },
                );
            }
        }
        delivered
    }

    fn return_undelivered(&mut self, channel: usize, t: Transit) {
        if !t.no_ack {
            self.channels[channel].out -= 1;
        }
        self.queues[t.queue].ready.insert(t.msg.seq, t.msg);
        self.dispatch(t.queue);
    }

    /// channel.close (or a channel error): consumers go, unacked deliveries
    /// are requeued, then deliveries still on their way come back; the
    /// client opens the channel again.
    fn close(&mut self, channel: usize, order: &[usize]) {
        for tag in self.consumer_tags(channel) {
            self.cancel(channel, &tag);
        }
        self.requeue_all(channel, order);
        let coming: Vec<Transit> = self.channels[channel].in_transit.drain(..).collect();
        for t in coming {
            self.return_undelivered(channel, t);
        }
        self.channels[channel] = Chan::new();
    }

    fn restart(&mut self) {
        for q in 0..self.queues.len() {
            let mut kept = BTreeMap::new();
            if self.queues[q].durable {
                let held = self.channels.iter().flat_map(|ch| {
                    let unacked = ch.unacked.values().filter(|u| u.queue == q);
                    let coming = ch.in_transit.iter().filter(|t| t.queue == q);
                    unacked.map(|u| &u.msg).chain(coming.map(|t| &t.msg))
                });
                for msg in self.queues[q].ready.values().chain(held) {
                    if msg.persistent {
                        let mut msg = msg.clone();
                        msg.redelivered = true;
                        kept.insert(msg.seq, msg);
                    }
                }
            }
            let queue = &mut self.queues[q];
            queue.ready = kept;
            queue.line.clear();
            queue.out_of_line.clear();
        }
        self.channels = (0..CHANNELS).map(|_| Chan::new()).collect();
    }

    fn dispatch_all(&mut self, order: &[usize]) {
        for &q in order {
            self.dispatch(q);
        }
    }

    /// Hands ready messages, oldest first, to consumers in turn.
    fn dispatch(&mut self, q: usize) {
        while !self.queues[q].ready.is_empty() {
            self.rejoin(q);
            let Some(next) = self.queues[q].line.pop_front() else {
                return;
            };
            if !self.has_room(&next) {
                self.queues[q].out_of_line.push(next);
                continue;
            }
            let queue = &mut self.queues[q];
            queue.line.push_back(next.clone());
            let Some((_, msg)) = queue.ready.pop_first() else {
                unreachable!("checked above");
            };
            let (channel, tag) = next;
            let ch = &mut self.channels[channel];
            let Some(consumer) = ch.consumer(&tag) else {
                unreachable!("a queue's consumer is on its channel");
            };
            let no_ack = consumer.no_ack;
            if !no_ack {
                consumer.out += 1;
                ch.out += 1;
            }
            ch.in_transit.push_back(Transit {
                queue: q,
                consumer: tag,
                no_ack,
                msg,
            });
        }
    }

    /// Consumers out of line that have room again go to the back of it.
    fn rejoin(&mut self, q: usize) {
        let waiting = std::mem::take(&mut self.queues[q].out_of_line);
        for c in waiting {
            if self.has_room(&c) {
                self.queues[q].line.push_back(c);
            } else {
                self.queues[q].out_of_line.push(c);
            }
        }
    }

    fn has_room(&self, (channel, tag): &(usize, String)) -> bool {
        let ch = &self.channels[*channel];
        let Some(c) = ch.consumers.iter().find(|c| &c.tag == tag) else {
            return false;
        };
        c.no_ack || ((ch.window == 0 || ch.out < ch.window) && (c.window == 0 || c.out < c.window))
    }
}
