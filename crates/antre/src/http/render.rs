//! The JSON shape of each object, with RabbitMQ's field names, shared by
//! the listing and detail handlers so a queue looks the same everywhere.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use antre_broker::channel::PublishMode;
use antre_broker::definitions::table_to_json;
use antre_broker::exchange::{Binding, Destination, Exchange};
use antre_broker::{ConsumerInfo, Queue};
use serde_json::{json, Value};

use super::HttpState;
use crate::registry::ConnectionEntry;

/// The node name antre reports (RabbitMQ's `rabbit@host`), fixed when
/// first asked, as RabbitMQ's is at boot. Every queue's row names its
/// node: reading the host name from disk for each one was 9% of a listing
/// of 10,000 queues.
pub fn node_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("antre@{host}")
    })
    .clone()
}

/// `{"rate": r}`, RabbitMQ's `*_details` object.
pub fn details(rate: f64) -> Value {
    json!({ "rate": (rate * 100.0).round() / 100.0 })
}

/// RabbitMQ's `message_stats`: each counter (name, count, rate per
/// second) and its `*_details` rate.
pub fn message_stats(counters: &[(&str, u64, f64)]) -> Value {
    let mut out = serde_json::Map::new();
    for &(name, count, rate) in counters {
        out.insert(name.to_owned(), json!(count));
        out.insert(format!("{name}_details"), details(rate));
    }
    Value::Object(out)
}

/// A time (ms since the epoch) as RabbitMQ's API writes one:
/// `2026-12-07T10:33:26.359+00:00`.
pub fn timestamp(ms: u64) -> Option<String> {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+00:00"
    );
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    at.format(FORMAT).ok()
}

/// A queue.
pub fn queue(state: &HttpState, q: &Arc<Queue>) -> Value {
    let s = q.stats();
    let r = state.rates.queue(&q.vhost, &q.name);
    let m = &q.metrics;
    let consumers = if s.consumers > 0 {
        q.consumers()
    } else {
        Vec::new()
    };
    let exclusive_consumer_tag = consumers
        .iter()
        .find(|c| c.exclusive)
        .map(|c| c.tag.clone());
    let single_active_consumer_tag = consumers
        .iter()
        .find(|c| c.activity == antre_broker::queue::Activity::SingleActive)
        .map(|c| c.tag.clone());
    let (all, in_memory, paged_out) = (s.messages(), s.in_memory(), s.paged_out());
    let utilisation = state.rates.utilisation(q, &s);
    let policy = q.policy();
    let mut row = json!({
        "name": q.name,
        "vhost": q.vhost,
        "durable": q.options.durable,
        "auto_delete": q.options.auto_delete,
        "exclusive": q.options.exclusive_owner.is_some(),
        "owner_pid_details": q.options.exclusive_owner
            .and_then(|id| state.registry.get(id))
            .map(|conn| json!({ "name": conn.name, "peer_host": conn.peer.ip().to_string(), "peer_port": conn.peer.port() })),
        "arguments": table_to_json(&q.options.arguments),
        "node": node_name(),
        "type": q.kind().as_str(),
        "policy": policy.policy_name(),
        "operator_policy": policy.operator_name(),
        "effective_policy_definition": policy.definition(),
        "state": "running",
        "messages": all.count,
        "messages_details": details(r.ready + r.unacked),
        "messages_ready": s.ready.count,
        "messages_ready_details": details(r.ready),
        "messages_unacknowledged": s.unacked.count,
        "messages_unacknowledged_details": details(r.unacked),
        "messages_persistent": s.persistent.count,
        "messages_ram": in_memory.count,
        "messages_ready_ram": s.ready_in_memory.count,
        "messages_unacknowledged_ram": s.unacked_in_memory.count,
        "messages_paged_out": paged_out.count,
        "message_bytes": all.bytes,
        "message_bytes_ready": s.ready.bytes,
        "message_bytes_unacknowledged": s.unacked.bytes,
        "message_bytes_persistent": s.persistent.bytes,
        "message_bytes_ram": in_memory.bytes,
        "message_bytes_paged_out": paged_out.bytes,
        "head_message_timestamp": s.head_timestamp,
        "memory": s.memory,
        "consumers": s.consumers,
        "consumer_utilisation": utilisation,
        "consumer_capacity": utilisation,
        "exclusive_consumer_tag": exclusive_consumer_tag,
        "single_active_consumer_tag": single_active_consumer_tag,
        "message_stats": message_stats(&[
            ("publish", m.published.get(), r.publish),
            ("deliver_get", m.delivered.get(), r.deliver_get),
            ("deliver", m.consumed(), r.deliver),
            ("deliver_no_ack", m.consumed_no_ack.get(), r.deliver_no_ack),
            ("get", m.got.get(), r.get),
            ("get_no_ack", m.got_no_ack.get(), r.get_no_ack),
            ("get_empty", m.get_empty.get(), r.get_empty),
            ("redeliver", m.redelivered.get(), r.redeliver),
            ("ack", m.acked.get(), r.ack),
        ]),
    });
    if let Some(since) = state.rates.idle_since(&q.vhost, &q.name) {
        row["idle_since"] = json!(timestamp(since));
    }
    if q.kind() == antre_broker::queue::QueueKind::Quorum {
        // RabbitMQ's: messages dead-lettered at least once that the queue
        // keeps until their targets hold them.
        let (dying, bytes) = q.dying();
        row["messages_dlx"] = json!(dying);
        row["message_bytes_dlx"] = json!(bytes);
    }
    row
}

