//! Order history: a stream as a replayable event log.
//!
//! The order service publishes its events to the topic exchange
//! `shop.orders`; a stream, `shop.order-history`, is bound to it with
//! `order.*` and keeps every event in order, whoever has read it. Weeks
//! later a new "analytics" service starts: it reads the whole history from
//! the first offset at its own pace (prefetch + acks as credit), builds its
//! figures, and remembers the offset it reached. When more orders come in it
//! resumes from the next offset and sees only those — while the stream still
//! holds everything for the next service that needs a replay. No queue per
//! subscriber, no copy per reader.

use std::collections::BTreeMap;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde::{Deserialize, Serialize};

use crate::support::{
    as_i64, confirm_channel, connect, expect_ack, header, ready_count, string, table, within,
    Checklist,
};

/// The topic exchange the order service publishes to.
pub const EXCHANGE: &str = "shop.orders";
/// The stream holding every order event.
pub const STREAM: &str = "shop.order-history";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderEvent {
    order: String,
    customer: String,
    /// Amount in rupiah, for `order.paid` and `order.refunded`.
    amount: u64,
}

/// The history before analytics exists: `(routing key, event)`.
fn history() -> Vec<(&'static str, OrderEvent)> {
    let e = |order: &str, customer: &str, amount: u64| OrderEvent {
        order: order.into(),
        customer: customer.into(),
        amount,
    };
    vec![
        ("order.created", e("o-5001", "u-77", 0)),
        ("order.paid", e("o-5001", "u-77", 415_000)),
        ("order.created", e("o-5002", "u-81", 0)),
        ("order.shipped", e("o-5001", "u-77", 0)),
        ("order.cancelled", e("o-5002", "u-81", 0)),
        ("order.created", e("o-5003", "u-77", 0)),
        ("order.paid", e("o-5003", "u-77", 129_000)),
        ("order.created", e("o-5004", "u-90", 0)),
        ("order.paid", e("o-5004", "u-90", 1_250_000)),
        ("order.refunded", e("o-5003", "u-77", 129_000)),
    ]
}

/// What comes in after analytics caught up.
fn later() -> Vec<(&'static str, OrderEvent)> {
    let e = |order: &str, customer: &str, amount: u64| OrderEvent {
        order: order.into(),
        customer: customer.into(),
        amount,
    };
    vec![
        ("order.created", e("o-5005", "u-81", 0)),
        ("order.paid", e("o-5005", "u-81", 310_000)),
    ]
}

/// The figures analytics derives from the events it has read.
#[derive(Debug, Default, PartialEq)]
struct Figures {
    orders: u32,
    cancelled: u32,
    revenue: u64,
    /// Events by kind.
    by_kind: BTreeMap<String, u32>,
}

impl Figures {
    fn apply(&mut self, kind: &str, e: &OrderEvent) {
        *self.by_kind.entry(kind.to_owned()).or_default() += 1;
        match kind {
            "order.created" => self.orders += 1,
            "order.cancelled" => self.cancelled += 1,
            "order.paid" => self.revenue += e.amount,
            "order.refunded" => self.revenue -= e.amount,
            _ => {}
        }
    }
}

async fn publish(ch: &Channel, events: &[(&str, OrderEvent)]) -> anyhow::Result<()> {
    for (key, event) in events {
        println!("  order service: {key:<16} {}", event.order);
        let confirm = ch
            .basic_publish(
                EXCHANGE,
                key,
                BasicPublishOptions::default(),
                &serde_json::to_vec(event)?,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_type((*key).into()),
            )
            .await?;
        expect_ack(&format!("{key} {}", event.order), confirm).await?;
    }
    Ok(())
}

