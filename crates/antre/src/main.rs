//! The `antre` binary: parses the command line and runs the server.

use std::path::PathBuf;

use antre::Config;
use clap::{Parser, Subcommand};

/// antre: an AMQP 0-9-1 message broker.
#[derive(Debug, Parser)]
#[command(version, about)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no command, `antre` serves with these settings.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (the default when no command is given).
    Serve(ServeArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// Address for AMQP clients; port 0 picks a free port.
    #[arg(long, env = "ANTRE_AMQP_LISTEN", default_value = "127.0.0.1:5672")]
    amqp_listen: String,
    /// Directory for messages and definitions.
    #[arg(long, env = "ANTRE_DATA_DIR", default_value = "antre-data")]
    data_dir: PathBuf,
    /// Block publishers while the data directory's file system has less free
    /// space than this many bytes.
    #[arg(long, env = "ANTRE_DISK_FREE_LIMIT", default_value_t = 50_000_000)]
    disk_free_limit: u64,
    /// Bytes of message bodies each queue keeps in memory; past this,
    /// persistent messages stay on disk until delivered.
    #[arg(long, env = "ANTRE_QUEUE_MEMORY_LIMIT", default_value_t = 64 * 1024 * 1024)]
    queue_memory_limit: u64,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "ANTRE_LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    init_logging(args.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config {
        amqp_listen: args.amqp_listen,
        data_dir: args.data_dir,
        disk_free_limit: args.disk_free_limit,
        queue_memory_limit: args.queue_memory_limit,
        ..Config::default()
    };
    let server = antre::start(config).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
