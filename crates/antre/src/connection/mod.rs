//! One client connection's I/O: the socket, timers and delivery
//! coalescing around a pure [`Session`] that holds the whole protocol
//! conversation.
//!
//! A connection is one task that owns its socket, its session and an
//! unbounded queue of events (deliveries, cancellations and sync answers
//! that queues and the syncer push to its channels). Each wake-up hands the
//! session everything the read brought in, then up to a batch of pending
//! events, then writes its output in one syscall (unless coalescing holds
//! deliveries for a moment): under load, far fewer than one syscall per
//! message.
//!
//! The socket is any byte stream: a TCP stream for amqp, a TLS stream over
//! one for amqps (after its handshake), with the same code path for both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use antre_amqp::reply;
use antre_broker::alarm::AlarmState;
use antre_broker::session::{
    self, Effect, ExternalIdentity, OpenedConnection, Peer, Session, SessionConfig, SessionEvent,
    SessionState,
};
use antre_broker::Broker;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::{timeout, Instant, Interval, MissedTickBehavior};

use crate::config::{Config, ServerIdentity, RABBITMQ_VERSION};
use crate::registry::{ConnectionEntry, Registry};
use crate::sockets::SocketSlot;
use crate::tls::TlsInfo;

mod budget;
mod coalesce;
mod events;

pub use budget::{BufferBudget, Buffers};

/// What the read buffers of all connections may hold together beyond
/// 8 KiB each (see [`BufferBudget`]).
pub const READ_BUFFERS_LIMIT: usize = 16 * 1024 * 1024;

/// What the output buffers all connections keep between writes may hold
/// together beyond 16 KiB each (see [`BufferBudget`]).
pub const WRITE_BUFFERS_LIMIT: usize = 16 * 1024 * 1024;

/// How long a client has for the handshake, as in RabbitMQ.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for close-ok after sending connection.close, and for
/// the client to close its socket after our close-ok.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often channels are checked for deliveries past their consumer
/// timeout (RabbitMQ checks once a minute; timeouts are minutes long).
const CONSUMER_TIMEOUT_CHECK: Duration = Duration::from_secs(1);
/// Events handled per wake-up before the output is written, so one busy
/// queue cannot make a connection buffer without bound.
const EVENT_BATCH: usize = 256;

/// Why the loop ended.
enum End {
    /// The session is closed: write what is left.
    Closed,
    /// The socket is gone or a deadline passed: nothing more to say.
    Gone,
}

/// An accepted client socket, plain or past its TLS handshake.
#[derive(Debug)]
pub struct Accepted<S> {
    /// The byte stream.
    pub stream: S,
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address it connected to.
    pub local: SocketAddr,
    /// The TLS session, on amqps.
    pub tls: Option<TlsInfo>,
    /// SASL EXTERNAL is offered: amqps with client certificates verified.
    pub external: bool,
    /// Its place in the node's socket budget.
    pub slot: SocketSlot,
}

/// The read buffer a connection starts reading into once bytes flow.
const READ_MIN: usize = 1024;
/// The largest a read buffer grows for speed (a frame larger than it
/// still grows it as far as the frame needs).
const READ_MAX: usize = 256 * 1024;
/// What a quiet connection reads at most into a stack buffer while it
/// holds no read buffer (see [`read_into`]).
const QUIET_READ: usize = 4096;

