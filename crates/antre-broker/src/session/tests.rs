//! Whole protocol conversations with a session, without sockets: a test
//! client encodes frames into the session's input and decodes its output,
//! and events travel through a vector the test hands back, as the server's
//! task would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use antre_amqp::method::*;
use antre_amqp::{
    decode_frame, encode_content, encode_frame, encode_method, BasicProperties, FieldTable, Frame,
    Method, PROTOCOL_HEADER,
};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use super::*;
use crate::queue::FAIR_SHARE;

#[derive(Debug, Default)]
struct Collect(Mutex<Vec<SessionEvent>>);

impl EventSink for Collect {
    fn send(&self, event: SessionEvent) -> Result<(), Box<SessionEvent>> {
        self.0.lock().push(event);
        Ok(())
    }
}

struct Client {
    broker: Arc<Broker>,
    session: Session,
    events: Arc<Collect>,
    input: BytesMut,
    output: BytesMut,
    now: Instant,
}

fn test_peer() -> Peer {
    Peer {
        loopback: true,
        label: "test".into(),
        external: ExternalIdentity::Unavailable,
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        frame_max: 4096,
        channel_max: 8,
        heartbeat: 10,
        max_message_size: 1024,
        consumer_timeout: None,
        max_connections: None,
        delivery_buffer_limit: 0,
        identity: ServerIdentity::default(),
    }
}

impl Client {
    fn new() -> Client {
        Client::with_config(config())
    }

    fn with_config(config: SessionConfig) -> Client {
        Client::with_peer_and_config(test_peer(), config)
    }

    fn with_peer(peer: Peer) -> Client {
        Client::with_peer_and_config(peer, config())
    }

    fn with_peer_and_config(peer: Peer, config: SessionConfig) -> Client {
        Client::on(Arc::new(Broker::new()), config, peer)
    }

    /// A client of `broker`, which other clients may share.
    fn on(broker: Arc<Broker>, config: SessionConfig, peer: Peer) -> Client {
        let events = Arc::new(Collect::default());
        let now = Instant::now();
        let sink = Arc::clone(&events) as Arc<dyn EventSink>;
        Client {
            broker: Arc::clone(&broker),
            session: Session::new(broker, config, peer, sink, now),
            events,
            input: BytesMut::new(),
            output: BytesMut::new(),
            now,
        }
    }

    /// A client past the handshake (heartbeat 10 s), with channel 1 open.
    fn open() -> Client {
        Client::open_with(config())
    }

    fn open_with(config: SessionConfig) -> Client {
        Client::open_on(Arc::new(Broker::new()), config)
    }

