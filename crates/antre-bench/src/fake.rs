//! An in-process fake AMQP server, to measure the tool without a broker.
//!
//! It completes the handshake, says yes to every declare, swallows
//! publishes (acking them when the channel is in confirm mode) and, once a
//! consumer subscribes, streams deliveries to it as fast as the prefetch
//! allows. What the tool reaches against it is the tool's own ceiling: any
//! broker that runs slower than that is measured, not the tool.
//!
//! It runs on its own OS thread with its own single-threaded runtime, so its
//! work is not mixed into the client's runtime (it still shares the CPU).
//! Like the tool, it is built to cost little per message: publishes are
//! counted by scanning frame headers, never decoded, and deliveries are one
//! template copy with two patches (delivery tag and timestamp).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use antre_amqp::method::*;
use antre_amqp::{encode_content, encode_method, BasicProperties, FieldTable, Method};
use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::now_ns;

/// What the fake server saw, for tests and the self-test report.
#[derive(Debug, Default)]
pub struct FakeStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// basic.publish frames received.
    pub published: AtomicU64,
    /// Deliveries sent to consumers.
    pub delivered: AtomicU64,
}

/// A running fake server.
pub struct FakeServer {
    /// The address it listens on (127.0.0.1, a free port).
    pub addr: SocketAddr,
    /// Counters of what it saw.
    pub stats: Arc<FakeStats>,
}

impl FakeServer {
    /// Starts a fake server whose deliveries carry `body_size`-byte bodies.
    pub fn start(body_size: usize) -> Result<FakeServer> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let stats = Arc::new(FakeStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("fake-amqp".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    while let Ok((stream, _)) = listener.accept().await {
                        let stats = thread_stats.clone();
                        stats.connections.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(async move {
                            let _ = serve(stream, stats, body_size.max(8)).await;
                        });
                    }
                });
            })?;
        Ok(FakeServer { addr, stats })
    }

    /// `amqp://` URL of the server.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/", self.addr)
    }
}

/// A delivery's frames with the offsets of its tag and timestamp.
struct DeliveryTemplate {
    bytes: Vec<u8>,
    tag_at: usize,
    ts_at: usize,
}

impl DeliveryTemplate {
    fn new(consumer_tag: &str, queue: &str, body_size: usize) -> Self {
        let mut out = BytesMut::new();
        let deliver = BasicDeliver {
            consumer_tag: consumer_tag.into(),
            delivery_tag: 0,
            redelivered: false,
            exchange: String::new(),
            routing_key: queue.into(),
        };
        encode_method(1, &deliver.into(), &mut out);
        // frame header (7), class+method (4), shortstr length (1), tag bytes.
        let tag_at = 7 + 4 + 1 + consumer_tag.len();
        let header_at = out.len();
        let props = BasicProperties {
            delivery_mode: Some(1),
            ..Default::default()
        };
        encode_content(1, &props, &vec![b'x'; body_size], 131_072, &mut out);
        let header_size = u32::from_be_bytes([
            out[header_at + 3],
            out[header_at + 4],
            out[header_at + 5],
            out[header_at + 6],
        ]);
        DeliveryTemplate {
            bytes: out.to_vec(),
            tag_at,
            ts_at: header_at + 8 + header_size as usize + 7,
        }
    }

    fn put(&self, tag: u64, ts: u64, out: &mut BytesMut) {
        let base = out.len();
        out.extend_from_slice(&self.bytes);
        out[base + self.tag_at..base + self.tag_at + 8].copy_from_slice(&tag.to_be_bytes());
        out[base + self.ts_at..base + self.ts_at + 8].copy_from_slice(&ts.to_be_bytes());
    }
}

/// Per-connection state. One channel is all the tool uses; the channel
/// number of a request is echoed back.
#[derive(Default)]
struct Session {
    confirm: bool,
    published: u64,
    confirmed: u64,
    prefetch: u64,
    no_ack: bool,
    consuming: Option<DeliveryTemplate>,
    next_tag: u64,
    acked: u64,
    closing: bool,
}

impl Session {
    fn credit(&self) -> u64 {
        match &self.consuming {
            None => 0,
            Some(_) if self.no_ack || self.prefetch == 0 => u64::MAX,
            Some(_) => self.prefetch.saturating_sub(self.next_tag - self.acked),
        }
    }
}