/// One client connection over the byte stream `S`.
#[derive(Debug)]
pub struct Connection<S> {
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<TlsInfo>,
    registry: Arc<Registry>,
    /// Set once the handshake is done and the connection is registered.
    entry: Option<Arc<ConnectionEntry>>,
    stream: S,
    /// Bytes read and not yet handled. Empty, with no allocation, while the
    /// connection is quiet (see [`read_into`]).
    rbuf: BytesMut,
    /// The size the read buffer grew to while the client sent fast: what
    /// it gets at once when a burst starts again.
    read_hint: usize,
    /// The last read emptied the socket (it did not fill the buffer).
    drained: bool,
    /// Its part of the node's read-buffer budget.
    read_share: budget::BufferShare,
    /// Its share of the node's budget for output buffers kept between
    /// writes.
    write_share: budget::BufferShare,
    session: Session,
    events: events::Inbox,
    /// Changes of the resource alarms, to wake up a blocked client.
    alarms: watch::Receiver<AlarmState>,
    /// False while a resource alarm blocks this (publishing) client.
    reading: bool,
    /// Holds deliveries to a busy connection for one write.
    coalesce: coalesce::Coalescer,
    /// Heartbeats, once negotiated.
    heartbeat: Option<Interval>,
    /// Its place in the socket budget: until the handshake is done, the
    /// budget may close it to make room.
    slot: SocketSlot,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps an accepted socket.
    pub fn new(
        accepted: Accepted<S>,
        broker: Arc<Broker>,
        config: Arc<Config>,
        registry: Arc<Registry>,
        alarms: watch::Receiver<AlarmState>,
        buffers: &Buffers,
    ) -> Connection<S> {
        let Accepted {
            stream,
            peer,
            local,
            tls,
            external,
            slot,
        } = accepted;
        let (events, events_tx) = events::Inbox::new();
        let session = Session::new(
            broker,
            session_config(&config),
            Peer {
                loopback: peer.ip().to_canonical().is_loopback(),
                label: peer.to_string(),
                external: external_identity(tls.as_ref(), external),
            },
            Arc::new(events_tx),
            Instant::now().into_std(),
        );
        let coalesce =
            coalesce::Coalescer::new(config.delivery_coalesce, config.delivery_coalesce_rate);
        Connection {
            peer,
            local,
            tls,
            registry,
            entry: None,
            stream,
            rbuf: BytesMut::new(),
            read_hint: READ_MIN,
            drained: true,
            read_share: budget::BufferShare::new(Arc::clone(&buffers.read)),
            write_share: budget::BufferShare::new(Arc::clone(&buffers.write)),
            session,
            events,
            alarms,
            reading: true,
            coalesce,
            heartbeat: None,
            slot,
        }
    }

