//! A lean stream-protocol client, for `antre-bench stream --client lean`:
//! the frames come from the project's stream-protocol codec
//! (`antre-stream-proto`). The publisher writes pre-encoded messages in
//! large writes while a reader task counts confirms; the consumer checks
//! each delivered chunk's CRC, walks its records and gives credit back.
//!
//! Why: `rabbitmq-stream-client` pays for a callback future and a map entry
//! per published message and decodes every delivered message, and on the
//! benchmark machine it, not the broker, sets the rate against a fast
//! broker (the same reason `run` has its own AMQP 0-9-1 client). It speaks
//! RabbitMQ 3.10's protocol: peer properties, SASL PLAIN, tune, open,
//! declare publisher, publish and deliver version 1, subscribe, credit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use antre_stream_proto::amqp10::{Body, Message};
use antre_stream_proto::chunk::Chunk;
use antre_stream_proto::frame::{
    split_frame, OffsetSpecification, PublishedMessage, Request, ServerFrame,
};
use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Frames from the broker larger than this are refused: a Deliver carries
/// a whole chunk, which a broker may let grow past the tuned frame_max.
const FRAME_MAX: u32 = 64 << 20;
/// Bytes gathered before one write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Where and what to publish (or read).
#[derive(Debug, Clone)]
pub struct LeanPublish {
    /// Broker host.
    pub host: String,
    /// Stream protocol port.
    pub port: u16,
    /// User and password (SASL PLAIN).
    pub user: String,
    /// Password.
    pub password: String,
    /// The stream, which must exist.
    pub stream: String,
    /// Messages to publish.
    pub messages: u64,
    /// Body size.
    pub size: usize,
    /// Messages per publish frame.
    pub batch: usize,
    /// Most unconfirmed messages in flight.
    pub in_flight: u64,
}

struct Conn {
    socket: TcpStream,
    rbuf: BytesMut,
    corr: u32,
}

impl Conn {
    async fn send(&mut self, req: Request) -> Result<()> {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        self.socket.write_all(&out).await?;
        Ok(())
    }

    async fn next(&mut self) -> Result<ServerFrame> {
        loop {
            if let Some(frame) = split_frame(&mut self.rbuf, FRAME_MAX)? {
                return Ok(ServerFrame::decode(frame)?);
            }
            if self.socket.read_buf(&mut self.rbuf).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Sends a request and waits for its answer's code (1 is OK).
    async fn call(&mut self, make: impl FnOnce(u32) -> Request) -> Result<ServerFrame> {
        self.corr += 1;
        let corr = self.corr;
        self.send(make(corr)).await?;
        loop {
            let frame = self.next().await?;
            let (got, code) = match &frame {
                ServerFrame::Response { corr, code, .. }
                | ServerFrame::PeerPropertiesResponse { corr, code, .. }
                | ServerFrame::SaslHandshakeResponse { corr, code, .. }
                | ServerFrame::OpenResponse { corr, code, .. } => (*corr, *code),
                ServerFrame::Close { reason, code, .. } => {
                    bail!("the broker closed the connection: {code} {reason}")
                }
                _ => continue,
            };
            if got != corr {
                continue;
            }
            if code != 1 {
                bail!("request {corr} refused with code {code}");
            }
            return Ok(frame);
        }
    }
}

/// Connects, authenticates and opens vhost `/`.
async fn open(p: &LeanPublish) -> Result<Conn> {
    let socket = TcpStream::connect((p.host.as_str(), p.port))
        .await
        .with_context(|| format!("connecting to {}:{}", p.host, p.port))?;
    socket.set_nodelay(true)?;
    let mut c = Conn {
        socket,
        rbuf: BytesMut::with_capacity(64 * 1024),
        corr: 0,
    };
    let properties = vec![("product".to_owned(), "antre-bench".to_owned())];
    c.call(|corr| Request::PeerProperties { corr, properties })
        .await?;
    c.call(|corr| Request::SaslHandshake { corr }).await?;
    let mut plain = vec![0u8];
    plain.extend_from_slice(p.user.as_bytes());
    plain.push(0);
    plain.extend_from_slice(p.password.as_bytes());
    c.call(|corr| Request::SaslAuthenticate {
        corr,
        mechanism: "PLAIN".into(),
        data: Bytes::from(plain),
    })
    .await?;
    // The broker tunes next and wants the answer before the open.
    loop {
        if let ServerFrame::Tune {
            frame_max,
            heartbeat,
        } = c.next().await?
        {
            c.send(Request::Tune {
                frame_max,
                heartbeat,
            })
            .await?;
            break;
        }
    }
    c.call(|corr| Request::Open {
        corr,
        vhost: "/".into(),
    })
    .await?;
    Ok(c)
}

/// Connects and declares publisher 0.
async fn open_publisher(p: &LeanPublish) -> Result<Conn> {
    let mut c = open(p).await?;
    let stream = p.stream.clone();
    c.call(|corr| Request::DeclarePublisher {
        corr,
        publisher_id: 0,
        // No name: an empty string, as clients send it (RabbitMQ 3.10
        // refuses the frame with a null string).
        reference: Some(String::new()),
        stream,
    })
    .await?;
    Ok(c)
}

#[derive(Default)]
struct Confirms {
    confirmed: AtomicU64,
    failed: AtomicU64,
    closed: AtomicBool,
    wake: Notify,
}

impl Confirms {
    fn settled(&self) -> u64 {
        self.confirmed.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire)
    }
}

async fn read_confirms(mut read: OwnedReadHalf, mut rbuf: BytesMut, confirms: Arc<Confirms>) {
    let done = |c: &Confirms| {
        c.closed.store(true, Ordering::Release);
        c.wake.notify_one();
    };
    loop {
        loop {
            match split_frame(&mut rbuf, FRAME_MAX) {
                Ok(Some(frame)) => match ServerFrame::decode(frame) {
                    Ok(ServerFrame::PublishConfirm { ids, .. }) => {
                        confirms
                            .confirmed
                            .fetch_add(ids.len() as u64, Ordering::Release);
                        confirms.wake.notify_one();
                    }
                    Ok(ServerFrame::PublishError { errors, .. }) => {
                        confirms
                            .failed
                            .fetch_add(errors.len() as u64, Ordering::Release);
                        confirms.wake.notify_one();
                    }
                    Ok(ServerFrame::Close { .. }) | Err(_) => return done(&confirms),
                    Ok(_) => {}
                },
                Ok(None) => break,
                Err(_) => return done(&confirms),
            }
        }
        match read.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => return done(&confirms),
            Ok(_) => {}
        }
    }
}

