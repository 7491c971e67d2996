//! Frames of RabbitMQ's stream protocol (the port 5552 protocol): what a
//! client sends ([`Request`]) and what a server sends ([`ServerFrame`]),
//! each with an encoder and a decoder that never panics on input.
//!
//! A frame is `size:u32` then `key:u16 version:u16` and the command's
//! fields (big-endian; strings are `i16` length + UTF-8, `-1` for null;
//! bytes are `i32` length + bytes; arrays are `i32` count + items). A
//! response's key is its request's key with the top bit set.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Command keys.
pub mod key {
    pub const DECLARE_PUBLISHER: u16 = 0x0001;
    pub const PUBLISH: u16 = 0x0002;
    pub const PUBLISH_CONFIRM: u16 = 0x0003;
    pub const PUBLISH_ERROR: u16 = 0x0004;
    pub const QUERY_PUBLISHER_SEQUENCE: u16 = 0x0005;
    pub const DELETE_PUBLISHER: u16 = 0x0006;
    pub const SUBSCRIBE: u16 = 0x0007;
    pub const DELIVER: u16 = 0x0008;
    pub const CREDIT: u16 = 0x0009;
    pub const STORE_OFFSET: u16 = 0x000a;
    pub const QUERY_OFFSET: u16 = 0x000b;
    pub const UNSUBSCRIBE: u16 = 0x000c;
    pub const CREATE: u16 = 0x000d;
    pub const DELETE: u16 = 0x000e;
    pub const METADATA: u16 = 0x000f;
    pub const METADATA_UPDATE: u16 = 0x0010;
    pub const PEER_PROPERTIES: u16 = 0x0011;
    pub const SASL_HANDSHAKE: u16 = 0x0012;
    pub const SASL_AUTHENTICATE: u16 = 0x0013;
    pub const TUNE: u16 = 0x0014;
    pub const OPEN: u16 = 0x0015;
    pub const CLOSE: u16 = 0x0016;
    pub const HEARTBEAT: u16 = 0x0017;
    pub const ROUTE: u16 = 0x0018;
    pub const PARTITIONS: u16 = 0x0019;
    pub const CONSUMER_UPDATE: u16 = 0x001a;
    pub const EXCHANGE_COMMAND_VERSIONS: u16 = 0x001b;
    pub const STREAM_STATS: u16 = 0x001c;
    pub const CREATE_SUPER_STREAM: u16 = 0x001d;
    pub const DELETE_SUPER_STREAM: u16 = 0x001e;
    /// The bit that marks a response.
    pub const RESPONSE: u16 = 0x8000;
}

/// Response codes.
pub mod code {
    pub const OK: u16 = 0x01;
    pub const STREAM_DOES_NOT_EXIST: u16 = 0x02;
    pub const SUBSCRIPTION_ID_ALREADY_EXISTS: u16 = 0x03;
    pub const SUBSCRIPTION_ID_DOES_NOT_EXIST: u16 = 0x04;
    pub const STREAM_ALREADY_EXISTS: u16 = 0x05;
    pub const STREAM_NOT_AVAILABLE: u16 = 0x06;
    pub const SASL_MECHANISM_NOT_SUPPORTED: u16 = 0x07;
    pub const AUTHENTICATION_FAILURE: u16 = 0x08;
    pub const SASL_ERROR: u16 = 0x09;
    pub const SASL_CHALLENGE: u16 = 0x0a;
    pub const SASL_AUTHENTICATION_FAILURE_LOOPBACK: u16 = 0x0b;
    pub const VIRTUAL_HOST_ACCESS_FAILURE: u16 = 0x0c;
    pub const UNKNOWN_FRAME: u16 = 0x0d;
    pub const FRAME_TOO_LARGE: u16 = 0x0e;
    pub const INTERNAL_ERROR: u16 = 0x0f;
    pub const ACCESS_REFUSED: u16 = 0x10;
    pub const PRECONDITION_FAILED: u16 = 0x11;
    pub const PUBLISHER_DOES_NOT_EXIST: u16 = 0x12;
    pub const NO_OFFSET: u16 = 0x13;
}

/// A frame that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Larger than the negotiated frame_max.
    #[error("frame of {size} bytes is larger than frame_max {max}")]
    TooLarge {
        /// Its size.
        size: u32,
        /// The limit.
        max: u32,
    },
    /// A key this side does not know.
    #[error("unknown command key 0x{0:04x}")]
    UnknownKey(u16),
    /// Fields missing or malformed.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpecification {
    /// The oldest message.
    First,
    /// The last chunk.
    Last,
    /// What is published from now on.
    Next,
    /// An offset.
    Offset(u64),
    /// A time, ms since the epoch.
    Timestamp(i64),
}

impl OffsetSpecification {
    fn encode(&self, out: &mut BytesMut) {
        match self {
            OffsetSpecification::First => out.put_u16(1),
            OffsetSpecification::Last => out.put_u16(2),
            OffsetSpecification::Next => out.put_u16(3),
            OffsetSpecification::Offset(o) => {
                out.put_u16(4);
                out.put_u64(*o);
            }
            OffsetSpecification::Timestamp(t) => {
                out.put_u16(5);
                out.put_i64(*t);
            }
        }
    }

