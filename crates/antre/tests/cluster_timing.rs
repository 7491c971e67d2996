//! The Raft timing settings (`--cluster-heartbeat-interval`,
//! `--cluster-election-timeout` and their `--cluster-queue-...` twins) on
//! a cluster of three real `antre` processes whose links are slow: every
//! byte between two nodes arrives 90 ms late each way (tests/cluster/
//! proxy.rs), a round trip of 180 ms and more, beyond the default
//! heartbeat intervals (100 ms for quorum queues, 200 ms for the
//! metadata group), which openraft 0.9 also gives an append to be
//! answered. With longer timings the cluster works: it elects, a quorum
//! queue is declared and confirms publishes, a metadata change commits
//! and a membership change (a node forgotten) commits.

use crate::harness;
use crate::proxy;

use std::time::{Duration, Instant};

use harness::{connect, TestCluster, SECRET};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use proxy::Mesh;
use serde_json::{json, Value};

/// Each way, on every link.
const LINK_DELAY: Duration = Duration::from_millis(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longer_raft_timings_work_over_links_slower_than_the_default_heartbeat() {
    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    let mesh = Mesh::between(&mut c).await;
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        mesh.delay(a, b, LINK_DELAY);
    }
    for n in c.nodes.iter_mut() {
        // Half a second between heartbeats (more than two round trips),
        // elections after 2 to 4 s, for both kinds of groups.
        n.args = [
            "--cluster-heartbeat-interval",
            "0.5",
            "--cluster-election-timeout",
            "2",
            "--cluster-queue-heartbeat-interval",
            "0.5",
            "--cluster-queue-election-timeout",
            "2",
        ]
        .map(str::to_owned)
        .to_vec();
    }
    c.launch().await;
    c.until_leader(&[0, 1, 2]).await;

    // A metadata change on each node commits.
    for i in 0..3 {
        let path = format!("/api/queues/%2F/slow-{i}");
        let started = Instant::now();
        let (status, body) = c.api(i, "PUT", &path, Some(json!({"durable": true}))).await;
        assert_eq!(status, 201, "declare on n{}: {body}", i + 1);
        eprintln!(
            "slow links: a declare on n{} took {:?}",
            i + 1,
            started.elapsed()
        );
    }

    // A quorum queue: declared, and every publish confirmed.
    let conn = connect(&c.nodes[0].amqp_uri()).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("slow-quorum", durable, args)
        .await
        .expect("declare quorum queue");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let started = Instant::now();
    let mut confirms = Vec::new();
    for n in 0..50 {
        let confirm = ch
            .basic_publish(
                "",
                "slow-quorum",
                BasicPublishOptions::default(),
                format!("m{n}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for (n, confirm) in confirms.into_iter().enumerate() {
        let outcome = tokio::time::timeout(Duration::from_secs(20), confirm)
            .await
            .unwrap_or_else(|_| {
                c.dump_logs();
                panic!("message {n}: no confirm within 20 s")
            })
            .expect("confirm");
        assert!(outcome.is_ack(), "message {n} was nacked");
    }
    eprintln!(
        "slow links: 50 quorum publishes confirmed in {:?}",
        started.elapsed()
    );
    let (status, q) = c.api(0, "GET", "/api/queues/%2F/slow-quorum", None).await;
    assert_eq!(status, 200, "{q}");
    c.until("the quorum queue to hold the 50 messages", || async {
        c.try_api(0, "GET", "/api/queues/%2F/slow-quorum", None)
            .await
            .is_some_and(|(_, q)| q["messages"] == json!(50))
    })
    .await;

    // A membership change: n3 forgotten (joint consensus, over the slow
    // links between n1 and n2).
    let (status, body) = c.api(0, "DELETE", "/api/cluster/members/n3", None).await;
    assert!(matches!(status, 200 | 204), "forget n3: {status} {body}");
    for i in [0, 1] {
        c.until(&format!("n{} to list n1 and n2 only", i + 1), || async {
            member_names(&c.nodes(i).await) == ["n1", "n2"]
        })
        .await;
    }
    mesh.heal();
}

/// The members `/api/nodes` lists, sorted.
fn member_names(nodes: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = nodes
        .iter()
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect();
    names.sort_unstable();
    names
}

/// The running node that lists itself as quorum queue `name`'s leader.
async fn queue_leader(c: &TestCluster, name: &str) -> Option<usize> {
    for (i, n) in c.nodes.iter().enumerate() {
        if !n.is_running() {
            continue;
        }
        let path = format!("/api/queues/%2F/{name}");
        if let Some((200, q)) = c.try_api(i, "GET", &path, None).await {
            if q["leader"] == json!(n.name) {
                return Some(i);
            }
        }
    }
    None
}

/// Publishes one persistent message on node `i` and waits (2 s at most)
/// for its confirm: whether it was acked.
async fn confirmed_on(c: &TestCluster, i: usize, queue: &str) -> bool {
    let Ok(Ok(conn)) = tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(&c.nodes[i].amqp_uri(), Default::default()),
    )
    .await
    else {
        return false;
    };
    let Ok(ch) = conn.create_channel().await else {
        return false;
    };
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return false;
    }
    let Ok(confirm) = ch
        .basic_publish(
            "",
            queue,
            BasicPublishOptions::default(),
            b"after",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), confirm).await,
        Ok(Ok(lapin::publisher_confirm::Confirmation::Ack(_)))
    )
}

/// A quorum queue whose election timeout is 6 s: Raft's timers alone
/// would replace a dead leader no sooner than 12 s after its last
/// heartbeat (the followers refuse votes during its lease, the longest
/// election timeout, then wait their own). When the leader's process is
/// killed, its sockets close, the followers find nothing listening at its
/// address and stand for election at once: a new leader confirms well
/// within the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leaders_followers_elect_before_its_lease_runs_out() {
    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    for n in &mut c.nodes {
        n.args = [
            "--cluster-queue-heartbeat-interval",
            "0.2",
            "--cluster-queue-election-timeout",
            "6",
        ]
        .map(str::to_owned)
        .to_vec();
    }
    c.launch().await;
    c.until_leader(&[0, 1, 2]).await;
    let conn = connect(&c.nodes[0].amqp_uri()).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("fast", durable, args)
        .await
        .expect("declare quorum queue");
    drop(ch);
    drop(conn);
    let deadline = Instant::now() + harness::WAIT;
    let old = loop {
        if let Some(l) = queue_leader(&c, "fast").await {
            if confirmed_on(&c, l, "fast").await {
                break l;
            }
        }
        assert!(Instant::now() < deadline, "the queue has no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    c.kill(old);
    let killed = Instant::now();
    let lease = Duration::from_secs(12);
    let new = loop {
        assert!(
            killed.elapsed() < lease,
            "no new leader confirmed within the dead leader's lease"
        );
        if let Some(l) = queue_leader(&c, "fast").await.filter(|&l| l != old) {
            if confirmed_on(&c, l, "fast").await {
                break l;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "fast failover: n{} confirms {:?} after n{} was killed",
        new + 1,
        killed.elapsed(),
        old + 1
    );
    let down = format!("cluster peer {} is down", c.nodes[old].name);
    assert!(
        c.nodes.iter().any(|n| n.logged(&down)),
        "a follower logged that the leader is down"
    );
}