async fn serve(mut stream: TcpStream, stats: Arc<FakeStats>, body_size: usize) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await?;
    if header != antre_amqp::PROTOCOL_HEADER {
        bail!("not AMQP 0-9-1");
    }
    let mut out = BytesMut::with_capacity(256 * 1024);
    let start = ConnectionStart {
        version_major: 0,
        version_minor: 9,
        server_properties: FieldTable::new(),
        mechanisms: Bytes::from_static(b"PLAIN"),
        locales: Bytes::from_static(b"en_US"),
    };
    encode_method(0, &start.into(), &mut out);
    let mut rbuf = BytesMut::with_capacity(256 * 1024);
    let mut s = Session::default();
    loop {
        let credit = s.credit();
        let interest = if out.is_empty() && credit == 0 {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let ready = stream.ready(interest).await?;
        if ready.is_readable() {
            match stream.try_read_buf(&mut rbuf) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    handle_frames(&mut rbuf, &mut s, &mut out, &stats, body_size)?;
                    if s.confirm && s.published > s.confirmed {
                        let ack = BasicAck {
                            delivery_tag: s.published,
                            multiple: true,
                        };
                        encode_method(1, &ack.into(), &mut out);
                        s.confirmed = s.published;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        if ready.is_writable() {
            let credit = s.credit();
            if credit > 0 && out.len() < 64 * 1024 {
                if let Some(t) = &s.consuming {
                    let n = credit.min((64 * 1024 / t.bytes.len()).max(1) as u64);
                    let ts = now_ns();
                    for _ in 0..n {
                        s.next_tag += 1;
                        t.put(s.next_tag, ts, &mut out);
                    }
                    stats.delivered.fetch_add(n, Ordering::Relaxed);
                }
            }
            if !out.is_empty() {
                match stream.try_write(&out) {
                    Ok(n) => out.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if s.closing && out.is_empty() {
            return Ok(());
        }
        // A consumer's socket is nearly always writable, so this loop would
        // never wait and starve the other connections of this thread.
        tokio::task::yield_now().await;
    }
}

/// Handles every whole frame in `rbuf`, appending replies to `out`.
fn handle_frames(
    rbuf: &mut BytesMut,
    s: &mut Session,
    out: &mut BytesMut,
    stats: &FakeStats,
    body_size: usize,
) -> Result<()> {
    let mut pos = 0;
    let mut publishes = 0;
    while rbuf.len() >= pos + 8 {
        let kind = rbuf[pos];
        let channel = u16::from_be_bytes([rbuf[pos + 1], rbuf[pos + 2]]);
        let size = u32::from_be_bytes([rbuf[pos + 3], rbuf[pos + 4], rbuf[pos + 5], rbuf[pos + 6]])
            as usize;
        if rbuf.len() < pos + 8 + size {
            break;
        }
        let payload = &rbuf[pos + 7..pos + 7 + size];
        if kind == antre_amqp::FRAME_METHOD {
            if payload.starts_with(&[0, 60, 0, 40]) {
                publishes += 1;
            } else {
                let method = Method::decode(Bytes::copy_from_slice(payload))
                    .context("fake server got a bad method")?;
                reply(channel, method, s, out, body_size);
            }
        }
        pos += 8 + size;
    }
    rbuf.advance(pos);
    s.published += publishes;
    stats.published.fetch_add(publishes, Ordering::Relaxed);
    Ok(())
}

fn reply(channel: u16, method: Method, s: &mut Session, out: &mut BytesMut, body_size: usize) {
    let answer: Option<Method> = match method {
        Method::ConnectionStartOk(_) => Some(
            ConnectionTune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 0,
            }
            .into(),
        ),
        Method::ConnectionOpen(_) => Some(ConnectionOpenOk::default().into()),
        Method::ChannelOpen(_) => Some(ChannelOpenOk::default().into()),
        Method::QueueDeclare(q) => Some(
            QueueDeclareOk {
                queue: if q.queue.is_empty() {
                    "amq.gen-fake".into()
                } else {
                    q.queue
                },
                message_count: 0,
                consumer_count: 0,
            }
            .into(),
        ),
        Method::QueueBind(_) => Some(QueueBindOk {}.into()),
        Method::QueueDelete(_) => Some(QueueDeleteOk { message_count: 0 }.into()),
        Method::QueuePurge(_) => Some(QueuePurgeOk { message_count: 0 }.into()),
        Method::ExchangeDeclare(_) => Some(ExchangeDeclareOk {}.into()),
        Method::ExchangeDelete(_) => Some(ExchangeDeleteOk {}.into()),
        Method::BasicQos(q) => {
            s.prefetch = u64::from(q.prefetch_count);
            Some(BasicQosOk {}.into())
        }
        Method::ConfirmSelect(_) => {
            s.confirm = true;
            Some(ConfirmSelectOk {}.into())
        }
        Method::BasicConsume(c) => {
            let tag = if c.consumer_tag.is_empty() {
                "ctag-fake".to_owned()
            } else {
                c.consumer_tag
            };
            s.no_ack = c.no_ack;
            s.consuming = Some(DeliveryTemplate::new(&tag, &c.queue, body_size));
            Some(BasicConsumeOk { consumer_tag: tag }.into())
        }
        Method::BasicAck(a) => {
            s.acked = if a.multiple {
                a.delivery_tag
            } else {
                s.acked.max(a.delivery_tag)
            };
            None
        }
        Method::ChannelClose(_) => {
            s.consuming = None;
            Some(ChannelCloseOk {}.into())
        }
        Method::ConnectionClose(_) => {
            s.consuming = None;
            s.closing = true;
            Some(ConnectionCloseOk {}.into())
        }
        _ => None,
    };
    if let Some(m) = answer {
        encode_method(channel, &m, out);
    }
}