    /// Runs the connection to its end.
    pub async fn serve(mut self, mut shutdown: watch::Receiver<bool>) {
        let end = self.run(&mut shutdown).await;
        // Whatever way it ended, the connection's resources go back now
        // (the session already released them if it closed).
        self.session.teardown();
        if let Some(entry) = self.entry.take() {
            self.registry.unregister(entry.id);
        }
        // Deliveries still queued for us never reached the client.
        self.events.close();
        while let Some(event) = self.events.next() {
            self.session.event(event);
        }
        if let End::Closed = end {
            let linger = matches!(self.session.state(), SessionState::Closed { linger: true });
            if self.write().await.is_ok() && linger {
                let _ = timeout(CLOSE_TIMEOUT, self.drain_until_eof()).await;
            }
        }
        let _ = self.stream.shutdown().await;
    }

    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> End {
        let handshake_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut close_deadline = None;
        let mut timeouts = tokio::time::interval(CONSUMER_TIMEOUT_CHECK);
        timeouts.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            while let Some(effect) = self.session.poll_effect() {
                self.apply(effect);
            }
            self.update_alarm();
            let open = match self.session.state() {
                SessionState::Open => true,
                SessionState::Handshake => false,
                SessionState::Closing => {
                    close_deadline.get_or_insert_with(|| Instant::now() + CLOSE_TIMEOUT);
                    false
                }
                SessionState::Closed { .. } => return End::Closed,
            };
            let held = open
                && self
                    .coalesce
                    .hold(self.session.output().len(), self.session.urgent());
            if !held && self.write().await.is_err() {
                return End::Gone;
            }
            let handshaking = *self.session.state() == SessionState::Handshake;
            let closing = close_deadline.unwrap_or(handshake_deadline);
            let holding = self.coalesce.holding();
            let beating = self.heartbeat.is_some();
            if self.rbuf.is_empty() && self.drained {
                // Everything read was handled and the socket had no more:
                // wait without a buffer. Thousands of idle connections, or
                // publishers waiting for their confirms, hold none; frames
                // still in use (bodies in queues) keep only their own bytes.
                self.rbuf = BytesMut::new();
                self.read_share.release();
            } else if self.rbuf.capacity() - self.rbuf.len() < READ_MIN / 4 {
                self.rbuf.reserve(READ_MIN);
            }
            let room = self.rbuf.capacity() - self.rbuf.len();
            tokio::select! {
                read = read_into(&mut self.stream, &mut self.rbuf, &mut self.read_share, self.read_hint), if self.reading => match read {
                    Ok(0) | Err(_) => return End::Gone,
                    Ok(n) => {
                        // A read that filled the buffer means the client
                        // sends faster than one small buffer per wake-up:
                        // read more at once from now on.
                        self.drained = n < room || (room == 0 && n < QUIET_READ);
                        // Past 8 KiB, as far as the node's read budget allows.
                        let cap = self.rbuf.capacity();
                        if n == room && cap < READ_MAX {
                            let allowed = self.read_share.allow((2 * cap).min(READ_MAX));
                            if allowed > cap {
                                self.rbuf.reserve(allowed - self.rbuf.len());
                                self.read_hint = self.read_hint.max(allowed);
                            }
                        }
                        if let Some(entry) = &self.entry {
                            entry.received(n);
                        }
                        self.session.receive(&mut self.rbuf, Instant::now().into_std());
                    }
                },
                () = self.events.ready() => {
                    for _ in 0..EVENT_BATCH {
                        match self.events.next() {
                            Some(event) => self.event(event),
                            None => break,
                        }
                    }
                }
                _ = self.alarms.changed() => {}
                _ = self.coalesce.expired(), if holding => {}
                _ = tick(&mut self.heartbeat), if beating => {
                    self.session.heartbeat_tick(Instant::now().into_std());
                }
                _ = timeouts.tick(), if open => self.session.check_consumer_timeouts(),
                _ = tokio::time::sleep_until(handshake_deadline), if handshaking => return End::Gone,
                _ = self.slot.evicted(), if handshaking => return End::Gone,
                _ = tokio::time::sleep_until(closing), if close_deadline.is_some() => return End::Gone,
                _ = shutdown.changed() => {
                    self.session.close(reply::CONNECTION_FORCED, "CONNECTION_FORCED - broker shutting down".into());
                }
                reason = forced_close(self.entry.as_deref()) => {
                    self.session.close(reply::CONNECTION_FORCED, format!("CONNECTION_FORCED - {reason}"));
                }
            }
        }
    }

    fn event(&mut self, event: SessionEvent) {
        if let SessionEvent::Deliver(..) = event {
            self.coalesce.delivered(1);
        }
        self.session.event(event);
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Opened(opened) => self.opened(opened),
            Effect::ChannelOpened(id) => {
                if let (Some(entry), Some(stats)) = (&self.entry, self.session.channel_stats(id)) {
                    entry.channel_opened(id, stats);
                }
            }
            Effect::ChannelMode(id, mode) => {
                if let Some(entry) = &self.entry {
                    entry.channel_mode(id, mode);
                }
            }
            Effect::ChannelClosed(id) => {
                if let Some(entry) = &self.entry {
                    entry.channel_closed(id);
                }
            }
        }
    }

    /// The handshake is done: the connection joins the registry, and
    /// heartbeats start if the client agreed to them.
    fn opened(&mut self, o: OpenedConnection) {
        let entry = Arc::new(ConnectionEntry::new(
            self.session.id(),
            self.peer,
            self.local,
            o.user,
            o.vhost,
            o.mechanism,
            o.client_properties,
            (o.frame_max, o.channel_max, o.heartbeat),
            self.tls.take(),
        ));
        self.registry.register(Arc::clone(&entry));
        self.entry = Some(entry);
        self.slot.busy();
        if let Some(beat) = self.session.heartbeat() {
            let mut ticker = tokio::time::interval(beat / 2);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            self.heartbeat = Some(ticker);
        }
    }

    /// Stops reading a publishing connection while a resource alarm is raised
    /// (RabbitMQ's flow of blocking); the session tells clients that
    /// understand connection.blocked.
    fn update_alarm(&mut self) {
        let blocked = self.session.apply_alarms();
        self.reading = !blocked;
        if let Some(entry) = &self.entry {
            entry
                .blocked
                .store(blocked, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes the session's output.
    async fn write(&mut self) -> std::io::Result<()> {
        let out = self.session.output();
        if out.is_empty() {
            return Ok(());
        }
        if let Some(entry) = &self.entry {
            entry
                .send_pend
                .store(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.stream.write_all(out).await?;
        // A TLS stream holds the records it could not write at once until
        // flushed; for TCP this does nothing.
        self.stream.flush().await?;
        if let Some(entry) = &self.entry {
            entry.sent(out.len());
        }
        self.session.wrote(Instant::now().into_std());
        let kept = self.session.output().capacity();
        if !self.write_share.keep(kept) {
            // Past the node's budget: give the (empty) buffer back and grow
            // a new one for the next write.
            *self.session.output() = BytesMut::new();
        }
        Ok(())
    }

    async fn drain_until_eof(&mut self) {
        self.rbuf.clear();
        while let Ok(n) = self.stream.read_buf(&mut self.rbuf).await {
            if n == 0 {
                return;
            }
            self.rbuf.clear();
        }
    }
}

/// What SASL EXTERNAL can log in with: offered only where client
/// certificates are verified, as RabbitMQ's rabbitmq_auth_mechanism_ssl
/// offers it only on TLS connections.
fn external_identity(tls: Option<&TlsInfo>, offered: bool) -> ExternalIdentity {
    match tls {
        Some(info) if offered => match &info.peer {
            Some(cert) => ExternalIdentity::Certificate {
                common_name: cert.common_name.clone(),
            },
            None => ExternalIdentity::NoCertificate,
        },
        _ => ExternalIdentity::Unavailable,
    }
}

/// How the server presents itself in connection.start.
fn server_identity(identity: ServerIdentity) -> session::ServerIdentity {
    let antre = session::ServerIdentity::default();
    match identity {
        ServerIdentity::Antre => antre,
        // For clients that choose behaviour from product and version
        // (docs/compatibility.md): the RabbitMQ release antre's replies are
        // checked against, with the truth in `information`.
        ServerIdentity::RabbitMq => session::ServerIdentity {
            product: "RabbitMQ".into(),
            version: RABBITMQ_VERSION.into(),
            information: format!(
                "antre {}, an AMQP 0-9-1 message broker, presenting itself as RabbitMQ {RABBITMQ_VERSION}",
                antre.version
            ),
            ..antre
        },
    }
}

/// The session's settings, from the server's.
fn session_config(config: &Config) -> SessionConfig {
    SessionConfig {
        frame_max: config.frame_max,
        channel_max: config.channel_max,
        heartbeat: config.heartbeat,
        max_message_size: config.max_message_size,
        consumer_timeout: config.consumer_timeout,
        max_connections: config.max_connections,
        delivery_buffer_limit: config.delivery_buffer_limit,
        identity: server_identity(config.server_identity),
    }
}

/// Reads what the client sent into `rbuf`. A connection without a read
/// buffer (quiet: see `Connection::run`) waits for bytes with a stack
/// buffer instead, which exists only while the read is polled, not while
/// the task sleeps; what arrives is copied into a buffer sized to it, or to
/// `hint` if the stack buffer filled (a burst: the next reads go straight
/// into the buffer).
async fn read_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    share: &mut budget::BufferShare,
    hint: usize,
) -> std::io::Result<usize> {
    if rbuf.capacity() > rbuf.len() {
        return stream.read_buf(rbuf).await;
    }
    std::future::poll_fn(|cx| {
        let mut stack = [0u8; QUIET_READ];
        let mut buf = ReadBuf::new(&mut stack);
        std::task::ready!(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
        let got = buf.filled();
        rbuf.reserve(if got.len() == QUIET_READ {
            share.allow(hint.max(2 * QUIET_READ))
        } else {
            got.len()
        });
        rbuf.extend_from_slice(got);
        std::task::Poll::Ready(Ok(got.len()))
    })
    .await
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves when an operator closes the connection (never if it is not
/// registered yet).
async fn forced_close(entry: Option<&ConnectionEntry>) -> String {
    match entry {
        Some(entry) => entry.closed().await,
        None => std::future::pending().await,
    }
}
