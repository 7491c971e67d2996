//! Single active consumer over the stream protocol on a cluster of three
//! real `antre` processes (tests/cluster/harness.rs), driven by
//! `rabbitmq-stream-client`: a group's members connected to different
//! nodes form one group, coordinated by the stream's leader, through
//! closes, kills, a leader's failover and a node cut off.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rabbitmq_stream_client::types::{OffsetSpecification, SuperStreamConsumer};
use rabbitmq_stream_client::{Consumer, Environment};
use tokio::time::Instant;

use crate::cluster_stream_protocol::{create, env, metadata, publish, read, start, start_proxied};
use crate::harness;

/// Which single-active-consumer members were told what, in order:
/// (member, active).
type Activations = Arc<Mutex<Vec<(&'static str, bool)>>>;

/// The same, of a super stream's members: (member, partition, active).
type PartitionActivations = Arc<Mutex<Vec<(&'static str, String, bool)>>>;

/// An environment whose consumers subscribe on the node at `port` itself:
/// the client's load-balancer mode keeps them there (every node advertises
/// the same host), so a test knows which node each member is on.
async fn pinned_env(port: u16) -> Environment {
    tokio::time::timeout(
        harness::WAIT,
        Environment::builder()
            .host("127.0.0.1")
            .port(port)
            .load_balancer_mode(true)
            .build(),
    )
    .await
    .expect("in time")
    .expect("environment")
}

/// A member of consumer group `name` of `stream`, subscribed on the node
/// at `port` itself ([`pinned_env`]). Activated, it reads from the offset
/// in `resume`, as an application would from its stored offset.
async fn sac_member(
    port: u16,
    stream: &str,
    name: &str,
    member: &'static str,
    told: &Activations,
    resume: &Arc<std::sync::atomic::AtomicU64>,
) -> (Environment, Consumer) {
    let env = pinned_env(port).await;
    let told = Arc::clone(told);
    let resume = Arc::clone(resume);
    let consumer = env
        .consumer()
        .name(name)
        .enable_single_active_consumer(true)
        .offset(OffsetSpecification::First)
        .consumer_update(move |active, _ctx| {
            told.lock().expect("lock").push((member, active == 1));
            let at = resume.load(std::sync::atomic::Ordering::SeqCst);
            async move { OffsetSpecification::Offset(at) }
        })
        .build(stream)
        .await
        .expect("consumer");
    (env, consumer)
}

/// Single active consumer groups span the cluster, as RabbitMQ's
/// coordinator makes them: of members subscribed on different nodes, one
/// reads; when it leaves, or its node dies, another takes over where the
/// group left off. (Each node kept groups of its own before: both members
/// read every message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_active_consumer_group_spans_the_nodes() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (mut c, ports) = start().await;
    create(&c, ports[0], "jobs").await;
    let told: Activations = Arc::default();
    let resume = Arc::new(AtomicU64::new(0));
    // "a" on n2 joins first and is activated; "b" on n3 waits.
    let (_ea, mut a) = sac_member(ports[1], "jobs", "worker", "a", &told, &resume).await;
    let (_eb, mut b) = sac_member(ports[2], "jobs", "worker", "b", &told, &resume).await;
    publish(ports[0], "jobs", "jobs-p", &(0..10).collect::<Vec<_>>()).await;
    assert_eq!(read(&mut a, 10).await[9], (9, "p9".to_owned()));
    publish(ports[0], "jobs", "jobs-p", &(10..20).collect::<Vec<_>>()).await;
    assert_eq!(read(&mut a, 10).await[9], (19, "p19".to_owned()));
    assert_eq!(*told.lock().expect("lock"), [("a", true)], "b never active");
    // Each node's management API shows its member as the group decided.
    for (node, status) in [(1, "single_active"), (2, "waiting")] {
        let (_, s) = c.api(node, "GET", "/api/queues/%2F/jobs", None).await;
        assert_eq!(s["consumer_details"][0]["activity_status"], status);
    }
    // "a" leaves: "b" takes over from offset 20.
    resume.store(20, Ordering::SeqCst);
    a.handle().close().await.expect("a closed");
    publish(ports[0], "jobs", "jobs-p", &[20, 21]).await;
    assert_eq!(
        read(&mut b, 2).await,
        [(20, "p20".to_owned()), (21, "p21".to_owned())]
    );
    // "d" on n2 waits behind "b"; b's node dies: once its lease ended
    // the coordinator activates "d", which reads from offset 22.
    resume.store(22, Ordering::SeqCst);
    let (_ed, mut d) = sac_member(ports[1], "jobs", "worker", "d", &told, &resume).await;
    c.kill(2);
    publish(ports[0], "jobs", "jobs-p", &[22, 23]).await;
    assert_eq!(
        read(&mut d, 2).await,
        [(22, "p22".to_owned()), (23, "p23".to_owned())]
    );
    assert_eq!(
        *told.lock().expect("lock"),
        [("a", true), ("b", true), ("d", true)]
    );
}

/// The stream's leader dies while a member reads: the new leader's
/// coordinator keeps that member active (its node reports it within its
/// lease) and activates no other; the member reads what is published
/// after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_consumer_stays_active_through_a_leader_failover() {
    use std::sync::atomic::AtomicU64;
    let (mut c, ports) = start().await;
    create(&c, ports[0], "jobs").await;
    let told: Activations = Arc::default();
    let resume = Arc::new(AtomicU64::new(0));
    let (_ea, mut a) = sac_member(ports[1], "jobs", "worker", "a", &told, &resume).await;
    let (_eb, _b) = sac_member(ports[2], "jobs", "worker", "b", &told, &resume).await;
    publish(ports[0], "jobs", "jobs-p", &[0, 1]).await;
    assert_eq!(read(&mut a, 2).await[1], (1, "p1".to_owned()));
    c.kill(0);
    let (leader, _) = metadata(ports[1], "jobs", Some(u32::from(ports[0])), Some(1)).await;
    publish(
        u16::try_from(leader).expect("a port"),
        "jobs",
        "jobs-p",
        &[2, 3],
    )
    .await;
    assert_eq!(
        read(&mut a, 2).await,
        [(2, "p2".to_owned()), (3, "p3".to_owned())]
    );
    // Past the new coordinator's wait for reports: still only "a".
    tokio::time::sleep(antre_broker::stream::sac::TAKEOVER_GRACE).await;
    publish(
        u16::try_from(leader).expect("a port"),
        "jobs",
        "jobs-p",
        &[4],
    )
    .await;
    assert_eq!(read(&mut a, 1).await, [(4, "p4".to_owned())]);
    assert_eq!(*told.lock().expect("lock"), [("a", true)]);
}

