//! One benchmark run: declare the topology, start consumers, then producers,
//! sample rates every interval, stop, drain, and summarise into a [`Report`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antre_amqp::method::*;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::client::{AmqpUrl, Connection};
use crate::consumer::{self, ConsumerSpec};
use crate::lapin_driver;
use crate::procfs;
use crate::producer::{self, ProducerSpec};
use crate::stats::{
    human_rate, interval_rates, now_ns, rate, Counters, Histogram, LatencySummary, Sample,
};

/// Options of `antre-bench run` (PerfTest-like names where they exist).
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Broker URL: amqp://user:pass@host:port/vhost (vhost "/" is %2f).
    #[arg(
        short = 'u',
        long,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    /// Number of producers, each with its own connection.
    #[arg(short = 'x', long, default_value_t = 1)]
    pub producers: usize,
    /// Number of consumers, each with its own connection.
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: usize,
    /// Number of queues; producer and consumer i use queue i mod queues.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Queue names; `%d` becomes the queue's index.
    #[arg(long, default_value = "antre-bench-%d")]
    pub queue_pattern: String,
    /// Exchange to publish to; empty means the default exchange (routing
    /// key = queue name). Declared, and every queue bound to it.
    #[arg(short = 'e', long, default_value = "")]
    pub exchange: String,
    /// Type of `--exchange`: direct, fanout or topic. With fanout every
    /// message reaches every queue.
    #[arg(short = 't', long, default_value = "direct")]
    pub exchange_type: String,
    /// Message body size in bytes (at least 8, the timestamp).
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// Publish persistent messages (delivery_mode 2) to durable queues.
    #[arg(long)]
    pub persistent: bool,
    /// Declare durable queues even for transient messages.
    #[arg(long)]
    pub durable: bool,
    /// Declare the queues with this `x-queue-type` (e.g. quorum; they are
    /// then durable).
    #[arg(long)]
    pub queue_type: Option<String>,
    /// Use publisher confirms with at most this many unconfirmed messages per producer.
    #[arg(short = 'c', long)]
    pub confirm: Option<u64>,
    /// Consumer prefetch (basic.qos); 0 is unlimited.
    #[arg(short = 'q', long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Ack with multiple=true every N messages.
    #[arg(short = 'A', long, default_value_t = 100)]
    pub ack_every: u64,
    /// Consume with no_ack (the broker forgets a message once sent).
    #[arg(short = 'a', long)]
    pub auto_ack: bool,
    /// Total publish rate in msg/s, shared by the producers; flat out if absent.
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,
    /// Seconds to publish (or to consume, when there are no producers).
    #[arg(short = 'z', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages per producer; the run ends when all are published and drained.
    #[arg(short = 'C', long)]
    pub pmessages: Option<u64>,
    /// Total messages to consume; the run ends when they have arrived.
    #[arg(short = 'D', long)]
    pub cmessages: Option<u64>,
    /// After publishing stops, wait at most this long for consumers to catch up.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Do not delete the queues before the run (to drain an earlier backlog).
    #[arg(long)]
    pub no_reset: bool,
    /// Do not delete the queues after the run (to leave a backlog behind).
    #[arg(long)]
    pub keep_queues: bool,
    /// PID of the broker: its CPU time per message and its memory are
    /// reported. A cluster's nodes: several PIDs, comma-separated, summed.
    #[arg(long, value_delimiter = ',')]
    pub broker_pid: Vec<u32>,
    /// Name of the broker in reports (e.g. rabbitmq, antre).
    #[arg(long, default_value = "broker")]
    pub broker: String,
    /// Name of the scenario in reports.
    #[arg(long, default_value = "run")]
    pub label: String,
    /// Metrics `compare` shows for this run, comma-separated: rate,
    /// publish_rate, deliver_rate, cpu, p50, p99, p999, rss.
    #[arg(long, default_value = "rate,cpu")]
    pub headline: String,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a chart of rates and latency over time (SVG; .html wraps it in a page).
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Seconds between samples and live-progress lines.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Print live progress even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Print no live progress.
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// Whether the queues are declared durable: for persistent messages,
    /// on request, and for every replicated type (quorum, stream).
    pub fn durable_queues(&self) -> bool {
        self.persistent
            || self.durable
            || self.queue_type.as_deref().is_some_and(|t| t != "classic")
    }

    /// Default options with `uri`, as `antre-bench run --uri URI` would have.
    pub fn with_uri(uri: &str) -> RunArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: RunArgs,
        }
        Wrap::parse_from(["run", "--uri", uri]).args
    }

    pub(crate) fn queue_name(&self, i: usize) -> String {
        self.queue_pattern.replace("%d", &i.to_string())
    }

    /// How many copies of each published message reach some queue.
    fn copies_per_message(&self) -> u64 {
        if !self.exchange.is_empty() && self.exchange_type == "fanout" {
            self.queues as u64
        } else {
            1
        }
    }
}

