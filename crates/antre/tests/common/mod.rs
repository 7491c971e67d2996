//! Shared harness: a real broker on an ephemeral port with a temporary data
//! directory, real clients, and a raw frame-level client for the error cases
//! no well-behaved client library will produce.

#![allow(dead_code)]

pub mod go;
pub mod java;
pub mod node;
pub mod pki;
pub mod process;
pub mod program;
pub mod prometheus;
pub mod python;
pub mod rstream;
pub mod stream_confirm;

use std::net::SocketAddr;
use std::time::Duration;

use antre::{Config, RunningServer};
use antre_amqp::method::*;
use antre_amqp::{decode_frame, encode_method, Frame, Method, PROTOCOL_HEADER};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on any single wait in a test: a guard against hangs, never a
/// synchronisation device.
pub const WAIT: Duration = Duration::from_secs(15);

/// A broker started for one test.
pub struct TestBroker {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            amqp_listen: Some("127.0.0.1:0".into()),
            http_listen: Some("127.0.0.1:0".into()),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        tweak(&mut config);
        let server = antre::start(config).await.expect("broker starts");
        TestBroker { server, dir }
    }

    /// Stops the broker cleanly and starts a new one on the same data
    /// directory (and a new port).
    pub async fn restart(self) -> TestBroker {
        let TestBroker { server, dir } = self;
        let config_tweak = server.config().clone();
        server.shutdown().await;
        let server = antre::start(Config {
            amqp_listen: Some("127.0.0.1:0".into()),
            http_listen: config_tweak
                .http_listen
                .as_ref()
                .map(|_| "127.0.0.1:0".into()),
            ..config_tweak
        })
        .await
        .expect("broker restarts");
        TestBroker { server, dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.amqp_addr.expect("plain AMQP is on")
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr())
    }

    pub async fn lapin(&self) -> Connection {
        Connection::connect(&self.uri(), ConnectionProperties::default())
            .await
            .expect("lapin connects")
    }

    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.addr(), 0).await
    }

    /// The management API's base URL.
    pub fn http_url(&self) -> String {
        format!(
            "http://{}",
            self.server.http_addr.expect("the HTTP listener is on")
        )
    }

    /// Calls the management API as guest; returns the status and the JSON
    /// body (null when empty).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.api_as(("guest", "guest"), method, path, body).await
    }

    /// Calls the management API with the given credentials.
    pub async fn api_as(
        &self,
        (user, password): (&str, &str),
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.http_url());
        let auth = basic_auth(user, password);
        let method = method.to_owned();
        let call = tokio::task::spawn_blocking(move || {
            let req = ureq::request(&method, &url).set("Authorization", &auth);
            let result = match body {
                Some(b) => req.send_json(b),
                None => req.call(),
            };
            let resp = match result {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("{method} {url}: {e}"),
            };
            let status = resp.status();
            let text = resp.into_string().expect("body");
            let json = if text.trim().is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
            };
            (status, json)
        });
        within("HTTP call", call).await.expect("HTTP call task")
    }

    /// GETs a path and returns the body as text.
    pub async fn http_text(&self, path: &str) -> (u16, String, String) {
        let url = format!("{}{path}", self.http_url());
        let call = tokio::task::spawn_blocking(move || {
            let resp = match ureq::get(&url).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("GET {url}: {e}"),
            };
            let status = resp.status();
            let kind = resp.content_type().to_owned();
            (status, kind, resp.into_string().expect("body"))
        });
        within("HTTP call", call).await.expect("HTTP call task")
    }
}

