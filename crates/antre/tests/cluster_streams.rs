//! Streams on a cluster of three real `antre` processes
//! (tests/cluster/harness.rs), driven by lapin: a stream's contents are
//! replicated by a Raft group of its own, as a quorum queue's are. A
//! publish through any node is confirmed once a majority has it; every
//! member reads the same messages at the same offsets from its own log;
//! the leader's death loses nothing confirmed; a member that was down
//! catches up, from the leader's log or, far behind, from its chunks.

use crate::harness;

use std::time::Duration;

use futures::StreamExt;
use harness::{TestCluster, SECRET};
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use tokio::time::Instant;

fn stream_args(size: Option<i32>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    if let Some(n) = size {
        args.insert("x-initial-cluster-size".into(), AMQPValue::LongInt(n));
    }
    args
}

/// Declares stream `name` on node `i`, retrying while the metadata group
/// may still be electing its first leader.
async fn declare_stream(c: &TestCluster, i: usize, name: &str) {
    declare_sized(c, i, name, None).await
}

/// Declares stream `name` with `size` replicas (`x-initial-cluster-size`)
/// on node `i`.
async fn declare_sized(c: &TestCluster, i: usize, name: &str, size: Option<i32>) {
    c.declare_durable(i, name, stream_args(size)).await
}

