//! An AMQP session without I/O: the whole protocol conversation of one
//! client connection, from the protocol header to connection.close.
//!
//! Like quinn-proto's `Connection`, a [`Session`] never touches a socket or
//! a timer. The server feeds it the bytes it read ([`Session::receive`]),
//! the events queues and the syncer pushed ([`Session::event`]) and the
//! passing of time ([`Session::heartbeat_tick`],
//! [`Session::check_consumer_timeouts`]); the session answers with bytes to
//! write ([`Session::output`]), facts the server acts on
//! ([`Session::poll_effect`]) and its [`SessionState`]. So a whole
//! conversation (handshake, channels, content assembly, errors, close) is
//! testable in a unit test, and the server keeps only I/O, delivery
//! coalescing and timers.
//!
//! - [`handshake`]: protocol header, start/start-ok with login, tune, open;
//! - [`frames`]: channel slots, content assembly, channel-0 methods and
//!   turning refusals into channel or connection exceptions.

mod frames;
mod handshake;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antre_amqp::method::*;
use antre_amqp::{encode_frame, encode_method, FieldTable, Frame, Method};
use bytes::BytesMut;

use crate::access::limits::ConnectionPermit;
use crate::alarm::Resource;
use crate::broker::Broker;
use crate::channel::{ChannelContext, Outgoing};
use crate::queue::{Delivery, DeliverySink, OutputWindow, DELIVERY_OVERHEAD};

pub use handshake::{server_properties, ServerIdentity};

/// What a session offers and accepts (the server's settings).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest frame offered in connection.tune.
    pub frame_max: u32,
    /// Most channels offered in connection.tune.
    pub channel_max: u16,
    /// Heartbeat interval offered in connection.tune, in seconds.
    pub heartbeat: u16,
    /// Largest message body accepted, in bytes.
    pub max_message_size: u64,
    /// The consumer timeout for queues without `x-consumer-timeout`.
    pub consumer_timeout: Option<Duration>,
    /// Most connections open on the node at once (`None`: no limit);
    /// connection.open past it is refused with 530, as RabbitMQ refuses
    /// past its `connection_max`.
    pub max_connections: Option<u64>,
    /// Bytes of deliveries that may be on their way to the client (handed
    /// over by queues, not yet written) before queues hold further ones
    /// (see [`OutputWindow`]); 0: unlimited.
    pub delivery_buffer_limit: u64,
    /// How the server presents itself in connection.start.
    pub identity: ServerIdentity,
}

/// Facts about the peer that the session's rules depend on.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Connected from a loopback address (`guest` may log in only so).
    pub loopback: bool,
    /// For logs.
    pub label: String,
    /// What SASL EXTERNAL may log in as.
    pub external: ExternalIdentity,
}

/// The identity a connection established outside AMQP, for SASL EXTERNAL
/// (RabbitMQ's rabbitmq_auth_mechanism_ssl): the verified TLS client
/// certificate's subject common name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ExternalIdentity {
    /// EXTERNAL is not offered: not TLS, or client certificates are not
    /// verified on this listener.
    #[default]
    Unavailable,
    /// EXTERNAL is offered but the client presented no certificate, so a
    /// login with it is refused (RabbitMQ offers it anyway, for a clearer
    /// refusal than a missing mechanism).
    NoCertificate,
    /// The client presented a verified certificate.
    Certificate {
        /// Its subject's common name(s), joined with `,`; `None` if it has
        /// none.
        common_name: Option<String>,
    },
}

/// Where the conversation is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// Before connection.open-ok.
    Handshake,
    /// Open: channels may be used.
    Open,
    /// We sent connection.close and wait for close-ok; everything else the
    /// client sends is discarded.
    Closing,
    /// The conversation is over; the server writes what is left and closes
    /// the socket.
    Closed {
        /// The client closed (we answered close-ok): wait for it to close
        /// the socket first, so our unread bytes do not turn into a reset
        /// that could lose the close-ok.
        linger: bool,
    },
}

/// Something the server must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// connection.open succeeded.
    Opened(OpenedConnection),
    /// A channel was opened.
    ChannelOpened(u16),
    /// A channel is gone.
    ChannelClosed(u16),
    /// A channel entered confirm or tx mode.
    ChannelMode(u16, crate::channel::PublishMode),
}

/// Who opened a connection, and what was negotiated.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedConnection {
    /// The user who logged in.
    pub user: String,
    /// The vhost opened.
    pub vhost: String,
    /// The SASL mechanism used.
    pub mechanism: String,
    /// The client's properties (product, version, capabilities...).
    pub client_properties: FieldTable,
    /// Negotiated frame_max.
    pub frame_max: u32,
    /// Negotiated channel_max.
    pub channel_max: u16,
    /// Negotiated heartbeat, in seconds (0: none).
    pub heartbeat: u16,
}

