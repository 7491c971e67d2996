//! The same scenarios driven by an independent client, [lapin], instead of
//! the tool's own lean one: `antre-bench lapin` takes the options of
//! `antre-bench run` and reports the same way (see [`run::run_with`]).
//!
//! The point is that no broker can look good only because the client was
//! written alongside it. lapin is used as its documentation shows: one
//! connection and channel per producer or consumer, `basic_publish` awaited
//! message by message (it resolves once lapin's I/O thread has taken the
//! frames), a sliding window of `PublisherConfirm`s, and a `Consumer` stream
//! acked with `basic_ack(multiple = true)` every N deliveries. lapin costs
//! far more CPU per message than the built-in client (about one core at
//! ~45k msg/s on the benchmark machine), so on a small machine it, not the
//! broker, usually sets the rate; broker CPU per message stays comparable.
//!
//! Declares and deletes go through lapin too, so nothing of a lapin run
//! touches the tool's own AMQP code.
//!
//! [`run::run_with`]: crate::run::run_with

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::consumer::ConsumerSpec;
use crate::producer::ProducerSpec;
use crate::run::RunArgs;
use crate::stats::{now_ns, Counters};

/// Deliveries a consumer handles before it updates the shared counters.
const COUNT_BATCH: u64 = 256;

async fn connect(uri: &str, name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(uri, props)
        .await
        .with_context(|| format!("lapin cannot connect to {}", redact(uri)))
}

/// `uri` without its password, for error messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => match uri[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &uri[..s + 3 + c], &uri[at..]),
            None => uri.to_owned(),
        },
        _ => uri.to_owned(),
    }
}

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_owned()),
    }
}

