//! Bounded memory under load (issue #11): the real `antre` binary runs as a
//! child process, so its resident memory is its own, with a memory high
//! watermark of a few hundred MiB, and real clients push it:
//!
//! - a transient backlog larger than the watermark is paged to disk, never
//!   blocks its publisher, and comes back whole;
//! - a no-ack consumer that stops reading its socket costs at most its
//!   output window: the rest stays in the queue, counted;
//! - memory that does fill up (unacked deliveries with no prefetch limit)
//!   raises the memory alarm: publishers are blocked, everyone else is
//!   served, and once the memory is freed the alarm clears and nothing
//!   published is lost;
//! - a fast persistent publisher is stopped by the disk alarm within a
//!   small bound of the limit, not a second's worth of writes past it.

use crate::common;

use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use antre_amqp::method::*;
use antre_amqp::{Frame, Method};
use common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const MIB: u64 = 1 << 20;
/// Body of the test messages: 64 KiB, so hundreds of MiB are few messages.
const BODY: usize = 64 * 1024;

/// The broker binary, running.
struct Broker {
    child: Child,
    uri: String,
    http: String,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// Starts the binary with `args` and waits for its "listening" line.
    fn spawn(args: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let process::Spawned { child, amqp, http } = process::spawn_antre(dir.path(), args);
        Broker {
            child,
            uri: format!("amqp://guest:guest@{amqp}/%2f"),
            http,
            addr: amqp.parse().expect("address"),
            _dir: dir,
        }
    }

    /// The broker's resident memory, from /proc.
    fn rss(&self) -> u64 {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.child.id()))
            .expect("broker is running");
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    async fn lapin(&self) -> Connection {
        within(
            "connect",
            Connection::connect(&self.uri, ConnectionProperties::default()),
        )
        .await
        .expect("lapin connects")
    }

    /// GETs an API path as guest: (status, JSON or text).
    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.http);
        let auth = basic_auth("guest", "guest");
        let call = tokio::task::spawn_blocking(move || {
            let resp = match ureq::get(&url).set("Authorization", &auth).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("GET {url}: {e}"),
            };
            let status = resp.status();
            let text = resp.into_string().expect("body");
            let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            (status, json)
        });
        within("HTTP call", call).await.expect("HTTP task")
    }

    async fn messages(&self, queue: &str) -> u64 {
        let (status, q) = self.get(&format!("/api/queues/%2F/{queue}")).await;
        assert_eq!(status, 200, "{q}");
        q["messages_ready"].as_u64().expect("messages_ready")
    }
}

/// A 64 KiB body that names its message.
fn body(i: u64) -> Vec<u8> {
    let mut b = vec![(i % 251) as u8; BODY];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b
}

fn index_of(data: &[u8]) -> u64 {
    assert_eq!(data.len(), BODY, "whole body");
    let i = u64::from_be_bytes(data[..8].try_into().unwrap());
    assert!(
        data[8..].iter().all(|&b| b == (i % 251) as u8),
        "message {i} intact"
    );
    i
}

/// Publishes `n` messages starting at `first` in batches, waiting for the
/// confirms of each batch.
async fn publish(ch: &lapin::Channel, queue: &str, first: u64, n: u64, persistent: bool) {
    let props = if persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    for i in first..first + n {
        ch.basic_publish(
            "",
            queue,
            BasicPublishOptions::default(),
            &body(i),
            props.clone(),
        )
        .await
        .expect("publish");
        if i % 64 == 63 {
            within("confirms", ch.wait_for_confirms())
                .await
                .expect("confirms");
        }
    }
    within("confirms", ch.wait_for_confirms())
        .await
        .expect("confirms");
}

/// A publisher that publishes 64 KiB messages until told to stop. While
/// its connection is blocked its current publish waits (the broker does
/// not read it); it returns how many it published.
struct Flood {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Flood {
    fn start(ch: &lapin::Channel, queue: &'static str, persistent: bool, cap: u64) -> Flood {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ch, flag) = (ch.clone(), Arc::clone(&stop));
        let props = if persistent {
            BasicProperties::default().with_delivery_mode(2)
        } else {
            BasicProperties::default()
        };
        let task = tokio::spawn(async move {
            let mut published = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                assert!(published * (BODY as u64) < cap, "never blocked");
                ch.basic_publish(
                    "",
                    queue,
                    BasicPublishOptions::default(),
                    &body(published),
                    props.clone(),
                )
                .await
                .expect("publish");
                published += 1;
            }
            published
        });
        Flood { stop, task }
    }