/// An HTTP basic Authorization header value.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Whether the tests run under CI (`CI=true`), where every tool and client
/// they drive must be there (`.ci/run` installs them): a test that would
/// skip without one fails instead.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// How many rounds a soakable test runs: the number in the environment
/// variable `var` (a soak script sets it), else `default` (what CI runs).
pub fn rounds_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits for a future, failing the test instead of hanging.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until `check` holds, checking every few milliseconds: for effects
/// of the broker's own timer, which no client event announces.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Publishes with confirms and waits for the confirm, so the message is
/// routed and enqueued when this returns.
pub async fn publish_confirmed(ch: &lapin::Channel, exchange: &str, key: &str, body: &[u8]) {
    let confirm = ch
        .basic_publish(
            exchange,
            key,
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    within("confirm", confirm).await.expect("confirmed");
}

pub async fn confirm_channel(conn: &Connection) -> lapin::Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

pub async fn declare(ch: &lapin::Channel, name: &str) -> String {
    ch.queue_declare(name, QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("queue.declare")
        .name()
        .to_string()
}

/// Ready messages in a queue, via a passive declare.
pub async fn ready_count(ch: &lapin::Channel, name: &str) -> u32 {
    ch.queue_declare(
        name,
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

/// The next `n` deliveries of a consumer.
pub async fn take(consumer: &mut lapin::Consumer, n: usize) -> Vec<lapin::message::Delivery> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let d = within("delivery", consumer.next())
            .await
            .expect("consumer stream open")
            .expect("delivery");
        out.push(d);
    }
    out
}

/// The AMQP reply code inside a lapin error, if it carries one.
pub fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err {
        lapin::Error::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// A frame-level client: handshakes, then sends whatever a test wants,
/// including bytes no client library would send.
pub struct RawClient {
    pub stream: TcpStream,
    rbuf: BytesMut,
}

impl RawClient {
    /// Connects and completes the handshake as guest, proposing `heartbeat`.
    pub async fn connect(addr: SocketAddr, heartbeat: u16) -> RawClient {
        Self::connect_with(addr, heartbeat, antre_amqp::FieldTable::new()).await
    }

    /// As [`RawClient::connect`], announcing `client_properties`.
    pub async fn connect_with(
        addr: SocketAddr,
        heartbeat: u16,
        client_properties: antre_amqp::FieldTable,
    ) -> RawClient {
        let mut c = RawClient::start(addr, client_properties).await;
        let (_, tune) = c.recv_method().await.expect("connection.tune");
        let Method::ConnectionTune(tune) = tune else {
            panic!("expected tune, got {tune:?}")
        };
        c.send(
            0,
            ConnectionTuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat,
            },
        )
        .await;
        c.send(
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
                ..Default::default()
            },
        )
        .await;
        let (_, open_ok) = c.recv_method().await.expect("open-ok");
        assert!(matches!(open_ok, Method::ConnectionOpenOk(_)));
        c
    }

    /// Connects, sends the protocol header and start-ok as guest: the
    /// server's connection.tune is next.
    pub async fn start(addr: SocketAddr, client_properties: antre_amqp::FieldTable) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        let mut c = RawClient {
            stream,
            rbuf: BytesMut::new(),
        };
        c.send_bytes(&PROTOCOL_HEADER).await;
        let (_, start) = c.recv_method().await.expect("connection.start");
        assert!(matches!(start, Method::ConnectionStart(_)));
        c.send(
            0,
            ConnectionStartOk {
                client_properties,
                mechanism: "PLAIN".into(),
                response: Bytes::from_static(b"\0guest\0guest"),
                locale: "en_US".into(),
            },
        )
        .await;
        c
    }

    /// Logs in as `user` (announcing `authentication_failure_close`, as
    /// current clients do) and opens `vhost`; the server's connection.close
    /// if it refuses either (close-ok is sent).
    pub async fn open_as(
        addr: SocketAddr,
        user: &str,
        password: &str,
        vhost: &str,
    ) -> Result<RawClient, ConnectionClose> {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        let mut c = RawClient {
            stream,
            rbuf: BytesMut::new(),
        };
        c.send_bytes(&PROTOCOL_HEADER).await;
        c.recv_method().await.expect("connection.start");
        let mut caps = antre_amqp::FieldTable::new();
        caps.insert(
            "authentication_failure_close",
            antre_amqp::FieldValue::Bool(true),
        );
        let mut props = antre_amqp::FieldTable::new();
        props.insert("capabilities", antre_amqp::FieldValue::Table(caps));
        let login = ConnectionStartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: Bytes::from(format!("\0{user}\0{password}")),
            locale: "en_US".into(),
        };
        c.send(0, login).await;
        loop {
            match c.recv_method().await.expect("an answer") {
                (_, Method::ConnectionTune(tune)) => {
                    let ok = ConnectionTuneOk {
                        channel_max: tune.channel_max,
                        frame_max: tune.frame_max,
                        heartbeat: 0,
                    };
                    c.send(0, ok).await;
                    let open = ConnectionOpen {
                        virtual_host: vhost.into(),
                        ..Default::default()
                    };
                    c.send(0, open).await;
                }
                (_, Method::ConnectionOpenOk(_)) => return Ok(c),
                (_, Method::ConnectionClose(close)) => {
                    c.send(0, ConnectionCloseOk {}).await;
                    return Err(close);
                }
                (_, other) => panic!("unexpected {other:?}"),
            }
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn send(&mut self, channel: u16, method: impl Into<Method>) {
        let mut out = BytesMut::new();
        encode_method(channel, &method.into(), &mut out);
        self.send_bytes(&out).await;
    }

    /// Opens a channel and waits for open-ok.
    pub async fn open_channel(&mut self, channel: u16) {
        self.send(channel, ChannelOpen::default()).await;
        let (ch, m) = self.recv_method().await.expect("channel.open-ok");
        assert_eq!(ch, channel);
        assert!(matches!(m, Method::ChannelOpenOk(_)), "got {m:?}");
    }

    /// The next frame, or None when the server closed the socket.
    pub async fn recv(&mut self) -> Option<Frame> {
        within("frame", async {
            loop {
                if let Some(f) =
                    decode_frame(&mut self.rbuf, 1 << 20).expect("server frames are valid")
                {
                    return Some(f);
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// The next method frame, skipping heartbeats and content.
    pub async fn recv_method(&mut self) -> Option<(u16, Method)> {
        loop {
            match self.recv().await? {
                Frame::Method { channel, method } => return Some((channel, method)),
                _ => continue,
            }
        }
    }

    /// Expects connection.close with `code`, answers close-ok, and checks
    /// the server then closes the socket.
    pub async fn expect_connection_close(&mut self, code: u16) -> ConnectionClose {
        let (ch, m) = self.recv_method().await.expect("connection.close");
        let Method::ConnectionClose(close) = m else {
            panic!("expected connection.close, got {m:?}")
        };
        assert_eq!(ch, 0);
        assert_eq!(close.reply_code, code, "reply text: {}", close.reply_text);
        self.send(0, ConnectionCloseOk {}).await;
        assert!(self.recv().await.is_none(), "socket closed after close-ok");
        close
    }

    /// Expects channel.close with `code` on `channel` and answers close-ok.
    pub async fn expect_channel_close(&mut self, channel: u16, code: u16) -> ChannelClose {
        let (ch, m) = self.recv_method().await.expect("channel.close");
        let Method::ChannelClose(close) = m else {
            panic!("expected channel.close, got {m:?}")
        };
        assert_eq!(ch, channel);
        assert_eq!(close.reply_code, code, "reply text: {}", close.reply_text);
        self.send(channel, ChannelCloseOk {}).await;
        close
    }
}

/// A fanout exchange `exchange` (a dead-letter exchange, say) with a new
/// queue `queue_name` bound to it.
pub async fn fanout_into(ch: &lapin::Channel, exchange: &str, queue_name: &str) {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
    use FieldTable;
    ch.exchange_declare(
        exchange,
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    ch.queue_declare(
        queue_name,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    ch.queue_bind(
        queue_name,
        exchange,
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
}

/// A lapin argument table from `(name, value)` pairs.
pub fn args(entries: &[(&str, lapin::types::AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// A string argument value.
pub fn s(v: &str) -> lapin::types::AMQPValue {
    lapin::types::AMQPValue::LongString(lapin::types::LongString::from(v))
}

/// Declares `name` (not durable) with arguments `a`.
pub async fn queue(ch: &lapin::Channel, name: &str, a: FieldTable) {
    use lapin::options::QueueDeclareOptions;
    ch.queue_declare(name, QueueDeclareOptions::default(), a)
        .await
        .expect("queue.declare");
}