    fn decode(r: &mut Reader) -> Result<Option<OffsetSpecification>, FrameError> {
        Ok(Some(match r.u16()? {
            0 => return Ok(None),
            1 => OffsetSpecification::First,
            2 => OffsetSpecification::Last,
            3 => OffsetSpecification::Next,
            4 => OffsetSpecification::Offset(r.u64()?),
            5 => OffsetSpecification::Timestamp(r.u64()? as i64),
            _ => return Err(r.bad()),
        }))
    }
}

/// A message in a publish frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedMessage {
    /// The publisher's sequence number for it.
    pub publishing_id: u64,
    /// Its filter value (publish version 2).
    pub filter_value: Option<String>,
    /// The message (AMQP 1.0 encoded).
    pub message: Bytes,
}

/// Key-value pairs (properties, arguments).
pub type Properties = Vec<(String, String)>;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Opens the conversation with the client's properties.
    PeerProperties { corr: u32, properties: Properties },
    /// Asks for the SASL mechanisms.
    SaslHandshake { corr: u32 },
    /// A SASL response.
    SaslAuthenticate {
        corr: u32,
        mechanism: String,
        data: Bytes,
    },
    /// The client's answer to the server's tune.
    Tune { frame_max: u32, heartbeat: u32 },
    /// Opens a virtual host.
    Open { corr: u32, vhost: String },
    /// Closes the connection.
    Close {
        corr: u32,
        code: u16,
        reason: String,
    },
    /// Answers a server's close.
    CloseResponse { corr: u32, code: u16 },
    /// Keeps the connection alive.
    Heartbeat,
    /// Declares a publisher on a stream.
    DeclarePublisher {
        corr: u32,
        publisher_id: u8,
        reference: Option<String>,
        stream: String,
    },
    /// Publishes messages.
    Publish {
        version: u16,
        publisher_id: u8,
        messages: Vec<PublishedMessage>,
    },
    /// The last sequence a named publisher stored.
    QueryPublisherSequence {
        corr: u32,
        reference: String,
        stream: String,
    },
    /// Deletes a publisher.
    DeletePublisher { corr: u32, publisher_id: u8 },
    /// Subscribes to a stream.
    Subscribe {
        corr: u32,
        subscription_id: u8,
        stream: String,
        offset: OffsetSpecification,
        credit: u16,
        properties: Properties,
    },
    /// Gives a subscription more chunks of credit.
    Credit { subscription_id: u8, credit: u16 },
    /// Stores a consumer's offset under a name.
    StoreOffset {
        reference: String,
        stream: String,
        offset: u64,
    },
    /// Reads a stored offset.
    QueryOffset {
        corr: u32,
        reference: String,
        stream: String,
    },
    /// Ends a subscription.
    Unsubscribe { corr: u32, subscription_id: u8 },
    /// Creates a stream.
    Create {
        corr: u32,
        stream: String,
        arguments: Properties,
    },
    /// Deletes a stream.
    Delete { corr: u32, stream: String },
    /// Where streams live.
    Metadata { corr: u32, streams: Vec<String> },
    /// The partitions a routing key goes to in a super stream.
    Route {
        corr: u32,
        routing_key: String,
        super_stream: String,
    },
    /// The partitions of a super stream.
    Partitions { corr: u32, super_stream: String },
    /// Answers a consumer update (single active consumer).
    ConsumerUpdateResponse {
        corr: u32,
        code: u16,
        offset: Option<OffsetSpecification>,
    },
    /// The command versions the client supports: key, min, max.
    ExchangeCommandVersions {
        corr: u32,
        commands: Vec<(u16, u16, u16)>,
    },
    /// A stream's statistics.
    StreamStats { corr: u32, stream: String },
    /// Creates a super stream.
    CreateSuperStream {
        corr: u32,
        name: String,
        partitions: Vec<String>,
        binding_keys: Vec<String>,
        arguments: Properties,
    },
    /// Deletes a super stream.
    DeleteSuperStream { corr: u32, name: String },
}

/// A stream in a metadata response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMetadata {
    /// Its name.
    pub name: String,
    /// OK or why not.
    pub code: u16,
    /// The broker reference of its leader.
    pub leader: u16,
    /// Its replicas' broker references.
    pub replicas: Vec<u16>,
}

