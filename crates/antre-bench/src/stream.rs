//! The stream scenario: one producer publishes N messages to a fresh stream
//! with confirms (a bounded number of unconfirmed messages in flight), then
//! C consumers each read the whole stream from `first` at once. Reports the
//! rates and, given the broker's pid, its CPU time per message.
//!
//! Two protocols, the same scenario:
//! - `--protocol stream`: RabbitMQ's stream protocol, driven by the
//!   independent `rabbitmq-stream-client` crate so the same client measures
//!   antre and RabbitMQ (batched publishes, one chunk per credit).
//! - `--protocol amqp`: AMQP 0-9-1 with the tool's own lean client (as the
//!   `run` scenarios): a durable `x-queue-type: stream` queue, persistent
//!   publishes with confirms, consumers with a prefetch, `x-stream-offset:
//!   first`, and `multiple` acks (on a stream, acks only give credit back).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antre_amqp::method::{QueueDeclare, QueueDelete};
use antre_amqp::{FieldTable, FieldValue, Method};
use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rabbitmq_stream_client::types::{Message, OffsetSpecification};
use rabbitmq_stream_client::Environment;
use serde::Serialize;

use crate::client::{AmqpUrl, Connection};
use crate::consumer::{self, ConsumerSpec};
use crate::procfs;
use crate::producer::{self, ProducerSpec};
use crate::stats::Counters;

/// Which protocol `antre-bench stream` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// RabbitMQ's stream protocol (rabbitmq-stream-client).
    Stream,
    /// AMQP 0-9-1 on an `x-queue-type: stream` queue.
    Amqp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Stream => "stream",
            Protocol::Amqp => "amqp",
        })
    }
}

/// Which client speaks the stream protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamClient {
    /// The `rabbitmq-stream-client` crate.
    Crate,
    /// The tool's own lean client ([`crate::stream_lean`]).
    Lean,
}

/// Options of `antre-bench stream`.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// The protocol to publish and consume with.
    #[arg(long, value_enum, default_value_t = Protocol::Stream)]
    pub protocol: Protocol,
    /// AMQP 0-9-1 URL (with --protocol amqp).
    #[arg(
        short = 'u',
        long,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    /// Consumer prefetch (with --protocol amqp).
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Ack (multiple) every this many deliveries (with --protocol amqp).
    #[arg(long, default_value_t = 200)]
    pub ack_every: u64,
    /// Broker host (stream protocol).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Stream protocol port.
    #[arg(long, default_value_t = 5552)]
    pub port: u16,
    /// The stream (deleted and re-created first).
    #[arg(long, default_value = "bench-stream")]
    pub stream: String,
    /// Messages to publish.
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Body size in bytes.
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// Which client publishes and consumes over the stream protocol (the
    /// stream is created and deleted with the crate either way).
    #[arg(long, value_enum, default_value_t = StreamClient::Crate)]
    pub client: StreamClient,
    /// Messages per publish batch (stream protocol).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Most unconfirmed messages in flight.
    #[arg(long, default_value_t = 10_000)]
    pub in_flight: u64,
    /// Consumers reading the whole stream from first, concurrently.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub consumers: usize,
    /// The broker's pid, to report its CPU time per message.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Connect every client to --host/--port whatever address the broker
    /// advertises (for a broker that advertises a hostname that does not
    /// resolve here).
    #[arg(long)]
    pub load_balancer: bool,
    /// A name for the broker in the report.
    #[arg(long, default_value = "broker")]
    pub broker: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One run's results.
#[derive(Debug, Serialize)]
pub struct StreamReport {
    /// The broker's name.
    pub broker: String,
    /// The protocol measured.
    pub protocol: Protocol,
    /// The stream-protocol client (None: AMQP 0-9-1 with the tool's own
    /// client).
    pub client: Option<StreamClient>,
    /// Messages published.
    pub messages: u64,
    /// Body size.
    pub size: usize,
    /// Consumers.
    pub consumers: usize,
    /// Confirmed messages per second.
    pub publish_rate: f64,
    /// Messages per second over all consumers.
    pub consume_rate: f64,
    /// Broker CPU µs per message published, if measured.
    pub publish_cpu_us_per_msg: Option<f64>,
    /// Broker CPU µs per message delivered, if measured.
    pub consume_cpu_us_per_msg: Option<f64>,
}

fn cpu(pid: Option<u32>) -> Option<u64> {
    pid.and_then(|p| procfs::cpu_time_us(p).ok())
}

fn per_message(before: Option<u64>, after: Option<u64>, n: u64) -> Option<f64> {
    Some((after? - before?) as f64 / n.max(1) as f64)
}

