//! Server settings, and where they come from.
//!
//! Every setting has one name, used in three places with one precedence
//! (highest first): a command-line flag (`--http-listen`), an environment
//! variable (`ANTRE_HTTP_LISTEN`), a key of the TOML file (`http_listen`),
//! then the default. [`Settings`] is that one list: clap reads flags and
//! environment into it, serde reads the file into it, and
//! [`Settings::over`] stacks the layers. docs/operations.md documents it.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest `max_message_size` (512 MiB, as in RabbitMQ).
pub const MAX_MESSAGE_SIZE: u64 = 512 << 20;

use anyhow::Context;
use serde::Deserialize;

use crate::alarm::parse_size;
pub use crate::alarm::MemoryWatermark;
use crate::tls::TlsSettings;

/// The default AMQP addresses: both loopback addresses.
pub const DEFAULT_AMQP_LISTEN: &str = "127.0.0.1:5672,[::1]:5672";
/// The default HTTP addresses: both loopback addresses.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:15672,[::1]:15672";

/// Everything the server needs to start. Defaults are RabbitMQ's where the
/// same setting exists, so clients see familiar limits.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses for AMQP clients, comma-separated (see [`crate::listen`]);
    /// port 0 picks a free port; `None` serves no plain AMQP.
    pub amqp_listen: Option<String>,
    /// Addresses for AMQP over TLS (amqps, conventionally port 5671);
    /// `None` serves none. Needs `tls`.
    pub amqps_listen: Option<String>,
    /// Addresses of the HTTP listener (management API, web UI, `/metrics`),
    /// comma-separated; `None` serves no HTTP.
    pub http_listen: Option<String>,
    /// Addresses of the same over HTTPS; `None` serves none. Needs `tls`.
    pub https_listen: Option<String>,
    /// Addresses for RabbitMQ's stream protocol, comma-separated; `None`
    /// (the default) serves none.
    pub stream_listen: Option<String>,
    /// Certificate, key and client verification for amqps and https.
    pub tls: Option<TlsSettings>,
    /// How often the TLS files are checked for changes and reloaded; zero
    /// checks never (SIGHUP still reloads).
    pub tls_reload_interval: Duration,
    /// Directory for the message store and definitions.
    pub data_dir: PathBuf,
    /// Heartbeat interval proposed to clients, in seconds (0 disables).
    pub heartbeat: u16,
    /// Largest frame the server accepts and proposes, in bytes.
    pub frame_max: u32,
    /// Most channels a connection may open.
    pub channel_max: u16,
    /// Largest message body accepted, in bytes (RabbitMQ's default: 128 MiB).
    pub max_message_size: u64,
    /// Publishers are blocked while the broker's resident memory is above
    /// this (RabbitMQ's `vm_memory_high_watermark`; default 40% of the
    /// machine's or cgroup's memory).
    pub memory_high_watermark: MemoryWatermark,
    /// How often resident memory is read (besides the readings traffic
    /// triggers).
    pub memory_check_interval: Duration,
    /// Bytes of messages (bodies and their bookkeeping) all queues together
    /// keep in memory; past this, queues page messages to disk. At most a
    /// quarter of the memory high watermark is used.
    pub message_memory_limit: u64,
    /// Publishers are blocked while the data directory's file system has
    /// less free space than this, in bytes (RabbitMQ's default: 50 MB).
    pub disk_free_limit: u64,
    /// How often free disk space is checked.
    pub disk_check_interval: Duration,
    /// How often message rates are sampled for the management API.
    pub rate_interval: Duration,
    /// How long a delivery may stay unacked before its channel is closed
    /// (406) and its messages requeued, unless its queue sets
    /// `x-consumer-timeout`; `None` disables (RabbitMQ's default: 30 min).
    pub consumer_timeout: Option<Duration>,
    /// How long deliveries to a busy connection may be held to go out in
    /// one write (see `connection::coalesce`); zero sends each at once.
    pub delivery_coalesce: Duration,
    /// Deliveries per second to one connection above which it counts as
    /// busy and its deliveries are coalesced; 0 coalesces at any rate.
    pub delivery_coalesce_rate: u32,
    /// Bytes of deliveries one connection may have on their way to its
    /// client (handed over by queues, not yet written to the socket); past
    /// this, queues hold its deliveries until it reads. 0: unlimited.
    pub delivery_buffer_limit: u64,
    /// Bytes of deliveries all connections together may have unwritten;
    /// past it, a connection over its fair share (64 KiB) waits for its
    /// own writes. 0: unlimited.
    pub delivery_buffer_total: u64,
    /// A user to create at start-up, `(name, password)`, an administrator
    /// with every permission on `/`. When set, `guest` is removed.
    pub default_user: Option<(String, String)>,
    /// What connection.start tells clients the server is.
    pub server_identity: ServerIdentity,
    /// Users who may log in from loopback addresses only, whatever their
    /// password (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
    /// Most AMQP connections open at once on the node; connection.open
    /// past it is refused with 530 (RabbitMQ's `connection_max`). `None`:
    /// no limit but the socket budget.
    pub max_connections: Option<u64>,
    /// Most client sockets (AMQP and HTTP together) open at once; `None`
    /// computes it from the file-descriptor limit, keeping the rest for
    /// the message store (see [`crate::sockets`]).
    pub max_sockets: Option<u64>,
    /// Most HTTP connections open at once; past it, the longest-idle one
    /// is closed to make room.
    pub http_max_connections: u64,
    /// How long an HTTP client has to send a request's headers (from the
    /// connection, or the end of the previous response, to the blank line).
    pub http_header_timeout: Duration,
    /// How long an HTTP connection may stay open with no request in
    /// progress.
    pub http_idle_timeout: Duration,
    /// The cluster's name in `/api/cluster-name`, the overview and the
    /// metrics' `rabbitmq_cluster` label (RabbitMQ's `cluster_name`);
    /// `None`: this node's name, as RabbitMQ's default.
    pub cluster_name: Option<String>,
    /// This node's cluster settings; `None` (no cluster flags): a single
    /// node, exactly as without clustering. See docs/clustering.md.
    pub cluster: Option<antre_cluster::ClusterConfig>,
    /// The cluster link's certificate, key and CA files, watched every
    /// `tls_reload_interval` (see [`crate::tls::watch_cluster_link`]).
    pub cluster_tls_files: Option<crate::tls::ClusterTlsFiles>,
}

/// The `product` and `version` a server announces in connection.start.
/// Some clients choose behaviour from them (docs/compatibility.md lists
/// which), so a deployment can present antre as the RabbitMQ release its
/// behaviour is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerIdentity {
    /// `product = "antre"` and antre's own version: the truth.
    #[default]
    Antre,
    /// `product = "RabbitMQ"` and [`RABBITMQ_VERSION`], with antre's name
    /// and version in `information`.
    RabbitMq,
}

/// The RabbitMQ release whose replies the conformance suite records
/// (crates/antre/tests/conformance): what `server_identity = "rabbitmq"`
/// claims to be.
pub const RABBITMQ_VERSION: &str = "3.10.8";