/// What a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// A response with only a code (most requests).
    Response { key: u16, corr: u32, code: u16 },
    /// The server's properties.
    PeerPropertiesResponse {
        corr: u32,
        code: u16,
        properties: Properties,
    },
    /// The SASL mechanisms offered.
    SaslHandshakeResponse {
        corr: u32,
        code: u16,
        mechanisms: Vec<String>,
    },
    /// The server's frame_max and heartbeat proposal.
    Tune { frame_max: u32, heartbeat: u32 },
    /// The vhost was opened (or not), with connection properties.
    OpenResponse {
        corr: u32,
        code: u16,
        properties: Properties,
    },
    /// The server closes the connection.
    Close {
        corr: u32,
        code: u16,
        reason: String,
    },
    /// Keeps the connection alive.
    Heartbeat,
    /// Publishes made durable.
    PublishConfirm { publisher_id: u8, ids: Vec<u64> },
    /// Publishes refused: id and code.
    PublishError {
        publisher_id: u8,
        errors: Vec<(u64, u16)>,
    },
    /// A named publisher's last sequence.
    QueryPublisherSequenceResponse { corr: u32, code: u16, sequence: u64 },
    /// A chunk for a subscription (version 2 carries the committed chunk
    /// id); `chunk` is the whole stored chunk.
    Deliver {
        subscription_id: u8,
        committed: Option<u64>,
        chunk: Bytes,
    },
    /// A credit for an unknown subscription.
    CreditResponse { code: u16, subscription_id: u8 },
    /// A stored offset.
    QueryOffsetResponse { corr: u32, code: u16, offset: u64 },
    /// Brokers and streams.
    MetadataResponse {
        corr: u32,
        brokers: Vec<(u16, String, u32)>,
        streams: Vec<StreamMetadata>,
    },
    /// A stream changed (e.g. was deleted).
    MetadataUpdate { code: u16, stream: String },
    /// The streams a routing key goes to.
    RouteResponse {
        corr: u32,
        code: u16,
        streams: Vec<String>,
    },
    /// A super stream's partitions.
    PartitionsResponse {
        corr: u32,
        code: u16,
        streams: Vec<String>,
    },
    /// Tells a single-active-consumer subscription whether it is active.
    ConsumerUpdate {
        corr: u32,
        subscription_id: u8,
        active: bool,
    },
    /// The command versions the server supports.
    ExchangeCommandVersionsResponse {
        corr: u32,
        code: u16,
        commands: Vec<(u16, u16, u16)>,
    },
    /// A stream's statistics.
    StreamStatsResponse {
        corr: u32,
        code: u16,
        stats: Vec<(String, i64)>,
    },
}

/// Reads a frame's fields.
struct Reader {
    b: Bytes,
    what: &'static str,
}

impl Reader {
    fn bad(&self) -> FrameError {
        FrameError::Malformed(self.what)
    }
    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.b.remaining() < n {
            return Err(self.bad());
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        self.need(2)?;
        Ok(self.b.get_u16())
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.b.get_u32())
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.b.get_u64())
    }
    fn opt_string(&mut self) -> Result<Option<String>, FrameError> {
        let len = self.u16()? as i16;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        self.need(len)?;
        let raw = self.b.split_to(len);
        String::from_utf8(raw.to_vec())
            .map(Some)
            .map_err(|_| self.bad())
    }
    fn string(&mut self) -> Result<String, FrameError> {
        Ok(self.opt_string()?.unwrap_or_default())
    }
    fn bytes(&mut self) -> Result<Bytes, FrameError> {
        let len = self.u32()? as i32;
        if len < 0 {
            return Ok(Bytes::new());
        }
        let len = len as usize;
        self.need(len)?;
        Ok(self.b.split_to(len))
    }
    fn count(&mut self, min_item: usize) -> Result<usize, FrameError> {
        let n = self.u32()? as i32;
        if n < 0 {
            return Err(self.bad());
        }
        let n = n as usize;
        // Each item takes at least `min_item` bytes: a count larger than the
        // frame can hold is malformed, not an allocation.
        if n.saturating_mul(min_item) > self.b.remaining() {
            return Err(self.bad());
        }
        Ok(n)
    }
    fn strings(&mut self) -> Result<Vec<String>, FrameError> {
        let n = self.count(2)?;
        (0..n).map(|_| self.string()).collect()
    }
    fn properties(&mut self) -> Result<Properties, FrameError> {
        let n = self.count(4)?;
        (0..n)
            .map(|_| Ok((self.string()?, self.string()?)))
            .collect()
    }
    fn commands(&mut self) -> Result<Vec<(u16, u16, u16)>, FrameError> {
        let n = self.count(6)?;
        (0..n)
            .map(|_| Ok((self.u16()?, self.u16()?, self.u16()?)))
            .collect()
    }
}

