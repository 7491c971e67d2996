//! A Jepsen-style nemesis against a quorum queue, and a stream, under
//! continuous load.
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
//! queues through node after node all along). Every quorum queue among
//! them, whose group started during the faults, must then elect, confirm
//! and deliver.
//!
//! The same faults run against a stream, whose check is that every node
//! reads the same messages at the same offsets from its first, every
//! confirmed one among them, none twice.
//!
//! CI runs a few rounds with a fixed seed; `scripts/soak-nemesis.sh` runs
//! many (`ANTRE_NEMESIS_ROUNDS`, `ANTRE_NEMESIS_SEED`), printing the
//! figures.
//!
//! The same load and checks run through a rolling upgrade instead of
//! faults ([`Run::Upgrade`]; `scripts/rehearse-upgrade.sh REV` from an
//! older release's build).

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

/// One declare in this many is of a quorum queue.
const QUORUM_EVERY: usize = 8;

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

/// Declares durable queues, one every 50 ms, through node after node
/// until `stop`: classic queues, and every [`QUORUM_EVERY`]th a quorum
/// queue (named `quorum-…`), whose new group starts while the faults run.
/// The names whose declare was answered OK, and how many declares failed
/// (refused without a quorum, or unanswered: each may or may not have
/// been committed).
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
                let mut args = FieldTable::default();
                let name = if k % QUORUM_EVERY == QUORUM_EVERY - 1 {
                    args.insert(
                        "x-queue-type".into(),
                        AMQPValue::LongString("quorum".into()),
                    );
                    format!("quorum-{k}")
                } else {
                    format!("meta-{k}")
                };
                k += 1;
                let opts = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                // A change waits up to the cluster's change timeout (3 s).
                let declare = ch.queue_declare(&name, opts, args);
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
    /// Not random: the rolling upgrade's step (see [`Run::Upgrade`]).
    Upgrade,
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
    nemesis("quorum", Run::Faults).await;
}

/// What a run does to the cluster under load.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Run {
    /// A random fault each round.
    Faults,
    /// A rolling upgrade, node after node as docs/clustering.md tells
    /// operators: `antre queues await-online-quorum-plus-one`, `antre
    /// cluster drain`, a stop (SIGTERM), a start on this build. The nodes
    /// first run `ANTRE_OLD_BIN` (an older release's binary:
    /// `scripts/rehearse-upgrade.sh REV` builds one and runs this), or
    /// without it this build acting as a version without feature flags
    /// (`ANTRE_TEST_WITHOUT_FEATURE_FLAGS`). At the end every flag must be
    /// enabled on every node.
    Upgrade,
}

/// The flags this build knows, by name, for `/api/feature-flags` checks:
/// all of them (a list written out here missed the newest, and a rehearsal
/// from the release before it found every listed flag enabled with older
/// nodes in the cluster, as it should be).
fn flags() -> impl Iterator<Item = &'static str> {
    antre_broker::feature_flags::FEATURE_FLAGS
        .iter()
        .map(|f| f.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_keeps_one_history_through_a_rolling_upgrade_under_load() {
    nemesis("quorum", Run::Upgrade).await;
}

/// Runs node `i` on this build from now on, the way an operator upgrades
/// it; panics if a step fails.
async fn upgrade(c: &mut TestCluster, i: usize) {
    let (ok, out, err) = c
        .cli(
            i,
            &["queues", "await-online-quorum-plus-one", "--timeout", "60"],
        )
        .await;
    assert!(
        ok,
        "await-online-quorum-plus-one on {}: {out}{err}",
        c.nodes[i].name
    );
    let (status, answer) = c.api(i, "POST", "/api/maintenance/drain", None).await;
    assert_eq!(status, 200, "drain of {}: {answer}", c.nodes[i].name);
    c.stop(i);
    c.nodes[i].bin = None;
    c.nodes[i].env.clear();
    c.spawn(i);
    c.wait_http(i).await;
}

/// Whether node `i` lists every flag this build knows as enabled.
async fn all_flags_enabled(c: &TestCluster, i: usize) -> bool {
    for name in flags() {
        let flag = c.feature_flag(i, name).await;
        if !flag.is_some_and(|f| f["state"] == "enabled") {
            return false;
        }
    }
    true
}

/// The same faults against a stream: it has no consumer meanwhile (a
/// stream's reader takes nothing away); at the end the stream is read from
/// its first offset through every node, and each node must read the same
/// messages at the same offsets, every confirmed one among them, none
/// twice, none never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_one_history_through_random_faults_under_load() {
    nemesis("stream", Run::Faults).await;
}

