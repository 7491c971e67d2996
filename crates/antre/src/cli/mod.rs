//! `antre status`, `antre queues`, `antre publish`, ...: commands that talk
//! to a running broker through its management API (as RabbitMQ's
//! rabbitmqadmin does), printing tables for people or JSON for scripts.
//!
//! - [`client`]: the HTTP client (basic auth, JSON errors as messages);
//! - [`table`]: aligned text tables and human-readable sizes;
//! - [`listing`]: `status` and the object listings;
//! - [`topology`]: declaring and deleting queues, exchanges and bindings,
//!   closing connections, definitions;
//! - [`messages`]: `publish` and `consume`;
//! - [`access`]: `users`, `permissions` and `vhosts`;
//! - [`policies`]: `policies` and `operator-policies`;
//! - [`checks`]: `check`, the health checks probes and scripts ask.

pub mod access;
pub mod checks;
pub mod client;
pub mod listing;
pub mod messages;
pub mod policies;
pub mod replicas;
pub mod table;
pub mod topology;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::http::render::percent_encode;

/// Where the broker is and how to print.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Base URL of the broker's HTTP listener.
    #[arg(long, env = "ANTRE_URL", default_value = "http://127.0.0.1:15672")]
    pub url: String,
    /// User name.
    #[arg(long, short = 'u', env = "ANTRE_USER", default_value = "guest")]
    pub user: String,
    /// Password.
    #[arg(long, short = 'p', env = "ANTRE_PASSWORD", default_value = "guest")]
    pub password: String,
    /// Virtual host.
    #[arg(long, env = "ANTRE_VHOST", default_value = "/")]
    pub vhost: String,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns, for people.
    Table,
    /// The API's JSON, for scripts.
    Json,
}

/// The commands that talk to a running broker.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Show the broker's state: version, listeners, totals, rates, alarms.
    Status(Remote),
    /// List queues; show and manage quorum queues' members and leaders
    /// in a cluster (quorum-status, add-member, delete-member, grow,
    /// shrink, rebalance); check a node before a rolling restart
    /// (check-quorum-critical, await-online-quorum-plus-one).
    Queues(QueuesArgs),
    /// List exchanges.
    Exchanges(Listing),
    /// List bindings.
    Bindings(Listing),
    /// List connections.
    Connections(Listing),
    /// List channels.
    Channels(Listing),
    /// List consumers.
    Consumers(Listing),
    /// Declare, purge or delete one queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Declare or delete one exchange.
    #[command(subcommand)]
    Exchange(ExchangeCommand),
    /// Bind a queue or exchange to an exchange.
    Bind(BindArgs),
    /// Remove a binding.
    Unbind(BindArgs),
    /// Close one connection.
    #[command(subcommand)]
    Connection(ConnectionCommand),
    /// Publish a message to an exchange.
    Publish(PublishArgs),
    /// Take messages from a queue (acknowledging them unless --requeue).
    Consume(ConsumeArgs),
    /// Export or import durable definitions.
    #[command(subcommand)]
    Definitions(DefinitionsCommand),
    /// List, add and delete users; set their tags and passwords.
    #[command(subcommand)]
    Users(access::UsersCommand),
    /// List, set and clear users' permissions in a vhost.
    #[command(subcommand)]
    Permissions(access::PermissionsCommand),
    /// List, add and delete vhosts.
    #[command(subcommand)]
    Vhosts(access::VhostsCommand),
    /// List, set and clear policies in a vhost.
    #[command(subcommand)]
    Policies(policies::PolicyCommand),
    /// List, set and clear operator policies (caps on what policies and
    /// queue arguments may ask for).
    #[command(subcommand)]
    OperatorPolicies(policies::PolicyCommand),
    /// Show the cluster this node belongs to; add and remove members.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run one health check (port-listener 5672, protocol-listener amqp,
    /// certificate-expiration, ready-to-serve-clients, alarms, ...): exits
    /// non-zero when it fails, for container and Kubernetes probes.
    #[command(subcommand)]
    Check(checks::Check),
}

