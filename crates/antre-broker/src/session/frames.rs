//! Frames of an open connection: channel slots and their life cycle,
//! content assembly (method, header, body frames), channel-0 methods, the
//! events queues push to channels, and turning refusals into channel or
//! connection exceptions.

use std::sync::Arc;

use antre_amqp::method::*;
use antre_amqp::{
    decode_frame, encode_content, encode_method, reply, CodecError, ContentHeader, Frame, Method,
};
use bytes::{Bytes, BytesMut};

use super::{delivery_cost, ChannelSink, Effect, Session, SessionEvent, SessionState};
use crate::access::limits::ChannelPermit;
use crate::access::LimitRefusal;
use crate::channel::{Channel, Outgoing};
use crate::error::BrokerError;
use crate::queue::Delivery;

/// A message being assembled from its method, header and body frames.
#[derive(Debug)]
pub(super) struct PendingContent {
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
pub(super) enum Slot {
    Open {
        channel: Box<Channel>,
        content: Option<PendingContent>,
        /// The channel's place in its user's `max-channels` count.
        _permit: ChannelPermit,
    },
    /// We sent channel.close and ignore everything but close/close-ok.
    Closing,
}

impl Slot {
    pub(super) fn channel(&self) -> Option<&Channel> {
        match self {
            Slot::Open { channel, .. } => Some(channel),
            Slot::Closing => None,
        }
    }

    pub(super) fn into_channel(self) -> Option<Box<Channel>> {
        match self {
            Slot::Open { channel, .. } => Some(channel),
            Slot::Closing => None,
        }
    }
}

/// A connection exception: connection.close with this code and text.
pub(super) struct ConnectionError {
    pub(super) code: u16,
    pub(super) text: String,
    pub(super) ids: (u16, u16),
}

impl ConnectionError {
    /// Not an exception but a dropped socket, as RabbitMQ answers some
    /// handshake refusals (nothing is written).
    pub(super) fn silent() -> ConnectionError {
        ConnectionError::new(0, String::new())
    }

    pub(super) fn new(code: u16, text: impl Into<String>) -> ConnectionError {
        ConnectionError {
            code,
            text: text.into(),
            ids: (0, 0),
        }
    }

