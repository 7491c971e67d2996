//! The object-count scenario (`antre-bench declare`): one client declares
//! many queues, pipelining them, each bound to `amq.direct`, while a
//! bystander on another connection keeps doing a publish and a basic.get
//! and times each round trip. It answers: does the n-th thousand declares
//! cost what the first did (no quadratic work), and does a client creating
//! topology hold up everyone else?

use std::time::{Duration, Instant};

use antre_amqp::method::{BasicGet, BasicPublish, QueueBind, QueueDeclare, QueueDelete};
use antre_amqp::{encode_content, encode_method, BasicProperties, Method};
use anyhow::{bail, Result};
use bytes::BytesMut;
use clap::Args;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::client::{AmqpUrl, Connection};
use crate::stats::Histogram;

/// Options of `antre-bench declare`.
#[derive(Debug, Clone, Args)]
pub struct DeclareArgs {
    /// Broker URL.
    #[arg(
        short = 'u',
        long,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    /// How many queues to declare.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    pub queues: usize,
    /// Declares in flight at once (the client pipelines).
    #[arg(long, default_value_t = 500)]
    pub window: usize,
    /// Declare transient queues instead of durable ones.
    #[arg(long)]
    pub transient: bool,
    /// Queue names are this prefix and a number.
    #[arg(long, default_value = "bench-declare-")]
    pub prefix: String,
    /// Delete the queues afterwards (and time that too).
    #[arg(long)]
    pub delete: bool,
    /// The broker's pid, to report its resident memory afterwards.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Broker name in the report.
    #[arg(long, default_value = "broker")]
    pub broker: String,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What one `declare` run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeclareReport {
    /// Broker name.
    pub broker: String,
    /// Queues declared (and bound).
    pub queues: usize,
    /// Durable or transient.
    pub durable: bool,
    /// Seconds for all declares and binds.
    pub seconds: f64,
    /// Seconds for the first thousand.
    pub first_thousand_seconds: f64,
    /// Seconds for the slowest thousand.
    pub slowest_thousand_seconds: f64,
    /// Seconds for the last thousand.
    pub last_thousand_seconds: f64,
    /// Median seconds per thousand.
    pub median_thousand_seconds: f64,
    /// How many thousands took more than twice the first.
    pub thousands_over_twice_the_first: usize,
    /// Bystander round trips (publish + get) completed meanwhile.
    pub bystander_round_trips: u64,
    /// Bystander round trip, median, ms.
    pub bystander_p50_ms: f64,
    /// Bystander round trip, 99th percentile, ms.
    pub bystander_p99_ms: f64,
    /// Bystander round trip, worst, ms.
    pub bystander_max_ms: f64,
    /// Broker resident memory after the declares, MiB (with `--pid`).
    pub broker_rss_mib: Option<f64>,
    /// Seconds to delete them all (with `--delete`).
    pub delete_seconds: Option<f64>,
}

/// Runs the scenario.
pub async fn run(args: &DeclareArgs) -> Result<DeclareReport> {
    let url: AmqpUrl = args.uri.parse()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let bystander = tokio::spawn(bystander(url.clone(), stop_rx));
    let mut conn = Connection::open(&url, "antre-bench declare").await?;
    conn.open_channel(1).await?;
    let started = Instant::now();
    let mut chunk_started = started;
    let mut chunks = Vec::new();
    let name = |i: usize| format!("{}{i}", args.prefix);
    let mut sent = 0;
    let mut answered = 0;
    while answered < args.queues {
        while sent < args.queues && sent - answered < args.window {
            let q = name(sent);
            let declare = QueueDeclare {
                queue: q.clone(),
                durable: !args.transient,
                ..Default::default()
            };
            let bind = QueueBind {
                queue: q.clone(),
                exchange: "amq.direct".into(),
                routing_key: q,
                ..Default::default()
            };
            let mut out = BytesMut::new();
            encode_method(1, &declare.into(), &mut out);
            encode_method(1, &bind.into(), &mut out);
            conn.stream.write_all(&out).await?;
            sent += 1;
        }
        match conn.next_method(1).await? {
            Method::QueueDeclareOk(_) => {}
            m => bail!("expected queue.declare-ok, got {}", m.name()),
        }
        match conn.next_method(1).await? {
            Method::QueueBindOk(_) => {}
            m => bail!("expected queue.bind-ok, got {}", m.name()),
        }
        answered += 1;
        if answered % 1000 == 0 || answered == args.queues {
            chunks.push(chunk_started.elapsed().as_secs_f64());
            chunk_started = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let broker_rss_mib = args
        .pid
        .and_then(crate::procfs::rss_kib)
        .map(|kib| kib as f64 / 1024.0);
    let delete_seconds = if args.delete {
        let t = Instant::now();
        for i in 0..args.queues {
            let delete = QueueDelete {
                queue: name(i),
                ..Default::default()
            };
            let mut out = BytesMut::new();
            encode_method(1, &delete.into(), &mut out);
            conn.stream.write_all(&out).await?;
            if i >= args.window {
                conn.next_method(1).await?;
            }
        }
        for _ in 0..args.window.min(args.queues) {
            conn.next_method(1).await?;
        }
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };
    conn.close().await;
    let _ = stop_tx.send(true);
    let latency = bystander.await??;
    let ms = |ns: u64| ns as f64 / 1e6;
    Ok(DeclareReport {
        broker: args.broker.clone(),
        queues: args.queues,
        durable: !args.transient,
        seconds,
        first_thousand_seconds: chunks.first().copied().unwrap_or(0.0),
        slowest_thousand_seconds: chunks.iter().copied().fold(0.0, f64::max),
        last_thousand_seconds: chunks.last().copied().unwrap_or(0.0),
        median_thousand_seconds: median(&chunks),
        thousands_over_twice_the_first: chunks
            .iter()
            .filter(|&&c| c > 2.0 * chunks.first().copied().unwrap_or(0.0))
            .count(),
        bystander_round_trips: latency.count(),
        bystander_p50_ms: ms(latency.quantile(0.5)),
        bystander_p99_ms: ms(latency.quantile(0.99)),
        bystander_max_ms: ms(latency.max()),
        broker_rss_mib,
        delete_seconds,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Publishes one message to its own queue and gets it back, every 10 ms,
/// until told to stop; returns the round-trip times (ns).
async fn bystander(
    url: AmqpUrl,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Histogram> {
    let mut conn = Connection::open(&url, "antre-bench bystander").await?;
    conn.open_channel(1).await?;
    let queue = "bench-declare-bystander";
    conn.declare_queue(1, queue, false, false, None).await?;
    let mut latency = Histogram::default();
    loop {
        let t = Instant::now();
        let mut out = BytesMut::new();
        let publish = BasicPublish {
            routing_key: queue.into(),
            ..Default::default()
        };
        encode_method(1, &publish.into(), &mut out);
        encode_content(
            1,
            &BasicProperties::default(),
            b"ping",
            conn.frame_max,
            &mut out,
        );
        let get = BasicGet {
            queue: queue.into(),
            no_ack: true,
            ..Default::default()
        };
        encode_method(1, &get.into(), &mut out);
        conn.stream.write_all(&out).await?;
        match conn.next_method(1).await? {
            Method::BasicGetOk(_) => {}
            m => bail!("bystander expected basic.get-ok, got {}", m.name()),
        }
        latency.record(t.elapsed().as_nanos() as u64);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = stop.changed() => break,
        }
    }
    let delete = QueueDelete {
        queue: queue.into(),
        ..Default::default()
    };
    let _ = conn.call(1, delete.into()).await;
    conn.close().await;
    Ok(latency)
}

/// Prints a report.
pub fn print(r: &DeclareReport) {
    let kind = if r.durable { "durable" } else { "transient" };
    println!(
        "{}: {} {kind} queues declared and bound in {:.2} s ({:.0}/s)",
        r.broker,
        r.queues,
        r.seconds,
        r.queues as f64 / r.seconds.max(1e-9)
    );
    println!(
        "  per thousand: first {:.3} s, median {:.3} s, slowest {:.3} s ({:.1}x the first), last {:.3} s; {} of {} over twice the first",
        r.first_thousand_seconds,
        r.median_thousand_seconds,
        r.slowest_thousand_seconds,
        r.slowest_thousand_seconds / r.first_thousand_seconds.max(1e-9),
        r.last_thousand_seconds,
        r.thousands_over_twice_the_first,
        r.queues.div_ceil(1000)
    );
    println!(
        "  bystander publish+get: {} round trips, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.bystander_round_trips, r.bystander_p50_ms, r.bystander_p99_ms, r.bystander_max_ms
    );
    if let Some(rss) = r.broker_rss_mib {
        println!("  broker RSS afterwards: {rss:.1} MiB");
    }
    if let Some(s) = r.delete_seconds {
        println!("  deleted them all in {s:.2} s");
    }
}