/// The node of the active member is cut off (its links take bytes and
/// forward none): its member steps down when its lease ends, and only
/// then, once the coordinator's longer lease ended too, the member on a
/// node of the majority takes over. Healed, the cut-off node's member
/// waits behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_active_consumer_steps_down_before_another_takes_over() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (c, ports, mesh) = start_proxied().await;
    create(&c, ports[0], "jobs").await;
    let told: Activations = Arc::default();
    let resume = Arc::new(AtomicU64::new(0));
    let (_ea, mut a) = sac_member(ports[1], "jobs", "worker", "a", &told, &resume).await;
    let (_eb, mut b) = sac_member(ports[2], "jobs", "worker", "b", &told, &resume).await;
    publish(ports[0], "jobs", "jobs-p", &[0, 1]).await;
    assert_eq!(read(&mut a, 2).await[1], (1, "p1".to_owned()));
    resume.store(2, Ordering::SeqCst);
    mesh.blackhole(1);
    publish(ports[0], "jobs", "jobs-p", &[2, 3]).await;
    assert_eq!(
        read(&mut b, 2).await,
        [(2, "p2".to_owned()), (3, "p3".to_owned())]
    );
    assert_eq!(
        *told.lock().expect("lock"),
        [("a", true), ("a", false), ("b", true)],
        "a stepped down before b was activated"
    );
    // Healed, n2 reports "a" again, behind "b": "b" leaves, "a" takes
    // over.
    mesh.heal();
    resume.store(4, Ordering::SeqCst);
    b.handle().close().await.expect("b closed");
    publish(ports[0], "jobs", "jobs-p", &[4]).await;
    assert_eq!(read(&mut a, 1).await, [(4, "p4".to_owned())]);
    assert_eq!(
        *told.lock().expect("lock"),
        [("a", true), ("a", false), ("b", true), ("a", true)]
    );
}

/// A member `who` of consumer group "app" of super stream `name`,
/// subscribed on the node at `port` itself ([`pinned_env`]); what it is
/// told goes to `told`.
async fn super_member(
    port: u16,
    name: &str,
    who: &'static str,
    told: &PartitionActivations,
) -> (Environment, SuperStreamConsumer) {
    let env = pinned_env(port).await;
    let told = Arc::clone(told);
    let consumer = env
        .super_stream_consumer()
        .name("app")
        .enable_single_active_consumer(true)
        .offset(OffsetSpecification::First)
        .consumer_update(move |active, ctx| {
            told.lock()
                .expect("lock")
                .push((who, ctx.stream(), active == 1));
            async { OffsetSpecification::Next }
        })
        .build(name)
        .await
        .expect("super stream consumer");
    (env, consumer)
}