async fn wait_leader(c: &TestCluster, name: &str) -> usize {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        if let Some(i) = c.queue_leader(name).await {
            return i;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("no leader for {name}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `{prefix}0`.. `{prefix}{n-1}` to stream `name` through node
/// `i`, each confirmed (acked) before the next.
async fn publish_all_confirmed(c: &TestCluster, i: usize, name: &str, prefix: &str, n: usize) {
    let conn = harness::connect(&c.nodes[i].amqp_uri()).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for k in 0..n {
        let body = format!("{prefix}{k}");
        let confirm = ch
            .basic_publish(
                "",
                name,
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        let answer = tokio::time::timeout(harness::WAIT, confirm).await;
        assert!(
            matches!(answer, Ok(Ok(Confirmation::Ack(_)))),
            "confirm of {body} through {}: {answer:?}",
            c.nodes[i].name
        );
    }
}

/// A consumer of stream `name` through node `i`, from its first offset,
/// with a prefetch of 100 (and its connection, to keep).
async fn consume_from_first(
    c: &TestCluster,
    i: usize,
    name: &str,
) -> (lapin::Connection, lapin::Consumer) {
    let conn = harness::connect(&c.nodes[i].amqp_uri()).await;
    let ch: Channel = conn.create_channel().await.expect("channel");
    ch.basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let consumer = ch
        .basic_consume(name, "reader", BasicConsumeOptions::default(), args)
        .await
        .expect("consume");
    (conn, consumer)
}

/// Reads stream `name` from its first offset through node `i` until `n`
/// messages came, or none came for a while: their offsets and bodies.
async fn read_from_first(c: &TestCluster, i: usize, name: &str, n: usize) -> Vec<(i64, String)> {
    let (_conn, mut consumer) = consume_from_first(c, i, name).await;
    let mut got = Vec::new();
    while got.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await;
        let Ok(Some(Ok(d))) = next else {
            break;
        };
        let offset = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned());
        let offset = match offset {
            Some(AMQPValue::LongLongInt(o)) => o,
            other => panic!("x-stream-offset {other:?}"),
        };
        got.push((
            offset,
            String::from_utf8_lossy(&d.data).trim_end().to_owned(),
        ));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    got
}

/// `{prefix}k` at offset `first + k` for each k below `n`, for each
/// (prefix, n) in turn.
fn expected(parts: &[(&str, usize)]) -> Vec<(i64, String)> {
    let mut all = Vec::new();
    for (prefix, n) in parts {
        for k in 0..*n {
            all.push((all.len() as i64, format!("{prefix}{k}")));
        }
    }
    all
}

/// Waits until node `i` reads exactly `want` from stream `name`.
async fn until_reads(c: &TestCluster, i: usize, name: &str, want: &[(i64, String)]) {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let got = read_from_first(c, i, name, want.len()).await;
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            assert_eq!(got, want, "{} reading {name}", c.nodes[i].name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replicates_and_survives_its_leaders_death() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_stream(&c, 0, "flights").await;
    let l = wait_leader(&c, "flights").await;
    c.until_members("flights", &["n1", "n2", "n3"]).await;
    let q = c.queue_on(l, "flights").await.expect("listed");
    assert_eq!(q["type"], "stream", "{q}");

    // Through a node that does not lead it: forwarded to the leader,
    // confirmed once committed. Every member reads them from its own log,
    // at the same offsets.
    let f = (l + 1) % 3;
    publish_all_confirmed(&c, f, "flights", "delay-", 50).await;
    let first = expected(&[("delay-", 50)]);
    for i in 0..3 {
        until_reads(&c, i, "flights", &first).await;
    }

    // The leader dies: a survivor leads, nothing confirmed is lost, and
    // the offsets go on where they were.
    c.kill(l);
    let l2 = wait_leader(&c, "flights").await;
    assert_ne!(l2, l);
    let other = (0..3).find(|&i| i != l && i != l2).expect("a survivor");
    publish_all_confirmed(&c, other, "flights", "gate-", 30).await;
    let both = expected(&[("delay-", 50), ("gate-", 30)]);
    until_reads(&c, l2, "flights", &both).await;
    until_reads(&c, other, "flights", &both).await;

    // The dead node comes back and catches up from the leader's log.
    c.spawn(l);
    c.wait_http(l).await;
    until_reads(&c, l, "flights", &both).await;

    // Deleting the stream stops its group and removes its data everywhere.
    c.delete_everywhere("flights").await;
}

/// A member down while more than a snapshot's worth flows comes back to
/// logs that no longer reach back to it: it gets the leader's chunks, and
/// reads what the others read, at the same offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_gets_the_leaders_chunks() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_stream(&c, 0, "baggage").await;
    let l = wait_leader(&c, "baggage").await;
    c.until_members("baggage", &["n1", "n2", "n3"]).await;
    publish_all_confirmed(&c, l, "baggage", "early-", 5).await;
    let f = (0..3).find(|&i| i != l).expect("a follower");
    c.kill(f);
    // 130 bodies of 1 MiB, an entry each: past the 32 MiB after which a
    // member snapshots three times over, each dropping its log but for the
    // 64 entries before the snapshot (the leader does not wait for a
    // follower it cannot reach).
    let conn = harness::connect(&c.nodes[l].amqp_uri()).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for k in 0..130 {
        let mut body = format!("bag-{k}").into_bytes();
        body.resize(1 << 20, b' ');
        let confirm = ch
            .basic_publish(
                "",
                "baggage",
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        let answer = tokio::time::timeout(harness::WAIT, confirm).await;
        assert!(matches!(answer, Ok(Ok(Confirmation::Ack(_)))), "{answer:?}");
    }
    drop(conn);
    let snapshotted = |i: usize| {
        let groups = c.nodes[i].dir.join("cluster").join("queues");
        std::fs::read_dir(groups)
            .is_ok_and(|d| d.flatten().any(|g| g.path().join("snapshot.bin").exists()))
    };
    c.until("the leader to take a snapshot", || async { snapshotted(l) })
        .await;
    c.spawn(f);
    c.wait_http(f).await;
    let want = expected(&[("early-", 5), ("bag-", 130)]);
    until_reads(&c, f, "baggage", &want).await;
    assert!(
        c.nodes[f].logged("stream replica installed its leader's chunks"),
        "the member caught up by the leader's chunks"
    );
    // It goes on with the group after that.
    publish_all_confirmed(&c, f, "baggage", "late-", 3).await;
    let want = expected(&[("early-", 5), ("bag-", 130), ("late-", 3)]);
    for i in 0..3 {
        until_reads(&c, i, "baggage", &want).await;
    }
}

/// A node that holds no replica of a stream (`x-initial-cluster-size` 2
/// of 3 nodes) serves it all the same: its publishes go to the leader,
/// its consumers read the leader's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_replica_serves_the_stream() {
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_sized(&c, 0, "crew", Some(2)).await;
    wait_leader(&c, "crew").await;
    c.until_members("crew", &["n1", "n2"]).await;
    // More than the reader's prefetch (100): its acks give the leader credit.
    publish_all_confirmed(&c, 2, "crew", "roster-", 150).await;
    let want = expected(&[("roster-", 150)]);
    until_reads(&c, 2, "crew", &want).await;
    until_reads(&c, 1, "crew", &want).await;
    // Its node keeps none of the stream's data.
    let groups = c.nodes[2].dir.join("cluster").join("queues");
    assert!(
        std::fs::read_dir(&groups).map_or(true, |mut d| d.next().is_none()),
        "n3 holds no replica"
    );
}

/// A stream's members change as a quorum queue's do: a node removed from
/// the group keeps no data and serves the stream through the leader (its
/// consumers there are cancelled); added back, it gets the whole stream
/// again and reads it from its own log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_members_change() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_stream(&c, 0, "cabin").await;
    wait_leader(&c, "cabin").await;
    c.until_members("cabin", &["n1", "n2", "n3"]).await;
    publish_all_confirmed(&c, 0, "cabin", "a-", 10).await;
    let a = expected(&[("a-", 10)]);
    until_reads(&c, 2, "cabin", &a).await;

    // A consumer on n3 while n3 leaves the group: cancelled.
    let (_conn, mut consumer) = consume_from_first(&c, 2, "cabin").await;
    for _ in 0..10 {
        let d = tokio::time::timeout(harness::WAIT, consumer.next())
            .await
            .expect("a delivery")
            .expect("a delivery")
            .expect("a delivery");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let (ok, out, err) = c.cli(0, &["queues", "delete-member", "cabin", "n3"]).await;
    assert!(ok, "{out}{err}");
    c.until_members("cabin", &["n1", "n2"]).await;
    let ended = tokio::time::timeout(harness::WAIT, consumer.next()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the consumer on the removed member is cancelled: {ended:?}"
    );
    c.until("n3's replica data to be removed", || async {
        c.no_replica_data(2)
    })
    .await;

    // n3 still serves it, from the leader.
    publish_all_confirmed(&c, 2, "cabin", "b-", 10).await;
    let ab = expected(&[("a-", 10), ("b-", 10)]);
    until_reads(&c, 2, "cabin", &ab).await;

    // Back in the group: the whole stream again, in its own log.
    let (ok, out, err) = c.cli(0, &["queues", "add-member", "cabin", "n3"]).await;
    assert!(ok, "{out}{err}");
    c.until_members("cabin", &["n1", "n2", "n3"]).await;
    c.until("n3's replica data to come back", || async {
        !c.no_replica_data(2)
    })
    .await;
    until_reads(&c, 2, "cabin", &ab).await;
    // Its own copy: it reads it with the other two nodes gone.
    c.kill(0);
    c.kill(1);
    until_reads(&c, 2, "cabin", &ab).await;
}

/// Publishes `{prefix}{k}` one at a time through node `i` until `want`
/// were confirmed, reconnecting when the channel fails (its confirm lost
/// in a failover: the message may or may not be in the stream, and is
/// not counted). Tells `started` after the first `signal_after` confirms.
/// Returns the confirmed bodies.
async fn publish_through_failover(
    uri: String,
    name: &'static str,
    prefix: String,
    want: usize,
    signal_after: usize,
    started: tokio::sync::oneshot::Sender<()>,
) -> Vec<String> {
    let mut started = Some(started);
    let mut confirmed = Vec::new();
    let mut k = 0;
    let deadline = Instant::now() + harness::WAIT * 2;
    while confirmed.len() < want {
        assert!(
            Instant::now() < deadline,
            "{} of {want} confirmed",
            confirmed.len()
        );
        let Ok(Ok(conn)) = tokio::time::timeout(
            Duration::from_secs(5),
            lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        if ch
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
        {
            continue;
        }
        while confirmed.len() < want {
            // Nacked at once while the stream has no leader: bounded here
            // too, so a stream that never gets one fails the test instead
            // of spinning.
            assert!(
                Instant::now() < deadline,
                "{} of {want} confirmed",
                confirmed.len()
            );
            let body = format!("{prefix}{k}");
            k += 1;
            let Ok(confirm) = ch
                .basic_publish(
                    "",
                    name,
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
            else {
                break;
            };
            match tokio::time::timeout(Duration::from_secs(10), confirm).await {
                Ok(Ok(Confirmation::Ack(_))) => confirmed.push(body),
                Ok(Ok(_)) => {}
                _ => break,
            }
            if confirmed.len() == signal_after {
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
            }
        }
    }
    confirmed
}

/// Kill -9 of the stream's leader under confirmed publishing, cycle after
/// cycle (`ANTRE_STREAM_CYCLES`, 3 by default): every confirmed message is
/// in the stream, and every member holds the same messages at the same
/// offsets (a publish whose confirm was lost may be there too, never a
/// gap or a difference between members).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_confirmed_is_lost_through_leader_kills() {
    let cycles = crate::common::rounds_from_env("ANTRE_STREAM_CYCLES", 3);
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_stream(&c, 0, "orders").await;
    c.until_members("orders", &["n1", "n2", "n3"]).await;
    let mut confirmed: Vec<String> = Vec::new();
    for cycle in 0..cycles {
        let l = wait_leader(&c, "orders").await;
        let p = (l + 1) % 3;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let publisher = tokio::spawn(publish_through_failover(
            c.nodes[p].amqp_uri(),
            "orders",
            format!("c{cycle}-"),
            60,
            20,
            tx,
        ));
        rx.await.expect("the publisher got 20 confirms");
        c.kill(l);
        confirmed.extend(publisher.await.expect("publisher"));
        c.spawn(l);
        c.wait_http(l).await;
    }
    // Every member: the same log, holding every confirmed message.
    let l = wait_leader(&c, "orders").await;
    let n = read_from_first(&c, l, "orders", usize::MAX).await.len();
    let reference = read_from_first(&c, l, "orders", n).await;
    for (k, (offset, _)) in reference.iter().enumerate() {
        assert_eq!(*offset, k as i64, "offsets without gaps");
    }
    let held: std::collections::HashSet<&str> = reference.iter().map(|(_, b)| b.as_str()).collect();
    let lost: Vec<&String> = confirmed
        .iter()
        .filter(|b| !held.contains(b.as_str()))
        .collect();
    assert!(lost.is_empty(), "confirmed and lost: {lost:?}");
    for i in 0..3 {
        until_reads(&c, i, "orders", &reference).await;
    }
    eprintln!(
        "stream failover: {cycles} leader kills, {} confirmed, {} in the stream, 0 lost",
        confirmed.len(),
        reference.len()
    );
}
