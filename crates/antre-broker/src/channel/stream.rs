//! Consumers of streams on a channel, with RabbitMQ's rules for them: a
//! prefetch is required and acks only give credit back (nothing leaves the
//! stream); each consumer reads from its own offset through its own reader,
//! and each delivery carries its `x-stream-offset` header.
//!
//! Unlike a queue, a stream does not push deliveries: the channel pulls
//! them from the consumer's reader while the consumer has credit, after
//! every method it handles (an ack frees credit) and when the stream wakes
//! it because a chunk was written while the consumer was caught up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use antre_amqp::method::{BasicConsume, BasicConsumeOk, BasicDeliver};
use antre_amqp::FieldValue;
use bytes::Bytes;

use super::{Channel, Outgoing, Source, Unacked};
use crate::error::BrokerError;
use crate::queue::Credit;
use crate::stream::{record, Filter, OffsetSpec, Reader, Stream, StreamConsumer};
use crate::vhost::generated_name;

/// One consumer of a stream on this channel.
#[derive(Debug)]
pub(crate) struct StreamSub {
    pub(crate) id: u64,
    reader: Reader,
    credit: Arc<Credit>,
    filter: Option<Filter>,
    /// Records of the chunk being delivered: offset, record, chunk time.
    pending: VecDeque<(u64, Bytes, u64)>,
    /// The offset of the next message it will be sent (for listings).
    offset: Arc<AtomicU64>,
    /// Waiting for the stream to wake the channel.
    parked: bool,
}

impl StreamSub {
    pub(crate) fn stream(&self) -> &Arc<Stream> {
        self.reader.stream()
    }
}

