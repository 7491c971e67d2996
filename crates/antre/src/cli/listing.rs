//! `antre status` and the listings: `queues`, `exchanges`, `bindings`,
//! `connections`, `channels`, `consumers`.

use std::io::Write;

use serde_json::{json, Value};

use super::client::Client;
use super::table::{human_bytes, Table};
use super::{print_json, text, vhost_path, Format, Remote};

/// GETs a listing and prints `columns` (title, JSON pointer) of each item.
pub(super) fn list(
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

/// `antre queues`.
pub fn queues(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let columns = [
        ("name", "/name"),
        ("durable", "/durable"),
        ("messages", "/messages"),
        ("ready", "/messages_ready"),
        ("unacked", "/messages_unacknowledged"),
        ("consumers", "/consumers"),
        ("publish/s", "/message_stats/publish_details/rate"),
        ("deliver/s", "/message_stats/deliver_get_details/rate"),
        ("type", "/type"),
        ("leader", "/leader"),
    ];
    list(r, &format!("/api/queues/{}", vhost_path(r)), &columns, out)
}

/// `antre exchanges`.
pub fn exchanges(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let columns = [
        ("name", "/name"),
        ("type", "/type"),
        ("durable", "/durable"),
        ("auto_delete", "/auto_delete"),
        ("internal", "/internal"),
    ];
    let path = format!("/api/exchanges/{}", vhost_path(r));
    list(r, &path, &columns, out)
}

/// `antre bindings`.
pub fn bindings(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let columns = [
        ("source", "/source"),
        ("destination", "/destination"),
        ("type", "/destination_type"),
        ("routing_key", "/routing_key"),
    ];
    let path = format!("/api/bindings/{}", vhost_path(r));
    list(r, &path, &columns, out)
}

/// `antre connections`.
pub fn connections(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let columns = [
        ("name", "/name"),
        ("user", "/user"),
        ("node", "/node"),
        ("vhost", "/vhost"),
        ("channels", "/channels"),
        ("state", "/state"),
    ];
    list(r, "/api/connections", &columns, out)
}

/// `antre channels`.
pub fn channels(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let columns = [
        ("name", "/name"),
        ("user", "/user"),
        ("node", "/node"),
        ("consumers", "/consumer_count"),
        ("unacked", "/messages_unacknowledged"),
        ("prefetch", "/prefetch_count"),
    ];
    let path = format!("/api/vhosts/{}/channels", vhost_path(r));
    list(r, &path, &columns, out)
}

/// `antre consumers`.
pub fn consumers(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let columns = [
        ("queue", "/queue/name"),
        ("consumer_tag", "/consumer_tag"),
        ("channel", "/channel_details/name"),
        ("ack_required", "/ack_required"),
        ("prefetch", "/prefetch_count"),
        ("unacked", "/messages_unacknowledged"),
        ("activity", "/activity_status"),
    ];
    let path = format!("/api/consumers/{}", vhost_path(r));
    list(r, &path, &columns, out)
}

/// `antre status`.
pub fn status(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let client = Client::new(r);
    let o = client.get("/api/overview")?;
    let alarms = client.get_status("/api/health/checks/alarms")?;
    if r.format == Format::Json {
        return print_json(out, &json!({ "overview": o, "alarms": alarms.1 }));
    }
    let get = |p: &str| text(&o.pointer(p).cloned().unwrap_or(Value::Null));
    let bytes = |p: &str| human_bytes(o.pointer(p).and_then(Value::as_u64).unwrap_or(0));
    let mut t = Table::new(vec!["", ""]);
    t.row(vec![
        "product".into(),
        format!("{} {}", get("/product_name"), get("/product_version")),
    ]);
    t.row(vec!["node".into(), get("/node")]);
    t.row(vec![
        "uptime".into(),
        human_duration(o["uptime"].as_u64().unwrap_or(0) / 1000),
    ]);
    for l in o["listeners"].as_array().into_iter().flatten() {
        let ip = text(&l["ip_address"]);
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip
        };
        t.row(vec![
            format!("listener {}", text(&l["protocol"])),
            format!("{host}:{}", text(&l["port"])),
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
    t.row(vec!["memory".into(), bytes("/mem_used")]);
    t.row(vec![
        "disk free".into(),
        format!(
            "{} (alarm below {})",
            bytes("/disk_free"),
            bytes("/disk_free_limit")
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

/// `antre cluster join NODE ADDR`: adds the node (it catches up, then
/// votes).
pub fn cluster_join(r: &Remote, node: &str, addr: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let body = json!({ "name": node, "address": addr });
    Client::new(r).send("POST", "/api/cluster/members", Some(body))?;
    writeln!(out, "{node} at {addr} is a member")?;
    Ok(())
}

/// `antre cluster leave`: the node behind --url removes itself.
pub fn cluster_leave(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let client = Client::new(r);
    let nodes = client.get("/api/nodes")?;
    let me = nodes
        .as_array()
        .and_then(|l| l.iter().find(|n| n["this_node"] == json!(true)))
        .and_then(|n| n["name"].as_str())
        .ok_or_else(|| anyhow::anyhow!("{} is not a cluster member", r.url))?
        .to_owned();
    client.send(
        "DELETE",
        &format!(
            "/api/cluster/members/{}",
            crate::http::render::percent_encode(&me)
        ),
        None,
    )?;
    writeln!(out, "{me} left the cluster: stop it now")?;
    Ok(())
}

/// `antre cluster forget NODE`: removes a node (dead or alive).
pub fn cluster_forget(r: &Remote, node: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    Client::new(r).send(
        "DELETE",
        &format!(
            "/api/cluster/members/{}",
            crate::http::render::percent_encode(node)
        ),
        None,
    )?;
    writeln!(out, "{node} is no longer a member")?;
    Ok(())
}

/// `antre cluster status`: the members as the node behind `--url` sees
/// them (`GET /api/nodes`): reachability, the metadata leader, last
/// contact, and why a member is unreachable.
pub fn cluster_status(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let nodes = Client::new(r).get("/api/nodes")?;
    if r.format == Format::Json {
        return print_json(out, &nodes);
    }
    let list = nodes.as_array().cloned().unwrap_or_default();
    if list.len() == 1 && list[0].get("metadata_leader").is_none() {
        writeln!(
            out,
            "{} is a single node, not a cluster member",
            text(&list[0]["name"])
        )?;
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut t = Table::new(vec![
        "node",
        "address",
        "member",
        "running",
        "leader",
        "version",
        "last contact",
        "reason",
    ]);
    for n in &list {
        let contact = match n["last_contact"].as_u64() {
            Some(ms) => format!("{:.1}s ago", now.saturating_sub(ms) as f64 / 1000.0),
            None => "never".into(),
        };
        t.row(vec![
            text(&n["name"]),
            text(&n["cluster_listen"]),
            text(&n["cluster_member"]),
            match (
                n["running"] == json!(true),
                n["being_drained"] == json!(true),
            ) {
                (true, true) => "drained",
                (true, false) => "yes",
                (false, _) => "no",
            }
            .into(),
            if n["metadata_leader"] == json!(true) {
                "yes"
            } else {
                ""
            }
            .into(),
            n["version"].as_str().unwrap_or("").into(),
            contact,
            n["unreachable_reason"].as_str().unwrap_or("").into(),
        ]);
    }
    write!(out, "{t}")?;
    Ok(())
}

/// `antre cluster feature-flags`: each flag's state, and for one not
/// enabled, the members holding it back.
pub fn feature_flags(r: &Remote, out: &mut dyn Write) -> anyhow::Result<()> {
    let flags = Client::new(r).get("/api/feature-flags")?;
    if r.format == Format::Json {
        return print_json(out, &flags);
    }
    let mut t = Table::new(vec!["name", "state", "waiting for", "description"]);
    for f in flags.as_array().into_iter().flatten() {
        let waiting = f["waiting_for"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| format!("{} ({})", text(&w["node"]), text(&w["reason"])))
            .collect::<Vec<_>>()
            .join(", ");
        t.row(vec![
            text(&f["name"]),
            text(&f["state"]),
            waiting,
            text(&f["desc"]),
        ]);
    }
    write!(out, "{t}")?;
    Ok(())
}

/// `3d 4h 5m 6s`, leaving out leading zero units.
fn human_duration(mut secs: u64) -> String {
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size || !parts.is_empty() {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    parts.push(format!("{secs}s"));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(65), "1m 5s");
        assert_eq!(human_duration(90_061), "1d 1h 1m 1s");
        assert_eq!(human_duration(3_600), "1h 0m 0s");
    }
}
