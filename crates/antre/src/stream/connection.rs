//! One stream-protocol connection: its task, its handshake (peer
//! properties, SASL PLAIN through the broker's access module, tune, open),
//! publishers (confirms after the group commit, deduplication by publishing
//! id for named publishers), subscriptions (whole stored chunks, sent while
//! the subscription has chunk credit), offset tracking, and stream and
//! super-stream management.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antre_broker::access::{Perm, ResourceKind};
use antre_broker::durable::{add_once, Durable};
use antre_broker::queue::{Delivery, DeliverySink};
use antre_broker::stream::{
    record, OffsetSpec, PublishedRecord, Reader, Stream, StreamConsumer, StreamWaker,
};
use antre_broker::{Broker, Credit, Vhost};
use antre_stream_proto::chunk::{without_trailer, ChunkFilter, HEADER_SIZE};
use antre_stream_proto::frame::{
    code, key, split_frame, OffsetSpecification, Properties, Request, ServerFrame, StreamMetadata,
};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::admin;
use super::sac::{GroupKey, Groups};

/// The frame_max the server proposes (RabbitMQ's stream default).
pub const FRAME_MAX: u32 = 1_048_576;
/// The largest frame accepted before the connection is open.
const INITIAL_FRAME_MAX: u32 = 8192;

/// What the broker tells a connection's task.
#[derive(Debug)]
pub(super) enum Event {
    /// A sync it asked for finished.
    Synced(u64, bool),
    /// A stream a subscription waits on has a new chunk.
    Ready(u8),
    /// A stream a subscription reads was deleted.
    Gone(u8),
    /// A single-active-consumer subscription becomes active (true) or is
    /// asked to step down (false).
    ConsumerUpdate(u8, bool),
}

/// Carries the broker's callbacks into the connection's task.
#[derive(Debug)]
struct Sink(mpsc::UnboundedSender<Event>);

impl DeliverySink for Sink {
    fn deliver(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
        // Streams never push deliveries.
        Err(Box::new(delivery))
    }

    fn cancel(&self, consumer_tag: &str) {
        if let Ok(id) = consumer_tag.parse() {
            let _ = self.0.send(Event::Gone(id));
        }
    }

