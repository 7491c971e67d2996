//! The publishing loop: one connection, one channel, flat out or at a fixed
//! rate, optionally with publisher confirms inside a window.
//!
//! Every message of a run has the same frames except for the 8-byte send
//! timestamp at the start of the body, so the method, header and body frames
//! are encoded once with the codec into a template, and publishing a message
//! is one `memcpy` of the template plus one 8-byte patch. Many messages go
//! into one buffer and one `write` (about 64 KiB per write when flat out).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use antre_amqp::method::*;
use antre_amqp::{decode_frame, encode_content, encode_method, BasicProperties, Frame, Method};
use anyhow::{bail, Result};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;

use crate::client::{AmqpUrl, Connection};
use crate::stats::{now_ns, Counters};

/// Target size of one write when publishing flat out.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Socket send buffer of a producer: a few writes' worth, so that what is
/// counted as published is close to what the broker has read.
const SNDBUF: u32 = 256 * 1024;

/// What one producer does.
#[derive(Clone, Debug)]
pub struct ProducerSpec {
    /// Broker to connect to.
    pub url: AmqpUrl,
    /// Exchange to publish to ("" for the default exchange).
    pub exchange: String,
    /// Routing key of every message.
    pub routing_key: String,
    /// Body size in bytes (at least 8: the timestamp).
    pub size: usize,
    /// delivery_mode 2 instead of 1.
    pub persistent: bool,
    /// Publisher confirms with at most this many unconfirmed messages.
    pub confirm_window: Option<u64>,
    /// Messages per second for this producer; `None` is flat out.
    pub rate: Option<f64>,
    /// Stop after this many messages.
    pub count: Option<u64>,
}

/// The frames of one message, with the position of its timestamp.
pub struct Template {
    /// Method, header and body frames.
    pub bytes: Vec<u8>,
    /// Offset of the 8 timestamp bytes inside `bytes`.
    pub ts_at: usize,
}

impl Template {
    /// Encodes the publish of a `size`-byte body with the project's codec.
    pub fn new(spec: &ProducerSpec, frame_max: u32) -> Template {
        let mut out = BytesMut::new();
        let publish = BasicPublish {
            exchange: spec.exchange.clone(),
            routing_key: spec.routing_key.clone(),
            ..Default::default()
        };
        encode_method(1, &publish.into(), &mut out);
        let header_at = out.len();
        let props = BasicProperties {
            delivery_mode: Some(if spec.persistent { 2 } else { 1 }),
            ..Default::default()
        };
        let body = vec![b'x'; spec.size.max(8)];
        encode_content(1, &props, &body, frame_max, &mut out);
        let header_size = u32::from_be_bytes(
            out[header_at + 3..header_at + 7]
                .try_into()
                .expect("4 bytes"),
        );
        let ts_at = header_at + 8 + header_size as usize + 7;
        Template {
            bytes: out.to_vec(),
            ts_at,
        }
    }

    /// Appends one message stamped `ts` to `out`.
    #[inline]
    pub fn put(&self, ts: u64, out: &mut BytesMut) {
        let at = out.len() + self.ts_at;
        out.extend_from_slice(&self.bytes);
        out[at..at + 8].copy_from_slice(&ts.to_be_bytes());
    }
}

/// Confirms received by one producer, shared between its reader and writer.
#[derive(Default)]
struct Confirms {
    done: AtomicU64,
    failed: Mutex<Option<String>>,
    closed: AtomicBool,
    wake: Notify,
}

/// Publisher confirms may ack single tags out of order or many at once
/// (`multiple`); this turns them into a count of distinct confirmed tags.
#[derive(Default, Debug)]
pub struct ConfirmTracker {
    upto: u64,
    above: BTreeSet<u64>,
    count: u64,
}

impl ConfirmTracker {
    /// Notes an ack or nack of `tag`; returns how many tags it newly confirmed.
    pub fn confirm(&mut self, tag: u64, multiple: bool) -> u64 {
        let before = self.count;
        if multiple {
            if tag > self.upto {
                let singles = self.above.range(..=tag).count() as u64;
                self.count += tag - self.upto - singles;
                self.above = self.above.split_off(&(tag + 1));
                self.upto = tag;
            }
        } else if tag > self.upto && self.above.insert(tag) {
            self.count += 1;
        }
        self.count - before
    }
}