/// Runs the scenario over the chosen protocol.
pub async fn run(args: &StreamArgs) -> Result<StreamReport> {
    match args.protocol {
        Protocol::Stream => run_stream_protocol(args).await,
        Protocol::Amqp => run_amqp(args).await,
    }
}

async fn run_stream_protocol(args: &StreamArgs) -> Result<StreamReport> {
    let env = Environment::builder()
        .host(&args.host)
        .port(args.port)
        .load_balancer_mode(args.load_balancer)
        .build()
        .await
        .context("connecting over the stream protocol")?;
    let _ = env.delete_stream(&args.stream).await;
    env.stream_creator()
        .create(&args.stream)
        .await
        .context("creating the stream")?;

    let cpu0 = cpu(args.pid);
    let started = Instant::now();
    let lean = crate::stream_lean::LeanPublish {
        host: args.host.clone(),
        port: args.port,
        user: "guest".into(),
        password: "guest".into(),
        stream: args.stream.clone(),
        messages: args.messages,
        size: args.size,
        batch: args.batch,
        in_flight: args.in_flight,
    };
    match args.client {
        StreamClient::Crate => publish_with_crate(&env, args).await?,
        StreamClient::Lean => {
            let refused = crate::stream_lean::publish(&lean).await?;
            if refused > 0 {
                bail!("{refused} messages were not confirmed");
            }
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let cpu1 = cpu(args.pid);

    let started = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..args.consumers {
        if args.client == StreamClient::Lean {
            let lean = lean.clone();
            readers.push(tokio::spawn(async move {
                crate::stream_lean::consume(&lean).await
            }));
            continue;
        }
        let mut consumer = env
            .consumer()
            .offset(OffsetSpecification::First)
            .build(&args.stream)
            .await?;
        let n = args.messages;
        readers.push(tokio::spawn(async move {
            let mut got = 0u64;
            while got < n {
                match consumer.next().await {
                    Some(Ok(_)) => got += 1,
                    Some(Err(e)) => return Err(anyhow::anyhow!("delivery: {e}")),
                    None => bail!("consumer ended after {got} messages"),
                }
            }
            consumer.handle().close().await?;
            Ok(())
        }));
    }
    for r in readers {
        r.await??;
    }
    let consume_secs = started.elapsed().as_secs_f64();
    let cpu2 = cpu(args.pid);
    let delivered = args.messages * args.consumers as u64;
    let _ = env.delete_stream(&args.stream).await;
    Ok(StreamReport {
        broker: args.broker.clone(),
        protocol: Protocol::Stream,
        client: Some(args.client),
        messages: args.messages,
        size: args.size,
        consumers: args.consumers,
        publish_rate: args.messages as f64 / publish_secs,
        consume_rate: delivered as f64 / consume_secs,
        publish_cpu_us_per_msg: per_message(cpu0, cpu1, args.messages),
        consume_cpu_us_per_msg: per_message(cpu1, cpu2, delivered),
    })
}

/// Publishes with the crate's producer: batches with confirms, a bounded
/// number in flight.
async fn publish_with_crate(env: &Environment, args: &StreamArgs) -> Result<()> {
    let producer = env.producer().build(&args.stream).await?;
    let confirmed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let body = vec![b'x'; args.size];
    let mut sent = 0u64;
    // Confirm callbacks wake the publishing loop: a timer would sleep at
    // least a millisecond (tokio's resolution) per wait.
    let wake = Arc::new(tokio::sync::Notify::new());
    let settled = |confirmed: &AtomicU64, failed: &AtomicU64| {
        confirmed.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)
    };
    while sent < args.messages {
        // Bounded in flight, as a real publisher waits for confirms.
        while sent - settled(&confirmed, &failed) >= args.in_flight {
            let notified = wake.notified();
            if sent - settled(&confirmed, &failed) < args.in_flight {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
        let n = (args.batch as u64).min(args.messages - sent);
        let batch = (0..n)
            .map(|_| Message::builder().body(body.clone()).build())
            .collect();
        let (ok, bad, wake) = (
            Arc::clone(&confirmed),
            Arc::clone(&failed),
            Arc::clone(&wake),
        );
        producer
            .batch_send(batch, move |status| {
                let counter = match status {
                    Ok(s) if s.confirmed() => Arc::clone(&ok),
                    _ => Arc::clone(&bad),
                };
                let wake = Arc::clone(&wake);
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    wake.notify_one();
                }
            })
            .await?;
        sent += n;
    }
    loop {
        let notified = wake.notified();
        if settled(&confirmed, &failed) >= args.messages {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
    }
    producer.close().await?;
    if failed.load(Ordering::Relaxed) > 0 {
        bail!(
            "{} messages were not confirmed",
            failed.load(Ordering::Relaxed)
        );
    }

    Ok(())
}

/// Deletes and declares the stream queue over AMQP 0-9-1.
async fn declare_stream_queue(url: &AmqpUrl, name: &str) -> Result<()> {
    let mut conn = Connection::open(url, "antre-bench stream setup").await?;
    conn.open_channel(1).await?;
    let delete = QueueDelete {
        queue: name.into(),
        ..Default::default()
    };
    conn.call(1, delete.into())
        .await
        .context("deleting the stream")?;
    let mut arguments = FieldTable::new();
    arguments.insert("x-queue-type", FieldValue::LongString("stream".into()));
    let declare = QueueDeclare {
        queue: name.into(),
        durable: true,
        arguments,
        ..Default::default()
    };
    match conn.call(1, declare.into()).await? {
        Method::QueueDeclareOk(_) => {}
        m => bail!("expected queue.declare-ok, got {}", m.name()),
    }
    conn.close().await;
    Ok(())
}

async fn delete_stream_queue(url: &AmqpUrl, name: &str) -> Result<()> {
    let mut conn = Connection::open(url, "antre-bench stream cleanup").await?;
    conn.open_channel(1).await?;
    let delete = QueueDelete {
        queue: name.into(),
        ..Default::default()
    };
    conn.call(1, delete.into()).await?;
    conn.close().await;
    Ok(())
}

/// Waits until `counter` reaches `target`; fails if it stops moving for
/// `stall` (a broker that stopped delivering), so a run never hangs.
async fn wait_for(counter: &AtomicU64, target: u64, stall: Duration, what: &str) -> Result<()> {
    let mut last = (counter.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = counter.load(Ordering::Relaxed);
        if now >= target {
            return Ok(());
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > stall {
            bail!("{what}: stuck at {now} of {target}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn run_amqp(args: &StreamArgs) -> Result<StreamReport> {
    let url: AmqpUrl = args.uri.parse()?;
    declare_stream_queue(&url, &args.stream).await?;

    let counters = Arc::new(Counters::default());
    let spec = ProducerSpec {
        url: url.clone(),
        exchange: String::new(),
        routing_key: args.stream.clone(),
        size: args.size,
        persistent: true,
        confirm_window: Some(args.in_flight),
        rate: None,
        count: Some(args.messages),
    };
    let cpu0 = cpu(args.pid);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(producer::run(spec, counters.clone(), stop.clone()));
    let confirmed = wait_for(
        &counters.confirmed,
        args.messages,
        Duration::from_secs(30),
        "publisher confirms",
    )
    .await;
    let publish_secs = started.elapsed().as_secs_f64();
    let cpu1 = cpu(args.pid);
    stop.store(true, Ordering::Relaxed);
    publisher.await??;
    confirmed?;
    if counters.nacked.load(Ordering::Relaxed) > 0 {
        bail!(
            "{} messages were nacked",
            counters.nacked.load(Ordering::Relaxed)
        );
    }

    let delivered = args.messages * args.consumers as u64;
    let readers = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let mut arguments = FieldTable::new();
    arguments.insert("x-stream-offset", FieldValue::LongString("first".into()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.consumers)
        .map(|_| {
            let spec = ConsumerSpec {
                url: url.clone(),
                queue: args.stream.clone(),
                prefetch: args.prefetch,
                ack_every: args.ack_every,
                auto_ack: false,
                arguments: arguments.clone(),
            };
            tokio::spawn(consumer::run(
                spec,
                readers.clone(),
                stop.clone(),
                ready.clone(),
            ))
        })
        .collect();
    let read = wait_for(
        &readers.delivered,
        delivered,
        Duration::from_secs(30),
        "consumers",
    )
    .await;
    let consume_secs = started.elapsed().as_secs_f64();
    let cpu2 = cpu(args.pid);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    read?;
    delete_stream_queue(&url, &args.stream).await?;
    Ok(StreamReport {
        broker: args.broker.clone(),
        protocol: Protocol::Amqp,
        client: None,
        messages: args.messages,
        size: args.size,
        consumers: args.consumers,
        publish_rate: args.messages as f64 / publish_secs,
        consume_rate: delivered as f64 / consume_secs,
        publish_cpu_us_per_msg: per_message(cpu0, cpu1, args.messages),
        consume_cpu_us_per_msg: per_message(cpu1, cpu2, delivered),
    })
}