/// A stream, in the shape of RabbitMQ's stream queues (`type: stream`,
/// its messages all "ready"), with antre's stream fields: `first_offset`,
/// `last_offset` (null while empty), `segments` and `message_bytes` (on
/// disk).
pub fn stream(s: &antre_broker::stream::Stream) -> Value {
    let info = s.info();
    let policy = s.policy();
    json!({
        "name": s.name,
        "vhost": s.vhost,
        "durable": true,
        "auto_delete": false,
        "exclusive": false,
        "owner_pid_details": null,
        "arguments": table_to_json(&s.arguments),
        "node": node_name(),
        "type": "stream",
        "policy": policy.policy_name(),
        "operator_policy": policy.operator_name(),
        "effective_policy_definition": policy.definition(),
        "state": "running",
        "messages": info.messages,
        "messages_details": details(0.0),
        "messages_ready": info.messages,
        "messages_ready_details": details(0.0),
        "messages_unacknowledged": 0,
        "messages_unacknowledged_details": details(0.0),
        "message_bytes": info.bytes,
        "consumers": info.consumers,
        "exclusive_consumer_tag": null,
        "first_offset": info.first_offset,
        "last_offset": info.last_offset,
        "segments": info.segments,
        "message_stats": {
            "publish": info.published,
            "publish_details": details(0.0),
            "deliver_get": info.delivered,
            "deliver_get_details": details(0.0),
            // Acks only give credit back and nothing is redelivered: zero,
            // present so tools reading queues need no special case.
            "ack": 0,
            "ack_details": details(0.0),
            "redeliver": 0,
            "redeliver_details": details(0.0),
        },
    })
}

/// A consumer of a stream, with the offset of the next message it gets.
pub fn stream_consumer(
    state: &HttpState,
    s: &antre_broker::stream::Stream,
    info: &antre_broker::stream::StreamConsumerInfo,
) -> Value {
    let conn = state.registry.get(info.connection);
    let channel_details = conn.as_ref().map(|c| {
        json!({
            "name": channel_name(c, info.channel),
            "number": info.channel,
            "connection_name": c.name,
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
            "user": c.user,
        })
    });
    json!({
        "consumer_tag": info.tag,
        "queue": { "name": s.name, "vhost": s.vhost },
        "channel_details": channel_details,
        "ack_required": true,
        "exclusive": false,
        "prefetch_count": info.prefetch,
        "messages_unacknowledged": info.unacked,
        "active": info.activity.active(),
        "activity_status": info.activity.as_str(),
        "arguments": {},
        "offset": info.offset,
    })
}

/// What channels published through an exchange: messages in and their
/// copies out to queues, with rates per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExchangeFlow {
    /// Messages published to it (`publish_in`).
    pub publish_in: u64,
    /// Their copies it routed to queues (`publish_out`).
    pub publish_out: u64,
    /// Their rates.
    pub rates: [f64; 2],
}

impl ExchangeFlow {
    /// Adds another node's.
    pub fn add(&mut self, other: &ExchangeFlow) {
        self.publish_in += other.publish_in;
        self.publish_out += other.publish_out;
        self.rates[0] += other.rates[0];
        self.rates[1] += other.rates[1];
    }
}