/// What queues and the syncer tell a session, through its [`EventSink`].
#[derive(Debug)]
pub enum SessionEvent {
    /// A delivery for a consumer of a channel.
    Deliver(u16, Delivery),
    /// A queue cancelled a consumer of a channel (it was deleted).
    Cancel(u16, String),
    /// A sync a channel asked for finished (`ok` false: the disk failed).
    Synced(u16, u64, bool),
    /// A stream a consumer of a channel waits on has a new chunk.
    StreamReady(u16),
    /// A delivery from a queue another cluster node owns.
    RemoteDeliver(u16, crate::remote::RemoteDelivery),
}

/// Carries events to the session's owner (in the server, an unbounded
/// channel into the connection's task), never blocking the sender.
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// Hands an event over; gives it back if the session is gone.
    fn send(&self, event: SessionEvent) -> Result<(), Box<SessionEvent>>;
}

/// The sink a queue delivers into for the consumers of one channel.
#[derive(Debug)]
struct ChannelSink {
    channel: u16,
    events: Arc<dyn EventSink>,
    /// The connection's output window, shared by all its channels.
    window: Arc<OutputWindow>,
}

/// What a delivery costs in the output window.
fn delivery_cost(delivery: &Delivery) -> u64 {
    delivery.entry.message.body.len() as u64 + DELIVERY_OVERHEAD
}

impl DeliverySink for ChannelSink {
    fn deliver(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
        let cost = delivery_cost(&delivery);
        self.window.take(cost);
        match self
            .events
            .send(SessionEvent::Deliver(self.channel, delivery))
        {
            Ok(()) => Ok(()),
            Err(back) => {
                self.window.release(cost);
                match *back {
                    SessionEvent::Deliver(_, d) => Err(Box::new(d)),
                    _ => Ok(()),
                }
            }
        }
    }

    fn has_room(&self) -> bool {
        self.window.has_room()
    }

    fn cancel(&self, consumer_tag: &str) {
        let event = SessionEvent::Cancel(self.channel, consumer_tag.to_owned());
        let _ = self.events.send(event);
    }

    fn synced(&self, token: u64, ok: bool) {
        let _ = self
            .events
            .send(SessionEvent::Synced(self.channel, token, ok));
    }

    fn deliver_remote(
        &self,
        delivery: crate::remote::RemoteDelivery,
    ) -> Result<(), Box<crate::remote::RemoteDelivery>> {
        match self
            .events
            .send(SessionEvent::RemoteDeliver(self.channel, delivery))
        {
            Ok(()) => Ok(()),
            Err(back) => match *back {
                SessionEvent::RemoteDeliver(_, d) => Err(Box::new(d)),
                _ => Ok(()),
            },
        }
    }
}

/// An output buffer up to this size is kept whatever its use.
const OUTPUT_KEEP: usize = 256;

/// The protocol conversation of one client connection.
#[derive(Debug)]
pub struct Session {
    id: u64,
    broker: Arc<Broker>,
    config: SessionConfig,
    peer: Peer,
    events: Arc<dyn EventSink>,
    state: SessionState,
    handshake: handshake::Step,
    /// Who logged in, until connection.open completes it.
    opened: Option<OpenedConnection>,
    /// Set by connection.open.
    ctx: Option<ChannelContext>,
    /// The connection's place in the node's, vhost's and user's
    /// connection counts, from connection.open to teardown.
    permit: Option<ConnectionPermit>,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    /// The client understands basic.cancel from the server.
    cancel_notify: bool,
    /// The client understands connection.blocked/unblocked.
    blocked_notify: bool,
    channels: HashMap<u16, frames::Slot>,
    /// Scratch space for a channel's answers before they are encoded.
    out: Vec<Outgoing>,
    wbuf: BytesMut,
    /// Bytes of `wbuf` that are deliveries (the rest must go out at once).
    delivery_bytes: usize,
    /// A consumer's prefetch window filled since the last write.
    window_full: bool,
    /// Bytes of deliveries queues may hand over before they wait for this
    /// connection to write.
    output_window: Arc<OutputWindow>,
    /// Output-window bytes of the deliveries in `wbuf`, freed once written.
    output_pending: u64,
    /// Output-window bytes of deliveries a channel holds behind a sync of
    /// durable definitions (see `channel::held`), per channel: they count
    /// until written like any other, or a large prefetch could pile a
    /// backlog into held output.
    held_window: HashMap<u16, u64>,
    effects: VecDeque<Effect>,
    /// The client has published: an alarm blocks it.
    has_published: bool,
    blocked: bool,
    last_recv: Instant,
    last_sent: Instant,
}