fn put_string(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len().min(i16::MAX as usize) as u16);
    out.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn put_opt_string(out: &mut BytesMut, s: &Option<String>) {
    match s {
        Some(s) => put_string(out, s),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_strings(out: &mut BytesMut, items: &[String]) {
    out.put_u32(items.len() as u32);
    items.iter().for_each(|s| put_string(out, s));
}

fn put_properties(out: &mut BytesMut, props: &Properties) {
    out.put_u32(props.len() as u32);
    for (k, v) in props {
        put_string(out, k);
        put_string(out, v);
    }
}

fn put_commands(out: &mut BytesMut, commands: &[(u16, u16, u16)]) {
    out.put_u32(commands.len() as u32);
    for (k, min, max) in commands {
        out.put_u16(*k);
        out.put_u16(*min);
        out.put_u16(*max);
    }
}

/// Writes a frame: the size, then what `body` writes.
fn framed(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let at = out.len();
    out.put_u32(0);
    body(out);
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

/// Splits the next whole frame off `buf`: None until it has arrived.
pub fn split_frame(buf: &mut BytesMut, max: u32) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if max != 0 && size > max {
        return Err(FrameError::TooLarge { size, max });
    }
    if buf.len() < 4 + size as usize {
        buf.reserve(4 + size as usize - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size as usize).freeze()))
}

impl Request {
    /// Decodes a frame's content (after its size).
    pub fn decode(frame: Bytes) -> Result<Request, FrameError> {
        let mut r = Reader {
            b: frame,
            what: "command",
        };
        let k = r.u16()?;
        let version = r.u16()?;
        r.what = key_name(k);
        let req = match k {
            key::PEER_PROPERTIES => Request::PeerProperties {
                corr: r.u32()?,
                properties: r.properties()?,
            },
            key::SASL_HANDSHAKE => Request::SaslHandshake { corr: r.u32()? },
            key::SASL_AUTHENTICATE => Request::SaslAuthenticate {
                corr: r.u32()?,
                mechanism: r.string()?,
                data: r.bytes()?,
            },
            key::TUNE => Request::Tune {
                frame_max: r.u32()?,
                heartbeat: r.u32()?,
            },
            key::OPEN => Request::Open {
                corr: r.u32()?,
                vhost: r.string()?,
            },
            key::CLOSE => Request::Close {
                corr: r.u32()?,
                code: r.u16()?,
                reason: r.string()?,
            },
            k if k == key::CLOSE | key::RESPONSE => Request::CloseResponse {
                corr: r.u32()?,
                code: r.u16()?,
            },
            key::HEARTBEAT => Request::Heartbeat,
            key::DECLARE_PUBLISHER => Request::DeclarePublisher {
                corr: r.u32()?,
                publisher_id: r.u8()?,
                reference: r.opt_string()?.filter(|s| !s.is_empty()),
                stream: r.string()?,
            },
            key::PUBLISH => {
                let publisher_id = r.u8()?;
                let n = r.count(12)?;
                let mut messages = Vec::with_capacity(n);
                for _ in 0..n {
                    let publishing_id = r.u64()?;
                    let filter_value = if version >= 2 { r.opt_string()? } else { None };
                    messages.push(PublishedMessage {
                        publishing_id,
                        filter_value,
                        message: r.bytes()?,
                    });
                }
                Request::Publish {
                    version,
                    publisher_id,
                    messages,
                }
            }
            key::QUERY_PUBLISHER_SEQUENCE => Request::QueryPublisherSequence {
                corr: r.u32()?,
                reference: r.string()?,
                stream: r.string()?,
            },
            key::DELETE_PUBLISHER => Request::DeletePublisher {
                corr: r.u32()?,
                publisher_id: r.u8()?,
            },
            key::SUBSCRIBE => {
                let corr = r.u32()?;
                let subscription_id = r.u8()?;
                let stream = r.string()?;
                let Some(offset) = OffsetSpecification::decode(&mut r)? else {
                    return Err(r.bad());
                };
                let credit = r.u16()?;
                let properties = if r.b.has_remaining() {
                    r.properties()?
                } else {
                    Vec::new()
                };
                Request::Subscribe {
                    corr,
                    subscription_id,
                    stream,
                    offset,
                    credit,
                    properties,
                }
            }
            key::CREDIT => Request::Credit {
                subscription_id: r.u8()?,
                credit: r.u16()?,
            },
            key::STORE_OFFSET => Request::StoreOffset {
                reference: r.string()?,
                stream: r.string()?,
                offset: r.u64()?,
            },
            key::QUERY_OFFSET => Request::QueryOffset {
                corr: r.u32()?,
                reference: r.string()?,
                stream: r.string()?,
            },
            key::UNSUBSCRIBE => Request::Unsubscribe {
                corr: r.u32()?,
                subscription_id: r.u8()?,
            },
            key::CREATE => Request::Create {
                corr: r.u32()?,
                stream: r.string()?,
                arguments: r.properties()?,
            },
            key::DELETE => Request::Delete {
                corr: r.u32()?,
                stream: r.string()?,
            },
            key::METADATA => Request::Metadata {
                corr: r.u32()?,
                streams: r.strings()?,
            },
            key::ROUTE => Request::Route {
                corr: r.u32()?,
                routing_key: r.string()?,
                super_stream: r.string()?,
            },
            key::PARTITIONS => Request::Partitions {
                corr: r.u32()?,
                super_stream: r.string()?,
            },
            k if k == key::CONSUMER_UPDATE | key::RESPONSE => Request::ConsumerUpdateResponse {
                corr: r.u32()?,
                code: r.u16()?,
                offset: OffsetSpecification::decode(&mut r)?,
            },
            key::EXCHANGE_COMMAND_VERSIONS => Request::ExchangeCommandVersions {
                corr: r.u32()?,
                commands: r.commands()?,
            },
            key::STREAM_STATS => Request::StreamStats {
                corr: r.u32()?,
                stream: r.string()?,
            },
            key::CREATE_SUPER_STREAM => Request::CreateSuperStream {
                corr: r.u32()?,
                name: r.string()?,
                partitions: r.strings()?,
                binding_keys: r.strings()?,
                arguments: r.properties()?,
            },
            key::DELETE_SUPER_STREAM => Request::DeleteSuperStream {
                corr: r.u32()?,
                name: r.string()?,
            },
            other => return Err(FrameError::UnknownKey(other)),
        };
        Ok(req)
    }

    /// The correlation id a response to it must carry, if it expects one.
    pub fn correlation(&self) -> Option<(u16, u32)> {
        use Request::*;
        Some(match self {
            PeerProperties { corr, .. } => (key::PEER_PROPERTIES, *corr),
            SaslHandshake { corr } => (key::SASL_HANDSHAKE, *corr),
            SaslAuthenticate { corr, .. } => (key::SASL_AUTHENTICATE, *corr),
            Open { corr, .. } => (key::OPEN, *corr),
            Close { corr, .. } => (key::CLOSE, *corr),
            DeclarePublisher { corr, .. } => (key::DECLARE_PUBLISHER, *corr),
            QueryPublisherSequence { corr, .. } => (key::QUERY_PUBLISHER_SEQUENCE, *corr),
            DeletePublisher { corr, .. } => (key::DELETE_PUBLISHER, *corr),
            Subscribe { corr, .. } => (key::SUBSCRIBE, *corr),
            QueryOffset { corr, .. } => (key::QUERY_OFFSET, *corr),
            Unsubscribe { corr, .. } => (key::UNSUBSCRIBE, *corr),
            Create { corr, .. } => (key::CREATE, *corr),
            Delete { corr, .. } => (key::DELETE, *corr),
            Metadata { corr, .. } => (key::METADATA, *corr),
            Route { corr, .. } => (key::ROUTE, *corr),
            Partitions { corr, .. } => (key::PARTITIONS, *corr),
            ExchangeCommandVersions { corr, .. } => (key::EXCHANGE_COMMAND_VERSIONS, *corr),
            StreamStats { corr, .. } => (key::STREAM_STATS, *corr),
            CreateSuperStream { corr, .. } => (key::CREATE_SUPER_STREAM, *corr),
            DeleteSuperStream { corr, .. } => (key::DELETE_SUPER_STREAM, *corr),
            _ => return None,
        })
    }

    /// Encodes the frame, size included (a client's side; for tests and
    /// tools).
    pub fn encode(&self, out: &mut BytesMut) {
        framed(out, |o| self.encode_body(o));
    }

    fn encode_body(&self, o: &mut BytesMut) {
        let head = |o: &mut BytesMut, k: u16, v: u16| {
            o.put_u16(k);
            o.put_u16(v);
        };
        match self {
            Request::PeerProperties { corr, properties } => {
                head(o, key::PEER_PROPERTIES, 1);
                o.put_u32(*corr);
                put_properties(o, properties);
            }
            Request::SaslHandshake { corr } => {
                head(o, key::SASL_HANDSHAKE, 1);
                o.put_u32(*corr);
            }
            Request::SaslAuthenticate {
                corr,
                mechanism,
                data,
            } => {
                head(o, key::SASL_AUTHENTICATE, 1);
                o.put_u32(*corr);
                put_string(o, mechanism);
                put_bytes(o, data);
            }
            Request::Tune {
                frame_max,
                heartbeat,
            } => {
                head(o, key::TUNE, 1);
                o.put_u32(*frame_max);
                o.put_u32(*heartbeat);
            }
            Request::Open { corr, vhost } => {
                head(o, key::OPEN, 1);
                o.put_u32(*corr);
                put_string(o, vhost);
            }
            Request::Close { corr, code, reason } => {
                head(o, key::CLOSE, 1);
                o.put_u32(*corr);
                o.put_u16(*code);
                put_string(o, reason);
            }
            Request::CloseResponse { corr, code } => {
                head(o, key::CLOSE | key::RESPONSE, 1);
                o.put_u32(*corr);
                o.put_u16(*code);
            }
            Request::Heartbeat => head(o, key::HEARTBEAT, 1),
            Request::DeclarePublisher {
                corr,
                publisher_id,
                reference,
                stream,
            } => {
                head(o, key::DECLARE_PUBLISHER, 1);
                o.put_u32(*corr);
                o.put_u8(*publisher_id);
                put_opt_string(o, reference);
                put_string(o, stream);
            }
            Request::Publish {
                version,
                publisher_id,
                messages,
            } => {
                head(o, key::PUBLISH, *version);
                o.put_u8(*publisher_id);
                o.put_u32(messages.len() as u32);
                for m in messages {
                    o.put_u64(m.publishing_id);
                    if *version >= 2 {
                        put_opt_string(o, &m.filter_value);
                    }
                    put_bytes(o, &m.message);
                }
            }
            Request::QueryPublisherSequence {
                corr,
                reference,
                stream,
            } => {
                head(o, key::QUERY_PUBLISHER_SEQUENCE, 1);
                o.put_u32(*corr);
                put_string(o, reference);
                put_string(o, stream);
            }
            Request::DeletePublisher { corr, publisher_id } => {
                head(o, key::DELETE_PUBLISHER, 1);
                o.put_u32(*corr);
                o.put_u8(*publisher_id);
            }
            Request::Subscribe {
                corr,
                subscription_id,
                stream,
                offset,
                credit,
                properties,
            } => {
                head(o, key::SUBSCRIBE, 1);
                o.put_u32(*corr);
                o.put_u8(*subscription_id);
                put_string(o, stream);
                offset.encode(o);
                o.put_u16(*credit);
                put_properties(o, properties);
            }
            Request::Credit {
                subscription_id,
                credit,
            } => {
                head(o, key::CREDIT, 1);
                o.put_u8(*subscription_id);
                o.put_u16(*credit);
            }
            Request::StoreOffset {
                reference,
                stream,
                offset,
            } => {
                head(o, key::STORE_OFFSET, 1);
                put_string(o, reference);
                put_string(o, stream);
                o.put_u64(*offset);
            }
            Request::QueryOffset {
                corr,
                reference,
                stream,
            } => {
                head(o, key::QUERY_OFFSET, 1);
                o.put_u32(*corr);
                put_string(o, reference);
                put_string(o, stream);
            }
            Request::Unsubscribe {
                corr,
                subscription_id,
            } => {
                head(o, key::UNSUBSCRIBE, 1);
                o.put_u32(*corr);
                o.put_u8(*subscription_id);
            }
            Request::Create {
                corr,
                stream,
                arguments,
            } => {
                head(o, key::CREATE, 1);
                o.put_u32(*corr);
                put_string(o, stream);
                put_properties(o, arguments);
            }
            Request::Delete { corr, stream } => {
                head(o, key::DELETE, 1);
                o.put_u32(*corr);
                put_string(o, stream);
            }
            Request::Metadata { corr, streams } => {
                head(o, key::METADATA, 1);
                o.put_u32(*corr);
                put_strings(o, streams);
            }
            Request::Route {
                corr,
                routing_key,
                super_stream,
            } => {
                head(o, key::ROUTE, 1);
                o.put_u32(*corr);
                put_string(o, routing_key);
                put_string(o, super_stream);
            }
            Request::Partitions { corr, super_stream } => {
                head(o, key::PARTITIONS, 1);
                o.put_u32(*corr);
                put_string(o, super_stream);
            }
            Request::ConsumerUpdateResponse { corr, code, offset } => {
                head(o, key::CONSUMER_UPDATE | key::RESPONSE, 1);
                o.put_u32(*corr);
                o.put_u16(*code);
                match offset {
                    Some(spec) => spec.encode(o),
                    None => o.put_u16(0),
                }
            }
            Request::ExchangeCommandVersions { corr, commands } => {
                head(o, key::EXCHANGE_COMMAND_VERSIONS, 1);
                o.put_u32(*corr);
                put_commands(o, commands);
            }
            Request::StreamStats { corr, stream } => {
                head(o, key::STREAM_STATS, 1);
                o.put_u32(*corr);
                put_string(o, stream);
            }
            Request::CreateSuperStream {
                corr,
                name,
                partitions,
                binding_keys,
                arguments,
            } => {
                head(o, key::CREATE_SUPER_STREAM, 1);
                o.put_u32(*corr);
                put_string(o, name);
                put_strings(o, partitions);
                put_strings(o, binding_keys);
                put_properties(o, arguments);
            }
            Request::DeleteSuperStream { corr, name } => {
                head(o, key::DELETE_SUPER_STREAM, 1);
                o.put_u32(*corr);
                put_string(o, name);
            }
        }
    }
}

fn key_name(k: u16) -> &'static str {
    match k & !key::RESPONSE {
        key::DECLARE_PUBLISHER => "declare publisher",
        key::PUBLISH => "publish",
        key::SUBSCRIBE => "subscribe",
        key::PEER_PROPERTIES => "peer properties",
        key::SASL_AUTHENTICATE => "sasl authenticate",
        key::METADATA => "metadata",
        key::CREATE => "create",
        key::CREATE_SUPER_STREAM => "create super stream",
        _ => "command",
    }
}