    /// A client of `broker` past the handshake, with channel 1 open.
    fn open_on(broker: Arc<Broker>, config: SessionConfig) -> Client {
        let mut c = Client::on(broker, config, test_peer());
        c.bytes(&PROTOCOL_HEADER);
        c.method(0, start_ok("guest"));
        let tune_ok = ConnectionTuneOk {
            channel_max: 0,
            frame_max: 4096,
            heartbeat: 10,
        };
        c.method(0, tune_ok);
        c.method(0, open_vhost("/"));
        c.method(1, ChannelOpen::default());
        c.flush();
        let replies = c.methods();
        assert!(matches!(
            replies.last(),
            Some((1, Method::ChannelOpenOk(_)))
        ));
        c
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    fn method(&mut self, channel: u16, m: impl Into<Method>) {
        encode_method(channel, &m.into(), &mut self.input);
    }

    fn publish(&mut self, channel: u16, key: &str, body: &[u8]) {
        let publish = BasicPublish {
            routing_key: key.into(),
            ..Default::default()
        };
        self.method(channel, publish);
        let props = BasicProperties::default();
        encode_content(channel, &props, body, 16, &mut self.input);
    }

    /// Hands the session what the client sent, then the events it caused.
    fn flush(&mut self) {
        self.session.receive(&mut self.input, self.now);
        self.pump();
    }

    fn pump(&mut self) {
        loop {
            let events: Vec<SessionEvent> = std::mem::take(&mut *self.events.0.lock());
            if events.is_empty() {
                break;
            }
            for e in events {
                self.session.event(e);
            }
        }
        let out = self.session.output();
        self.output.extend_from_slice(out);
        self.session.wrote(self.now);
    }

    /// Every frame the session wrote since the last call.
    fn frames(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        if self.output.starts_with(&PROTOCOL_HEADER) {
            let _ = self.output.split_to(PROTOCOL_HEADER.len());
        }
        while let Some(f) = decode_frame(&mut self.output, 1 << 20).expect("valid output") {
            frames.push(f);
        }
        frames
    }

    fn methods(&mut self) -> Vec<(u16, Method)> {
        self.frames()
            .into_iter()
            .filter_map(|f| match f {
                Frame::Method { channel, method } => Some((channel, method)),
                _ => None,
            })
            .collect()
    }
}

fn start_ok(user: &str) -> ConnectionStartOk {
    ConnectionStartOk {
        client_properties: FieldTable::new(),
        mechanism: "PLAIN".into(),
        response: Bytes::from(format!("\0{user}\0guest")),
        locale: "en_US".into(),
    }
}

fn open_vhost(vhost: &str) -> ConnectionOpen {
    ConnectionOpen {
        virtual_host: vhost.into(),
        ..Default::default()
    }
}

#[test]
fn a_pipelined_handshake_and_first_commands_are_answered_in_one_go() {
    let mut c = Client::new();
    c.bytes(&PROTOCOL_HEADER);
    c.method(0, start_ok("guest"));
    c.method(
        0,
        ConnectionTuneOk {
            channel_max: 0,
            frame_max: 4096,
            heartbeat: 0,
        },
    );
    c.method(0, open_vhost("/"));
    c.method(1, ChannelOpen::default());
    c.method(
        1,
        QueueDeclare {
            queue: "q".into(),
            ..Default::default()
        },
    );
    c.flush();
    let names: Vec<&str> = c.methods().iter().map(|(_, m)| m.name()).collect();
    assert_eq!(
        names,
        [
            "connection.start",
            "connection.tune",
            "connection.open-ok",
            "channel.open-ok",
            "queue.declare-ok"
        ]
    );
    assert_eq!(*c.session.state(), SessionState::Open);
    let Some(Effect::Opened(opened)) = c.session.poll_effect() else {
        panic!("the server learns who opened the connection");
    };
    assert_eq!(
        (opened.user.as_str(), opened.vhost.as_str()),
        ("guest", "/")
    );
    assert_eq!(opened.channel_max, 8, "0 means the server's limit");
    assert_eq!(c.session.poll_effect(), Some(Effect::ChannelOpened(1)));
}

#[test]
fn a_wrong_protocol_header_is_answered_with_ours_and_the_session_ends() {
    let mut c = Client::new();
    c.bytes(b"AMQP\x00\x00\x08\x00");
    c.flush();
    assert_eq!(&c.output[..], &PROTOCOL_HEADER);
    assert_eq!(*c.session.state(), SessionState::Closed { linger: false });
}

fn with_capability(mut login: ConnectionStartOk, name: &str) -> ConnectionStartOk {
    let mut caps = FieldTable::new();
    caps.insert(name, antre_amqp::FieldValue::Bool(true));
    login
        .client_properties
        .insert("capabilities", antre_amqp::FieldValue::Table(caps));
    login
}

#[test]
fn a_refused_login_closes_with_403_if_the_client_asked_to_be_told() {
    for (user, password) in [("nobody", "guest"), ("guest", "wrong")] {
        let mut c = Client::new();
        c.bytes(&PROTOCOL_HEADER);
        let mut login = start_ok(user);
        login.response = Bytes::from(format!("\0{user}\0{password}"));
        c.method(0, with_capability(login, "authentication_failure_close"));
        c.flush();
        let last = c.methods().pop();
        let Some((0, Method::ConnectionClose(close))) = last else {
            panic!("expected connection.close, got {last:?}");
        };
        assert_eq!(close.reply_code, 403);
        // Checked against RabbitMQ 3.10.8: the same text whether or not
        // the user exists.
        assert_eq!(
            close.reply_text,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. \
             For details see the broker logfile."
        );
        assert_eq!(*c.session.state(), SessionState::Closing);
        c.method(0, ConnectionCloseOk {});
        c.flush();
        assert_eq!(*c.session.state(), SessionState::Closed { linger: false });
    }
}

#[test]
fn a_refused_login_just_closes_for_a_client_without_the_capability() {
    let mut c = Client::new();
    c.bytes(&PROTOCOL_HEADER);
    c.method(0, start_ok("nobody"));
    c.flush();
    assert!(
        c.methods()
            .iter()
            .all(|(_, m)| !matches!(m, Method::ConnectionClose(_))),
        "RabbitMQ closes the socket without a word"
    );
    assert_eq!(*c.session.state(), SessionState::Closed { linger: false });
}

#[test]
fn opening_a_vhost_without_permission_is_refused_with_530() {
    let mut c = Client::new();
    c.broker
        .add_user(crate::broker::User {
            name: "bob".into(),
            password: "guest".into(),
            tags: vec![],
        })
        .unwrap();
    c.bytes(&PROTOCOL_HEADER);
    c.method(0, start_ok("bob"));
    c.method(0, ConnectionTuneOk::default());
    c.method(0, open_vhost("/"));
    c.flush();
    let last = c.methods().pop();
    let Some((0, Method::ConnectionClose(close))) = last else {
        panic!("expected connection.close, got {last:?}");
    };
    assert_eq!(close.reply_code, 530);
    // Checked against RabbitMQ 3.10.8.
    assert_eq!(
        close.reply_text,
        "NOT_ALLOWED - access to vhost '/' refused for user 'bob'"
    );
}

#[test]
fn content_split_across_frames_is_assembled_and_delivered() {
    let mut c = Client::open();
    c.method(
        1,
        QueueDeclare {
            queue: "q".into(),
            ..Default::default()
        },
    );
    let consume = BasicConsume {
        queue: "q".into(),
        consumer_tag: "c".into(),
        no_ack: true,
        ..Default::default()
    };
    c.method(1, consume);
    // frame_max 16 in the encoder: the body travels in several frames.
    c.publish(1, "q", b"a body longer than one frame");
    c.flush();
    let frames = c.frames();
    let body: Vec<u8> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Body { payload, .. } => Some(payload.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(body, b"a body longer than one frame");
    let deliver = frames.iter().any(|f| {
        matches!(
            f,
            Frame::Method {
                method: Method::BasicDeliver(_),
                ..
            }
        )
    });
    assert!(deliver);
}

#[test]
fn a_method_in_the_middle_of_content_is_a_connection_error() {
    let mut c = Client::open();
    c.method(
        1,
        BasicPublish {
            routing_key: "q".into(),
            ..Default::default()
        },
    );
    c.method(1, BasicQos::default());
    c.flush();
    let last = c.methods().pop();
    let Some((0, Method::ConnectionClose(close))) = last else {
        panic!("expected connection.close, got {last:?}");
    };
    assert_eq!(close.reply_code, 505);
    // Everything but close-ok is ignored now.
    c.method(1, ChannelOpen::default());
    c.flush();
    assert!(c.methods().is_empty());
    assert_eq!(*c.session.state(), SessionState::Closing);
}

#[test]
fn a_channel_error_closes_only_that_channel_until_close_ok() {
    let mut c = Client::open();
    c.method(2, ChannelOpen::default());
    c.method(
        1,
        QueueDeclare {
            queue: "missing".into(),
            passive: true,
            ..Default::default()
        },
    );
    c.method(
        1,
        QueueDeclare {
            queue: "ignored".into(),
            ..Default::default()
        },
    );
    c.method(2, BasicQos::default());
    c.flush();
    let replies = c.methods();
    let names: Vec<(u16, &str)> = replies.iter().map(|(ch, m)| (*ch, m.name())).collect();
    assert_eq!(
        names,
        [
            (2, "channel.open-ok"),
            (1, "channel.close"),
            (2, "basic.qos-ok")
        ],
        "the channel ignores methods after its close, the other is served"
    );
    c.method(1, ChannelCloseOk {});
    c.method(1, ChannelOpen::default());
    c.flush();
    assert!(matches!(
        c.methods().as_slice(),
        [(1, Method::ChannelOpenOk(_))]
    ));
}

#[test]
fn client_close_releases_everything_before_close_ok() {
    let mut c = Client::open();
    c.method(
        1,
        QueueDeclare {
            queue: "mine".into(),
            exclusive: true,
            ..Default::default()
        },
    );
    c.flush();
    c.methods();
    c.method(0, ConnectionClose::default());
    c.flush();
    assert!(matches!(
        c.methods().as_slice(),
        [(0, Method::ConnectionCloseOk(_))]
    ));
    assert_eq!(*c.session.state(), SessionState::Closed { linger: true });
    let vhost = c.session.broker.vhost("/").unwrap();
    assert!(
        vhost.queue("mine", c.session.id()).is_err(),
        "exclusive queue gone"
    );
}

#[test]
fn heartbeats_are_sent_when_idle_and_a_silent_client_is_dropped() {
    let mut c = Client::open();
    c.session.heartbeat_tick(c.now + Duration::from_secs(5));
    c.pump();
    assert!(matches!(c.frames().as_slice(), [Frame::Heartbeat]));
    c.session.heartbeat_tick(c.now + Duration::from_secs(21));
    assert_eq!(*c.session.state(), SessionState::Closed { linger: false });
}

#[test]
fn publishers_are_blocked_by_an_alarm_and_told_so() {
    let mut c = Client::new();
    c.bytes(&PROTOCOL_HEADER);
    let mut caps = FieldTable::new();
    caps.insert("connection.blocked", antre_amqp::FieldValue::Bool(true));
    let mut props = FieldTable::new();
    props.insert("capabilities", antre_amqp::FieldValue::Table(caps));
    let mut login = start_ok("guest");
    login.client_properties = props;
    c.method(0, login);
    c.method(0, ConnectionTuneOk::default());
    c.method(0, open_vhost("/"));
    c.method(1, ChannelOpen::default());
    c.flush();
    c.methods();
    assert!(
        !c.session.set_alarm(Some("low on disk")),
        "not a publisher yet"
    );
    c.publish(1, "nowhere", b"x");
    c.flush();
    assert!(c.session.set_alarm(Some("low on disk")));
    assert!(!c.session.set_alarm(None));
    c.pump();
    let names: Vec<&str> = c.methods().iter().map(|(_, m)| m.name()).collect();
    assert_eq!(names, ["connection.blocked", "connection.unblocked"]);
}

#[test]
fn unparseable_frames_close_the_connection_with_the_codec_reply_code() {
    let mut c = Client::open();
    encode_frame(&Frame::Heartbeat, &mut c.input);
    c.bytes(&[9, 0, 0, 0, 0, 0, 0, 0xCE]);
    c.flush();
    let last = c.methods().pop();
    let Some((0, Method::ConnectionClose(close))) = last else {
        panic!("expected connection.close, got {last:?}");
    };
    assert_eq!(close.reply_code, 501, "{}", close.reply_text);
}

/// A client whose TLS connection offers SASL EXTERNAL with `external`.
fn external_client(external: ExternalIdentity, loopback: bool) -> Client {
    Client::with_peer(Peer {
        loopback,
        label: "tls".into(),
        external,
    })
}

fn certificate(cn: &str) -> ExternalIdentity {
    ExternalIdentity::Certificate {
        common_name: Some(cn.into()),
    }
}

fn external_start_ok() -> ConnectionStartOk {
    let login = ConnectionStartOk {
        client_properties: FieldTable::new(),
        mechanism: "EXTERNAL".into(),
        response: Bytes::new(),
        locale: "en_US".into(),
    };
    with_capability(login, "authentication_failure_close")
}

/// The mechanisms connection.start offers, and the reply to a start-ok.
fn login(c: &mut Client, start_ok: ConnectionStartOk) -> (String, Method) {
    c.bytes(&PROTOCOL_HEADER);
    c.flush();
    let Some((0, Method::ConnectionStart(start))) = c.methods().pop() else {
        panic!("connection.start first");
    };
    let mechanisms = String::from_utf8_lossy(&start.mechanisms).into_owned();
    c.method(0, start_ok);
    c.flush();
    let (_, reply) = c.methods().pop().expect("a reply to start-ok");
    (mechanisms, reply)
}

fn close_code(reply: &Method) -> (u16, String) {
    match reply {
        Method::ConnectionClose(close) => (close.reply_code, close.reply_text.to_string()),
        other => panic!("expected connection.close, got {other:?}"),
    }
}

#[test]
fn external_is_offered_only_where_client_certificates_are_verified() {
    let (plain, _) = login(&mut Client::new(), start_ok("guest"));
    assert_eq!(plain, "PLAIN AMQPLAIN");
    for external in [ExternalIdentity::NoCertificate, certificate("guest")] {
        let (offered, _) = login(&mut external_client(external, true), start_ok("guest"));
        assert_eq!(offered, "PLAIN AMQPLAIN EXTERNAL");
    }
}

#[test]
fn external_logs_in_as_the_certificate_common_name_without_a_password() {
    let mut c = external_client(certificate("guest"), true);
    let (_, reply) = login(&mut c, external_start_ok());
    assert!(matches!(reply, Method::ConnectionTune(_)), "{reply:?}");
    c.method(0, ConnectionTuneOk::default());
    c.method(0, open_vhost("/"));
    c.flush();
    let Some(Effect::Opened(opened)) = c.session.poll_effect() else {
        panic!("the connection opens");
    };
    assert_eq!(
        (opened.user.as_str(), opened.mechanism.as_str()),
        ("guest", "EXTERNAL")
    );
}

#[test]
fn external_is_refused_without_a_certificate_a_name_or_a_known_user() {
    let refused = [
        (ExternalIdentity::NoCertificate, true),
        (ExternalIdentity::Certificate { common_name: None }, true),
        (certificate("nobody"), true),
        // guest may log in from loopback only, whatever the mechanism.
        (certificate("guest"), false),
    ];
    for (external, loopback) in refused {
        let (_, reply) = login(
            &mut external_client(external.clone(), loopback),
            with_capability(external_start_ok(), "authentication_failure_close"),
        );
        let (code, text) = close_code(&reply);
        assert_eq!(code, 403, "{external:?}: {text}");
        assert!(text.contains("mechanism EXTERNAL"), "{text}");
    }
}

/// RabbitMQ 3.10 drops the socket on a mechanism it did not offer, even
/// for a client that announces authentication_failure_close (recorded in
/// the conformance suite: login-unknown-mechanism).
#[test]
fn a_mechanism_not_offered_drops_the_connection_as_in_rabbitmq() {
    let unknown = ConnectionStartOk {
        mechanism: "CRAM-MD5".into(),
        ..with_capability(start_ok("guest"), "authentication_failure_close")
    };
    for start_ok in [external_start_ok(), unknown] {
        let mut c = Client::new();
        c.bytes(&PROTOCOL_HEADER);
        c.flush();
        c.methods();
        c.method(0, start_ok);
        c.flush();
        assert!(c.methods().is_empty(), "nothing but the socket closing");
        assert_eq!(*c.session.state(), SessionState::Closed { linger: false });
    }
}

/// Limits: a client of `broker` logs in as `user` (password guest) and
/// opens `vhost`; returns the answer to connection.open.
fn connect(
    broker: &Arc<Broker>,
    config: SessionConfig,
    user: &str,
    vhost: &str,
) -> (Client, Method) {
    let peer = Peer {
        loopback: true,
        label: user.into(),
        external: ExternalIdentity::Unavailable,
    };
    let mut c = Client::on(Arc::clone(broker), config, peer);
    c.bytes(&PROTOCOL_HEADER);
    c.method(0, start_ok(user));
    c.method(0, ConnectionTuneOk::default());
    c.method(0, open_vhost(vhost));
    c.flush();
    let (_, answer) = c.methods().pop().expect("an answer to connection.open");
    (c, answer)
}

fn limited_broker() -> Arc<Broker> {
    let broker = Arc::new(Broker::new());
    broker
        .add_user(crate::broker::User {
            name: "bob".into(),
            password: "guest".into(),
            tags: vec![],
        })
        .unwrap();
    broker.add_vhost("eu").unwrap();
    for (user, vhost) in [("bob", "/"), ("guest", "eu")] {
        broker
            .set_permission(crate::access::full_permission(user, vhost))
            .unwrap();
    }
    broker
}

#[test]
fn connection_open_past_a_limit_is_refused_with_rabbitmqs_texts() {
    let broker = limited_broker();
    broker.set_vhost_limit("/", "max-connections", 1).unwrap();
    let (mut first, ok) = connect(&broker, config(), "guest", "/");
    assert!(matches!(ok, Method::ConnectionOpenOk(_)), "{ok:?}");
    let (_, refused) = connect(&broker, config(), "bob", "/");
    let Method::ConnectionClose(close) = refused else {
        panic!("expected connection.close, got {refused:?}");
    };
    // Checked against RabbitMQ 3.10.8: 530, on connection.open (10, 40).
    assert_eq!(
        (close.reply_code, close.reply_text.as_str(), close.class_id, close.method_id),
        (
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'bob': connection limit (1) is reached",
            10,
            40
        )
    );
    let (_, other_vhost) = connect(&broker, config(), "guest", "eu");
    assert!(
        matches!(other_vhost, Method::ConnectionOpenOk(_)),
        "another vhost is fine"
    );

    broker.set_vhost_limit("/", "max-connections", -1).unwrap();
    broker
        .access()
        .set_user_limit("bob", "max-connections", 1)
        .unwrap();
    let (_bob, ok) = connect(&broker, config(), "bob", "/");
    assert!(matches!(ok, Method::ConnectionOpenOk(_)), "{ok:?}");
    let (_, refused) = connect(&broker, config(), "bob", "/");
    assert_eq!(
        close_code(&refused),
        (
            530,
            "NOT_ALLOWED - connection refused for user 'bob': user connection limit (1) is reached"
                .into()
        )
    );

    // A closed connection gives its place back at once.
    broker.set_vhost_limit("/", "max-connections", 1).unwrap();
    first.method(0, ConnectionClose::default());
    first.flush();
    assert_eq!(
        broker.access().usage().vhost_connections("/"),
        1,
        "bob's is left"
    );
    broker
        .access()
        .clear_user_limit("bob", "max-connections")
        .unwrap();
    broker.set_vhost_limit("/", "max-connections", 2).unwrap();
    let (_, ok) = connect(&broker, config(), "guest", "/");
    assert!(matches!(ok, Method::ConnectionOpenOk(_)), "{ok:?}");
}

#[test]
fn the_node_connection_limit_refuses_as_rabbitmq_3_13_does() {
    let broker = limited_broker();
    let node = SessionConfig {
        max_connections: Some(2),
        ..config()
    };
    let (_a, _) = connect(&broker, node.clone(), "guest", "/");
    let (mut b, _) = connect(&broker, node.clone(), "guest", "eu");
    let (_, refused) = connect(&broker, node.clone(), "bob", "/");
    assert_eq!(
        close_code(&refused),
        (
            530,
            "NOT_ALLOWED - connection refused: node connection limit (2) is reached".into()
        )
    );
    // A connection that ends without a close (a dropped socket) gives its
    // place back too.
    b.session.teardown();
    drop(b);
    let (_, ok) = connect(&broker, node, "bob", "/");
    assert!(matches!(ok, Method::ConnectionOpenOk(_)), "{ok:?}");
}

#[test]
fn channel_open_past_the_users_max_channels_closes_the_connection() {
    let broker = limited_broker();
    broker
        .access()
        .set_user_limit("bob", "max-channels", 2)
        .unwrap();
    let (mut c, _) = connect(&broker, config(), "bob", "/");
    c.method(1, ChannelOpen::default());
    c.method(2, ChannelOpen::default());
    c.method(2, ChannelClose::default());
    c.method(3, ChannelOpen::default());
    c.flush();
    let names: Vec<&str> = c.methods().iter().map(|(_, m)| m.name()).collect();
    assert_eq!(
        names,
        [
            "channel.open-ok",
            "channel.open-ok",
            "channel.close-ok",
            "channel.open-ok"
        ],
        "a closed channel gives its place back"
    );
    // The limit is the user's, over all their connections.
    let (mut other, _) = connect(&broker, config(), "bob", "/");
    other.method(1, ChannelOpen::default());
    other.flush();
    let (_, refused) = other.methods().pop().expect("an answer");
    let Method::ConnectionClose(close) = refused else {
        panic!("expected connection.close, got {refused:?}");
    };
    // Checked against RabbitMQ 3.10.8: 530 with class and method 0.
    assert_eq!(
        (close.reply_code, close.reply_text.as_str(), close.class_id),
        (
            530,
            "NOT_ALLOWED - number of channels opened for user 'bob' has reached the maximum allowed user limit of (2)",
            0
        )
    );
    let (mut guest, _) = connect(&broker, config(), "guest", "eu");
    guest.method(1, ChannelOpen::default());
    guest.flush();
    assert!(matches!(
        guest.methods().pop(),
        Some((1, Method::ChannelOpenOk(_)))
    ));
    assert_eq!(broker.access().usage().user_channels("bob"), 2);
}

/// A client that stops reading its socket: the server cannot write, so it
/// never calls `wrote`. Its no-ack consumer gets at most the output window's
/// worth of deliveries; the rest stay in the queue, counted, until the
/// connection writes again.
#[test]
fn deliveries_stop_while_the_client_does_not_read() {
    let mut c = Client::open_with(SessionConfig {
        delivery_buffer_limit: 8192,
        ..config()
    });
    let declare = QueueDeclare {
        queue: "q".into(),
        ..Default::default()
    };
    c.method(1, declare);
    let consume = BasicConsume {
        queue: "q".into(),
        no_ack: true,
        ..Default::default()
    };
    c.method(1, consume);
    c.flush();
    c.methods();
    for _ in 0..100 {
        c.publish(1, "q", &[b'x'; 1000]);
    }
    // The socket is full: events are handled, nothing is written.
    c.session.receive(&mut c.input, c.now);
    let mut unwritten = BytesMut::new();
    for e in std::mem::take(&mut *c.events.0.lock()) {
        c.session.event(e);
    }
    unwritten.extend_from_slice(c.session.output());
    let deliveries = |buf: &mut BytesMut| {
        let mut n = 0;
        while let Some(f) = decode_frame(buf, 1 << 20).unwrap() {
            n += usize::from(matches!(
                f,
                Frame::Method {
                    method: Method::BasicDeliver(_),
                    ..
                }
            ));
        }
        n
    };
    let first = deliveries(&mut unwritten);
    // 1000-byte bodies cost 1256 bytes of window: 7 fill 8 KiB.
    assert!((1..=8).contains(&first), "{first} deliveries buffered");
    let queue = c.session.broker.vhost("/").unwrap().queue("q", 0).unwrap();
    assert_eq!(
        queue.counts().ready as usize,
        100 - first,
        "the rest wait in the queue"
    );

    // The socket drains: each write frees room and the queue goes on.
    c.session.wrote(c.now);
    let mut total = first;
    for _ in 0..100 {
        c.pump();
        let mut out = std::mem::take(&mut c.output);
        let n = deliveries(&mut out);
        assert!(n <= 8, "{n} deliveries in one write");
        total += n;
        if total == 100 {
            break;
        }
    }
    assert_eq!(total, 100, "every message delivered once");
    assert_eq!(queue.counts().ready, 0);
}

/// Deliveries that arrive while the channel's output waits for a sync of
/// durable definitions (a durable declare just before) are held in the
/// channel, not written: they still count in the output window until they
/// are, so a consumer with a large prefetch cannot pile a backlog into
/// held output.
#[test]
fn deliveries_held_behind_a_durable_declare_count_in_the_output_window() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker =
        Arc::new(Broker::open(dir.path(), crate::StorageOptions::default()).expect("broker"));
    let mut c = Client::open_on(
        broker,
        SessionConfig {
            delivery_buffer_limit: 8192,
            ..config()
        },
    );
    let transient = QueueDeclare {
        queue: "q".into(),
        ..Default::default()
    };
    c.method(1, transient);
    c.flush();
    for _ in 0..100 {
        c.publish(1, "q", &[b'x'; 1000]);
    }
    c.flush();
    c.methods();
    let durable = QueueDeclare {
        queue: "d".into(),
        durable: true,
        ..Default::default()
    };
    c.method(1, durable);
    let consume = BasicConsume {
        queue: "q".into(),
        no_ack: true,
        ..Default::default()
    };
    c.method(1, consume);
    // The declare's sync does not come back yet: every other event is
    // handled, and what the session wrote is taken as written.
    c.session.receive(&mut c.input, c.now);
    let mut syncs = Vec::new();
    for _ in 0..200 {
        let events: Vec<SessionEvent> = std::mem::take(&mut *c.events.0.lock());
        for e in events {
            match e {
                SessionEvent::Synced(..) => syncs.push(e),
                e => c.session.event(e),
            }
        }
        c.session.wrote(c.now);
    }
    let queue = c.session.broker.vhost("/").unwrap().queue("q", 0).unwrap();
    let ready = queue.counts().ready as usize;
    assert!(
        ready >= 100 - 8,
        "at most a window's worth held, {} taken",
        100 - ready
    );
    // The sync comes back (the syncer thread may still owe it): the held
    // output goes out, and the rest follows as it is written.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut delivered = 0;
    while delivered < 100 {
        assert!(Instant::now() < deadline, "{delivered} of 100 delivered");
        for e in syncs.drain(..) {
            c.session.event(e);
        }
        c.pump();
        delivered += c
            .methods()
            .iter()
            .filter(|(_, m)| matches!(m, Method::BasicDeliver(_)))
            .count();
    }
    assert_eq!(delivered, 100);
}

/// Connections that stop reading cannot together hold more than the node's
/// output budget, plus a fair share each, however large their own windows;
/// a bystander that reads is served all along.
#[test]
fn the_node_output_budget_bounds_many_clients_that_do_not_read() {
    let broker = Arc::new(Broker::new());
    broker.output_budget.set_limit(128 * 1024);
    let config = SessionConfig {
        delivery_buffer_limit: 1 << 20,
        ..config()
    };
    let consume = |c: &mut Client, queue: &str| {
        let declare = QueueDeclare {
            queue: queue.into(),
            ..Default::default()
        };
        c.method(1, declare);
        let consume = BasicConsume {
            queue: queue.into(),
            no_ack: true,
            ..Default::default()
        };
        c.method(1, consume);
        c.flush();
        c.methods();
    };
    let mut stalled = Vec::new();
    for i in 0..4 {
        let mut c = Client::open_on(Arc::clone(&broker), config.clone());
        consume(&mut c, &format!("stalled{i}"));
        for _ in 0..200 {
            c.publish(1, &format!("stalled{i}"), &[b'x'; 1000]);
        }
        // Its socket is full: events are handled, nothing is written.
        c.session.receive(&mut c.input, c.now);
        for e in std::mem::take(&mut *c.events.0.lock()) {
            c.session.event(e);
        }
        stalled.push(c);
    }
    let per_delivery = 1000 + DELIVERY_OVERHEAD;
    let held = broker.output_budget.in_flight();
    assert!(
        held <= 128 * 1024 + 4 * (FAIR_SHARE + per_delivery),
        "{held} bytes unwritten (each window alone allows 1 MiB)"
    );
    for (i, c) in stalled.iter().enumerate() {
        let q = c
            .broker
            .vhost("/")
            .unwrap()
            .queue(&format!("stalled{i}"), 0)
            .unwrap();
        assert!(
            q.counts().ready > 0,
            "stalled{i}'s backlog waits in its queue"
        );
    }

    let mut bystander = Client::open_on(Arc::clone(&broker), config.clone());
    consume(&mut bystander, "served");
    for _ in 0..100 {
        bystander.publish(1, "served", &[b'y'; 1000]);
    }
    bystander.flush();
    let mut delivered = 0;
    for _ in 0..100 {
        delivered += bystander
            .methods()
            .iter()
            .filter(|(_, m)| matches!(m, Method::BasicDeliver(_)))
            .count();
        if delivered == 100 {
            break;
        }
        bystander.pump();
    }
    assert_eq!(delivered, 100, "the bystander got every message");

    // A stalled connection that goes away gives its share back.
    let before = broker.output_budget.in_flight();
    let mut gone = stalled.pop().unwrap();
    gone.session.teardown();
    drop(gone);
    assert!(broker.output_budget.in_flight() < before);
}