/// Everything a run measured. Also the format of `--json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name (`--label`).
    pub label: String,
    /// Broker name (`--broker`).
    pub broker: String,
    /// Metrics `compare` shows (`--headline`).
    pub headline: Vec<String>,
    /// Broker address, without credentials.
    pub target: String,
    /// The options, as the tool saw them.
    pub config: String,
    /// Seconds producers ran.
    pub publish_seconds: f64,
    /// Seconds from the start until the last delivery.
    pub deliver_seconds: f64,
    /// Messages published.
    pub published: u64,
    /// Messages confirmed by the broker.
    pub confirmed: u64,
    /// Messages nacked by the broker.
    pub nacked: u64,
    /// Messages consumers received.
    pub delivered: u64,
    /// Published messages per second.
    pub publish_rate: f64,
    /// Delivered messages per second.
    pub deliver_rate: f64,
    /// End-to-end latency, from the timestamp in the body.
    pub latency: LatencySummary,
    /// Broker CPU (user + system) used during the run, in seconds.
    pub broker_cpu_seconds: Option<f64>,
    /// Broker CPU per message, in µs: per delivered message, or per
    /// published one when nothing was consumed.
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Highest broker VmRSS sampled during the run, in KiB.
    pub broker_rss_max_kib: Option<u64>,
    /// The tool's own CPU per message, in µs (same basis as the broker's).
    pub tool_cpu_us_per_msg: f64,
    /// Seconds until a restarted broker reported the whole backlog (`wait-count`).
    pub recovery_seconds: Option<f64>,
    /// Rates and latency per interval.
    pub samples: Vec<Sample>,
    /// What went wrong, if anything (a failed producer does not stop the run).
    pub errors: Vec<String>,
}

impl Report {
    /// The value of a headline metric, if this report has it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let nonzero = |v: f64| (v > 0.0).then_some(v);
        match name {
            "rate" if self.delivered > 0 => nonzero(self.deliver_rate),
            "rate" => nonzero(self.publish_rate),
            "publish_rate" => nonzero(self.publish_rate),
            "deliver_rate" => nonzero(self.deliver_rate),
            "cpu" => self.broker_cpu_us_per_msg,
            "p50" if self.latency.count > 0 => Some(self.latency.p50_us),
            "p99" if self.latency.count > 0 => Some(self.latency.p99_us),
            "p999" if self.latency.count > 0 => Some(self.latency.p999_us),
            "rss" => self.broker_rss_max_kib.map(|k| k as f64 / 1024.0),
            "recovery" => self.recovery_seconds,
            _ => None,
        }
    }
}

/// Declares the exchange and queues (deleting the queues first unless
/// `--no-reset`), so every run starts from empty queues.
async fn setup(args: &RunArgs, url: &AmqpUrl) -> Result<()> {
    let mut conn = Connection::open(url, "antre-bench setup").await?;
    conn.open_channel(1).await?;
    let durable = args.durable_queues();
    if !args.exchange.is_empty() {
        let m = ExchangeDeclare {
            exchange: args.exchange.clone(),
            kind: args.exchange_type.clone(),
            durable,
            ..Default::default()
        };
        conn.call(1, m.into()).await?;
    }
    for i in 0..args.queues {
        let queue = args.queue_name(i);
        if !args.no_reset {
            let m = QueueDelete {
                queue: queue.clone(),
                ..Default::default()
            };
            conn.call(1, m.into()).await?;
        }
        conn.declare_queue(1, &queue, durable, false, args.queue_type.as_deref())
            .await?;
        if !args.exchange.is_empty() {
            let m = QueueBind {
                queue: queue.clone(),
                exchange: args.exchange.clone(),
                routing_key: queue,
                ..Default::default()
            };
            conn.call(1, m.into()).await?;
        }
    }
    conn.close().await;
    Ok(())
}

