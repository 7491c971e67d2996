//! The dead-lettering scenario (`antre-bench dead-letter`): a quorum queue
//! that dead-letters at least once (`x-dead-letter-strategy:
//! at-least-once`, `reject-publish`) into a second quorum queue through a
//! fanout exchange. It publishes N persistent messages with confirms, then
//! one consumer rejects every one of them (`basic.nack` without requeue,
//! `multiple` every 100 deliveries), and the run ends once the dead-letter
//! queue holds all N: how fast a broker moves rejected messages, each of
//! which it may only let go of once the target holds it.
//!
//! Driven by lapin (declares, publishes, the consumer), polling the
//! dead-letter queue's count with passive declares.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Serialize;

/// Options of `antre-bench dead-letter`.
#[derive(Debug, Clone, Args)]
pub struct DeadLetterArgs {
    /// Broker URL.
    #[arg(
        short = 'u',
        long,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    /// Messages to publish and then reject.
    #[arg(short = 'n', long, default_value_t = 50_000)]
    pub messages: usize,
    /// Body size in bytes.
    #[arg(short = 's', long, default_value_t = 1024)]
    pub size: usize,
    /// The consumer's prefetch.
    #[arg(short = 'q', long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Dead-letter at most once instead (the default strategy).
    #[arg(long)]
    pub at_most_once: bool,
    /// Give up after this many seconds of rejecting.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Broker name in the report.
    #[arg(long, default_value = "broker")]
    pub broker: String,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What one `dead-letter` run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLetterReport {
    /// Broker name.
    pub broker: String,
    /// Messages published (all confirmed) and rejected.
    pub messages: usize,
    /// Confirmed publishes per second (the setup phase).
    pub publish_rate: f64,
    /// Seconds from the consumer's start to the dead-letter queue holding
    /// every message.
    pub dead_letter_seconds: f64,
    /// Messages dead-lettered per second over that time.
    pub dead_letter_rate: f64,
    /// What the dead-letter queue held in the end (at least once: may be
    /// more than `messages`).
    pub dead_lettered: u32,
}

const SOURCE: &str = "bench-dl-source";
const TARGET: &str = "bench-dl-dead";
const EXCHANGE: &str = "bench-dl-x";

fn quorum(extra: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    for (k, v) in extra {
        t.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    t
}

async fn declare(ch: &Channel, at_most_once: bool) -> Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        EXCHANGE,
        ExchangeKind::Fanout,
        exchange,
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(TARGET, durable, quorum(&[])).await?;
    ch.queue_bind(
        TARGET,
        EXCHANGE,
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let strategy = if at_most_once {
        "at-most-once"
    } else {
        "at-least-once"
    };
    let source = quorum(&[
        ("x-dead-letter-exchange", EXCHANGE),
        ("x-dead-letter-strategy", strategy),
        ("x-overflow", "reject-publish"),
    ]);
    ch.queue_declare(SOURCE, durable, source).await?;
    Ok(())
}

async fn count(ch: &Channel, queue: &str) -> Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    Ok(ch
        .queue_declare(queue, passive, FieldTable::default())
        .await?
        .message_count())
}

async fn publish_all(ch: &Channel, n: usize, size: usize) -> Result<()> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; size];
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut window = std::collections::VecDeque::new();
    for _ in 0..n {
        let confirm = ch
            .basic_publish(
                "",
                SOURCE,
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await?;
        window.push_back(confirm);
        if window.len() >= 1000 {
            if let Some(c) = window.pop_front() {
                if !c.await?.is_ack() {
                    bail!("a publish was nacked");
                }
            }
        }
    }
    for c in window {
        if !c.await?.is_ack() {
            bail!("a publish was nacked");
        }
    }
    Ok(())
}

/// Runs the scenario once.
pub async fn run(args: &DeadLetterArgs) -> Result<DeadLetterReport> {
    let conn = Connection::connect(&args.uri, ConnectionProperties::default())
        .await
        .context("connecting")?;
    let ch = conn.create_channel().await?;
    // Leftovers of an interrupted run.
    for q in [SOURCE, TARGET] {
        ch.queue_delete(q, QueueDeleteOptions::default()).await?;
    }
    declare(&ch, args.at_most_once).await?;

    let started = Instant::now();
    publish_all(&conn.create_channel().await?, args.messages, args.size).await?;
    let publish_rate = args.messages as f64 / started.elapsed().as_secs_f64();

    let consuming = conn.create_channel().await?;
    consuming
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consuming
        .basic_consume(
            SOURCE,
            "bench-dl",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let want = u32::try_from(args.messages).unwrap_or(u32::MAX);
    let total = args.messages;
    let rejecter = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(Ok(d)) = consumer.next().await {
            n += 1;
            // Every 100th delivery, and the last, rejects all before it.
            if n.is_multiple_of(100) || n >= total {
                let nack = BasicNackOptions {
                    multiple: true,
                    requeue: false,
                };
                if d.nack(nack).await.is_err() {
                    return;
                }
            }
        }
    });
    let dead_lettered = loop {
        let n = count(&ch, TARGET).await?;
        if n >= want {
            break n;
        }
        if Instant::now() > deadline {
            rejecter.abort();
            bail!("only {n} of {want} dead-lettered in {} s", args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    rejecter.abort();
    consuming.close(200, "done").await.ok();
    for q in [SOURCE, TARGET] {
        ch.queue_delete(q, QueueDeleteOptions::default()).await?;
    }
    ch.exchange_delete(EXCHANGE, ExchangeDeleteOptions::default())
        .await?;
    conn.close(200, "done").await.ok();
    Ok(DeadLetterReport {
        broker: args.broker.clone(),
        messages: args.messages,
        publish_rate,
        dead_letter_seconds: seconds,
        dead_letter_rate: args.messages as f64 / seconds,
        dead_lettered,
    })
}

/// Prints a report.
pub fn print(r: &DeadLetterReport) {
    println!(
        "{}: {} messages published at {:.0}/s; all dead-lettered in {:.2} s: {:.0} msg/s ({} in the dead-letter queue)",
        r.broker,
        r.messages,
        r.publish_rate,
        r.dead_letter_seconds,
        r.dead_letter_rate,
        r.dead_lettered
    );
}