impl Channel {
    /// basic.consume on a stream.
    pub(super) fn consume_stream(
        &mut self,
        m: BasicConsume,
        stream: Arc<Stream>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let resource = stream.describe();
        if self.prefetch == 0 {
            return Err(BrokerError::PreconditionFailed(format!(
                "consumer prefetch count is not set for '{resource}'"
            )));
        }
        if m.no_ack {
            return Err(BrokerError::NotImplemented(format!(
                "automatic acknowledgement not supported by stream queues {resource}"
            )));
        }
        if self.credit.limit() != 0 {
            return Err(BrokerError::NotImplemented(format!(
                "{resource} does not support global qos"
            )));
        }
        let tag: Arc<str> = if m.consumer_tag.is_empty() {
            generated_name("amq.ctag-").into()
        } else {
            m.consumer_tag.as_str().into()
        };
        if self.consumers.contains_key(&tag) || self.streams.contains_key(&tag) {
            return Err(BrokerError::NotAllowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let now = self.ctx.broker.clock().now_ms();
        let spec = OffsetSpec::parse(&m.arguments, now)?;
        let filter = Filter::parse(&m.arguments)?;
        let mut reader = stream.reader(spec)?;
        reader.set_filter(filter.as_ref().map(Filter::chunk_filter));
        let id = self.ctx.broker.next_id();
        let credit = Credit::new(self.prefetch);
        let offset = Arc::new(AtomicU64::new(reader.position()));
        stream.add_consumer(StreamConsumer {
            id,
            tag: Arc::clone(&tag),
            connection: self.ctx.connection,
            channel: self.id,
            sink: Arc::clone(&self.sink),
            credit: Arc::clone(&credit),
            offset: Arc::clone(&offset),
            single_active: None,
        })?;
        if !m.nowait {
            out.push(Outgoing::Method(
                BasicConsumeOk {
                    consumer_tag: tag.to_string(),
                }
                .into(),
            ));
        }
        self.streams.insert(
            tag,
            StreamSub {
                id,
                reader,
                credit,
                filter,
                pending: VecDeque::new(),
                offset,
                parked: false,
            },
        );
        Ok(())
    }

    /// Cancels a stream consumer; returns whether there was one by that tag.
    pub(super) fn cancel_stream(&mut self, tag: &str) -> bool {
        match self.streams.remove(tag) {
            Some(sub) => {
                sub.stream().remove_consumer(sub.id);
                true
            }
            None => false,
        }
    }

    /// The stream woke the channel: a chunk was written.
    pub fn stream_ready(&mut self, out: &mut Vec<Outgoing>) {
        for sub in self.streams.values_mut() {
            sub.parked = false;
        }
        let start = out.len();
        self.pump_streams(out);
        self.hold_after(out, start, false);
    }

    /// Delivers what the stream consumers have credit for.
    pub(super) fn pump_streams(&mut self, out: &mut Vec<Outgoing>) {
        if self.streams.is_empty() || self.credit.paused.load(Ordering::Relaxed) {
            return;
        }
        let tags: Vec<Arc<str>> = self.streams.keys().cloned().collect();
        for tag in tags {
            self.pump(&tag, out);
        }
    }

    fn pump(&mut self, tag: &Arc<str>, out: &mut Vec<Outgoing>) {
        let waker = self.stream_waker.clone();
        // A reader that finds nothing though the stream says there is
        // something (it was deleted under it) must not spin.
        let mut retried = false;
        loop {
            let Some(sub) = self.streams.get_mut(tag) else {
                return;
            };
            if sub.parked || sub.credit.is_full() {
                return;
            }
            let Some((offset, raw, ts)) = sub.pending.pop_front() else {
                match sub.reader.next_chunk() {
                    Ok(Some(chunk)) => {
                        let skip = sub.reader.skip_below();
                        let ts = chunk.header.timestamp.max(0) as u64;
                        match chunk.records() {
                            Ok(records) => sub.pending.extend(
                                records
                                    .into_iter()
                                    .filter(|(o, _)| *o >= skip)
                                    .map(|(o, r)| (o, r, ts)),
                            ),
                            Err(e) => tracing::error!(stream = sub.stream().name, "{e}"),
                        }
                    }
                    Ok(None) => {
                        let at = sub.reader.position();
                        sub.offset.store(at, Ordering::Relaxed);
                        let ready = sub.stream().wait(at, waker.clone());
                        if !ready || retried {
                            sub.parked = true;
                            return;
                        }
                        retried = true;
                    }
                    Err(e) => {
                        tracing::error!(consumer = %tag, "stream read failed: {e}");
                        sub.parked = true;
                        return;
                    }
                }
                continue;
            };
            if !sub.credit.try_take() {
                sub.pending.push_front((offset, raw, ts));
                return;
            }
            sub.offset.store(offset + 1, Ordering::Relaxed);
            let stream = Arc::clone(sub.stream());
            let wanted = match record::from_record(raw, &stream.name, ts) {
                Ok(m)
                    if sub
                        .filter
                        .as_ref()
                        .is_none_or(|f| f.matches(record::filter_value(&m))) =>
                {
                    Some(m)
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(
                        stream = stream.name,
                        offset,
                        "skipping unreadable record: {e}"
                    );
                    None
                }
            };
            let Some(mut message) = wanted else {
                sub.credit.release(1);
                continue;
            };
            let credit = Arc::clone(&sub.credit);
            message
                .properties
                .headers
                .get_or_insert_with(Default::default)
                .insert("x-stream-offset", FieldValue::I64(offset as i64));
            self.deliver_stream_message(tag, stream, credit, message, out);
        }
    }

    fn deliver_stream_message(
        &mut self,
        tag: &Arc<str>,
        stream: Arc<Stream>,
        credit: Arc<Credit>,
        message: crate::message::Message,
        out: &mut Vec<Outgoing>,
    ) {
        let delivery_tag = self.next_tag;
        self.next_tag += 1;
        let took = crate::queue::Took::Consume { no_ack: false };
        self.count_delivery(crate::queue::QueueKind::Stream, false, took);
        stream.count_delivered(1);
        let message = Arc::new(message);
        out.push(Outgoing::Content(
            BasicDeliver {
                consumer_tag: tag.to_string(),
                delivery_tag,
                redelivered: false,
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
            }
            .into(),
            message,
        ));
        self.unacked.insert(
            delivery_tag,
            Unacked {
                source: Source::Stream(stream),
                credit: Some(credit),
                delivered_at: self.ctx.broker.clock().now_ms(),
            },
        );
    }
}
