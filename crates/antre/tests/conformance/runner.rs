//! Plays a scenario against a broker over raw frames and records what the
//! server answered, one line per method, in the order it arrived.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use antre_amqp::method::*;
use antre_amqp::{
    decode_frame, encode_content, encode_frame, encode_method, ContentHeader, FieldTable,
    FieldValue, Frame, Method, PROTOCOL_HEADER,
};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::script::{Conn, Connect, Kind, Scenario, Step};
use super::show::{describe, Names};

/// How long one expected reply may take: a guard against a reply that never
/// comes (recorded as `timeout`), not a synchronisation device.
const REPLY_WAIT: Duration = Duration::from_secs(3);
/// RabbitMQ waits 3 s before closing a connection that failed its
/// handshake (to slow down password guessing), so handshake replies get
/// longer.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(8);

/// One connection of a scenario.
struct Peer {
    stream: TcpStream,
    rbuf: BytesMut,
    frame_max: u32,
    open: bool,
}

/// What a scenario produced.
pub struct Outcome {
    pub events: Vec<String>,
    /// The server's `version` property, from the first connection.start.
    pub server_version: Option<String>,
}

/// Runs one scenario against `addr`, then deletes what it declared.
pub async fn run(addr: SocketAddr, scenario: &Scenario) -> Outcome {
    let mut r = Runner {
        addr,
        peers: HashMap::new(),
        order: Vec::new(),
        events: Vec::new(),
        names: Names::default(),
        server_version: None,
        unclaimed: Vec::new(),
    };
    for step in &scenario.steps {
        r.step(step).await;
    }
    for conn in r.order.clone() {
        if r.peers.get(&conn).is_some_and(|p| p.open) {
            let close = ConnectionClose {
                reply_code: 200,
                reply_text: "bye".into(),
                ..Default::default()
            };
            r.send_method(&conn, 0, close.into()).await;
            r.wait(&conn, |ch, m| {
                ch == 0 && matches!(m, Method::ConnectionCloseOk(_))
            })
            .await;
        }
    }
    let outcome = Outcome {
        events: std::mem::take(&mut r.events),
        server_version: r.server_version.take(),
    };
    cleanup(addr, &scenario.names).await;
    outcome
}

struct Runner {
    addr: SocketAddr,
    peers: HashMap<Conn, Peer>,
    order: Vec<Conn>,
    events: Vec<String>,
    names: Names,
    server_version: Option<String>,
    /// Server-initiated methods (deliveries, cancels, confirms) recorded
    /// while waiting for something else, not yet claimed by an `expect`.
    unclaimed: Vec<(Conn, u16, String)>,
}

