//! The durability promise under kill -9: the real `antre` binary runs as a
//! child process and is killed with SIGKILL at random moments while a
//! client publishes persistent messages with confirms. After every restart,
//! every confirmed message is there (or was consumed and acked before), and
//! no message comes back corrupt.
//!
//! `cargo test` runs a few cycles; `scripts/crash-test.sh` runs hundreds
//! (set `ANTRE_CRASH_CYCLES`).

use crate::common;

use std::collections::HashSet;
use std::process::Child;
use std::sync::{Arc, Mutex};

use common::within;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::{Rng, SeedableRng};

struct Broker {
    child: Child,
    uri: String,
    /// The management API's base URL.
    http: String,
}

/// Starts the binary and waits for its "listening on" line.
fn spawn(data_dir: &std::path::Path) -> Broker {
    let common::process::Spawned { child, amqp, http } =
        common::process::spawn_antre(data_dir, &[]);
    Broker {
        child,
        uri: format!("amqp://guest:guest@{amqp}/%2f"),
        http,
    }
}

fn body(id: u64) -> Vec<u8> {
    format!("payment-{id:010}-{}", "x".repeat((id % 97) as usize)).into_bytes()
}

fn parse(data: &[u8]) -> u64 {
    let text = std::str::from_utf8(data).expect("body is UTF-8, not corrupt");
    let id: u64 = text["payment-".len().."payment-".len() + 10]
        .parse()
        .expect("id");
    assert_eq!(data, body(id).as_slice(), "message {id} intact");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill_9() {
    let cycles = common::rounds_from_env("ANTRE_CRASH_CYCLES", 3);
    let seed: u64 = std::env::var("ANTRE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("crash test: {cycles} cycles, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut confirmed_total: HashSet<u64> = HashSet::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut next_id = 0u64;
    let mut redelivered_after_ack = 0usize;

    for cycle in 0..cycles {
        let mut broker = spawn(dir.path());
        let conn = within(
            "connect",
            Connection::connect(&broker.uri, ConnectionProperties::default()),
        )
        .await
        .expect("connect");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.queue_declare(
            "payments",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

        // Everything confirmed before the last kill must be here now.
        while let Some(m) = ch
            .basic_get("payments", BasicGetOptions::default())
            .await
            .unwrap()
        {
            let id = parse(&m.delivery.data);
            if !seen.insert(id) {
                redelivered_after_ack += 1;
            }
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        let missing: Vec<_> = confirmed_total.difference(&seen).collect();
        assert!(
            missing.is_empty(),
            "cycle {cycle}: confirmed messages lost: {missing:?} (seed {seed})"
        );

        // Publish in windows while the broker is killed at a random moment.
        let kill_after = rng.gen_range(1..400usize);
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
        let publisher = {
            let ch = ch.clone();
            let confirmed = Arc::clone(&confirmed);
            let first = next_id;
            tokio::spawn(async move {
                let mut id = first;
                loop {
                    let mut window = Vec::new();
                    for _ in 0..50 {
                        let props = BasicProperties::default().with_delivery_mode(2);
                        match ch
                            .basic_publish(
                                "",
                                "payments",
                                BasicPublishOptions::default(),
                                &body(id),
                                props,
                            )
                            .await
                        {
                            Ok(c) => window.push((id, c)),
                            Err(_) => return,
                        }
                        id += 1;
                    }
                    for (id, c) in window {
                        match c.await {
                            Ok(c) if c.is_ack() => {
                                let mut confirmed = confirmed.lock().unwrap();
                                confirmed.push(id);
                                let _ = count_tx.send(confirmed.len());
                            }
                            _ => return,
                        }
                    }
                }
            })
        };
        within("enough confirms", count_rx.wait_for(|n| *n >= kill_after))
            .await
            .expect("publisher confirms messages");
        broker.child.kill().expect("SIGKILL");
        broker.child.wait().expect("reap");
        let _ = within("publisher stops", publisher).await;
        let confirmed = confirmed.lock().unwrap().clone();
        next_id += 100_000;
        confirmed_total.extend(confirmed);
    }

    // A final restart checks the last cycle's confirms.
    let mut broker = spawn(dir.path());
    let conn = Connection::connect(&broker.uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    while let Some(m) = ch
        .basic_get("payments", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let id = parse(&m.delivery.data);
        if !seen.insert(id) {
            redelivered_after_ack += 1;
        }
    }
    let missing: Vec<_> = confirmed_total.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "confirmed messages lost: {missing:?} (seed {seed})"
    );
    println!(
        "crash test: {cycles} kills, {} confirmed messages all recovered, {redelivered_after_ack} acked ones came back",
        confirmed_total.len()
    );
    broker.child.kill().ok();
    broker.child.wait().ok();
}

/// Calls the management API as guest from a blocking thread.
async fn api(base: &str, method: &str, path: &str, body: serde_json::Value) -> u16 {
    let url = format!("{base}{path}");
    let method = method.to_owned();
    tokio::task::spawn_blocking(move || {
        match ureq::request(&method, &url)
            .set("Authorization", &common::basic_auth("guest", "guest"))
            .send_json(body)
        {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{method} {url}: {e}"),
        }
    })
    .await
    .expect("API call")
}

/// The management API's publish promises what a publisher confirm does:
/// once it answered, a persistent message to a durable queue is on disk,
/// even if the broker is killed the next instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_is_on_disk_when_the_api_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = spawn(dir.path());
    let status = api(
        &broker.http,
        "PUT",
        "/api/queues/%2F/payments",
        serde_json::json!({"durable": true}),
    )
    .await;
    assert_eq!(status, 201);
    for id in 0..20u64 {
        let body = serde_json::json!({
            "routing_key": "payments",
            "payload": String::from_utf8(body(id)).unwrap(),
            "payload_encoding": "string",
            "properties": {"delivery_mode": 2},
        });
        let status = api(
            &broker.http,
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            body,
        )
        .await;
        assert_eq!(status, 200);
    }
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reap");

    let mut broker = spawn(dir.path());
    let conn = Connection::connect(&broker.uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut ids = Vec::new();
    while let Some(m) = ch
        .basic_get("payments", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        ids.push(parse(&m.delivery.data));
    }
    assert_eq!(
        ids,
        (0..20).collect::<Vec<_>>(),
        "every answered publish survived kill -9"
    );
    broker.child.kill().ok();
    broker.child.wait().ok();
}

/// Reads a whole stream from `first` with a consumer: (offset, id) pairs.
async fn read_stream(conn: &Connection, name: &str) -> Vec<(i64, u64)> {
    let ch = conn.create_channel().await.unwrap();
    let opts = QueueDeclareOptions {
        durable: true,
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(name, opts, FieldTable::default())
        .await
        .unwrap();
    let total = q.message_count() as usize;
    ch.basic_qos(500, BasicQosOptions::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        lapin::types::AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(name, "", BasicConsumeOptions::default(), args)
        .await
        .unwrap();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let d = within("stream delivery", futures::StreamExt::next(&mut consumer))
            .await
            .expect("delivery")
            .expect("delivery ok");
        let offset = match d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned())
        {
            Some(lapin::types::AMQPValue::LongLongInt(o)) => o,
            other => panic!("x-stream-offset: {other:?}"),
        };
        out.push((offset, parse(&d.data)));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    ch.close(200, "read").await.ok();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_stream_messages_survive_kill_9_in_order_with_their_offsets() {
    let cycles = common::rounds_from_env("ANTRE_CRASH_CYCLES", 3);
    let seed: u64 = std::env::var("ANTRE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("stream crash test: {cycles} cycles, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut confirmed_total: HashSet<u64> = HashSet::new();
    // What each offset held when last read: it must never change.
    let mut known: Vec<u64> = Vec::new();
    let mut next_id = 0u64;
    for cycle in 0..=cycles {
        let mut broker = spawn(dir.path());
        let conn = within(
            "connect",
            Connection::connect(&broker.uri, ConnectionProperties::default()),
        )
        .await
        .expect("connect");
        let ch = conn.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("stream".into()),
        );
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare("ledger", opts, args).await.unwrap();

        let read = read_stream(&conn, "ledger").await;
        for (i, (offset, id)) in read.iter().enumerate() {
            assert_eq!(
                *offset, i as i64,
                "cycle {cycle}: offsets are dense (seed {seed})"
            );
            if let Some(before) = known.get(i) {
                assert_eq!(
                    before, id,
                    "cycle {cycle}: offset {i} changed (seed {seed})"
                );
            }
        }
        let ids: Vec<u64> = read.iter().map(|(_, id)| *id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "cycle {cycle}: in publish order (seed {seed})"
        );
        let present: HashSet<u64> = ids.iter().copied().collect();
        let missing: Vec<_> = confirmed_total.difference(&present).collect();
        assert!(
            missing.is_empty(),
            "cycle {cycle}: confirmed messages lost: {missing:?} (seed {seed})"
        );
        known = ids;
        if cycle == cycles {
            println!(
                "stream crash test: {cycles} kills, {} confirmed messages all in order at their offsets",
                confirmed_total.len()
            );
            broker.child.kill().ok();
            broker.child.wait().ok();
            break;
        }

        let kill_after = rng.gen_range(1..400usize);
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let publisher = {
            let ch = ch.clone();
            let confirmed = Arc::clone(&confirmed);
            let first = next_id;
            tokio::spawn(async move {
                let mut id = first;
                loop {
                    let mut window = Vec::new();
                    for _ in 0..50 {
                        let props = BasicProperties::default();
                        match ch
                            .basic_publish(
                                "",
                                "ledger",
                                BasicPublishOptions::default(),
                                &body(id),
                                props,
                            )
                            .await
                        {
                            Ok(c) => window.push((id, c)),
                            Err(_) => return,
                        }
                        id += 1;
                    }
                    for (id, c) in window {
                        match c.await {
                            Ok(c) if c.is_ack() => {
                                let mut confirmed = confirmed.lock().unwrap();
                                confirmed.push(id);
                                let _ = count_tx.send(confirmed.len());
                            }
                            _ => return,
                        }
                    }
                }
            })
        };
        within("enough confirms", count_rx.wait_for(|n| *n >= kill_after))
            .await
            .expect("publisher confirms messages");
        broker.child.kill().expect("SIGKILL");
        broker.child.wait().expect("reap");
        let _ = within("publisher stops", publisher).await;
        next_id += 100_000;
        confirmed_total.extend(confirmed.lock().unwrap().iter().copied());
    }
}
