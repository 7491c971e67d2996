//! One client connection: handshake, frame loop, content assembly,
//! heartbeats and batched writes.
//!
//! A connection is one task that owns its socket, its channels and an
//! unbounded queue of events (deliveries and cancellations that queues push
//! to its channels). Each wake-up parses every frame the read brought in,
//! then drains pending deliveries, then writes everything in one syscall:
//! under load that is far fewer than one syscall per message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use antre_amqp::method::*;
use antre_amqp::{
    decode_frame, encode_content, encode_frame, encode_method, reply, CodecError, ContentHeader,
    Frame, Method,
};
use antre_broker::{
    Broker, BrokerError, Channel, ChannelContext, Delivery, DeliverySink, Outgoing,
};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};

use crate::config::Config;

mod coalesce;
mod handshake;
use crate::registry::{ConnectionEntry, Registry};

/// How long a client has for the handshake, as in RabbitMQ.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for close-ok after sending connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often channels are checked for deliveries past their consumer
/// timeout (RabbitMQ checks once a minute; timeouts are minutes long).
const CONSUMER_TIMEOUT_CHECK: Duration = Duration::from_secs(1);
/// Deliveries encoded per wake-up before the buffer is written, so one busy
/// queue cannot make a connection buffer without bound.
const DELIVERY_BATCH: usize = 256;

/// What queues tell a connection.
#[derive(Debug)]
enum Event {
    Deliver(u16, Delivery),
    Cancel(u16, String),
    Synced(u16, u64, bool),
}

/// The sink a queue delivers into for the consumers of one channel.
#[derive(Debug)]
struct ChannelSink {
    channel: u16,
    events: mpsc::UnboundedSender<Event>,
}

impl DeliverySink for ChannelSink {
    fn deliver(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
        self.events
            .send(Event::Deliver(self.channel, delivery))
            .map_err(|e| match e.0 {
                Event::Deliver(_, d) => Box::new(d),
                _ => unreachable!("only deliveries are sent here"),
            })
    }

    fn cancel(&self, consumer_tag: &str) {
        let _ = self
            .events
            .send(Event::Cancel(self.channel, consumer_tag.to_owned()));
    }

    fn synced(&self, token: u64, ok: bool) {
        let _ = self.events.send(Event::Synced(self.channel, token, ok));
    }
}

/// A message being assembled from its method, header and body frames.
#[derive(Debug)]
struct PendingContent {
    publish: BasicPublish,
    header: Option<ContentHeader>,
    body: BytesMut,
    first_body: Option<Bytes>,
    received: u64,
}

// Nearly every slot is Open; boxing the content being assembled would cost
// an allocation per published message to save memory on closing channels.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Slot {
    Open {
        channel: Box<Channel>,
        content: Option<PendingContent>,
    },
    /// We sent channel.close and ignore everything but close/close-ok.
    Closing,
}