impl ServerFrame {
    /// Encodes the frame, size included.
    pub fn encode(&self, out: &mut BytesMut) {
        framed(out, |o| self.encode_body(o));
    }

    fn encode_body(&self, o: &mut BytesMut) {
        let head = |o: &mut BytesMut, k: u16, v: u16| {
            o.put_u16(k);
            o.put_u16(v);
        };
        let response = |o: &mut BytesMut, k: u16, corr: u32, code: u16| {
            o.put_u16(k | key::RESPONSE);
            o.put_u16(1);
            o.put_u32(corr);
            o.put_u16(code);
        };
        match self {
            ServerFrame::Response { key: k, corr, code } => response(o, *k, *corr, *code),
            ServerFrame::PeerPropertiesResponse {
                corr,
                code,
                properties,
            } => {
                response(o, key::PEER_PROPERTIES, *corr, *code);
                put_properties(o, properties);
            }
            ServerFrame::SaslHandshakeResponse {
                corr,
                code,
                mechanisms,
            } => {
                response(o, key::SASL_HANDSHAKE, *corr, *code);
                put_strings(o, mechanisms);
            }
            ServerFrame::Tune {
                frame_max,
                heartbeat,
            } => {
                head(o, key::TUNE, 1);
                o.put_u32(*frame_max);
                o.put_u32(*heartbeat);
            }
            ServerFrame::OpenResponse {
                corr,
                code,
                properties,
            } => {
                response(o, key::OPEN, *corr, *code);
                put_properties(o, properties);
            }
            ServerFrame::Close { corr, code, reason } => {
                head(o, key::CLOSE, 1);
                o.put_u32(*corr);
                o.put_u16(*code);
                put_string(o, reason);
            }
            ServerFrame::Heartbeat => head(o, key::HEARTBEAT, 1),
            ServerFrame::PublishConfirm { publisher_id, ids } => {
                head(o, key::PUBLISH_CONFIRM, 1);
                o.put_u8(*publisher_id);
                o.put_u32(ids.len() as u32);
                ids.iter().for_each(|id| o.put_u64(*id));
            }
            ServerFrame::PublishError {
                publisher_id,
                errors,
            } => {
                head(o, key::PUBLISH_ERROR, 1);
                o.put_u8(*publisher_id);
                o.put_u32(errors.len() as u32);
                for (id, c) in errors {
                    o.put_u64(*id);
                    o.put_u16(*c);
                }
            }
            ServerFrame::QueryPublisherSequenceResponse {
                corr,
                code,
                sequence,
            } => {
                response(o, key::QUERY_PUBLISHER_SEQUENCE, *corr, *code);
                o.put_u64(*sequence);
            }
            ServerFrame::Deliver {
                subscription_id,
                committed,
                chunk,
            } => {
                head(o, key::DELIVER, if committed.is_some() { 2 } else { 1 });
                o.put_u8(*subscription_id);
                if let Some(c) = committed {
                    o.put_u64(*c);
                }
                o.put_slice(chunk);
            }
            ServerFrame::CreditResponse {
                code,
                subscription_id,
            } => {
                head(o, key::CREDIT | key::RESPONSE, 1);
                o.put_u16(*code);
                o.put_u8(*subscription_id);
            }
            ServerFrame::QueryOffsetResponse { corr, code, offset } => {
                response(o, key::QUERY_OFFSET, *corr, *code);
                o.put_u64(*offset);
            }
            ServerFrame::MetadataResponse {
                corr,
                brokers,
                streams,
            } => {
                head(o, key::METADATA | key::RESPONSE, 1);
                o.put_u32(*corr);
                o.put_u32(brokers.len() as u32);
                for (reference, host, port) in brokers {
                    o.put_u16(*reference);
                    put_string(o, host);
                    o.put_u32(*port);
                }
                o.put_u32(streams.len() as u32);
                for s in streams {
                    put_string(o, &s.name);
                    o.put_u16(s.code);
                    o.put_u16(s.leader);
                    o.put_u32(s.replicas.len() as u32);
                    s.replicas.iter().for_each(|r| o.put_u16(*r));
                }
            }
            ServerFrame::MetadataUpdate { code, stream } => {
                head(o, key::METADATA_UPDATE, 1);
                o.put_u16(*code);
                put_string(o, stream);
            }
            ServerFrame::RouteResponse {
                corr,
                code,
                streams,
            } => {
                response(o, key::ROUTE, *corr, *code);
                put_strings(o, streams);
            }
            ServerFrame::PartitionsResponse {
                corr,
                code,
                streams,
            } => {
                response(o, key::PARTITIONS, *corr, *code);
                put_strings(o, streams);
            }
            ServerFrame::ConsumerUpdate {
                corr,
                subscription_id,
                active,
            } => {
                head(o, key::CONSUMER_UPDATE, 1);
                o.put_u32(*corr);
                o.put_u8(*subscription_id);
                o.put_u8(u8::from(*active));
            }
            ServerFrame::ExchangeCommandVersionsResponse {
                corr,
                code,
                commands,
            } => {
                response(o, key::EXCHANGE_COMMAND_VERSIONS, *corr, *code);
                put_commands(o, commands);
            }
            ServerFrame::StreamStatsResponse { corr, code, stats } => {
                response(o, key::STREAM_STATS, *corr, *code);
                o.put_u32(stats.len() as u32);
                for (k, v) in stats {
                    put_string(o, k);
                    o.put_i64(*v);
                }
            }
        }
    }