    pub(super) fn on(code: u16, text: impl Into<String>, method: &Method) -> ConnectionError {
        ConnectionError {
            code,
            text: text.into(),
            ids: method.id(),
        }
    }
}

impl From<CodecError> for ConnectionError {
    fn from(e: CodecError) -> ConnectionError {
        let name = match e.reply_code() {
            reply::FRAME_ERROR => "FRAME_ERROR",
            reply::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            reply::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            _ => "SYNTAX_ERROR",
        };
        ConnectionError::new(e.reply_code(), format!("{name} - {e}"))
    }
}

/// A 504 connection exception, worded as RabbitMQ words it (without the
/// channel number: the client knows which channel it used).
fn channel_error(method: &Method, why: &str) -> ConnectionError {
    let text = format!("CHANNEL_ERROR - {why}");
    ConnectionError::on(reply::CHANNEL_ERROR, text, method)
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
fn unexpected_frame(awaiting: Awaiting) -> ConnectionError {
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
    ConnectionError {
        code: reply::UNEXPECTED_FRAME,
        text: format!("UNEXPECTED_FRAME - {text}"),
        ids,
    }
}

impl Session {
    /// Decodes and handles one frame; returns whether one was complete.
    pub(super) fn next_frame(&mut self, input: &mut BytesMut) -> bool {
        let frame = match decode_frame(input, self.frame_max) {
            Ok(Some(frame)) => frame,
            Ok(None) => return false,
            Err(e) => {
                input.clear();
                if self.state == SessionState::Closing {
                    self.state = SessionState::Closed { linger: false };
                } else {
                    let e = ConnectionError::from(e);
                    self.close_with(e.code, e.text, e.ids);
                }
                return false;
            }
        };
        if self.state == SessionState::Closing {
            // After our connection.close: discard frames until close-ok.
            if let Frame::Method {
                method: Method::ConnectionCloseOk(_) | Method::ConnectionClose(_),
                ..
            } = frame
            {
                self.state = SessionState::Closed { linger: false };
            }
            return true;
        }
        if let Err(e) = self.handle_frame(frame) {
            self.close_with(e.code, e.text, e.ids);
        }
        true
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), ConnectionError> {
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
                _ => Err(unexpected_frame(Awaiting::Method)),
            };
        };
        let Slot::Open {
            channel, content, ..
        } = slot
        else {
            // Closing: only close and close-ok matter, all else is dropped.
            match frame {
                Frame::Method {
                    method: Method::ChannelCloseOk(_),
                    ..
                } => self.channel_gone(id),
                Frame::Method {
                    method: Method::ChannelClose(_),
                    ..
                } => encode_method(id, &ChannelCloseOk {}.into(), &mut self.wbuf),
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
                        let open = ChannelOpen::default().into();
                        return Err(channel_error(&open, "second 'channel.open' seen"));
                    }
                    Method::ChannelClose(_) => {
                        channel.close();
                        self.channel_gone(id);
                        encode_method(id, &ChannelCloseOk {}.into(), &mut self.wbuf);
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
                    method => {
                        let select =
                            matches!(method, Method::ConfirmSelect(_) | Method::TxSelect(_));
                        let handled = channel.handle(method, &mut self.out);
                        if select && handled.is_ok() {
                            let mode = channel.publish_mode();
                            self.effects.push_back(Effect::ChannelMode(id, mode));
                        }
                        handled.map_err(|e| (e, ids))
                    }
                }
            }
            Frame::Header { header, .. } => {
                content_header(channel, content, header, &mut self.out)?
            }
            Frame::Body { payload, .. } => content_body(channel, content, payload, &mut self.out)?,
            Frame::Heartbeat => Ok(()),
        };
        self.encode_out(id);
        match result {
            Ok(()) => Ok(()),
            Err((e, ids)) => {
                self.fail_channel(id, e, ids);
                Ok(())
            }
        }
    }

    fn handle_channel_zero(&mut self, frame: Frame) -> Result<(), ConnectionError> {
        match frame {
            Frame::Heartbeat => Ok(()),
            Frame::Method {
                method: Method::ConnectionClose(_),
                ..
            } => {
                // Release the connection's resources before answering, so
                // that once a client has its close-ok, its unacked messages
                // are back in their queues and its exclusive queues are gone
                // (as the spec orders).
                self.teardown();
                self.wbuf.clear();
                encode_method(0, &ConnectionCloseOk {}.into(), &mut self.wbuf);
                self.state = SessionState::Closed { linger: true };
                Ok(())
            }
            // A token refresh (OAuth clients send it before the old token
            // expires). antre's users are password users, whose login
            // nothing can expire, so there is no state to update:
            // RabbitMQ's internal backend accepts the new secret the same
            // way. (close-ok is expected only after our own close.)
            Frame::Method {
                method: Method::ConnectionUpdateSecret(_),
                ..
            } => {
                encode_method(0, &ConnectionUpdateSecretOk {}.into(), &mut self.wbuf);
                Ok(())
            }
            Frame::Method { method, .. } => Err(channel_error(
                &method,
                "unexpected method in connection state running",
            )),
            _ => Err(ConnectionError::new(
                reply::UNEXPECTED_FRAME,
                "UNEXPECTED_FRAME - content frame on channel 0",
            )),
        }
    }

    fn open_channel(&mut self, id: u16) -> Result<(), ConnectionError> {
        // channel_max limits how many channels are open at once, not their
        // numbers: RabbitMQ opens channel 65535 under channel_max 2047.
        let open = self.channels.len();
        if self.channel_max != 0 && open >= usize::from(self.channel_max) {
            return Err(ConnectionError::new(
                reply::NOT_ALLOWED,
                format!(
                    "NOT_ALLOWED - number of channels opened ({open}) has reached the negotiated channel_max ({})",
                    self.channel_max
                ),
            ));
        }
        let Some(ctx) = self.ctx.clone() else {
            return Err(ConnectionError::new(
                reply::CHANNEL_ERROR,
                "CHANNEL_ERROR - connection not open",
            ));
        };
        let permit = match self.broker.access().admit_channel(&ctx.user) {
            Ok(permit) => permit,
            Err(refusal) => {
                let limit = match refusal {
                    LimitRefusal::UserChannels(limit) => limit,
                    _ => 0,
                };
                return Err(ConnectionError::new(
                    reply::NOT_ALLOWED,
                    format!(
                        "NOT_ALLOWED - number of channels opened for user '{}' has reached the maximum allowed user limit of ({limit})",
                        ctx.user
                    ),
                ));
            }
        };
        let sink = Arc::new(ChannelSink {
            channel: id,
            events: Arc::clone(&self.events),
            window: Arc::clone(&self.output_window),
        });
        let mut channel = Channel::new(id, ctx, sink);
        let events = Arc::clone(&self.events);
        channel.set_stream_waker(crate::stream::StreamWaker::new(move || {
            let _ = events.send(SessionEvent::StreamReady(id));
        }));
        self.channels.insert(
            id,
            Slot::Open {
                channel: Box::new(channel),
                content: None,
                _permit: permit,
            },
        );
        self.effects.push_back(Effect::ChannelOpened(id));
        encode_method(id, &ChannelOpenOk::default().into(), &mut self.wbuf);
        Ok(())
    }

    fn channel_gone(&mut self, id: u16) {
        self.channels.remove(&id);
        self.drop_held_window(id);
        self.effects.push_back(Effect::ChannelClosed(id));
    }

    /// Turns a broker refusal into a channel exception, or a connection
    /// exception where the spec makes it one.
    pub(super) fn fail_channel(&mut self, id: u16, e: BrokerError, ids: (u16, u16)) {
        if e.closes_connection() {
            self.close_with(e.reply_code(), e.to_string(), ids);
            return;
        }
        tracing::debug!(peer = self.peer.label, channel = id, "channel error: {e}");
        if let Some(Slot::Open { channel, .. }) = self.channels.get_mut(&id) {
            channel.close();
        }
        self.channels.insert(id, Slot::Closing);
        self.drop_held_window(id);
        let close = ChannelClose {
            reply_code: e.reply_code(),
            reply_text: e.to_string(),
            class_id: ids.0,
            method_id: ids.1,
        };
        encode_method(id, &close.into(), &mut self.wbuf);
    }

    /// A connection exception: releases everything, drops output not yet
    /// written (held deliveries were just requeued; sending them would only
    /// make the client process messages that are coming back anyway), sends
    /// connection.close and waits for close-ok.
    pub(super) fn close_with(&mut self, code: u16, text: String, ids: (u16, u16)) {
        self.teardown();
        self.wbuf.clear();
        self.delivery_bytes = 0;
        if code == 0 {
            self.state = SessionState::Closed { linger: false };
            return;
        }
        tracing::info!(peer = self.peer.label, code, "closing connection: {text}");
        let close = ConnectionClose {
            reply_code: code,
            reply_text: text,
            class_id: ids.0,
            method_id: ids.1,
        };
        encode_method(0, &close.into(), &mut self.wbuf);
        self.state = SessionState::Closing;
    }

    /// Encodes what channel `id` answered.
    fn encode_out(&mut self, id: u16) {
        for item in self.out.drain(..) {
            match item {
                Outgoing::Method(m) => encode_method(id, &m, &mut self.wbuf),
                Outgoing::Content(m, message) => {
                    encode_method(id, &m, &mut self.wbuf);
                    let (props, body) = (&message.properties, &message.body);
                    encode_content(id, props, body, self.frame_max, &mut self.wbuf);
                }
            }
        }
        if !self.held_window.is_empty() && !self.holds_output(id) {
            // What it held went out just now (or was dropped with the
            // channel): its bytes are freed once written.
            if let Some(bytes) = self.held_window.remove(&id) {
                self.output_pending += bytes;
            }
        }
    }

    /// Whether channel `id` holds output behind a sync.
    fn holds_output(&self, id: u16) -> bool {
        matches!(self.channels.get(&id), Some(Slot::Open { channel, .. }) if channel.holds_output())
    }

    /// Channel `id` is gone with what it held: that output is never
    /// written, so its window bytes are free at once.
    fn drop_held_window(&mut self, id: u16) {
        if let Some(bytes) = self.held_window.remove(&id) {
            self.free_output(bytes);
        }
    }

    /// After a batch of frames: one basic.ack(multiple) per channel for the
    /// publishes in it, so a fast publisher gets one confirm frame per read.
    pub(super) fn flush_confirms(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            if let Some(Slot::Open { channel, .. }) = self.channels.get_mut(&id) {
                channel.flush_confirms(&mut self.out);
                self.encode_out(id);
            }
        }
    }

    pub(super) fn deliver(&mut self, id: u16, delivery: Delivery) {
        let cost = delivery_cost(&delivery);
        let Some(Slot::Open { channel, .. }) = self.channels.get_mut(&id) else {
            let queue = Arc::clone(&delivery.queue);
            queue.return_undelivered(delivery);
            self.free_output(cost);
            return;
        };
        let before = self.wbuf.len();
        self.window_full |= channel.deliver(delivery, &mut self.out);
        let held = channel.holds_output();
        self.encode_out(id);
        let encoded = self.wbuf.len() - before;
        self.delivery_bytes += encoded;
        if encoded > 0 {
            // Freed once written (Session::wrote).
            self.output_pending += cost;
        } else if held {
            // Waits behind held output: counted until written.
            *self.held_window.entry(id).or_default() += cost;
        } else {
            // Went back to its queue (its consumer is gone): nothing of it
            // sits in our buffer.
            self.free_output(cost);
        }
    }

    /// A delivery from a queue another cluster node owns, for channel `id`.
    pub(super) fn deliver_remote(&mut self, id: u16, delivery: crate::remote::RemoteDelivery) {
        let Some(Slot::Open { channel, .. }) = self.channels.get_mut(&id) else {
            // The channel is gone: the owner requeues it when the proxy
            // channel closes; say so at once all the same.
            Channel::refuse_remote(&delivery);
            return;
        };
        let before = self.wbuf.len();
        self.window_full |= channel.deliver_remote(delivery, &mut self.out);
        self.encode_out(id);
        self.delivery_bytes += self.wbuf.len() - before;
    }

    /// A stream woke channel `id`: its stream consumers read on.
    pub(super) fn stream_ready(&mut self, id: u16) {
        if let Some(Slot::Open { channel, .. }) = self.channels.get_mut(&id) {
            let before = self.wbuf.len();
            channel.stream_ready(&mut self.out);
            self.encode_out(id);
            self.delivery_bytes += self.wbuf.len() - before;
        }
    }

    pub(super) fn on_synced(&mut self, id: u16, token: u64, ok: bool) {
        if let Some(Slot::Open { channel, .. }) = self.channels.get_mut(&id) {
            let result = channel.on_synced(token, ok, &mut self.out);
            self.encode_out(id);
            if let Err(e) = result {
                self.fail_channel(id, e, (0, 0));
            }
        }
    }

    pub(super) fn consumer_cancelled(&mut self, id: u16, tag: &str) {
        if let Some(Slot::Open { channel, .. }) = self.channels.get_mut(&id) {
            if channel.consumer_cancelled(tag) && self.cancel_notify {
                let cancel = BasicCancel {
                    consumer_tag: tag.to_owned(),
                    nowait: true,
                };
                encode_method(id, &cancel.into(), &mut self.wbuf);
            }
        }
    }
}