impl Session {
    /// A session for a client that just connected; its channels' deliveries
    /// and sync answers come back through `events`.
    pub fn new(
        broker: Arc<Broker>,
        config: SessionConfig,
        peer: Peer,
        events: Arc<dyn EventSink>,
        now: Instant,
    ) -> Session {
        let id = broker.next_id();
        let output_window = OutputWindow::new(
            config.delivery_buffer_limit,
            Arc::clone(&broker.output_budget),
        );
        Session {
            id,
            broker,
            frame_max: config.frame_max,
            output_window,
            config,
            peer,
            events,
            state: SessionState::Handshake,
            handshake: handshake::Step::ProtocolHeader,
            opened: None,
            ctx: None,
            permit: None,
            channel_max: 0,
            heartbeat: 0,
            cancel_notify: false,
            blocked_notify: false,
            channels: HashMap::new(),
            out: Vec::new(),
            // Grown by what is written, so idle connections stay small.
            wbuf: BytesMut::new(),
            delivery_bytes: 0,
            window_full: false,
            output_pending: 0,
            held_window: HashMap::new(),
            effects: VecDeque::new(),
            has_published: false,
            blocked: false,
            last_recv: now,
            last_sent: now,
        }
    }

    /// The connection's id (for exclusive queues and the registry).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// An open channel's figures (for the registry, once it opened).
    pub fn channel_stats(&self, id: u16) -> Option<Arc<crate::channel::ChannelStats>> {
        let channel = self.channels.get(&id)?.channel()?;
        Some(Arc::clone(channel.stats()))
    }

    /// Where the conversation is.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The negotiated heartbeat interval (None: no heartbeats).
    pub fn heartbeat(&self) -> Option<Duration> {
        (self.heartbeat > 0).then(|| Duration::from_secs(u64::from(self.heartbeat)))
    }

    /// Whether the client has published (and so is blocked by an alarm).
    pub fn has_published(&self) -> bool {
        self.has_published
    }

    /// Handles every complete frame in `input`, bytes the client sent
    /// that arrived at `now`; an incomplete frame stays in `input`.
    pub fn receive(&mut self, input: &mut BytesMut, now: Instant) {
        self.last_recv = now;
        let before = input.len();
        loop {
            let progressed = match self.state {
                SessionState::Handshake => self.handshake_step(input),
                SessionState::Open | SessionState::Closing => self.next_frame(input),
                SessionState::Closed { .. } => {
                    input.clear();
                    false
                }
            };
            if !progressed {
                break;
            }
        }
        // What clients send is what fills memory: counting it lets the
        // memory alarm be raised between two periodic readings.
        let taken = before.saturating_sub(input.len()) as u64;
        self.broker.alarms.spend(Resource::Memory, taken);
        self.flush_confirms();
    }