/// `antre cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, which one leads the metadata group, and which are
    /// reachable from the node behind --url (and if not, why).
    Status(Remote),
    /// Add a node to the cluster of the node behind --url (start the new
    /// node with --cluster-join, which also asks by itself).
    Join {
        /// The new node's name.
        node: String,
        /// Its cluster listener, HOST:PORT.
        address: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove the node behind --url from its cluster (stop it afterwards).
    Leave(Remote),
    /// Remove a node (typically dead and not coming back) from the cluster
    /// of the node behind --url.
    Forget {
        /// The node to remove.
        node: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Put the node behind --url in maintenance mode before stopping it
    /// (`rabbitmq-upgrade drain`): it closes its clients' connections and
    /// takes no new ones, and hands every quorum queue and stream it leads
    /// to another member.
    Drain(Remote),
    /// End the maintenance mode of the node behind --url
    /// (`rabbitmq-upgrade revive`).
    Revive(Remote),
    /// The feature flags (`rabbitmqctl list_feature_flags`): which the
    /// cluster enabled, and which member holds back each one it did not.
    FeatureFlags(Remote),
    /// The cluster's name; with NAME, names it (`rabbitmqctl
    /// set_cluster_name`): on every node, kept across restarts, over the
    /// `cluster_name` setting. A single node is a cluster of one.
    Name {
        /// The new name.
        name: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `antre queues [list]` and the other listings.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Listing {
    #[command(subcommand)]
    verb: Option<ListOnly>,
    #[command(flatten)]
    remote: Remote,
}

impl Listing {
    /// Where the broker is, whichever form was used.
    pub fn remote(self) -> Remote {
        match self.verb {
            Some(ListOnly::List(r)) => r,
            None => self.remote,
        }
    }
}

/// `antre queues [list|add-member|...]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct QueuesArgs {
    #[command(subcommand)]
    verb: Option<replicas::QueuesVerb>,
    #[command(flatten)]
    remote: Remote,
}

/// `... list`.
#[derive(Debug, Subcommand)]
pub enum ListOnly {
    /// List them (the same as giving no verb).
    List(Remote),
}

/// Arguments of a queue or exchange, with shortcuts for the common ones.
#[derive(Debug, Clone, Default, Args)]
pub struct ArgumentArgs {
    /// An argument, as NAME=VALUE (repeatable); VALUE is a number, true,
    /// false or a string, e.g. x-max-length=1000.
    #[arg(long = "argument", short = 'a', value_name = "NAME=VALUE")]
    pub arguments: Vec<String>,
}

/// Queue argument shortcuts.
#[derive(Debug, Clone, Default, Args)]
pub struct QueueArgumentShortcuts {
    /// Dead-letter exchange (x-dead-letter-exchange).
    #[arg(long, value_name = "EXCHANGE")]
    pub dlx: Option<String>,
    /// Dead-letter routing key (x-dead-letter-routing-key).
    #[arg(long, value_name = "KEY")]
    pub dlk: Option<String>,
    /// Message time to live in ms (x-message-ttl).
    #[arg(long, value_name = "MS")]
    pub ttl: Option<u64>,
    /// Delete the queue after this many ms unused (x-expires).
    #[arg(long, value_name = "MS")]
    pub expires: Option<u64>,
    /// Most ready messages (x-max-length).
    #[arg(long, value_name = "N")]
    pub max_length: Option<u64>,
    /// Most ready body bytes (x-max-length-bytes).
    #[arg(long, value_name = "BYTES")]
    pub max_length_bytes: Option<u64>,
    /// What a full queue does: drop-head, reject-publish or
    /// reject-publish-dlx (x-overflow).
    #[arg(long, value_name = "BEHAVIOUR")]
    pub overflow: Option<String>,
    /// Highest priority, 1..=255 (x-max-priority).
    #[arg(long, value_name = "N")]
    pub max_priority: Option<u8>,
    /// Deliveries a message gets before it is dead-lettered (x-delivery-limit).
    #[arg(long, value_name = "N")]
    pub delivery_limit: Option<u64>,
    /// One consumer at a time (x-single-active-consumer).
    #[arg(long)]
    pub single_active_consumer: bool,
}

/// `antre queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Declare a queue (durable unless --transient).
    Declare {
        /// Queue name.
        name: String,
        /// Not durable.
        #[arg(long)]
        transient: bool,
        /// Deleted when its last consumer goes.
        #[arg(long)]
        auto_delete: bool,
        #[command(flatten)]
        arguments: ArgumentArgs,
        #[command(flatten)]
        shortcuts: QueueArgumentShortcuts,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove every ready message.
    Purge {
        /// Queue name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a queue and its messages.
    Delete {
        /// Queue name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `antre exchange ...`.
#[derive(Debug, Subcommand)]
pub enum ExchangeCommand {
    /// Declare an exchange (durable unless --transient).
    Declare {
        /// Exchange name.
        name: String,
        /// direct, fanout, topic or headers.
        #[arg(long = "type", short = 't', default_value = "direct")]
        kind: String,
        /// Not durable.
        #[arg(long)]
        transient: bool,
        /// Deleted when its last binding goes.
        #[arg(long)]
        auto_delete: bool,
        /// Clients cannot publish to it, only other exchanges.
        #[arg(long)]
        internal: bool,
        #[command(flatten)]
        arguments: ArgumentArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete an exchange and its bindings.
    Delete {
        /// Exchange name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `antre bind` and `antre unbind`.
#[derive(Debug, Args)]
pub struct BindArgs {
    /// The exchange messages come from.
    #[arg(long, short = 's')]
    pub source: String,
    /// The queue (or, with --to-exchange, exchange) they go to.
    #[arg(long, short = 'd')]
    pub destination: String,
    /// The destination is an exchange, not a queue.
    #[arg(long)]
    pub to_exchange: bool,
    /// Routing key (a pattern for topic exchanges).
    #[arg(long, short = 'k', default_value = "")]
    pub routing_key: String,
    #[command(flatten)]
    pub arguments: ArgumentArgs,
    #[command(flatten)]
    pub remote: Remote,
}

/// `antre connection ...`.
#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// Close a connection (its client gets 320 CONNECTION_FORCED).
    Close {
        /// Connection name, as `antre connections` lists it.
        name: String,
        /// The reason the client is given.
        #[arg(long, default_value = "Closed via the antre CLI")]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `antre publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Exchange ("" or amq.default: the default exchange).
    #[arg(long, short = 'e', default_value = "")]
    pub exchange: String,
    /// Routing key (for the default exchange: the queue name).
    #[arg(long, short = 'k', default_value = "")]
    pub routing_key: String,
    /// Message body; read from standard input when absent.
    #[arg(long, short = 'b')]
    pub body: Option<String>,
    /// Mark the message persistent (delivery_mode 2).
    #[arg(long)]
    pub persistent: bool,
    /// Content type property.
    #[arg(long)]
    pub content_type: Option<String>,
    /// A header, as NAME=VALUE (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub remote: Remote,
}

/// `antre consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Queue name.
    pub queue: String,
    /// Most messages to take [default: 1, or no limit with --follow].
    #[arg(long, short = 'n')]
    pub count: Option<usize>,
    /// Keep taking messages as they arrive (until Ctrl-C or --count),
    /// printing each on its own line (JSON lines with --format json).
    #[arg(long, short = 'F')]
    pub follow: bool,
    /// Put the messages back instead of acknowledging them.
    #[arg(long)]
    pub requeue: bool,
    #[command(flatten)]
    pub remote: Remote,
}

/// `antre definitions ...`.
#[derive(Debug, Subcommand)]
pub enum DefinitionsCommand {
    /// Write every durable definition as JSON (to a file or standard output).
    Export {
        /// File to write; standard output when absent.
        #[arg(long, short = 'o')]
        file: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Load definitions from a JSON file ("-" for standard input). What
    /// antre cannot apply fails the import, listed, before anything changes.
    Import {
        /// File to read.
        file: PathBuf,
        /// Apply what antre can and list what it skipped, instead of failing.
        #[arg(long)]
        skip_unsupported: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Runs a command, printing to `out`.
pub fn run(command: RemoteCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    use RemoteCommand as C;
    match command {
        C::Status(r) => listing::status(&r, out),
        C::Cluster(ClusterCommand::Status(r)) => listing::cluster_status(&r, out),
        C::Cluster(ClusterCommand::Join {
            node,
            address,
            remote,
        }) => listing::cluster_join(&remote, &node, &address, out),
        C::Cluster(ClusterCommand::Leave(r)) => listing::cluster_leave(&r, out),
        C::Cluster(ClusterCommand::Forget { node, remote }) => {
            listing::cluster_forget(&remote, &node, out)
        }
        C::Cluster(ClusterCommand::Drain(r)) => replicas::drain(&r, out),
        C::Cluster(ClusterCommand::FeatureFlags(r)) => listing::feature_flags(&r, out),
        C::Cluster(ClusterCommand::Name { name, remote }) => {
            let client = client::Client::new(&remote);
            if let Some(name) = name {
                let body = serde_json::json!({ "name": name });
                client.send("PUT", "/api/cluster-name", Some(body))?;
            }
            let named = client.get("/api/cluster-name")?;
            let name = named["name"].as_str().unwrap_or_default();
            writeln!(out, "{name}")?;
            Ok(())
        }
        C::Cluster(ClusterCommand::Revive(r)) => {
            let answer = client::Client::new(&r).send("POST", "/api/maintenance/revive", None)?;
            let mut text = "the node takes clients and may lead again".to_owned();
            if answer["recorded"] == serde_json::json!(false) {
                text.push_str(replicas::NOT_RECORDED);
            }
            done(&r, out, text)
        }
        C::Check(check) => checks::run(check, out),
        C::Queues(QueuesArgs { verb: Some(v), .. }) => replicas::run(v, out),
        C::Queues(QueuesArgs { verb: None, remote }) => listing::queues(&remote, out),
        C::Exchanges(l) => listing::exchanges(&l.remote(), out),
        C::Bindings(l) => listing::bindings(&l.remote(), out),
        C::Connections(l) => listing::connections(&l.remote(), out),
        C::Channels(l) => listing::channels(&l.remote(), out),
        C::Consumers(l) => listing::consumers(&l.remote(), out),
        C::Queue(cmd) => topology::queue(cmd, out),
        C::Exchange(cmd) => topology::exchange(cmd, out),
        C::Bind(args) => topology::bind(args, out),
        C::Unbind(args) => topology::unbind(args, out),
        C::Connection(cmd) => topology::connection(cmd, out),
        C::Publish(args) => messages::publish(args, out),
        C::Consume(args) => messages::consume(args, out),
        C::Definitions(cmd) => topology::definitions(cmd, out),
        C::Users(cmd) => access::users(cmd, out),
        C::Permissions(cmd) => access::permissions(cmd, out),
        C::Vhosts(cmd) => access::vhosts(cmd, out),
        C::Policies(cmd) => policies::policies(cmd, false, out),
        C::OperatorPolicies(cmd) => policies::policies(cmd, true, out),
    }
}

fn vhost_path(r: &Remote) -> String {
    percent_encode(&r.vhost)
}

fn print_json(out: &mut dyn Write, v: &Value) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints that a command did what it was asked.
fn done(r: &Remote, out: &mut dyn Write, what: String) -> anyhow::Result<()> {
    if r.format == Format::Json {
        print_json(out, &json!({ "ok": true, "message": what }))
    } else {
        writeln!(out, "{what}")?;
        Ok(())
    }
}
