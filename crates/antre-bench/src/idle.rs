//! The idle-connection scenario (`antre-bench idle`): opens many AMQP
//! connections (logged in, vhost open, optionally with channels), leaves
//! them idle, and reports what they cost the broker in resident memory.
//! It answers: how many clients can a node hold in a given RAM, and what
//! does a connection that does nothing cost?
//!
//! The broker's RSS is read from /proc before the first connection and
//! after the last, once it has settled (`--settle` seconds: RabbitMQ's
//! garbage collector and antre's allocator both give memory back late).
//! Connections have no heartbeats, so nothing wakes them; at the end each
//! is checked to be still open. The tool needs a file descriptor per
//! connection: run it under `ulimit -n` above `--connections`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use clap::Args;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::client::{AmqpUrl, Connection};
use crate::procfs::rss_kib;

/// Options of `antre-bench idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Broker URL.
    #[arg(
        short = 'u',
        long,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    /// How many connections to open.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub connections: usize,
    /// Channels to open on each connection.
    #[arg(long, default_value_t = 0)]
    pub channels: u16,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// The broker's pid, whose resident memory is measured.
    #[arg(long)]
    pub pid: u32,
    /// Seconds to wait before each memory reading.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Broker name in the report.
    #[arg(long, default_value = "broker")]
    pub broker: String,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What one `idle` run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleReport {
    /// Broker name.
    pub broker: String,
    /// Connections opened.
    pub connections: usize,
    /// Channels on each.
    pub channels_per_connection: u16,
    /// Seconds to open them all.
    pub open_seconds: f64,
    /// Broker RSS before the first connection, KiB.
    pub rss_before_kib: u64,
    /// Broker RSS with every connection open and idle, KiB.
    pub rss_after_kib: u64,
    /// (after - before) / connections, bytes.
    pub bytes_per_connection: f64,
    /// Connections still open when the memory was read.
    pub still_open: usize,
}

/// Opens the connections, measures, closes them.
pub async fn run(args: &IdleArgs) -> Result<IdleReport> {
    let url: AmqpUrl = args.uri.parse()?;
    let settle = Duration::from_secs_f64(args.settle);
    tokio::time::sleep(settle).await;
    let rss_before_kib = rss_kib(args.pid).context("the broker's pid has no /proc entry")?;
    let started = Instant::now();
    let mut open = Vec::with_capacity(args.connections);
    let mut pending = JoinSet::new();
    let mut next = 0;
    while open.len() < args.connections {
        while pending.len() < args.concurrency && next < args.connections {
            let (url, channels) = (url.clone(), args.channels);
            let name = format!("antre-bench-idle-{next}");
            pending.spawn(async move { idle_connection(&url, &name, channels).await });
            next += 1;
        }
        match pending.join_next().await {
            Some(joined) => open.push(joined.context("a connection task failed")??),
            None => break,
        }
        if open.len() % 1000 == 0 {
            eprintln!("{} connections open", open.len());
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after_kib = rss_kib(args.pid).context("the broker exited")?;
    let still_open = open.iter().filter(|c| is_open(c)).count();
    if still_open < open.len() {
        bail!(
            "the broker closed {} of {} idle connections",
            open.len() - still_open,
            open.len()
        );
    }
    let grown = rss_after_kib.saturating_sub(rss_before_kib) * 1024;
    Ok(IdleReport {
        broker: args.broker.clone(),
        connections: open.len(),
        channels_per_connection: args.channels,
        open_seconds,
        rss_before_kib,
        rss_after_kib,
        bytes_per_connection: grown as f64 / open.len().max(1) as f64,
        still_open,
    })
}

async fn idle_connection(url: &AmqpUrl, name: &str, channels: u16) -> Result<Connection> {
    let mut conn = Connection::open(url, name).await?;
    for ch in 1..=channels {
        conn.open_channel(ch).await?;
    }
    // The setup buffer is large; an idle connection needs none.
    conn.rbuf = BytesMut::new();
    Ok(conn)
}

/// Whether the broker has not closed the socket (nothing to read, no EOF).
fn is_open(conn: &Connection) -> bool {
    let mut byte = [0u8; 1];
    match conn.stream.try_read(&mut byte) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// Prints the report as a table row with its header.
pub fn print(r: &IdleReport) {
    println!("| broker | connections | channels each | open s | RSS before MiB | RSS after MiB | bytes per connection |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} |",
        r.broker,
        r.connections,
        r.channels_per_connection,
        r.open_seconds,
        r.rss_before_kib as f64 / 1024.0,
        r.rss_after_kib as f64 / 1024.0,
        r.bytes_per_connection
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeServer;

    #[tokio::test]
    async fn opens_every_connection_and_finds_them_open() {
        let server = FakeServer::start(16).unwrap();
        let args = IdleArgs {
            uri: server.url(),
            connections: 50,
            channels: 1,
            concurrency: 8,
            // The fake broker runs in this process.
            pid: std::process::id(),
            settle: 0.0,
            broker: "fake".into(),
            json: None,
        };
        let report = run(&args).await.unwrap();
        assert_eq!((report.connections, report.still_open), (50, 50));
        assert!(report.rss_after_kib > 0);
    }
}