/// A super stream's partitions spread over the members of a group
/// whatever node each is on: a member on another node joining makes the
/// first step down on the partition that is now the newcomer's (index 1
/// of 2 members), and keeps partition 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_streams_partitions_spread_over_members_on_different_nodes() {
    let (c, ports) = start().await;
    env(ports[0])
        .await
        .stream_creator()
        .create_super_stream("orders", 2, None)
        .await
        .expect("super stream");
    for p in ["orders-0", "orders-1"] {
        c.until_members(p, &["n1", "n2", "n3"]).await;
    }
    let told: PartitionActivations = Arc::default();
    let member = |port: u16, who: &'static str| super_member(port, "orders", who, &told);
    let (_ex, mut x) = member(ports[1], "x").await;
    c.until("x active on both partitions", || async {
        told.lock().expect("lock").len() == 2
    })
    .await;
    let (_ey, mut y) = member(ports[2], "y").await;
    c.until("y active on orders-1", || async {
        told.lock().expect("lock").len() == 4
    })
    .await;
    let mut got = told.lock().expect("lock").clone();
    got[..2].sort();
    assert_eq!(
        got,
        [
            ("x", "orders-0".to_owned(), true),
            ("x", "orders-1".to_owned(), true),
            ("x", "orders-1".to_owned(), false),
            ("y", "orders-1".to_owned(), true),
        ]
    );
    // Each reads its partition's messages from where it was activated.
    publish(ports[0], "orders-1", "orders-p1", &[1]).await;
    publish(ports[0], "orders-0", "orders-p0", &[0]).await;
    for (consumer, want) in [(&mut y, ("orders-1", "p1")), (&mut x, ("orders-0", "p0"))] {
        let d = tokio::time::timeout(harness::WAIT, consumer.next())
            .await
            .expect("delivery in time")
            .expect("a delivery")
            .expect("delivery ok");
        let body = String::from_utf8_lossy(d.message().data().unwrap_or_default()).into_owned();
        assert_eq!((d.stream().as_str(), body.as_str()), want);
    }
}

/// What happened to a group, as its members' clients saw it.
#[derive(Default)]
struct Seen {
    /// (member, active, when): activations and ends (a step-down, or the
    /// member's node killed), in the order they happened.
    events: Vec<(String, bool, Instant)>,
    /// (member, body, when) of every delivery.
    read: Vec<(String, String, Instant)>,
    /// One past the highest offset read: where a member activated starts,
    /// as an application would from its stored offset.
    resume: u64,
}

impl Seen {
    fn active(&self) -> Vec<String> {
        let mut on: Vec<String> = Vec::new();
        for (m, active, _) in &self.events {
            on.retain(|o| o != m);
            if *active {
                on.push(m.clone());
            }
        }
        on
    }

    /// Whether `member` was active at `at`.
    fn was_active(&self, member: &str, at: Instant) -> bool {
        self.events
            .iter()
            .rfind(|(m, _, t)| m == member && *t <= at)
            .is_some_and(|(_, active, _)| *active)
    }

    /// At no moment were two members active.
    fn check_one_at_a_time(&self) {
        let mut on: Vec<&str> = Vec::new();
        for (m, active, t) in &self.events {
            on.retain(|o| o != m);
            if *active {
                assert!(
                    on.is_empty(),
                    "{m} activated at {t:?} while {on:?} active: {:?}",
                    self.events
                );
                on.push(m);
            }
        }
    }
}

/// A member of group "worker" of "jobs" on the node at `port`, read by a
/// task of its own into `seen`.
async fn join(port: u16, member: String, seen: &Arc<Mutex<Seen>>) -> Environment {
    let env = pinned_env(port).await;
    let told = Arc::clone(seen);
    let name = member.clone();
    let mut consumer = env
        .consumer()
        .name("worker")
        .enable_single_active_consumer(true)
        .offset(OffsetSpecification::First)
        .consumer_update(move |active, _ctx| {
            let mut s = told.lock().expect("lock");
            s.events.push((name.clone(), active == 1, Instant::now()));
            let at = s.resume;
            async move { OffsetSpecification::Offset(at) }
        })
        .build("jobs")
        .await
        .expect("consumer");
    let seen = Arc::clone(seen);
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let body = String::from_utf8_lossy(d.message().data().unwrap_or_default()).into_owned();
            let mut s = seen.lock().expect("lock");
            s.resume = s.resume.max(d.offset() + 1);
            s.read.push((member.clone(), body, Instant::now()));
        }
    });
    env
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// kill -9 of the active member's node.
    KillActive,
    /// The active member's node cut off from the others (every byte held).
    CutActive,
    /// kill -9 of the stream's leader.
    KillLeader,
}

