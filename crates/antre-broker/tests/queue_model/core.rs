//! The system under test: antre's broker core, persistent in a temporary
//! directory, driven through `Channel` the way the server drives it.
//! Deliveries that queues push to a channel wait in its sink until an
//! [`Action::Pump`] hands them to the channel, as the connection task does
//! when it gets to them.

use std::sync::Arc;

use antre_amqp::method::{
    BasicAck, BasicCancel, BasicConsume, BasicGet, BasicNack, BasicPublish, BasicQos, BasicRecover,
    BasicReject, QueueDeclare,
};
use antre_amqp::{BasicProperties, ContentHeader, Method, CLASS_BASIC};
use antre_broker::clock::{Clock, ManualClock};
use antre_broker::{
    Broker, BrokerError, Channel, ChannelContext, Delivery, DeliverySink, Outgoing, StorageOptions,
    Vhost,
};
use bytes::Bytes;
use parking_lot::Mutex;

use crate::steps::{
    Action, ChannelView, Delivered, InTransit, Observation, QueueView, Reply, CHANNELS, QUEUES,
};

/// Every channel is on this connection.
const CONNECTION: u64 = 1;

/// A channel's sink: deliveries wait here until the channel takes them.
#[derive(Debug, Default)]
struct Sink {
    waiting: Mutex<Vec<Delivery>>,
}

impl DeliverySink for Sink {
    fn deliver(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
        self.waiting.lock().push(delivery);
        Ok(())
    }
    fn cancel(&self, consumer_tag: &str) {
        panic!("no queue is deleted here, yet consumer {consumer_tag} was cancelled");
    }
    fn synced(&self, _token: u64, _ok: bool) {}
}

struct Chan {
    channel: Channel,
    sink: Arc<Sink>,
}

/// The broker and its channels.
pub struct Core {
    dir: tempfile::TempDir,
    options: StorageOptions,
    clock: Arc<ManualClock>,
    broker: Arc<Broker>,
    vhost: Arc<Vhost>,
    channels: Vec<Chan>,
    /// Publishes on its own channel, which never consumes.
    publisher: Chan,
    /// Messages published so far, which numbers their bodies.
    published: u64,
}

impl Core {
    /// A fresh broker; `page_out` gives it no message memory at all, so
    /// every body and index page goes to disk (persistent ones read back
    /// from their store, transient ones from scratch stores).
    pub fn new(page_out: bool) -> Core {
        let dir = temp_dir();
        let options = StorageOptions {
            message_memory_limit: if page_out { 0 } else { 64 * 1024 * 1024 },
            // Pages of three entries, so short runs page their index too.
            page_entries: if page_out { 3 } else { 128 },
            ..StorageOptions::default()
        };
        let clock = Arc::new(ManualClock::at(1_700_000_000_000));
        let (broker, vhost) = open(&dir, &options, &clock);
        let mut core = Core {
            channels: (1..=CHANNELS as u16)
                .map(|id| new_channel(&broker, &vhost, id))
                .collect(),
            publisher: new_channel(&broker, &vhost, CHANNELS as u16 + 1),
            dir,
            options,
            clock,
            broker,
            vhost,
            published: 0,
        };
        core.declare_queues();
        core
    }

    fn declare_queues(&mut self) {
        for (i, name) in QUEUES.iter().enumerate() {
            let declare = QueueDeclare {
                queue: (*name).into(),
                durable: i == 0,
                ..Default::default()
            };
            self.publisher
                .channel
                .handle(declare.into(), &mut Vec::new())
                .expect("declare");
        }
    }