    fn synced(&self, token: u64, ok: bool) {
        let _ = self.0.send(Event::Synced(token, ok));
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    PeerProperties,
    Sasl,
    Tune,
    Open,
    Ready,
    Closing,
}

struct Publisher {
    stream: Arc<Stream>,
    reference: Option<String>,
}

struct Subscription {
    stream: Arc<Stream>,
    /// None while a single active consumer is not the active one.
    reader: Option<Reader>,
    consumer: u64,
    /// The next offset it gets, for the management API.
    offset: Arc<AtomicU64>,
    credit: u32,
    parked: bool,
    /// Its single-active-consumer group, if it is in one.
    group: Option<GroupKey>,
    /// In a group: whether it is the active member (for the management
    /// API; set as it is told).
    single_active: Option<Arc<AtomicBool>>,
    /// The filter values it asked for (`filter.N`, `match-unfiltered`).
    filter: Option<ChunkFilter>,
}

/// A stream-protocol connection.
pub struct Connection {
    broker: Arc<Broker>,
    groups: Arc<Groups>,
    /// Tells this connection's members of groups apart.
    id: u64,
    /// Correlation ids of the ConsumerUpdate requests this side sends.
    next_corr: u32,
    /// ConsumerUpdate requests awaiting the client's answer: the
    /// subscription and whether it was told it is active.
    updates: HashMap<u32, (u8, bool)>,
    peer: SocketAddr,
    local: SocketAddr,
    phase: Phase,
    user: String,
    vhost: Option<Arc<Vhost>>,
    frame_max: u32,
    heartbeat: u32,
    deliver_version: u16,
    publishers: HashMap<u8, Publisher>,
    subscriptions: HashMap<u8, Subscription>,
    out: BytesMut,
    events: mpsc::UnboundedSender<Event>,
    sink: Arc<Sink>,
    /// Confirms of this read's publishes, by publisher.
    confirms: Vec<(u8, Vec<u64>)>,
    /// Streams this read's publishes wrote to.
    dirty: Vec<Arc<dyn Durable>>,
    /// Confirms waiting for their sync, by token.
    waiting: HashMap<u64, Vec<(u8, Vec<u64>)>>,
    next_token: u64,
    accepted: Vec<bool>,
}

impl Connection {
    /// Serves a connection until it closes or the server shuts down.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut socket: S,
        broker: Arc<Broker>,
        groups: Arc<Groups>,
        peer: SocketAddr,
        local: SocketAddr,
        stop: super::Stop,
    ) {
        let super::Stop {
            mut shutdown,
            mut drained,
        } = stop;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = broker.next_id();
        let mut c = Connection {
            broker,
            groups,
            id,
            next_corr: 1,
            updates: HashMap::new(),
            peer,
            local,
            phase: Phase::PeerProperties,
            user: String::new(),
            vhost: None,
            frame_max: INITIAL_FRAME_MAX,
            heartbeat: 60,
            deliver_version: 1,
            publishers: HashMap::new(),
            subscriptions: HashMap::new(),
            out: BytesMut::with_capacity(64 * 1024),
            events: tx.clone(),
            sink: Arc::new(Sink(tx)),
            confirms: Vec::new(),
            dirty: Vec::new(),
            waiting: HashMap::new(),
            next_token: 1,
            accepted: Vec::new(),
        };
        let mut input = BytesMut::with_capacity(64 * 1024);
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        loop {
            tokio::select! {
                read = socket.read_buf(&mut input) => {
                    match read {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            last_read = Instant::now();
                            if !c.receive(&mut input) {
                                let _ = socket.write_all(&c.out).await;
                                break;
                            }
                        }
                    }
                }
                Some(event) = rx.recv() => {
                    c.event(event);
                    while let Ok(more) = rx.try_recv() {
                        c.event(more);
                    }
                }
                _ = ticker.tick() => {
                    let hb = Duration::from_secs(u64::from(c.heartbeat));
                    if c.heartbeat > 0 && c.phase == Phase::Ready {
                        if last_read.elapsed() > hb * 2 {
                            tracing::info!(peer = %c.peer, "stream connection missed heartbeats");
                            break;
                        }
                        if last_write.elapsed() >= hb / 2 {
                            ServerFrame::Heartbeat.encode(&mut c.out);
                        }
                    }
                }
                _ = shutdown.changed() => {
                    ServerFrame::Close { corr: 0, code: code::OK, reason: "broker shutting down".into() }
                        .encode(&mut c.out);
                    let _ = socket.write_all(&c.out).await;
                    break;
                }
                Ok(()) = drained.changed() => {
                    if *drained.borrow_and_update() {
                        let reason = crate::maintenance::CLOSE_REASON.into();
                        ServerFrame::Close { corr: 0, code: code::OK, reason }.encode(&mut c.out);
                        let _ = socket.write_all(&c.out).await;
                        break;
                    }
                }
            }
            if !c.out.is_empty() {
                if socket.write_all(&c.out).await.is_err() {
                    break;
                }
                c.out.clear();
                last_write = Instant::now();
            }
            if c.phase == Phase::Closing {
                let _ = socket.flush().await;
                break;
            }
        }
        c.teardown();
    }

    /// Handles every whole frame read; false when the connection must end.
    fn receive(&mut self, input: &mut BytesMut) -> bool {
        loop {
            let max = if self.phase == Phase::Ready {
                self.frame_max
            } else {
                INITIAL_FRAME_MAX.max(self.frame_max.min(FRAME_MAX))
            };
            let frame = match split_frame(input, max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(peer = %self.peer, "stream frame refused: {e}");
                    self.close(code::FRAME_TOO_LARGE, "frame too large");
                    return false;
                }
            };
            match Request::decode(frame) {
                Ok(req) => self.handle(req),
                Err(e) => {
                    tracing::debug!(peer = %self.peer, "bad stream frame: {e}");
                    self.close(code::UNKNOWN_FRAME, &e.to_string());
                    return false;
                }
            }
            if self.phase == Phase::Closing {
                return false;
            }
        }
        self.request_confirms();
        self.pump_all();
        true
    }

    fn close(&mut self, c: u16, reason: &str) {
        ServerFrame::Close {
            corr: 0,
            code: c,
            reason: reason.to_owned(),
        }
        .encode(&mut self.out);
        self.phase = Phase::Closing;
    }

    fn respond(&mut self, k: u16, corr: u32, c: u16) {
        ServerFrame::Response {
            key: k,
            corr,
            code: c,
        }
        .encode(&mut self.out);
    }

    fn handle(&mut self, req: Request) {
        let allowed = matches!(
            (&self.phase, &req),
            (
                _,
                Request::Heartbeat | Request::Close { .. } | Request::CloseResponse { .. }
            ) | (Phase::PeerProperties, Request::PeerProperties { .. })
                | (
                    Phase::Sasl,
                    Request::SaslHandshake { .. } | Request::SaslAuthenticate { .. }
                )
                | (Phase::Tune, Request::Tune { .. })
                | (Phase::Open, Request::Open { .. })
                | (Phase::Ready, _)
        );
        if !allowed {
            self.close(code::UNKNOWN_FRAME, "unexpected frame in this state");
            return;
        }
        match req {
            Request::PeerProperties { corr, .. } => {
                let properties = vec![
                    ("product".to_owned(), "antre".to_owned()),
                    ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
                    ("platform".to_owned(), "Rust".to_owned()),
                ];
                ServerFrame::PeerPropertiesResponse {
                    corr,
                    code: code::OK,
                    properties,
                }
                .encode(&mut self.out);
                self.phase = Phase::Sasl;
            }
            Request::SaslHandshake { corr } => ServerFrame::SaslHandshakeResponse {
                corr,
                code: code::OK,
                mechanisms: vec!["PLAIN".into()],
            }
            .encode(&mut self.out),
            Request::SaslAuthenticate {
                corr,
                mechanism,
                data,
            } => self.authenticate(corr, &mechanism, &data),
            Request::Tune {
                frame_max,
                heartbeat,
            } => {
                self.frame_max = if frame_max == 0 {
                    FRAME_MAX
                } else {
                    frame_max.min(FRAME_MAX)
                };
                self.heartbeat = heartbeat;
                self.phase = Phase::Open;
            }
            Request::Open { corr, vhost } => self.open(corr, &vhost),
            Request::Close { corr, .. } => {
                self.respond(key::CLOSE, corr, code::OK);
                self.phase = Phase::Closing;
            }
            Request::CloseResponse { .. } => self.phase = Phase::Closing,
            Request::Heartbeat => {}
            other => self.command(other),
        }
    }

    fn authenticate(&mut self, corr: u32, mechanism: &str, data: &[u8]) {
        if mechanism != "PLAIN" {
            self.respond(
                key::SASL_AUTHENTICATE,
                corr,
                code::SASL_MECHANISM_NOT_SUPPORTED,
            );
            return;
        }
        // PLAIN: authzid NUL authcid NUL password.
        let mut parts = data.split(|b| *b == 0).skip(1);
        let user = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let password = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let loopback = self.peer.ip().is_loopback();
        let login = self.broker.authenticate(&user, &password, loopback);
        self.broker.metrics.auth_stream.record(login.is_ok());
        match login {
            Ok(()) => {
                self.user = user;
                self.respond(key::SASL_AUTHENTICATE, corr, code::OK);
                ServerFrame::Tune {
                    frame_max: FRAME_MAX,
                    heartbeat: 60,
                }
                .encode(&mut self.out);
                self.phase = Phase::Tune;
            }
            Err(e) => {
                tracing::info!(peer = %self.peer, "stream login refused: {e}");
                let c = match e {
                    antre_broker::LoginError::LoopbackOnly(_) => {
                        code::SASL_AUTHENTICATION_FAILURE_LOOPBACK
                    }
                    _ => code::AUTHENTICATION_FAILURE,
                };
                self.respond(key::SASL_AUTHENTICATE, corr, c);
                self.phase = Phase::Closing;
            }
        }
    }

    fn open(&mut self, corr: u32, vhost: &str) {
        let found = self.broker.vhost(vhost);
        match found.filter(|_| self.broker.access().vhost_access(&self.user, vhost)) {
            Some(v) => {
                self.vhost = Some(v);
                let properties = vec![
                    ("advertised_host".to_owned(), self.local.ip().to_string()),
                    ("advertised_port".to_owned(), self.local.port().to_string()),
                ];
                ServerFrame::OpenResponse {
                    corr,
                    code: code::OK,
                    properties,
                }
                .encode(&mut self.out);
                self.phase = Phase::Ready;
            }
            None => {
                self.respond(key::OPEN, corr, code::VIRTUAL_HOST_ACCESS_FAILURE);
                self.phase = Phase::Closing;
            }
        }
    }

    /// Checks the user's permission on a stream.
    fn permit(&self, stream: &str, perm: Perm) -> bool {
        let Some(v) = &self.vhost else { return false };
        let access = self.broker.access();
        access
            .check(&self.user, &v.name, ResourceKind::Queue, stream, perm)
            .is_ok()
    }

    fn stream(&self, name: &str) -> Option<Arc<Stream>> {
        self.vhost.as_ref()?.stream(name)
    }

    fn command(&mut self, req: Request) {
        let Some(vhost) = self.vhost.clone() else {
            return;
        };
        match req {
            Request::DeclarePublisher {
                corr,
                publisher_id,
                reference,
                stream,
            } => {
                let c = match self.stream(&stream) {
                    _ if self.publishers.contains_key(&publisher_id) => code::PRECONDITION_FAILED,
                    _ if !self.permit(&stream, Perm::Write) => code::ACCESS_REFUSED,
                    None => code::STREAM_DOES_NOT_EXIST,
                    // A cluster's stream takes publishes on its leader's
                    // node, which the metadata command names (as RabbitMQ's
                    // clients use it).
                    Some(s) if s.replica().is_some_and(|r| !r.leads()) => {
                        code::STREAM_NOT_AVAILABLE
                    }
                    Some(s) => {
                        self.publishers.insert(
                            publisher_id,
                            Publisher {
                                stream: s,
                                reference,
                            },
                        );
                        code::OK
                    }
                };
                self.respond(key::DECLARE_PUBLISHER, corr, c);
            }
            Request::Publish {
                publisher_id,
                messages,
                ..
            } => self.publish(publisher_id, messages),
            Request::QueryPublisherSequence {
                corr,
                reference,
                stream,
            } => {
                let (c, sequence) = match self.stream(&stream) {
                    Some(s) => (code::OK, s.last_sequence(&reference).unwrap_or(0)),
                    None => (code::STREAM_DOES_NOT_EXIST, 0),
                };
                ServerFrame::QueryPublisherSequenceResponse {
                    corr,
                    code: c,
                    sequence,
                }
                .encode(&mut self.out);
            }
            Request::DeletePublisher { corr, publisher_id } => {
                let c = match self.publishers.remove(&publisher_id) {
                    Some(_) => code::OK,
                    None => code::PUBLISHER_DOES_NOT_EXIST,
                };
                self.respond(key::DELETE_PUBLISHER, corr, c);
            }
            Request::Subscribe {
                corr,
                subscription_id,
                stream,
                offset,
                credit,
                properties,
            } => self.subscribe(corr, subscription_id, &stream, offset, credit, &properties),
            Request::Credit {
                subscription_id,
                credit,
            } => match self.subscriptions.get_mut(&subscription_id) {
                Some(sub) => {
                    sub.credit = sub.credit.saturating_add(u32::from(credit));
                    sub.parked = false;
                }
                None => ServerFrame::CreditResponse {
                    code: code::SUBSCRIPTION_ID_DOES_NOT_EXIST,
                    subscription_id,
                }
                .encode(&mut self.out),
            },
            Request::StoreOffset {
                reference,
                stream,
                offset,
            } => {
                if let Some(s) = self
                    .stream(&stream)
                    .filter(|_| self.permit(&stream, Perm::Read))
                {
                    if let Err(e) = s.store_offset(&reference, offset) {
                        tracing::warn!(stream, "storing an offset failed: {e}");
                    } else {
                        add_once(&mut self.dirty, s as Arc<dyn Durable>);
                    }
                }
            }
            Request::QueryOffset {
                corr,
                reference,
                stream,
            } => {
                let (c, offset) = match self.stream(&stream).map(|s| s.query_offset(&reference)) {
                    Some(Some(o)) => (code::OK, o),
                    Some(None) => (code::NO_OFFSET, 0),
                    None => (code::STREAM_DOES_NOT_EXIST, 0),
                };
                ServerFrame::QueryOffsetResponse {
                    corr,
                    code: c,
                    offset,
                }
                .encode(&mut self.out);
            }
            Request::Unsubscribe {
                corr,
                subscription_id,
            } => {
                let c = match self.subscriptions.remove(&subscription_id) {
                    Some(sub) => {
                        self.forget(subscription_id, sub);
                        code::OK
                    }
                    None => code::SUBSCRIPTION_ID_DOES_NOT_EXIST,
                };
                self.respond(key::UNSUBSCRIBE, corr, c);
            }
            Request::Create {
                corr,
                stream,
                arguments,
            } => {
                let c = if self.permit(&stream, Perm::Configure) {
                    admin::create(&self.broker, &vhost, &stream, &arguments)
                } else {
                    code::ACCESS_REFUSED
                };
                self.respond(key::CREATE, corr, c);
            }
            Request::Delete { corr, stream } => {
                let c = if self.permit(&stream, Perm::Configure) {
                    admin::delete(&self.broker, &vhost, &stream)
                } else {
                    code::ACCESS_REFUSED
                };
                self.respond(key::DELETE, corr, c);
            }
            Request::Metadata { corr, streams } => self.metadata(corr, streams),
            Request::Route {
                corr,
                routing_key,
                super_stream,
            } => {
                let (c, streams) = admin::route(&vhost, &super_stream, &routing_key);
                ServerFrame::RouteResponse {
                    corr,
                    code: c,
                    streams,
                }
                .encode(&mut self.out);
            }
            Request::Partitions { corr, super_stream } => {
                let (c, streams) = admin::partitions(&vhost, &super_stream);
                ServerFrame::PartitionsResponse {
                    corr,
                    code: c,
                    streams,
                }
                .encode(&mut self.out);
            }
            Request::ExchangeCommandVersions { corr, commands } => {
                let client_deliver = commands
                    .iter()
                    .find(|(k, _, _)| *k == key::DELIVER)
                    .map_or(1, |(_, _, max)| *max);
                self.deliver_version = client_deliver.clamp(1, 2);
                ServerFrame::ExchangeCommandVersionsResponse {
                    corr,
                    code: code::OK,
                    commands: supported_versions(),
                }
                .encode(&mut self.out);
            }
            Request::StreamStats { corr, stream } => {
                let (c, stats) = match self.stream(&stream) {
                    Some(s) => {
                        let info = s.info();
                        let committed = info.last_chunk_id.map_or(-1, |o| o as i64);
                        let stats = vec![
                            ("first_chunk_id".to_owned(), info.first_offset as i64),
                            ("committed_chunk_id".to_owned(), committed),
                        ];
                        (code::OK, stats)
                    }
                    None => (code::STREAM_DOES_NOT_EXIST, Vec::new()),
                };
                ServerFrame::StreamStatsResponse {
                    corr,
                    code: c,
                    stats,
                }
                .encode(&mut self.out);
            }
            Request::CreateSuperStream {
                corr,
                name,
                partitions,
                binding_keys,
                arguments,
            } => {
                let c = if self.permit(&name, Perm::Configure) {
                    admin::create_super_stream(
                        &self.broker,
                        &vhost,
                        &name,
                        &partitions,
                        &binding_keys,
                        &arguments,
                    )
                } else {
                    code::ACCESS_REFUSED
                };
                self.respond(key::CREATE_SUPER_STREAM, corr, c);
            }
            Request::DeleteSuperStream { corr, name } => {
                let c = if self.permit(&name, Perm::Configure) {
                    admin::delete_super_stream(&self.broker, &vhost, &name)
                } else {
                    code::ACCESS_REFUSED
                };
                self.respond(key::DELETE_SUPER_STREAM, corr, c);
            }
            Request::ConsumerUpdateResponse { corr, offset, .. } => {
                self.consumer_updated(corr, offset)
            }
            _ => {}
        }
    }

    fn metadata(&mut self, corr: u32, streams: Vec<String>) {
        let mut brokers: Vec<(u16, String, u32)> = Vec::new();
        let streams = streams
            .into_iter()
            .map(|name| {
                let (code, leader, replicas) = match self.stream(&name) {
                    None => (code::STREAM_DOES_NOT_EXIST, None, Vec::new()),
                    Some(s) if s.replica().is_none() => {
                        let me = self.broker_ref(&mut brokers, None);
                        (code::OK, me, Vec::new())
                    }
                    Some(_) => {
                        let info = self.vhost.as_ref().and_then(|v| v.quorum_info(&name));
                        let (leader, members) =
                            info.map(|i| (i.leader, i.members)).unwrap_or_default();
                        // Nodes recorded as drained are left out, as
                        // RabbitMQ leaves out nodes in maintenance mode:
                        // they refuse stream clients.
                        let serving = |n: &str| !self.broker.node_drained(n);
                        let leader_ref = leader
                            .as_deref()
                            .filter(|l| serving(l))
                            .and_then(|l| self.broker_ref(&mut brokers, Some(l)));
                        // Replicas on nodes that are down are left out
                        // (as RabbitMQ does): a consumer sent there could
                        // not connect.
                        let running = self.broker.metadata_log().map(|l| l.nodes());
                        let replicas = members
                            .iter()
                            .filter(|m| Some(m.as_str()) != leader.as_deref())
                            .filter(|m| running.as_ref().is_none_or(|r| r.contains(m)))
                            .filter(|m| serving(m))
                            .filter_map(|m| self.broker_ref(&mut brokers, Some(m)))
                            .collect();
                        match leader_ref {
                            Some(l) => (code::OK, Some(l), replicas),
                            None => (code::STREAM_NOT_AVAILABLE, None, replicas),
                        }
                    }
                };
                StreamMetadata {
                    code,
                    leader: leader.unwrap_or(u16::MAX),
                    replicas,
                    name,
                }
            })
            .collect();
        ServerFrame::MetadataResponse {
            corr,
            brokers,
            streams,
        }
        .encode(&mut self.out);
    }

    /// The reference of `node`'s stream listener in a metadata response
    /// (None: this node), added to `brokers` the first time; None if that
    /// node records no stream listener (a cluster's nodes record theirs as
    /// they start).
    fn broker_ref(&self, brokers: &mut Vec<(u16, String, u32)>, node: Option<&str>) -> Option<u16> {
        let me = self.broker.node_name();
        let address = match node.or(me) {
            Some(n) if Some(n) != me => {
                let a = self.broker.listener(n, crate::stream::LISTENER.protocol)?;
                let (host, port) = a.rsplit_once(':')?;
                (host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?)
            }
            _ => (self.local.ip().to_string(), u32::from(self.local.port())),
        };
        if let Some((r, _, _)) = brokers
            .iter()
            .find(|(_, h, p)| (h, p) == (&address.0, &address.1))
        {
            return Some(*r);
        }
        let r = u16::try_from(brokers.len()).ok()?;
        brokers.push((r, address.0, address.1));
        Some(r)
    }

    fn publish(
        &mut self,
        publisher_id: u8,
        messages: Vec<antre_stream_proto::frame::PublishedMessage>,
    ) {
        let Some(p) = self.publishers.get(&publisher_id) else {
            let ids = messages.iter().map(|m| m.publishing_id);
            self.publish_error(publisher_id, ids, code::PUBLISHER_DOES_NOT_EXIST);
            return;
        };
        let records: Vec<PublishedRecord> = messages
            .into_iter()
            .map(|m| PublishedRecord {
                id: m.publishing_id,
                message: match &m.filter_value {
                    Some(v) => record::with_filter_value(&m.message, v),
                    None => m.message,
                },
                filter_value: m.filter_value,
            })
            .collect();
        let stream = Arc::clone(&p.stream);
        let reference = p.reference.clone();
        if stream.replica().is_some_and(|r| !r.leads()) {
            // Its leader moved away: the client learns it as from
            // RabbitMQ (a metadata update), and declares its publisher
            // again where the metadata command now says.
            self.publishers.remove(&publisher_id);
            ServerFrame::MetadataUpdate {
                code: code::STREAM_NOT_AVAILABLE,
                stream: stream.name.clone(),
            }
            .encode(&mut self.out);
            let ids = records.iter().map(|r| r.id);
            self.publish_error(publisher_id, ids, code::STREAM_NOT_AVAILABLE);
            return;
        }
        let mut accepted = std::mem::take(&mut self.accepted);
        let published = if stream.replica().is_some() {
            stream
                .publish_replicated(reference.as_deref(), &records, &mut accepted)
                .map(Some)
        } else {
            stream
                .publish_records(reference.as_deref(), &records, &mut accepted)
                .map(|()| None)
        };
        self.broker
            .metrics
            .stream_protocol
            .received
            .add(records.len() as u64);
        match published {
            Ok(batch) => {
                // Duplicates are confirmed too: the publisher retried one
                // that is already stored.
                let ids = records.iter().map(|r| r.id);
                match self.confirms.iter_mut().find(|(p, _)| *p == publisher_id) {
                    Some((_, list)) => list.extend(ids),
                    None => self.confirms.push((publisher_id, ids.collect())),
                }
                match batch {
                    // The committed batch is what the confirms wait for.
                    Some(batch) => add_once(&mut self.dirty, batch),
                    None if accepted.iter().any(|a| *a) => {
                        add_once(&mut self.dirty, stream as Arc<dyn Durable>);
                    }
                    None => {}
                }
            }
            Err(e) => {
                let ids = records.iter().map(|r| r.id);
                self.publish_error(publisher_id, ids, admin::response_code(&e));
            }
        }
        self.accepted = accepted;
    }

    /// Answers each of `ids` with a publish error of code `c`.
    fn publish_error(&mut self, publisher_id: u8, ids: impl Iterator<Item = u64>, c: u16) {
        ServerFrame::PublishError {
            publisher_id,
            errors: ids.map(|id| (id, c)).collect(),
        }
        .encode(&mut self.out);
    }

    /// Asks the syncer to make this read's publishes durable; their
    /// confirms go out when it answers.
    fn request_confirms(&mut self) {
        if self.confirms.is_empty() && self.dirty.is_empty() {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let confirms = std::mem::take(&mut self.confirms);
        let dirty = std::mem::take(&mut self.dirty);
        match self.broker.syncer() {
            Some(syncer) => {
                self.waiting.insert(token, confirms);
                syncer.request(
                    dirty,
                    Arc::clone(&self.sink) as Arc<dyn DeliverySink>,
                    token,
                );
            }
            None => {
                for d in &dirty {
                    d.flush();
                }
                self.send_confirms(confirms, true);
            }
        }
    }

    fn send_confirms(&mut self, confirms: Vec<(u8, Vec<u64>)>, ok: bool) {
        for (publisher_id, ids) in confirms {
            if ok {
                let counters = &self.broker.metrics.stream_protocol;
                counters.confirmed.add(ids.len() as u64);
                ServerFrame::PublishConfirm { publisher_id, ids }.encode(&mut self.out);
            } else {
                self.publish_error(publisher_id, ids.into_iter(), code::INTERNAL_ERROR);
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Synced(token, ok) => {
                if let Some(confirms) = self.waiting.remove(&token) {
                    self.send_confirms(confirms, ok);
                }
            }
            Event::Ready(id) => {
                if let Some(sub) = self.subscriptions.get_mut(&id) {
                    sub.parked = false;
                }
            }
            Event::Gone(id) => {
                if let Some(sub) = self.subscriptions.remove(&id) {
                    ServerFrame::MetadataUpdate {
                        code: code::STREAM_NOT_AVAILABLE,
                        stream: sub.stream.name.clone(),
                    }
                    .encode(&mut self.out);
                    self.forget(id, sub);
                }
            }
            Event::ConsumerUpdate(id, active) => {
                if let Some(sub) = self.subscriptions.get_mut(&id) {
                    if let Some(flag) = &sub.single_active {
                        flag.store(active, Ordering::Relaxed);
                    }
                    if !active {
                        // Stepping down stops its deliveries at once: on a
                        // cluster another member may be activated as soon
                        // as its lease ends, answered or not.
                        sub.reader = None;
                    }
                    let corr = self.next_corr;
                    self.next_corr = self.next_corr.wrapping_add(1);
                    self.updates.insert(corr, (id, active));
                    ServerFrame::ConsumerUpdate {
                        corr,
                        subscription_id: id,
                        active,
                    }
                    .encode(&mut self.out);
                }
            }
        }
        self.pump_all();
    }

    fn subscribe(
        &mut self,
        corr: u32,
        id: u8,
        stream: &str,
        offset: OffsetSpecification,
        credit: u16,
        properties: &Properties,
    ) {
        if self.subscriptions.contains_key(&id) {
            self.respond(key::SUBSCRIBE, corr, code::SUBSCRIPTION_ID_ALREADY_EXISTS);
            return;
        }
        if !self.permit(stream, Perm::Read) {
            self.respond(key::SUBSCRIBE, corr, code::ACCESS_REFUSED);
            return;
        }
        let Some(s) = self.stream(stream) else {
            self.respond(key::SUBSCRIBE, corr, code::STREAM_DOES_NOT_EXIST);
            return;
        };
        if s.replica().is_some_and(|r| !r.is_member()) {
            // A cluster's stream is read on a node with a replica of it
            // (the metadata command names them), as in RabbitMQ.
            self.respond(key::SUBSCRIBE, corr, code::STREAM_NOT_AVAILABLE);
            return;
        }
        let property = |name: &str| {
            properties
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let group = if property("single-active-consumer") == Some("true") {
            // RabbitMQ groups by consumer name: without one there is no
            // group to join.
            let Some(name) = property("name") else {
                self.respond(key::SUBSCRIBE, corr, code::PRECONDITION_FAILED);
                return;
            };
            Some((s.vhost.clone(), stream.to_owned(), name.to_owned()))
        } else {
            None
        };
        let filter = subscription_filter(properties);
        let replica = s.replica().cloned();
        // A single active consumer reads only once active, from where the
        // client says then.
        let reader = if group.is_some() {
            None
        } else {
            match s.reader(offset_spec(offset)) {
                Ok(mut r) => {
                    r.set_filter(filter.clone());
                    Some(r)
                }
                Err(e) => {
                    self.respond(key::SUBSCRIBE, corr, admin::response_code(&e));
                    return;
                }
            }
        };
        let consumer = self.broker.next_id();
        let position = reader.as_ref().map_or(0, Reader::position);
        let offset = Arc::new(AtomicU64::new(position));
        let single_active = group.as_ref().map(|_| Arc::new(AtomicBool::new(false)));
        let registered = s.add_consumer(StreamConsumer {
            id: consumer,
            tag: id.to_string().into(),
            connection: 0,
            channel: 0,
            sink: Arc::clone(&self.sink) as Arc<dyn DeliverySink>,
            credit: Credit::new(0),
            offset: Arc::clone(&offset),
            single_active: single_active.clone(),
        });
        if let Err(e) = registered {
            self.respond(key::SUBSCRIBE, corr, admin::response_code(&e));
            return;
        }
        self.subscriptions.insert(
            id,
            Subscription {
                stream: s,
                reader,
                consumer,
                offset,
                credit: u32::from(credit),
                parked: false,
                group: group.clone(),
                single_active,
                filter,
            },
        );
        self.respond(key::SUBSCRIBE, corr, code::OK);
        if let Some(key) = group {
            let partition = property("super-stream").and_then(|super_stream| {
                let vhost = self.vhost.as_ref()?;
                let (_, partitions) = admin::partitions(vhost, super_stream);
                partitions.iter().position(|p| p == stream)
            });
            let events = self.events.clone();
            self.groups
                .register(key, partition, self.id, id, events, replica);
        }
    }

    /// The client answered a ConsumerUpdate: an activated subscription
    /// starts reading where it says; one that stepped down stops, and its
    /// group's chosen member takes over.
    fn consumer_updated(&mut self, corr: u32, offset: Option<OffsetSpecification>) {
        let Some((id, active)) = self.updates.remove(&corr) else {
            return;
        };
        let Some(sub) = self.subscriptions.get_mut(&id) else {
            return;
        };
        if active {
            // Told to step down since it was activated (this answer came
            // late): it stays stopped.
            if sub
                .single_active
                .as_ref()
                .is_some_and(|a| !a.load(Ordering::Relaxed))
            {
                return;
            }
            let spec = offset_spec(offset.unwrap_or(OffsetSpecification::Next));
            match sub.stream.reader(spec) {
                Ok(mut r) => {
                    r.set_filter(sub.filter.clone());
                    sub.offset.store(r.position(), Ordering::Relaxed);
                    sub.reader = Some(r);
                    sub.parked = false;
                }
                Err(e) => tracing::warn!(stream = sub.stream.name, "activating a reader: {e}"),
            }
        } else if let Some(key) = &sub.group {
            self.groups.stepped_down(key, self.id, id);
        }
    }

    /// Lets go of a subscription removed from the map.
    fn forget(&mut self, id: u8, sub: Subscription) {
        sub.stream.remove_consumer(sub.consumer);
        if let Some(key) = &sub.group {
            self.groups.remove(key, self.id, id);
        }
    }

    /// Sends chunks to every subscription with credit.
    fn pump_all(&mut self) {
        let ids: Vec<u8> = self.subscriptions.keys().copied().collect();
        for id in ids {
            self.pump(id);
        }
    }

    fn pump(&mut self, id: u8) {
        let events = self.events.clone();
        let version = self.deliver_version;
        let Some(sub) = self.subscriptions.get_mut(&id) else {
            return;
        };
        let mut retried = false;
        while sub.credit > 0 && !sub.parked {
            let Some(reader) = sub.reader.as_mut() else {
                return;
            };
            match reader.next_chunk() {
                Ok(Some(chunk)) => {
                    let (header, body) = without_trailer(&chunk);
                    let committed =
                        (version >= 2).then(|| sub.stream.info().last_chunk_id.unwrap_or(0));
                    encode_deliver(&mut self.out, id, committed, &header, &body);
                    sub.credit -= 1;
                    let records = u64::from(header.num_records);
                    sub.offset
                        .store(header.chunk_id + records, Ordering::Relaxed);
                    sub.stream.count_delivered(records);
                    self.broker.metrics.stream_protocol.delivered.add(records);
                }
                Ok(None) => {
                    let tx = events.clone();
                    let waker = StreamWaker::new(move || {
                        let _ = tx.send(Event::Ready(id));
                    });
                    if !sub.stream.wait(reader.position(), waker) || retried {
                        sub.parked = true;
                    }
                    retried = true;
                }
                Err(e) => {
                    tracing::error!(stream = sub.stream.name, "stream read failed: {e}");
                    sub.parked = true;
                }
            }
        }
    }

    fn teardown(&mut self) {
        let subscriptions: Vec<_> = self.subscriptions.drain().collect();
        for (id, sub) in subscriptions {
            self.forget(id, sub);
        }
        for d in std::mem::take(&mut self.dirty) {
            d.flush();
        }
    }
}

/// A Deliver frame: the chunk's header and body as stored (the header
/// without the trailer, which clients do not read).
fn encode_deliver(
    out: &mut BytesMut,
    subscription_id: u8,
    committed: Option<u64>,
    header: &antre_stream_proto::chunk::ChunkHeader,
    body: &Bytes,
) {
    let size = 2 + 2 + 1 + if committed.is_some() { 8 } else { 0 } + HEADER_SIZE + body.len();
    out.reserve(4 + size);
    out.put_u32(size as u32);
    out.put_u16(key::DELIVER);
    out.put_u16(if committed.is_some() { 2 } else { 1 });
    out.put_u8(subscription_id);
    if let Some(c) = committed {
        out.put_u64(c);
    }
    header.encode(out);
    out.put_slice(body);
}

/// The broker's offset spec for the protocol's.
fn offset_spec(offset: OffsetSpecification) -> OffsetSpec {
    match offset {
        OffsetSpecification::First => OffsetSpec::First,
        OffsetSpecification::Last => OffsetSpec::Last,
        OffsetSpecification::Next => OffsetSpec::Next,
        OffsetSpecification::Offset(o) => OffsetSpec::Offset(o),
        OffsetSpecification::Timestamp(t) => OffsetSpec::Timestamp(t.max(0) as u64),
    }
}

/// The filter a subscription's properties ask for, as RabbitMQ reads them:
/// every `filter.*` property is a value, `match-unfiltered: true` adds the
/// messages without one. The broker skips chunks that hold none of them;
/// the client filters the messages of the chunks it gets.
fn subscription_filter(properties: &Properties) -> Option<ChunkFilter> {
    let values: Vec<String> = properties
        .iter()
        .filter(|(k, _)| k.starts_with("filter."))
        .map(|(_, v)| v.clone())
        .collect();
    if values.is_empty() {
        return None;
    }
    let match_unfiltered = properties
        .iter()
        .any(|(k, v)| k == "match-unfiltered" && v == "true");
    Some(ChunkFilter {
        values,
        match_unfiltered,
    })
}

/// The command versions antre serves.
fn supported_versions() -> Vec<(u16, u16, u16)> {
    let mut v: Vec<(u16, u16, u16)> = (key::DECLARE_PUBLISHER..=key::DELETE_SUPER_STREAM)
        .map(|k| (k, 1, 1))
        .collect();
    for c in &mut v {
        if c.0 == key::PUBLISH || c.0 == key::DELIVER {
            c.2 = 2;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(entries: &[(&str, &str)]) -> Properties {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn subscription_properties_give_the_filter_as_rabbitmq_reads_them() {
        assert_eq!(subscription_filter(&props(&[("name", "c")])), None);
        let f = subscription_filter(&props(&[
            ("filter.0", "emea"),
            ("filter.1", "apac"),
            ("match-unfiltered", "false"),
        ]))
        .expect("a filter");
        assert_eq!(
            (f.values.clone(), f.match_unfiltered),
            (vec!["emea".into(), "apac".into()], false)
        );
        let f = subscription_filter(&props(&[
            ("filter.x", "emea"),
            ("match-unfiltered", "true"),
        ]))
        .expect("a filter");
        assert!(f.match_unfiltered);
        // match-unfiltered alone is no filter (RabbitMQ ignores it too).
        assert_eq!(
            subscription_filter(&props(&[("match-unfiltered", "true")])),
            None
        );
    }
}