/// An exchange; `policy` only when one applies, as in RabbitMQ, and
/// `message_stats` once something was published to it, with `publish_out`
/// once something was routed out.
pub fn exchange(vhost: &str, e: &Exchange, flow: Option<&ExchangeFlow>) -> Value {
    let mut json = json!({
        "name": e.name,
        "vhost": vhost,
        "type": e.type_name,
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": table_to_json(&e.arguments),
    });
    if let Some(policy) = e.policy.policy_name() {
        json["policy"] = json!(policy);
    }
    if let Some(flow) = flow.filter(|f| f.publish_in > 0) {
        let mut counters = vec![("publish_in", flow.publish_in, flow.rates[0])];
        if flow.publish_out > 0 {
            counters.push(("publish_out", flow.publish_out, flow.rates[1]));
        }
        json["message_stats"] = message_stats(&counters);
    }
    json
}

/// The part of a binding's URL that identifies it among the bindings with
/// the same ends: the routing key (`~` if empty), and a hash of the
/// arguments if any (the scheme of RabbitMQ's `properties_key`). Clients
/// percent-encode it in URLs.
pub fn properties_key(routing_key: &str, arguments: &antre_amqp::FieldTable) -> String {
    let key = if routing_key.is_empty() {
        "~".to_owned()
    } else {
        routing_key.to_owned()
    };
    if arguments.iter().next().is_none() {
        return key;
    }
    let text = serde_json::to_string(&table_to_json(arguments)).unwrap_or_default();
    // FNV-1a: stable across runs and versions, unlike std's hasher.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{key}~{hash:016x}")
}

/// Percent-encodes everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A binding from `source`.
pub fn binding(vhost: &str, source: &str, b: &Binding) -> Value {
    let (destination, kind) = match &b.destination {
        Destination::Queue(q) => (q.as_str(), "queue"),
        Destination::Exchange(e) => (e.as_str(), "exchange"),
    };
    json!({
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": kind,
        "routing_key": b.routing_key,
        "arguments": table_to_json(&b.arguments),
        "properties_key": properties_key(&b.routing_key, &b.arguments),
    })
}

/// The implicit binding of the default exchange to a queue.
pub fn default_binding(vhost: &str, queue: &str) -> Value {
    json!({
        "source": "",
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": queue,
        "arguments": {},
        "properties_key": queue,
    })
}

/// A connection.
pub fn connection(state: &HttpState, c: &ConnectionEntry) -> Value {
    let (recv_rate, send_rate) = state.rates.connection(c.id);
    let blocked = c.blocked.load(Ordering::Relaxed);
    let mut out = json!({
        "name": c.name,
        "node": state.node_name(),
        "vhost": c.vhost,
        "user": c.user,
        // RabbitMQ 3.10's field of the same: the user who opened it.
        "user_who_performed_action": c.user,
        "state": if blocked { "blocked" } else { "running" },
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": c.auth_mechanism,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "host": c.local.ip().to_string(),
        "port": c.local.port(),
        "connected_at": c.connected_at,
        "channels": c.channels().len(),
        "channel_max": c.channel_max,
        "frame_max": c.frame_max,
        "timeout": c.heartbeat,
        "client_properties": table_to_json(&c.client_properties),
        "recv_oct": c.recv_oct.load(Ordering::Relaxed),
        "recv_oct_details": details(recv_rate),
        "send_oct": c.send_oct.load(Ordering::Relaxed),
        "send_oct_details": details(send_rate),
        "recv_cnt": c.recv_cnt.get(),
        "send_cnt": c.send_cnt.get(),
        "send_pend": c.send_pend.load(Ordering::Relaxed),
    });
    add_tls(&mut out, c.tls.as_ref());
    out
}

/// RabbitMQ's TLS fields of a connection: null where it is not TLS or
/// has no client certificate.
fn add_tls(out: &mut Value, tls: Option<&crate::tls::TlsInfo>) {
    let peer = tls.and_then(|t| t.peer.as_ref());
    let fields = [
        ("ssl", json!(tls.is_some())),
        ("ssl_protocol", json!(tls.map(|t| &t.protocol))),
        ("ssl_key_exchange", json!(tls.map(|t| &t.key_exchange))),
        ("ssl_cipher", json!(tls.map(|t| &t.cipher))),
        ("ssl_hash", json!(tls.map(|t| &t.hash))),
        ("peer_cert_subject", json!(peer.map(|p| &p.subject))),
        ("peer_cert_issuer", json!(peer.map(|p| &p.issuer))),
        ("peer_cert_validity", json!(peer.map(|p| &p.validity))),
    ];
    for (key, value) in fields {
        out[key] = value;
    }
}