impl std::str::FromStr for ServerIdentity {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<ServerIdentity> {
        match s.to_ascii_lowercase().as_str() {
            "antre" => Ok(ServerIdentity::Antre),
            "rabbitmq" => Ok(ServerIdentity::RabbitMq),
            other => anyhow::bail!("server_identity must be antre or rabbitmq, not {other:?}"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // Both loopback addresses: `localhost` is ::1 first for some
            // clients (Node.js).
            amqp_listen: Some(DEFAULT_AMQP_LISTEN.into()),
            amqps_listen: None,
            http_listen: Some(DEFAULT_HTTP_LISTEN.into()),
            https_listen: None,
            stream_listen: None,
            tls: None,
            tls_reload_interval: Duration::from_secs(10),
            data_dir: PathBuf::from("antre-data"),
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            max_message_size: 128 * 1024 * 1024,
            memory_high_watermark: MemoryWatermark::default(),
            memory_check_interval: Duration::from_millis(100),
            message_memory_limit: 32 * 1024 * 1024,
            disk_free_limit: 50_000_000,
            disk_check_interval: Duration::from_secs(1),
            rate_interval: Duration::from_secs(5),
            consumer_timeout: Some(Duration::from_secs(30 * 60)),
            delivery_coalesce: Duration::from_millis(2),
            delivery_coalesce_rate: 20_000,
            delivery_buffer_limit: 1024 * 1024,
            delivery_buffer_total: 32 * 1024 * 1024,
            default_user: None,
            server_identity: ServerIdentity::Antre,
            loopback_users: vec!["guest".into()],
            max_connections: None,
            max_sockets: None,
            http_max_connections: 1024,
            http_header_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(60),
            cluster_name: None,
            cluster: None,
            cluster_tls_files: None,
        }
    }
}

/// One layer of settings: what a config file, the environment or the
/// command line says. Unset fields fall through to the layer below.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Addresses for AMQP clients, comma-separated; 0.0.0.0:5672 or
    /// [::]:5672 for every interface; port 0 picks a free port; "off"
    /// disables plain AMQP [default: 127.0.0.1:5672,[::1]:5672].
    #[arg(long, env = "ANTRE_AMQP_LISTEN", value_name = "ADDR")]
    pub amqp_listen: Option<String>,
    /// Addresses for AMQP over TLS (amqps), comma-separated, e.g.
    /// 0.0.0.0:5671; needs --tls-cert and --tls-key [default: off].
    #[arg(long, env = "ANTRE_AMQPS_LISTEN", value_name = "ADDR")]
    pub amqps_listen: Option<String>,
    /// Addresses for the management API, web UI and /metrics,
    /// comma-separated; "off" disables HTTP
    /// [default: 127.0.0.1:15672,[::1]:15672].
    #[arg(long, env = "ANTRE_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Addresses for the management API, web UI and /metrics over HTTPS,
    /// comma-separated; needs --tls-cert and --tls-key [default: off].
    #[arg(long, env = "ANTRE_HTTPS_LISTEN", value_name = "ADDR")]
    pub https_listen: Option<String>,
    /// Addresses for RabbitMQ's stream protocol, comma-separated; the flag
    /// without a value means 127.0.0.1:5552 [default: off].
    #[arg(long, env = "ANTRE_STREAM_LISTEN", num_args = 0..=1, default_missing_value = "127.0.0.1:5552", value_name = "ADDR")]
    pub stream_listen: Option<String>,
    /// PEM certificate chain (the server's certificate first) for amqps
    /// and https.
    #[arg(long, env = "ANTRE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ANTRE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates to verify amqps client certificates against;
    /// enables SASL EXTERNAL (login as the certificate's CN).
    #[arg(long, env = "ANTRE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Refuse amqps clients without a certificate signed by --tls-ca
    /// [default: false].
    #[arg(long, env = "ANTRE_TLS_VERIFY_PEER", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub tls_verify_peer: Option<bool>,
    /// Seconds between checks of the TLS files for changes (a change
    /// reloads them; so does SIGHUP); 0 disables [default: 10].
    #[arg(long, env = "ANTRE_TLS_RELOAD_INTERVAL", value_name = "SECONDS")]
    pub tls_reload_interval: Option<f64>,
    /// Directory for messages and definitions [default: antre-data].
    #[arg(long, env = "ANTRE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Block publishers while the data directory's file system has less
    /// free space than this many bytes [default: 50000000].
    #[arg(long, env = "ANTRE_DISK_FREE_LIMIT", value_name = "BYTES")]
    pub disk_free_limit: Option<u64>,
    /// Block publishers while the broker's resident memory is above this:
    /// a fraction of the machine's (or cgroup's) memory, e.g. 0.4, or a
    /// size, e.g. 2GiB [default: 0.4].
    #[arg(
        long,
        env = "ANTRE_MEMORY_HIGH_WATERMARK",
        value_name = "FRACTION|SIZE"
    )]
    pub memory_high_watermark: Option<SizeOrFraction>,
    /// Bytes of messages all queues together keep in memory; past this,
    /// messages are paged to disk, e.g. 64MiB [default: 32MiB].
    #[arg(long, env = "ANTRE_MESSAGE_MEMORY_LIMIT", value_name = "SIZE")]
    pub message_memory_limit: Option<SizeOrFraction>,
    /// Deprecated: the old per-queue limit; now sets message_memory_limit.
    #[arg(
        long,
        env = "ANTRE_QUEUE_MEMORY_LIMIT",
        value_name = "BYTES",
        hide = true
    )]
    pub queue_memory_limit: Option<u64>,
    /// Heartbeat interval proposed to clients, in seconds; 0 disables
    /// [default: 60].
    #[arg(long, env = "ANTRE_HEARTBEAT", value_name = "SECONDS")]
    pub heartbeat: Option<u16>,
    /// Largest frame accepted and proposed, in bytes [default: 131072].
    #[arg(long, env = "ANTRE_FRAME_MAX", value_name = "BYTES")]
    pub frame_max: Option<u32>,
    /// Most channels per connection [default: 2047].
    #[arg(long, env = "ANTRE_CHANNEL_MAX", value_name = "N")]
    pub channel_max: Option<u16>,
    /// Largest message body accepted, in bytes [default: 134217728].
    #[arg(long, env = "ANTRE_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub max_message_size: Option<u64>,
    /// Milliseconds a delivery may stay unacked before its channel is closed
    /// and its messages requeued, unless the queue sets x-consumer-timeout;
    /// 0 disables [default: 1800000].
    #[arg(long, env = "ANTRE_CONSUMER_TIMEOUT", value_name = "MS")]
    pub consumer_timeout: Option<u64>,
    /// Microseconds deliveries to a busy connection may be held so that
    /// they go out in one write; 0 sends each delivery at once [default: 2000].
    #[arg(long, env = "ANTRE_DELIVERY_COALESCE", value_name = "MICROS")]
    pub delivery_coalesce: Option<u64>,
    /// Deliveries per second to one connection above which it is busy and
    /// its deliveries are coalesced; 0 coalesces at any rate [default: 20000].
    #[arg(long, env = "ANTRE_DELIVERY_COALESCE_RATE", value_name = "PER_SECOND")]
    pub delivery_coalesce_rate: Option<u32>,
    /// Bytes of deliveries one connection may have unwritten (a client
    /// that does not read its socket costs at most this), e.g. 1MiB; 0 is
    /// unlimited [default: 1MiB].
    #[arg(long, env = "ANTRE_DELIVERY_BUFFER_LIMIT", value_name = "SIZE")]
    pub delivery_buffer_limit: Option<SizeOrFraction>,
    /// Bytes of deliveries all connections together may have unwritten
    /// (many slow readers cost at most this, plus 64 KiB each), e.g.
    /// 32MiB; 0 is unlimited [default: 32MiB, at most a quarter of the
    /// memory watermark].
    #[arg(long, env = "ANTRE_DELIVERY_BUFFER_TOTAL", value_name = "SIZE")]
    pub delivery_buffer_total: Option<SizeOrFraction>,
    /// Seconds between samples of the message rates shown by the management
    /// API and UI [default: 5].
    #[arg(long, env = "ANTRE_RATE_INTERVAL", value_name = "SECONDS")]
    pub rate_interval: Option<f64>,
    /// Create this user at start-up (an administrator with every
    /// permission on /) and remove guest [default: none].
    #[arg(long, env = "ANTRE_DEFAULT_USER", value_name = "NAME")]
    pub default_user: Option<String>,
    /// Password of --default-user.
    #[arg(long, env = "ANTRE_DEFAULT_PASS", value_name = "PASSWORD")]
    pub default_pass: Option<String>,
    /// What connection.start announces: "antre", or "rabbitmq" for product
    /// RabbitMQ and version 3.10.8, for clients that choose behaviour from
    /// them [default: antre].
    #[arg(long, env = "ANTRE_SERVER_IDENTITY", value_name = "antre|rabbitmq")]
    pub server_identity: Option<String>,
    /// Users who may log in from loopback addresses only, comma-separated;
    /// "none" for nobody [default: guest].
    #[arg(
        long,
        env = "ANTRE_LOOPBACK_USERS",
        value_name = "USERS",
        value_delimiter = ','
    )]
    pub loopback_users: Option<Vec<String>>,
    /// Most AMQP connections open at once; connection.open past it is
    /// refused with 530 NOT_ALLOWED [default: no limit but --max-sockets].
    #[arg(long, env = "ANTRE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u64>,
    /// Most client sockets, AMQP and HTTP together; sockets past it are
    /// closed at once [default: 90% of the file-descriptor limit less 100].
    #[arg(long, env = "ANTRE_MAX_SOCKETS", value_name = "N")]
    pub max_sockets: Option<u64>,
    /// Most HTTP connections open at once; past it the longest-idle one is
    /// closed to make room [default: 1024].
    #[arg(long, env = "ANTRE_HTTP_MAX_CONNECTIONS", value_name = "N")]
    pub http_max_connections: Option<u64>,
    /// Seconds an HTTP client has to send a request's headers
    /// [default: 10].
    #[arg(long, env = "ANTRE_HTTP_HEADER_TIMEOUT", value_name = "SECONDS")]
    pub http_header_timeout: Option<f64>,
    /// Seconds an HTTP connection may stay open with no request in
    /// progress [default: 60].
    #[arg(long, env = "ANTRE_HTTP_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub http_idle_timeout: Option<f64>,
    /// The cluster's name, shown by /api/cluster-name and the overview
    /// and in the metrics' rabbitmq_cluster label, by which RabbitMQ's
    /// Grafana dashboards group nodes: give every node of a cluster the
    /// same [default: this node's name, as RabbitMQ's].
    #[arg(long, env = "ANTRE_CLUSTER_NAME", value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// This node's name in its cluster, e.g. n1; with --cluster-listen,
    /// --cluster-peers and a secret, makes this node a cluster member
    /// [default: none: a single node].
    #[arg(long, env = "ANTRE_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Address this node listens on for the other cluster nodes, e.g.
    /// 127.0.0.1:25672.
    #[arg(long, env = "ANTRE_CLUSTER_LISTEN", value_name = "ADDR")]
    pub cluster_listen: Option<String>,
    /// Every cluster member, this node included, as NAME=HOST:PORT,
    /// comma-separated; the same list on every node bootstraps the cluster
    /// once.
    #[arg(long, env = "ANTRE_CLUSTER_PEERS", value_name = "NAME=ADDR,...")]
    pub cluster_peers: Option<String>,
    /// The secret cluster nodes prove to each other (at least 16 bytes);
    /// prefer --cluster-secret-file or ANTRE_CLUSTER_SECRET, which do not
    /// show in the process list.
    #[arg(
        long,
        env = "ANTRE_CLUSTER_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (surrounding whitespace ignored).
    #[arg(long, env = "ANTRE_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster's previous secret, still accepted from peers (never
    /// proved with) while the secret is rotated, one rolling restart at a
    /// time (see docs/clustering.md).
    #[arg(long, env = "ANTRE_CLUSTER_PREVIOUS_SECRET", value_name = "SECRET")]
    pub cluster_previous_secret: Option<String>,
    /// Seconds a metadata change (a declaration, a user...) may wait for
    /// the cluster (a leader, a quorum) before it fails [default: 5].
    #[arg(long, env = "ANTRE_CLUSTER_CHANGE_TIMEOUT", value_name = "SECONDS")]
    pub cluster_change_timeout: Option<f64>,
    /// Seconds a publish forwarded to a queue another node owns waits for
    /// that node's answer before it is nacked [default: 5].
    #[arg(long, env = "ANTRE_CLUSTER_FORWARD_TIMEOUT", value_name = "SECONDS")]
    pub cluster_forward_timeout: Option<f64>,
    /// Bytes of forwarded publishes this node may have sent to one other
    /// node and not had answered; past it, the connections publishing
    /// there are blocked until it catches up [default: 67108864].
    #[arg(long, env = "ANTRE_CLUSTER_FORWARD_BUFFER", value_name = "BYTES")]
    pub cluster_forward_buffer: Option<u64>,
    /// Seconds between the metadata group's Raft heartbeats; must exceed
    /// the slowest round trip between nodes (with a follower's fsync)
    /// [default: 0.2].
    #[arg(long, env = "ANTRE_CLUSTER_HEARTBEAT_INTERVAL", value_name = "SECONDS")]
    pub cluster_heartbeat_interval: Option<f64>,
    /// Seconds without a heartbeat after which a metadata group follower
    /// stands for election (each draws between this and twice this); at
    /// least 3 heartbeat intervals [default: 1].
    #[arg(long, env = "ANTRE_CLUSTER_ELECTION_TIMEOUT", value_name = "SECONDS")]
    pub cluster_election_timeout: Option<f64>,
    /// Seconds between a quorum queue group's Raft heartbeats
    /// [default: 0.1].
    #[arg(
        long,
        env = "ANTRE_CLUSTER_QUEUE_HEARTBEAT_INTERVAL",
        value_name = "SECONDS"
    )]
    pub cluster_queue_heartbeat_interval: Option<f64>,
    /// Seconds without a heartbeat after which a quorum queue group's
    /// follower stands for election (between this and twice this); at
    /// least 3 heartbeat intervals [default: 0.4].
    #[arg(
        long,
        env = "ANTRE_CLUSTER_QUEUE_ELECTION_TIMEOUT",
        value_name = "SECONDS"
    )]
    pub cluster_queue_election_timeout: Option<f64>,
    /// Join an existing cluster through the member listening (cluster
    /// link) at this address, instead of bootstrapping one from the peer
    /// list; ignored once this node is a member. The peer list may then
    /// hold only this node.
    #[arg(long, env = "ANTRE_CLUSTER_JOIN", value_name = "ADDR")]
    pub cluster_join: Option<String>,
    /// PEM certificate (chain) this node presents on the cluster link;
    /// with --cluster-tls-key and --cluster-tls-ca, the link is mutual TLS.
    #[arg(long, env = "ANTRE_CLUSTER_TLS_CERT", value_name = "FILE")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// PEM private key of --cluster-tls-cert.
    #[arg(long, env = "ANTRE_CLUSTER_TLS_KEY", value_name = "FILE")]
    pub cluster_tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) the other nodes' certificates must be signed by.
    #[arg(long, env = "ANTRE_CLUSTER_TLS_CA", value_name = "FILE")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text [default: false].
    #[arg(long, env = "ANTRE_LOG_JSON", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub log_json: Option<bool>,
    /// Log filter when RUST_LOG is unset, e.g. "info" or "antre=debug"
    /// [default: info].
    #[arg(long, env = "ANTRE_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// A size or a fraction as a setting: a number (TOML integer or float) or
