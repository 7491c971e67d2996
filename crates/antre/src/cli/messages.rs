//! `antre publish` and `antre consume`, over the management API's publish
//! and get (as rabbitmqadmin's are): for operators and scripts, not for
//! throughput.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use super::client::Client;
use super::table::Table;
use super::{print_json, text, vhost_path, ConsumeArgs, Format, PublishArgs};
use crate::http::render::percent_encode;

/// `antre publish`.
pub fn publish(args: PublishArgs, out: &mut dyn Write) -> anyhow::Result<()> {
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

/// How long `consume --follow` waits before asking again when the queue
/// was empty. Getting over HTTP has no way to wait for a message, so follow
/// polls; a quarter second keeps an idle follow at four requests a second.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Most messages one get asks for while following.
const FOLLOW_BATCH: usize = 100;

/// `antre consume`: takes up to `--count` messages once, or with
/// `--follow` keeps taking them as they arrive, one line each.
pub fn consume(args: ConsumeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
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
    let client = Client::new(&args.remote);
    let get = |count: usize| -> anyhow::Result<Vec<Value>> {
        let got = client.send(
            "POST",
            &path,
            Some(json!({ "count": count, "ackmode": ackmode, "encoding": "auto" })),
        )?;
        Ok(got.as_array().cloned().unwrap_or_default())
    };
    if !args.follow {
        let messages = get(args.count.unwrap_or(1))?;
        if args.remote.format == Format::Json {
            return print_json(out, &Value::Array(messages));
        }
        let mut t = Table::new(vec!["routing_key", "redelivered", "payload"]);
        for m in &messages {
            t.row(row(m));
        }
        write!(out, "{t}")?;
        return Ok(());
    }
    // Following: a requeued message would come straight back, forever.
    if args.requeue {
        anyhow::bail!("--follow takes messages for good; it cannot be combined with --requeue");
    }
    let mut left = args.count.unwrap_or(usize::MAX);
    while left > 0 {
        let messages = get(left.min(FOLLOW_BATCH))?;
        if messages.is_empty() {
            std::thread::sleep(FOLLOW_POLL);
            continue;
        }
        left -= messages.len().min(left);
        for m in &messages {
            if args.remote.format == Format::Json {
                writeln!(out, "{}", serde_json::to_string(m)?)?;
            } else {
                writeln!(out, "{}", row(m).join("  "))?;
            }
        }
        out.flush()?;
    }
    Ok(())
}

fn row(m: &Value) -> Vec<String> {
    vec![
        text(&m["routing_key"]),
        text(&m["redelivered"]),
        text(&m["payload"]),
    ]
}