    pub fn apply(&mut self, action: &Action) -> Observation {
        let reply = match action {
            Action::Publish { queue, persistent } => {
                self.publish(*queue, *persistent);
                Reply::Ok
            }
            Action::Consume {
                channel,
                queue,
                no_ack,
                tag,
            } => self.call(
                *channel,
                BasicConsume {
                    queue: QUEUES[*queue].into(),
                    consumer_tag: tag.clone(),
                    no_ack: *no_ack,
                    ..Default::default()
                },
            ),
            Action::Cancel { channel, tag } => self.call(
                *channel,
                BasicCancel {
                    consumer_tag: tag.clone(),
                    nowait: false,
                },
            ),
            Action::Get {
                channel,
                queue,
                no_ack,
            } => self.get(*channel, *queue, *no_ack),
            Action::Ack {
                channel,
                tag,
                multiple,
            } => self.call(
                *channel,
                BasicAck {
                    delivery_tag: *tag,
                    multiple: *multiple,
                },
            ),
            Action::Nack {
                channel,
                tag,
                multiple,
                requeue,
            } => self.call(
                *channel,
                BasicNack {
                    delivery_tag: *tag,
                    multiple: *multiple,
                    requeue: *requeue,
                },
            ),
            Action::Reject {
                channel,
                tag,
                requeue,
            } => self.call(
                *channel,
                BasicReject {
                    delivery_tag: *tag,
                    requeue: *requeue,
                },
            ),
            Action::Qos {
                channel,
                prefetch,
                global,
            } => self.call(
                *channel,
                BasicQos {
                    prefetch_size: 0,
                    prefetch_count: *prefetch,
                    global: *global,
                },
            ),
            Action::Recover { channel } => self.call(*channel, BasicRecover { requeue: true }),
            Action::Pump { channel } => Reply::Delivered(self.pump(*channel)),
            Action::Close { channel } => {
                self.close(*channel);
                Reply::Ok
            }
            Action::Restart => {
                self.restart();
                Reply::Ok
            }
        };
        self.observe(reply)
    }

