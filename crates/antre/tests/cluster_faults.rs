//! Jepsen-style faults on a cluster of three real `antre` processes
//! (tests/cluster/harness.rs), with a TCP proxy on every directed link
//! (tests/cluster/proxy.rs) and real clients (lapin, the management API):
//!
//! - the metadata leader cut off from the majority (links cut, or
//!   blackholed): the minority refuses
//!   changes within the change timeout (541 / 503), the majority elects a
//!   leader and goes on, and after healing every node has one history
//!   without the refused changes;
//! - the leader paused (SIGSTOP) long enough to lose leadership while the
//!   majority makes changes, then resumed: one leader, and a change sent
//!   to the paused node is either refused or committed, as answered;
//! - a one-way cut and slow links: changes still commit and converge;
//! - membership under load: a fourth node joins while a client publishes
//!   with confirms and another declares queues, then leaves; a killed node
//!   is forgotten;
//! - a quorum queue's leader cut off: it confirms nothing, the majority
//!   goes on, and after healing the queue holds exactly what was confirmed;
//! - a quorum queue's member that never heard from its leader (its links
//!   cut from the start) votes when that leader dies, so the other member
//!   leads;
//! - TLS on the link: a cluster forms over mutual TLS, a node whose
//!   certificate another CA signed is refused, and both sides say why.
//!
//! Every wait polls with a deadline; the faults' durations are what the
//! tests assert around, never a synchronisation.
//!
//! A test of another replicated thing (a quorum queue) is a few lines of
//! the same pieces: `proxied_cluster()`, `c.until_leader(..)`,
//! `publisher(uri, queue, stop)` for confirmed publishing, a fault
//! (`mesh.isolate(i)`, `mesh.cut_one_way(a, b)`, `mesh.delay(a, b, d)`,
//! `c.pause(i)` / `c.resume(i)`, `c.kill(i)` / `c.spawn(i)`), then
//! `mesh.heal()` and assertions on what was confirmed.

use crate::common::pki;
use crate::harness;
use crate::proxy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use harness::{connect, queue_names, TestCluster, CHANGE_TIMEOUT_S, SECRET};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use proxy::Mesh;
use serde_json::{json, Value};

