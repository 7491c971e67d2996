//! `antre status`, `antre queues list`, `antre publish`, ...: commands that
//! talk to a running broker through its management API (as RabbitMQ's
//! rabbitmqadmin does), printing tables for people or JSON for scripts.
//!
//! - [`client`]: the HTTP client (basic auth, JSON errors as messages);
//! - [`table`]: aligned text tables.

pub mod client;
pub mod table;

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::http::render::percent_encode;
use client::Client;
use table::Table;

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
    /// List queues.
    #[command(subcommand)]
    Queues(ListOnly),
    /// List exchanges.
    #[command(subcommand)]
    Exchanges(ListOnly),
    /// List bindings.
    #[command(subcommand)]
    Bindings(ListOnly),
    /// List connections.
    #[command(subcommand)]
    Connections(ListOnly),
    /// Declare, purge or delete one queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Publish a message to an exchange.
    Publish(PublishArgs),
    /// Take messages from a queue (acknowledging them unless --requeue).
    Consume(ConsumeArgs),
    /// Export or import durable definitions.
    #[command(subcommand)]
    Definitions(DefinitionsCommand),
}

/// `... list`.
#[derive(Debug, Subcommand)]
pub enum ListOnly {
    /// List them.
    List(Remote),
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
    /// Most messages to take.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub count: usize,
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
    /// Load definitions from a JSON file ("-" for standard input).
    Import {
        /// File to read.
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Runs a command, printing to `out`.
pub fn run(command: RemoteCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        RemoteCommand::Status(r) => status(&r, out),
        RemoteCommand::Queues(ListOnly::List(r)) => list_queues(&r, out),
        RemoteCommand::Exchanges(ListOnly::List(r)) => list_exchanges(&r, out),
        RemoteCommand::Bindings(ListOnly::List(r)) => list_bindings(&r, out),
        RemoteCommand::Connections(ListOnly::List(r)) => list_connections(&r, out),
        RemoteCommand::Queue(cmd) => queue(cmd, out),
        RemoteCommand::Publish(args) => publish(args, out),
        RemoteCommand::Consume(args) => consume(args, out),
        RemoteCommand::Definitions(cmd) => definitions(cmd, out),
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
        other => other.to_string(),
    }
}

fn list(
    r: &Remote,
    path: &str,
    columns: &[(&str, &str)],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let items = Client::new(r).get(path)?;
    if r.format == Format::Json {
        return print_json(out, &items);
    }
    let mut table = Table::new(columns.iter().map(|(title, _)| *title).collect());
    for item in items.as_array().into_iter().flatten() {
        table.row(
            columns
                .iter()
                .map(|(_, field)| text(&item.pointer(field).cloned().unwrap_or(Value::Null)))
                .collect(),
        );
    }
    write!(out, "{table}")?;
    Ok(())
}

fn list_queues(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let columns = [
        ("name", "/name"),
        ("durable", "/durable"),
        ("messages", "/messages"),
        ("ready", "/messages_ready"),
        ("unacked", "/messages_unacknowledged"),
        ("consumers", "/consumers"),
        ("publish/s", "/message_stats/publish_details/rate"),
        ("deliver/s", "/message_stats/deliver_get_details/rate"),
    ];
    list(r, &format!("/api/queues/{}", vhost_path(r)), &columns, out)
}

fn list_exchanges(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let columns = [
        ("name", "/name"),
        ("type", "/type"),
        ("durable", "/durable"),
        ("auto_delete", "/auto_delete"),
        ("internal", "/internal"),
    ];
    list(
        r,
        &format!("/api/exchanges/{}", vhost_path(r)),
        &columns,
        out,
    )
}

fn list_bindings(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let columns = [
        ("source", "/source"),
        ("destination", "/destination"),
        ("type", "/destination_type"),
        ("routing_key", "/routing_key"),
    ];
    list(
        r,
        &format!("/api/bindings/{}", vhost_path(r)),
        &columns,
        out,
    )
}

fn list_connections(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let columns = [
        ("name", "/name"),
        ("user", "/user"),
        ("vhost", "/vhost"),
        ("channels", "/channels"),
        ("state", "/state"),
    ];
    list(r, "/api/connections", &columns, out)
}

fn status(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let client = Client::new(r);
    let o = client.get("/api/overview")?;
    let alarms = client.get_status("/api/health/checks/alarms")?;
    if r.format == Format::Json {
        return print_json(out, &json!({ "overview": o, "alarms": alarms.1 }));
    }
    let get = |p: &str| text(&o.pointer(p).cloned().unwrap_or(Value::Null));
    let mut t = Table::new(vec!["", ""]);
    t.row(vec![
        "product".into(),
        format!("{} {}", get("/product_name"), get("/product_version")),
    ]);
    t.row(vec!["node".into(), get("/node")]);
    t.row(vec![
        "uptime".into(),
        format!("{} s", o["uptime"].as_u64().unwrap_or(0) / 1000),
    ]);
    for l in o["listeners"].as_array().into_iter().flatten() {
        t.row(vec![
            format!("listener {}", text(&l["protocol"])),
            format!("{}:{}", text(&l["ip_address"]), text(&l["port"])),
        ]);
    }
    for k in [
        "connections",
        "channels",
        "exchanges",
        "queues",
        "consumers",
    ] {
        t.row(vec![k.into(), get(&format!("/object_totals/{k}"))]);
    }
    t.row(vec![
        "messages ready".into(),
        get("/queue_totals/messages_ready"),
    ]);
    t.row(vec![
        "messages unacked".into(),
        get("/queue_totals/messages_unacknowledged"),
    ]);
    for k in ["publish", "deliver_get", "ack"] {
        t.row(vec![
            format!("{k} rate"),
            format!("{}/s", get(&format!("/message_stats/{k}_details/rate"))),
        ]);
    }
    t.row(vec!["memory".into(), format!("{} bytes", get("/mem_used"))]);
    t.row(vec![
        "disk free".into(),
        format!(
            "{} bytes (limit {})",
            get("/disk_free"),
            get("/disk_free_limit")
        ),
    ]);
    let alarm = if alarms.0 == 200 {
        "none".to_owned()
    } else {
        text(&alarms.1["reason"])
    };
    t.row(vec!["alarms".into(), alarm]);
    write!(out, "{t}")?;
    Ok(())
}

fn done(r: &Remote, out: &mut dyn Write, what: String) -> anyhow::Result<()> {
    if r.format == Format::Json {
        print_json(out, &json!({ "ok": true, "message": what }))
    } else {
        writeln!(out, "{what}")?;
        Ok(())
    }
}

fn queue(cmd: QueueCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Declare {
            name,
            transient,
            auto_delete,
            remote,
        } => {
            let path = format!(
                "/api/queues/{}/{}",
                vhost_path(&remote),
                percent_encode(&name)
            );
            let body = json!({ "durable": !transient, "auto_delete": auto_delete });
            Client::new(&remote).send("PUT", &path, Some(body))?;
            done(&remote, out, format!("queue '{name}' declared"))
        }
        QueueCommand::Purge { name, remote } => {
            let path = format!(
                "/api/queues/{}/{}/contents",
                vhost_path(&remote),
                percent_encode(&name)
            );
            Client::new(&remote).send("DELETE", &path, None)?;
            done(&remote, out, format!("queue '{name}' purged"))
        }
        QueueCommand::Delete { name, remote } => {
            let path = format!(
                "/api/queues/{}/{}",
                vhost_path(&remote),
                percent_encode(&name)
            );
            Client::new(&remote).send("DELETE", &path, None)?;
            done(&remote, out, format!("queue '{name}' deleted"))
        }
    }
}