    /// Handles an event a queue or the syncer pushed to one of the
    /// session's channels.
    pub fn event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Synced(id, token, ok) => self.on_synced(id, token, ok),
            SessionEvent::Deliver(id, delivery) => self.deliver(id, delivery),
            SessionEvent::Cancel(id, tag) => self.consumer_cancelled(id, &tag),
            SessionEvent::StreamReady(id) => self.stream_ready(id),
            SessionEvent::RemoteDeliver(id, delivery) => self.deliver_remote(id, delivery),
        }
    }

    /// Bytes to write to the client.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Whether the output holds more than deliveries (method replies,
    /// confirms, heartbeats), or a consumer's window is full: either way it
    /// should be written now rather than held for more deliveries.
    pub fn urgent(&self) -> bool {
        self.window_full || self.wbuf.len() > self.delivery_bytes
    }

    /// The server wrote the whole output at `now`.
    pub fn wrote(&mut self, now: Instant) {
        let used = self.wbuf.len();
        self.wbuf.clear();
        if used < self.wbuf.capacity() / 4 && self.wbuf.capacity() > OUTPUT_KEEP {
            // Mostly unused: a burst grew it, or the handshake did on an
            // idle connection. Shrink to twice what was written, so steady
            // output settles at one size instead of reallocating each time.
            self.wbuf = match used * 2 {
                0..=OUTPUT_KEEP => BytesMut::new(),
                keep => BytesMut::with_capacity(keep),
            };
        }
        self.delivery_bytes = 0;
        self.window_full = false;
        self.last_sent = now;
        let written = std::mem::take(&mut self.output_pending);
        self.free_output(written);
    }

    /// Returns output-window bytes; if a queue was held back for want of
    /// them, lets every consumer's queue dispatch again.
    fn free_output(&mut self, bytes: u64) {
        if self.output_window.release(bytes) {
            for slot in self.channels.values() {
                if let Some(channel) = slot.channel() {
                    channel.kick_consumers();
                }
            }
        }
    }

    /// The next fact the server must act on.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Called twice per heartbeat interval: sends a heartbeat if nothing
    /// else went out for half an interval, and gives up on a client silent
    /// for two intervals (while we read it: a blocked client's heartbeats go
    /// unseen).
    pub fn heartbeat_tick(&mut self, now: Instant) {
        let Some(beat) = self.heartbeat() else { return };
        if self.state != SessionState::Open {
            return;
        }
        if !self.blocked && now.saturating_duration_since(self.last_recv) > beat * 2 {
            tracing::info!(
                peer = self.peer.label,
                "missed heartbeats from client, closing"
            );
            self.teardown();
            self.wbuf.clear();
            self.state = SessionState::Closed { linger: false };
            return;
        }
        if now.saturating_duration_since(self.last_sent) >= beat / 2 {
            encode_frame(&Frame::Heartbeat, &mut self.wbuf);
        }
    }

    /// Closes (406) every channel holding a delivery unacked for longer
    /// than its consumer timeout; closing requeues its deliveries.
    pub fn check_consumer_timeouts(&mut self) {
        let now = self.broker.clock().now_ms();
        let default = self.config.consumer_timeout.map(|d| d.as_millis() as u64);
        let timed_out: Vec<_> = self
            .channels
            .iter()
            .filter_map(|(&id, slot)| {
                let e = slot.channel()?.check_consumer_timeout(now, default).err()?;
                Some((id, e))
            })
            .collect();
        for (id, e) in timed_out {
            tracing::warn!(peer = self.peer.label, channel = id, "{e}");
            self.fail_channel(id, e, (0, 0));
        }
    }

    /// Applies the broker's resource alarms (see [`Session::set_alarm`]).
    /// Returns whether the server should stop reading the client.
    pub fn apply_alarms(&mut self) -> bool {
        if let Some(reason) = self.broker.alarms.state().reason() {
            return self.set_alarm(Some(reason));
        }
        // In a cluster, a full link to a node this connection forwards
        // publishes to blocks it too (and only it: other clients of this
        // node keep publishing to its own queues).
        if self.has_published && self.broker.remote_queues().is_some() {
            let congested = self.channels.values().find_map(|slot| match slot {
                frames::Slot::Open { channel, .. } => channel.forward_congested(),
                frames::Slot::Closing => None,
            });
            if let Some(owner) = congested {
                let reason = format!("the cluster link to node '{owner}' is full");
                return self.set_alarm(Some(&reason));
            }
        }
        self.set_alarm(None)
    }

    /// Blocks or unblocks the client because of a resource alarm; only a
    /// client that has published is blocked, and one that understands
    /// connection.blocked is told. Returns whether the server should stop
    /// reading it.
    pub fn set_alarm(&mut self, alarm: Option<&str>) -> bool {
        let block = alarm.is_some() && self.has_published;
        if block != self.blocked {
            self.blocked = block;
            if self.blocked_notify && self.state == SessionState::Open {
                let method: Method = match alarm {
                    Some(reason) if block => ConnectionBlocked {
                        reason: reason.to_owned(),
                    }
                    .into(),
                    _ => ConnectionUnblocked {}.into(),
                };
                encode_method(0, &method, &mut self.wbuf);
            }
        }
        self.blocked
    }

    /// Closes the connection from the server's side (shutdown, an operator,
    /// a missed deadline): releases everything and sends connection.close.
    pub fn close(&mut self, code: u16, text: String) {
        if matches!(
            self.state,
            SessionState::Closing | SessionState::Closed { .. }
        ) {
            return;
        }
        self.close_with(code, text, (0, 0));
    }

    /// Releases everything the connection held: unacked messages go back to
    /// their queues, consumers are cancelled, exclusive queues are deleted.
    /// Events that arrive afterwards return their deliveries to the queues.
    pub fn teardown(&mut self) {
        let held: u64 = self.held_window.drain().map(|(_, bytes)| bytes).sum();
        self.free_output(held);
        for (_, slot) in self.channels.drain() {
            if let Some(mut channel) = slot.into_channel() {
                channel.close();
            }
        }
        if let Some(ctx) = &self.ctx {
            ctx.vhost.connection_closed(self.id);
        }
        self.permit = None;
    }
}
