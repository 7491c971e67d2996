//! A Jepsen-style nemesis against a quorum queue under continuous load.
//!
//! Three real `antre` processes (tests/cluster/harness.rs), each reaching
//! the others through a TCP proxy per directed link (tests/cluster/proxy.rs).
//! A publisher sends numbered persistent messages with confirms and a
//! consumer takes them with manual acks, both through any node (they move
//! to the next node whenever theirs fails them, so they also go through
//! nodes that forward to the queue's leader). Meanwhile a nemesis picks a
//! fault at random each round, holds it, and heals it:
//!
//! - kill -9 of the queue's leader or of another node, restarted after;
//! - SIGSTOP of the leader or of another node, long enough for the leader
//!   to lose its lease, then SIGCONT;
//! - the leader or another node cut off from both peers, then healed;
//! - a one-way cut between two nodes;
//! - every link slowed down.
//!
//! Between rounds the queue must make progress again (a confirm after the
//! heal, every node naming the same leader). At the end the queue is
//! drained and the history checked: every confirmed message delivered (0
//! lost), every repeated delivery marked redelivered, no message that was
//! never published, and all nodes with one history of definitions holding
//! every queue a third client's declare was told was made (it declares
//! classic queues through node after node all along).
//!
//! CI runs a few rounds with a fixed seed; `scripts/soak-nemesis.sh` runs
//! many (`ANTRE_NEMESIS_ROUNDS`, `ANTRE_NEMESIS_SEED`), printing the
//! figures.

use crate::harness;
use crate::proxy;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use harness::{queue_names, TestCluster, SECRET};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use proxy::Mesh;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::{timeout, Instant};

const QUEUE: &str = "nemesis";

/// Publishes in flight per batch.
const BATCH: usize = 20;

/// How long a client waits for one reply before it gives its node up (a
/// paused node answers nothing).
const REPLY_WAIT: Duration = Duration::from_secs(3);

/// What the clients saw.
#[derive(Default)]
struct History {
    /// Messages sent (ids 0..published).
    published: u64,
    /// Ids whose publish was confirmed.
    confirmed: BTreeSet<u64>,
    /// Publishes nacked (the node could not take them on).
    nacked: u64,
    /// Publishes whose confirm never came (connection lost, node paused):
    /// each may or may not be in the queue.
    unknown: u64,
    /// When each confirm arrived.
    confirm_times: Vec<Instant>,
    /// Each delivery: id, redelivered flag.
    delivered: Vec<(u64, bool)>,
    /// The publisher's latest troubles (which node, what), printed when
    /// the queue stops confirming.
    troubles: std::collections::VecDeque<String>,
    /// What the consumer did lately (subscribed where, how it ended),
    /// printed when it stops getting messages.
    consumer_log: std::collections::VecDeque<String>,
}

impl History {
    fn consumer_did(&mut self, uri: &str, what: &str) {
        keep_recent(&mut self.consumer_log, uri, what);
    }

    fn trouble(&mut self, uri: &str, what: &str) {
        keep_recent(&mut self.troubles, uri, what);
    }
}

/// Adds a timestamped line to `log`, which keeps the latest 20.
fn keep_recent(log: &mut std::collections::VecDeque<String>, uri: &str, what: &str) {
    if log.len() == 20 {
        log.pop_front();
    }
    log.push_back(format!("{:?} {uri}: {what}", std::time::SystemTime::now()));
}

type Shared = Arc<Mutex<History>>;

fn record<T>(h: &Shared, f: impl FnOnce(&mut History) -> T) -> T {
    f(&mut h.lock().expect("history"))
}