/// Why the frame loop stopped.
#[derive(Debug)]
enum Stop {
    /// The peer went away or the socket failed: just tear down.
    Gone,
    /// A connection exception: send connection.close with this, then tear down.
    Close {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    /// The client sent connection.close and got close-ok.
    ClientClosed,
}

impl Stop {
    fn protocol(code: u16, text: impl Into<String>) -> Stop {
        Stop::Close {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }
}

impl From<CodecError> for Stop {
    fn from(e: CodecError) -> Stop {
        let name = match e.reply_code() {
            reply::FRAME_ERROR => "FRAME_ERROR",
            reply::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            reply::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            _ => "SYNTAX_ERROR",
        };
        Stop::protocol(e.reply_code(), format!("{name} - {e}"))
    }
}

impl From<std::io::Error> for Stop {
    fn from(_: std::io::Error) -> Stop {
        Stop::Gone
    }
}

/// One client connection.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    broker: Arc<Broker>,
    registry: Arc<Registry>,
    /// Set once the handshake is done and the connection is registered.
    entry: Option<Arc<ConnectionEntry>>,
    config: Arc<Config>,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    rbuf: BytesMut,
    wbuf: BytesMut,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    channels: HashMap<u16, Slot>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    ctx: Option<ChannelContext>,
    cancel_notify: bool,
    out: Vec<Outgoing>,
    last_recv: Instant,
    last_sent: Instant,
    disk_alarm: watch::Receiver<bool>,
    /// The client understands connection.blocked/unblocked.
    blocked_notify: bool,
    /// The connection has published: an alarm blocks it.
    has_published: bool,
    /// We stopped reading because of an alarm (and told the client).
    blocked: bool,
    /// Holds deliveries to a busy connection for one write.
    coalesce: coalesce::Coalescer,
    /// Bytes of the write buffer that are deliveries. Anything beyond them
    /// (replies, confirms, cancels, heartbeats) must go out at once, and
    /// takes held deliveries with it.
    delivery_bytes: usize,
    /// A consumer's prefetch window filled: no more deliveries come until
    /// the client has these, so holding them would only stall it.
    window_full: bool,
}

impl Connection {
    /// Wraps an accepted socket.
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        broker: Arc<Broker>,
        config: Arc<Config>,
        registry: Arc<Registry>,
        disk_alarm: watch::Receiver<bool>,
    ) -> Connection {
        let local = stream.local_addr().unwrap_or(peer);
        let (reader, writer) = stream.into_split();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let id = broker.next_id();
        let frame_max = config.frame_max;
        let coalesce =
            coalesce::Coalescer::new(config.delivery_coalesce, config.delivery_coalesce_rate);
        Connection {
            id,
            peer,
            local,
            broker,
            registry,
            entry: None,
            config,
            reader,
            writer,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(64 * 1024),
            frame_max,
            channel_max: 0,
            heartbeat: 0,
            channels: HashMap::new(),
            events_tx,
            events_rx,
            ctx: None,
            cancel_notify: false,
            out: Vec::new(),
            last_recv: Instant::now(),
            last_sent: Instant::now(),
            disk_alarm,
            blocked_notify: false,
            has_published: false,
            blocked: false,
            coalesce,
            delivery_bytes: 0,
            window_full: false,
        }
    }

    /// Runs the connection to its end.
    pub async fn serve(mut self, mut shutdown: watch::Receiver<bool>) {
        let stop = match timeout(HANDSHAKE_TIMEOUT, self.handshake()).await {
            Err(_) => Stop::Gone,
            Ok(Err(stop)) => stop,
            Ok(Ok(())) => self.run(&mut shutdown).await,
        };
        // Release the connection's resources before answering, so that once
        // a client has its close-ok, its unacked messages are back in their
        // queues and its exclusive queues are gone (as the spec orders).
        self.teardown();
        // Output still unwritten (deliveries being coalesced, say) would
        // reach the client after its connection ended: teardown has already
        // requeued every unacked delivery, so sending them now would only
        // make the client process messages that are coming back anyway.
        self.wbuf.clear();
        match stop {
            Stop::Gone => {}
            Stop::ClientClosed => {
                self.send_method(0, &ConnectionCloseOk {}.into());
                if self.flush().await.is_ok() {
                    // Let the client close first: closing with its unread bytes
                    // still in our receive buffer would make the kernel send RST,
                    // and the client could lose the close-ok it is waiting for.
                    let _ = timeout(CLOSE_TIMEOUT, self.drain_until_eof()).await;
                }
            }
            Stop::Close {
                code,
                text,
                class_id,
                method_id,
            } => {
                tracing::info!(peer = %self.peer, code, "closing connection: {text}");
                self.send_method(
                    0,
                    &ConnectionClose {
                        reply_code: code,
                        reply_text: text,
                        class_id,
                        method_id,
                    }
                    .into(),
                );
                if self.flush().await.is_ok() {
                    let _ = timeout(CLOSE_TIMEOUT, self.await_close_ok()).await;
                }
            }
        }
        let _ = self.writer.shutdown().await;
    }

