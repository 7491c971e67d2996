//! A cluster of three real `antre` processes (tests/cluster/harness.rs),
//! driven by lapin and the management API: the metadata group forms,
//! metadata changes on any node are seen on every node with single-node
//! answers, the leader's death is survived, a node that was down catches
//! up, a change without a quorum fails cleanly and leaves nothing behind,
//! and a node with the wrong secret is refused.

use crate::harness;

use std::time::Duration;

use harness::{connect, TestCluster, CHANGE_TIMEOUT_S, SECRET};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};

fn reply(err: &lapin::Error) -> (u16, String) {
    match err {
        lapin::Error::ProtocolError(e) => (e.get_id(), e.get_message().to_string()),
        other => panic!("not a protocol error: {other:?}"),
    }
}

async fn has(c: &TestCluster, i: usize, path: &str) -> bool {
    matches!(c.try_api(i, "GET", path, None).await, Some((200, _)))
}

/// Every node shows every node running and agrees on one leader.
async fn formed(c: &TestCluster, members: &[usize]) -> bool {
    let mut leaders = Vec::new();
    for &i in members {
        let Some((200, Value::Array(nodes))) = c.try_api(i, "GET", "/api/nodes", None).await else {
            return false;
        };
        let running = nodes
            .iter()
            .filter(|n| members.iter().any(|&m| n["name"] == json!(c.nodes[m].name)))
            .all(|n| n["running"] == json!(true));
        let leader: Vec<&Value> = nodes
            .iter()
            .filter(|n| n["metadata_leader"] == json!(true))
            .collect();
        if !running || leader.len() != 1 {
            return false;
        }
        leaders.push(leader[0]["name"].clone());
    }
    leaders.windows(2).all(|w| w[0] == w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replicates_metadata_and_survives_failures() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until("the cluster to form", || formed(&c, &[0, 1, 2]))
        .await;
    let nodes = c.nodes(0).await;
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for n in &nodes {
        assert!(n["last_contact"].is_u64(), "{n}");
        assert!(n["cluster_listen"].is_string(), "{n}");
    }

    // A user created on n1 over HTTP logs in over AMQP on n3.
    let (s, b) = c
        .api(
            0,
            "PUT",
            "/api/users/alice",
            Some(json!({"password": "wonderland", "tags": ""})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = c
        .api(
            0,
            "PUT",
            "/api/permissions/%2F/alice",
            Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    c.until("alice's permission on n3", || {
        has(&c, 2, "/api/permissions/%2F/alice")
    })
    .await;
    let alice = connect(&c.nodes[2].amqp_uri_as("alice", "wonderland")).await;
    // n1 shows every node's own figures, as RabbitMQ's API does: n3's
    // include alice's connection (n1 has none), its memory and uptime.
    c.until("n3's own figures in n1's /api/nodes", || async {
        let nodes = c.nodes(0).await;
        let n3 = nodes.iter().find(|n| n["name"] == c.nodes[2].name.as_str());
        n3.is_some_and(|n| {
            n["connections"].as_u64() >= Some(1)
                && n["mem_used"].as_u64() > Some(0)
                && n["uptime"].is_u64()
                && n["disk_free"].is_u64()
                && n["quorum_leaders"].is_u64()
                && n["this_node"] == false
        })
    })
    .await;
    // Deleting her on n1 closes her connection on n3.
    let (s, b) = c.api(0, "DELETE", "/api/users/alice", None).await;
    assert_eq!(s, 204, "{b}");
    c.until("alice's connection on n3 to close", || {
        let open = alice.status().connected();
        async move { !open }
    })
    .await;

    // A vhost and a policy made on n2 are on n1 and n3.
    let (s, b) = c.api(1, "PUT", "/api/vhosts/eu", None).await;
    assert_eq!(s, 201, "{b}");
    let policy =
        json!({"pattern": "^capped", "definition": {"max-length": 10}, "apply-to": "queues"});
    let (s, b) = c.api(1, "PUT", "/api/policies/%2F/cap", Some(policy)).await;
    assert_eq!(s, 201, "{b}");
    for i in [0, 2] {
        c.until("the vhost everywhere", || has(&c, i, "/api/vhosts/eu"))
            .await;
        c.until("the policy everywhere", || {
            has(&c, i, "/api/policies/%2F/cap")
        })
        .await;
    }

    // A definitions file imported on n2 reaches every node; its queues
    // live on n2.
    let defs = json!({
        "vhosts": [{"name": "imported"}],
        "users": [{"name": "bob", "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}],
        "permissions": [{"user": "bob", "vhost": "imported", "configure": ".*", "write": ".*", "read": ".*"}],
        "exchanges": [{"name": "imp-x", "vhost": "imported", "type": "fanout", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}],
        "queues": [{"name": "imp-q", "vhost": "imported", "durable": true, "auto_delete": false, "arguments": {"x-max-length": 7}}],
        "bindings": [{"source": "imp-x", "vhost": "imported", "destination": "imp-q", "destination_type": "queue", "routing_key": "", "arguments": {}}],
        "policies": [{"vhost": "imported", "name": "imp-p", "pattern": ".*", "apply-to": "queues", "definition": {"message-ttl": 1000}, "priority": 0}],
    });
    let (s, b) = c.api(1, "POST", "/api/definitions", Some(defs)).await;
    assert!(s == 201 || s == 204, "{s} {b}");
    for i in [0, 2] {
        for path in [
            "/api/vhosts/imported",
            "/api/users/bob",
            "/api/permissions/imported/bob",
            "/api/exchanges/imported/imp-x",
            "/api/policies/imported/imp-p",
        ] {
            c.until(path, || has(&c, i, path)).await;
        }
        c.until("the imported binding", || async {
            let r = c
                .try_api(i, "GET", "/api/bindings/imported/e/imp-x/q/imp-q", None)
                .await;
            matches!(r, Some((200, Value::Array(a))) if a.len() == 1)
        })
        .await;
        let (s, q) = c.api(i, "GET", "/api/queues/imported/imp-q", None).await;
        assert_eq!(s, 200, "{q}");
        assert_eq!(q["node"], json!("n2"), "{q}");
        assert_eq!(q["arguments"]["x-max-length"], json!(7), "{q}");
    }

    // An exchange, a durable queue and a binding declared over AMQP on n1.
    let n1 = connect(&c.nodes[0].amqp_uri()).await;
    let ch = n1.create_channel().await.expect("channel");
    ch.exchange_declare(
        "orders",
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    let ok = ch
        .queue_declare(
            "eu-orders",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    assert_eq!(ok.message_count(), 0);
    ch.queue_bind(
        "eu-orders",
        "orders",
        "eu.#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
    for i in [1, 2] {
        c.until("the exchange everywhere", || {
            has(&c, i, "/api/exchanges/%2F/orders")
        })
        .await;
        c.until("the binding everywhere", || async {
            let r = c
                .try_api(i, "GET", "/api/bindings/%2F/e/orders/q/eu-orders", None)
                .await;
            matches!(r, Some((200, Value::Array(a))) if a.len() == 1)
        })
        .await;
    }
    // Every node shows the queue's owner as its node.
    for i in 0..3 {
        let (s, q) = c.api(i, "GET", "/api/queues/%2F/eu-orders", None).await;
        assert_eq!(s, 200, "{q}");
        assert_eq!(q["node"], json!("n1"), "on {}", c.nodes[i].name);
    }
    // Passive declares on n3 find them.
    let n3 = connect(&c.nodes[2].amqp_uri()).await;
    let ch3 = n3.create_channel().await.expect("channel");
    ch3.queue_declare(
        "eu-orders",
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive queue.declare on n3");
    ch3.exchange_declare(
        "orders",
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive exchange.declare on n3");

    // Publishing on the owner works; another node forwards to it (a
    // basic.get on n3 of n1's queue; tests/cluster_forwarding.rs covers
    // the rest of forwarding).
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch.basic_publish(
        "orders",
        "eu.paris",
        BasicPublishOptions::default(),
        b"one",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let got = ch3
        .basic_get("eu-orders", BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get of n1's queue on n3")
        .expect("the message, through n3");
    assert_eq!(got.delivery.data, b"one");

    // n2 redeclaring n1's queue with other arguments: the single node's 406.
    let n2 = connect(&c.nodes[1].amqp_uri()).await;
    let ch2 = n2.create_channel().await.expect("channel");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(5));
    let err = ch2
        .queue_declare(
            "eu-orders",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect_err("inequivalent redeclare");
    let (code, text) = reply(&err);
    assert_eq!(code, 406, "{text}");
    assert!(
        text.contains("inequivalent arg 'x-max-length' for queue 'eu-orders' in vhost '/'"),
        "{text}"
    );
    // An auto-delete queue its owner removes (its last consumer left) is
    // forgotten by every node.
    let ch1 = n1.create_channel().await.expect("channel");
    ch1.queue_declare(
        "short-lived",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare auto-delete");
    c.until("the auto-delete queue on n2", || {
        has(&c, 1, "/api/queues/%2F/short-lived")
    })
    .await;
    let consumer = ch1
        .basic_consume(
            "short-lived",
            "c1",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    ch1.basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    for i in 0..3 {
        c.until("the auto-deleted queue gone everywhere", || async {
            matches!(
                c.try_api(i, "GET", "/api/queues/%2F/short-lived", None)
                    .await,
                Some((404, _))
            )
        })
        .await;
    }
    for conn in [n1, n2, n3] {
        let _ = conn.close(200, "bye").await;
    }

    // Kill -9 the leader: the others elect another and go on.
    let leader = c.leader_seen_by(0).await.expect("a leader");
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    c.kill(leader);
    c.until("a new leader among the survivors", || async {
        let mut seen = Vec::new();
        for &i in &survivors {
            seen.push(c.leader_seen_by(i).await);
        }
        seen.iter().all(|l| l.is_some() && *l != Some(leader)) && seen[0] == seen[1]
    })
    .await;
    let s = connect(&c.nodes[survivors[0]].amqp_uri()).await;
    let sch = s.create_channel().await.expect("channel");
    sch.queue_declare(
        "after-failover",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare after failover");
    let _ = s.close(200, "bye").await;
    let nodes = c.nodes(survivors[1]).await;
    let dead = nodes
        .iter()
        .find(|n| n["name"] == json!(c.nodes[leader].name))
        .expect("the killed node is listed");
    assert_eq!(dead["running"], json!(false), "{dead}");

    // The killed node comes back and catches up.
    c.spawn(leader);
    c.wait_http(leader).await;
    c.until(
        "the restarted node to see what was declared while it was down",
        || has(&c, leader, "/api/queues/%2F/after-failover"),
    )
    .await;
    c.until("the cluster to form again", || formed(&c, &[0, 1, 2]))
        .await;

    // Two of three down: a change on the survivor fails within the
    // timeout, over AMQP (541, as RabbitMQ) and over HTTP (503).
    let survivor = 0;
    c.kill(1);
    c.kill(2);
    let conn = connect(&c.nodes[survivor].amqp_uri()).await;
    let ch = conn.create_channel().await.expect("channel");
    let started = std::time::Instant::now();
    let err = ch
        .queue_declare(
            "during-outage",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("a declare without quorum");
    let elapsed = started.elapsed();
    let (code, text) = reply(&err);
    assert_eq!(code, 541, "{text}");
    assert!(text.contains("during-outage"), "{text}");
    assert!(
        elapsed < Duration::from_secs(CHANGE_TIMEOUT_S + 5),
        "{elapsed:?}"
    );
    let (status, body) = c
        .api(
            survivor,
            "PUT",
            "/api/queues/%2F/during-outage-http",
            Some(json!({"durable": true})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("during-outage-http")),
        "{body}"
    );
    let _ = conn.close(200, "bye").await;

    // The others come back: nothing of the failed changes appears.
    c.spawn(1);
    c.spawn(2);
    c.wait_http(1).await;
    c.wait_http(2).await;
    c.until("the cluster to form after the outage", || {
        formed(&c, &[0, 1, 2])
    })
    .await;
    // A change committed now is applied after anything left in the log.
    let (s, b) = c
        .api(
            1,
            "PUT",
            "/api/queues/%2F/marker",
            Some(json!({"durable": true})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    for i in 0..3 {
        c.until("the marker everywhere", || {
            has(&c, i, "/api/queues/%2F/marker")
        })
        .await;
        for q in ["during-outage", "during-outage-http"] {
            let (status, _) = c.api(i, "GET", &format!("/api/queues/%2F/{q}"), None).await;
            assert_eq!(status, 404, "{q} appeared on {}", c.nodes[i].name);
        }
    }
}

/// The middle of a secret rotation: one node already proves with the new
/// secret, two still with the old; each accepts the other as its previous
/// one, so the cluster forms and a change made on the rotated node
/// reaches the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rotating_its_secret_stays_one_cluster() {
    const NEW: &str = "the-new-cluster-secret-2026";
    let mut c = TestCluster::plan(&[SECRET, NEW, SECRET]);
    for (i, previous) in [NEW, SECRET, NEW].into_iter().enumerate() {
        c.nodes[i].args = vec!["--cluster-previous-secret".into(), previous.into()];
    }
    c.launch().await;
    c.until("one cluster of all three", || formed(&c, &[0, 1, 2]))
        .await;
    let (s, b) = c.api(1, "PUT", "/api/vhosts/rotated", None).await;
    assert_eq!(s, 201, "{b}");
    for i in [0, 2] {
        c.until("the others to have it", || {
            has(&c, i, "/api/vhosts/rotated")
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_is_refused_and_says_why() {
    let c = TestCluster::start(&[SECRET, SECRET, "not-the-cluster-secret-at-all"]).await;
    // n1 and n2 are a majority: they form the cluster without n3.
    c.until("n1 and n2 to elect a leader", || async {
        c.leader_seen_by(0).await.is_some_and(|l| l < 2)
    })
    .await;
    c.until("n1 to show n3 unreachable with the reason", || async {
        let Some((200, Value::Array(nodes))) = c.try_api(0, "GET", "/api/nodes", None).await else {
            return false;
        };
        nodes.iter().any(|n| {
            n["name"] == json!("n3")
                && n["running"] == json!(false)
                && n["unreachable_reason"] == json!("wrong cluster secret")
        })
    })
    .await;
    c.until("both sides to log the refusal", || async {
        c.nodes[0].logged("cluster peer n3 at")
            && c.nodes[0].logged("refused: wrong cluster secret")
            && c.nodes[2].logged("refused: wrong cluster secret")
    })
    .await;
    // A change on the majority works; n3 sees none of it.
    let (s, b) = c.api(0, "PUT", "/api/vhosts/only-majority", None).await;
    assert_eq!(s, 201, "{b}");
    c.until("n2 to have it", || has(&c, 1, "/api/vhosts/only-majority"))
        .await;
    let (s, _) = c.api(2, "GET", "/api/vhosts/only-majority", None).await;
    assert_eq!(s, 404);
    // `antre cluster status` on n1 prints n3 as not running, with why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_antre"))
        .args(["cluster", "status", "--url", &c.nodes[0].http()])
        .output()
        .expect("antre cluster status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n3 = text
        .lines()
        .find(|l| l.starts_with("n3"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        n3.contains("no") && n3.contains("wrong cluster secret"),
        "{text}"
    );
}

/// Whoever reaches a node's cluster port before proving the secret may
/// send a handshake, not a member's 64 MiB frame: a stranger announcing
/// 60 MiB is cut off at the frame's head (the node used to allocate it and
/// read on), and the members stay served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_announcing_a_huge_handshake_frame_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until_leader(&[0, 1, 2]).await;
    let addr = format!("127.0.0.1:{}", c.nodes[0].cluster_port);
    let mut strangers = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(&(60u32 << 20).to_be_bytes())
            .await
            .expect("head");
        strangers.push(s);
    }
    // The node closed each connection after the head: the body's first
    // megabytes cannot all be written (a node reading on takes them all).
    let junk = vec![b'x'; 1 << 20];
    for mut s in strangers {
        let mut refused = false;
        for _ in 0..16 {
            if s.write_all(&junk).await.is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "16 MiB of a stranger's frame accepted");
    }
    c.until("n1 to log the refusal", || async {
        c.nodes[0].logged("is over 8192")
    })
    .await;
    // The members are served: a change made through n1 reaches n3.
    let (s, b) = c.api(0, "PUT", "/api/vhosts/after-strangers", None).await;
    assert_eq!(s, 201, "{b}");
    c.until("n3 to have it", || {
        has(&c, 2, "/api/vhosts/after-strangers")
    })
    .await;
}

/// Connections that never finish their handshake are bounded per address:
/// 300 idle ones from 127.0.0.2 (a stranger without the secret) get 256
/// slots and the rest are closed at once, while the members, dialling
/// from 127.0.0.1, still connect and commit changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_strangers_on_the_cluster_port_are_bounded_per_address() {
    use tokio::io::AsyncReadExt;
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until_leader(&[0, 1, 2]).await;
    let to: std::net::SocketAddr = format!("127.0.0.1:{}", c.nodes[0].cluster_port)
        .parse()
        .expect("address");
    let mut strangers = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("address"))
            .expect("bind 127.0.0.2");
        strangers.push(socket.connect(to).await.expect("connect"));
    }
    c.until("n1 to close the strangers past the bound", || async {
        c.nodes[0].logged("too many connections still in their handshake")
    })
    .await;
    // The last one is closed at once, not after the handshake's 5 s.
    let mut byte = [0u8; 1];
    let last = strangers.last_mut().expect("strangers");
    let read = tokio::time::timeout(Duration::from_secs(3), last.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the 300th stranger still connected: {read:?}"
    );
    // The members are served meanwhile, new connections included: n3,
    // restarted, dials n1 again.
    c.kill(2);
    c.spawn(2);
    c.wait_http(2).await;
    let (s, b) = c.api(0, "PUT", "/api/vhosts/beside-strangers", None).await;
    assert_eq!(s, 201, "{b}");
    c.until("n3 to have it", || {
        has(&c, 2, "/api/vhosts/beside-strangers")
    })
    .await;
    drop(strangers);
}

/// The metadata term node `i` is in, from its own entry of `/api/nodes`.
async fn metadata_term(c: &TestCluster, i: usize) -> Option<u64> {
    let nodes = c.try_api(i, "GET", "/api/nodes", None).await?.1;
    nodes.as_array()?.iter().find(|n| n["this_node"] == true)?["metadata_term"].as_u64()
}

/// A node back from a restart does not depose the metadata leader: its
/// elections ask a pre-vote, which the others, hearing their leader,
/// refuse. Seen in CI for quorum queues: the restarted node's higher term
/// deposed a healthy leader (openraft 0.9 has no pre-vote), and a change
/// asked at that moment failed with 503 "leadership moved".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_does_not_depose_the_metadata_leader() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    let l = c.until_leader(&[0, 1, 2]).await;
    let term = metadata_term(&c, l).await.expect("the leader's term");
    let f = (0..3).find(|&i| i != l).expect("a follower");
    c.kill(f);
    // Down long enough for the leader's retries of it to back off to their
    // longest, changes going on meanwhile.
    let down = tokio::time::Instant::now();
    let mut n = 0;
    while down.elapsed() < Duration::from_secs(4) {
        let body = json!({"durable": true});
        let (status, reply) = c
            .api(
                l,
                "PUT",
                &format!("/api/queues/%2F/while-down-{n}"),
                Some(body),
            )
            .await;
        assert!(status == 201 || status == 204, "{status} {reply}");
        n += 1;
    }
    c.spawn(f);
    c.wait_http(f).await;
    let last = format!("/api/queues/%2F/while-down-{}", n - 1);
    c.until("the restarted node to catch up", || has(&c, f, &last))
        .await;
    assert_eq!(c.until_leader(&[0, 1, 2]).await, l);
    assert_eq!(
        metadata_term(&c, l).await,
        Some(term),
        "an election after the restart"
    );
}

/// A node stopped as an operator stops it (SIGTERM) keeps every metadata
/// change it applied while stopping. Its stores closed before its Raft
/// group stopped, so a change applied in between was recorded as applied
/// (not applied again after the restart) but never written: the node
/// lacked a queue the others had, for good (found by the rolling-upgrade
/// run of `cluster_nemesis`, a queue declared while a node stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_gracefully_keeps_the_changes_it_applied_while_stopping() {
    keeps_the_changes_it_applied(|c| c.stop(0)).await;
}

/// The same with kill -9: the node's record of what it applied
/// (`applied.json` and the journal after it) may be cut anywhere; after
/// the restart it applies again what it had not recorded, and holds
/// every queue declared, with the same owner as the other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_applying_keeps_every_change_it_recorded_or_applies_it_again() {
    keeps_the_changes_it_applied(|c| c.kill(0)).await;
}

/// Clients of the two other nodes declare queues without pause while the
/// metadata leader is killed -9, three times over: every declare succeeds,
/// the ones the leader took with it once the next leader has them. Before,
/// a declare forwarded to the leader as it died failed with 541
/// INTERNAL_ERROR ("Connection reset by peer"), which closes the client's
/// connection: Celery's rpc result backend declares its queue again before
/// every task it sends, so its clients died with the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declare_the_metadata_leader_took_with_it_is_proposed_again() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    for round in 0..3 {
        let leader = c.until_leader(&[0, 1, 2]).await;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let declarers: Vec<_> = (0..3)
            .filter(|&i| i != leader)
            .map(|i| {
                let uri = c.nodes[i].amqp_uri();
                let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
                tokio::spawn(async move {
                    let conn = connect(&uri).await;
                    let ch = conn.create_channel().await.expect("channel");
                    let opts = QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    };
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let name = format!("in-flight-{round}-{i}-{n}");
                        ch.queue_declare(&name, opts, FieldTable::default())
                            .await
                            .map_err(|e| format!("{name} through n{}: {e}", i + 1))?;
                        n += 1;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<usize, String>(n)
                })
            })
            .collect();
        c.until("declares going on", || async {
            count.load(Ordering::Relaxed) >= 20
        })
        .await;
        c.kill(leader);
        let at_kill = count.load(Ordering::Relaxed);
        // (Or a declarer failed: its error is shown below.)
        c.until("declares after the next leader's election", || async {
            count.load(Ordering::Relaxed) >= at_kill + 40
                || declarers.iter().any(|d| d.is_finished())
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        for d in declarers {
            d.await.expect("declarer").expect("every declare succeeds");
        }
        c.spawn(leader);
        c.wait_http(leader).await;
    }
}

/// Declares through n2 and n3 without pause while n1 is taken down by
/// `down` and restarted, four times; then every node must hold every
/// queue declared, and n1 must know each one's owner as n2 does.
async fn keeps_the_changes_it_applied(down: impl Fn(&mut TestCluster)) {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until_leader(&[0, 1, 2]).await;
    // Replicas to stop make a node's stop take a while, as in production.
    for q in 0..16 {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        c.declare_durable(1, &format!("replicated-{q}"), args).await;
    }
    // Declares through the two other nodes without pause, so that changes
    // are applied on n1 while it stops.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let declarers: Vec<_> = [1, 2]
        .into_iter()
        .map(|i| {
            let uri = c.nodes[i].amqp_uri();
            let stop = std::sync::Arc::clone(&stop);
            let count = std::sync::Arc::clone(&count);
            tokio::spawn(async move {
                let mut declared = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let conn = connect(&uri).await;
                    let Ok(ch) = conn.create_channel().await else {
                        continue;
                    };
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let name = format!("while-stopping-{i}-{n}");
                        n += 1;
                        let opts = QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        };
                        match ch.queue_declare(&name, opts, FieldTable::default()).await {
                            Ok(_) => {
                                declared.push(name);
                                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            // A refusal closes the channel: open another.
                            Err(_) => break,
                        }
                    }
                }
                declared
            })
        })
        .collect();
    for _ in 0..4 {
        let before = count.load(std::sync::atomic::Ordering::Relaxed);
        c.until("declares going on", || async {
            count.load(std::sync::atomic::Ordering::Relaxed) >= before + 20
        })
        .await;
        down(&mut c);
        c.spawn(0);
        c.wait_http(0).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut declared = Vec::new();
    for d in declarers {
        declared.extend(d.await.expect("declarer"));
    }
    assert!(!declared.is_empty());
    c.until_one_history(&[0, 1, 2], |defs| {
        let names = harness::queue_names(defs);
        declared.iter().all(|d| names.contains(d))
    })
    .await;
    let owners = |i: usize| {
        let c = &c;
        async move {
            let (status, queues) = c.api(i, "GET", "/api/queues", None).await;
            assert_eq!(status, 200, "{queues}");
            let mut owners: Vec<(String, String)> = queues
                .as_array()
                .expect("a list")
                .iter()
                // Classic queues: a quorum queue's node is its leader,
                // which may be moving.
                .filter(|q| {
                    q["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("while-stopping-"))
                })
                .map(|q| (q["name"].to_string(), q["node"].to_string()))
                .collect();
            owners.sort();
            owners
        }
    };
    assert_eq!(owners(0).await, owners(1).await);
}

/// Peers named by host name, as in a Kubernetes StatefulSet (`antre-0.antre`
/// ...), and one whose name resolves to nothing yet (a pod not scheduled
/// yet): the other two start, form the majority and serve. A name that
/// did not resolve at start-up used to stop the node ("cannot resolve").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_named_by_host_name_and_one_not_resolvable_yet_still_form_a_cluster() {
    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    let list = format!(
        "n1=localhost:{},n2=localhost:{},n3=n3.antre-test.invalid:{}",
        c.nodes[0].cluster_port, c.nodes[1].cluster_port, c.nodes[2].cluster_port
    );
    for i in 0..2 {
        c.nodes[i].peers = Some(list.clone());
        c.spawn(i);
    }
    for i in 0..2 {
        c.wait_http(i).await;
    }
    c.until_leader(&[0, 1]).await;
    let (s, b) = c.api(0, "PUT", "/api/vhosts/named-peers", None).await;
    assert_eq!(s, 201, "{b}");
    c.until("n2 to have it", || has(&c, 1, "/api/vhosts/named-peers"))
        .await;
    let nodes = c.nodes(1).await;
    let n3 = nodes
        .iter()
        .find(|n| n["name"] == json!("n3"))
        .expect("n3 listed");
    assert_eq!(n3["running"], json!(false), "{n3}");
    assert!(
        c.nodes[0].logged("n3.antre-test.invalid"),
        "the warning names it"
    );
}

/// A node that joins later under a host name (a StatefulSet scaled up:
/// `n4=antre-3.antre:25672`) is recorded in the membership by that name,
/// which every member resolves (and resolves again when it moves), rather
/// than by the address it had when it joined; and a quorum queue declared
/// afterwards has the same members on every node, the joined one's
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_by_host_name_is_recorded_and_reached_by_name() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until_leader(&[0, 1, 2]).await;
    let n4 = c.plan_joiner(0);
    let name = format!("localhost:{}", c.nodes[n4].cluster_port);
    c.nodes[n4].peers = Some(format!("n4={name}"));
    c.nodes[n4].args = vec![
        "--cluster-join".into(),
        format!("localhost:{}", c.nodes[0].cluster_port),
    ];
    c.spawn(n4);
    c.wait_http(n4).await;
    c.until("n4 running, seen from n1", || async {
        c.nodes(0)
            .await
            .iter()
            .any(|n| n["name"] == json!("n4") && n["running"] == json!(true))
    })
    .await;
    c.until_leader(&[0, 1, 2, n4]).await;
    let (s, b) = c.api(n4, "PUT", "/api/vhosts/joined-by-name", None).await;
    assert_eq!(s, 201, "{b}");
    for i in 0..3 {
        c.until("the others to have it", || {
            has(&c, i, "/api/vhosts/joined-by-name")
        })
        .await;
    }
    // The checkpoint, or the journal of changes after it.
    let applied: String = ["applied.json", "applied.journal"]
        .iter()
        .map(|f| std::fs::read(c.nodes[0].dir.join("cluster").join(f)).expect(f))
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .collect();
    assert!(
        applied.contains(&format!("\"{name}\"")),
        "the membership records n4 by name: {applied}"
    );

    // A quorum queue led by n1 with a member on n4: its group reaches n4
    // by the name too.
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(4));
    c.declare_durable(0, "by-name", args).await;
    // The same members on every node, n4's included: n4, whose list names
    // only itself, used to pick a group of its own (itself alone).
    c.until_members("by-name", &["n1", "n2", "n3", "n4"]).await;
    let conn = connect(&c.nodes[0].amqp_uri()).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for i in 0..20 {
        let body = format!("m{i}");
        let ok =
            harness::publish_confirmed(&ch, "by-name", body.as_bytes(), Duration::from_secs(10));
        assert_eq!(ok.await, Some(true), "publish {i}");
    }
    c.until("n4's replica to apply them", || async {
        let Some((200, Value::Array(rows))) = c
            .try_api(n4, "GET", "/api/queues/%2F/by-name/members", None)
            .await
        else {
            return false;
        };
        let index = |node: &str, field: &str| {
            rows.iter()
                .find(|r| r["node"] == json!(node))
                .and_then(|r| r[field].as_u64())
        };
        matches!(
            (index("n4", "last_applied_index"), index("n1", "commit_index")),
            (Some(a), Some(c)) if a >= c && a > 0
        )
    })
    .await;

    // A classic queue on n4, published to through n1: n1 forwards to the
    // node it knows only from the membership.
    c.declare_durable(n4, "classic-on-n4", FieldTable::default())
        .await;
    let ok = harness::publish_confirmed(&ch, "classic-on-n4", b"via n1", Duration::from_secs(10));
    assert_eq!(ok.await, Some(true), "forwarded to n4 and confirmed");
    assert_eq!(c.drain(n4, "classic-on-n4").await, ["via n1"]);
}