impl Runner {
    async fn step(&mut self, step: &Step) {
        if let Step::Connect(conn, params) = step {
            self.connect(conn, params).await;
            return;
        }
        let conn = step_conn(step);
        if !self.peers.contains_key(conn) {
            self.connect(conn, &Connect::implicit()).await;
        }
        if !self.peers.get(conn).is_some_and(|p| p.open) {
            return;
        }
        match step {
            Step::Connect(..) => unreachable!("handled above"),
            Step::Send(conn, ch, method) => {
                let ch = *ch;
                let reply = awaits_reply(method);
                let closing = matches!(method, Method::ConnectionClose(_));
                self.send_method(conn, ch, method.clone()).await;
                if closing {
                    self.wait(conn, |c, m| {
                        c == 0 && matches!(m, Method::ConnectionCloseOk(_))
                    })
                    .await;
                } else if reply {
                    self.wait(conn, |c, m| c == ch && is_reply(m)).await;
                }
            }
            Step::Publish {
                conn,
                channel,
                publish,
                properties,
                body,
            } => {
                let frame_max = self.peers[conn].frame_max;
                let mut out = BytesMut::new();
                encode_method(*channel, &publish.clone().into(), &mut out);
                encode_content(*channel, properties, body, frame_max, &mut out);
                self.write(conn, &out).await;
            }
            Step::Expect(conn, ch, name) => {
                let ch = *ch;
                let seen = self
                    .unclaimed
                    .iter()
                    .position(|(c, n, m)| c == conn && *n == ch && m == name);
                if let Some(at) = seen {
                    self.unclaimed.remove(at);
                    return;
                }
                let found = self
                    .wait(conn, |c, m| {
                        c == ch && (m.name() == name || matches!(m, Method::ChannelClose(_)))
                    })
                    .await;
                if !found {
                    self.record(conn, ch, format!("timeout waiting for {name}"));
                }
            }
            Step::Sync(conn, ch) => {
                let ch = *ch;
                let probe = ExchangeDeclare {
                    exchange: "amq.direct".into(),
                    passive: true,
                    ..Default::default()
                };
                self.send_method(conn, ch, probe.into()).await;
                self.wait(conn, |c, m| c == ch && is_reply(m)).await;
            }
            Step::Frame {
                conn,
                kind,
                channel,
                payload,
                size,
                end,
            } => {
                let mut out = BytesMut::new();
                out.put_u8(*kind);
                out.put_u16(*channel);
                out.put_u32(size.unwrap_or(payload.len() as u32));
                out.put_slice(payload);
                out.put_u8(*end);
                self.write(conn, &out).await;
            }
            Step::Bytes(conn, bytes) => self.write(conn, bytes).await,
            Step::Header {
                conn,
                channel,
                class_id,
                body_size,
                properties,
            } => {
                let header = ContentHeader {
                    class_id: *class_id,
                    body_size: *body_size,
                    properties: properties.clone(),
                };
                let mut out = BytesMut::new();
                encode_frame(
                    &Frame::Header {
                        channel: *channel,
                        header,
                    },
                    &mut out,
                );
                self.write(conn, &out).await;
            }
            Step::Body(conn, channel, payload) => {
                let mut out = BytesMut::new();
                encode_frame(
                    &Frame::Body {
                        channel: *channel,
                        payload: payload.clone(),
                    },
                    &mut out,
                );
                self.write(conn, &out).await;
            }
            Step::Drop(conn) => {
                if let Some(mut peer) = self.peers.remove(conn) {
                    let _ = peer.stream.shutdown().await;
                }
                self.peers.insert(conn.clone(), closed_peer().await);
            }
        }
    }

    fn record(&mut self, conn: &Conn, ch: u16, what: String) {
        let prefix = conn.as_deref().map(|c| format!("{c}:")).unwrap_or_default();
        self.events.push(format!("{prefix}{ch} {what}"));
    }

    async fn connect(&mut self, conn: &Conn, p: &Connect) {
        let stream = match TcpStream::connect(self.addr).await {
            Ok(s) => s,
            Err(e) => panic!("cannot connect to {}: {e}", self.addr),
        };
        let _ = stream.set_nodelay(true);
        if !self.order.contains(conn) {
            self.order.push(conn.clone());
        }
        self.peers.insert(
            conn.clone(),
            Peer {
                stream,
                rbuf: BytesMut::new(),
                frame_max: 131_072,
                open: true,
            },
        );
        if let Some(header) = &p.header {
            self.write(conn, header).await;
            let answer = self.raw_answer(conn).await;
            self.record(conn, 0, answer);
            self.close_peer(conn);
            return;
        }
        self.write(conn, &PROTOCOL_HEADER).await;
        let Some(Method::ConnectionStart(start)) = self.handshake_reply(conn, p).await else {
            return;
        };
        if self.server_version.is_none() {
            self.server_version = start
                .server_properties
                .get("version")
                .and_then(FieldValue::as_str)
                .map(str::to_owned);
        }
        if p.show_start {
            let line = show_start(&start);
            self.record(conn, 0, line);
        }
        let response = match p.mechanism.as_str() {
            "AMQPLAIN" => {
                let table: FieldTable = [
                    ("LOGIN", FieldValue::string(p.user.clone())),
                    ("PASSWORD", FieldValue::string(p.password.clone())),
                ]
                .into_iter()
                .collect();
                let mut raw = BytesMut::new();
                table.encode(&mut raw);
                raw.freeze().slice(4..)
            }
            _ => Bytes::from(format!("\0{}\0{}", p.user, p.password)),
        };
        let start_ok = ConnectionStartOk {
            client_properties: client_properties(p.capabilities),
            mechanism: p.mechanism.clone(),
            response,
            locale: "en_US".into(),
        };
        self.send_method(conn, 0, start_ok.into()).await;
        let Some(Method::ConnectionTune(tune)) = self.handshake_reply(conn, p).await else {
            return;
        };
        if p.explicit {
            let line = describe(&Method::ConnectionTune(tune.clone()), &mut self.names);
            self.record(conn, 0, line);
        }
        let echo = |mine: u32, theirs: u32| if mine == 0 { theirs } else { mine };
        let tune_ok = ConnectionTuneOk {
            channel_max: echo(p.channel_max.into(), tune.channel_max.into()) as u16,
            frame_max: echo(p.frame_max, tune.frame_max),
            heartbeat: p.heartbeat,
        };
        if let Some(peer) = self.peers.get_mut(conn) {
            peer.frame_max = tune_ok.frame_max;
        }
        self.send_method(conn, 0, tune_ok.into()).await;
        let open = ConnectionOpen {
            virtual_host: p.vhost.clone(),
            ..Default::default()
        };
        self.send_method(conn, 0, open.into()).await;
        if let Some(Method::ConnectionOpenOk(ok)) = self.handshake_reply(conn, p).await {
            if p.explicit {
                let line = describe(&Method::ConnectionOpenOk(ok), &mut self.names);
                self.record(conn, 0, line);
            }
        }
    }