async fn channel(uri: &str) -> (Connection, Channel) {
    let conn = connect(uri).await;
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn reply_code(err: &lapin::Error) -> u16 {
    match err {
        lapin::Error::ProtocolError(e) => e.get_id(),
        other => panic!("not a protocol error: {other:?}"),
    }
}

/// Three nodes, each reaching the others through its own proxies.
async fn proxied_cluster() -> (TestCluster, Mesh) {
    proxied_cluster_with(&[]).await
}

/// [`proxied_cluster`], each node started with `args` too.
async fn proxied_cluster_with(args: &[&str]) -> (TestCluster, Mesh) {
    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    for n in &mut c.nodes {
        n.args.extend(args.iter().map(|a| (*a).to_owned()));
    }
    let mesh = Mesh::between(&mut c).await;
    c.launch().await;
    (c, mesh)
}

/// Declares queue `name` over HTTP on node `i`; the status.
async fn put_queue(c: &TestCluster, i: usize, name: &str) -> u16 {
    let path = format!("/api/queues/%2F/{name}");
    match c
        .try_api(i, "PUT", &path, Some(json!({"durable": true})))
        .await
    {
        Some((status, _)) => status,
        None => 0,
    }
}

fn has_queue(defs: &Value, name: &str) -> bool {
    queue_names(defs).iter().any(|q| q == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_majority_changes_nothing_and_the_majority_goes_on() {
    leader_partitioned(Mesh::isolate).await;
}

/// The same with the leader's links blackholed: connections stay up and
/// take bytes, nothing arrives (until healed, when the held bytes do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_leader_changes_nothing_and_the_majority_goes_on() {
    leader_partitioned(Mesh::blackhole).await;
}

async fn leader_partitioned(partition: fn(&Mesh, usize)) {
    let (c, mesh) = proxied_cluster().await;
    let leader = c.until_leader(&[0, 1, 2]).await;
    let majority: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (_conn, ch) = channel(&c.nodes[leader].amqp_uri()).await;

    partition(&mesh, leader);
    // The minority side: an AMQP declare fails with 541 within the change
    // timeout, an HTTP change with 503.
    let started = Instant::now();
    let err = ch
        .queue_declare("minority-amqp", durable(), FieldTable::default())
        .await
        .expect_err("a declare on the minority side");
    assert_eq!(reply_code(&err), 541, "{err:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(CHANGE_TIMEOUT_S + 2),
        "{elapsed:?}"
    );
    let (s, b) = c
        .api(leader, "PUT", "/api/vhosts/minority-vhost", None)
        .await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(put_queue(&c, leader, "minority-http").await, 503);

    // The majority elects a leader of its own, and changes work there.
    let new_leader = c.until_leader(&majority).await;
    assert_ne!(new_leader, leader);
    let (conn, ch) = channel(&c.nodes[majority[0]].amqp_uri()).await;
    ch.queue_declare("majority-amqp", durable(), FieldTable::default())
        .await
        .expect("a declare on the majority side");
    let _ = conn.close(200, "bye").await;
    assert_eq!(put_queue(&c, majority[1], "majority-http").await, 201);
    let (s, b) = c
        .api(majority[1], "PUT", "/api/vhosts/majority-vhost", None)
        .await;
    assert_eq!(s, 201, "{b}");

    // Healed: one history everywhere, with the majority's changes and
    // none of the minority's.
    mesh.heal();
    let defs = c
        .until_one_history(&[0, 1, 2], |d| {
            has_queue(d, "majority-amqp") && has_queue(d, "majority-http")
        })
        .await;
    for q in ["minority-amqp", "minority-http"] {
        assert!(!has_queue(&defs, q), "{q} appeared: {defs:#}");
    }
    let vhosts = defs["vhosts"].to_string();
    assert!(vhosts.contains("majority-vhost"), "{vhosts}");
    assert!(!vhosts.contains("minority-vhost"), "{vhosts}");
    c.until_leader(&[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_resumes_as_a_follower_without_split_brain() {
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    let old = c.until_leader(&[0, 1, 2]).await;
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let (_conn, ch) = channel(&c.nodes[old].amqp_uri()).await;

    c.pause(old);
    let paused_at = Instant::now();
    // A change sent to the paused node waits in its socket.
    let pending = tokio::spawn(async move {
        ch.queue_declare("sent-while-paused", durable(), FieldTable::default())
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    });
    let new = c.until_leader(&majority).await;
    let failover = paused_at.elapsed();
    assert_ne!(new, old);
    assert_eq!(put_queue(&c, new, "on-new-leader").await, 201);
    assert_eq!(put_queue(&c, majority[0], "on-majority-0").await, 201);
    assert_eq!(put_queue(&c, majority[1], "on-majority-1").await, 201);

    c.resume(old);
    let answer = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("the paused node answers once resumed")
        .expect("task");
    // One leader, seen by all three; the old one follows it.
    let leader = c.until_leader(&[0, 1, 2]).await;
    let defs = c
        .until_one_history(&[0, 1, 2], |d| {
            ["on-new-leader", "on-majority-0", "on-majority-1"]
                .iter()
                .all(|q| has_queue(d, q))
        })
        .await;
    // The change the paused node received is committed exactly when it
    // was confirmed to the client.
    match &answer {
        Ok(()) => assert!(has_queue(&defs, "sent-while-paused"), "{defs:#}"),
        Err(e) => {
            assert!(e.contains("541"), "{e}");
            assert!(!has_queue(&defs, "sent-while-paused"), "{defs:#}");
        }
    }
    let roles: Vec<Value> = futures::future::join_all((0..3).map(|i| c.nodes(i)))
        .await
        .into_iter()
        .map(|nodes| {
            json!(nodes
                .iter()
                .filter(|n| n["metadata_leader"] == true)
                .map(|n| n["name"].clone())
                .collect::<Vec<_>>())
        })
        .collect();
    let expected = json!([c.nodes[leader].name]);
    assert!(roles.iter().all(|r| *r == expected), "{roles:?}");
    eprintln!("paused leader: the majority elected another in {failover:?}; the resumed node's pending declare: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_cut_and_slow_links_still_converge() {
    let (c, mesh) = proxied_cluster().await;
    let leader = c.until_leader(&[0, 1, 2]).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (cut_off, other) = (followers[0], followers[1]);

    // The leader can no longer reach one follower, which still reaches
    // both others: the leader and the other follower are a majority.
    mesh.cut_one_way(leader, cut_off);
    c.until("a change committed during the one-way cut", || async {
        matches!(put_queue(&c, other, "during-one-way-cut").await, 201 | 204)
    })
    .await;
    mesh.heal();
    c.until_one_history(&[0, 1, 2], |d| has_queue(d, "during-one-way-cut"))
        .await;
    c.until_leader(&[0, 1, 2]).await;

    // Every link 30 ms slow each way (a 60 ms round trip): changes on
    // each node still commit in time. (openraft 0.9 gives an append the
    // heartbeat interval, 200 ms, to be answered, the follower's fsync
    // included: a round trip near it stops commits on a loaded machine,
    // see docs/clustering.md.)
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        mesh.delay(a, b, Duration::from_millis(30));
    }
    for i in 0..3 {
        let started = Instant::now();
        let name = format!("slow-{i}");
        let path = format!("/api/queues/%2F/{name}");
        let (status, body) = c.api(i, "PUT", &path, Some(json!({"durable": true}))).await;
        if status != 201 {
            c.dump_logs();
            panic!("{name}: {status} {body}");
        }
        eprintln!(
            "slow links: a change on n{} took {:?}",
            i + 1,
            started.elapsed()
        );
    }
    c.until_one_history(&[0, 1, 2], |d| {
        (0..3).all(|i| has_queue(d, &format!("slow-{i}")))
    })
    .await;
    mesh.heal();
}

/// A client publishing with confirms until told to stop; the number of
/// messages confirmed.
fn publisher(
    uri: String,
    queue: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let (conn, ch) = channel(&uri).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let mut confirmed = 0;
        while !stop.load(Ordering::Relaxed) {
            let confirm = ch
                .basic_publish(
                    "",
                    queue,
                    BasicPublishOptions::default(),
                    b"payload",
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(confirm.is_ack(), "{confirm:?}");
            confirmed += 1;
        }
        let _ = conn.close(200, "bye").await;
        confirmed
    })
}

/// A client declaring queue after queue until told to stop; the names
/// declared successfully, and how many declares failed.
fn declarer(uri: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(Vec<String>, u64)> {
    tokio::spawn(async move {
        let mut ok = Vec::new();
        let mut failed = 0;
        let mut k = 0;
        let (mut conn, mut ch) = channel(&uri).await;
        while !stop.load(Ordering::Relaxed) {
            let name = format!("load-{k}");
            k += 1;
            match ch
                .queue_declare(&name, durable(), FieldTable::default())
                .await
            {
                Ok(_) => ok.push(name),
                Err(_) => {
                    // 541 closes the connection: open another.
                    failed += 1;
                    (conn, ch) = channel(&uri).await;
                }
            }
        }
        let _ = conn.close(200, "bye").await;
        (ok, failed)
    })
}

async fn member_roles(c: &TestCluster, i: usize) -> Vec<(String, String)> {
    match c.try_api(i, "GET", "/api/nodes", None).await {
        Some((200, Value::Array(nodes))) => nodes
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or("").to_owned(),
                    n["cluster_member"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_antre"))
        .args(args)
        .output()
        .expect("antre");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_leave_and_are_forgotten_under_load() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until_leader(&[0, 1, 2]).await;
    assert_eq!(put_queue(&c, 0, "load").await, 201);
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publisher(c.nodes[0].amqp_uri(), "load", Arc::clone(&stop));
    let declaring = declarer(c.nodes[1].amqp_uri(), Arc::clone(&stop));

    // Grow 3 → 4: n4 starts with --cluster-join n1's address, catches up
    // and becomes a voter.
    let n4 = c.plan_joiner(0);
    c.spawn(n4);
    c.wait_http(n4).await;
    let started = Instant::now();
    c.until("n4 a voter, on n1 and on n4", || async {
        let voter = |roles: Vec<(String, String)>| {
            roles.len() == 4 && roles.iter().all(|(_, r)| r == "voter")
        };
        voter(member_roles(&c, 0).await) && voter(member_roles(&c, n4).await)
    })
    .await;
    eprintln!("n4 joined under load in {:?}", started.elapsed());
    c.until_leader(&[0, 1, 2, n4]).await;
    assert_eq!(put_queue(&c, n4, "made-on-n4").await, 201);
    let (ok, text) = cli(&["cluster", "status", "--url", &c.nodes[n4].http()]);
    let members = text
        .lines()
        .filter(|l| l.starts_with('n') && l.as_bytes().get(1).is_some_and(u8::is_ascii_digit))
        .count();
    assert!(ok && members == 4, "{text}");

    // Shrink back: n4 leaves (run against n4 itself), then stops.
    let (ok, text) = cli(&["cluster", "leave", "--url", &c.nodes[n4].http()]);
    assert!(ok, "{text}");
    assert!(text.contains("n4 left the cluster"), "{text}");
    c.until("n4 gone from n1's members", || async {
        let roles = member_roles(&c, 0).await;
        roles.len() == 3 && !roles.iter().any(|(n, _)| n == "n4")
    })
    .await;
    c.kill(n4);

    // A killed node is forgotten: n1 and n2 are then the whole cluster.
    c.kill(2);
    let (ok, text) = cli(&["cluster", "forget", "n3", "--url", &c.nodes[0].http()]);
    assert!(ok, "{text}");
    c.until("n3 forgotten on n1 and n2", || async {
        let two = |roles: Vec<(String, String)>| {
            let mut names: Vec<String> = roles.into_iter().map(|(n, _)| n).collect();
            names.sort();
            names == ["n1", "n2"]
        };
        two(member_roles(&c, 0).await) && two(member_roles(&c, 1).await)
    })
    .await;
    // Membership changes are for administrators.
    let (s, b) = c
        .api(
            0,
            "PUT",
            "/api/users/watcher",
            Some(json!({"password": "watching", "tags": "monitoring"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    c.until("watcher on n2", || async {
        matches!(
            c.try_api(1, "GET", "/api/users/watcher", None).await,
            Some((200, _))
        )
    })
    .await;
    let url = format!("{}/api/cluster/members/n2", c.nodes[1].http());
    let status = tokio::task::spawn_blocking(move || {
        match ureq::delete(&url)
            .set("Authorization", "Basic d2F0Y2hlcjp3YXRjaGluZw==")
            .call()
        {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{e}"),
        }
    })
    .await
    .expect("request");
    assert_eq!(status, 401, "a monitoring user removed a member");
    // Forgetting a node that is not a member is refused, saying so.
    let (ok, text) = cli(&["cluster", "forget", "n3", "--url", &c.nodes[0].http()]);
    assert!(!ok && text.contains("not a member"), "{text}");
    c.until_leader(&[0, 1]).await;
    assert_eq!(put_queue(&c, 1, "after-forget").await, 201);

    stop.store(true, Ordering::Relaxed);
    let confirmed = publishing.await.expect("publisher");
    let (declared, failed) = declaring.await.expect("declarer");
    assert!(
        confirmed > 0 && !declared.is_empty(),
        "{confirmed} {declared:?}"
    );
    // Every confirmed message is in the queue on its node, n1.
    c.until("every confirmed message in 'load'", || async {
        let q = c.try_api(0, "GET", "/api/queues/%2F/load", None).await;
        matches!(q, Some((200, q)) if q["messages"] == json!(confirmed))
    })
    .await;
    // Every declare answered OK is on both remaining nodes.
    let defs = c
        .until_one_history(&[0, 1], |d| has_queue(d, "after-forget"))
        .await;
    for q in declared.iter().chain(["made-on-n4".to_owned()].iter()) {
        assert!(has_queue(&defs, q), "{q} missing");
    }
    eprintln!(
        "membership under load: {confirmed} messages confirmed, {} queues declared, {failed} declares refused",
        declared.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_can_leave_and_the_others_go_on() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    let leader = c.until_leader(&[0, 1, 2]).await;
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (ok, text) = cli(&["cluster", "leave", "--url", &c.nodes[leader].http()]);
    assert!(ok, "{text}");
    // The two others elect one of them and change things without it.
    let new = c.until_leader(&rest).await;
    c.until("the leaver gone from the others' members", || async {
        let roles = member_roles(&c, new).await;
        roles.len() == 2 && roles.iter().all(|(_, r)| r == "voter")
    })
    .await;
    c.kill(leader);
    assert_eq!(put_queue(&c, rest[0], "after-leader-left").await, 201);
    c.until_one_history(&rest, |d| has_queue(d, "after-leader-left"))
        .await;
}

/// A node's certificate for the cluster link, signed by `ca`: it serves
/// and dials, so both extended key usages.
fn node_cert(ca: &pki::Ca, cn: &str) -> pki::Leaf {
    use rcgen::ExtendedKeyUsagePurpose as Eku;
    ca.leaf(cn, Eku::ServerAuth, |p| {
        p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
    })
}

/// Files of one test's certificates, in a directory of its own.
struct TlsFiles(tempfile::TempDir);

impl TlsFiles {
    fn new() -> TlsFiles {
        TlsFiles(tempfile::tempdir().expect("tempdir"))
    }

    /// Writes `text` to `name` (again, if it was); its path.
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_string_lossy().into_owned()
    }

    /// The cluster TLS arguments of node `n` with `cert`, trusting the CAs
    /// in `ca` (written as `<n>-ca.pem`).
    fn args(&self, cert: &pki::Leaf, n: &str, ca: &str) -> Vec<String> {
        vec![
            "--cluster-tls-cert".to_owned(),
            self.write(&format!("{n}.pem"), &cert.cert_pem),
            "--cluster-tls-key".to_owned(),
            self.write(&format!("{n}.key"), &cert.key_pem),
            "--cluster-tls-ca".to_owned(),
            self.write(&format!("{n}-ca.pem"), ca),
        ]
    }
}

/// A cluster over mutual TLS: n1 and n2 share the cluster's CA; n3's
/// certificate is signed by another CA and is refused, until it gets one
/// from the cluster's CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_over_tls_refuses_a_certificate_of_another_ca() {
    let cluster_ca = pki::Ca::new("antre cluster CA");
    let rogue_ca = pki::Ca::new("another CA");
    let files = TlsFiles::new();
    let tls_args = |cert: &pki::Leaf, n: &str| files.args(cert, n, &cluster_ca.pem);
    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    c.nodes[0].args = tls_args(&node_cert(&cluster_ca, "n1"), "n1");
    c.nodes[1].args = tls_args(&node_cert(&cluster_ca, "n2"), "n2");
    c.nodes[2].args = tls_args(&node_cert(&rogue_ca, "n3"), "n3-rogue");
    c.launch().await;

    // n1 and n2 form the cluster over TLS; a change on n1 reaches n2.
    c.until_leader(&[0, 1]).await;
    assert_eq!(put_queue(&c, 0, "over-tls").await, 201);
    c.until_one_history(&[0, 1], |d| has_queue(d, "over-tls"))
        .await;
    // n3 is refused: n1 shows why, and n1 logs the refusal of n3's
    // certificate when n3 dials it.
    c.until("n1 to show n3 refused for its certificate", || async {
        let Some((200, Value::Array(nodes))) = c.try_api(0, "GET", "/api/nodes", None).await else {
            return false;
        };
        nodes.iter().any(|n| {
            n["name"] == "n3"
                && n["running"] == false
                && n["unreachable_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("TLS") && r.contains("UnknownIssuer"))
        })
    })
    .await;
    c.until("n1 to log n3's certificate refused", || async {
        c.nodes[0].logged("refused: TLS") && c.nodes[0].logged("UnknownIssuer")
    })
    .await;
    assert!(c
        .definitions(2)
        .await
        .is_some_and(|d| !has_queue(&d, "over-tls")));

    // With a certificate from the cluster's CA, n3 joins the others.
    c.kill(2);
    c.nodes[2].args = tls_args(&node_cert(&cluster_ca, "n3"), "n3");
    c.spawn(2);
    c.wait_http(2).await;
    c.until_leader(&[0, 1, 2]).await;
    c.until_one_history(&[0, 1, 2], |d| has_queue(d, "over-tls"))
        .await;
}

/// Replacing the cluster's CA without a restart: n3 comes with a
/// certificate of the next CA and trusts both; n1 and n2 trust only the
/// old one and refuse it, until their CA files hold both, which they
/// notice and load by themselves (`tls_reload_interval`): then n3 joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_takes_a_new_ca_without_a_restart() {
    let old_ca = pki::Ca::new("antre cluster CA 2026");
    let new_ca = pki::Ca::new("antre cluster CA 2027");
    let files = TlsFiles::new();
    let both = format!("{}{}", old_ca.pem, new_ca.pem);
    let args = |cert: &pki::Leaf, n: &str, ca: &str| {
        let mut a = files.args(cert, n, ca);
        a.extend(["--tls-reload-interval".to_owned(), "0.2".to_owned()]);
        a
    };
    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    c.nodes[0].args = args(&node_cert(&old_ca, "n1"), "n1", &old_ca.pem);
    c.nodes[1].args = args(&node_cert(&old_ca, "n2"), "n2", &old_ca.pem);
    c.nodes[2].args = args(&node_cert(&new_ca, "n3"), "n3", &both);
    c.launch().await;
    c.until_leader(&[0, 1]).await;
    c.until("n1 to refuse n3's certificate", || async {
        c.nodes[0].logged("refused: TLS") && c.nodes[0].logged("UnknownIssuer")
    })
    .await;

    // The old nodes' CA files get the next CA beside the old one.
    files.write("n1-ca.pem", &both);
    files.write("n2-ca.pem", &both);
    c.until("n1 and n2 to load the files", || async {
        c.nodes[0].logged("cluster link TLS files reloaded")
            && c.nodes[1].logged("cluster link TLS files reloaded")
    })
    .await;
    c.until_leader(&[0, 1, 2]).await;
    assert_eq!(put_queue(&c, 2, "after-the-new-ca").await, 201);
    c.until_one_history(&[0, 1, 2], |d| has_queue(d, "after-the-new-ca"))
        .await;
}

/// Publishes `body` (persistent) to `queue` through node `i` on a
/// channel with confirms; whether it was acked.
async fn publish_confirmed(c: &TestCluster, i: usize, queue: &str, body: &[u8]) -> bool {
    let (_conn, ch) = channel(&c.nodes[i].amqp_uri()).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    harness::publish_confirmed(&ch, queue, body, harness::WAIT).await == Some(true)
}

/// The node that leads quorum queue `name`, as node `i` sees it.
async fn queue_leader_seen_by(c: &TestCluster, i: usize, name: &str) -> Option<String> {
    let path = format!("/api/queues/%2F/{name}");
    match c.try_api(i, "GET", &path, None).await {
        Some((200, q)) => q["leader"].as_str().map(str::to_owned),
        _ => None,
    }
}

/// Waits until node `i` sees a leader of quorum queue `name` other than
/// node `old`; that leader.
async fn another_leader(c: &TestCluster, i: usize, name: &str, old: usize) -> usize {
    let old_name = c.nodes[old].name.clone();
    c.until("the majority to elect another leader", || async {
        queue_leader_seen_by(c, i, name)
            .await
            .is_some_and(|l| l != old_name)
    })
    .await;
    queue_leader_seen_by(c, i, name)
        .await
        .and_then(|l| c.nodes.iter().position(|n| n.name == l))
        .expect("a new leader")
}

/// Declares quorum queue `name` through node `i`; the node that leads
/// it, once `i` knows.
async fn declare_quorum_queue(c: &TestCluster, i: usize, name: &str) -> usize {
    let (_conn, ch) = channel(&c.nodes[i].amqp_uri()).await;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(name, durable(), quorum)
        .await
        .expect("declare quorum queue");
    loop {
        if let Some(l) = queue_leader_seen_by(c, i, name).await {
            return c
                .nodes
                .iter()
                .position(|n| n.name == l)
                .expect("the leader is a node");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A quorum queue's leader cut off from the majority: what it is asked to
/// publish meanwhile is never confirmed (nacked or unanswered), the
/// majority elects another leader and confirms there, and after healing
/// the queue holds what was confirmed on either side, once: nothing
/// confirmed lost. Of the minority's publishes, only ones left unanswered
/// may be there too, once: the old leader, deposed once the partition
/// heals, sends on its own clients' publishes it did not get committed
/// (as RabbitMQ's channel resends them to the new leader); a nacked one
/// never is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_leader_cut_off_confirms_nothing_and_the_majority_goes_on() {
    let (c, mesh) = proxied_cluster().await;
    c.until_leader(&[0, 1, 2]).await;
    let old = declare_quorum_queue(&c, 0, "pq").await;
    let publish = |ch: Channel, body: String| async move {
        let confirm = ch
            .basic_publish(
                "",
                "pq",
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .ok()?;
        match tokio::time::timeout(Duration::from_secs(3), confirm).await {
            Ok(Ok(c)) => Some(c.is_ack()),
            _ => None,
        }
    };
    let (_lconn, lch) = channel(&c.nodes[old].amqp_uri()).await;
    lch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut confirmed = Vec::new();
    for n in 0..20 {
        let body = format!("before-{n}");
        assert_eq!(publish(lch.clone(), body.clone()).await, Some(true));
        confirmed.push(body);
    }

    mesh.isolate(old);
    let mut unanswered = Vec::new();
    for n in 0..5 {
        let body = format!("minority-{n}");
        let outcome = publish(lch.clone(), body.clone()).await;
        assert_ne!(outcome, Some(true), "a cut-off leader confirmed a publish");
        if outcome.is_none() {
            unanswered.push(body);
        }
    }
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = loop {
        let seen = queue_leader_seen_by(&c, majority[0], "pq").await;
        if let Some(i) = seen.and_then(|l| c.nodes.iter().position(|n| n.name == l)) {
            if i != old && queue_leader_seen_by(&c, i, "pq").await == Some(c.nodes[i].name.clone())
            {
                break i;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_mconn, mch) = channel(&c.nodes[new].amqp_uri()).await;
    mch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for n in 0..20 {
        let body = format!("after-{n}");
        assert_eq!(publish(mch.clone(), body.clone()).await, Some(true));
        confirmed.push(body);
    }

    mesh.heal();
    let new_name = c.nodes[new].name.clone();
    c.until("the healed node to follow the new leader", || async {
        queue_leader_seen_by(&c, old, "pq").await.as_ref() == Some(&new_name)
    })
    .await;
    let mut got = Vec::new();
    while let Ok(Some(m)) = mch.basic_get("pq", BasicGetOptions { no_ack: true }).await {
        got.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    got.sort();
    let mut once = got.clone();
    once.dedup();
    assert_eq!(once, got, "nothing twice");
    let missing: Vec<&String> = confirmed.iter().filter(|b| !got.contains(b)).collect();
    assert!(missing.is_empty(), "confirmed, lost: {missing:?}");
    let other: Vec<&String> = got
        .iter()
        .filter(|b| !confirmed.contains(b) && !unanswered.contains(b))
        .collect();
    assert!(
        other.is_empty(),
        "neither confirmed nor unanswered: {other:?}"
    );
}

/// A member that never heard from its group's leader still votes. A
/// queue declared through a drained node's API is placed there, but that
/// member does not stand: the two others elect a leader. With their links
/// to it cut, it receives nothing, and its log holds only the membership
/// it began with (before, it had no log at all, and openraft called it a
/// learner). When the leader dies, the
/// third member needs its vote to win, and gets it: before, a learner's
/// pre-vote answer was "no replica", and the queue had no leader while
/// two of its three members ran (seen in CI, for a stream, on a loaded
/// machine where a new member's first append came late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_heard_its_leader_votes_when_the_leader_dies() {
    unheard_member_votes("quorum").await;
}

/// The same for a stream, whose members elect as a quorum queue's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_member_that_never_heard_its_leader_votes_when_the_leader_dies() {
    unheard_member_votes("stream").await;
}

async fn unheard_member_votes(queue_type: &str) {
    let (mut c, mesh) = proxied_cluster().await;
    // The metadata leader, so that the queue's definition reaches it over
    // its own links, which stay open.
    let a = c.until_leader(&[0, 1, 2]).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != a).collect();
    let (ok, out, err) = c.cli(a, &["cluster", "drain"]).await;
    assert!(ok, "{out}{err}");
    for &o in &others {
        mesh.cut_one_way(o, a);
    }
    let (status, body) = c
        .api(
            a,
            "PUT",
            "/api/queues/%2F/unheard",
            Some(json!({"durable": true, "arguments": {"x-queue-type": queue_type}})),
        )
        .await;
    assert!(status == 201 || status == 204, "{status} {body}");
    c.until("the two reachable members to elect a leader", || async {
        c.queue_leader("unheard").await.is_some()
    })
    .await;
    let l = c.queue_leader("unheard").await.expect("a leader");
    assert_ne!(l, a, "a drained node leads no new queue");
    let f = others
        .iter()
        .copied()
        .find(|&o| o != l)
        .expect("a follower");
    for n in 0..5 {
        assert!(publish_confirmed(&c, l, "unheard", format!("m{n}").as_bytes()).await);
    }
    let (status, rows) = c
        .api(a, "GET", "/api/queues/%2F/unheard/members", None)
        .await;
    assert_eq!(status, 200, "{rows}");
    let own = own_row(&c, a, &rows).unwrap_or_default();
    assert_eq!(own["raft_state"], json!("follower"), "{rows:#}");
    assert_eq!(own["last_log_index"], json!(0), "{rows:#}");

    // The follower may reach it again (its vote request must arrive); the
    // leader dies without ever having reached it.
    mesh.set(f, a, proxy::LinkState::PASS);
    c.kill(l);
    assert_eq!(another_leader(&c, f, "unheard", l).await, f);
    assert!(publish_confirmed(&c, f, "unheard", b"after").await);
    if queue_type == "quorum" {
        let mut got = c.drain(f, "unheard").await;
        got.sort();
        assert_eq!(got, ["after", "m0", "m1", "m2", "m3", "m4"]);
    } else {
        c.until("the stream to hold all six", || async {
            c.queue_on(f, "unheard")
                .await
                .is_some_and(|q| q["messages"] == json!(6))
        })
        .await;
    }
}

/// A new group whose leader-to-be dies after both other members voted
/// for it, before its first append reached either. The queue is placed
/// on node `a`, whose requests to the others arrive late and whose
/// answers are held: its first vote request finds both others' replicas
/// started and is granted, but it never hears a vote, never leads, and
/// sends no append. Then it is killed. Before, the two others had no
/// membership (it came with the leader's first append), could not stand,
/// and could no longer bootstrap (openraft refuses once a member voted):
/// the queue had no leader while two of its three members ran. Every
/// member now begins with the membership in its log, and the two elect
/// one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_queue_elects_again_when_its_first_leader_dies_before_its_first_append() {
    voted_members_elect("quorum").await;
}

/// The same for a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_elects_again_when_its_first_leader_dies_before_its_first_append() {
    voted_members_elect("stream").await;
}

async fn voted_members_elect(queue_type: &str) {
    // Longer elections than the default (0.4 s): a new group's members
    // hold theirs for three election timeouts, 9 s here, the time the test
    // has to see both vote, whatever the machine's load.
    let (mut c, mesh) = proxied_cluster_with(&["--cluster-queue-election-timeout", "1.5"]).await;
    let m = c.until_leader(&[0, 1, 2]).await;
    let a = (0..3).find(|&i| i != m).expect("a follower");
    // `a`'s vote requests must go out on connections it has already made:
    // a new one would wait forever for the answer to its handshake, held
    // below. A queue it leads for a while leaves its connections to both
    // others in its pool (openraft's clients give them back when the
    // queue is deleted).
    assert_eq!(declare_quorum_queue(&c, a, "warm-up").await, a);
    let (status, body) = c.api(a, "DELETE", "/api/queues/%2F/warm-up", None).await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let others = lead_one_on_each_but(&c, a).await;
    let name = format!("voted-{queue_type}");
    let path = format!("/api/queues/%2F/{name}");
    let members_path = format!("{path}/members");
    // `a`'s requests to the others arrive 1 s late and their answers
    // never: its first vote request, sent as it starts its replica, finds
    // both others' replicas started and still holding their own elections,
    // and is granted; `a` never hears it, nor any pre-vote answer after.
    for &o in &others {
        mesh.set(
            a,
            o,
            proxy::LinkState {
                up: proxy::Flow::Delay(Duration::from_secs(1)),
                down: proxy::Flow::Hold,
                ..proxy::LinkState::PASS
            },
        );
    }
    // Answered once the queue has a leader (or after a while without): it
    // runs beside the rest, which does not wait for it.
    let declare = declare_balanced(&c, others[0], &name, queue_type);
    {
        let voted = c.until("both other members to vote for the placed one", || async {
            let mut voted = 0;
            for &o in &others {
                let Some((200, rows)) = c.try_api(o, "GET", &members_path, None).await else {
                    continue;
                };
                let own = own_row(&c, o, &rows).unwrap_or_default();
                // Voted, and no entry beyond the membership a member begins
                // with (before the change: none at all).
                if own["term"].as_u64().is_some_and(|t| t >= 1)
                    && own["last_log_index"].as_u64().unwrap_or(0) == 0
                    && own["raft_state"] != json!("leader")
                {
                    voted += 1;
                }
            }
            voted == others.len()
        });
        tokio::pin!(voted);
        tokio::select! {
            () = &mut voted => {}
            // Answered without a leader once its wait ran out: still fine.
            status = declare => {
                assert!(status == 201 || status == 204, "{status}");
                voted.await;
            }
        }
    }
    assert_eq!(c.placed_on(others[0], &name).await, c.nodes[a].name);
    let (status, rows) = c.api(a, "GET", &members_path, None).await;
    assert_eq!(status, 200, "{rows}");
    assert!(
        rows.as_array()
            .is_some_and(|r| r.iter().all(|r| r["raft_state"] != json!("leader"))),
        "no leader before the kill: {rows:#}"
    );
    c.kill(a);
    mesh.heal();
    c.until("the two others to elect a leader", || async {
        c.queue_leader(&name).await.is_some()
    })
    .await;
    let l = c.queue_leader(&name).await.expect("a leader");
    assert_ne!(l, a);
    assert!(publish_confirmed(&c, l, &name, b"after").await);
    if queue_type == "quorum" {
        assert_eq!(c.drain(l, &name).await, ["after"]);
    } else {
        c.until("the stream to hold it", || async {
            c.queue_on(l, &name)
                .await
                .is_some_and(|q| q["messages"] == json!(1))
        })
        .await;
    }
}

/// Node `i`'s own row among a queue's `members` rows.
fn own_row(c: &TestCluster, i: usize, rows: &Value) -> Option<Value> {
    rows.as_array()?
        .iter()
        .find(|r| r["node"] == json!(c.nodes[i].name))
        .cloned()
}

/// Makes the balanced locator place the next quorum queue or stream
/// declared through `others[0]` on node `a`: each other node leads a
/// queue, `a` none. Declaring through another node keeps `a`'s links out
/// of the declare (a change forwarded from `a` would need them), which
/// the callers slow down or cut.
async fn lead_one_on_each_but(c: &TestCluster, a: usize) -> Vec<usize> {
    let others: Vec<usize> = (0..3).filter(|&i| i != a).collect();
    for &o in &others {
        assert_eq!(declare_quorum_queue(c, o, &format!("led-by-{o}")).await, o);
    }
    // The locator counts the leaders the declaring node knows of.
    c.until("the declaring node to know both leaders", || async {
        let mut known = 0;
        for &o in &others {
            let led = queue_leader_seen_by(c, others[0], &format!("led-by-{o}")).await;
            known += usize::from(led == Some(c.nodes[o].name.clone()));
        }
        known == others.len()
    })
    .await;
    others
}

/// Declares `name`, of `queue_type`, through node `i` with the balanced
/// locator; the status (0: no answer). The declare is answered once the
/// queue has a leader, or once the declaring node's wait for one ran out.
async fn declare_balanced(c: &TestCluster, i: usize, name: &str, queue_type: &str) -> u16 {
    let args = json!({"x-queue-type": queue_type, "x-queue-leader-locator": "balanced"});
    let path = format!("/api/queues/%2F/{name}");
    let body = json!({"durable": true, "arguments": args});
    c.try_api(i, "PUT", &path, Some(body))
        .await
        .map_or(0, |(status, _)| status)
}

/// A new queue's placed member that starts its replica only after the
/// others elected a leader deposes no one. The metadata leader cannot
/// reach node `a` while the queue is declared (through another node,
/// placed on `a` by the balanced locator), so `a` applies the declare
/// only once the link is back, when the two others have elected one of
/// them after their hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_placed_member_deposes_no_leader_of_its_new_queue() {
    // Longer elections than the default, so that a loaded machine does not
    // change the leader for reasons of its own while the test watches.
    let (c, mesh) = proxied_cluster_with(&["--cluster-queue-election-timeout", "1.5"]).await;
    let m = c.until_leader(&[0, 1, 2]).await;
    let a = (0..3).find(|&i| i != m).expect("a follower");
    let others = lead_one_on_each_but(&c, a).await;
    // `a` applies the declare only once the metadata leader reaches it
    // again, after the others started their replicas and elected.
    mesh.cut_one_way(m, a);
    let status = declare_balanced(&c, others[0], "late-placed", "quorum").await;
    assert!(status == 201 || status == 204, "{status}");
    assert_eq!(c.placed_on(others[0], "late-placed").await, c.nodes[a].name);
    let row = |i: usize| {
        let c = &c;
        async move {
            let (_, rows) = c
                .api(i, "GET", "/api/queues/%2F/late-placed/members", None)
                .await;
            own_row(c, i, &rows).map(|r| (r["raft_state"].clone(), r["term"].as_u64()))
        }
    };
    c.until("the two others to elect a leader", || async {
        c.queue_leader("late-placed").await.is_some_and(|l| l != a)
    })
    .await;
    let l = c.queue_leader("late-placed").await.expect("a leader");
    let (_, term) = row(l).await.expect("the leader's row");
    assert!(
        c.queue_on(a, "late-placed").await.is_none(),
        "not declared on `a` yet"
    );
    mesh.heal();
    c.until("the placed member to follow", || async {
        queue_leader_seen_by(&c, a, "late-placed").await == Some(c.nodes[l].name.clone())
            && row(a).await.is_some_and(|(s, _)| s == json!("follower"))
    })
    .await;
    // Past the placed member's first-election window (three election
    // timeouts, at most 9 s here, from the start of its replica).
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(publish_confirmed(&c, a, "late-placed", b"m").await);
    // The same leader. Deposing it took the placed member a term above
    // the leader's, so the leader's next one is at least two more; one
    // more may come of a loaded machine's late heartbeat.
    let (state, now) = row(l).await.expect("the leader's row");
    assert_eq!(
        state,
        json!("leader"),
        "the leader the others elected still leads"
    );
    let (term, now) = (term.unwrap_or(0), now.unwrap_or(0));
    assert!(now <= term + 1, "its term went from {term} to {now}");
}

/// An idle quorum queue's leader whose links go silent (blackholed: its
/// connections stay open, nothing passes) is replaced, though its members
/// heard only its leases, no Raft heartbeat, before: a lease that stops
/// coming lapses as a heartbeat's lease does. Once its links are back,
/// its members refuse its leases (they follow a later term), its Raft
/// heartbeat learns that term, and it follows the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_quorum_queues_silent_leader_is_replaced_and_follows_once_back() {
    let (c, mesh) = proxied_cluster().await;
    c.until_leader(&[0, 1, 2]).await;
    let old = declare_quorum_queue(&c, 0, "quiet").await;
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    c.until("the idle queue's leader to send leases", || async {
        c.count_of_peer(majority[0], old, "queue_leases").await > 0
            && c.count_of_peer(majority[1], old, "queue_leases").await > 0
    })
    .await;

    mesh.blackhole(old);
    let new = another_leader(&c, majority[0], "quiet", old).await;
    assert!(publish_confirmed(&c, new, "quiet", b"after").await);

    mesh.heal();
    let new_name = c.nodes[new].name.clone();
    c.until("the old leader to follow the new one", || async {
        queue_leader_seen_by(&c, old, "quiet").await.as_ref() == Some(&new_name)
    })
    .await;
    // Through the old leader, which may not have heard from the new one
    // yet (the metadata named it first): its get waits for the news and
    // goes there, where it answered get-empty from its idle engine.
    assert_eq!(c.drain(old, "quiet").await, ["after"]);
}

/// A quorum queue's leader cut off from the majority stops serving its
/// engine once a new leader could have been elected: a get through it
/// finds none of the messages, which the majority's leader gives out
/// meanwhile. Its engine went on delivering the messages it held,
/// unmarked, after the new leader had given out the same ones. Cut off
/// twice: with its links refused (the majority finds it dead at once)
/// and blackholed (its heartbeats stop coming).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_majority_stops_delivering() {
    let (c, mesh) = proxied_cluster().await;
    c.until_leader(&[0, 1, 2]).await;
    let mut leader = declare_quorum_queue(&c, 0, "fenced").await;
    assert!(publish_confirmed(&c, leader, "fenced", b"m0").await);
    assert!(publish_confirmed(&c, leader, "fenced", b"m1").await);
    for blackhole in [false, true] {
        let old = leader;
        if blackhole {
            mesh.blackhole(old);
        } else {
            mesh.isolate(old);
        }
        leader = another_leader(&c, (old + 1) % 3, "fenced", old).await;
        // The majority's leader gives one out, for good.
        let (_conn, ch) = channel(&c.nodes[leader].amqp_uri()).await;
        let taken = ch
            .basic_get("fenced", BasicGetOptions { no_ack: true })
            .await
            .expect("a get at the new leader")
            .map(|g| String::from_utf8_lossy(&g.delivery.data).into_owned());
        assert!(taken.is_some(), "the new leader has the messages");
        // The old one must give out neither that one nor the other: not
        // to a consumer there, nor to a get, which waits for the change
        // timeout and fails.
        let (_cconn, cch) = channel(&c.nodes[old].amqp_uri()).await;
        let mut consumer = cch
            .basic_consume(
                "fenced",
                "on-the-old-leader",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume on the old leader");
        let (_conn, ch) = channel(&c.nodes[old].amqp_uri()).await;
        match ch.basic_get("fenced", BasicGetOptions { no_ack: true }).await {
            Err(e) => assert_eq!(reply_code(&e), 541, "{e:?}"),
            Ok(got) => panic!(
                "the cut-off leader (blackholed: {blackhole}) gave out {:?}; {taken:?} went at the new one",
                got.map(|g| String::from_utf8_lossy(&g.delivery.data).into_owned())
            ),
        }
        assert!(
            c.nodes[old].logged("its deliveries wait"),
            "the old leader says why its queue stopped delivering"
        );
        // Its consumer had those seconds to receive something.
        if let Some(Some(Ok(d))) = futures::FutureExt::now_or_never(consumer.next()) {
            panic!(
                "the cut-off leader delivered {:?}",
                String::from_utf8_lossy(&d.data)
            );
        }
        mesh.heal();
        let name = c.nodes[leader].name.clone();
        c.until("the old leader to follow the new one", || async {
            queue_leader_seen_by(&c, old, "fenced").await.as_ref() == Some(&name)
        })
        .await;
        assert!(publish_confirmed(&c, leader, "fenced", b"again").await);
    }
    assert_eq!(c.drain(leader, "fenced").await, ["again", "again"]);
}

/// The metadata group's term on node `i`'s own entry of `/api/nodes`.
async fn metadata_term(c: &TestCluster, i: usize) -> u64 {
    let nodes = c.nodes(i).await;
    nodes
        .iter()
        .find_map(|n| n["metadata_term"].as_u64())
        .expect("the answering node's term")
}

/// A follower cut off from the others past its election timeout deposes
/// neither the metadata leader nor a quorum queue's leader when the
/// partition heals. openraft 0.9 has no pre-vote: the cut-off node
/// stood for election again and again, and on healing its higher term
/// made both healthy leaders step down, for elections it could not even
/// win (its log was behind): a pause of the queue and its consumers for
/// nothing. Now it asks the others first, who refuse while they hear
/// their leader: it never raises the term, and both leaders keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_deposes_no_leader_when_it_returns() {
    let (c, mesh) = proxied_cluster().await;
    let meta = c.until_leader(&[0, 1, 2]).await;
    let leader = declare_quorum_queue(&c, meta, "pq").await;
    let cut = (0..3)
        .find(|&i| i != leader && i != meta)
        .expect("a node that leads neither group");
    let meta_term = metadata_term(&c, meta).await;
    let queue_term = c.queue_on(meta, "pq").await.expect("listed")["leader_term"].clone();
    assert!(queue_term.as_u64().is_some(), "{queue_term}");

    let (_lconn, lch) = channel(&c.nodes[leader].amqp_uri()).await;
    lch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let publish = |n: usize| {
        let lch = lch.clone();
        async move {
            let body = format!("m-{n}");
            harness::publish_confirmed(&lch, "pq", body.as_bytes(), harness::WAIT).await
                == Some(true)
        }
    };
    for n in 0..10 {
        assert!(publish(n).await);
    }
    mesh.isolate(cut);
    // The fault, while the majority goes on (the cut-off node's log falls
    // behind): longer than a queue group's lease and election timeout
    // (0.8 s + 0.4 to 0.8 s), so its timer runs out; shorter than the
    // 4 s the cut-off node keeps standing for the metadata group after it
    // found its leader "dead" (the proxy refuses its dials, as a dead
    // node's port would), so it comes back still believing that.
    let until = Instant::now() + Duration::from_millis(2500);
    let mut n = 10;
    while Instant::now() < until {
        assert!(publish(n).await);
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metadata_term(&c, cut).await,
        meta_term,
        "the cut-off node raised the metadata term"
    );
    mesh.heal();
    // It catches up with both groups (so the leaders have heard its term).
    assert_eq!(put_queue(&c, meta, "after-heal").await, 201);
    c.until_one_history(&[0, 1, 2], |d| has_queue(d, "after-heal"))
        .await;
    c.until("the cut-off member to catch up", || async {
        c.queue_on(cut, "pq")
            .await
            .is_some_and(|q| q["replica_messages"].as_u64() == Some(n as u64))
    })
    .await;
    assert_eq!(c.leader_seen_by(cut).await, Some(meta));
    assert_eq!(
        metadata_term(&c, meta).await,
        meta_term,
        "a metadata election"
    );
    let q = c.queue_on(meta, "pq").await.expect("listed");
    assert_eq!(q["leader"], c.nodes[leader].name.as_str());
    assert_eq!(q["leader_term"], queue_term, "a quorum queue election");
}

/// A quorum queue's leader cut off while publishes are in flight, then so
/// far behind when the partition heals that it catches up by a snapshot:
/// every publish it was asked for is answered (sent on to the new leader,
/// which skips one it has, and acked once stored there; or nacked), and
/// an acked one is in the queue once. openraft answers a proposal when its
/// entry is applied or truncated away, and a snapshot replacing the log
/// does neither: the publisher waited for those confirms forever, and the
/// node, once leader again, kept a slot for each of them and after eight
/// proposed nothing more (a wedged queue, seen in the nemesis soak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_answers_its_publishes_after_catching_up_by_snapshot() {
    let (c, mesh) = proxied_cluster().await;
    c.until_leader(&[0, 1, 2]).await;
    let old = declare_quorum_queue(&c, 0, "sq").await;
    let (_oconn, och) = channel(&c.nodes[old].amqp_uri()).await;
    och.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let ok = och
        .basic_publish(
            "",
            "sq",
            BasicPublishOptions::default(),
            b"before",
            persistent.clone(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(ok.is_ack());

    mesh.isolate(old);
    let mut stuck = Vec::new();
    for n in 0..10 {
        let body = format!("minority-{n}");
        let confirm = och
            .basic_publish(
                "",
                "sq",
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent.clone(),
            )
            .await
            .expect("publish");
        stuck.push(confirm);
    }
    // The majority elects a leader and moves on, through enough large
    // messages for a snapshot by size, then enough entries that the log
    // the cut-off node would need is purged.
    let new = 'elected: loop {
        for i in (0..3).filter(|&i| i != old) {
            if queue_leader_seen_by(&c, i, "sq").await.as_deref() == Some(c.nodes[i].name.as_str())
            {
                break 'elected i;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_nconn, nch) = channel(&c.nodes[new].amqp_uri()).await;
    nch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let snapshotted = || {
        let groups = c.nodes[new].dir.join("cluster").join("queues");
        std::fs::read_dir(groups)
            .is_ok_and(|d| d.flatten().any(|g| g.path().join("snapshot.bin").exists()))
    };
    let through = |body: Vec<u8>| {
        let nch = nch.clone();
        let persistent = persistent.clone();
        async move {
            let confirm = nch
                .basic_publish("", "sq", BasicPublishOptions::default(), &body, persistent)
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(confirm.is_ack());
            nch.basic_get("sq", BasicGetOptions { no_ack: true })
                .await
                .expect("get")
                .expect("a message");
        }
    };
    let deadline = Instant::now() + harness::WAIT;
    while !snapshotted() {
        assert!(Instant::now() < deadline, "no snapshot on the new leader");
        through(vec![b'x'; 1 << 20]).await;
    }
    // Two more snapshots by size: a snapshot keeps the 64 entries before
    // it, so the entries the cut-off node needs go only with a later one
    // (the leader does not wait for a node it has not heard from).
    for _ in 0..70 {
        through(vec![b'y'; 1 << 20]).await;
    }
    for _ in 0..40 {
        through(b"small".to_vec()).await;
    }

    mesh.heal();
    c.until("the old leader to install a snapshot", || async {
        c.nodes[old].logged("quorum queue replica installed its leader's snapshot")
    })
    .await;
    let mut acked = Vec::new();
    for (n, confirm) in stuck.into_iter().enumerate() {
        let answer = tokio::time::timeout(harness::WAIT, confirm).await;
        match answer {
            Ok(Ok(c)) if c.is_ack() => acked.push(format!("minority-{n}")),
            Ok(Ok(_)) => {}
            other => panic!("a cut-off leader's publish: {other:?}"),
        }
    }
    let mut held = Vec::new();
    while let Ok(Some(m)) = nch.basic_get("sq", BasicGetOptions { no_ack: true }).await {
        held.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    for body in &acked {
        let copies = held.iter().filter(|b| *b == body).count();
        assert_eq!(
            copies, 1,
            "{body} acked, in the queue {copies} times: {held:?}"
        );
    }
}

/// What node `i` counts of its checks whether node `peer` died.
async fn liveness_probes(c: &TestCluster, i: usize, peer: usize) -> u64 {
    c.count_of_peer(i, peer, "liveness_probes").await
}

/// Two nodes that each lead a group the other follows (the metadata on
/// one, a quorum queue on the other) check once whether the other died
/// when a connection closes, and stop there. Each check's own connection
/// closing used to make the checked node check back, and the two went on
/// forever, a core between them, from the first connection that closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_link_is_checked_once_not_in_an_endless_exchange() {
    let (c, mesh) = proxied_cluster().await;
    let m = c.until_leader(&[0, 1, 2]).await;
    let q = (m + 1) % 3;
    assert_eq!(declare_quorum_queue(&c, q, "probed").await, q);
    // Traffic from q's leadership to m: appends it replicates there.
    assert!(publish_confirmed(&c, q, "probed", b"one").await);
    let m_of_q = liveness_probes(&c, m, q).await;
    let q_of_m = liveness_probes(&c, q, m).await;

    mesh.reset(q, m);
    c.until("m to check whether q died", || async {
        liveness_probes(&c, m, q).await > m_of_q
    })
    .await;
    // An exchange would add hundreds a second; each closed connection
    // of q's adds at most one.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let (mq, qm) = (
            liveness_probes(&c, m, q).await,
            liveness_probes(&c, q, m).await,
        );
        assert!(
            mq <= m_of_q + 8 && qm <= q_of_m + 8,
            "probes keep going: m of q {m_of_q} -> {mq}, q of m {q_of_m} -> {qm}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
