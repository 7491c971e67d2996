//! `antre check ...`: the node's health checks from a shell, as
//! `rabbitmq-diagnostics check_port_listener 5672` and its siblings are
//! used in container health checks, Kubernetes exec probes and scripts
//! before a restart. Each asks one of the management API's
//! `/api/health/checks/...`, prints what it found, and exits non-zero
//! when the check fails (the API answered 503), so a probe needs nothing
//! but the exit status.

use std::io::Write;

use clap::Subcommand;
use serde_json::Value;

use super::client::Client;
use super::table::Table;
use super::{print_json, text, vhost_path, Format, Remote};
use crate::http::render::percent_encode;

/// One health check (`antre check ...`).
#[derive(Debug, Subcommand)]
pub enum Check {
    /// No memory or disk alarm in effect anywhere in the cluster.
    Alarms(Remote),
    /// No memory or disk alarm in effect on this node.
    LocalAlarms(Remote),
    /// A listener of this node is on the port.
    PortListener {
        /// The TCP port.
        port: u16,
        #[command(flatten)]
        remote: Remote,
    },
    /// This node listens for each protocol (amqp, amqp/ssl, http, https,
    /// stream, clustering, or RabbitMQ's aliases), comma-separated.
    ProtocolListener {
        /// One protocol, or several comma-separated.
        protocols: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// No certificate of a TLS listener expires within the time given.
    CertificateExpiration {
        /// How many units ahead.
        #[arg(long, default_value_t = 4)]
        within: u32,
        /// days, weeks, months or years.
        #[arg(long, default_value = "weeks")]
        unit: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every vhost runs.
    VirtualHosts(Remote),
    /// The node serves clients (it is not drained).
    IsInService(Remote),
    /// The node's AMQP connections are below max_connections.
    BelowNodeConnectionLimit(Remote),
    /// The node serves, listens for AMQP and takes another connection.
    ReadyToServeClients(Remote),
    /// Stopping this node would leave no quorum queue, stream or the
    /// metadata group without a majority (`queues check-quorum-critical`).
    NodeIsQuorumCritical(Remote),
    /// Every quorum queue (of --vhost, or of every vhost with
    /// --all-vhosts) has an elected leader.
    QuorumQueuesWithoutElectedLeaders {
        /// Every vhost rather than --vhost.
        #[arg(long)]
        all_vhosts: bool,
        /// Only queues whose name matches this regular expression.
        #[arg(long)]
        pattern: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

impl Check {
    /// The broker asked and how to print.
    fn remote(&self) -> &Remote {
        match self {
            Check::Alarms(r)
            | Check::LocalAlarms(r)
            | Check::VirtualHosts(r)
            | Check::IsInService(r)
            | Check::BelowNodeConnectionLimit(r)
            | Check::ReadyToServeClients(r)
            | Check::NodeIsQuorumCritical(r) => r,
            Check::PortListener { remote, .. }
            | Check::ProtocolListener { remote, .. }
            | Check::CertificateExpiration { remote, .. }
            | Check::QuorumQueuesWithoutElectedLeaders { remote, .. } => remote,
        }
    }

    /// The API path that answers it.
    fn path(&self) -> String {
        let base = "/api/health/checks";
        match self {
            Check::Alarms(_) => format!("{base}/alarms"),
            Check::LocalAlarms(_) => format!("{base}/local-alarms"),
            Check::PortListener { port, .. } => format!("{base}/port-listener/{port}"),
            Check::ProtocolListener { protocols, .. } => {
                format!("{base}/protocol-listener/{}", percent_encode(protocols))
            }
            Check::CertificateExpiration { within, unit, .. } => {
                format!(
                    "{base}/certificate-expiration/{within}/{}",
                    percent_encode(unit)
                )
            }
            Check::VirtualHosts(_) => format!("{base}/virtual-hosts"),
            Check::IsInService(_) => format!("{base}/is-in-service"),
            Check::BelowNodeConnectionLimit(_) => format!("{base}/below-node-connection-limit"),
            Check::ReadyToServeClients(_) => format!("{base}/ready-to-serve-clients"),
            Check::NodeIsQuorumCritical(_) => format!("{base}/node-is-quorum-critical"),
            Check::QuorumQueuesWithoutElectedLeaders {
                all_vhosts,
                pattern,
                remote,
            } => {
                let scope = if *all_vhosts {
                    "all-vhosts/".to_owned()
                } else {
                    format!("vhost/{}/", vhost_path(remote))
                };
                let pattern = pattern
                    .as_deref()
                    .map(|p| format!("pattern/{}", percent_encode(p)))
                    .unwrap_or_default();
                format!("{base}/quorum-queues-without-elected-leaders/{scope}{pattern}")
            }
        }
    }
}

/// Runs `antre check ...`: prints the answer and fails unless it is 200.
pub fn run(check: Check, out: &mut dyn Write) -> anyhow::Result<()> {
    let remote = check.remote();
    let (code, answer) = Client::new(remote).get_status(&check.path())?;
    if remote.format == Format::Json {
        print_json(out, &answer)?;
    } else if code == 200 {
        writeln!(out, "ok")?;
    } else {
        describe(&answer, out)?;
    }
    match code {
        200 => Ok(()),
        _ if answer["reason"].is_string() => anyhow::bail!("{}", text(&answer["reason"])),
        _ => anyhow::bail!("the check answered {code}"),
    }
}

/// What a failed check found, beyond its reason (which the error prints):
/// what is missing, the queues or the certificates.
fn describe(answer: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(missing) = answer.get("missing") {
        let missing = match missing {
            Value::Array(all) => all.iter().map(text).collect::<Vec<_>>().join(", "),
            one => text(one),
        };
        writeln!(out, "missing: {missing}")?;
        for key in ["ports", "protocols"] {
            if let Some(Value::Array(have)) = answer.get(key) {
                let have: Vec<String> = have.iter().map(text).collect();
                writeln!(out, "listening: {}", have.join(", "))?;
            }
        }
    }
    if let Some(Value::Array(queues)) = answer.get("queues") {
        let mut table = Table::new(vec!["type", "vhost", "name"]);
        for q in queues {
            table.row(vec![
                text(&q["type"]),
                text(&q["virtual_host"]),
                text(&q["name"]),
            ]);
        }
        write!(out, "{table}")?;
    }
    if let Some(Value::Array(listeners)) = answer.get("expired") {
        let mut table = Table::new(vec!["protocol", "port", "file", "expires"]);
        for l in listeners {
            for (file, ends) in [
                ("certfile", "certfile_expires_on"),
                ("cacertfile", "cacertfile_expires_on"),
            ] {
                for end in l[ends].as_array().into_iter().flatten() {
                    table.row(vec![
                        text(&l["protocol"]),
                        text(&l["port"]),
                        text(&l[file]),
                        text(end),
                    ]);
                }
            }
        }
        write!(out, "{table}")?;
    }
    if let Some(Value::Array(alarms)) = answer.get("alarms") {
        for a in alarms {
            writeln!(
                out,
                "alarm: {} on {}",
                text(&a["resource"]),
                text(&a["node"])
            )?;
        }
    }
    Ok(())
}