    /// The next handshake method; a close or a lost socket is recorded and
    /// gives None.
    async fn handshake_reply(&mut self, conn: &Conn, p: &Connect) -> Option<Method> {
        match self.next_frame_within(conn, HANDSHAKE_WAIT).await {
            Read::Frame(Frame::Method {
                method: Method::ConnectionClose(close),
                ..
            }) => {
                self.on_method(conn, 0, Method::ConnectionClose(close))
                    .await;
                None
            }
            Read::Frame(Frame::Method { method, .. }) => Some(method),
            Read::Frame(other) => {
                self.record(conn, 0, format!("unexpected frame {other:?}"));
                None
            }
            Read::Lost => {
                if !p.explicit {
                    panic!("handshake failed: the server closed the connection");
                }
                self.record(conn, 0, "connection lost".into());
                self.close_peer(conn);
                None
            }
            Read::Timeout => {
                self.record(conn, 0, "timeout in handshake".into());
                None
            }
        }
    }

    /// What a server says to a bad protocol header: the header it speaks,
    /// then the socket closes.
    async fn raw_answer(&mut self, conn: &Conn) -> String {
        let Some(peer) = self.peers.get_mut(conn) else {
            return "connection lost".into();
        };
        let mut got = Vec::new();
        let read = async {
            let mut buf = [0u8; 64];
            loop {
                match peer.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        let closed = tokio::time::timeout(HANDSHAKE_WAIT, read).await.is_ok();
        let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
        format!("protocol header bytes={hex} closed={closed}")
    }

    async fn write(&mut self, conn: &Conn, bytes: &[u8]) {
        let Some(peer) = self.peers.get_mut(conn) else {
            return;
        };
        if peer.stream.write_all(bytes).await.is_err() {
            // The server may already have closed the socket; what it said
            // before that is still in the receive buffer.
        }
    }

    async fn send_method(&mut self, conn: &Conn, ch: u16, method: Method) {
        let mut out = BytesMut::new();
        encode_method(ch, &method, &mut out);
        self.write(conn, &out).await;
    }

    async fn next_frame(&mut self, conn: &Conn) -> Read {
        self.next_frame_within(conn, REPLY_WAIT).await
    }

    async fn next_frame_within(&mut self, conn: &Conn, wait: Duration) -> Read {
        let Some(peer) = self.peers.get_mut(conn) else {
            return Read::Lost;
        };
        let read = async {
            loop {
                match decode_frame(&mut peer.rbuf, 1 << 24) {
                    Ok(Some(Frame::Heartbeat)) => continue,
                    Ok(Some(f)) => return Read::Frame(f),
                    Ok(None) => {}
                    Err(_) => return Read::Lost,
                }
                if peer.rbuf.starts_with(b"AMQP") && peer.rbuf.len() >= 8 {
                    return Read::Lost;
                }
                match peer.stream.read_buf(&mut peer.rbuf).await {
                    Ok(0) | Err(_) => return Read::Lost,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(wait, read)
            .await
            .unwrap_or(Read::Timeout)
    }

    /// Reads and records until `done` matches a method (true), the
    /// connection ends, or the guard runs out (false).
    async fn wait(&mut self, conn: &Conn, done: impl Fn(u16, &Method) -> bool) -> bool {
        loop {
            if !self.peers.get(conn).is_some_and(|p| p.open) {
                return false;
            }
            match self.next_frame(conn).await {
                Read::Frame(Frame::Method { channel, method }) => {
                    let matched = done(channel, &method);
                    let ended = matches!(method, Method::ConnectionClose(_));
                    if !matched && !is_reply(&method) {
                        // Read while waiting for something else: a later
                        // `expect` claims it instead of waiting for another.
                        self.unclaimed
                            .push((conn.clone(), channel, method.name().to_owned()));
                    }
                    self.on_method(conn, channel, method).await;
                    if matched {
                        return true;
                    }
                    if ended {
                        return false;
                    }
                }
                Read::Frame(other) => {
                    let ch = other.channel();
                    self.record(conn, ch, "content frame without a method".into());
                }
                Read::Lost => {
                    self.record(conn, 0, "connection lost".into());
                    self.close_peer(conn);
                    return false;
                }
                Read::Timeout => {
                    return false;
                }
            }
        }
    }

    /// Records a method (with its content) and answers closes as a client
    /// must.
    async fn on_method(&mut self, conn: &Conn, ch: u16, method: Method) {
        let mut line = describe(&method, &mut self.names);
        if method.carries_content() {
            line.push_str(&self.read_content(conn).await);
        }
        self.record(conn, ch, line);
        match method {
            Method::ChannelClose(_) => {
                self.send_method(conn, ch, ChannelCloseOk {}.into()).await;
            }
            Method::ConnectionClose(_) => {
                self.send_method(conn, 0, ConnectionCloseOk {}.into()).await;
                self.close_peer(conn);
            }
            Method::ConnectionCloseOk(_) => self.close_peer(conn),
            _ => {}
        }
    }

    async fn read_content(&mut self, conn: &Conn) -> String {
        let Read::Frame(Frame::Header { header, .. }) = self.next_frame(conn).await else {
            return " <no content header>".into();
        };
        let mut body = Vec::new();
        while (body.len() as u64) < header.body_size {
            match self.next_frame(conn).await {
                Read::Frame(Frame::Body { payload, .. }) => body.extend_from_slice(&payload),
                _ => return " <body incomplete>".into(),
            }
        }
        super::show::content(&header.properties, &body, &mut self.names)
    }

    fn close_peer(&mut self, conn: &Conn) {
        if let Some(peer) = self.peers.get_mut(conn) {
            peer.open = false;
        }
    }
}

// A frame per read is the common case; boxing it would allocate for each.
#[allow(clippy::large_enum_variant)]
enum Read {
    Frame(Frame),
    Lost,
    Timeout,
}

async fn closed_peer() -> Peer {
    // A stand-in for a dropped connection: a socket pair whose far end is
    // gone, marked closed so no step uses it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stream = TcpStream::connect(addr).await.expect("connect");
    Peer {
        stream,
        rbuf: BytesMut::new(),
        frame_max: 0,
        open: false,
    }
}

fn step_conn(step: &Step) -> &Conn {
    match step {
        Step::Connect(c, _)
        | Step::Send(c, ..)
        | Step::Expect(c, ..)
        | Step::Sync(c, _)
        | Step::Bytes(c, _)
        | Step::Body(c, ..)
        | Step::Drop(c) => c,
        Step::Publish { conn, .. } | Step::Frame { conn, .. } | Step::Header { conn, .. } => conn,
    }
}

/// Whether the server answers this method (with its -ok, or by closing).
fn awaits_reply(m: &Method) -> bool {
    match m {
        Method::ChannelOpen(_)
        | Method::ChannelFlow(_)
        | Method::ChannelClose(_)
        | Method::QueueUnbind(_)
        | Method::BasicQos(_)
        | Method::BasicGet(_)
        | Method::BasicRecover(_)
        | Method::TxSelect(_)
        | Method::TxCommit(_)
        | Method::TxRollback(_)
        | Method::ConnectionUpdateSecret(_) => true,
        Method::ExchangeDeclare(m) => !m.nowait,
        Method::ExchangeDelete(m) => !m.nowait,
        Method::ExchangeBind(m) => !m.nowait,
        Method::ExchangeUnbind(m) => !m.nowait,
        Method::QueueDeclare(m) => !m.nowait,
        Method::QueueBind(m) => !m.nowait,
        Method::QueuePurge(m) => !m.nowait,
        Method::QueueDelete(m) => !m.nowait,
        Method::BasicConsume(m) => !m.nowait,
        Method::BasicCancel(m) => !m.nowait,
        Method::ConfirmSelect(m) => !m.nowait,
        _ => false,
    }
}

/// A method that ends a synchronous request on its channel.
fn is_reply(m: &Method) -> bool {
    m.name().ends_with("-ok") || matches!(m, Method::BasicGetEmpty(_) | Method::ChannelClose(_))
}

fn client_properties(capabilities: bool) -> FieldTable {
    let mut props = FieldTable::new();
    props.insert("product", FieldValue::string("antre-conformance"));
    if capabilities {
        let caps: FieldTable = [
            "authentication_failure_close",
            "basic.nack",
            "connection.blocked",
            "consumer_cancel_notify",
            "publisher_confirms",
        ]
        .into_iter()
        .map(|c| (c, FieldValue::Bool(true)))
        .collect();
        props.insert("capabilities", FieldValue::Table(caps));
    }
    props
}

fn show_start(start: &ConnectionStart) -> String {
    let mut mechanisms: Vec<&str> = std::str::from_utf8(&start.mechanisms)
        .unwrap_or("?")
        .split(' ')
        .collect();
    mechanisms.sort_unstable();
    let mut caps: Vec<String> = match start.server_properties.get("capabilities") {
        Some(FieldValue::Table(t)) => t.iter().map(|(k, v)| format!("{k}={v:?}")).collect(),
        _ => Vec::new(),
    };
    caps.sort();
    format!(
        "connection.start version={}-{} mechanisms={:?} locales={:?} capabilities=[{}]",
        start.version_major,
        start.version_minor,
        mechanisms.join(" "),
        String::from_utf8_lossy(&start.locales),
        caps.join(", ")
    )
}

/// Deletes what a scenario declared, so the next one starts clean. A queue
/// still exclusive to a connection that is going away may take a moment to
/// go: 405 is retried briefly.
async fn cleanup(addr: SocketAddr, names: &[(Kind, String)]) {
    if names.is_empty() {
        return;
    }
    let mut r = Runner {
        addr,
        peers: HashMap::new(),
        order: Vec::new(),
        events: Vec::new(),
        names: Names::default(),
        server_version: None,
        unclaimed: Vec::new(),
    };
    let conn: Conn = None;
    r.connect(&conn, &Connect::implicit()).await;
    let mut ch = 0u16;
    for (kind, name) in names {
        for _attempt in 0..20 {
            ch += 1;
            r.send_method(&conn, ch, ChannelOpen::default().into())
                .await;
            r.wait(&conn, |c, m| c == ch && is_reply(m)).await;
            let method: Method = match kind {
                Kind::Queue => QueueDelete {
                    queue: name.clone(),
                    ..Default::default()
                }
                .into(),
                Kind::Exchange => ExchangeDelete {
                    exchange: name.clone(),
                    ..Default::default()
                }
                .into(),
            };
            r.events.clear();
            r.send_method(&conn, ch, method).await;
            r.wait(&conn, |c, m| c == ch && is_reply(m)).await;
            let locked = r.events.iter().any(|e| e.contains("reply_code=405"));
            if !r.peers.get(&conn).is_some_and(|p| p.open) {
                r.connect(&conn, &Connect::implicit()).await;
                ch = 0;
            }
            if !locked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let close = ConnectionClose {
        reply_code: 200,
        ..Default::default()
    };
    r.send_method(&conn, 0, close.into()).await;
    r.wait(&conn, |c, m| {
        c == 0 && matches!(m, Method::ConnectionCloseOk(_))
    })
    .await;
}
