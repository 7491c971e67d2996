//! Bounded under any load: a misbehaving client meets a limit the AMQP way
//! (a reply code, connection.blocked) and a bystander client stays served.

use crate::common;

use antre_amqp::method::*;
use antre_amqp::{encode_method, Method};
use bytes::BytesMut;
use common::*;

/// A client that pipelines its first frames after connection.open in the
/// same write as the open itself is served at once, even with heartbeats
/// off (nothing else would ever wake the connection up).
#[tokio::test]
async fn frames_pipelined_with_connection_open_are_processed() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::start(broker.addr(), antre_amqp::FieldTable::new()).await;
    let (_, tune) = c.recv_method().await.expect("connection.tune");
    let Method::ConnectionTune(tune) = tune else {
        panic!("expected tune, got {tune:?}")
    };
    let mut batch = BytesMut::new();
    let tune_ok = ConnectionTuneOk {
        channel_max: tune.channel_max,
        frame_max: tune.frame_max,
        heartbeat: 0,
    };
    encode_method(0, &tune_ok.into(), &mut batch);
    let open = ConnectionOpen {
        virtual_host: "/".into(),
        ..Default::default()
    };
    encode_method(0, &open.into(), &mut batch);
    encode_method(1, &ChannelOpen::default().into(), &mut batch);
    let declare = QueueDeclare {
        queue: "pipelined".into(),
        ..Default::default()
    };
    encode_method(1, &declare.into(), &mut batch);
    c.send_bytes(&batch).await;
    let (_, m) = c.recv_method().await.expect("open-ok");
    assert!(matches!(m, Method::ConnectionOpenOk(_)), "got {m:?}");
    let (ch, m) = c.recv_method().await.expect("channel.open-ok");
    assert_eq!(ch, 1);
    assert!(matches!(m, Method::ChannelOpenOk(_)), "got {m:?}");
    let (_, m) = c.recv_method().await.expect("queue.declare-ok");
    assert!(matches!(m, Method::QueueDeclareOk(_)), "got {m:?}");
}

/// Declaring a durable queue appends to the vhost's definitions log: it
/// does not rewrite every definition (which made n declares cost O(n²)),
/// and all of them, with their bindings, come back after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_declares_are_logged_not_rewritten() {
    use futures::future::try_join_all;
    use lapin::options::*;
    use lapin::types::FieldTable;

    let broker = TestBroker::start().await;
    let vhost_dir = broker
        .dir
        .path()
        .join("vhosts/8a5edab282632443219e051e4ade2d1d");
    let snapshot = || std::fs::read(vhost_dir.join("definitions.json")).unwrap();
    let before = snapshot();
    {
        let conn = broker.lapin().await;
        let ch = conn.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        // Pipelined: all declares are in flight before the first answer.
        let declares = (0..300).map(|i| {
            let ch = ch.clone();
            async move {
                let name = format!("payments-{i}");
                ch.queue_declare(&name, durable, FieldTable::default())
                    .await?;
                ch.queue_bind(
                    &name,
                    "amq.direct",
                    &name,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
            }
        });
        within("declares", try_join_all(declares)).await.unwrap();
        conn.close(200, "bye").await.unwrap();
    }
    assert_eq!(
        snapshot(),
        before,
        "no declare rewrote the definitions file"
    );

    let broker = broker.restart().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    for i in [0, 150, 299] {
        let name = format!("payments-{i}");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.queue_declare(&name, passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("{name} survived the restart: {e}"));
        publish_confirmed(&ch, "amq.direct", &name, b"routed").await;
        assert_eq!(ready_count(&ch, &name).await, 1, "{name} is still bound");
    }
}

/// Polls `check` until it holds, failing after [`WAIT`]: for states the
/// broker reaches on its own (sockets accepted, connections closed), with
/// no sleep standing in for synchronisation.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Reads until the peer closes the socket; returns what it sent.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    within("the broker to close the socket", async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    all
}

/// GET /healthz over a fresh connection of its own.
async fn healthz(broker: &TestBroker) -> u16 {
    broker.http_text("/healthz").await.0
}

async fn connect_all(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push(
            tokio::net::TcpStream::connect(addr)
                .await
                .expect("tcp connect"),
        );
    }
    all
}

/// Issue #11, item 5: idle HTTP sockets far beyond the cap. The broker
/// never holds more than `http_max_connections`: each new socket closes
/// the longest-idle one, so a bystander's /healthz is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_sockets_beyond_the_cap_cannot_silence_healthz() {
    let broker = TestBroker::start_with(|c| c.http_max_connections = 8).await;
    let http = broker.server.http_addr.unwrap();
    let sockets = std::sync::Arc::clone(&broker.server.sockets);
    let mut idle = connect_all(http, 40).await;
    until("every idle socket accepted", || {
        sockets.evicted_total() >= 32
    })
    .await;
    assert_eq!(sockets.http_used(), 8);
    for _ in 0..5 {
        assert_eq!(healthz(&broker).await, 200);
    }
    // The oldest were closed to make room; the broker holds at most eight.
    assert!(read_to_close(&mut idle[0]).await.is_empty());
    assert!(sockets.http_used() <= 8);
    assert_eq!(
        sockets.refused_total(),
        0,
        "nothing was refused: idle ones made room"
    );
}