/// A connection and channel to `uri`, or `None` if the node does not
/// answer in time.
async fn open(uri: &str) -> Option<(Connection, Channel)> {
    let conn = timeout(
        REPLY_WAIT,
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .ok()?
    .ok()?;
    let ch = timeout(REPLY_WAIT, conn.create_channel())
        .await
        .ok()?
        .ok()?;
    Some((conn, ch))
}

/// Publishes numbered messages, `BATCH` in flight, through node after
/// node until `stop`.
fn publisher(uris: Vec<String>, h: Shared, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut next_id = 0u64;
        for uri in uris.iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Some((conn, ch)) = open(uri).await else {
                record(&h, |h| h.trouble(uri, "no connection"));
                continue;
            };
            let confirms = timeout(
                REPLY_WAIT,
                ch.confirm_select(ConfirmSelectOptions::default()),
            );
            if !matches!(confirms.await, Ok(Ok(()))) {
                record(&h, |h| h.trouble(uri, "no confirm.select-ok"));
                continue;
            }
            while !stop.load(Ordering::Relaxed) {
                let mut pending = Vec::new();
                for _ in 0..BATCH {
                    let id = next_id;
                    next_id += 1;
                    record(&h, |h| h.published += 1);
                    let body = id.to_string();
                    let publish = ch.basic_publish(
                        "",
                        QUEUE,
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    );
                    match timeout(REPLY_WAIT, publish).await {
                        Ok(Ok(confirm)) => pending.push((id, confirm)),
                        other => {
                            let what = format!("publish failed: {other:?}");
                            record(&h, |h| {
                                h.unknown += 1;
                                h.trouble(uri, &what);
                            });
                            break;
                        }
                    }
                }
                // A short batch, a nack or a lost confirm: try another node.
                let mut healthy = pending.len() == BATCH;
                // One wait for the whole batch: a node that lost its
                // confirms is left after REPLY_WAIT, not after BATCH of them.
                let deadline = Instant::now() + REPLY_WAIT;
                for (id, confirm) in pending {
                    match tokio::time::timeout_at(deadline, confirm).await {
                        Ok(Ok(c)) if c.is_ack() => record(&h, |h| {
                            h.confirmed.insert(id);
                            h.confirm_times.push(Instant::now());
                        }),
                        Ok(Ok(_)) => {
                            record(&h, |h| {
                                h.nacked += 1;
                                h.trouble(uri, "nack");
                            });
                            healthy = false;
                        }
                        other => {
                            let what = format!("no confirm: {other:?}");
                            record(&h, |h| {
                                h.unknown += 1;
                                h.trouble(uri, &what);
                            });
                            healthy = false;
                        }
                    }
                }
                if !healthy {
                    break;
                }
            }
            let _ = timeout(Duration::from_secs(1), conn.close(200, "bye")).await;
        }
    })
}

/// Consumes with acks through node after node until `stop`.
fn consumer(uris: Vec<String>, h: Shared, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for uri in uris.iter().cycle().skip(1) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Some((conn, ch)) = open(uri).await else {
                continue;
            };
            let qos = timeout(REPLY_WAIT, ch.basic_qos(50, BasicQosOptions::default()));
            if !matches!(qos.await, Ok(Ok(()))) {
                continue;
            }
            let consume = ch.basic_consume(
                QUEUE,
                "nemesis",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            );
            let Ok(Ok(mut deliveries)) = timeout(REPLY_WAIT, consume).await else {
                record(&h, |h| h.consumer_did(uri, "no consume-ok"));
                continue;
            };
            record(&h, |h| h.consumer_did(uri, "subscribed"));
            let mut got = 0u64;
            loop {
                // Wakes up now and then to notice `stop`. An idle consumer
                // stays where it is: one the queue's leader never feeds
                // (left on an engine that no longer serves the queue,
                // without a basic.cancel) is a bug this test is to find.
                let next = timeout(Duration::from_millis(500), deliveries.next()).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let d = match next {
                    Err(_) => continue,
                    Ok(Some(Ok(d))) => d,
                    other => {
                        let what = format!("ended after {got} deliveries: {other:?}");
                        record(&h, |h| h.consumer_did(uri, &what));
                        break;
                    }
                };
                got += 1;
                if let Some(id) = std::str::from_utf8(&d.data)
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    record(&h, |h| h.delivered.push((id, d.redelivered)));
                }
                let ack = timeout(REPLY_WAIT, d.ack(BasicAckOptions::default()));
                if !matches!(ack.await, Ok(Ok(()))) {
                    record(&h, |h| {
                        h.consumer_did(uri, &format!("ack failed after {got}"))
                    });
                    break;
                }
            }
            // Closing hands back what it holds unacked, marked redelivered.
            let _ = timeout(Duration::from_secs(2), conn.close(200, "bye")).await;
        }
    })
}

/// Declares durable classic queues, one every 50 ms, through node after
/// node until `stop`; the names whose declare was answered OK, and how
/// many declares failed (refused without a quorum, or unanswered: each
/// may or may not have been committed).
fn declarer(
    uris: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, u64)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (Vec::new(), 0);
        let mut k = 0;
        for uri in uris.iter().cycle().skip(2) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Some((conn, ch)) = open(uri).await else {
                continue;
            };
            while !stop.load(Ordering::Relaxed) {
                let name = format!("meta-{k}");
                k += 1;
                let opts = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                // A change waits up to the cluster's change timeout (3 s).
                let declare = ch.queue_declare(&name, opts, FieldTable::default());
                match timeout(REPLY_WAIT * 2, declare).await {
                    Ok(Ok(_)) => ok.push(name),
                    _ => {
                        failed += 1;
                        break;
                    }
                }
                // Pacing, so that the metadata log stays small.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = timeout(Duration::from_secs(1), conn.close(200, "bye")).await;
        }
        (ok, failed)
    })
}