/// a string with a unit (`"512MiB"`); see [`crate::alarm::parse_size`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SizeOrFraction {
    /// A plain number.
    Number(f64),
    /// A number with a unit.
    Text(String),
}

impl std::str::FromStr for SizeOrFraction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().parse::<f64>() {
            Ok(n) => SizeOrFraction::Number(n),
            Err(_) => SizeOrFraction::Text(s.to_owned()),
        })
    }
}

impl SizeOrFraction {
    /// As a memory high watermark: a fraction up to 1, else a size.
    pub fn watermark(&self) -> anyhow::Result<MemoryWatermark> {
        let text = match self {
            SizeOrFraction::Number(n) => n.to_string(),
            SizeOrFraction::Text(t) => t.clone(),
        };
        text.parse()
            .map_err(|e| anyhow::anyhow!("memory_high_watermark: {e}"))
    }

    /// As a size in bytes.
    pub fn bytes(&self) -> anyhow::Result<u64> {
        match self {
            SizeOrFraction::Number(n) if *n >= 0.0 && n.is_finite() => Ok(*n as u64),
            SizeOrFraction::Number(n) => anyhow::bail!("{n} is not a size"),
            SizeOrFraction::Text(t) => parse_size(t).map_err(|e| anyhow::anyhow!(e)),
        }
    }
}

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "antre.toml";