/// A request head trickled byte by byte (slowloris) is cut off after the
/// header timeout; an idle keep-alive connection after the idle timeout.
#[tokio::test]
async fn slow_headers_and_idle_connections_time_out() {
    use tokio::io::AsyncWriteExt;
    let broker = TestBroker::start_with(|c| {
        c.http_header_timeout = std::time::Duration::from_millis(300);
        c.http_idle_timeout = std::time::Duration::from_millis(600);
    })
    .await;
    let http = broker.server.http_addr.unwrap();
    let mut slow = tokio::net::TcpStream::connect(http).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = read_to_close(&mut slow).await;
    assert!(answer.is_empty(), "no answer to half a request: {answer:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let mut kept = tokio::net::TcpStream::connect(http).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut kept).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "answered, then closed when idle: {text}"
    );
    assert_eq!(healthz(&broker).await, 200);
}

/// Issue #11, item 5, for every client socket: with a small socket budget,
/// idle AMQP sockets (no handshake) and idle HTTP sockets far beyond it
/// cannot take the descriptors: an open connection keeps publishing
/// persistent messages with confirms, a new client gets in (an idle
/// socket makes room), /healthz answers. Once every socket is busy, new
/// ones are closed at once and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_flood_cannot_take_the_descriptors_the_store_needs() {
    let broker = TestBroker::start_with(|c| c.max_sockets = Some(12)).await;
    let sockets = std::sync::Arc::clone(&broker.server.sockets);
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    ch.queue_declare(
        "payments",
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    let persistent = lapin::BasicProperties::default().with_delivery_mode(2);
    let publish = |n: u32| {
        let ch = ch.clone();
        let props = persistent.clone();
        async move {
            for i in 0..n {
                let confirm = ch
                    .basic_publish(
                        "",
                        "payments",
                        Default::default(),
                        format!("p{i}").as_bytes(),
                        props.clone(),
                    )
                    .await
                    .expect("publish");
                let confirm = within("confirm", confirm).await.expect("confirmed");
                assert!(
                    confirm.is_ack(),
                    "persistent publish {i} confirmed, not nacked"
                );
            }
        }
    };
    publish(5).await;

    let amqp = broker.addr();
    let http = broker.server.http_addr.unwrap();
    let _idle_amqp = connect_all(amqp, 60).await;
    let _idle_http = connect_all(http, 60).await;
    until("the flood accepted", || sockets.evicted_total() >= 100).await;
    assert!(sockets.used() <= 12, "{} sockets", sockets.used());
    publish(20).await;
    assert_eq!(healthz(&broker).await, 200);
    let newcomer = broker.lapin().await;
    let nch = newcomer.create_channel().await.unwrap();
    assert_eq!(ready_count(&nch, "payments").await, 25);

    // Fill the budget with open connections: no idle socket is left to
    // close, so a new socket is closed at once, before any protocol.
    let registry = std::sync::Arc::clone(&broker.server.registry);
    let mut open = Vec::new();
    while registry.len() < 12 {
        open.push(broker.raw().await);
    }
    assert_eq!(sockets.used(), 12);
    let refused_before = sockets.refused_total();
    let mut late = tokio::net::TcpStream::connect(amqp).await.unwrap();
    assert!(
        read_to_close(&mut late).await.is_empty(),
        "closed without a word"
    );
    assert_eq!(sockets.refused_total(), refused_before + 1);
    publish(5).await;
}

/// More AMQP connections than --max-connections: the extra ones are
/// refused at connection.open with 530, as RabbitMQ refuses past its
/// connection_max, while a connection that is in keeps publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_refused_the_amqp_way() {
    let broker = TestBroker::start_with(|c| c.max_connections = Some(3)).await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "orders").await;
    let _second = broker.raw().await;
    let third = broker.raw().await;
    for _ in 0..5 {
        let refused = RawClient::open_as(broker.addr(), "guest", "guest", "/")
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.reply_code, 530);
        assert_eq!(
            refused.reply_text.as_str(),
            "NOT_ALLOWED - connection refused: node connection limit (3) is reached"
        );
        publish_confirmed(&ch, "", "orders", b"still served").await;
    }
    assert_eq!(ready_count(&ch, "orders").await, 5);
    // A connection that leaves gives its place back.
    drop(third);
    let registry = std::sync::Arc::clone(&broker.server.registry);
    until("the third connection gone", || registry.len() == 2).await;
    RawClient::open_as(broker.addr(), "guest", "guest", "/")
        .await
        .expect("a place is free again");
}
