//! The `antre` binary: runs the server (`antre`, `antre serve`) or talks to
//! a running one through its management API (`antre status`, `antre queues
//! list`, `antre publish`, ...).

use std::path::PathBuf;
use std::process::ExitCode;

use antre::cli::RemoteCommand;
use antre::config::{Settings, DEFAULT_CONFIG_FILE};
use clap::{Parser, Subcommand};

/// jemalloc, with background threads that return freed memory to the
/// operating system about a second after it was freed
/// (`.cargo/config.toml` sets the decay). With glibc's allocator, RSS
/// stayed at its peak after a large backlog was consumed or purged: freed
/// message buffers are spread over the heap, so it is never trimmed, and
/// the memory alarm, which reads RSS, would then never clear.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

// Parsed once at start-up: the variants' sizes cost nothing worth boxing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (the default when no command is given).
    Serve(ServeArgs),
    #[command(flatten)]
    Remote(RemoteCommand),
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// TOML file of settings [default: antre.toml, if it exists].
    #[arg(long, short = 'c', env = "ANTRE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

/// Runs, and prints a failure as its message chain: a user's mistake (a
/// port in use, a queue that does not exist) is not a crash, so no
/// backtrace, even with RUST_BACKTRACE set.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::Remote(command)) => {
            let mut out = std::io::stdout().lock();
            return antre::cli::run(command, &mut out);
        }
        None => cli.serve,
    };
    let file = match &args.config {
        Some(path) => Settings::from_file(path)?,
        None if std::path::Path::new(DEFAULT_CONFIG_FILE).exists() => {
            Settings::from_file(DEFAULT_CONFIG_FILE.as_ref())?
        }
        None => Settings::default(),
    };
    let settings = args.settings.over(file);
    init_logging(
        settings.log_json.unwrap_or(false),
        settings.log_level.as_deref().unwrap_or("info"),
    );
    let config = settings.to_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(config))
}

/// What a log filter that does not name openraft adds: its errors only,
/// and nothing of its replication tasks. At `info` openraft logs a dozen
/// lines for each election of each quorum queue (thousands of queues, tens
/// of thousands of lines at start-up), and a warning and an error each
/// time it retries a follower (every 100-300 ms while one is down or a
/// large message is on its way to it), which antre's own lines already
/// say once: a node's peer unreachable, a queue's leader changed. Name
/// openraft in the filter to see them (`info,openraft=info`).
const OPENRAFT_QUIET: &str = "openraft=error,openraft::replication=off";

/// The log filter antre runs with, given `RUST_LOG` (if set) and the
/// configured `log_level`.
fn log_filter(env: Option<&str>, level: &str) -> String {
    let filter = env.unwrap_or(level);
    if filter.contains("openraft") {
        filter.to_owned()
    } else {
        format!("{filter},{OPENRAFT_QUIET}")
    }
}

fn init_logging(json: bool, level: &str) {
    let env = std::env::var("RUST_LOG").ok();
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(env.as_deref(), level))
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log_filter(None, level)))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(None, "info")));
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

async fn serve(config: antre::Config) -> anyhow::Result<()> {
    let server = antre::start(config).await?;
    wait_for_stop(&server).await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM. Meanwhile SIGHUP reloads the TLS
/// certificates, the convention for daemons re-reading their files.
async fn wait_for_stop(server: &antre::RunningServer) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return Ok(r?),
            _ = term.recv() => return Ok(()),
            _ = hangup.recv() => match server.reload_tls() {
                Ok(()) if server.tls.is_none() && server.config().cluster_tls_files.is_none() => tracing::info!("SIGHUP: no TLS certificates to reload"),
                Ok(()) => {}
                Err(e) => tracing::error!("SIGHUP: cannot reload the TLS certificates, keeping the current ones: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openraft_is_quiet_unless_the_filter_names_it() {
        assert_eq!(
            log_filter(None, "info"),
            "info,openraft=error,openraft::replication=off"
        );
        // RUST_LOG wins over the configured level, and gets the same.
        assert_eq!(
            log_filter(Some("warn,antre=debug"), "info"),
            "warn,antre=debug,openraft=error,openraft::replication=off"
        );
        assert_eq!(
            log_filter(Some("info,openraft=info"), "info"),
            "info,openraft=info"
        );
        assert_eq!(log_filter(None, "openraft=debug"), "openraft=debug");
        for f in [log_filter(None, "info"), log_filter(None, "debug")] {
            assert!(tracing_subscriber::EnvFilter::try_new(&f).is_ok(), "{f}");
        }
    }
}