impl Settings {
    /// Reads a TOML file of settings.
    pub fn from_file(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Settings::from_toml(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Parses TOML settings; unknown keys are errors, so typos do not pass
    /// silently.
    pub fn from_toml(text: &str) -> anyhow::Result<Settings> {
        Ok(toml::from_str(text)?)
    }

    /// This layer on top of `below`: each setting set here wins.
    pub fn over(self, below: Settings) -> Settings {
        Settings {
            amqp_listen: self.amqp_listen.or(below.amqp_listen),
            amqps_listen: self.amqps_listen.or(below.amqps_listen),
            http_listen: self.http_listen.or(below.http_listen),
            https_listen: self.https_listen.or(below.https_listen),
            stream_listen: self.stream_listen.or(below.stream_listen),
            tls_cert: self.tls_cert.or(below.tls_cert),
            tls_key: self.tls_key.or(below.tls_key),
            tls_ca: self.tls_ca.or(below.tls_ca),
            tls_verify_peer: self.tls_verify_peer.or(below.tls_verify_peer),
            tls_reload_interval: self.tls_reload_interval.or(below.tls_reload_interval),
            data_dir: self.data_dir.or(below.data_dir),
            disk_free_limit: self.disk_free_limit.or(below.disk_free_limit),
            memory_high_watermark: self.memory_high_watermark.or(below.memory_high_watermark),
            message_memory_limit: self.message_memory_limit.or(below.message_memory_limit),
            queue_memory_limit: self.queue_memory_limit.or(below.queue_memory_limit),
            heartbeat: self.heartbeat.or(below.heartbeat),
            frame_max: self.frame_max.or(below.frame_max),
            channel_max: self.channel_max.or(below.channel_max),
            max_message_size: self.max_message_size.or(below.max_message_size),
            consumer_timeout: self.consumer_timeout.or(below.consumer_timeout),
            delivery_coalesce: self.delivery_coalesce.or(below.delivery_coalesce),
            delivery_coalesce_rate: self.delivery_coalesce_rate.or(below.delivery_coalesce_rate),
            delivery_buffer_limit: self.delivery_buffer_limit.or(below.delivery_buffer_limit),
            delivery_buffer_total: self.delivery_buffer_total.or(below.delivery_buffer_total),
            rate_interval: self.rate_interval.or(below.rate_interval),
            default_user: self.default_user.or(below.default_user),
            default_pass: self.default_pass.or(below.default_pass),
            server_identity: self.server_identity.or(below.server_identity),
            loopback_users: self.loopback_users.or(below.loopback_users),
            max_connections: self.max_connections.or(below.max_connections),
            max_sockets: self.max_sockets.or(below.max_sockets),
            http_max_connections: self.http_max_connections.or(below.http_max_connections),
            http_header_timeout: self.http_header_timeout.or(below.http_header_timeout),
            http_idle_timeout: self.http_idle_timeout.or(below.http_idle_timeout),
            cluster_name: self.cluster_name.or(below.cluster_name),
            node_name: self.node_name.or(below.node_name),
            cluster_listen: self.cluster_listen.or(below.cluster_listen),
            cluster_peers: self.cluster_peers.or(below.cluster_peers),
            cluster_secret: self.cluster_secret.or(below.cluster_secret),
            cluster_secret_file: self.cluster_secret_file.or(below.cluster_secret_file),
            cluster_previous_secret: self
                .cluster_previous_secret
                .or(below.cluster_previous_secret),
            cluster_change_timeout: self.cluster_change_timeout.or(below.cluster_change_timeout),
            cluster_forward_timeout: self
                .cluster_forward_timeout
                .or(below.cluster_forward_timeout),
            cluster_forward_buffer: self.cluster_forward_buffer.or(below.cluster_forward_buffer),
            cluster_heartbeat_interval: self
                .cluster_heartbeat_interval
                .or(below.cluster_heartbeat_interval),
            cluster_election_timeout: self
                .cluster_election_timeout
                .or(below.cluster_election_timeout),
            cluster_queue_heartbeat_interval: self
                .cluster_queue_heartbeat_interval
                .or(below.cluster_queue_heartbeat_interval),
            cluster_queue_election_timeout: self
                .cluster_queue_election_timeout
                .or(below.cluster_queue_election_timeout),
            cluster_join: self.cluster_join.or(below.cluster_join),
            cluster_tls_cert: self.cluster_tls_cert.or(below.cluster_tls_cert),
            cluster_tls_key: self.cluster_tls_key.or(below.cluster_tls_key),
            cluster_tls_ca: self.cluster_tls_ca.or(below.cluster_tls_ca),
            log_json: self.log_json.or(below.log_json),
            log_level: self.log_level.or(below.log_level),
        }
    }

    /// The cluster settings, all or none: a node name, a cluster listener,
    /// the peer list and a secret (given, or read from its file).
    fn cluster_settings(
        &self,
        data_dir: &Path,
    ) -> anyhow::Result<Option<antre_cluster::ClusterConfig>> {
        let any = self.node_name.is_some()
            || self.cluster_listen.is_some()
            || self.cluster_peers.is_some()
            || self.cluster_secret.is_some()
            || self.cluster_secret_file.is_some()
            || self.cluster_join.is_some();
        if !any {
            return Ok(None);
        }
        let need = |v: &Option<String>, name: &str| {
            v.clone().ok_or_else(|| {
                anyhow::anyhow!("a cluster node needs {name} (see docs/clustering.md)")
            })
        };
        let node_name = need(&self.node_name, "node_name")?;
        let listen =
            antre_cluster::config::resolve(&need(&self.cluster_listen, "cluster_listen")?)?;
        // Resolved at each try to join: a name the cluster's DNS does not
        // know yet is no reason to stop.
        let join = match &self.cluster_join {
            Some(a) if !antre_cluster::config::is_host_port(a) => {
                anyhow::bail!("cluster_join '{a}' is not HOST:PORT")
            }
            other => other.clone(),
        };
        // A joining node learns its peers from the membership: its list
        // may be left out (it then names only itself).
        let peers = match (&self.cluster_peers, &join) {
            (None, Some(_)) => vec![antre_cluster::Peer::new(&node_name, listen)],
            _ => antre_cluster::config::parse_peers(&need(&self.cluster_peers, "cluster_peers")?)?,
        };
        let tls = match (
            &self.cluster_tls_cert,
            &self.cluster_tls_key,
            &self.cluster_tls_ca,
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(crate::tls::cluster_link(cert, key, ca)?),
            _ => anyhow::bail!(
                "cluster TLS needs all of cluster_tls_cert, cluster_tls_key and cluster_tls_ca"
            ),
        };
        let secret = match (&self.cluster_secret, &self.cluster_secret_file) {
            (Some(_), Some(_)) => {
                anyhow::bail!("set cluster_secret or cluster_secret_file, not both")
            }
            (Some(s), None) => s.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading cluster_secret_file {}", f.display()))?
                .trim()
                .to_owned(),
            (None, None) => anyhow::bail!(
                "a cluster node needs cluster_secret or cluster_secret_file (see docs/clustering.md)"
            ),
        };
        let change_timeout = match self.cluster_change_timeout {
            None => antre_cluster::config::DEFAULT_CHANGE_TIMEOUT,
            Some(s) if s > 0.0 && s.is_finite() => Duration::from_secs_f64(s),
            Some(s) => anyhow::bail!(
                "cluster_change_timeout must be a positive number of seconds, not {s}"
            ),
        };
        let forward_timeout = match self.cluster_forward_timeout {
            None => antre_cluster::config::DEFAULT_FORWARD_TIMEOUT,
            Some(s) if s > 0.0 && s.is_finite() => Duration::from_secs_f64(s),
            Some(s) => anyhow::bail!(
                "cluster_forward_timeout must be a positive number of seconds, not {s}"
            ),
        };
        let forward_buffer = match self.cluster_forward_buffer {
            None => antre_cluster::config::DEFAULT_FORWARD_BUFFER,
            Some(0) => anyhow::bail!("cluster_forward_buffer must be a positive number of bytes"),
            Some(b) => b,
        };
        let seconds = |name: &str, setting: Option<f64>, default: Duration| match setting {
            None => Ok(default),
            Some(s) if s > 0.0 && s.is_finite() && s < 1e9 => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(anyhow::anyhow!(
                "{name} must be a positive number of seconds, not {s}"
            )),
        };
        use antre_cluster::RaftTiming;
        let metadata_timing = RaftTiming {
            heartbeat: seconds(
                "cluster_heartbeat_interval",
                self.cluster_heartbeat_interval,
                RaftTiming::METADATA.heartbeat,
            )?,
            election_min: seconds(
                "cluster_election_timeout",
                self.cluster_election_timeout,
                RaftTiming::METADATA.election_min,
            )?,
        };
        let queue_timing = RaftTiming {
            heartbeat: seconds(
                "cluster_queue_heartbeat_interval",
                self.cluster_queue_heartbeat_interval,
                RaftTiming::QUEUE.heartbeat,
            )?,
            election_min: seconds(
                "cluster_queue_election_timeout",
                self.cluster_queue_election_timeout,
                RaftTiming::QUEUE.election_min,
            )?,
        };
        let config = antre_cluster::ClusterConfig {
            metadata_timing,
            queue_timing,
            node_name,
            listen,
            peers,
            secret,
            previous_secret: self
                .cluster_previous_secret
                .as_deref()
                .map(str::trim)
                .map(str::to_owned),
            dir: data_dir.join("cluster"),
            change_timeout,
            forward_timeout,
            forward_buffer,
            snapshot_logs: antre_cluster::config::DEFAULT_SNAPSHOT_LOGS,
            join,
            tls,
            without_feature_flags: std::env::var("ANTRE_TEST_WITHOUT_FEATURE_FLAGS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|f| !f.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        };
        config.validate()?;
        Ok(Some(config))
    }

    /// The server configuration: these settings over the defaults.
    pub fn to_config(&self) -> anyhow::Result<Config> {
        let d = Config::default();
        let amqp_listen = listen_setting(self.amqp_listen.as_deref(), d.amqp_listen);
        let amqps_listen = listen_setting(self.amqps_listen.as_deref(), d.amqps_listen);
        let http_listen = listen_setting(self.http_listen.as_deref(), d.http_listen);
        let https_listen = listen_setting(self.https_listen.as_deref(), d.https_listen);
        let stream_listen = listen_setting(self.stream_listen.as_deref(), d.stream_listen);
        if amqp_listen.is_none() && amqps_listen.is_none() {
            anyhow::bail!("no AMQP listener: amqp_listen is off and amqps_listen is not set");
        }
        let tls = self.tls_settings(amqps_listen.is_some() || https_listen.is_some())?;
        let tls_reload_interval = match self.tls_reload_interval {
            None => d.tls_reload_interval,
            Some(s) if s >= 0.0 && s.is_finite() => Duration::from_secs_f64(s),
            Some(s) => anyhow::bail!(
                "tls_reload_interval must be a number of seconds (0 disables), not {s}"
            ),
        };
        let rate_interval = match self.rate_interval {
            None => d.rate_interval,
            Some(s) if s > 0.0 && s.is_finite() => Duration::from_secs_f64(s),
            Some(s) => anyhow::bail!("rate_interval must be a positive number of seconds, not {s}"),
        };
        let positive = |name: &str, setting: Option<f64>, default: Duration| match setting {
            None => Ok(default),
            Some(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(anyhow::anyhow!(
                "{name} must be a positive number of seconds, not {s}"
            )),
        };
        if self.http_max_connections == Some(0) || self.max_sockets == Some(0) {
            anyhow::bail!("http_max_connections and max_sockets must be at least 1");
        }
        let default_user = match (&self.default_user, &self.default_pass) {
            (None, None) => None,
            (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), p.clone())),
            _ => anyhow::bail!("default_user and default_pass must be set together"),
        };
        let data_dir = self.data_dir.clone().unwrap_or(d.data_dir);
        let cluster = self.cluster_settings(&data_dir)?;
        let cluster_tls_files = match (
            &cluster,
            &self.cluster_tls_cert,
            &self.cluster_tls_key,
            &self.cluster_tls_ca,
        ) {
            (Some(_), Some(cert), Some(key), Some(ca)) => Some(crate::tls::ClusterTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            }),
            _ => None,
        };
        Ok(Config {
            cluster,
            cluster_tls_files,
            amqp_listen,
            amqps_listen,
            http_listen,
            https_listen,
            stream_listen,
            tls,
            tls_reload_interval,
            data_dir,
            heartbeat: self.heartbeat.unwrap_or(d.heartbeat),
            frame_max: self.frame_max.unwrap_or(d.frame_max),
            channel_max: self.channel_max.unwrap_or(d.channel_max),
            max_message_size: match self.max_message_size.unwrap_or(d.max_message_size) {
                // RabbitMQ's ceiling too; a cluster's link carries a
                // message whole in one frame (antre_cluster::wire::MAX_FRAME).
                n if n > MAX_MESSAGE_SIZE => anyhow::bail!(
                    "max_message_size {n} is over the largest allowed, {MAX_MESSAGE_SIZE} (512 MiB)"
                ),
                n => n,
            },
            memory_high_watermark: match &self.memory_high_watermark {
                None => d.memory_high_watermark,
                Some(w) => w.watermark()?,
            },
            memory_check_interval: d.memory_check_interval,
            message_memory_limit: match (&self.message_memory_limit, self.queue_memory_limit) {
                (Some(size), _) => size.bytes()?,
                (None, Some(old)) => {
                    tracing::warn!(
                        "queue_memory_limit is deprecated: it now sets message_memory_limit, \
                         one limit for all queues together"
                    );
                    old
                }
                (None, None) => d.message_memory_limit,
            },
            disk_free_limit: self.disk_free_limit.unwrap_or(d.disk_free_limit),
            disk_check_interval: d.disk_check_interval,
            rate_interval,
            consumer_timeout: match self.consumer_timeout {
                None => d.consumer_timeout,
                Some(0) => None,
                Some(ms) => Some(Duration::from_millis(ms)),
            },
            delivery_coalesce: self
                .delivery_coalesce
                .map_or(d.delivery_coalesce, Duration::from_micros),
            delivery_coalesce_rate: self
                .delivery_coalesce_rate
                .unwrap_or(d.delivery_coalesce_rate),
            delivery_buffer_limit: match &self.delivery_buffer_limit {
                None => d.delivery_buffer_limit,
                Some(size) => size.bytes()?,
            },
            delivery_buffer_total: match &self.delivery_buffer_total {
                None => d.delivery_buffer_total,
                Some(size) => size.bytes()?,
            },
            default_user,
            loopback_users: match &self.loopback_users {
                None => d.loopback_users,
                Some(list) => list
                    .iter()
                    .map(|u| u.trim())
                    .filter(|u| !u.is_empty() && *u != "none")
                    .map(str::to_owned)
                    .collect(),
            },
            server_identity: match &self.server_identity {
                None => d.server_identity,
                Some(s) => s.parse()?,
            },
            max_connections: self.max_connections.or(d.max_connections),
            max_sockets: self.max_sockets.or(d.max_sockets),
            http_max_connections: self.http_max_connections.unwrap_or(d.http_max_connections),
            http_header_timeout: positive(
                "http_header_timeout",
                self.http_header_timeout,
                d.http_header_timeout,
            )?,
            http_idle_timeout: positive(
                "http_idle_timeout",
                self.http_idle_timeout,
                d.http_idle_timeout,
            )?,
            cluster_name: match self.cluster_name.as_deref().map(str::trim) {
                Some("") => anyhow::bail!("cluster_name must not be empty"),
                other => other.map(str::to_owned),
            },
        })
    }

    /// The TLS settings, checked against the listeners that use them.
    fn tls_settings(&self, tls_listener: bool) -> anyhow::Result<Option<TlsSettings>> {
        let verify_peer = self.tls_verify_peer.unwrap_or(false);
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            (None, None) if tls_listener => anyhow::bail!(
                "amqps_listen and https_listen need a certificate and its key: \
                 set --tls-cert FILE and --tls-key FILE (PEM)"
            ),
            (None, None) if self.tls_ca.is_some() || verify_peer => anyhow::bail!(
                "tls_ca and tls_verify_peer need --tls-cert, --tls-key and a TLS \
                 listener (--amqps-listen)"
            ),
            (None, None) => return Ok(None),
            (Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key (the PEM private key)"),
            (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert (the PEM certificate)"),
        };
        if !tls_listener {
            anyhow::bail!(
                "--tls-cert is set but no TLS listener is: set --amqps-listen \
                 (conventionally port 5671) or --https-listen"
            );
        }
        if verify_peer && self.tls_ca.is_none() {
            anyhow::bail!(
                "--tls-verify-peer needs --tls-ca, the CA that client certificates are checked against"
            );
        }
        Ok(Some(TlsSettings {
            cert,
            key,
            ca: self.tls_ca.clone(),
            verify_peer,
        }))
    }
}

/// A listener's addresses: the setting if given ("off" turns it off), or
/// the default.
fn listen_setting(setting: Option<&str>, default: Option<String>) -> Option<String> {
    match setting.map(str::trim) {
        None => default,
        Some("" | "off" | "none") => None,
        Some(addr) => Some(addr.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = Settings::from_toml(
            "amqp_listen = \"0.0.0.0:5673\"\nhttp_listen = \"off\"\nheartbeat = 30\n",
        )
        .unwrap();
        let flags = Settings {
            amqp_listen: Some("127.0.0.1:0".into()),
            ..Settings::default()
        };
        let config = flags.over(file).to_config().unwrap();
        assert_eq!(config.amqp_listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(config.http_listen, None);
        assert_eq!(config.heartbeat, 30);
        assert_eq!(config.frame_max, 131_072);
    }

    #[test]
    fn delivery_coalescing_is_in_microseconds_and_zero_turns_it_off() {
        let config = Settings::from_toml("delivery_coalesce = 500\ndelivery_coalesce_rate = 0\n")
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(config.delivery_coalesce, Duration::from_micros(500));
        assert_eq!(config.delivery_coalesce_rate, 0);
        let off = Settings::from_toml("delivery_coalesce = 0").unwrap();
        assert!(off.to_config().unwrap().delivery_coalesce.is_zero());
        assert_eq!(
            Settings::default().to_config().unwrap().delivery_coalesce,
            Duration::from_millis(2)
        );
    }

    #[test]
    fn cluster_settings_come_all_together_from_toml_flags_or_a_secret_file() {
        // None: a single node.
        assert!(Settings::default().to_config().unwrap().cluster.is_none());
        let toml = "node_name = \"n2\"\ncluster_listen = \"127.0.0.1:25673\"\n\
                    cluster_peers = \"n1=127.0.0.1:25672,n2=127.0.0.1:25673\"\n\
                    cluster_secret = \"0123456789abcdef\"\ncluster_change_timeout = 2.5\n\
                    data_dir = \"/var/lib/antre\"\n";
        let c = Settings::from_toml(toml).unwrap().to_config().unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.node_name, "n2");
        assert_eq!(cluster.listen.port(), 25673);
        assert_eq!(cluster.peers.len(), 2);
        assert_eq!(cluster.change_timeout, Duration::from_millis(2500));
        assert_eq!(cluster.forward_timeout, Duration::from_secs(5));
        assert_eq!(cluster.forward_buffer, 64 << 20);
        assert_eq!(cluster.metadata_timing, antre_cluster::RaftTiming::METADATA);
        assert_eq!(cluster.queue_timing, antre_cluster::RaftTiming::QUEUE);
        assert_eq!(cluster.dir, Path::new("/var/lib/antre/cluster"));
        let forward =
            format!("{toml}cluster_forward_timeout = 0.5\ncluster_forward_buffer = 1024\n");
        let cluster = Settings::from_toml(&forward)
            .unwrap()
            .to_config()
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(cluster.forward_timeout, Duration::from_millis(500));
        assert_eq!(cluster.forward_buffer, 1024);
        let zero = format!("{toml}cluster_forward_buffer = 0\n");
        assert!(Settings::from_toml(&zero).unwrap().to_config().is_err());
        // The secret never shows in the configuration's Debug.
        assert!(!format!("{cluster:?}").contains("0123456789abcdef"));

        // A secret file, whitespace trimmed.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "  from-a-file-0123456789\n").unwrap();
        let flags = Settings {
            node_name: Some("n1".into()),
            cluster_listen: Some("127.0.0.1:25672".into()),
            cluster_peers: Some("n1=127.0.0.1:25672".into()),
            cluster_secret_file: Some(file.clone()),
            ..Settings::default()
        };
        let cluster = flags.to_config().unwrap().cluster.unwrap();
        assert_eq!(cluster.secret, "from-a-file-0123456789");

        // Partial, conflicting or unsupported combinations are refused.
        let partial = Settings {
            node_name: Some("n1".into()),
            ..Settings::default()
        };
        let e = partial.to_config().unwrap_err().to_string();
        assert!(e.contains("cluster_listen"), "{e}");
        let both = Settings {
            cluster_secret: Some("0123456789abcdef".into()),
            ..flags.clone()
        };
        assert!(both.to_config().is_err());
        let not_listed = Settings {
            node_name: Some("n9".into()),
            ..flags.clone()
        };
        assert!(not_listed.to_config().is_err());
        // A cluster node serves the stream protocol too.
        let with_streams = Settings {
            stream_listen: Some("127.0.0.1:5552".into()),
            ..flags
        };
        let config = with_streams.to_config().unwrap();
        assert!(config.cluster.is_some() && config.stream_listen.is_some());
    }

    #[test]
    fn cluster_raft_timings_are_settings_checked_together() {
        let base = "node_name = \"n1\"\ncluster_listen = \"127.0.0.1:25672\"\n\
                    cluster_peers = \"n1=127.0.0.1:25672\"\n\
                    cluster_secret = \"0123456789abcdef\"\n";
        let toml = format!(
            "{base}cluster_heartbeat_interval = 0.5\ncluster_election_timeout = 3\n\
             cluster_queue_heartbeat_interval = 0.25\ncluster_queue_election_timeout = 1.5\n"
        );
        let cluster = Settings::from_toml(&toml)
            .unwrap()
            .to_config()
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(
            cluster.metadata_timing.heartbeat,
            Duration::from_millis(500)
        );
        assert_eq!(cluster.metadata_timing.election_min, Duration::from_secs(3));
        assert_eq!(cluster.queue_timing.heartbeat, Duration::from_millis(250));
        assert_eq!(cluster.queue_timing.election_max(), Duration::from_secs(3));
        // A heartbeat not well below the election timeout is refused,
        // naming the group.
        let close = Settings {
            cluster_queue_heartbeat_interval: Some(0.2),
            ..Settings::from_toml(base).unwrap()
        };
        let e = close.to_config().unwrap_err().to_string();
        assert!(e.contains("quorum queues' election timeout"), "{e}");
        let negative = Settings {
            cluster_heartbeat_interval: Some(-1.0),
            ..Settings::from_toml(base).unwrap()
        };
        let e = negative.to_config().unwrap_err().to_string();
        assert!(e.contains("cluster_heartbeat_interval"), "{e}");
    }

    #[test]
    fn a_joining_node_needs_no_peer_list_and_cluster_tls_needs_all_three_files() {
        let toml = "node_name = \"n4\"\ncluster_listen = \"127.0.0.1:25675\"\n\
                    cluster_join = \"127.0.0.1:25672\"\n\
                    cluster_secret = \"0123456789abcdef\"\n";
        let cluster = Settings::from_toml(toml)
            .unwrap()
            .to_config()
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(cluster.join.as_deref(), Some("127.0.0.1:25672"));
        assert_eq!(cluster.peers.len(), 1);
        assert_eq!(cluster.peers[0].name, "n4");
        assert_eq!(cluster.advertised().port(), 25675);

        let partial_tls = Settings {
            cluster_tls_cert: Some("/nonexistent/n4.pem".into()),
            ..Settings::from_toml(toml).unwrap()
        };
        let e = partial_tls.to_config().unwrap_err().to_string();
        assert!(
            e.contains("cluster_tls_key") && e.contains("cluster_tls_ca"),
            "{e}"
        );
        let missing_files = Settings {
            cluster_tls_key: Some("/nonexistent/n4.key".into()),
            cluster_tls_ca: Some("/nonexistent/ca.pem".into()),
            ..partial_tls
        };
        let e = format!("{:#}", missing_files.to_config().unwrap_err());
        assert!(e.contains("/nonexistent/n4.pem"), "{e}");
    }

    #[test]
    fn the_default_listeners_are_both_loopback_addresses() {
        let config = Settings::default().to_config().unwrap();
        assert_eq!(
            crate::listen::entries(&config.amqp_listen.unwrap()),
            ["127.0.0.1:5672", "[::1]:5672"]
        );
        assert_eq!(config.amqps_listen, None);
        assert_eq!(config.https_listen, None);
        let http = config.http_listen.unwrap();
        assert_eq!(
            crate::listen::entries(&http),
            ["127.0.0.1:15672", "[::1]:15672"]
        );
    }

    #[test]
    fn loopback_users_default_to_guest_and_can_be_emptied() {
        let d = Settings::default().to_config().unwrap();
        assert_eq!(d.loopback_users, ["guest"]);
        let file = Settings::from_toml("loopback_users = [\"guest\", \"ops\"]").unwrap();
        assert_eq!(file.to_config().unwrap().loopback_users, ["guest", "ops"]);
        let none = Settings::from_toml("loopback_users = [\"none\"]").unwrap();
        assert!(none.to_config().unwrap().loopback_users.is_empty());
        let empty = Settings::from_toml("loopback_users = []").unwrap();
        assert!(empty.to_config().unwrap().loopback_users.is_empty());
    }

    #[test]
    fn memory_settings_take_fractions_and_sizes() {
        let c =
            Settings::from_toml("memory_high_watermark = 0.25\nmessage_memory_limit = \"16MiB\"\n")
                .unwrap()
                .to_config()
                .unwrap();
        assert_eq!(c.memory_high_watermark, MemoryWatermark::Relative(0.25));
        assert_eq!(c.message_memory_limit, 16 << 20);
        assert_eq!(c.delivery_buffer_total, 32 << 20, "the default");
        let c = Settings::from_toml("delivery_buffer_total = \"8MiB\"\n")
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(c.delivery_buffer_total, 8 << 20);
        let c =
            Settings::from_toml("memory_high_watermark = \"512MiB\"\nqueue_memory_limit = 4096\n")
                .unwrap()
                .to_config()
                .unwrap();
        assert_eq!(
            c.memory_high_watermark,
            MemoryWatermark::Absolute(512 << 20)
        );
        assert_eq!(
            c.message_memory_limit, 4096,
            "the old per-queue key still works"
        );
        let flags = Settings {
            memory_high_watermark: Some("2GB".parse().unwrap()),
            ..Settings::default()
        };
        assert_eq!(
            flags.to_config().unwrap().memory_high_watermark,
            MemoryWatermark::Absolute(2_000_000_000)
        );
        assert!(Settings::from_toml("memory_high_watermark = \"lots\"")
            .unwrap()
            .to_config()
            .is_err());
        let d = Settings::default().to_config().unwrap();
        assert_eq!(d.memory_high_watermark, MemoryWatermark::Relative(0.4));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Settings::from_toml("amqp_lisen = \"x\"").unwrap_err();
        assert!(format!("{err:#}").contains("amqp_lisen"), "{err:#}");
    }

    #[test]
    fn the_cluster_name_is_a_name_or_unset() {
        assert_eq!(Settings::default().to_config().unwrap().cluster_name, None);
        let named = Settings::from_toml("cluster_name = \"payments-eu\"").unwrap();
        assert_eq!(
            named.to_config().unwrap().cluster_name.as_deref(),
            Some("payments-eu")
        );
        let blank = Settings::from_toml("cluster_name = \" \"").unwrap();
        assert!(blank.to_config().is_err());
    }

    #[test]
    fn server_identity_is_antre_unless_set_to_rabbitmq() {
        assert_eq!(
            Settings::default().to_config().unwrap().server_identity,
            ServerIdentity::Antre
        );
        let rabbit = Settings::from_toml("server_identity = \"RabbitMQ\"").unwrap();
        assert_eq!(
            rabbit.to_config().unwrap().server_identity,
            ServerIdentity::RabbitMq
        );
        let typo = Settings::from_toml("server_identity = \"rabit\"").unwrap();
        assert!(typo.to_config().is_err());
    }

    #[test]
    fn limits_default_to_none_for_amqp_and_bounds_for_http() {
        let d = Settings::default().to_config().unwrap();
        assert_eq!((d.max_connections, d.max_sockets), (None, None));
        assert_eq!(d.http_max_connections, 1024);
        assert_eq!(d.http_header_timeout, Duration::from_secs(10));
        assert_eq!(d.http_idle_timeout, Duration::from_secs(60));
        let file = Settings::from_toml(
            "max_connections = 100\nmax_sockets = 500\nhttp_max_connections = 8\n\
             http_header_timeout = 0.5\nhttp_idle_timeout = 5\n",
        )
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(
            (file.max_connections, file.max_sockets),
            (Some(100), Some(500))
        );
        assert_eq!(file.http_max_connections, 8);
        assert_eq!(file.http_header_timeout, Duration::from_millis(500));
        assert_eq!(file.http_idle_timeout, Duration::from_secs(5));
        for bad in [
            "http_header_timeout = 0",
            "http_idle_timeout = -1",
            "http_max_connections = 0",
            "max_sockets = 0",
        ] {
            assert!(
                Settings::from_toml(bad).unwrap().to_config().is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn max_message_size_stops_at_512_mib() {
        let at = Settings {
            max_message_size: Some(MAX_MESSAGE_SIZE),
            ..Settings::default()
        };
        assert_eq!(at.to_config().unwrap().max_message_size, 512 << 20);
        let over = Settings {
            max_message_size: Some(MAX_MESSAGE_SIZE + 1),
            ..Settings::default()
        };
        let e = over.to_config().unwrap_err().to_string();
        assert!(e.contains("max_message_size"), "{e}");
    }

    #[test]
    fn a_user_needs_a_password() {
        let s = Settings {
            default_user: Some("admin".into()),
            ..Settings::default()
        };
        assert!(s.to_config().is_err());
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    fn parse(toml: &str) -> anyhow::Result<Config> {
        Settings::from_toml(toml)?.to_config()
    }

    #[test]
    fn tls_listeners_take_the_certificate_and_plain_amqp_can_be_off() {
        let config = parse(
            "amqp_listen = \"off\"\namqps_listen = \"0.0.0.0:5671\"\n\
             https_listen = \"0.0.0.0:15671\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\
             tls_ca = \"ca.pem\"\ntls_verify_peer = true\ntls_reload_interval = 0\n",
        )
        .unwrap();
        assert_eq!(config.amqp_listen, None);
        assert_eq!(config.amqps_listen.as_deref(), Some("0.0.0.0:5671"));
        assert_eq!(config.https_listen.as_deref(), Some("0.0.0.0:15671"));
        let tls = config.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert_eq!(tls.ca, Some(PathBuf::from("ca.pem")));
        assert!(tls.verify_peer);
        assert!(config.tls_reload_interval.is_zero());
    }

    #[test]
    fn inconsistent_tls_settings_say_what_is_missing() {
        let cases = [
            ("amqps_listen = \"127.0.0.1:5671\"", "--tls-cert"),
            (
                "amqps_listen = \"127.0.0.1:5671\"\ntls_cert = \"c.pem\"",
                "--tls-key",
            ),
            ("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"", "--amqps-listen"),
            (
                "amqps_listen = \"127.0.0.1:5671\"\ntls_cert = \"c\"\ntls_key = \"k\"\ntls_verify_peer = true",
                "--tls-ca",
            ),
            ("amqp_listen = \"off\"", "no AMQP listener"),
        ];
        for (toml, needle) in cases {
            let err = format!("{:#}", parse(toml).unwrap_err());
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }
}
