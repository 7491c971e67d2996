//! The consuming loop: one connection, one channel, one consumer with a
//! prefetch, acking with `multiple=true` every N messages.
//!
//! It reads as much as the socket holds, parses every frame in the buffer,
//! and only then touches shared state: one atomic add and one short lock per
//! read, so the cost per message is the parse and nothing else.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use antre_amqp::method::*;
use antre_amqp::{decode_frame, encode_method, FieldTable, Frame, Method};
use anyhow::{bail, Result};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{AmqpUrl, Connection};
use crate::stats::{now_ns, Counters};

/// What one consumer does.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// Broker to connect to.
    pub url: AmqpUrl,
    /// Queue to consume from.
    pub queue: String,
    /// basic.qos prefetch_count (0: unlimited).
    pub prefetch: u16,
    /// Ack with multiple=true once this many messages are unacked.
    pub ack_every: u64,
    /// no_ack consumption: the broker forgets a message once sent.
    pub auto_ack: bool,
    /// basic.consume arguments (e.g. `x-stream-offset` for a stream).
    pub arguments: FieldTable,
}

/// Message reassembly state: which delivery's frames are arriving.
#[derive(Default)]
struct Assembly {
    tag: u64,
    /// Tag of the last delivery whose body is complete: the only one that
    /// may be acked (acking a tag twice is a channel error).
    done_tag: u64,
    remaining: u64,
    stamp: Option<u64>,
    in_body: bool,
}

/// Runs one consumer until `stop` or an error; returns messages received.
/// `ready` is incremented once the broker has confirmed the subscription.
pub async fn run(
    spec: ConsumerSpec,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicUsize>,
) -> Result<u64> {
    let mut conn = Connection::open(&spec.url, "antre-bench consumer").await?;
    conn.open_channel(1).await?;
    if spec.prefetch > 0 {
        let qos = BasicQos {
            prefetch_count: spec.prefetch,
            ..Default::default()
        };
        conn.call(1, qos.into()).await?;
    }
    let consume = BasicConsume {
        queue: spec.queue.clone(),
        no_ack: spec.auto_ack,
        arguments: spec.arguments.clone(),
        ..Default::default()
    };
    conn.call(1, consume.into()).await?;
    ready.fetch_add(1, Ordering::Release);

    let ack_every = if spec.prefetch > 0 {
        // Acking less often than the prefetch allows would deadlock.
        spec.ack_every.clamp(1, u64::from(spec.prefetch))
    } else {
        spec.ack_every.max(1)
    };
    let frame_max = conn.frame_max + 8;
    let mut state = Assembly::default();
    let mut unacked = 0u64;
    let mut acked_tag = 0u64;
    let mut total = 0u64;
    let mut latencies: Vec<u64> = Vec::with_capacity(4096);
    let mut out = BytesMut::with_capacity(256);
    let result: Result<()> = async {
        // The reply to basic.consume may have come in the same read as the
        // first deliveries: parse what is buffered before reading more.
        let mut skip_read = !conn.rbuf.is_empty();
        while !stop.load(Ordering::Relaxed) {
            let read = if std::mem::take(&mut skip_read) {
                Ok(Ok(1))
            } else {
                tokio::time::timeout(
                    Duration::from_millis(50),
                    conn.stream.read_buf(&mut conn.rbuf),
                )
                .await
            };
            let now = now_ns();
            match read {
                Ok(Ok(0)) => bail!("broker closed the consumer's socket"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    // Idle: ack the tail, so that a slow trickle is not held
                    // back by the batching.
                    if unacked > 0 && !spec.auto_ack && state.done_tag > acked_tag {
                        send_ack(&mut conn, &mut out, state.done_tag).await?;
                        acked_tag = state.done_tag;
                        unacked = 0;
                    }
                    continue;
                }
            }
            let mut got = 0u64;
            while let Some(frame) = decode_frame(&mut conn.rbuf, frame_max)? {
                match frame {
                    Frame::Method {
                        method: Method::BasicDeliver(d),
                        ..
                    } => {
                        state.tag = d.delivery_tag;
                        state.in_body = false;
                        state.stamp = None;
                    }
                    Frame::Header { header, .. } => {
                        state.remaining = header.body_size;
                        state.in_body = true;
                        if header.body_size == 0 {
                            got += 1;
                            state.done_tag = state.tag;
                            state.in_body = false;
                        }
                    }
                    Frame::Body { payload, .. } if state.in_body => {
                        if state.stamp.is_none() && payload.len() >= 8 {
                            state.stamp =
                                Some(u64::from_be_bytes(payload[..8].try_into().expect("8")));
                        }
                        state.remaining = state.remaining.saturating_sub(payload.len() as u64);
                        if state.remaining == 0 {
                            state.in_body = false;
                            state.done_tag = state.tag;
                            got += 1;
                            if let Some(ts) = state.stamp {
                                latencies.push(now.saturating_sub(ts));
                            }
                        }
                    }
                    Frame::Method { method, .. } => match method {
                        Method::ChannelClose(c) => bail!(
                            "broker closed the consumer's channel: {} {}",
                            c.reply_code,
                            c.reply_text
                        ),
                        Method::ConnectionClose(c) => bail!(
                            "broker closed the consumer's connection: {} {}",
                            c.reply_code,
                            c.reply_text
                        ),
                        Method::BasicCancel(_) => bail!("broker cancelled the consumer"),
                        _ => {}
                    },
                    _ => {}
                }
            }
            if got == 0 {
                continue;
            }
            total += got;
            unacked += got;
            if !spec.auto_ack && unacked >= ack_every && state.done_tag > acked_tag {
                send_ack(&mut conn, &mut out, state.done_tag).await?;
                acked_tag = state.done_tag;
                unacked = 0;
            }
            counters.delivered.fetch_add(got, Ordering::Relaxed);
            counters.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
            if !latencies.is_empty() {
                let mut h = counters.interval_latency.lock().expect("not poisoned");
                for &l in &latencies {
                    h.record(l);
                }
                latencies.clear();
            }
        }
        Ok(())
    }
    .await;
    if result.is_ok() && !spec.auto_ack && state.done_tag > acked_tag {
        let _ = send_ack(&mut conn, &mut out, state.done_tag).await;
    }
    conn.close().await;
    result.map(|()| total)
}

async fn send_ack(conn: &mut Connection, out: &mut BytesMut, tag: u64) -> Result<()> {
    out.clear();
    let ack = BasicAck {
        delivery_tag: tag,
        multiple: true,
    };
    encode_method(1, &ack.into(), out);
    conn.stream.write_all(out).await?;
    Ok(())
}