/// RabbitMQ's channel name: `CONNECTION (NUMBER)`.
pub fn channel_name(c: &ConnectionEntry, number: u16) -> String {
    format!("{} ({number})", c.name)
}

fn connection_details(c: &ConnectionEntry) -> Value {
    json!({
        "name": c.name,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
    })
}

/// Every consumer of every queue in the broker, with its queue.
pub fn all_consumers(state: &HttpState) -> Vec<(Arc<Queue>, ConsumerInfo)> {
    let mut out = Vec::new();
    for v in state.broker.vhosts() {
        for q in v.queues() {
            for c in q.consumers() {
                out.push((Arc::clone(&q), c));
            }
        }
    }
    out
}

/// A channel of this node (`node`). Its consumer count, prefetch and
/// unacked messages come from the consumers queues report for it.
pub fn channel(
    state: &HttpState,
    c: &ConnectionEntry,
    number: u16,
    consumers: &[(Arc<Queue>, ConsumerInfo)],
) -> Value {
    let mine: Vec<&ConsumerInfo> = consumers
        .iter()
        .map(|(_, info)| info)
        .filter(|info| info.connection == c.id && info.channel == number)
        .collect();
    let unacked: u64 = mine.iter().map(|i| u64::from(i.unacked)).sum();
    let (mode, stats) = c.channel(number).unwrap_or_default();
    let (prefetch, global_prefetch) = stats.prefetch();
    let (messages_uncommitted, acks_uncommitted) = stats.uncommitted();
    let rates = state.rates.channel(c.id, number);
    let counters: Vec<(&str, u64, f64)> = stats
        .counters()
        .into_iter()
        .zip(rates)
        .map(|((name, count), rate)| (name, count, rate))
        .collect();
    let mut row = json!({
        "name": channel_name(c, number),
        "number": number,
        "node": state.node_name(),
        "vhost": c.vhost,
        "user": c.user,
        // RabbitMQ 3.10's field of the same: the user who opened it.
        "user_who_performed_action": c.user,
        "state": "running",
        "connection_details": connection_details(c),
        "consumer_count": mine.len(),
        "confirm": mode == PublishMode::Confirm,
        "transactional": mode == PublishMode::Transactional,
        "messages_unacknowledged": unacked,
        "messages_unconfirmed": stats.unconfirmed(),
        "messages_uncommitted": messages_uncommitted,
        "acks_uncommitted": acks_uncommitted,
        "prefetch_count": prefetch,
        "global_prefetch_count": global_prefetch,
        "message_stats": message_stats(&counters),
    });
    // As a queue's: only for a channel at rest (RabbitMQ's, which finds
    // the channels a client opened and forgot).
    if let Some(since) = state.rates.channel_idle_since(c.id, number) {
        row["idle_since"] = json!(timestamp(since));
    }
    row
}

/// A consumer.
pub fn consumer(state: &HttpState, q: &Queue, info: &ConsumerInfo) -> Value {
    let conn = state.registry.get(info.connection);
    let channel_details = match conn.as_ref() {
        Some(c) => json!({
            "name": channel_name(c, info.channel),
            "number": info.channel,
            "connection_name": c.name,
            "node": state.node_name(),
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
            "user": c.user,
        }),
        // A client of another cluster node, through its proxy channel
        // here: its channel is on that node.
        None => match state.broker.forwarded_from(info.connection) {
            Some(from) => json!({
                "name": format!("forwarded by cluster node {}", from.node),
                "number": info.channel,
                "connection_name": format!("cluster node {}", from.node),
                "node": from.node.as_ref(),
                "user": from.user.as_ref(),
            }),
            None => Value::Null,
        },
    };
    json!({
        "consumer_tag": info.tag,
        "queue": { "name": q.name, "vhost": q.vhost },
        "channel_details": channel_details,
        "ack_required": !info.no_ack,
        "exclusive": info.exclusive,
        "prefetch_count": info.prefetch,
        "messages_unacknowledged": info.unacked,
        "active": info.activity.active(),
        "activity_status": info.activity.as_str(),
        "arguments": {},
    })
}