async fn nemesis(queue_type: &str, run: Run) {
    let stream = queue_type == "stream";
    let rounds = match run {
        Run::Faults => env_or("ANTRE_NEMESIS_ROUNDS", 5),
        Run::Upgrade => 3,
    };
    let seed = env_or("ANTRE_NEMESIS_SEED", 15);
    let mut rng = StdRng::seed_from_u64(seed);

    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let mesh = Mesh::between(&mut c).await;
    let old_bin = std::env::var_os("ANTRE_OLD_BIN").map(std::path::PathBuf::from);
    if run == Run::Upgrade {
        for n in &mut c.nodes {
            match &old_bin {
                Some(bin) => n.bin = Some(bin.clone()),
                None => {
                    n.env = vec![(
                        "ANTRE_TEST_WITHOUT_FEATURE_FLAGS".into(),
                        flags().collect::<Vec<_>>().join(","),
                    )]
                }
            }
        }
    }
    c.launch().await;
    c.until_leader(&[0, 1, 2]).await;

    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.into()),
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
    let consuming =
        (!stream).then(|| consumer(uris.clone(), Arc::clone(&h), Arc::clone(&stop_consuming)));
    let declaring = declarer(uris.clone(), Arc::clone(&stop_publishing));
    c.until("confirms before the first fault", || async {
        record(&h, |h| h.confirmed.len()) >= 200
    })
    .await;

    let mut faults: HashMap<Fault, u32> = HashMap::new();
    let mut recoveries = Vec::new();
    for round in 0..rounds {
        let fault = match run {
            Run::Faults => FAULTS[rng.gen_range(0..FAULTS.len())],
            Run::Upgrade => Fault::Upgrade,
        };
        let leader = wait_queue_leader(&c).await;
        let other = match run {
            Run::Faults => (leader + rng.gen_range(1..3)) % 3,
            Run::Upgrade => round as usize,
        };
        let hold = Duration::from_millis(rng.gen_range(1000..2500));
        if run == Run::Upgrade {
            eprintln!(
                "nemesis round {round}: upgrade of {} (queue leader {})",
                names[other], names[leader]
            );
        } else {
            eprintln!(
                "nemesis round {round}: {fault:?} (leader {}, other {}) for {hold:?}",
                names[leader], names[other]
            );
        }
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
            Fault::Upgrade => {
                // n1, upgraded first, since then.
                if round > 0 {
                    assert!(
                        !all_flags_enabled(&c, 0).await,
                        "feature flags enabled with an older node in the cluster"
                    );
                }
                upgrade(&mut c, other).await;
                // While an older node remains, the upgraded ones must not
                // have enabled what it cannot read.
                if round + 1 < rounds {
                    assert!(
                        !all_flags_enabled(&c, other).await,
                        "feature flags enabled with an older node in the cluster"
                    );
                }
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
        if run == Run::Upgrade {
            // Some load through the cluster as it now is, older and newer
            // nodes together.
            let before = record(&h, |h| h.confirmed.len());
            c.until("500 more confirms after the upgrade", || async {
                record(&h, |h| h.confirmed.len()) >= before + 500
            })
            .await;
        }
    }

    if run == Run::Upgrade {
        c.until("every feature flag enabled on every node", || async {
            for i in 0..3 {
                if !all_flags_enabled(&c, i).await {
                    return false;
                }
            }
            true
        })
        .await;
    }
    stop_publishing.store(true, Ordering::Relaxed);
    publishing.await.expect("publisher");
    let (declared, refused) = declaring.await.expect("declarer");
    let Some(consuming) = consuming else {
        let stream_figures = stream_history(&c, &h).await;
        one_definitions_history(&c, &declared).await;
        let served = new_quorum_queues_serve(&c, &declared).await;
        let h = h.lock().expect("history");
        println!(
            "nemesis: stream, seed {seed}, rounds {rounds} {}, {stream_figures}; {}; {served}",
            fault_counts(faults),
            figures(&h, &recoveries, declared.len(), refused),
        );
        return;
    };
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
    one_definitions_history(&c, &declared).await;
    let served = new_quorum_queues_serve(&c, &declared).await;

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
    let label = match (run, &old_bin) {
        (Run::Faults, _) => format!("seed {seed}, rounds {rounds} {}", fault_counts(faults)),
        (Run::Upgrade, Some(bin)) => format!("rolling upgrade from {}", bin.display()),
        (Run::Upgrade, None) => "rolling upgrade from this build without flags".to_owned(),
    };
    println!(
        "nemesis: {label}, delivered {}, lost {}, duplicated \
         (redelivered) {duplicated}, unmarked repeats {unmarked}, phantom {phantom}; {}; \
         {served}",
        h.delivered.len(),
        lost.len(),
        figures(&h, &recoveries, declared.len(), refused),
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

/// The faults a run injected, by kind, for its figures line.
fn fault_counts(faults: HashMap<Fault, u32>) -> String {
    let mut faults: Vec<_> = faults.into_iter().collect();
    faults.sort();
    format!("{faults:?}")
}

/// The publisher's and the nemesis's figures, for the last line.
fn figures(h: &History, recoveries: &[Duration], declared: usize, refused: u64) -> String {
    let mut gaps: Vec<Duration> = h.confirm_times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let max_recovery = recoveries.iter().max().copied().unwrap_or_default();
    let mean_recovery = recoveries.iter().sum::<Duration>() / recoveries.len().max(1) as u32;
    format!(
        "published {}, confirmed {}, nacked {}, unknown {}, heal to first confirm mean {:.2} s \
         max {:.2} s, longest time without a confirm {:.2} s; declares ok {declared} (on every \
         node), failed {refused}",
        h.published,
        h.confirmed.len(),
        h.nacked,
        h.unknown,
        mean_recovery.as_secs_f64(),
        max_recovery.as_secs_f64(),
        gaps.last().copied().unwrap_or_default().as_secs_f64(),
    )
}

/// Every declare answered OK, whichever node took it, is on all three
/// nodes, with the queue under test.
async fn one_definitions_history(c: &TestCluster, declared: &[String]) {
    c.until_one_history(&[0, 1, 2], |d| {
        let names: BTreeSet<String> = queue_names(d).into_iter().collect();
        names.contains(QUEUE) && declared.iter().all(|q| names.contains(q))
    })
    .await;
}

/// Every quorum queue whose declare was answered OK during the faults
/// has a leader once they are healed, and serves: a publish through each
/// node in turn (forwarded to the leader but by one) is confirmed, and a
/// get through the same node returns it. Its group started while nodes
/// were killed, paused and cut off, possibly its placed node among them
/// right after the declare. The figures, for the summary line.
async fn new_quorum_queues_serve(c: &TestCluster, declared: &[String]) -> String {
    let quorum: Vec<&String> = declared
        .iter()
        .filter(|q| q.starts_with("quorum-"))
        .collect();
    let started = Instant::now();
    for (k, name) in quorum.iter().enumerate() {
        let body = format!("served {name}");
        let i = k % 3;
        c.until(
            &format!("{name} to confirm and serve through {i}"),
            || async {
                let Some((_conn, ch)) = open(&c.nodes[i].amqp_uri()).await else {
                    return false;
                };
                let confirms = ch.confirm_select(ConfirmSelectOptions::default());
                if !matches!(timeout(REPLY_WAIT, confirms).await, Ok(Ok(()))) {
                    return false;
                }
                if harness::publish_confirmed(&ch, name, body.as_bytes(), REPLY_WAIT).await
                    != Some(true)
                {
                    return false;
                }
                // Once confirmed it is there: a get answering empty is
                // asked again for a while (the leader's engine has it once
                // the entry is applied), one that fails starts over.
                let confirmed = Instant::now();
                loop {
                    let get = ch.basic_get(name, BasicGetOptions { no_ack: true });
                    match timeout(REPLY_WAIT, get).await {
                        Ok(Ok(Some(m))) => {
                            assert_eq!(m.delivery.data, body.as_bytes(), "{name}");
                            return true;
                        }
                        Ok(Ok(None)) => {
                            assert!(
                                confirmed.elapsed() < REPLY_WAIT * 3,
                                "{name}: confirmed through node {i}, but gets find it empty"
                            );
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        _ => return false,
                    }
                }
            },
        )
        .await;
    }
    format!(
        "new quorum queues {} (each elected, confirmed and served, in {:.1} s)",
        quorum.len(),
        started.elapsed().as_secs_f64()
    )
}

/// Reads the stream from its first offset through node `i` until nothing
/// came for a while: each message's offset and id (None: a body that is
/// not an id), or None if the node would not serve a reader.
async fn read_stream(c: &TestCluster, i: usize) -> Option<Vec<(i64, Option<u64>)>> {
    let (_conn, ch) = open(&c.nodes[i].amqp_uri()).await?;
    timeout(REPLY_WAIT, ch.basic_qos(1000, BasicQosOptions::default()))
        .await
        .ok()?
        .ok()?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let consume = ch.basic_consume(QUEUE, "reader", BasicConsumeOptions::default(), args);
    let mut deliveries = timeout(REPLY_WAIT, consume).await.ok()?.ok()?;
    let mut got = Vec::new();
    while let Ok(Some(Ok(d))) = timeout(Duration::from_secs(2), deliveries.next()).await {
        let offset = match d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned())
        {
            Some(AMQPValue::LongLongInt(o)) => o,
            _ => -1,
        };
        let id = std::str::from_utf8(&d.data)
            .ok()
            .and_then(|s| s.parse().ok());
        got.push((offset, id));
        // Acked in hundreds, as a stream's credit needs.
        if got.len() % 100 == 0 {
            let multiple = BasicAckOptions { multiple: true };
            if d.ack(multiple).await.is_err() {
                return None;
            }
        }
    }
    Some(got)
}

/// Reads the stream through every node until all three read the same
/// messages at the same offsets and every confirmed id is among them;
/// then checks that none is there twice or was never published. The
/// figures, for the last line.
async fn stream_history(c: &TestCluster, h: &Shared) -> String {
    let (confirmed, published) = record(h, |h| (h.confirmed.clone(), h.published));
    let deadline = Instant::now() + harness::WAIT;
    let read = loop {
        let mut reads = Vec::new();
        for i in 0..3 {
            reads.push(read_stream(c, i).await);
        }
        let agreed = reads.iter().all(|r| r.is_some() && *r == reads[0]);
        let first = reads[0].clone().unwrap_or_default();
        let ids: BTreeSet<u64> = first.iter().filter_map(|&(_, id)| id).collect();
        if agreed && confirmed.is_subset(&ids) {
            break first;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            let lens: Vec<Option<usize>> = reads.iter().map(|r| r.as_ref().map(Vec::len)).collect();
            let lost: Vec<&u64> = confirmed.difference(&ids).take(20).collect();
            panic!("the nodes read {lens:?} messages; confirmed but not read through the first: {lost:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut seen = BTreeSet::new();
    let twice: Vec<u64> = read
        .iter()
        .filter_map(|&(_, id)| id)
        .filter(|&id| !seen.insert(id))
        .collect();
    let phantom = read
        .iter()
        .filter(|&&(_, id)| id.is_none_or(|id| id >= published))
        .count();
    let gaps = read.windows(2).filter(|w| w[1].0 != w[0].0 + 1).count();
    assert!(twice.is_empty(), "ids in the stream twice: {twice:?}");
    assert_eq!(phantom, 0, "messages in the stream never published");
    assert_eq!(gaps, 0, "offsets not consecutive");
    format!(
        "{} messages in the stream, read alike through all three nodes, lost 0, twice 0, phantom 0",
        read.len()
    )
}
