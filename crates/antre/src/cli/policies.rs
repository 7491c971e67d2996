//! `antre policies` and `antre operator-policies`: list, set and clear
//! policies in a vhost, like `rabbitmqctl set_policy`, `clear_policy`,
//! `set_operator_policy`, through the management API.

use std::io::Write;

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::Client;
use super::listing::list;
use super::{done, vhost_path, Remote};
use crate::http::render::percent_encode;

/// `antre policies ...` and `antre operator-policies ...` (in `--vhost`,
/// default `/`).
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// List them, in every vhost the user sees, by priority.
    List(Remote),
    /// Set one (replacing one of the same name): it applies at once to the
    /// matching queues and exchanges.
    Set {
        /// Policy name.
        name: String,
        /// Regular expression the names of queues or exchanges must match
        /// (anywhere in the name; anchor it with ^ and $).
        pattern: String,
        /// The settings, as JSON, e.g. '{"max-length": 1000,
        /// "dead-letter-exchange": "dlx"}'.
        definition: String,
        /// The highest priority among matching policies wins.
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// What it applies to: all, queues, exchanges, classic_queues,
        /// quorum_queues, streams.
        #[arg(long, default_value = "all")]
        apply_to: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Clear one: what it set is undone at once.
    Clear {
        /// Policy name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Runs `antre policies ...` (`operator` false) or `antre
/// operator-policies ...`.
pub fn policies(cmd: PolicyCommand, operator: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let (base, what) = if operator {
        ("/api/operator-policies", "operator policy")
    } else {
        ("/api/policies", "policy")
    };
    let one = |remote: &Remote, name: &str| {
        format!("{base}/{}/{}", vhost_path(remote), percent_encode(name))
    };
    match cmd {
        PolicyCommand::List(r) => {
            let columns = [
                ("vhost", "/vhost"),
                ("name", "/name"),
                ("pattern", "/pattern"),
                ("apply-to", "/apply-to"),
                ("definition", "/definition"),
                ("priority", "/priority"),
            ];
            list(&r, base, &columns, out)
        }
        PolicyCommand::Set {
            name,
            pattern,
            definition,
            priority,
            apply_to,
            remote,
        } => {
            let definition: Value = serde_json::from_str(&definition).map_err(|e| {
                anyhow::anyhow!(
                    "the definition is not JSON ({e}): give e.g. '{{\"max-length\": 10}}'"
                )
            })?;
            let body = json!({
                "pattern": pattern,
                "definition": definition,
                "priority": priority,
                "apply-to": apply_to,
            });
            Client::new(&remote).send("PUT", &one(&remote, &name), Some(body))?;
            let done_what = format!("{what} '{name}' set in vhost '{}'", remote.vhost);
            done(&remote, out, done_what)
        }
        PolicyCommand::Clear { name, remote } => {
            Client::new(&remote).send("DELETE", &one(&remote, &name), None)?;
            let done_what = format!("{what} '{name}' cleared in vhost '{}'", remote.vhost);
            done(&remote, out, done_what)
        }
    }
}