    /// Stops it; returns how many it published, all confirmed.
    async fn stop(self, ch: &lapin::Channel) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let published = within("publisher", self.task).await.unwrap();
        within("confirms", ch.wait_for_confirms())
            .await
            .expect("confirms");
        published
    }
}

async fn until_blocked(conn: &Connection, blocked: bool) {
    within("connection.blocked", async {
        while conn.status().blocked() != blocked {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn channel(conn: &Connection, queue: &str, durable: bool) -> lapin::Channel {
    let ch = confirm_channel(conn).await;
    let options = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    ch.queue_declare(queue, options, FieldTable::default())
        .await
        .expect("declare");
    ch
}

/// Issue #11, problem 2: 2.4 GiB of transient messages with no consumer
/// took RSS to 3.3 GB. Now a transient backlog larger than the watermark
/// goes to disk past the message budget: the publisher is never blocked,
/// RSS stays far below the watermark, and every message comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_backlog_larger_than_the_watermark_is_paged_not_held() {
    let broker = Broker::spawn(&["--memory-high-watermark", "256MiB"]);
    let conn = broker.lapin().await;
    let ch = channel(&conn, "backlog", false).await;
    let n = 384 * MIB / BODY as u64;
    let mut peak = 0;
    for batch in 0..8 {
        publish(&ch, "backlog", batch * n / 8, n / 8, false).await;
        peak = peak.max(broker.rss());
        assert!(!conn.status().blocked(), "the publisher was blocked");
    }
    assert!(peak < 160 * MIB, "RSS reached {} MiB", peak / MIB);
    assert_eq!(broker.messages("backlog").await, n);
    let (_, nodes) = broker.get("/api/nodes").await;
    assert_eq!(nodes[0]["mem_alarm"], false);
    assert_eq!(nodes[0]["mem_limit"], 256 * MIB);

    // Everything comes back, in order and intact.
    let reader = conn.create_channel().await.unwrap();
    reader
        .basic_qos(256, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = reader
        .basic_consume(
            "backlog",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..n {
        let d = within("delivery", consumer.next()).await.unwrap().unwrap();
        assert_eq!(index_of(&d.data), i);
        if i % 64 == 63 || i == n - 1 {
            d.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
    }
    assert!(broker.rss() < 160 * MIB);
    reader.close(200, "done").await.unwrap();

    // A purged backlog leaves no memory behind either.
    publish(&ch, "backlog", 0, n / 2, false).await;
    let (status, _) = broker.get("/api/queues/%2F/backlog").await;
    assert_eq!(status, 200);
    let purged = ch
        .queue_purge("backlog", QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(u64::from(purged), n / 2);
    assert!(broker.rss() < 160 * MIB);
}

/// Issue #11, problem 3: a no-ack consumer that stops reading made its
/// queue push everything into the connection's buffer (1.7 GiB published,
/// 2 GB RSS, the queue shown empty). Now its deliveries stop once its
/// output window is full: the backlog stays in the queue, counted and
/// paged, a bystander is served meanwhile, and when the consumer reads
/// again it gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_costs_its_output_window_only() {
    let broker = Broker::spawn(&["--memory-high-watermark", "256MiB"]);
    let mut stalled = RawClient::connect(broker.addr, 0).await;
    stalled.open_channel(1).await;
    let declare = QueueDeclare {
        queue: "stalled".into(),
        ..Default::default()
    };
    stalled.send(1, declare).await;
    stalled.recv_method().await.expect("declare-ok");
    let consume = BasicConsume {
        queue: "stalled".into(),
        no_ack: true,
        ..Default::default()
    };
    stalled.send(1, consume).await;
    let (_, ok) = stalled.recv_method().await.expect("consume-ok");
    assert!(matches!(ok, Method::BasicConsumeOk(_)), "{ok:?}");
    // From here on the client reads nothing.

    let conn = broker.lapin().await;
    let ch = channel(&conn, "stalled", false).await;
    let n = 384 * MIB / BODY as u64;
    let mut peak = 0;
    for batch in 0..8 {
        publish(&ch, "stalled", batch * n / 8, n / 8, false).await;
        peak = peak.max(broker.rss());
    }
    assert!(peak < 160 * MIB, "RSS reached {} MiB", peak / MIB);
    // What left the queue is the output window plus what the kernel's
    // socket buffers took: a few MiB, not the backlog.
    let ready = broker.messages("stalled").await;
    assert!(
        n - ready < 16 * MIB / BODY as u64,
        "{} of {n} left the queue",
        n - ready
    );

    // A bystander on another queue is served meanwhile.
    let bystander = broker.lapin().await;
    let side = channel(&bystander, "side", false).await;
    let mut side_consumer = side
        .basic_consume(
            "side",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&side, "side", 0, 10, false).await;
    for i in 0..10 {
        let d = within("side delivery", side_consumer.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(index_of(&d.data), i);
    }

    // The consumer reads again and gets every message, once, in order.
    let mut next = 0;
    while next < n {
        match stalled.recv().await.expect("a frame") {
            Frame::Body { payload, .. } => {
                // 64 KiB bodies fit one frame (frame_max 128 KiB).
                assert_eq!(index_of(&payload), next);
                next += 1;
            }
            Frame::Method {
                method: Method::BasicDeliver(_),
                ..
            }
            | Frame::Header { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(broker.messages("stalled").await, 0);
}

/// Issue #11, problem 2 (the alarm): there was no memory limit at all.
/// Unacked deliveries with no prefetch limit do fill memory; past the
/// watermark publishers are blocked with RabbitMQ's "low on memory", the
/// alarm shows in the API, health checks and metrics, a bystander
/// consumer is served, and once the hoarder lets go the memory is given
/// back, the alarm clears, and every message published is in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_alarm_blocks_publishers_until_memory_is_freed() {
    let broker = Broker::spawn(&["--memory-high-watermark", "160MiB"]);
    let bystander = broker.lapin().await;
    let side = channel(&bystander, "side", false).await;
    publish(&side, "side", 0, 20, false).await;

    // The hoarder takes everything and acks nothing.
    let hoarder = broker.lapin().await;
    let hoard = hoarder.create_channel().await.unwrap();
    let publisher = broker.lapin().await;
    let ch = channel(&publisher, "hoard", false).await;
    let mut hoarded = hoard
        .basic_consume(
            "hoard",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let drain = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(Ok(_)) = hoarded.next().await {
            n += 1;
        }
        n
    });

    let flood = Flood::start(&ch, "hoard", false, 512 * MIB);
    until_blocked(&publisher, true).await;
    let blocked = broker.rss();
    assert!(
        blocked < (160 + 32) * MIB,
        "blocked at {} MiB, past the watermark by more than the bound",
        blocked / MIB
    );
    let (_, nodes) = broker.get("/api/nodes").await;
    assert_eq!(nodes[0]["mem_alarm"], true, "{nodes}");
    assert_eq!(nodes[0]["mem_limit"], 160 * MIB);
    let (status, health) = broker.get("/api/health/checks/alarms").await;
    assert_eq!(status, 503);
    assert_eq!(health["status"], "failed");
    assert_eq!(health["alarms"][0]["resource"], "memory", "{health}");
    let (status, _) = broker.get("/readyz").await;
    assert_eq!(status, 503);
    let (_, metrics) = broker.get("/metrics").await;
    let metrics = metrics.as_str().expect("text").to_owned();
    assert!(
        metrics.contains("\nrabbitmq_alarms_memory_used_watermark 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\nantre_memory_alarm 1\n"));
    // Consumers are served while publishers wait.
    // (A fresh connection: one that has published is blocked as a whole,
    // as in RabbitMQ.)
    let consumer_only = broker.lapin().await;
    let reader = consumer_only.create_channel().await.unwrap();
    let mut side_consumer = reader
        .basic_consume(
            "side",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..20 {
        let d = within("side delivery", side_consumer.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(index_of(&d.data), i);
    }

    // The hoarder lets go: its deliveries return to the queue (and to
    // disk, past the message budget), memory goes back to the system, the
    // alarm clears and the publisher goes on.
    hoarder.close(200, "done").await.unwrap();
    assert!(drain.await.unwrap() > 0);
    until_blocked(&publisher, false).await;
    let published = flood.stop(&ch).await;
    assert_eq!(broker.messages("hoard").await, published, "nothing lost");
    let (_, nodes) = broker.get("/api/nodes").await;
    assert_eq!(nodes[0]["mem_alarm"], false);
}

/// Issue #11, problem 9: the disk alarm polled once a second, so a fast
/// publisher wrote 57-84 MB past the limit. Now bytes written since the
/// last reading are counted and trigger the next one: with the periodic
/// check an hour apart, a fast persistent publisher is still blocked
/// within a few MiB of the limit. (The file system here is simulated by a
/// gauge whose free space is a fixed amount minus what the data directory
/// holds, so other processes writing to the disk cannot disturb the test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_publisher_is_stopped_at_the_disk_limit_not_a_second_later() {
    use antre_broker::alarm::{Gauge, Resource};

    #[derive(Debug)]
    struct DataDir {
        dir: std::path::PathBuf,
        room: u64,
    }

    fn du(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => du(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    impl Gauge for DataDir {
        fn headroom(&self) -> Option<i64> {
            Some(self.room as i64 - du(&self.dir) as i64)
        }
    }

    let broker =
        TestBroker::start_with(|c| c.disk_check_interval = Duration::from_secs(3600)).await;
    let room = 64 * MIB;
    let dir = broker.dir.path().to_path_buf();
    broker.server.broker.alarms.set_gauge(
        Resource::Disk,
        Arc::new(DataDir {
            dir: dir.clone(),
            room,
        }),
    );
    let conn = broker.lapin().await;
    let ch = channel(&conn, "fast", true).await;
    let flood = Flood::start(&ch, "fast", true, 4 * room);
    until_blocked(&conn, true).await;
    let written = du(&dir);
    assert!(
        written < room + 4 * MIB,
        "{} MiB written past the limit",
        (written.saturating_sub(room)) / MIB
    );
    assert!(broker.server.alarms.state().disk);

    // Space comes back: the publisher goes on, and nothing was lost.
    broker.server.broker.alarms.set_gauge(
        Resource::Disk,
        Arc::new(DataDir {
            dir: dir.clone(),
            room: 1 << 40,
        }),
    );
    until_blocked(&conn, false).await;
    let published = flood.stop(&ch).await;
    assert_eq!(u64::from(ready_count(&ch, "fast").await), published);
}

/// Issue #11, problem 4: each queue kept up to 64 MiB of bodies, so memory
/// grew with the number of queues. Now one budget covers them all: 64
/// durable queues with 6 MiB of persistent messages each (384 MiB) stay
/// far below a 256 MiB watermark, and every message reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_queues_share_one_message_budget() {
    let broker = Broker::spawn(&["--memory-high-watermark", "256MiB"]);
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let queues: Vec<String> = (0..64).map(|i| format!("q{i:02}")).collect();
    for q in &queues {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(q, options, FieldTable::default())
            .await
            .unwrap();
    }
    let per_queue = 6 * MIB / BODY as u64;
    let mut peak = 0;
    for round in 0..per_queue {
        for q in &queues {
            ch.basic_publish(
                "",
                q,
                BasicPublishOptions::default(),
                &body(round),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        }
        within("confirms", ch.wait_for_confirms())
            .await
            .expect("confirms");
        peak = peak.max(broker.rss());
    }
    assert!(!conn.status().blocked());
    assert!(peak < 160 * MIB, "RSS reached {} MiB", peak / MIB);
    for q in &queues {
        assert_eq!(broker.messages(q).await, per_queue);
    }
    let reader = conn.create_channel().await.unwrap();
    for q in queues.iter().step_by(9) {
        for i in 0..per_queue {
            let got = reader
                .basic_get(q, BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .expect("a message");
            assert_eq!(index_of(&got.delivery.data), i);
        }
    }
}

/// Issue #11, item 1, end to end: ten queues of length one dead-lettering
/// into a fanout they are all bound to, one message in each, then one more
/// publish. The dead-letter budget ends the storm: the broker stays
/// responsive, memory stays bounded, and the dropped letters are counted.
/// (The broker is a child process, so its memory is not other tests'.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_storm_leaves_the_broker_responsive() {
    use lapin::types::AMQPValue;
    let broker = Broker::spawn(&[]);
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    ch.exchange_declare(
        "storm",
        lapin::ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("storm".into()),
    );
    for i in 0..10 {
        let name = format!("storm-{i}");
        ch.queue_declare(&name, Default::default(), args.clone())
            .await
            .unwrap();
        ch.queue_bind(&name, "storm", "", Default::default(), Default::default())
            .await
            .unwrap();
        publish_confirmed(&ch, "", &name, b"one").await;
    }
    let rss_before = broker.rss();
    publish_confirmed(&ch, "storm", "", b"the one more").await;

    // A bystander on another connection: publish and get.
    let bystander = broker.lapin().await;
    let bch = confirm_channel(&bystander).await;
    declare(&bch, "bystander").await;
    publish_confirmed(&bch, "", "bystander", b"hello").await;
    let got = within(
        "basic.get",
        bch.basic_get("bystander", BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("the bystander's message");
    assert_eq!(got.data, b"hello");
    assert_eq!(broker.get("/healthz").await.0, 200);
    for i in 0..10 {
        assert_eq!(ready_count(&ch, &format!("storm-{i}")).await, 1);
    }
    let grown = broker.rss().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "memory grew by {grown} bytes");
    let (_, metrics) = broker.get("/metrics").await;
    let metrics = metrics.as_str().expect("metrics text");
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("antre_dead_letters_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("antre_dead_letters_dropped_total on /metrics");
    assert!(dropped > 0.0, "dropped letters are counted: {dropped}");
}
