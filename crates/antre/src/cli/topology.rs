//! Changing the broker's topology from the command line: `queue declare
//! |purge|delete`, `exchange declare|delete`, `bind`, `unbind`,
//! `connection close`, `definitions export|import`.

use std::io::{Read, Write};

use anyhow::Context;
use serde_json::{json, Map, Value};

use super::client::Client;
use super::{
    done, print_json, text, vhost_path, ArgumentArgs, BindArgs, ConnectionCommand,
    DefinitionsCommand, ExchangeCommand, Format, QueueArgumentShortcuts, QueueCommand,
};
use crate::http::render::percent_encode;

/// A NAME=VALUE argument's value: an integer, `true`/`false`, or else the
/// string as written (so `x-max-length=10` is the number 10, as the broker
/// needs it, and `x-dead-letter-exchange=dlx` a string).
fn typed(value: &str) -> Value {
    if let Ok(n) = value.parse::<i64>() {
        return json!(n);
    }
    match value {
        "true" => json!(true),
        "false" => json!(false),
        _ => json!(value),
    }
}

/// The `--argument NAME=VALUE` list as a JSON table.
pub fn arguments(args: &ArgumentArgs) -> anyhow::Result<Map<String, Value>> {
    let mut table = Map::new();
    for a in &args.arguments {
        let (name, value) = a
            .split_once('=')
            .with_context(|| format!("argument '{a}' is not NAME=VALUE"))?;
        if name.is_empty() {
            anyhow::bail!("argument '{a}' has no name");
        }
        table.insert(name.to_owned(), typed(value));
    }
    Ok(table)
}

/// Adds the shortcut flags to a queue's arguments; a shortcut and an
/// --argument for the same name must not both be given.
fn with_shortcuts(
    mut table: Map<String, Value>,
    s: &QueueArgumentShortcuts,
) -> anyhow::Result<Map<String, Value>> {
    let shortcuts: [(&str, &str, Option<Value>); 10] = [
        (
            "--dlx",
            "x-dead-letter-exchange",
            s.dlx.as_ref().map(|v| json!(v)),
        ),
        (
            "--dlk",
            "x-dead-letter-routing-key",
            s.dlk.as_ref().map(|v| json!(v)),
        ),
        ("--ttl", "x-message-ttl", s.ttl.map(|v| json!(v))),
        ("--expires", "x-expires", s.expires.map(|v| json!(v))),
        (
            "--max-length",
            "x-max-length",
            s.max_length.map(|v| json!(v)),
        ),
        (
            "--max-length-bytes",
            "x-max-length-bytes",
            s.max_length_bytes.map(|v| json!(v)),
        ),
        (
            "--overflow",
            "x-overflow",
            s.overflow.as_ref().map(|v| json!(v)),
        ),
        (
            "--max-priority",
            "x-max-priority",
            s.max_priority.map(|v| json!(v)),
        ),
        (
            "--delivery-limit",
            "x-delivery-limit",
            s.delivery_limit.map(|v| json!(v)),
        ),
        (
            "--single-active-consumer",
            "x-single-active-consumer",
            s.single_active_consumer.then_some(json!(true)),
        ),
    ];
    for (flag, name, value) in shortcuts {
        let Some(value) = value else { continue };
        if table.contains_key(name) {
            anyhow::bail!("{flag} and --argument {name}=... both set {name}; give one");
        }
        table.insert(name.to_owned(), value);
    }
    Ok(table)
}

/// `antre queue ...`.
pub fn queue(cmd: QueueCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = |remote: &super::Remote, name: &str| {
        format!(
            "/api/queues/{}/{}",
            vhost_path(remote),
            percent_encode(name)
        )
    };
    match cmd {
        QueueCommand::Declare {
            name,
            transient,
            auto_delete,
            arguments: args,
            shortcuts,
            remote,
        } => {
            let table = with_shortcuts(arguments(&args)?, &shortcuts)?;
            let body =
                json!({ "durable": !transient, "auto_delete": auto_delete, "arguments": table });
            Client::new(&remote).send("PUT", &path(&remote, &name), Some(body))?;
            done(&remote, out, format!("queue '{name}' declared"))
        }
        QueueCommand::Purge { name, remote } => {
            let p = format!("{}/contents", path(&remote, &name));
            Client::new(&remote).send("DELETE", &p, None)?;
            done(&remote, out, format!("queue '{name}' purged"))
        }
        QueueCommand::Delete { name, remote } => {
            Client::new(&remote).send("DELETE", &path(&remote, &name), None)?;
            done(&remote, out, format!("queue '{name}' deleted"))
        }
    }
}

/// `antre exchange ...`.
pub fn exchange(cmd: ExchangeCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = |remote: &super::Remote, name: &str| {
        format!(
            "/api/exchanges/{}/{}",
            vhost_path(remote),
            percent_encode(name)
        )
    };
    match cmd {
        ExchangeCommand::Declare {
            name,
            kind,
            transient,
            auto_delete,
            internal,
            arguments: args,
            remote,
        } => {
            let body = json!({
                "type": kind, "durable": !transient, "auto_delete": auto_delete,
                "internal": internal, "arguments": arguments(&args)?,
            });
            Client::new(&remote).send("PUT", &path(&remote, &name), Some(body))?;
            done(&remote, out, format!("exchange '{name}' declared"))
        }
        ExchangeCommand::Delete { name, remote } => {
            Client::new(&remote).send("DELETE", &path(&remote, &name), None)?;
            done(&remote, out, format!("exchange '{name}' deleted"))
        }
    }
}