/// Declares the exchange and queues with lapin, deleting the queues first
/// unless `--no-reset` (what `run`'s own setup does with the built-in client).
pub async fn setup(args: &RunArgs) -> Result<()> {
    let conn = connect(&args.uri, "antre-bench lapin setup").await?;
    let ch = conn.create_channel().await?;
    let durable = args.durable_queues();
    if !args.exchange.is_empty() {
        let options = ExchangeDeclareOptions {
            durable,
            ..Default::default()
        };
        ch.exchange_declare(
            &args.exchange,
            exchange_kind(&args.exchange_type),
            options,
            FieldTable::default(),
        )
        .await?;
    }
    for i in 0..args.queues {
        let queue = args.queue_name(i);
        if !args.no_reset {
            ch.queue_delete(&queue, QueueDeleteOptions::default())
                .await?;
        }
        let options = QueueDeclareOptions {
            durable,
            ..Default::default()
        };
        let mut arguments = FieldTable::default();
        if let Some(kind) = &args.queue_type {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(kind.as_str().into()),
            );
        }
        ch.queue_declare(&queue, options, arguments).await?;
        if !args.exchange.is_empty() {
            ch.queue_bind(
                &queue,
                &args.exchange,
                &queue,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    let _ = conn.close(200, "bye").await;
    Ok(())
}

/// Deletes the queues and the exchange with lapin.
pub async fn teardown(args: &RunArgs) -> Result<()> {
    let conn = connect(&args.uri, "antre-bench lapin teardown").await?;
    let ch = conn.create_channel().await?;
    for i in 0..args.queues {
        ch.queue_delete(&args.queue_name(i), QueueDeleteOptions::default())
            .await?;
    }
    if !args.exchange.is_empty() {
        ch.exchange_delete(&args.exchange, ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = conn.close(200, "bye").await;
    Ok(())
}

/// Publishes with lapin as `spec` says (its `url` is ignored: lapin parses
/// `uri` itself) until `stop` or `spec.count`; returns messages published.
/// The first 8 body bytes carry the send time, as with the built-in producer.
pub async fn produce(
    uri: String,
    spec: ProducerSpec,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> Result<u64> {
    let conn = connect(&uri, "antre-bench lapin producer").await?;
    let ch = conn.create_channel().await?;
    if spec.confirm_window.is_some() {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    let props = BasicProperties::default().with_delivery_mode(if spec.persistent { 2 } else { 1 });
    let mut body = vec![b'x'; spec.size.max(8)];
    let window = spec.confirm_window.map(|w| w.max(1) as usize);
    let mut pending = VecDeque::new();
    let started = Instant::now();
    let mut sent = 0u64;
    let result: Result<()> = async {
        loop {
            if stop.load(Ordering::Relaxed) || spec.count.is_some_and(|c| sent >= c) {
                return Ok(());
            }
            if let Some(rate) = spec.rate {
                let next = started + Duration::from_secs_f64(sent as f64 / rate);
                if next > Instant::now() {
                    tokio::time::sleep_until(next.into()).await;
                    continue;
                }
            }
            if window.is_some_and(|w| pending.len() >= w) {
                // Bounded wait, so that `stop` is seen even if the broker
                // never confirms.
                let front = pending.front_mut().expect("window is not empty");
                if let Ok(confirmation) =
                    tokio::time::timeout(Duration::from_millis(50), front).await
                {
                    pending.pop_front();
                    count_confirm(&counters, confirmation?);
                }
                continue;
            }
            body[..8].copy_from_slice(&now_ns().to_be_bytes());
            let confirm = ch
                .basic_publish(
                    &spec.exchange,
                    &spec.routing_key,
                    BasicPublishOptions::default(),
                    &body,
                    props.clone(),
                )
                .await?;
            sent += 1;
            counters.published.fetch_add(1, Ordering::Relaxed);
            if window.is_some() {
                pending.push_back(confirm);
                // Count the confirms that have already arrived.
                while let Some(front) = pending.front_mut() {
                    match front.now_or_never() {
                        Some(confirmation) => {
                            pending.pop_front();
                            count_confirm(&counters, confirmation?);
                        }
                        None => break,
                    }
                }
            }
        }
    }
    .await;
    // Give outstanding confirms a moment, so the confirm count is complete.
    if result.is_ok() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(front) = pending.pop_front() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, front).await {
                Ok(Ok(confirmation)) => count_confirm(&counters, confirmation),
                _ => break,
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye")).await;
    result.map(|()| sent)
}

fn count_confirm(counters: &Counters, confirmation: lapin::publisher_confirm::Confirmation) {
    if confirmation.is_nack() {
        counters.nacked.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.confirmed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Consumes with lapin as `spec` says (its `url` is ignored) until `stop`;
/// returns messages received. `ready` is incremented once subscribed.
pub async fn consume(
    uri: String,
    spec: ConsumerSpec,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicUsize>,
) -> Result<u64> {
    let conn = connect(&uri, "antre-bench lapin consumer").await?;
    let ch = conn.create_channel().await?;
    if spec.prefetch > 0 {
        ch.basic_qos(spec.prefetch, BasicQosOptions::default())
            .await?;
    }
    let options = BasicConsumeOptions {
        no_ack: spec.auto_ack,
        ..Default::default()
    };
    let mut consumer = ch
        .basic_consume(&spec.queue, "", options, FieldTable::default())
        .await?;
    ready.fetch_add(1, Ordering::Release);

    let ack_every = if spec.prefetch > 0 {
        // Acking less often than the prefetch allows would deadlock.
        spec.ack_every.clamp(1, u64::from(spec.prefetch))
    } else {
        spec.ack_every.max(1)
    };
    let mut acks = Acks {
        ch: &ch,
        auto_ack: spec.auto_ack,
        every: ack_every,
        unacked: 0,
        last_tag: 0,
    };
    let mut total = 0u64;
    let mut latencies = Vec::with_capacity(COUNT_BATCH as usize);
    let result: Result<()> = async {
        while !stop.load(Ordering::Relaxed) {
            let first = match tokio::time::timeout(Duration::from_millis(50), consumer.next()).await
            {
                Err(_) => {
                    // Idle: ack the tail, so a slow trickle is not held back.
                    acks.flush().await?;
                    continue;
                }
                Ok(None) => bail!("broker cancelled the consumer"),
                Ok(Some(delivery)) => delivery?,
            };
            // Take whatever else lapin already holds, then count once.
            let mut got = 0u64;
            let mut next = Some(first);
            while let Some(delivery) = next.take() {
                let now = now_ns();
                if let Some(ts) = delivery.data.get(..8) {
                    let ts = u64::from_be_bytes(ts.try_into().expect("8 bytes"));
                    latencies.push(now.saturating_sub(ts));
                }
                got += 1;
                acks.delivered(delivery.delivery_tag).await?;
                if got < COUNT_BATCH {
                    next = match consumer.next().now_or_never() {
                        Some(Some(d)) => Some(d?),
                        Some(None) => bail!("broker cancelled the consumer"),
                        None => None,
                    };
                }
            }
            total += got;
            counters.delivered.fetch_add(got, Ordering::Relaxed);
            counters
                .last_delivery_ns
                .fetch_max(now_ns(), Ordering::Relaxed);
            let mut h = counters.interval_latency.lock().expect("not poisoned");
            for l in latencies.drain(..) {
                h.record(l);
            }
        }
        Ok(())
    }
    .await;
    if result.is_ok() {
        let _ = acks.flush().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye")).await;
    result.map(|()| total)
}

/// Acks with `multiple = true` once every `every` deliveries.
struct Acks<'a> {
    ch: &'a Channel,
    auto_ack: bool,
    every: u64,
    unacked: u64,
    last_tag: u64,
}

impl Acks<'_> {
    async fn delivered(&mut self, tag: u64) -> Result<()> {
        if self.auto_ack {
            return Ok(());
        }
        self.unacked += 1;
        self.last_tag = tag;
        if self.unacked >= self.every {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.unacked > 0 {
            let options = BasicAckOptions { multiple: true };
            self.ch.basic_ack(self.last_tag, options).await?;
            self.unacked = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://host/%2f"), "amqp://host/%2f");
    }

    #[test]
    fn maps_exchange_types() {
        assert_eq!(exchange_kind("fanout"), ExchangeKind::Fanout);
        assert_eq!(
            exchange_kind("x-delayed-message"),
            ExchangeKind::Custom("x-delayed-message".into())
        );
    }
}
