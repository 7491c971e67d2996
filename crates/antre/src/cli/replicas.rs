//! `antre queues quorum-status|add-member|delete-member|grow|shrink|rebalance`:
//! replica status and management of quorum queues in a cluster, as
//! `rabbitmq-queues` does it,
//! through the management API (docs/clustering.md#replica-management).

use std::io::Write;

use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::client::Client;
use super::table::Table;
use super::{done, print_json, text, vhost_path, Format, Remote};
use crate::http::render::percent_encode;

/// `antre queues ...`.
#[derive(Debug, Subcommand)]
pub enum QueuesVerb {
    /// List them (the same as giving no verb).
    List(Remote),
    /// Each member of quorum queue (or stream) QUEUE (in --vhost) with its
    /// Raft state, term and log indexes, as `rabbitmq-queues
    /// quorum_status` shows them.
    QuorumStatus {
        /// The quorum queue or stream.
        queue: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Fail (exit 1, listing them) if stopping the node behind --url
    /// would leave a quorum queue, stream or the metadata group without a
    /// majority up (`rabbitmq-queues check_if_node_is_quorum_critical`).
    CheckQuorumCritical(Remote),
    /// Wait until stopping the node behind --url leaves every quorum
    /// queue, stream and the metadata group a majority up, or fail after
    /// --timeout (`rabbitmq-upgrade await_online_quorum_plus_one`): what
    /// a rolling restart runs before it stops each node.
    AwaitOnlineQuorumPlusOne {
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Add a member on NODE to quorum queue QUEUE (in --vhost); answers
    /// once it has caught up and votes.
    AddMember {
        /// The quorum queue.
        queue: String,
        /// The node to add a member on.
        node: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove the member on NODE from quorum queue QUEUE (in --vhost);
    /// its replica and data there are deleted.
    DeleteMember {
        /// The quorum queue.
        queue: String,
        /// The node whose member goes.
        node: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Add a member on NODE to every quorum queue (of every vhost) it is
    /// not a member of: `all` of them, or those with an `even` number of
    /// members.
    Grow {
        /// The node (typically one that just joined).
        node: String,
        /// Which queues.
        #[arg(value_enum, default_value_t = GrowWhich::All)]
        which: GrowWhich,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove the member on NODE from every quorum queue (of every vhost)
    /// where it is not the last one (typically before retiring the node).
    Shrink {
        /// The node.
        node: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Move quorum queue leaders so each node leads about as many as the
    /// others; prints the leaders per node before and after.
    Rebalance {
        /// Only queues whose name matches this regular expression.
        #[arg(long)]
        pattern: Option<String>,
        /// Every vhost's queues (else --vhost's).
        #[arg(long)]
        all_vhosts: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// The queues `grow` adds a member to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GrowWhich {
    /// Every quorum queue.
    All,
    /// Those with an even number of members.
    Even,
}

/// Runs one of the verbs other than `list`.
pub fn run(verb: QueuesVerb, out: &mut dyn Write) -> anyhow::Result<()> {
    match verb {
        QueuesVerb::List(r) => super::listing::queues(&r, out),
        QueuesVerb::CheckQuorumCritical(remote) => {
            let (code, answer) = Client::new(&remote).get_status(QUORUM_CRITICAL)?;
            quorum_critical(&remote, code, &answer, out)
        }
        QueuesVerb::AwaitOnlineQuorumPlusOne { timeout, remote } => {
            let client = Client::new(&remote);
            let deadline =
                std::time::Instant::now() + std::time::Duration::from_secs_f64(timeout.max(0.0));
            loop {
                let (code, answer) = client.get_status(QUORUM_CRITICAL)?;
                if code == 200 || std::time::Instant::now() >= deadline {
                    return quorum_critical(&remote, code, &answer, out);
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        QueuesVerb::QuorumStatus { queue, remote } => {
            let path = format!(
                "/api/queues/{}/{}/members",
                vhost_path(&remote),
                percent_encode(&queue)
            );
            let answer = Client::new(&remote).get(&path)?;
            quorum_status(&remote, &answer, out)
        }
        QueuesVerb::AddMember {
            queue,
            node,
            remote,
        } => {
            Client::new(&remote).send("POST", &member_path(&remote, &queue, &node), None)?;
            done(&remote, out, format!("{node} is a member of {queue}"))
        }
        QueuesVerb::DeleteMember {
            queue,
            node,
            remote,
        } => {
            Client::new(&remote).send("DELETE", &member_path(&remote, &queue, &node), None)?;
            done(
                &remote,
                out,
                format!("{node} is no longer a member of {queue}"),
            )
        }
        QueuesVerb::Grow {
            node,
            which,
            remote,
        } => {
            let strategy = match which {
                GrowWhich::All => "all",
                GrowWhich::Even => "even",
            };
            let path = format!(
                "/api/cluster/queues/grow/{}?strategy={strategy}",
                percent_encode(&node)
            );
            let answer = Client::new(&remote).send("POST", &path, None)?;
            changes(&remote, &answer, out)
        }
        QueuesVerb::Shrink { node, remote } => {
            let path = format!("/api/cluster/queues/shrink/{}", percent_encode(&node));
            let answer = Client::new(&remote).send("POST", &path, None)?;
            changes(&remote, &answer, out)
        }
        QueuesVerb::Rebalance {
            pattern,
            all_vhosts,
            remote,
        } => {
            let mut body = json!({});
            if !all_vhosts {
                body["vhost"] = json!(remote.vhost);
            }
            if let Some(p) = pattern {
                body["pattern"] = json!(p);
            }
            let answer = Client::new(&remote).send("POST", "/api/rebalance/queues", Some(body))?;
            rebalanced(&remote, &answer, out)
        }
    }
}

fn member_path(r: &Remote, queue: &str, node: &str) -> String {
    format!(
        "/api/queues/{}/{}/members/{}",
        vhost_path(r),
        percent_encode(queue),
        percent_encode(node)
    )
}

/// Said after a drain or a revive that the metadata did not record in
/// time (no metadata leader, or feature flag `maintenance_mode_status`
/// not enabled yet): until it does, the other nodes place new queues as
/// before.
pub const NOT_RECORDED: &str =
    "\n(the cluster has not recorded it yet: the node keeps proposing it, once \
     feature flag maintenance_mode_status is enabled (antre cluster feature-flags); \
     until then other nodes place new queues as before)";

/// `antre cluster drain`: the connections closed and each leadership
/// moved; fails if one did not move.
pub fn drain(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let answer = Client::new(r).send("POST", "/api/maintenance/drain", None)?;
    if r.format != Format::Json {
        writeln!(
            out,
            "drained: {} client connection(s) closed; new clients are refused{}",
            text(&answer["connections_closed"]),
            if answer["recorded"] == json!(false) {
                NOT_RECORDED
            } else {
                ""
            }
        )?;
    }
    let moves = &answer["leaders"];
    let stuck = per_queue(r, moves, ("leader now", "to"), "moved", out)?;
    if r.format == Format::Json {
        print_json(out, &answer)?;
    }
    if stuck > 0 {
        anyhow::bail!("{stuck} leadership(s) not moved");
    }
    Ok(())
}

/// Prints one row per queue of `rows` (each with `vhost`, `name`, `ok`,
/// `error` and the `column` asked for) unless the output is JSON; returns
/// how many did not go well.
fn per_queue(
    r: &Remote,
    rows: &Value,
    (title, key): (&str, &str),
    ok: &str,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
    if r.format != Format::Json {
        let mut table = Table::new(vec!["vhost", "queue", title, "result"]);
        for c in rows {
            let result = if c["ok"] == json!(true) {
                ok.to_owned()
            } else {
                text(&c["error"])
            };
            table.row(vec![
                text(&c["vhost"]),
                text(&c["name"]),
                text(&c[key]),
                result,
            ]);
        }
        write!(out, "{table}")?;
    }
    Ok(rows.iter().filter(|c| c["ok"] != json!(true)).count())
}

const QUORUM_CRITICAL: &str = "/api/health/checks/node-is-quorum-critical";

/// Prints the health check's answer: ok, or what would lose its quorum,
/// and then fails.
fn quorum_critical(
    r: &Remote,
    code: u16,
    answer: &Value,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if r.format == Format::Json {
        print_json(out, answer)?;
    } else if code == 200 {
        writeln!(
            out,
            "no quorum queue, stream or the metadata group depends on this node for its quorum"
        )?;
    } else {
        let mut table = Table::new(vec!["type", "vhost", "name"]);
        for q in answer["queues"].as_array().into_iter().flatten() {
            table.row(vec![
                text(&q["type"]),
                text(&q["virtual_host"]),
                text(&q["name"]),
            ]);
        }
        write!(out, "{table}")?;
    }
    if code != 200 {
        anyhow::bail!("{}", text(&answer["reason"]));
    }
    Ok(())
}

/// One row per member, the columns of `rabbitmq-queues quorum_status`
/// and the commit latency.
fn quorum_status(r: &Remote, answer: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    if r.format == Format::Json {
        return print_json(out, answer);
    }
    let columns = [
        ("node", "node"),
        ("raft state", "raft_state"),
        ("term", "term"),
        ("log index", "last_log_index"),
        ("written", "last_written_index"),
        ("commit index", "commit_index"),
        ("applied", "last_applied_index"),
        ("snapshot index", "snapshot_index"),
    ];
    let mut header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    header.push("commit latency");
    let mut table = Table::new(header);
    for m in answer.as_array().into_iter().flatten() {
        let mut row: Vec<String> = columns.iter().map(|(_, k)| text(&m[*k])).collect();
        row.push(
            m["commit_latency_ms"]
                .as_f64()
                .map_or_else(String::new, |ms| format!("{ms:.2} ms")),
        );
        table.row(row);
    }
    write!(out, "{table}")?;
    Ok(())
}

/// Each queue a grow or shrink touched, and how it went; fails if any
/// failed (after printing them all).
fn changes(r: &Remote, answer: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    if r.format == Format::Json {
        print_json(out, answer)?;
    }
    let failed = per_queue(r, answer, ("members", "members"), "ok", out)?;
    if failed > 0 {
        anyhow::bail!("{failed} queue(s) not changed");
    }
    Ok(())
}

/// Leaders per node before and after, as `rabbitmq-queues rebalance`
/// prints them, then the moves that failed.
fn rebalanced(r: &Remote, answer: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    if r.format == Format::Json {
        return print_json(out, answer);
    }
    let count = |side: &str, node: &Value| {
        answer[side]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["node"] == *node)
            .map_or_else(|| "0".to_owned(), |c| text(&c["leaders"]))
    };
    let mut table = Table::new(vec!["node", "leaders before", "leaders after"]);
    for c in answer["after"].as_array().into_iter().flatten() {
        let node = &c["node"];
        table.row(vec![
            text(node),
            count("before", node),
            count("after", node),
        ]);
    }
    write!(out, "{table}")?;
    for m in answer["moves"].as_array().into_iter().flatten() {
        if m["ok"] != json!(true) {
            writeln!(
                out,
                "{} in {}: not moved from {} to {}: {}",
                text(&m["name"]),
                text(&m["vhost"]),
                text(&m["from"]),
                text(&m["to"]),
                text(&m["error"])
            )?;
        }
    }
    Ok(())
}