/// Publishes and waits for every confirm; returns how many were refused.
pub async fn publish(p: &LeanPublish) -> Result<u64> {
    let c = open_publisher(p).await?;
    let body = Message {
        body: Body::Data(vec![Bytes::from(vec![b'x'; p.size])]),
        ..Default::default()
    }
    .to_bytes();
    let (read, mut write) = c.socket.into_split();
    let confirms = Arc::new(Confirms::default());
    let reader = tokio::spawn(read_confirms(read, c.rbuf, Arc::clone(&confirms)));
    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES * 2);
    let mut sent = 0u64;
    while sent < p.messages {
        let notified = confirms.wake.notified();
        if confirms.closed.load(Ordering::Acquire) {
            bail!("the broker closed the connection after {sent} messages");
        }
        let room = p.in_flight.saturating_sub(sent - confirms.settled());
        if room == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            continue;
        }
        let mut budget = room.min(p.messages - sent);
        while budget > 0 && out.len() < WRITE_BATCH_BYTES {
            let n = (p.batch as u64).min(budget);
            let messages = (sent + 1..=sent + n)
                .map(|id| PublishedMessage {
                    publishing_id: id,
                    filter_value: None,
                    message: body.clone(),
                })
                .collect();
            Request::Publish {
                version: 1,
                publisher_id: 0,
                messages,
            }
            .encode(&mut out);
            sent += n;
            budget -= n;
        }
        write.write_all(&out).await?;
        out.clear();
    }
    loop {
        let notified = confirms.wake.notified();
        if confirms.settled() >= p.messages {
            break;
        }
        if confirms.closed.load(Ordering::Acquire) {
            return Err(anyhow!(
                "the broker closed the connection with {} of {} confirmed",
                confirms.settled(),
                p.messages
            ));
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
    }
    let _ = write.shutdown().await;
    reader.abort();
    Ok(confirms.failed.load(Ordering::Acquire))
}

/// Credit a subscription starts with (chunks it may be sent ahead).
const INITIAL_CREDIT: u16 = 10;

/// Reads the stream from `first` until `p.messages` records arrived,
/// giving one credit back per chunk as clients do.
pub async fn consume(p: &LeanPublish) -> Result<()> {
    let mut c = open(p).await?;
    let stream = p.stream.clone();
    c.call(|corr| Request::Subscribe {
        corr,
        subscription_id: 0,
        stream,
        offset: OffsetSpecification::First,
        credit: INITIAL_CREDIT,
        properties: Vec::new(),
    })
    .await?;
    let mut got = 0u64;
    let mut out = BytesMut::new();
    while got < p.messages {
        while let Some(frame) = split_frame(&mut c.rbuf, FRAME_MAX)? {
            match ServerFrame::decode(frame)? {
                ServerFrame::Deliver { chunk, .. } => {
                    let chunk = Chunk::decode(chunk)?;
                    got += chunk.records()?.len() as u64;
                    Request::Credit {
                        subscription_id: 0,
                        credit: 1,
                    }
                    .encode(&mut out);
                }
                ServerFrame::Close { code, reason, .. } => {
                    bail!("the broker closed the connection: {code} {reason}")
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            c.socket.write_all(&out).await?;
            out.clear();
        }
        if got < p.messages && c.socket.read_buf(&mut c.rbuf).await? == 0 {
            bail!("the broker closed the connection after {got} records");
        }
    }
    Ok(())
}