fn publish(args: PublishArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let body = match args.body {
        Some(b) => b,
        None => {
            let mut b = String::new();
            std::io::stdin()
                .read_to_string(&mut b)
                .context("reading the message body from standard input")?;
            b
        }
    };
    let mut properties = serde_json::Map::new();
    if args.persistent {
        properties.insert("delivery_mode".into(), json!(2));
    }
    if let Some(ct) = &args.content_type {
        properties.insert("content_type".into(), json!(ct));
    }
    if !args.headers.is_empty() {
        let mut headers = serde_json::Map::new();
        for h in &args.headers {
            let (k, v) = h
                .split_once('=')
                .with_context(|| format!("header '{h}' is not NAME=VALUE"))?;
            headers.insert(k.to_owned(), json!(v));
        }
        properties.insert("headers".into(), Value::Object(headers));
    }
    let exchange = if args.exchange.is_empty() {
        "amq.default"
    } else {
        &args.exchange
    };
    let path = format!(
        "/api/exchanges/{}/{}/publish",
        vhost_path(&args.remote),
        percent_encode(exchange)
    );
    let answer = Client::new(&args.remote).send(
        "POST",
        &path,
        Some(json!({
            "routing_key": args.routing_key,
            "payload": body,
            "payload_encoding": "string",
            "properties": properties,
        })),
    )?;
    if args.remote.format == Format::Json {
        return print_json(out, &answer);
    }
    if answer["routed"].as_bool() == Some(true) {
        writeln!(out, "published")?;
        Ok(())
    } else {
        anyhow::bail!("the message was not routed to any queue (it is dropped)")
    }
}

fn consume(args: ConsumeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = format!(
        "/api/queues/{}/{}/get",
        vhost_path(&args.remote),
        percent_encode(&args.queue)
    );
    let ackmode = if args.requeue {
        "ack_requeue_true"
    } else {
        "ack_requeue_false"
    };
    let messages = Client::new(&args.remote).send(
        "POST",
        &path,
        Some(json!({ "count": args.count, "ackmode": ackmode, "encoding": "auto" })),
    )?;
    if args.remote.format == Format::Json {
        return print_json(out, &messages);
    }
    let mut t = Table::new(vec!["routing_key", "redelivered", "payload"]);
    for m in messages.as_array().into_iter().flatten() {
        t.row(vec![
            text(&m["routing_key"]),
            text(&m["redelivered"]),
            text(&m["payload"]),
        ]);
    }
    write!(out, "{t}")?;
    Ok(())
}

fn definitions(cmd: DefinitionsCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        DefinitionsCommand::Export { file, remote } => {
            let defs = Client::new(&remote).get("/api/definitions")?;
            let text = serde_json::to_string_pretty(&defs)?;
            match file {
                Some(path) => {
                    std::fs::write(&path, text + "\n")
                        .with_context(|| format!("writing {}", path.display()))?;
                    done(
                        &remote,
                        out,
                        format!("definitions written to {}", path.display()),
                    )
                }
                None => {
                    writeln!(out, "{text}")?;
                    Ok(())
                }
            }
        }
        DefinitionsCommand::Import { file, remote } => {
            let raw = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let defs: Value = serde_json::from_str(&raw)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let counts = Client::new(&remote).send("POST", "/api/definitions", Some(defs))?;
            if remote.format == Format::Json {
                return print_json(out, &counts);
            }
            writeln!(
                out,
                "imported {} exchanges, {} queues, {} bindings",
                text(&counts["exchanges"]),
                text(&counts["queues"]),
                text(&counts["bindings"])
            )?;
            Ok(())
        }
    }
}
