//! Where a cluster of three real `antre` processes (tests/cluster/harness.rs)
//! places new queues, driven by lapin and the management API: a quorum
//! queue is led by the node its locator picks (the declaring node by
//! default, the node with the fewest leaders for `balanced`, a policy's
//! `queue-leader-locator` before the argument), and a classic queue lives
//! where `x-queue-master-locator` puts it.

use crate::harness;

use std::collections::BTreeMap;
use std::time::Duration;

use harness::{connect, TestCluster, SECRET};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{json, Value};
use tokio::time::Instant;

fn table(entries: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    t
}

/// Declares `name` on node `i` (retrying while the metadata group may
/// still elect its first leader).
async fn declare_on(c: &TestCluster, i: usize, name: &str, args: FieldTable) {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let conn = connect(&c.nodes[i].amqp_uri()).await;
        let ch = conn.create_channel().await.expect("channel");
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        match ch.queue_declare(name, opts, args.clone()).await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "could not declare {name}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A queue's node (a quorum queue's leader) as node `i` lists it, once it
/// lists one.
async fn node_of(c: &TestCluster, i: usize, name: &str) -> String {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        if let Some(q) = c.queue_on(i, name).await {
            let shown = if q.get("leader").is_some() {
                q["leader"].as_str()
            } else {
                q["node"].as_str()
            };
            if let Some(n) = shown.filter(|n| !n.is_empty()) {
                return n.to_owned();
            }
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("no node for {name} on node {i}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tally(nodes: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for n in nodes {
        *counts.entry(n.as_str()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_queues_are_placed_where_their_locator_says() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    let quorum = ("x-queue-type", "quorum");

    // client-local, the default: declared on n2, led by n2, every one.
    // (Before, the other members' election timers often won the first
    // election, and a third of such queues were led elsewhere.)
    let mut led = Vec::new();
    for i in 0..6 {
        let name = format!("local-{i}");
        declare_on(&c, 1, &name, table(&[quorum])).await;
        led.push(node_of(&c, 1, &name).await);
    }
    assert_eq!(tally(&led), BTreeMap::from([("n2", 6)]), "{led:?}");

    // balanced: the node leading the fewest quorum queues, the declaring
    // one on a tie. n2 leads six already, so n1 and n3 take turns.
    let mut led = Vec::new();
    for i in 0..6 {
        let name = format!("bal-{i}");
        let args = table(&[quorum, ("x-queue-leader-locator", "balanced")]);
        declare_on(&c, 0, &name, args).await;
        led.push(node_of(&c, 0, &name).await);
    }
    assert_eq!(led, ["n1", "n3", "n1", "n3", "n1", "n3"], "{led:?}");

    // A policy's queue-leader-locator wins over the argument, as in
    // RabbitMQ: n1 and n3 lead four each now, n2 six.
    let (status, body) = c
        .api(
            0,
            "PUT",
            "/api/policies/%2F/spread",
            Some(json!({"pattern": "^pol-", "apply-to": "queues",
                        "definition": {"queue-leader-locator": "balanced"}})),
        )
        .await;
    assert!(status == 201 || status == 204, "{status} {body}");
    let mut led = Vec::new();
    for i in 0..2 {
        let name = format!("pol-{i}");
        let args = table(&[quorum, ("x-queue-leader-locator", "client-local")]);
        declare_on(&c, 1, &name, args).await;
        led.push(node_of(&c, 1, &name).await);
    }
    assert_eq!(led, ["n1", "n3"], "{led:?}");

    // Classic queues: min-masters spreads them one per node; client-local
    // keeps one on the declaring node.
    let mut held = Vec::new();
    for i in 0..3 {
        let name = format!("mm-{i}");
        declare_on(
            &c,
            0,
            &name,
            table(&[("x-queue-master-locator", "min-masters")]),
        )
        .await;
        held.push(node_of(&c, 0, &name).await);
    }
    assert_eq!(held, ["n1", "n2", "n3"], "{held:?}");
    declare_on(&c, 2, "here", FieldTable::default()).await;
    assert_eq!(node_of(&c, 0, "here").await, "n3");

    // Messages reach a queue placed on another node and come back.
    let conn = connect(&c.nodes[0].amqp_uri()).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for q in ["bal-1", "mm-2"] {
        let confirm = ch
            .basic_publish(
                "",
                q,
                BasicPublishOptions::default(),
                b"placed",
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "{q}: {confirm:?}");
        let got = ch
            .basic_get(q, BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get");
        assert_eq!(
            got.map(|m| m.delivery.data),
            Some(b"placed".to_vec()),
            "{q}"
        );
    }
    drop(conn);

    // A node that is down is no candidate. With n1 killed, n1 would win
    // both picks on n3 below if it counted (classic queues: n1 1, n2 1,
    // n3 2; quorum leaders: n1 4, n2 6, n3 4 before n1's moved).
    c.kill(0);
    c.until("n3 to see n1 down", || async {
        c.nodes(2)
            .await
            .iter()
            .any(|n| n["name"] == "n1" && n["running"] == false)
    })
    .await;
    declare_on(
        &c,
        2,
        "mm-down",
        table(&[("x-queue-master-locator", "min-masters")]),
    )
    .await;
    assert_eq!(node_of(&c, 2, "mm-down").await, "n2");
    let args = table(&[quorum, ("x-queue-leader-locator", "balanced")]);
    declare_on(&c, 1, "bal-down", args).await;
    assert_ne!(node_of(&c, 1, "bal-down").await, "n1");
}

/// Waits until node `i`'s `/api/nodes` entry of node `d` is as `shown`
/// says (`what` names it in a timeout).
async fn until_node_shown(
    c: &TestCluster,
    i: usize,
    d: usize,
    what: &str,
    shown: impl Fn(&Value) -> bool,
) {
    let name = json!(c.nodes[d].name);
    c.until(what, || async {
        c.nodes(i)
            .await
            .iter()
            .any(|n| n["name"] == name && shown(n))
    })
    .await;
}

/// Waits until node `i`'s metadata records node `d` as drained or not
/// (`/api/nodes`' `maintenance_recorded`), with `d` running.
async fn until_recorded(c: &TestCluster, i: usize, d: usize, drained: bool) {
    until_node_shown(c, i, d, "the maintenance state recorded", |n| {
        n["running"] == json!(true) && n["maintenance_recorded"] == json!(drained)
    })
    .await;
}

/// A drained node (maintenance mode) is no place for a new queue's
/// leader, as in RabbitMQ: the drain is recorded in the metadata, and the
/// other nodes' balanced locator leaves it out until it is revived or
/// restarted. Before, its state was its own: having handed its
/// leaderships away it led fewest, so these queues were placed on it
/// first, each waiting three election timeouts for another member to
/// start it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_is_no_place_for_new_queues_until_it_serves_again() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    let (d, via) = (1, 0);
    let drained = c.nodes[d].name.clone();
    let balanced = || {
        table(&[
            ("x-queue-type", "quorum"),
            ("x-queue-leader-locator", "balanced"),
        ])
    };
    declare_on(&c, via, "warm-up", balanced()).await;

    let (ok, out, err) = c.cli(d, &["cluster", "drain"]).await;
    assert!(ok && !out.contains("not recorded"), "{out}{err}");
    until_recorded(&c, via, d, true).await;
    let mut placed = Vec::new();
    for i in 0..6 {
        let name = format!("while-drained-{i}");
        declare_on(&c, via, &name, balanced()).await;
        placed.push(c.placed_on(via, &name).await);
        assert_ne!(node_of(&c, via, &name).await, drained, "{name}");
    }
    assert!(!placed.contains(&drained), "{placed:?}");
    // A classic queue's min-masters locator leaves it out too.
    declare_on(
        &c,
        via,
        "classic-while-drained",
        table(&[("x-queue-master-locator", "min-masters")]),
    )
    .await;
    assert_ne!(node_of(&c, via, "classic-while-drained").await, drained);

    // Revived, it leads none, so it is the balanced pick at once.
    let (ok, out, err) = c.cli(d, &["cluster", "revive"]).await;
    assert!(ok, "{out}{err}");
    until_recorded(&c, via, d, false).await;
    declare_on(&c, via, "after-revive", balanced()).await;
    assert_eq!(c.placed_on(via, "after-revive").await, drained);

    // Drained, then restarted without a revive: the restart ends the
    // record as it ends maintenance mode.
    let (ok, out, err) = c.cli(d, &["cluster", "drain"]).await;
    assert!(ok, "{out}{err}");
    until_recorded(&c, via, d, true).await;
    c.kill(d);
    // Down, it is shown drained as recorded (it cannot say so itself).
    until_node_shown(&c, via, d, "the node to be down, shown drained", |n| {
        n["running"] == json!(false) && n["being_drained"] == json!(true)
    })
    .await;
    c.spawn(d);
    c.wait_http(d).await;
    until_recorded(&c, via, d, false).await;
    declare_on(&c, via, "after-restart", balanced()).await;
    assert_eq!(c.placed_on(via, "after-restart").await, drained);
    assert_eq!(node_of(&c, via, "after-restart").await, drained);
}