/// One round's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    KillLeader,
    KillFollower,
    PauseLeader,
    PauseFollower,
    IsolateLeader,
    IsolateFollower,
    OneWayCut,
    SlowLinks,
}

const FAULTS: [Fault; 8] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::PauseLeader,
    Fault::PauseFollower,
    Fault::IsolateLeader,
    Fault::IsolateFollower,
    Fault::OneWayCut,
    Fault::SlowLinks,
];

/// Waits until every node names the same leader of the queue, which has
/// taken the queue over; its index.
async fn wait_queue_leader(c: &TestCluster) -> usize {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        if let Some(l) = agreed_queue_leader(c).await {
            return l;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("no agreed leader of {QUEUE}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node every node names as the queue's leader, if they agree and it
/// has taken the queue over.
async fn agreed_queue_leader(c: &TestCluster) -> Option<usize> {
    let leader = c.queue_leader(QUEUE).await?;
    for i in 0..c.nodes.len() {
        let q = c.queue_on(i, QUEUE).await?;
        if q["leader"] != serde_json::Value::String(c.nodes[leader].name.clone()) {
            return None;
        }
    }
    Some(leader)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_keeps_one_history_through_random_faults_under_load() {
    let rounds = env_or("ANTRE_NEMESIS_ROUNDS", 5);
    let seed = env_or("ANTRE_NEMESIS_SEED", 15);
    let mut rng = StdRng::seed_from_u64(seed);

    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let mesh = Mesh::between(&mut c).await;
    c.launch().await;
    c.until_leader(&[0, 1, 2]).await;

    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    c.until("the queue declared", || async {
        let Some((_conn, ch)) = open(&c.nodes[0].amqp_uri()).await else {
            return false;
        };
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(QUEUE, opts, args.clone()).await.is_ok()
    })
    .await;
    wait_queue_leader(&c).await;

    let h: Shared = Arc::default();
    let uris: Vec<String> = c.nodes.iter().map(|n| n.amqp_uri()).collect();
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let publishing = publisher(uris.clone(), Arc::clone(&h), Arc::clone(&stop_publishing));
    let consuming = consumer(uris.clone(), Arc::clone(&h), Arc::clone(&stop_consuming));
    let declaring = declarer(uris.clone(), Arc::clone(&stop_publishing));
    c.until("confirms before the first fault", || async {
        record(&h, |h| h.confirmed.len()) >= 200
    })
    .await;

    let mut faults: HashMap<Fault, u32> = HashMap::new();
    let mut recoveries = Vec::new();
    for round in 0..rounds {
        let fault = FAULTS[rng.gen_range(0..FAULTS.len())];
        let leader = wait_queue_leader(&c).await;
        let other = (leader + rng.gen_range(1..3)) % 3;
        let hold = Duration::from_millis(rng.gen_range(1000..2500));
        eprintln!(
            "nemesis round {round}: {fault:?} (leader {}, other {}) for {hold:?}",
            names[leader], names[other]
        );
        *faults.entry(fault).or_default() += 1;
        match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let i = if fault == Fault::KillLeader {
                    leader
                } else {
                    other
                };
                c.kill(i);
                tokio::time::sleep(hold).await;
                c.spawn(i);
                c.wait_http(i).await;
            }
            Fault::PauseLeader | Fault::PauseFollower => {
                let i = if fault == Fault::PauseLeader {
                    leader
                } else {
                    other
                };
                c.pause(i);
                tokio::time::sleep(hold).await;
                c.resume(i);
            }
            Fault::IsolateLeader | Fault::IsolateFollower => {
                mesh.isolate(if fault == Fault::IsolateLeader {
                    leader
                } else {
                    other
                });
                tokio::time::sleep(hold).await;
                mesh.heal();
            }
            Fault::OneWayCut => {
                mesh.cut_one_way(leader, other);
                tokio::time::sleep(hold).await;
                mesh.heal();
            }
            Fault::SlowLinks => {
                let d = Duration::from_millis(rng.gen_range(10..40));
                for a in 0..3 {
                    for b in (a + 1)..3 {
                        mesh.delay(a, b, d);
                    }
                }
                tokio::time::sleep(hold).await;
                mesh.heal();
            }
        }
        // Healed: the queue must take confirms again, with one leader.
        let healed = Instant::now();
        while !record(&h, |h| h.confirm_times.last().is_some_and(|&t| t > healed)) {
            if healed.elapsed() > harness::WAIT {
                // What the publisher and every node saw, for the record.
                for t in record(&h, |h| h.troubles.clone()) {
                    eprintln!("publisher: {t}");
                }
                for i in 0..3 {
                    eprintln!("{}: {:?}", c.nodes[i].name, c.queue_on(i, QUEUE).await);
                }
                c.dump_logs();
                panic!("timed out waiting for a confirm after round {round} ({fault:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        recoveries.push(healed.elapsed());
    }

    stop_publishing.store(true, Ordering::Relaxed);
    publishing.await.expect("publisher");
    let (declared, refused) = declaring.await.expect("declarer");
    // The consumer goes on until it has had every confirmed message. One
    // that stops getting them is a failure of its own (reported after the
    // drain below has told whether the messages are still in the queue).
    let want = record(&h, |h| h.confirmed.clone());
    let missing = || {
        record(&h, |h| {
            let got: BTreeSet<u64> = h.delivered.iter().map(|&(id, _)| id).collect();
            want.difference(&got).count()
        })
    };
    let deadline = Instant::now() + harness::WAIT;
    while missing() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let starved = missing();
    if starved > 0 {
        eprintln!("the consumer lacks {starved} confirmed messages");
        for e in record(&h, |h| h.consumer_log.clone()) {
            eprintln!("consumer: {e}");
        }
        for i in 0..3 {
            eprintln!("{}: {:?}", c.nodes[i].name, c.queue_on(i, QUEUE).await);
            for what in ["/api/channels", "/api/consumers"] {
                eprintln!(
                    "{} {what}: {:?}",
                    c.nodes[i].name,
                    c.try_api(i, "GET", what, None).await
                );
            }
        }
        c.dump_logs();
    }
    stop_consuming.store(true, Ordering::Relaxed);
    consuming.await.expect("consumer");
    // What is left (unconfirmed publishes that did make it, deliveries
    // handed back when the consumer closed) comes out of the leader.
    c.until("the queue drained", || async {
        let l = wait_queue_leader(&c).await;
        let Some((_conn, ch)) = open(&uris[l]).await else {
            return false;
        };
        loop {
            match ch.basic_get(QUEUE, BasicGetOptions { no_ack: true }).await {
                Ok(Some(m)) => {
                    if let Some(id) = std::str::from_utf8(&m.delivery.data)
                        .ok()
                        .and_then(|s| s.parse().ok())
                    {
                        record(&h, |h| h.delivered.push((id, m.delivery.redelivered)));
                    }
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        c.queue_on(l, QUEUE)
            .await
            .is_some_and(|q| q["messages"] == 0 && q["messages_unacknowledged"] == 0)
    })
    .await;
    // Every declare answered OK, whichever node took it, is on all three.
    c.until_one_history(&[0, 1, 2], |d| {
        let names: BTreeSet<String> = queue_names(d).into_iter().collect();
        names.contains(QUEUE) && declared.iter().all(|q| names.contains(q))
    })
    .await;

    let h = h.lock().expect("history");
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut unmarked = 0;
    for &(id, redelivered) in &h.delivered {
        let n = seen.entry(id).or_default();
        if *n > 0 && !redelivered {
            unmarked += 1;
        }
        *n += 1;
    }
    let lost: Vec<u64> = h
        .confirmed
        .iter()
        .copied()
        .filter(|id| !seen.contains_key(id))
        .collect();
    let phantom = seen.keys().filter(|&&id| id >= h.published).count();
    let duplicated: usize = seen.values().map(|n| n - 1).sum();
    let mut gaps: Vec<Duration> = h.confirm_times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let mut faults: Vec<_> = faults.into_iter().collect();
    faults.sort();
    let max_recovery = recoveries.iter().max().copied().unwrap_or_default();
    let mean_recovery = recoveries.iter().sum::<Duration>() / recoveries.len().max(1) as u32;
    println!(
        "nemesis: seed {seed}, rounds {rounds} {faults:?}, published {}, confirmed {}, nacked {}, \
         unknown {}, delivered {}, lost {}, duplicated (redelivered) {duplicated}, \
         unmarked repeats {unmarked}, phantom {phantom}, heal to first confirm mean {:.2} s \
         max {:.2} s, longest time without a confirm {:.2} s; declares ok {} (on every node), \
         failed {refused}",
        h.published,
        h.confirmed.len(),
        h.nacked,
        h.unknown,
        h.delivered.len(),
        lost.len(),
        mean_recovery.as_secs_f64(),
        max_recovery.as_secs_f64(),
        gaps.last().copied().unwrap_or_default().as_secs_f64(),
        declared.len(),
    );
    if !lost.is_empty() || unmarked > 0 || phantom > 0 {
        c.dump_logs();
    }
    assert!(lost.is_empty(), "confirmed but never delivered: {lost:?}");
    assert_eq!(
        starved, 0,
        "confirmed messages the consumer never got (the drain did)"
    );
    assert_eq!(unmarked, 0, "repeated deliveries not marked redelivered");
    assert_eq!(phantom, 0, "deliveries of messages never published");
}
