//! Three in-process nodes on loopback: the metadata group forms, a change
//! proposed on any node is applied on all, and a node with the wrong
//! secret is refused.

use std::sync::Arc;
use std::time::Duration;

use antre_broker::cluster::{MetaCommand, MetaOutcome, MetadataLog, WireTable};
use antre_broker::Broker;
use antre_cluster::config::{parse_peers, DEFAULT_CHANGE_TIMEOUT, DEFAULT_SNAPSHOT_LOGS};
use antre_cluster::{Cluster, ClusterConfig};
use tokio::time::Instant;

mod common;
use common::free_port;

const SECRET: &str = "a-secret-of-some-length";

struct Node {
    broker: Arc<Broker>,
    cluster: Arc<Cluster>,
}

async fn start(names: &[&str], secrets: &[&str], dir: &std::path::Path) -> Vec<Node> {
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let list = names
        .iter()
        .zip(&ports)
        .map(|(n, p)| format!("{n}=127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let broker = Arc::new(Broker::new());
        let config = ClusterConfig {
            node_name: (*name).to_owned(),
            listen: format!("127.0.0.1:{}", ports[i]).parse().unwrap(),
            peers: parse_peers(&list).unwrap(),
            secret: secrets[i].to_owned(),
            previous_secret: None,
            dir: dir.join(name),
            change_timeout: DEFAULT_CHANGE_TIMEOUT,
            forward_timeout: antre_cluster::config::DEFAULT_FORWARD_TIMEOUT,
            forward_buffer: antre_cluster::config::DEFAULT_FORWARD_BUFFER,
            snapshot_logs: DEFAULT_SNAPSHOT_LOGS,
            join: None,
            tls: None,
            metadata_timing: antre_cluster::RaftTiming::METADATA,
            queue_timing: antre_cluster::RaftTiming::QUEUE,
            without_feature_flags: Vec::new(),
        };
        let cluster = Cluster::start(config, Arc::clone(&broker)).await.unwrap();
        nodes.push(Node { broker, cluster });
    }
    nodes
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_on_any_node_is_applied_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(&["n1", "n2", "n3"], &[SECRET; 3], dir.path()).await;
    until("a leader", || {
        nodes.iter().all(|n| n.cluster.status().leader.is_some())
    })
    .await;
    // Propose on a follower: it forwards to the leader, answers with its
    // own apply's result.
    let follower = nodes
        .iter()
        .find(|n| n.cluster.status().role != "leader")
        .unwrap();
    let cluster = Arc::clone(&follower.cluster);
    let outcome = tokio::task::spawn_blocking(move || {
        cluster.propose(MetaCommand::DeclareQueue {
            vhost: "/".into(),
            name: "orders".into(),
            durable: true,
            auto_delete: false,
            arguments: WireTable::default(),
            owner: cluster.node_name().to_owned(),
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(outcome, MetaOutcome::Queue { ref name, .. } if name == "orders"));
    until("the queue on every node", || {
        nodes
            .iter()
            .all(|n| n.broker.vhost("/").unwrap().has_queue("orders"))
    })
    .await;
    let owner = follower.cluster.node_name().to_owned();
    for n in &nodes {
        let remote = n.broker.vhost("/").unwrap().remote_owner("orders");
        if n.cluster.node_name() == owner {
            assert_eq!(remote, None);
        } else {
            assert_eq!(remote.as_deref(), Some(owner.as_str()));
        }
    }
    let status = nodes[0].cluster.status();
    assert_eq!(status.members.len(), 3);
    until("every member running", || {
        nodes[0].cluster.status().members.iter().all(|m| m.running)
    })
    .await;
    for n in &nodes {
        n.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_the_wrong_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(
        &["n1", "n2", "n3"],
        &[SECRET, SECRET, "another-secret-entirely"],
        dir.path(),
    )
    .await;
    until("n3 refused by n1", || {
        let s = nodes[0].cluster.status();
        let n3 = s.members.iter().find(|m| m.name == "n3").unwrap();
        !n3.running && n3.error.as_deref() == Some("wrong cluster secret")
    })
    .await;
    // n1 and n2 are a quorum: they elect a leader without n3.
    until("a leader among n1, n2", || {
        nodes[0].cluster.status().leader.is_some()
    })
    .await;
    let s = nodes[2].cluster.status();
    let n1 = s.members.iter().find(|m| m.name == "n1").unwrap();
    assert!(!n1.running);
    for n in &nodes {
        n.cluster.shutdown().await;
    }
}

/// A queue another node declares must never be visible here without its
/// owner: in between, a publish through this node would be confirmed
/// into this node's idle copy of the queue, which nobody consumes from.
/// A watcher spins on the other nodes' brokers while queues are declared
/// one after the other; before the owner was recorded ahead of the
/// declare, it saw such a queue within a few dozen declares.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_declared_elsewhere_is_never_seen_without_its_owner() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(&["n1", "n2", "n3"], &[SECRET; 3], dir.path()).await;
    until("a leader", || {
        nodes.iter().all(|n| n.cluster.status().leader.is_some())
    })
    .await;
    const QUEUES: usize = 300;
    let done = Arc::new(AtomicBool::new(false));
    let declarer = Arc::clone(&nodes[0].cluster);
    let owner = declarer.node_name().to_owned();
    let watchers: Vec<_> = nodes[1..]
        .iter()
        .map(|n| {
            let broker = Arc::clone(&n.broker);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let v = broker.vhost("/").unwrap();
                let mut seen = 0;
                while seen < QUEUES && !done.load(Ordering::Acquire) {
                    let name = format!("q{seen}");
                    if v.has_queue(&name) {
                        if v.remote_owner(&name).is_none() {
                            return Err(format!("{name} seen without its owner"));
                        }
                        seen += 1;
                    }
                }
                Ok(seen)
            })
        })
        .collect();
    for i in 0..QUEUES {
        let cluster = Arc::clone(&declarer);
        let owner = owner.clone();
        tokio::task::spawn_blocking(move || {
            cluster.propose(MetaCommand::DeclareQueue {
                vhost: "/".into(),
                name: format!("q{i}"),
                durable: true,
                auto_delete: false,
                arguments: WireTable::default(),
                owner,
            })
        })
        .await
        .unwrap()
        .unwrap();
    }
    until("every queue on every node", || {
        nodes.iter().all(|n| {
            let v = n.broker.vhost("/").unwrap();
            (0..QUEUES).all(|i| v.has_queue(&format!("q{i}")))
        })
    })
    .await;
    done.store(true, Ordering::Release);
    for w in watchers {
        assert_eq!(w.join().unwrap(), Ok(QUEUES));
    }
    for n in &nodes {
        n.cluster.shutdown().await;
    }
}