    fn observe(&self, reply: Reply) -> Observation {
        let queues = QUEUES
            .iter()
            .map(|name| {
                let s = self.vhost.queue(name, CONNECTION).expect("queue").stats();
                QueueView {
                    ready: s.ready.count,
                    unacked: s.unacked.count,
                    consumers: s.consumers,
                    ready_bytes: s.ready.bytes,
                    unacked_bytes: s.unacked.bytes,
                    persistent: s.persistent.count,
                }
            })
            .collect();
        let channels = self
            .channels
            .iter()
            .map(|c| ChannelView {
                unacked: c.channel.unacked_count(),
                consumers: c.channel.consumer_count(),
                in_transit: c
                    .sink
                    .waiting
                    .lock()
                    .iter()
                    .map(|d| InTransit {
                        queue: d.queue.name.clone(),
                        consumer: d.consumer_tag.to_string(),
                        body: body(&d.entry.message.body),
                        redelivered: d.entry.redelivered,
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

    /// Handles a method; an error closes the channel (and the client opens
    /// it again), as the server does with a channel exception.
    fn call(&mut self, channel: usize, method: impl Into<Method>) -> Reply {
        let mut out = Vec::new();
        match self.channels[channel]
            .channel
            .handle(method.into(), &mut out)
        {
            Ok(()) => Reply::Ok,
            Err(e) => self.fail(channel, e),
        }
    }

    fn fail(&mut self, channel: usize, e: BrokerError) -> Reply {
        assert!(!e.closes_connection(), "connection error: {e}");
        self.close(channel);
        Reply::ChannelError(e.reply_code())
    }

    fn publish(&mut self, queue: usize, persistent: bool) {
        let seq = self.next_body();
        let header = ContentHeader {
            class_id: CLASS_BASIC,
            body_size: seq.len() as u64,
            properties: BasicProperties {
                delivery_mode: Some(if persistent { 2 } else { 1 }),
                ..Default::default()
            },
        };
        let publish = BasicPublish {
            routing_key: QUEUES[queue].into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        let p = &mut self.publisher.channel;
        p.publish(publish, header, Bytes::from(seq), &mut out)
            .expect("publish");
        p.flush_confirms(&mut out);
    }

    /// Bodies number messages in publish order: `m0`, `m1`, ...
    fn next_body(&mut self) -> String {
        let n = self.published;
        self.published += 1;
        format!("m{n}")
    }

    fn get(&mut self, channel: usize, queue: usize, no_ack: bool) -> Reply {
        let mut out = Vec::new();
        let get = BasicGet {
            queue: QUEUES[queue].into(),
            no_ack,
            ..Default::default()
        };
        if let Err(e) = self.channels[channel].channel.handle(get.into(), &mut out) {
            return self.fail(channel, e);
        }
        match out.pop() {
            Some(Outgoing::Content(Method::BasicGetOk(m), message)) => Reply::GetOk {
                tag: m.delivery_tag,
                body: body(&message.body),
                redelivered: m.redelivered,
                message_count: m.message_count,
            },
            Some(Outgoing::Method(Method::BasicGetEmpty(_))) => Reply::GetEmpty,
            other => panic!("basic.get answered {other:?}"),
        }
    }

    fn pump(&mut self, channel: usize) -> Vec<Delivered> {
        let c = &mut self.channels[channel];
        let waiting = std::mem::take(&mut *c.sink.waiting.lock());
        let mut out = Vec::new();
        for d in waiting {
            c.channel.deliver(d, &mut out);
        }
        out.into_iter()
            .map(|o| match o {
                Outgoing::Content(Method::BasicDeliver(m), message) => Delivered {
                    consumer: m.consumer_tag,
                    tag: m.delivery_tag,
                    body: body(&message.body),
                    redelivered: m.redelivered,
                },
                other => panic!("a delivery produced {other:?}"),
            })
            .collect()
    }

    /// channel.close: the channel lets go of everything, deliveries still
    /// on their way go back to their queues, and the client reopens it.
    fn close(&mut self, channel: usize) {
        let c = &mut self.channels[channel];
        c.channel.close();
        return_waiting(&c.sink);
        self.channels[channel] = new_channel(&self.broker, &self.vhost, channel as u16 + 1);
    }

    /// A clean restart: connections close, the broker flushes its stores,
    /// and a new broker recovers the directory; the client reconnects and
    /// declares its queues again.
    fn restart(&mut self) {
        self.shut_down();
        self.channels.clear();
        let (broker, vhost) = open(&self.dir, &self.options, &self.clock);
        self.publisher = new_channel(&broker, &vhost, CHANNELS as u16 + 1);
        self.channels = (1..=CHANNELS as u16)
            .map(|id| new_channel(&broker, &vhost, id))
            .collect();
        self.broker = broker;
        self.vhost = vhost;
        self.declare_queues();
    }
}

impl Core {
    /// What a server does when its clients go and it stops: channels close
    /// (consumers cancelled, deliveries back in their queues, which drops
    /// the references between queues and channels), then the stores close.
    fn shut_down(&mut self) {
        for c in &mut self.channels {
            c.channel.close();
        }
        self.publisher.channel.close();
        for c in &self.channels {
            return_waiting(&c.sink);
        }
        self.broker.close();
    }
}

/// A case's broker goes as a server's would: without it, every case left
/// its queues (and their page files) alive through the references between
/// consumers and queues, and a long run (hundreds of thousands of cases)
/// ran out of file descriptors, which showed as store failures.
impl Drop for Core {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// A directory for the broker's data: in memory (tmpfs) where there is
/// one, because the test is about queue semantics, not the disk, and a
/// run makes thousands of fsyncs that a busy disk would turn into minutes.
fn temp_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

fn open(
    dir: &tempfile::TempDir,
    options: &StorageOptions,
    clock: &Arc<ManualClock>,
) -> (Arc<Broker>, Arc<Vhost>) {
    let broker = Broker::open_with_clock(
        dir.path(),
        options.clone(),
        Arc::clone(clock) as Arc<dyn Clock>,
    )
    .expect("open broker");
    let broker = Arc::new(broker);
    let vhost = broker.vhost("/").expect("default vhost");
    (broker, vhost)
}

fn new_channel(broker: &Arc<Broker>, vhost: &Arc<Vhost>, id: u16) -> Chan {
    let sink = Arc::new(Sink::default());
    let ctx = ChannelContext {
        broker: Arc::clone(broker),
        vhost: Arc::clone(vhost),
        connection: CONNECTION,
        user: "guest".into(),
        max_message_size: 1024,
    };
    Chan {
        channel: Channel::new(id, ctx, Arc::clone(&sink) as Arc<dyn DeliverySink>),
        sink,
    }
}

/// What the server does with deliveries for a channel that is gone.
fn return_waiting(sink: &Sink) {
    let waiting = std::mem::take(&mut *sink.waiting.lock());
    for d in waiting {
        let queue = Arc::clone(&d.queue);
        queue.return_undelivered(d);
    }
}

fn body(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}