/// The bindings URL between a source and a destination.
fn bindings_path(args: &BindArgs) -> String {
    let kind = if args.to_exchange { "e" } else { "q" };
    format!(
        "/api/bindings/{}/e/{}/{kind}/{}",
        vhost_path(&args.remote),
        percent_encode(&args.source),
        percent_encode(&args.destination)
    )
}

fn describe(args: &BindArgs) -> String {
    let kind = if args.to_exchange {
        "exchange"
    } else {
        "queue"
    };
    format!(
        "exchange '{}' to {kind} '{}' with routing key '{}'",
        args.source, args.destination, args.routing_key
    )
}

/// `antre bind`.
pub fn bind(args: BindArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let body = json!({ "routing_key": args.routing_key, "arguments": arguments(&args.arguments)? });
    Client::new(&args.remote).send("POST", &bindings_path(&args), Some(body))?;
    done(&args.remote, out, format!("bound {}", describe(&args)))
}

/// `antre unbind`: finds the binding with this routing key and arguments
/// and deletes it by its properties key.
pub fn unbind(args: BindArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let client = Client::new(&args.remote);
    let wanted = Value::Object(arguments(&args.arguments)?);
    let path = bindings_path(&args);
    let existing = client.get(&path)?;
    let found = existing.as_array().into_iter().flatten().find(|b| {
        b["routing_key"].as_str() == Some(args.routing_key.as_str()) && b["arguments"] == wanted
    });
    let Some(key) = found.and_then(|b| b["properties_key"].as_str()) else {
        anyhow::bail!("there is no binding from {}", describe(&args));
    };
    client.send("DELETE", &format!("{path}/{}", percent_encode(key)), None)?;
    done(&args.remote, out, format!("unbound {}", describe(&args)))
}

/// `antre connection close`.
pub fn connection(cmd: ConnectionCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let ConnectionCommand::Close {
        name,
        reason,
        remote,
    } = cmd;
    let path = format!("/api/connections/{}", percent_encode(&name));
    Client::new(&remote).send_with_header("DELETE", &path, ("X-Reason", &reason))?;
    done(&remote, out, format!("connection '{name}' closed"))
}

/// `antre definitions ...`.
pub fn definitions(cmd: DefinitionsCommand, out: &mut dyn Write) -> anyhow::Result<()> {
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
        DefinitionsCommand::Import {
            file,
            skip_unsupported,
            remote,
        } => {
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
            let path = match skip_unsupported {
                true => "/api/definitions?skip_unsupported=true",
                false => "/api/definitions",
            };
            let counts = Client::new(&remote).send("POST", path, Some(defs))?;
            if remote.format == Format::Json {
                return print_json(out, &counts);
            }
            writeln!(
                out,
                "imported {} vhosts, {} users, {} exchanges, {} queues, {} bindings",
                text(&counts["vhosts"]),
                text(&counts["users"]),
                text(&counts["exchanges"]),
                text(&counts["queues"]),
                text(&counts["bindings"])
            )?;
            for (label, key) in [("skipped", "skipped"), ("ignored", "ignored")] {
                for item in counts[key].as_array().into_iter().flatten() {
                    writeln!(out, "{label}: {}", text(item))?;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_values_are_typed() {
        let args = ArgumentArgs {
            arguments: vec![
                "x-max-length=10".into(),
                "x-dead-letter-exchange=dlx".into(),
                "x-single-active-consumer=true".into(),
                "x-note=a=b".into(),
            ],
        };
        let table = arguments(&args).unwrap();
        assert_eq!(
            Value::Object(table),
            json!({
                "x-max-length": 10, "x-dead-letter-exchange": "dlx",
                "x-single-active-consumer": true, "x-note": "a=b"
            })
        );
        let bad = ArgumentArgs {
            arguments: vec!["no-value".into()],
        };
        assert!(arguments(&bad).is_err());
    }

    #[test]
    fn shortcuts_fill_in_the_x_arguments_once() {
        let s = QueueArgumentShortcuts {
            dlx: Some("dead".into()),
            ttl: Some(60_000),
            max_length: Some(5),
            single_active_consumer: true,
            ..Default::default()
        };
        let table = with_shortcuts(Map::new(), &s).unwrap();
        assert_eq!(
            Value::Object(table),
            json!({
                "x-dead-letter-exchange": "dead", "x-message-ttl": 60000,
                "x-max-length": 5, "x-single-active-consumer": true
            })
        );
        let mut both = Map::new();
        both.insert("x-message-ttl".into(), json!(1));
        let err = with_shortcuts(both, &s).unwrap_err();
        assert!(err.to_string().contains("--ttl"), "{err}");
    }
}