/// What a content frame did: a channel refusal (with the method it is
/// about) is a channel exception; a framing error closes the connection.
type ContentResult = Result<Result<(), (BrokerError, (u16, u16))>, ConnectionError>;

/// A content header: checked before any body is read.
fn content_header(
    channel: &mut Channel,
    content: &mut Option<PendingContent>,
    header: ContentHeader,
    out: &mut Vec<Outgoing>,
) -> ContentResult {
    let Some(pending) = content.as_mut().filter(|p| p.header.is_none()) else {
        return Err(unexpected_frame(match content {
            Some(_) => Awaiting::Body,
            None => Awaiting::Method,
        }));
    };
    match channel.check_header(&header) {
        Err(e) => {
            *content = None;
            Ok(Err((e, (60, 40))))
        }
        Ok(()) if header.body_size == 0 => {
            let publish = std::mem::take(&mut pending.publish);
            *content = None;
            Ok(channel
                .publish(publish, header, Bytes::new(), out)
                .map_err(|e| (e, (60, 40))))
        }
        Ok(()) => {
            pending.header = Some(header);
            Ok(Ok(()))
        }
    }
}

/// A content body frame: the message is published once it is complete.
fn content_body(
    channel: &mut Channel,
    content: &mut Option<PendingContent>,
    payload: Bytes,
    out: &mut Vec<Outgoing>,
) -> ContentResult {
    let Some(pending) = content.as_mut().filter(|p| p.header.is_some()) else {
        return Err(unexpected_frame(match content {
            Some(_) => Awaiting::Header,
            None => Awaiting::Method,
        }));
    };
    pending.received += payload.len() as u64;
    let expected = pending.header.as_ref().map_or(0, |h| h.body_size);
    if pending.received > expected {
        // More body than the header announced: RabbitMQ treats the frame
        // as not the body it expects.
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
        return Ok(Ok(()));
    }
    match content.take() {
        Some(PendingContent {
            publish,
            header: Some(header),
            body,
            first_body,
            ..
        }) => {
            let body = first_body.unwrap_or_else(|| body.freeze());
            Ok(channel
                .publish(publish, header, body, out)
                .map_err(|e| (e, (60, 40))))
        }
        _ => Ok(Ok(())),
    }
}