    /// Decodes a server frame's content (a client's side; for tests and
    /// tools). `Response` stands for every code-only response.
    pub fn decode(frame: Bytes) -> Result<ServerFrame, FrameError> {
        let mut r = Reader {
            b: frame,
            what: "server frame",
        };
        let k = r.u16()?;
        let version = r.u16()?;
        let f = match k {
            key::TUNE => ServerFrame::Tune {
                frame_max: r.u32()?,
                heartbeat: r.u32()?,
            },
            key::CLOSE => ServerFrame::Close {
                corr: r.u32()?,
                code: r.u16()?,
                reason: r.string()?,
            },
            key::HEARTBEAT => ServerFrame::Heartbeat,
            key::PUBLISH_CONFIRM => {
                let publisher_id = r.u8()?;
                let n = r.count(8)?;
                ServerFrame::PublishConfirm {
                    publisher_id,
                    ids: (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?,
                }
            }
            key::PUBLISH_ERROR => {
                let publisher_id = r.u8()?;
                let n = r.count(10)?;
                ServerFrame::PublishError {
                    publisher_id,
                    errors: (0..n)
                        .map(|_| Ok((r.u64()?, r.u16()?)))
                        .collect::<Result<_, FrameError>>()?,
                }
            }
            key::DELIVER => ServerFrame::Deliver {
                subscription_id: r.u8()?,
                committed: if version >= 2 { Some(r.u64()?) } else { None },
                chunk: r.b.split_off(0),
            },
            key::METADATA_UPDATE => ServerFrame::MetadataUpdate {
                code: r.u16()?,
                stream: r.string()?,
            },
            key::CONSUMER_UPDATE => ServerFrame::ConsumerUpdate {
                corr: r.u32()?,
                subscription_id: r.u8()?,
                active: r.u8()? != 0,
            },
            k if k == key::CREDIT | key::RESPONSE => ServerFrame::CreditResponse {
                code: r.u16()?,
                subscription_id: r.u8()?,
            },
            k if k == key::METADATA | key::RESPONSE => {
                let corr = r.u32()?;
                let n = r.count(8)?;
                let brokers = (0..n)
                    .map(|_| Ok((r.u16()?, r.string()?, r.u32()?)))
                    .collect::<Result<_, FrameError>>()?;
                let n = r.count(10)?;
                let mut streams = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = r.string()?;
                    let code = r.u16()?;
                    let leader = r.u16()?;
                    let m = r.count(2)?;
                    let replicas = (0..m).map(|_| r.u16()).collect::<Result<_, _>>()?;
                    streams.push(StreamMetadata {
                        name,
                        code,
                        leader,
                        replicas,
                    });
                }
                ServerFrame::MetadataResponse {
                    corr,
                    brokers,
                    streams,
                }
            }
            k if k & key::RESPONSE != 0 => {
                let corr = r.u32()?;
                let code = r.u16()?;
                match k & !key::RESPONSE {
                    key::PEER_PROPERTIES => ServerFrame::PeerPropertiesResponse {
                        corr,
                        code,
                        properties: r.properties()?,
                    },
                    key::SASL_HANDSHAKE => ServerFrame::SaslHandshakeResponse {
                        corr,
                        code,
                        mechanisms: r.strings()?,
                    },
                    key::OPEN => ServerFrame::OpenResponse {
                        corr,
                        code,
                        properties: if r.b.has_remaining() {
                            r.properties()?
                        } else {
                            Vec::new()
                        },
                    },
                    key::QUERY_PUBLISHER_SEQUENCE => ServerFrame::QueryPublisherSequenceResponse {
                        corr,
                        code,
                        sequence: r.u64()?,
                    },
                    key::QUERY_OFFSET => ServerFrame::QueryOffsetResponse {
                        corr,
                        code,
                        offset: r.u64()?,
                    },
                    key::ROUTE => ServerFrame::RouteResponse {
                        corr,
                        code,
                        streams: r.strings()?,
                    },
                    key::PARTITIONS => ServerFrame::PartitionsResponse {
                        corr,
                        code,
                        streams: r.strings()?,
                    },
                    key::EXCHANGE_COMMAND_VERSIONS => {
                        ServerFrame::ExchangeCommandVersionsResponse {
                            corr,
                            code,
                            commands: r.commands()?,
                        }
                    }
                    key::STREAM_STATS => {
                        let n = r.count(10)?;
                        ServerFrame::StreamStatsResponse {
                            corr,
                            code,
                            stats: (0..n)
                                .map(|_| Ok((r.string()?, r.u64()? as i64)))
                                .collect::<Result<_, FrameError>>()?,
                        }
                    }
                    base => ServerFrame::Response {
                        key: base,
                        corr,
                        code,
                    },
                }
            }
            other => return Err(FrameError::UnknownKey(other)),
        };
        Ok(f)
    }
}