async fn teardown(args: &RunArgs, url: &AmqpUrl) -> Result<()> {
    let mut conn = Connection::open(url, "antre-bench teardown").await?;
    conn.open_channel(1).await?;
    for i in 0..args.queues {
        let m = QueueDelete {
            queue: args.queue_name(i),
            ..Default::default()
        };
        conn.call(1, m.into()).await?;
    }
    if !args.exchange.is_empty() {
        let m = ExchangeDelete {
            exchange: args.exchange.clone(),
            ..Default::default()
        };
        conn.call(1, m.into()).await?;
    }
    conn.close().await;
    Ok(())
}

/// Which AMQP client library drives the producers and consumers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Client {
    /// The tool's own lean client ([`producer`], [`consumer`]).
    #[default]
    Builtin,
    /// The independent `lapin` crate ([`crate::lapin_driver`]).
    Lapin,
}

/// Runs the benchmark `args` describes with the built-in client.
pub async fn run(args: &RunArgs) -> Result<Report> {
    run_with(args, Client::Builtin).await
}

/// Runs the benchmark `args` describes, driving the broker with `client`
/// (declares, producers, consumers and deletes all go through it).
pub async fn run_with(args: &RunArgs, client: Client) -> Result<Report> {
    let url: AmqpUrl = args.uri.parse()?;
    if args.queues == 0 {
        bail!("--queues must be at least 1");
    }
    if args.size < 8 {
        bail!("--size must be at least 8: the body carries an 8-byte timestamp");
    }
    match client {
        Client::Builtin => setup(args, &url).await,
        Client::Lapin => lapin_driver::setup(args).await,
    }
    .context("declaring queues")?;

    let counters = Arc::new(Counters::default());
    let stop_producers = Arc::new(AtomicBool::new(false));
    let stop_consumers = Arc::new(AtomicBool::new(false));
    let consumers_ready = Arc::new(AtomicUsize::new(0));
    let mut consumer_tasks = Vec::new();
    for i in 0..args.consumers {
        let spec = ConsumerSpec {
            url: url.clone(),
            queue: args.queue_name(i % args.queues),
            prefetch: args.prefetch,
            ack_every: args.ack_every,
            auto_ack: args.auto_ack,
            arguments: Default::default(),
        };
        let (counters, stop, ready) = (
            counters.clone(),
            stop_consumers.clone(),
            consumers_ready.clone(),
        );
        let uri = args.uri.clone();
        consumer_tasks.push(tokio::spawn(async move {
            match client {
                Client::Builtin => consumer::run(spec, counters, stop, ready).await,
                Client::Lapin => lapin_driver::consume(uri, spec, counters, stop, ready).await,
            }
        }));
    }
    // Producers start once every consumer is subscribed, so that the first
    // seconds do not measure a backlog building up.
    let deadline = Instant::now() + Duration::from_secs(15);
    while consumers_ready.load(Ordering::Acquire) < args.consumers
        && Instant::now() < deadline
        && !consumer_tasks.iter().any(|t| t.is_finished())
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let cpu_before = procfs::cpu_time_of(&args.broker_pid)?;
    let tool_cpu_before = procfs::cpu_time_us(std::process::id()).unwrap_or(0);
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let mut producer_tasks = Vec::new();
    for i in 0..args.producers {
        let queue = args.queue_name(i % args.queues);
        let spec = ProducerSpec {
            url: url.clone(),
            exchange: args.exchange.clone(),
            routing_key: queue,
            size: args.size,
            persistent: args.persistent,
            confirm_window: args.confirm,
            rate: args.rate.map(|r| r / args.producers as f64),
            count: args.pmessages,
        };
        let (counters, stop) = (counters.clone(), stop_producers.clone());
        let uri = args.uri.clone();
        producer_tasks.push(tokio::spawn(async move {
            match client {
                Client::Builtin => producer::run(spec, counters, stop).await,
                Client::Lapin => lapin_driver::produce(uri, spec, counters, stop).await,
            }
        }));
    }

    let live = !args.quiet && (args.progress || std::io::stderr().is_terminal());
    let mut sampler = Sampler::new(args, counters.clone(), t0, live);
    let interval = Duration::from_secs_f64(args.interval.max(0.05));
    let publish_for = Duration::from_secs_f64(args.duration);
    let done_consuming = |c: &Counters| {
        args.cmessages
            .is_some_and(|n| c.delivered.load(Ordering::Relaxed) >= n)
    };
    // Phase 1: publish (or, without producers, consume) until time or count.
    loop {
        let until = (t0 + publish_for).min(sampler.next_at(interval));
        tokio::time::sleep_until(until.into()).await;
        sampler.maybe_sample(interval);
        let producers_done =
            !producer_tasks.is_empty() && producer_tasks.iter().all(|t| t.is_finished());
        let timed_out = args.pmessages.is_none() && t0.elapsed() >= publish_for;
        if producers_done || timed_out || done_consuming(&counters) {
            break;
        }
        if args.pmessages.is_some() && args.producers == 0 && t0.elapsed() >= publish_for {
            break;
        }
    }
    stop_producers.store(true, Ordering::Relaxed);
    // A producer held back by the broker's flow control finishes its current
    // write first; keep sampling meanwhile, so the chart has no hole.
    while !producer_tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        sampler.maybe_sample(interval);
    }
    let mut errors = Vec::new();
    for t in producer_tasks {
        match t.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => errors.push(format!("producer: {e:#}")),
            Err(e) => errors.push(format!("producer panicked: {e}")),
        }
    }
    let publish_seconds = t0.elapsed().as_secs_f64();

    // Phase 2: let consumers catch up with what was published.
    if args.consumers > 0 {
        let published = counters.published.load(Ordering::Relaxed);
        let expected = args
            .cmessages
            .unwrap_or(published * args.copies_per_message());
        let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
        while counters.delivered.load(Ordering::Relaxed) < expected
            && Instant::now() < drain_deadline
            && !consumer_tasks.iter().all(|t| t.is_finished())
        {
            tokio::time::sleep_until(sampler.next_at(interval).min(drain_deadline).into()).await;
            sampler.maybe_sample(interval);
        }
    }
    stop_consumers.store(true, Ordering::Relaxed);
    for t in consumer_tasks {
        match t.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => errors.push(format!("consumer: {e:#}")),
            Err(e) => errors.push(format!("consumer panicked: {e}")),
        }
    }
    let cpu_after = procfs::cpu_time_of(&args.broker_pid)?;
    let tool_cpu = procfs::cpu_time_us(std::process::id()).unwrap_or(0) - tool_cpu_before;
    sampler.sample_now();
    if !args.keep_queues {
        let deleted = match client {
            Client::Builtin => teardown(args, &url).await,
            Client::Lapin => lapin_driver::teardown(args).await,
        };
        if let Err(e) = deleted {
            errors.push(format!("deleting queues: {e:#}"));
        }
    }

    let (published, confirmed, delivered) = counters.totals();
    let last = counters.last_delivery_ns.load(Ordering::Relaxed);
    let deliver_seconds = if delivered > 0 {
        last.saturating_sub(t0_ns) as f64 / 1e9
    } else {
        0.0
    };
    let basis = if delivered > 0 { delivered } else { published };
    let per_msg = |us: u64| {
        if basis > 0 {
            us as f64 / basis as f64
        } else {
            0.0
        }
    };
    let broker_cpu = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let mut redacted = url.clone();
    redacted.password = "***".into();
    Ok(Report {
        label: args.label.clone(),
        broker: args.broker.clone(),
        headline: args
            .headline
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        target: format!("{}:{}{}", url.host, url.port, url.vhost),
        config: match client {
            Client::Builtin => format!("{args:?}"),
            Client::Lapin => format!("client: lapin, {args:?}"),
        }
        .replace(&url.password, "***"),
        publish_seconds,
        deliver_seconds,
        published,
        confirmed,
        nacked: counters.nacked.load(Ordering::Relaxed),
        delivered,
        publish_rate: rate(published, publish_seconds),
        deliver_rate: rate(delivered, deliver_seconds),
        latency: sampler.total.summary_us(),
        broker_cpu_seconds: broker_cpu.map(|us| us as f64 / 1e6),
        broker_cpu_us_per_msg: broker_cpu.map(per_msg),
        broker_rss_max_kib: sampler.rss_max,
        tool_cpu_us_per_msg: per_msg(tool_cpu),
        recovery_seconds: None,
        samples: sampler.samples,
        errors,
    })
}

