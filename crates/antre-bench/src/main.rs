//! `antre-bench`: see the library's documentation, and `antre-bench --help`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use antre_bench::client::{AmqpUrl, Connection};
use antre_bench::run::{print_summary, Client, Report, RunArgs};
use antre_bench::stats::human_rate;
use antre_bench::{chart, compare, run, selftest};
use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

/// Load generator for AMQP 0-9-1 brokers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Runtime worker threads. 1 (the default) keeps the tool on one core,
    /// leaving the others to the broker.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run producers and consumers against a broker.
    Run(Box<RunArgs>),
    /// Run the same scenarios with the independent lapin client driving the
    /// broker instead of the built-in one (same options and reports as `run`).
    Lapin(Box<RunArgs>),
    /// Declare many queues (pipelined) while a bystander's publish+get round
    /// trips are timed: cost per thousand and what it does to others.
    Declare(Box<antre_bench::declare::DeclareArgs>),
    /// Reject every message of a quorum queue that dead-letters at least
    /// once into another, and time until the dead-letter queue holds them
    /// all.
    DeadLetter(Box<antre_bench::dead_letter::DeadLetterArgs>),
    /// Open many idle connections and report the broker's resident memory
    /// per connection.
    Idle(Box<antre_bench::idle::IdleArgs>),
    /// Publish to a stream with confirms, then read it from first with N
    /// consumers at once, over the stream protocol (rabbitmq-stream-client)
    /// or AMQP 0-9-1 (an x-queue-type stream queue).
    Stream(Box<antre_bench::stream::StreamArgs>),
    /// Measure the tool's own ceiling against an in-process fake broker.
    Selftest {
        /// Body sizes to try.
        #[arg(short = 's', long, value_delimiter = ',', default_value = "16,1024")]
        sizes: Vec<usize>,
        /// Seconds per case.
        #[arg(short = 'z', long, default_value_t = 5.0)]
        duration: f64,
        /// Also write the reports, as a JSON array.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Serve the fake broker on a port until killed (to point other tools at it).
    Sink {
        /// Body size of the deliveries it streams.
        #[arg(short = 's', long, default_value_t = 16)]
        size: usize,
    },
    /// Print a table comparing two brokers from a directory of JSON reports.
    Compare {
        /// Directory of reports written by `run --json`.
        dir: PathBuf,
        /// Baseline broker name.
        #[arg(long, default_value = "rabbitmq")]
        baseline: String,
        /// Challenger broker name.
        #[arg(long, default_value = "antre")]
        challenger: String,
    },
    /// Wait until a queue holds at least N messages (after a broker restart),
    /// and report how long that took.
    WaitCount {
        /// Broker URL.
        #[arg(
            short = 'u',
            long,
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
        )]
        uri: String,
        /// Queue to declare passively.
        #[arg(long)]
        queue: String,
        /// Message count to wait for.
        #[arg(long)]
        count: u32,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
        /// Seconds already elapsed before this command started (e.g. the
        /// broker's own start-up), added to the reported time.
        #[arg(long, default_value_t = 0.0)]
        offset: f64,
        /// Broker name in the report.
        #[arg(long, default_value = "broker")]
        broker: String,
        /// Scenario name in the report.
        #[arg(long, default_value = "restart")]
        label: String,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async_main(cli.command))
}

