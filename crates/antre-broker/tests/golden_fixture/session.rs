//! One channel on a broker, driven the way the server drives it: methods in,
//! frames out. The generator writes the fixture through it and the test reads
//! the fixture back through it, so both go through the same entry points a
//! client does.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use antre_amqp::method::{
    BasicGet, BasicGetOk, BasicPublish, BasicRecover, ExchangeBind, ExchangeDeclare, QueueBind,
    QueueDeclare,
};
use antre_amqp::{BasicProperties, ContentHeader, FieldTable, Method, CLASS_BASIC};
use antre_broker::{
    Broker, BrokerError, Channel, ChannelContext, Delivery, DeliverySink, Message, Outgoing, Vhost,
};
use bytes::Bytes;

/// The connection id every session uses (no exclusive queues here).
const CONNECTION: u64 = 1;

/// A sink for a channel that never consumes (nothing should arrive) and
/// passes the syncer's answers back, as the server does.
#[derive(Debug)]
struct NoConsumers(Mutex<mpsc::Sender<(u64, bool)>>);

impl DeliverySink for NoConsumers {
    fn deliver(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
        panic!("no consumer was started, yet got {delivery:?}")
    }
    fn cancel(&self, _consumer_tag: &str) {}
    fn synced(&self, token: u64, ok: bool) {
        let _ = self.0.lock().unwrap().send((token, ok));
    }
}

/// A message as basic.get hands it out.
#[derive(Debug, Clone)]
pub struct Got {
    pub method: BasicGetOk,
    pub message: Arc<Message>,
}

/// One open channel on one vhost.
pub struct Session {
    pub broker: Arc<Broker>,
    pub vhost: Arc<Vhost>,
    pub channel: Channel,
    pub out: Vec<Outgoing>,
    synced: mpsc::Receiver<(u64, bool)>,
}

impl Session {
    pub fn open(broker: &Arc<Broker>, vhost: &str) -> Session {
        let vhost = broker.vhost(vhost).expect("vhost exists");
        let ctx = ChannelContext {
            broker: Arc::clone(broker),
            vhost: Arc::clone(&vhost),
            connection: CONNECTION,
            user: "guest".into(),
            max_message_size: 128 * 1024 * 1024,
        };
        let (tx, synced) = mpsc::channel();
        let sink = Arc::new(NoConsumers(Mutex::new(tx)));
        Session {
            broker: Arc::clone(broker),
            vhost,
            channel: Channel::new(1, ctx, sink),
            out: Vec::new(),
            synced,
        }
    }

    /// Handles a method, then, as the server does at the end of a batch,
    /// flushes and waits for what the channel owes the disk (a declare of
    /// a durable queue is answered once it is synced).
    pub fn call(&mut self, m: impl Into<Method>) -> Result<(), BrokerError> {
        self.channel.handle(m.into(), &mut self.out)?;
        self.settle()
    }

    /// Waits for the syncer's answers to what the channel asked for.
    pub fn settle(&mut self) -> Result<(), BrokerError> {
        self.channel.flush_confirms(&mut self.out);
        while self.channel.waiting_for_disk() {
            let (token, ok) = self
                .synced
                .recv_timeout(Duration::from_secs(10))
                .expect("the syncer answers");
            self.channel.on_synced(token, ok, &mut self.out)?;
        }
        Ok(())
    }

    pub fn ok(&mut self, m: impl Into<Method>) {
        let m = m.into();
        let name = m.name();
        if let Err(e) = self.call(m) {
            panic!("{name} failed: {e}");
        }
    }

    pub fn exchange(&mut self, name: &str, kind: &str, arguments: FieldTable) {
        self.ok(ExchangeDeclare {
            exchange: name.into(),
            kind: kind.into(),
            durable: true,
            arguments,
            ..Default::default()
        });
    }

    pub fn queue(&mut self, name: &str, arguments: FieldTable) {
        self.ok(QueueDeclare {
            queue: name.into(),
            durable: true,
            arguments,
            ..Default::default()
        });
    }

    pub fn bind(&mut self, exchange: &str, queue: &str, key: &str, arguments: FieldTable) {
        self.ok(QueueBind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            arguments,
            ..Default::default()
        });
    }

    pub fn bind_exchange(&mut self, source: &str, destination: &str, key: &str) {
        self.ok(ExchangeBind {
            destination: destination.into(),
            source: source.into(),
            routing_key: key.into(),
            ..Default::default()
        });
    }

    pub fn publish(&mut self, exchange: &str, key: &str, properties: BasicProperties, body: &[u8]) {
        let header = ContentHeader {
            class_id: CLASS_BASIC,
            body_size: body.len() as u64,
            properties,
        };
        let m = BasicPublish {
            exchange: exchange.into(),
            routing_key: key.into(),
            ..Default::default()
        };
        self.channel
            .publish(m, header, Bytes::copy_from_slice(body), &mut self.out)
            .unwrap_or_else(|e| panic!("publish to '{exchange}' with key '{key}': {e}"));
        self.settle().expect("synced");
    }

    /// basic.get; None when the queue is empty.
    pub fn get(&mut self, queue: &str, no_ack: bool) -> Option<Got> {
        self.out.clear();
        self.ok(BasicGet {
            queue: queue.into(),
            no_ack,
            ..Default::default()
        });
        match self.out.pop() {
            Some(Outgoing::Content(Method::BasicGetOk(method), message)) => {
                Some(Got { method, message })
            }
            Some(Outgoing::Method(Method::BasicGetEmpty(_))) => None,
            other => panic!("basic.get answered {other:?}"),
        }
    }

    /// Takes every ready message of a queue (acking them as it goes).
    pub fn drain(&mut self, queue: &str) -> Vec<Got> {
        std::iter::from_fn(|| self.get(queue, true)).collect()
    }

    /// Takes every ready message of a queue, leaving them unacked.
    pub fn drain_unacked(&mut self, queue: &str) -> Vec<Got> {
        std::iter::from_fn(|| self.get(queue, false)).collect()
    }

    /// basic.recover(requeue=true): every unacked message goes back.
    pub fn requeue_all(&mut self) {
        self.ok(BasicRecover { requeue: true });
    }

    /// Ready messages in a queue.
    pub fn ready(&self, queue: &str) -> u32 {
        self.vhost
            .queue(queue, CONNECTION)
            .unwrap_or_else(|e| panic!("{e}"))
            .counts()
            .ready
    }
}

/// A field table from pairs, in order.
pub fn table<const N: usize>(entries: [(&str, antre_amqp::FieldValue); N]) -> FieldTable {
    entries.into_iter().collect()
}