/// Runs one producer until `stop`, the count, or an error; returns the
/// number of messages it published.
pub async fn run(
    spec: ProducerSpec,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> Result<u64> {
    let mut conn =
        Connection::open_with_sndbuf(&spec.url, "antre-bench producer", Some(SNDBUF)).await?;
    conn.open_channel(1).await?;
    if spec.confirm_window.is_some() {
        conn.call(1, ConfirmSelect::default().into()).await?;
    }
    let template = Template::new(&spec, conn.frame_max);
    let frame_max = conn.frame_max;
    let Connection { stream, rbuf, .. } = conn;
    let (read, mut write) = stream.into_split();
    let confirms = Arc::new(Confirms::default());
    let reader = tokio::spawn(read_confirms(
        read,
        rbuf,
        frame_max,
        confirms.clone(),
        counters.clone(),
    ));

    let per_batch = (WRITE_BATCH_BYTES / template.bytes.len()).max(1) as u64;
    let mut buf = BytesMut::with_capacity(WRITE_BATCH_BYTES + template.bytes.len());
    let started = Instant::now();
    let mut sent = 0u64;
    let result: Result<()> = async {
        loop {
            if stop.load(Ordering::Relaxed) || spec.count.is_some_and(|c| sent >= c) {
                return Ok(());
            }
            if let Some(why) = confirms.failed.lock().expect("not poisoned").take() {
                bail!(why);
            }
            let mut n = per_batch;
            if let Some(c) = spec.count {
                n = n.min(c - sent);
            }
            if let Some(window) = spec.confirm_window {
                let notified = confirms.wake.notified();
                let outstanding = sent - confirms.done.load(Ordering::Acquire);
                if outstanding >= window {
                    // Bounded wait so that `stop` is seen even if the broker
                    // never confirms.
                    let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
                    continue;
                }
                n = n.min(window - outstanding);
            }
            if let Some(rate) = spec.rate {
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                if due <= sent {
                    let next = started + Duration::from_secs_f64((sent + 1) as f64 / rate);
                    tokio::time::sleep_until(next.into()).await;
                    continue;
                }
                n = n.min(due - sent);
            }
            for _ in 0..n {
                template.put(now_ns(), &mut buf);
            }
            write.write_all(&buf).await?;
            buf.clear();
            sent += n;
            counters.published.fetch_add(n, Ordering::Relaxed);
            // A socket that always has room never makes this task wait, and
            // tokio's budget would let it write ~128 times before a consumer
            // on the same thread reads once. Yielding per batch keeps
            // producers and consumers fair at a cost of one yield per write.
            tokio::task::yield_now().await;
        }
    }
    .await;

    // Give outstanding confirms a moment, so the confirm count is complete.
    if result.is_ok() && spec.confirm_window.is_some() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while confirms.done.load(Ordering::Acquire) < sent
            && Instant::now() < deadline
            && !confirms.closed.load(Ordering::Acquire)
        {
            let _ = tokio::time::timeout(Duration::from_millis(50), confirms.wake.notified()).await;
        }
    }
    let mut close = BytesMut::new();
    let m = ConnectionClose {
        reply_code: 200,
        reply_text: "bye".into(),
        ..Default::default()
    };
    encode_method(0, &m.into(), &mut close);
    let _ = write.write_all(&close).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    result.map(|()| sent)
}

/// Reads what the broker sends a publisher: confirms, and errors.
async fn read_confirms(
    mut read: OwnedReadHalf,
    mut rbuf: BytesMut,
    frame_max: u32,
    confirms: Arc<Confirms>,
    counters: Arc<Counters>,
) {
    let mut tracker = ConfirmTracker::default();
    let fail = |why: String| {
        *confirms.failed.lock().expect("not poisoned") = Some(why);
        confirms.closed.store(true, Ordering::Release);
        confirms.wake.notify_one();
    };
    loop {
        let mut acked = 0;
        let mut nacked = 0;
        loop {
            match decode_frame(&mut rbuf, frame_max + 8) {
                Ok(Some(Frame::Method { method, .. })) => match method {
                    Method::BasicAck(a) => acked += tracker.confirm(a.delivery_tag, a.multiple),
                    Method::BasicNack(n) => nacked += tracker.confirm(n.delivery_tag, n.multiple),
                    Method::ConnectionCloseOk(_) => {
                        confirms.closed.store(true, Ordering::Release);
                        return;
                    }
                    Method::ConnectionClose(c) => {
                        return fail(format!(
                            "broker closed the producer's connection: {} {}",
                            c.reply_code, c.reply_text
                        ))
                    }
                    Method::ChannelClose(c) => {
                        return fail(format!(
                            "broker closed the producer's channel: {} {}",
                            c.reply_code, c.reply_text
                        ))
                    }
                    _ => {}
                },
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return fail(format!("bad frame from broker: {e}")),
            }
        }
        if acked + nacked > 0 {
            counters.confirmed.fetch_add(acked, Ordering::Relaxed);
            counters.nacked.fetch_add(nacked, Ordering::Relaxed);
            confirms.done.fetch_add(acked + nacked, Ordering::Release);
            confirms.wake.notify_one();
        }
        match read.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => {
                confirms.closed.store(true, Ordering::Release);
                confirms.wake.notify_one();
                return;
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirm_tracker_counts_distinct_tags() {
        let mut t = ConfirmTracker::default();
        assert_eq!(t.confirm(2, false), 1);
        assert_eq!(t.confirm(2, false), 0, "duplicate");
        assert_eq!(t.confirm(5, true), 4, "1,3,4,5 newly");
        assert_eq!(t.confirm(3, false), 0, "already covered");
        assert_eq!(t.confirm(7, false), 1);
        assert_eq!(t.confirm(10, true), 4, "6,8,9,10");
        assert_eq!(t.count, 10);
    }

    #[test]
    fn template_stamps_the_first_body_bytes() {
        let spec = ProducerSpec {
            url: "amqp://x".parse().unwrap(),
            exchange: "".into(),
            routing_key: "q".into(),
            size: 16,
            persistent: true,
            confirm_window: None,
            rate: None,
            count: None,
        };
        let t = Template::new(&spec, 131_072);
        let mut out = BytesMut::new();
        t.put(0x0102_0304_0506_0708, &mut out);
        t.put(42, &mut out);
        let mut frames = Vec::new();
        while let Some(f) = decode_frame(&mut out, 131_080).unwrap() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 6);
        let Frame::Body { payload, .. } = &frames[2] else {
            panic!("body expected")
        };
        assert_eq!(payload.len(), 16);
        assert_eq!(&payload[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let Frame::Header { header, .. } = &frames[4] else {
            panic!("header expected")
        };
        assert!(header.properties.is_persistent());
    }
}
