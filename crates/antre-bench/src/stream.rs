//! The stream scenario over RabbitMQ's stream protocol, driven by the
//! independent `rabbitmq-stream-client` crate so the same client measures
//! antre and RabbitMQ: one producer publishes N messages in batches with
//! confirms (a bounded number of unconfirmed messages in flight), then C
//! consumers each read the whole stream from `first` at once. Reports the
//! rates and, given the broker's pid, its CPU time per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rabbitmq_stream_client::types::{Message, OffsetSpecification};
use rabbitmq_stream_client::Environment;
use serde::Serialize;

use crate::procfs;

/// Options of `antre-bench stream`.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Broker host.
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
    /// Messages per publish batch.
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
}

/// One run's results.
#[derive(Debug, Serialize)]
pub struct StreamReport {
    /// The broker's name.
    pub broker: String,
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

/// Runs the scenario.
pub async fn run(args: &StreamArgs) -> Result<StreamReport> {
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

    let producer = env.producer().build(&args.stream).await?;
    let confirmed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let body = vec![b'x'; args.size];
    let cpu0 = cpu(args.pid);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.messages {
        // Bounded in flight, as a real publisher waits for confirms.
        while sent - confirmed.load(Ordering::Relaxed) >= args.in_flight {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let n = (args.batch as u64).min(args.messages - sent);
        let batch = (0..n)
            .map(|_| Message::builder().body(body.clone()).build())
            .collect();
        let (ok, bad) = (Arc::clone(&confirmed), Arc::clone(&failed));
        producer
            .batch_send(batch, move |status| {
                let counter = match status {
                    Ok(s) if s.confirmed() => Arc::clone(&ok),
                    _ => Arc::clone(&bad),
                };
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await?;
        sent += n;
    }
    while confirmed.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < args.messages {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let cpu1 = cpu(args.pid);
    producer.close().await?;
    if failed.load(Ordering::Relaxed) > 0 {
        bail!(
            "{} messages were not confirmed",
            failed.load(Ordering::Relaxed)
        );
    }

    let started = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..args.consumers {
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
        messages: args.messages,
        size: args.size,
        consumers: args.consumers,
        publish_rate: args.messages as f64 / publish_secs,
        consume_rate: delivered as f64 / consume_secs,
        publish_cpu_us_per_msg: per_message(cpu0, cpu1, args.messages),
        consume_cpu_us_per_msg: per_message(cpu1, cpu2, delivered),
    })
}