/// The group's members through kills and cuts, in rounds of each fault:
/// at no moment are two members active (as their clients are told, a
/// killed node's member ending at the kill), and what is published after
/// each fault is read by the member active when it arrives.
/// `ANTRE_SAC_ROUNDS=N` runs N rounds (1 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_is_active_at_a_time_through_kills_and_cuts() {
    let rounds = crate::common::rounds_from_env("ANTRE_SAC_ROUNDS", 1);
    let (mut c, ports, mesh) = start_proxied().await;
    create(&c, ports[0], "jobs").await;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut envs: Vec<Option<Environment>> = Vec::new();
    let mut member_on: Vec<String> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let name = format!("n{}#0", i + 1);
        envs.push(Some(join(*port, name.clone(), &seen).await));
        member_on.push(name);
    }
    let mut next_id = 0u64;
    let mut joins = 1;
    let mut handovers: Vec<(Fault, bool, Option<Duration>)> = Vec::new();
    for round in 0..rounds {
        for fault in [Fault::KillActive, Fault::CutActive, Fault::KillLeader] {
            // Someone reads (after a fault the group may still be handing
            // over).
            let deadline = Instant::now() + harness::WAIT;
            let active = loop {
                let on = seen.lock().expect("lock").active();
                if on.len() == 1 {
                    break on[0].clone();
                }
                assert!(Instant::now() < deadline, "active: {on:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let a = member_on
                .iter()
                .position(|m| *m == active)
                .expect("a member of a live node");
            let live = (a + 1) % 3;
            let (leader, _) = metadata(ports[live], "jobs", None, None).await;
            let l = ports
                .iter()
                .position(|p| u32::from(*p) == leader)
                .expect("a node");
            let hit = match fault {
                Fault::KillActive | Fault::CutActive => a,
                Fault::KillLeader => l,
            };
            eprintln!("round {round}: {fault:?} (n{}), {active} active", hit + 1);
            let struck = Instant::now();
            match fault {
                Fault::CutActive => mesh.blackhole(hit),
                Fault::KillActive | Fault::KillLeader => {
                    c.kill(hit);
                    envs[hit] = None;
                    let gone = member_on[hit].clone();
                    seen.lock()
                        .expect("lock")
                        .events
                        .push((gone, false, Instant::now()));
                }
            }
            // Published after the fault, through the stream's leader (a
            // new one if it was hit), and read by the active member.
            let asked = (0..3)
                .map(|k| (hit + 1 + k) % 3)
                .find(|&k| k != hit)
                .expect("another node");
            let hit_port = Some(u32::from(ports[hit]));
            let (leader, _) = metadata(ports[asked], "jobs", hit_port, None).await;
            publish(
                u16::try_from(leader).expect("a port"),
                "jobs",
                "jobs-p",
                &[next_id],
            )
            .await;
            let body = format!("p{next_id}");
            next_id += 1;
            let deadline = Instant::now() + harness::WAIT;
            let (reader, at) = loop {
                let found = seen
                    .lock()
                    .expect("lock")
                    .read
                    .iter()
                    .find(|(_, b, _)| *b == body)
                    .map(|(m, _, t)| (m.clone(), *t));
                if let Some(f) = found {
                    break f;
                }
                assert!(Instant::now() < deadline, "{body} never read");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            {
                let s = seen.lock().expect("lock");
                assert!(
                    s.was_active(&reader, at),
                    "{body} read by {reader}, not active then"
                );
                // The first activation since the fault, if there was one
                // (a member kept through a leader's kill has none).
                let next = s.events.iter().find(|(_, a, t)| *a && *t >= struck);
                let took = next.map(|(.., t)| t.duration_since(struck));
                handovers.push((fault, a == hit, took));
                // A leader's kill leaves a member of another node active.
                assert!(
                    a == hit || took.is_none() || !matches!(fault, Fault::KillLeader),
                    "{active} replaced after a kill of another node's leader"
                );
            }
            // Repaired: the node back (with a new member) or healed.
            match fault {
                Fault::CutActive => mesh.heal(),
                Fault::KillActive | Fault::KillLeader => {
                    c.spawn(hit);
                    c.wait_http(hit).await;
                    metadata(ports[hit], "jobs", None, Some(2)).await;
                    let name = format!("n{}#{joins}", hit + 1);
                    joins += 1;
                    envs[hit] = Some(join(ports[hit], name.clone(), &seen).await);
                    member_on[hit] = name;
                }
            }
        }
    }
    let s = seen.lock().expect("lock");
    s.check_one_at_a_time();
    let figures: Vec<String> = [Fault::KillActive, Fault::CutActive, Fault::KillLeader]
        .iter()
        .map(|f| {
            let of: Vec<(bool, Option<Duration>)> = handovers
                .iter()
                .filter(|(g, ..)| std::mem::discriminant(g) == std::mem::discriminant(f))
                .map(|(_, on_hit, d)| (*on_hit, *d))
                .collect();
            // Handed over from a member on the node hit.
            let took: Vec<Duration> = of
                .iter()
                .filter(|(h, _)| *h)
                .filter_map(|(_, d)| *d)
                .collect();
            let mean =
                took.iter().sum::<Duration>() / u32::try_from(took.len().max(1)).unwrap_or(1);
            let max = took.iter().max().copied().unwrap_or_default();
            let spared = of.iter().filter(|(h, _)| !*h).count();
            format!(
                "{f:?}: the active member's node hit {} of {} times, handed over in {:.2} s mean, {:.2} s max; kept {} of {spared} times it was not",
                of.len() - spared,
                of.len(),
                mean.as_secs_f64(),
                max.as_secs_f64(),
                of.iter().filter(|(h, d)| !*h && d.is_none()).count(),
            )
        })
        .collect();
    eprintln!(
        "single active consumer through {rounds} rounds of kills and cuts: {} activations, {} messages read, never two active; {}",
        s.events.iter().filter(|(_, a, _)| *a).count(),
        s.read.len(),
        figures.join("; ")
    );
}

/// The cluster requests each node receives from its peers, summed.
async fn cluster_requests(c: &harness::TestCluster) -> u64 {
    let mut total = 0;
    for i in 0..3 {
        for peer in (0..3).filter(|&p| p != i) {
            total += c.count_of_peer(i, peer, "link_requests").await;
        }
    }
    total
}

/// Cluster requests a second over the next second.
async fn requests_per_second(c: &harness::TestCluster) -> f64 {
    let (before, start) = (cluster_requests(c).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    (cluster_requests(c).await - before) as f64 / start.elapsed().as_secs_f64()
}

/// A node's reports of its single-active-consumer members to the streams'
/// leaders travel together, a message per leader's node and round, and
/// so do the heartbeats of the rounds that prove each leader still leads:
/// with a member on every node of every one of 60 partitions, they add
/// 70-160 requests a second to the cluster's link (under 300 passes).
/// Before, they added about 820: each stream's report went alone (every
/// node reported every partition led elsewhere every 300 ms, 400 a
/// second), and so did each proof's heartbeats (openraft makes a new
/// client for each round, which took its group for busy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_reports_to_a_leader_travel_together() {
    const PARTITIONS: usize = 60;
    let (c, ports) = start().await;
    env(ports[0])
        .await
        .stream_creator()
        .create_super_stream("busy", PARTITIONS, None)
        .await
        .expect("super stream");
    for p in 0..PARTITIONS {
        c.until_members(&format!("busy-{p}"), &["n1", "n2", "n3"])
            .await;
    }
    // The cluster at rest, once its groups' heartbeats travel together
    // (a group batches them after a second without entries).
    let deadline = Instant::now() + harness::WAIT;
    let mut rest = requests_per_second(&c).await;
    loop {
        let now = requests_per_second(&c).await;
        if (now - rest).abs() < 30.0 {
            rest = rest.min(now);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never settled: {now:.0}/s"
        );
        rest = now;
    }
    let told: PartitionActivations = Arc::default();
    let mut members = Vec::new();
    for (port, who) in ports.iter().zip(["x", "y", "z"]) {
        members.push(super_member(*port, "busy", who, &told).await);
    }
    c.until("every partition has an active member", || async {
        let told = told.lock().expect("lock");
        let active: std::collections::BTreeSet<&String> =
            told.iter().filter(|t| t.2).map(|t| &t.1).collect();
        active.len() == PARTITIONS
    })
    .await;
    // Members join and step down for a moment; then the reports' own rate.
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let now = requests_per_second(&c).await;
        if now - rest < 300.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{PARTITIONS} partitions' members add {:.0} requests a second ({now:.0} against {rest:.0} at rest)",
            now - rest
        );
    }
}