/// Takes a [`Sample`] every interval and prints the live progress line.
struct Sampler {
    counters: Arc<Counters>,
    t0: Instant,
    last_at: Instant,
    last: (u64, u64, u64),
    total: Histogram,
    samples: Vec<Sample>,
    broker_pid: Vec<u32>,
    rss_max: Option<u64>,
    live: bool,
}

impl Sampler {
    fn new(args: &RunArgs, counters: Arc<Counters>, t0: Instant, live: bool) -> Sampler {
        Sampler {
            counters,
            t0,
            last_at: t0,
            last: (0, 0, 0),
            total: Histogram::default(),
            samples: Vec::new(),
            broker_pid: args.broker_pid.clone(),
            rss_max: None,
            live,
        }
    }

    fn next_at(&self, interval: Duration) -> Instant {
        self.last_at + interval
    }

    fn maybe_sample(&mut self, interval: Duration) {
        if self.last_at.elapsed() >= interval {
            self.sample_now();
        }
    }

    fn sample_now(&mut self) {
        let now = Instant::now();
        let secs = (now - self.last_at).as_secs_f64();
        if secs < 0.001 {
            return;
        }
        let totals = self.counters.totals();
        let [p, c, d] = interval_rates(self.last, totals, secs);
        let lat = self.counters.take_interval_latency();
        self.total.merge(&lat);
        let rss = procfs::rss_kib_of(&self.broker_pid);
        if let Some(r) = rss {
            self.rss_max = Some(self.rss_max.unwrap_or(0).max(r));
        }
        let sample = Sample {
            t: (now - self.t0).as_secs_f64(),
            publish_rate: p,
            confirm_rate: c,
            deliver_rate: d,
            p50_us: lat.quantile(0.5) as f64 / 1e3,
            p99_us: lat.quantile(0.99) as f64 / 1e3,
            broker_rss_kib: rss,
        };
        if self.live {
            let mut line = format!(
                "{:6.1}s  publish {:>8}/s  confirm {:>8}/s  deliver {:>8}/s  p50 {:>9.1}µs  p99 {:>9.1}µs",
                sample.t,
                human_rate(p),
                human_rate(c),
                human_rate(d),
                sample.p50_us,
                sample.p99_us
            );
            if let Some(r) = rss {
                line.push_str(&format!("  broker rss {} MiB", r / 1024));
            }
            eprintln!("{line}");
        }
        self.samples.push(sample);
        self.last = totals;
        self.last_at = now;
    }
}

/// Prints a human summary of `r` to stdout.
pub fn print_summary(r: &Report) {
    println!("{} on {} ({})", r.label, r.broker, r.target);
    println!(
        "  published {} in {:.2}s = {} msg/s (confirmed {}, nacked {})",
        r.published,
        r.publish_seconds,
        human_rate(r.publish_rate),
        r.confirmed,
        r.nacked
    );
    println!(
        "  delivered {} in {:.2}s = {} msg/s",
        r.delivered,
        r.deliver_seconds,
        human_rate(r.deliver_rate)
    );
    if r.latency.count > 0 {
        let l = &r.latency;
        println!(
            "  latency µs: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1}, {} samples)",
            l.p50_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.count
        );
    }
    if let (Some(s), Some(per)) = (r.broker_cpu_seconds, r.broker_cpu_us_per_msg) {
        println!("  broker CPU {s:.2}s = {per:.2} µs/msg");
    }
    if let Some(k) = r.broker_rss_max_kib {
        println!("  broker RSS max {} MiB", k / 1024);
    }
    println!("  tool CPU {:.2} µs/msg", r.tool_cpu_us_per_msg);
    for e in &r.errors {
        println!("  error: {e}");
    }
}