async fn async_main(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => finish_run(&args, Client::Builtin).await?,
        Command::Lapin(args) => finish_run(&args, Client::Lapin).await?,
        Command::Declare(args) => {
            let report = antre_bench::declare::run(&args).await?;
            antre_bench::declare::print(&report);
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
        }
        Command::DeadLetter(args) => {
            let report = antre_bench::dead_letter::run(&args).await?;
            antre_bench::dead_letter::print(&report);
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
        }
        Command::Idle(args) => {
            let report = antre_bench::idle::run(&args).await?;
            antre_bench::idle::print(&report);
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
        }
        Command::Stream(args) => {
            let r = antre_bench::stream::run(&args).await?;
            let cpu = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.2}"));
            println!(
                "| broker | protocol | messages | body | consumers | publish msg/s | consume msg/s | CPU µs/msg publish | CPU µs/msg consume |"
            );
            println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
            println!(
                "| {} | {} | {} | {} B | {} | {} | {} | {} | {} |",
                r.broker,
                match r.client {
                    Some(antre_bench::stream::StreamClient::Lean) =>
                        format!("{} (lean client)", r.protocol),
                    _ => r.protocol.to_string(),
                },
                r.messages,
                r.size,
                r.consumers,
                human_rate(r.publish_rate),
                human_rate(r.consume_rate),
                cpu(r.publish_cpu_us_per_msg),
                cpu(r.consume_cpu_us_per_msg)
            );
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_string_pretty(&r)?)?;
            }
        }
        Command::Selftest {
            sizes,
            duration,
            json,
        } => {
            let mut all = Vec::new();
            println!("| case | body | publish msg/s | deliver msg/s | tool CPU µs/msg |");
            println!("|---|---:|---:|---:|---:|");
            for size in sizes {
                for c in selftest::measure(size, duration).await? {
                    let r = &c.report;
                    println!(
                        "| {} | {size} B | {} | {} | {:.2} |",
                        c.case,
                        if r.published > 0 {
                            human_rate(r.publish_rate)
                        } else {
                            "—".into()
                        },
                        if r.delivered > 0 {
                            human_rate(r.deliver_rate)
                        } else {
                            "—".into()
                        },
                        r.tool_cpu_us_per_msg
                    );
                    for e in &r.errors {
                        println!("|   error: {e} | | | | |");
                    }
                    all.push(c.report);
                }
            }
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&all)?)?;
            }
        }
        Command::Sink { size } => {
            let server = antre_bench::fake::FakeServer::start(size)?;
            println!("fake broker listening on {}", server.url());
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        Command::Compare {
            dir,
            baseline,
            challenger,
        } => {
            let reports = compare::load_dir(&dir)?;
            print!("{}", compare::table(&reports, &baseline, &challenger));
        }
        Command::WaitCount {
            uri,
            queue,
            count,
            timeout,
            offset,
            broker,
            label,
            json,
        } => {
            let url: AmqpUrl = uri.parse()?;
            let started = Instant::now();
            let deadline = started + Duration::from_secs_f64(timeout);
            let mut last = String::from("never connected");
            let found = loop {
                if Instant::now() > deadline {
                    bail!("queue '{queue}' did not reach {count} messages in {timeout}s ({last})");
                }
                match passive_count(&url, &queue).await {
                    Ok(n) if n >= count => break n,
                    Ok(n) => last = format!("last count {n}"),
                    Err(e) => last = format!("{e:#}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let secs = started.elapsed().as_secs_f64() + offset;
            println!("queue '{queue}' reports {found} messages after {secs:.2}s");
            let report = Report {
                label,
                broker,
                headline: vec!["recovery".into()],
                target: format!("{}:{}{}", url.host, url.port, url.vhost),
                recovery_seconds: Some(secs),
                ..Default::default()
            };
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
        }
    }
    Ok(())
}

/// One run with `client`: summary on stdout, then `--json` and `--chart`.
async fn finish_run(args: &RunArgs, client: Client) -> Result<()> {
    let report = run::run_with(args, client).await?;
    print_summary(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &args.chart {
        chart::write(path, &report)?;
    }
    if !report.errors.is_empty() {
        bail!("{} task(s) failed", report.errors.len());
    }
    Ok(())
}

async fn passive_count(url: &AmqpUrl, queue: &str) -> Result<u32> {
    let mut conn = Connection::open(url, "antre-bench wait-count").await?;
    conn.open_channel(1).await?;
    let (n, _) = conn.declare_queue(1, queue, true, true, None).await?;
    conn.close().await;
    Ok(n)
}