/// Analytics reads `n` events from `start` (an `x-stream-offset`), applying
/// each to `figures`; returns the offsets it saw.
async fn analytics_read(
    ch: &Channel,
    start: AMQPValue,
    n: usize,
    figures: &mut Figures,
) -> anyhow::Result<Vec<i64>> {
    // A stream consumer needs a prefetch: acks only hand credit back, the
    // messages stay in the stream.
    ch.basic_qos(50, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            STREAM,
            "analytics",
            BasicConsumeOptions::default(),
            table([("x-stream-offset", start)]),
        )
        .await?;
    let mut offsets = Vec::new();
    while offsets.len() < n {
        let delivery = within("an order event", consumer.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream consumer ended"))??;
        let offset = header(&delivery.properties, "x-stream-offset")
            .and_then(as_i64)
            .ok_or_else(|| anyhow::anyhow!("a delivery without x-stream-offset"))?;
        let kind = delivery.routing_key.as_str().to_owned();
        let event: OrderEvent = serde_json::from_slice(&delivery.data)?;
        println!("  analytics: offset {offset:>2} {kind:<16} {}", event.order);
        figures.apply(&kind, &event);
        offsets.push(offset);
        delivery.ack(BasicAckOptions::default()).await?;
    }
    ch.basic_cancel("analytics", BasicCancelOptions::default())
        .await?;
    Ok(offsets)
}

/// Runs the scenario against the broker at `url`; `Ok` when analytics
/// replayed the whole history in order, resumed with exactly the new
/// events, and the stream still holds everything.
pub async fn run(url: &str) -> anyhow::Result<()> {
    println!("Order history: a stream that a new service replays from the start.\n");
    let orders = connect(url, "order-service").await?;
    let ch = confirm_channel(&orders).await?;
    // Start clean, as a rerun would.
    ch.queue_delete(STREAM, QueueDeleteOptions::default())
        .await?;
    ch.exchange_delete(EXCHANGE, ExchangeDeleteOptions::default())
        .await?;
    ch.exchange_declare(
        EXCHANGE,
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    // Streams are durable; keep a month of history, in 1 MB segments.
    let stream_args = table([
        ("x-queue-type", string("stream")),
        ("x-max-age", string("30D")),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongLongInt(1_000_000),
        ),
    ]);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(STREAM, durable, stream_args).await?;
    ch.queue_bind(
        STREAM,
        EXCHANGE,
        "order.*",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    println!("Before analytics exists:");
    let past = history();
    publish(&ch, &past).await?;

    println!("\nThe analytics service starts and replays the history from the first offset:");
    let analytics = connect(url, "analytics").await?;
    let ach = analytics.create_channel().await?;
    let mut figures = Figures::default();
    let replayed = analytics_read(&ach, string("first"), past.len(), &mut figures).await?;
    // The application keeps its own position (the stream protocol can keep
    // it on the broker, by consumer name).
    let reached = replayed.last().copied().unwrap_or(-1);
    println!(
        "  analytics: {} orders, {} cancelled, revenue Rp {}; reached offset {reached}",
        figures.orders, figures.cancelled, figures.revenue
    );

    println!("\nMore orders come in:");
    let new = later();
    publish(&ch, &new).await?;
    println!("\nAnalytics resumes after offset {reached}:");
    let resumed = analytics_read(
        &ach,
        AMQPValue::LongLongInt(reached + 1),
        new.len(),
        &mut figures,
    )
    .await?;

    let mut c = Checklist::new();
    let n = past.len() as i64;
    c.equal(
        replayed.clone(),
        (0..n).collect::<Vec<_>>(),
        "the replay saw every past event once, in order, from offset 0",
    );
    c.equal(
        resumed,
        (n..n + new.len() as i64).collect::<Vec<_>>(),
        "resuming saw exactly the new events",
    );
    c.equal(
        (figures.orders, figures.cancelled, figures.revenue),
        (5, 1, 415_000 + 1_250_000 + 310_000),
        "orders, cancellations and revenue (net of the refund)",
    );
    c.equal(
        ready_count(&ch, STREAM).await?,
        (past.len() + new.len()) as u32,
        "reading removed nothing: the stream still holds every event",
    );
    analytics.close(200, "done").await?;
    orders.close(200, "done").await?;
    c.verdict()
}