    /// Releases everything the connection held: unacked messages go back to
    /// their queues, consumers are cancelled, exclusive queues are deleted.
    fn teardown(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.registry.unregister(entry.id);
        }
        for (_, slot) in self.channels.drain() {
            if let Slot::Open { mut channel, .. } = slot {
                channel.close();
            }
        }
        if let Some(ctx) = &self.ctx {
            ctx.vhost.connection_closed(self.id);
        }
        // Deliveries still queued for us never reached the client.
        self.events_rx.close();
        while let Ok(event) = self.events_rx.try_recv() {
            if let Event::Deliver(_, d) = event {
                let queue = Arc::clone(&d.queue);
                queue.return_undelivered(d);
            }
        }
    }

    async fn read_more(&mut self) -> Result<(), Stop> {
        let n = self.reader.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(Stop::Gone);
        }
        if let Some(entry) = &self.entry {
            entry.received(n);
        }
        self.last_recv = Instant::now();
        Ok(())
    }

    async fn next_frame(&mut self) -> Result<Frame, Stop> {
        loop {
            if let Some(frame) = decode_frame(&mut self.rbuf, self.frame_max)? {
                return Ok(frame);
            }
            self.read_more().await?;
        }
    }

    async fn drain_until_eof(&mut self) {
        self.rbuf.clear();
        while let Ok(n) = self.reader.read_buf(&mut self.rbuf).await {
            if n == 0 {
                return;
            }
            self.rbuf.clear();
        }
    }

    /// After sending connection.close: discard frames until close-ok.
    async fn await_close_ok(&mut self) {
        loop {
            match self.next_frame().await {
                Ok(Frame::Method {
                    method: Method::ConnectionCloseOk(_) | Method::ConnectionClose(_),
                    ..
                })
                | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Stop {
        let beat = Duration::from_secs(u64::from(self.heartbeat.max(1)));
        let mut ticker = tokio::time::interval(beat / 2);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut timeouts = tokio::time::interval(CONSUMER_TIMEOUT_CHECK);
        timeouts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let entry = self.entry.clone();
        loop {
            let reading = !self.blocked;
            let holding = self.coalesce.holding();
            tokio::select! {
                _ = self.disk_alarm.changed() => {}
                _ = self.coalesce.expired(), if holding => {}
                read = self.reader.read_buf(&mut self.rbuf), if reading => match read {
                    Ok(0) | Err(_) => return Stop::Gone,
                    Ok(n) => {
                        if let Some(entry) = &entry {
                            entry.received(n);
                        }
                        self.last_recv = Instant::now();
                        if let Err(stop) = self.process_frames() {
                            return stop;
                        }
                    }
                },
                Some(event) = self.events_rx.recv() => {
                    if let Err(stop) = self.handle_event(event) {
                        return stop;
                    }
                }
                _ = ticker.tick(), if self.heartbeat > 0 => {
                    // A blocked connection is not read, so its heartbeats go
                    // unseen: only judge silence while reading.
                    if reading && self.last_recv.elapsed() > beat * 2 {
                        tracing::info!(peer = %self.peer, "missed heartbeats from client, closing");
                        return Stop::Gone;
                    }
                    if self.last_sent.elapsed() >= beat / 2 {
                        encode_frame(&Frame::Heartbeat, &mut self.wbuf);
                    }
                },
                _ = timeouts.tick() => {
                    if let Err(stop) = self.check_consumer_timeouts() {
                        return stop;
                    }
                }
                _ = shutdown.changed() => {
                    return Stop::protocol(reply::CONNECTION_FORCED, "CONNECTION_FORCED - broker shutting down");
                }
                reason = forced_close(entry.as_deref()) => {
                    return Stop::protocol(reply::CONNECTION_FORCED, format!("CONNECTION_FORCED - {reason}"));
                }
            }
            // Drain whatever else queues pushed, then write it all at once.
            for _ in 0..DELIVERY_BATCH {
                match self.events_rx.try_recv() {
                    Ok(event) => {
                        if let Err(stop) = self.handle_event(event) {
                            return stop;
                        }
                    }
                    Err(_) => break,
                }
            }
            self.update_blocked();
            let urgent = self.window_full || self.wbuf.len() > self.delivery_bytes;
            if self.coalesce.hold(self.wbuf.len(), urgent) {
                continue;
            }
            if let Err(stop) = self.flush().await {
                return stop;
            }
        }
    }

    /// Closes (406) every channel holding a delivery unacked for longer than
    /// its consumer timeout; closing requeues its deliveries.
    fn check_consumer_timeouts(&mut self) -> Result<(), Stop> {
        let now = self.broker.clock().now_ms();
        let default = self.config.consumer_timeout.map(|d| d.as_millis() as u64);
        let timed_out: Vec<(u16, BrokerError)> = self
            .channels
            .iter()
            .filter_map(|(&id, slot)| match slot {
                Slot::Open { channel, .. } => channel
                    .check_consumer_timeout(now, default)
                    .err()
                    .map(|e| (id, e)),
                Slot::Closing => None,
            })
            .collect();
        for (id, e) in timed_out {
            tracing::warn!(peer = %self.peer, channel = id, "{e}");
            self.fail_channel(id, e, 0, 0)?;
        }
        Ok(())
    }

    /// Stops reading a publishing connection while the disk alarm is raised
    /// (RabbitMQ's flow of blocking), telling clients that understand it.
    fn update_blocked(&mut self) {
        let block = *self.disk_alarm.borrow() && self.has_published;
        if block == self.blocked {
            return;
        }
        self.blocked = block;
        if let Some(entry) = &self.entry {
            entry
                .blocked
                .store(block, std::sync::atomic::Ordering::Relaxed);
        }
        if !self.blocked_notify {
            return;
        }
        let method: Method = if block {
            ConnectionBlocked {
                reason: "low on disk".into(),
            }
            .into()
        } else {
            ConnectionUnblocked {}.into()
        };
        self.send_method(0, &method);
    }

    fn process_frames(&mut self) -> Result<(), Stop> {
        while let Some(frame) = decode_frame(&mut self.rbuf, self.frame_max)? {
            self.handle_frame(frame)?;
        }
        let mut out = std::mem::take(&mut self.out);
        for (&id, slot) in self.channels.iter_mut() {
            if let Slot::Open { channel, .. } = slot {
                channel.flush_confirms(&mut out);
                encode_outgoing(id, &mut out, self.frame_max, &mut self.wbuf);
            }
        }
        self.out = out;
        Ok(())
    }

    fn handle_event(&mut self, event: Event) -> Result<(), Stop> {
        match event {
            Event::Synced(id, token, ok) => {
                if let Some(Slot::Open { channel, .. }) = self.channels.get_mut(&id) {
                    let result = channel.on_synced(token, ok, &mut self.out);
                    encode_outgoing(id, &mut self.out, self.frame_max, &mut self.wbuf);
                    if let Err(e) = result {
                        return self.fail_channel(id, e, 0, 0);
                    }
                }
            }
            Event::Deliver(id, delivery) => match self.channels.get_mut(&id) {
                Some(Slot::Open { channel, .. }) => {
                    let before = self.wbuf.len();
                    self.window_full |= channel.deliver(delivery, &mut self.out);
                    encode_outgoing(id, &mut self.out, self.frame_max, &mut self.wbuf);
                    self.delivery_bytes += self.wbuf.len() - before;
                    self.coalesce.delivered(1);
                }
                _ => {
                    let queue = Arc::clone(&delivery.queue);
                    queue.return_undelivered(delivery);
                }
            },
            Event::Cancel(id, tag) => {
                if let Some(Slot::Open { channel, .. }) = self.channels.get_mut(&id) {
                    if channel.consumer_cancelled(&tag) && self.cancel_notify {
                        let cancel = BasicCancel {
                            consumer_tag: tag,
                            nowait: true,
                        };
                        encode_method(id, &cancel.into(), &mut self.wbuf);
                    }
                }
            }
        }
        Ok(())
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), Stop> {
        let id = frame.channel();
        if id == 0 {
            return self.handle_channel_zero(frame);
        }
        let Some(slot) = self.channels.get_mut(&id) else {
            return match frame {
                Frame::Method {
                    method: Method::ChannelOpen(_),
                    ..
                } => self.open_channel(id),
                Frame::Method { method, .. } => {
                    Err(channel_error(&method, "expected 'channel.open'"))
                }
                _ => Err(Stop::protocol(
                    reply::UNEXPECTED_FRAME,
                    "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
                )),
            };
        };
        let Slot::Open { channel, content } = slot else {
            // Closing: only close and close-ok matter, all else is dropped.
            match frame {
                Frame::Method {
                    method: Method::ChannelCloseOk(_),
                    ..
                } => {
                    self.channels.remove(&id);
                    self.channel_gone(id);
                }
                Frame::Method {
                    method: Method::ChannelClose(_),
                    ..
                } => {
                    self.send_method(id, &ChannelCloseOk {}.into());
                }
                _ => {}
            }
            return Ok(());
        };
        let result = match frame {
            Frame::Method { method, .. } => {
                if let Some(pending) = content {
                    return Err(unexpected_frame(Awaiting::content(pending)));
                }
                let ids = method.id();
                match method {
                    Method::ChannelOpen(_) => {
                        return Err(channel_error(
                            &ChannelOpen::default().into(),
                            "second 'channel.open' seen",
                        ))
                    }
                    Method::ChannelClose(_) => {
                        channel.close();
                        self.channels.remove(&id);
                        self.channel_gone(id);
                        self.send_method(id, &ChannelCloseOk {}.into());
                        return Ok(());
                    }
                    Method::BasicPublish(publish) => {
                        self.has_published = true;
                        *content = Some(PendingContent {
                            publish,
                            header: None,
                            body: BytesMut::new(),
                            first_body: None,
                            received: 0,
                        });
                        Ok(())
                    }
                    method => channel.handle(method, &mut self.out).map_err(|e| (e, ids)),
                }
            }
            Frame::Header { header, .. } => {
                let Some(pending) = content.as_mut().filter(|p| p.header.is_none()) else {
                    return Err(unexpected_frame(match content {
                        Some(_) => Awaiting::Body,
                        None => Awaiting::Method,
                    }));
                };
                let ids = (60, 40);
                match channel.check_header(&header) {
                    Err(e) => {
                        *content = None;
                        Err((e, ids))
                    }
                    Ok(()) if header.body_size == 0 => {
                        let publish = std::mem::take(&mut pending.publish);
                        *content = None;
                        channel
                            .publish(publish, header, Bytes::new(), &mut self.out)
                            .map_err(|e| (e, ids))
                    }
                    Ok(()) => {
                        pending.header = Some(header);
                        Ok(())
                    }
                }
            }
            Frame::Body { payload, .. } => {
                let Some(pending) = content.as_mut().filter(|p| p.header.is_some()) else {
                    return Err(unexpected_frame(match content {
                        Some(_) => Awaiting::Header,
                        None => Awaiting::Method,
                    }));
                };
                pending.received += payload.len() as u64;
                let expected = pending.header.as_ref().map_or(0, |h| h.body_size);
                if pending.received > expected {
                    // More body than the header announced: RabbitMQ treats
                    // the frame as not the body it expects.
                    return Err(unexpected_frame(Awaiting::Body));
                }
                // The common single-frame body is kept as the slice of the
                // read buffer it arrived in; only multi-frame bodies are copied.
                match pending.first_body.take() {
                    None if pending.body.is_empty() => pending.first_body = Some(payload),
                    first => {
                        if let Some(first) = first {
                            pending.body.extend_from_slice(&first);
                        }
                        pending.body.extend_from_slice(&payload);
                    }
                }
                if pending.received < expected {
                    return Ok(());
                }
                let Some(done) = content.take() else {
                    return Ok(());
                };
                let body = match done.first_body {
                    Some(b) => b,
                    None => done.body.freeze(),
                };
                let header = done.header.unwrap_or_else(|| unreachable!("checked above"));
                channel
                    .publish(done.publish, header, body, &mut self.out)
                    .map_err(|e| (e, (60, 40)))
            }
            Frame::Heartbeat => Ok(()),
        };
        encode_outgoing(id, &mut self.out, self.frame_max, &mut self.wbuf);
        match result {
            Ok(()) => Ok(()),
            Err((e, (class_id, method_id))) => self.fail_channel(id, e, class_id, method_id),
        }
    }

    /// Turns a broker refusal into a channel or connection exception.
    fn fail_channel(
        &mut self,
        id: u16,
        e: BrokerError,
        class_id: u16,
        method_id: u16,
    ) -> Result<(), Stop> {
        if e.closes_connection() {
            return Err(Stop::Close {
                code: e.reply_code(),
                text: e.to_string(),
                class_id,
                method_id,
            });
        }
        tracing::debug!(peer = %self.peer, channel = id, "channel error: {e}");
        if let Some(Slot::Open { channel, .. }) = self.channels.get_mut(&id) {
            channel.close();
        }
        self.channels.insert(id, Slot::Closing);
        self.send_method(
            id,
            &ChannelClose {
                reply_code: e.reply_code(),
                reply_text: e.to_string(),
                class_id,
                method_id,
            }
            .into(),
        );
        Ok(())
    }

    fn open_channel(&mut self, id: u16) -> Result<(), Stop> {
        // channel_max limits how many channels are open at once, not their
        // numbers: RabbitMQ opens channel 65535 under channel_max 2047.
        let open = self.channels.len();
        if self.channel_max != 0 && open >= usize::from(self.channel_max) {
            return Err(Stop::protocol(
                reply::NOT_ALLOWED,
                format!(
                    "NOT_ALLOWED - number of channels opened ({open}) has reached the negotiated channel_max ({})",
                    self.channel_max
                ),
            ));
        }
        let Some(ctx) = self.ctx.clone() else {
            return Err(Stop::protocol(
                reply::CHANNEL_ERROR,
                "CHANNEL_ERROR - connection not open",
            ));
        };
        let sink = Arc::new(ChannelSink {
            channel: id,
            events: self.events_tx.clone(),
        });
        let channel = Channel::new(id, ctx, sink);
        self.channels.insert(
            id,
            Slot::Open {
                channel: Box::new(channel),
                content: None,
            },
        );
        if let Some(entry) = &self.entry {
            entry.channel_opened(id);
        }
        self.send_method(id, &ChannelOpenOk::default().into());
        Ok(())
    }

    fn channel_gone(&self, id: u16) {
        if let Some(entry) = &self.entry {
            entry.channel_closed(id);
        }
    }

    fn handle_channel_zero(&mut self, frame: Frame) -> Result<(), Stop> {
        match frame {
            Frame::Heartbeat => Ok(()),
            Frame::Method {
                method: Method::ConnectionClose(_),
                ..
            } => {
                self.send_method(0, &ConnectionCloseOk {}.into());
                Err(Stop::ClientClosed)
            }
            // close-ok is only expected after the server's close, which
            // await_close_ok handles.
            // A token refresh (OAuth clients send it before the old token
            // expires). antre's users are password users, whose login
            // nothing can expire, so there is no state to update: RabbitMQ's
            // internal backend accepts the new secret the same way.
            Frame::Method {
                method: Method::ConnectionUpdateSecret(_),
                ..
            } => {
                self.send_method(0, &ConnectionUpdateSecretOk {}.into());
                Ok(())
            }
            Frame::Method { method, .. } => Err(channel_error(
                &method,
                "unexpected method in connection state running",
            )),
            _ => Err(Stop::protocol(
                reply::UNEXPECTED_FRAME,
                "UNEXPECTED_FRAME - content frame on channel 0",
            )),
        }
    }

    fn send_method(&mut self, channel: u16, method: &Method) {
        encode_method(channel, method, &mut self.wbuf);
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.writer.write_all(&self.wbuf).await?;
        if let Some(entry) = &self.entry {
            entry.sent(self.wbuf.len());
        }
        self.wbuf.clear();
        self.delivery_bytes = 0;
        self.window_full = false;
        self.last_sent = Instant::now();
        Ok(())
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

/// Encodes and clears the channel's pending output.
fn encode_outgoing(channel: u16, out: &mut Vec<Outgoing>, frame_max: u32, wbuf: &mut BytesMut) {
    for item in out.drain(..) {
        match item {
            Outgoing::Method(m) => encode_method(channel, &m, wbuf),
            Outgoing::Content(m, message) => {
                encode_method(channel, &m, wbuf);
                encode_content(channel, &message.properties, &message.body, frame_max, wbuf);
            }
        }
    }
}

/// What a channel's content assembly expects next.
#[derive(Debug, Clone, Copy)]
enum Awaiting {
    Method,
    Header,
    Body,
}

impl Awaiting {
    fn content(pending: &PendingContent) -> Awaiting {
        match pending.header {
            None => Awaiting::Header,
            Some(_) => Awaiting::Body,
        }
    }
}

/// RabbitMQ's 505 for a frame that does not fit where the channel is in a
/// publish; mid-publish it names basic.publish (60, 40).
fn unexpected_frame(awaiting: Awaiting) -> Stop {
    let (text, ids) = match awaiting {
        Awaiting::Method => (
            "expected method frame, got non method frame instead",
            (0, 0),
        ),
        Awaiting::Header => (
            "expected content header for class 60, got non content header frame instead",
            (60, 40),
        ),
        Awaiting::Body => (
            "expected content body, got non content body frame instead",
            (60, 40),
        ),
    };
    Stop::Close {
        code: reply::UNEXPECTED_FRAME,
        text: format!("UNEXPECTED_FRAME - {text}"),
        class_id: ids.0,
        method_id: ids.1,
    }
}

/// A 504 connection exception, worded as RabbitMQ words it (without the
/// channel number: the client knows which channel it used).
fn channel_error(method: &Method, why: &str) -> Stop {
    let (class_id, method_id) = method.id();
    Stop::Close {
        code: reply::CHANNEL_ERROR,
        text: format!("CHANNEL_ERROR - {why}"),
        class_id,
        method_id,
    }
}
