//! The rabbitmq_prometheus plugin's metrics, same names, types and labels,
//! for the ones antre has the numbers for. RabbitMQ's "RabbitMQ-Overview"
//! Grafana dashboard reads only these (a test checks every name it
//! queries is here).
//!
//! Where antre's numbers mean something slightly different, the closest
//! honest value is given and docs/operations.md says so: the "Erlang"
//! uptime is the process's, and the memory limit is the machine's memory
//! (antre has no memory alarm, so publishers are blocked only when memory
//! runs out). The delivery counters are split by queue type (`queue_type`
//! label: classic, quorum, stream), as RabbitMQ's, and by protocol
//! (`protocol` label): AMQP 0-9-1, HTTP publishes included as RabbitMQ
//! counts its management API's, and RabbitMQ's stream protocol.

use antre_broker::metrics::{
    AuthAttempts, BrokerMetrics, Counter, DeadLetterMode, DeadLettered, DeliveryCounters,
};
use antre_broker::queue::{DeathReason, QueueKind};

use super::{objects, Endpoint, Page};
use crate::http::api::overview::{disk_alarm, disk_free, memory_alarm, resident_memory};
use crate::http::HttpState;
use crate::sockets::{fd_limit, open_fds};

/// The RabbitMQ version antre answers as (also in `/api/overview` and
/// definitions exports): the one release its behaviour is checked against.
pub use crate::config::RABBITMQ_VERSION;

const AMQP: (&str, &str) = ("protocol", "amqp091");
const STREAM_PROTOCOL: (&str, &str) = ("protocol", "stream");
/// One of a queue type's delivery counters.
type CounterOf = fn(&DeliveryCounters) -> &Counter;

/// The `queue_type` label RabbitMQ gives a queue type's counters (the
/// module that implements it).
fn queue_type(kind: QueueKind) -> (&'static str, &'static str) {
    let module = match kind {
        QueueKind::Classic => "rabbit_classic_queue",
        QueueKind::Quorum => "rabbit_quorum_queue",
        QueueKind::Stream => "rabbit_stream_queue",
    };
    ("queue_type", module)
}

/// Writes every `rabbitmq_*` metric.
pub fn render(p: &mut Page, state: &HttpState, endpoint: &Endpoint) {
    identity(p, state, endpoint);
    if !matches!(endpoint, Endpoint::Detailed(_)) {
        node(p, state);
        let consumers = totals(p, state);
        global(p, &state.broker.metrics, consumers);
        auth_attempts(p, &state.broker.metrics);
    }
    objects::queues(p, state, endpoint);
    objects::connections(p, state, endpoint);
    objects::raft(p, state, endpoint);
}

fn identity(p: &mut Page, state: &HttpState, endpoint: &Endpoint) {
    let node = state.node_name();
    let cluster = state.cluster_name();
    p.family(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    let endpoint = match endpoint {
        Endpoint::Aggregated => "metrics",
        Endpoint::PerObject => "per-object",
        Endpoint::Detailed(_) => "detailed",
    };
    p.sample(
        "rabbitmq_identity_info",
        &[
            ("rabbitmq_node", &node),
            ("rabbitmq_cluster", &cluster),
            ("rabbitmq_endpoint", endpoint),
        ],
        1,
    );
    p.family(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    );
    p.sample(
        "rabbitmq_build_info",
        &[
            ("rabbitmq_version", RABBITMQ_VERSION),
            ("erlang_version", "none"),
            ("product_name", "antre"),
            ("product_version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );
}

fn node(p: &mut Page, state: &HttpState) {
    let gauges: [(&str, &str, f64); 9] = [
        (
            "rabbitmq_erlang_uptime_seconds",
            "Node uptime (antre: the process's)",
            state.started.elapsed().as_secs_f64(),
        ),
        (
            "rabbitmq_process_resident_memory_bytes",
            "Memory used in bytes",
            resident_memory() as f64,
        ),
        (
            "rabbitmq_resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            state.alarms.memory_limit() as f64,
        ),
        (
            "rabbitmq_process_open_fds",
            "Open file descriptors",
            open_fds() as f64,
        ),
        (
            "rabbitmq_process_open_tcp_sockets",
            "Open TCP sockets",
            state.sockets.used() as f64,
        ),
        (
            "rabbitmq_process_max_fds",
            "Open file descriptors limit",
            fd_limit().unwrap_or(0) as f64,
        ),
        (
            "rabbitmq_process_max_tcp_sockets",
            "Open TCP sockets limit",
            state.sockets.total() as f64,
        ),
        (
            "rabbitmq_disk_space_available_bytes",
            "Disk space available in bytes",
            disk_free(state) as f64,
        ),
        (
            "rabbitmq_disk_space_available_limit_bytes",
            "Free disk space low watermark in bytes",
            state.alarms.disk_free_limit() as f64,
        ),
    ];
    for (name, help, value) in gauges {
        p.single(name, "gauge", help, value);
    }
    p.single(
        "rabbitmq_alarms_free_disk_space_watermark",
        "gauge",
        "is 1 if free disk space watermark alarm is in effect",
        u8::from(disk_alarm(state)),
    );
    p.single(
        "rabbitmq_alarms_memory_used_watermark",
        "gauge",
        "is 1 if VM memory watermark alarm is in effect",
        u8::from(memory_alarm(state)),
    );
}

/// Object counts and lifecycle counters; returns the number of consumers.
fn totals(p: &mut Page, state: &HttpState) -> u64 {
    let conns = state.registry.connections();
    let channels: usize = conns.iter().map(|c| c.channels().len()).sum();
    let (mut queues, mut consumers) = (0usize, 0u64);
    let (mut declared, mut created, mut deleted) = (0, 0, 0);
    for v in state.broker.vhosts() {
        for q in v.owned_queues() {
            queues += 1;
            consumers += u64::from(q.counts().consumers);
        }
        for s in v.streams() {
            queues += 1;
            consumers += u64::from(s.info().consumers);
        }
        let life = v.queue_lifecycle();
        declared += life.declared;
        created += life.created;
        deleted += life.deleted;
    }
    p.single(
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
        conns.len(),
    );
    p.single(
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
        channels,
    );
    p.single(
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
        consumers,
    );
    p.single("rabbitmq_queues", "gauge", "Queues available", queues);
    let t = state.registry.totals();
    let counters: [(&str, &str, u64); 7] = [
        (
            "rabbitmq_connections_opened_total",
            "Total number of connections opened",
            t.connections_opened,
        ),
        (
            "rabbitmq_connections_closed_total",
            "Total number of connections closed or terminated",
            t.connections_closed,
        ),
        (
            "rabbitmq_channels_opened_total",
            "Total number of channels opened",
            t.channels_opened,
        ),
        (
            "rabbitmq_channels_closed_total",
            "Total number of channels closed",
            t.channels_closed,
        ),
        (
            "rabbitmq_queues_declared_total",
            "Total number of queues declared",
            declared,
        ),
        (
            "rabbitmq_queues_created_total",
            "Total number of queues created",
            created,
        ),
        (
            "rabbitmq_queues_deleted_total",
            "Total number of queues deleted",
            deleted,
        ),
    ];
    for (name, help, value) in counters {
        p.single(name, "counter", help, value);
    }
    consumers
}

/// RabbitMQ's login counters, by protocol: what alerting on a burst of
/// failed logins reads.
fn auth_attempts(p: &mut Page, m: &BrokerMetrics) {
    type Count = fn(&AuthAttempts) -> u64;
    let families: [(&str, &str, Count); 3] = [
        (
            "rabbitmq_auth_attempts_total",
            "Total number of authorization attempts",
            |a| a.succeeded.get() + a.failed.get(),
        ),
        (
            "rabbitmq_auth_attempts_succeeded_total",
            "Total number of successful authentication attempts",
            |a| a.succeeded.get(),
        ),
        (
            "rabbitmq_auth_attempts_failed_total",
            "Total number of failed authentication attempts",
            |a| a.failed.get(),
        ),
    ];
    for (name, help, count) in families {
        p.family(name, "counter", help);
        for (protocol, attempts) in m.auth_attempts() {
            p.sample(name, &[("protocol", protocol)], count(attempts));
        }
    }
}

fn global(p: &mut Page, m: &BrokerMetrics, consumers: u64) {
    let unroutable = m.unroutable.get();
    let returned = m.returned.get();
    // The stream protocol's series, as RabbitMQ's stream plugin keeps them:
    // every publish there asks for a confirm; it counts nothing as routed,
    // and neither publishers nor consumers.
    let sp = &m.stream_protocol;
    let per_protocol: [(&str, &str, &str, u64, u64); 8] = [
        (
            "rabbitmq_global_messages_received_total",
            "counter",
            "Total number of messages received from publishers",
            m.published.get(),
            sp.received.get(),
        ),
        (
            "rabbitmq_global_messages_received_confirm_total",
            "counter",
            "Total number of messages received from publishers expecting confirmations",
            m.received_confirm.get(),
            sp.received.get(),
        ),
        (
            "rabbitmq_global_messages_routed_total",
            "counter",
            "Total number of messages routed to queues or streams",
            m.published.get().saturating_sub(unroutable),
            0,
        ),
        (
            "rabbitmq_global_messages_unroutable_dropped_total",
            "counter",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            unroutable.saturating_sub(returned),
            0,
        ),
        (
            "rabbitmq_global_messages_unroutable_returned_total",
            "counter",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            returned,
            0,
        ),
        (
            "rabbitmq_global_messages_confirmed_total",
            "counter",
            "Total number of messages confirmed to publishers",
            m.confirmed.get(),
            sp.confirmed.get(),
        ),
        (
            "rabbitmq_global_publishers",
            "gauge",
            "Current number of publishers",
            m.publishers.get(),
            0,
        ),
        (
            "rabbitmq_global_consumers",
            "gauge",
            "Current number of consumers",
            consumers,
            0,
        ),
    ];
    for (name, kind, help, amqp, stream) in per_protocol {
        p.family(name, kind, help);
        p.sample(name, &[AMQP], amqp);
        p.sample(name, &[STREAM_PROTOCOL], stream);
    }
    // The last column: the stream protocol's count, which delivers from
    // streams and counts only that.
    let delivered_by_stream = m.stream_protocol.delivered.get();
    let per_queue_type: [(&str, &str, CounterOf, u64); 8] = [
        (
            "rabbitmq_global_messages_delivered_total",
            "Total number of messages delivered to consumers",
            |c| &c.delivered,
            delivered_by_stream,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_auto_ack_total",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            |c| &c.delivered_consume_auto_ack,
            0,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            |c| &c.delivered_consume_manual_ack,
            0,
        ),
        (
            "rabbitmq_global_messages_delivered_get_auto_ack_total",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            |c| &c.delivered_get_auto_ack,
            0,
        ),
        (
            "rabbitmq_global_messages_delivered_get_manual_ack_total",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            |c| &c.delivered_get_manual_ack,
            0,
        ),
        (
            "rabbitmq_global_messages_get_empty_total",
            "Total number of times basic.get operations fetched no message",
            |c| &c.get_empty,
            0,
        ),
        (
            "rabbitmq_global_messages_redelivered_total",
            "Total number of messages redelivered to consumers",
            |c| &c.redelivered,
            0,
        ),
        (
            "rabbitmq_global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers",
            |c| &c.acked,
            0,
        ),
    ];
    for (name, help, counter, stream) in per_queue_type {
        p.family(name, "counter", help);
        for (kind, counters) in m.by_queue_type() {
            p.sample(name, &[AMQP, queue_type(kind)], counter(counters).get());
        }
        p.sample(
            name,
            &[STREAM_PROTOCOL, queue_type(QueueKind::Stream)],
            stream,
        );
    }
    dead_lettered(p, &m.dead_lettered);
    p.histogram_with(
        "rabbitmq_message_size_bytes",
        "Size of messages received from publishers",
        &[AMQP],
        &m.message_size.snapshot(),
        erlang_float,
    );
}

/// RabbitMQ's dead-letter counters, with the label sets it serves: a
/// classic queue has no delivery limit and no at-least-once strategy, and
/// a length limit never dead-letters at least once.
fn dead_lettered(p: &mut Page, d: &DeadLettered) {
    const CONFIRMED: &str = "rabbitmq_global_messages_dead_lettered_confirmed_total";
    p.family(
        CONFIRMED,
        "counter",
        "Total number of messages dead-lettered and confirmed by target queues",
    );
    p.sample(
        CONFIRMED,
        &[
            queue_type(QueueKind::Quorum),
            ("dead_letter_strategy", DeadLetterMode::AtLeastOnce.label()),
        ],
        d.confirmed.get(),
    );
    let reasons = [
        (
            "rabbitmq_global_messages_dead_lettered_delivery_limit_total",
            "Total number of messages dead-lettered due to delivery-limit exceeded",
            DeathReason::DeliveryLimit,
        ),
        (
            "rabbitmq_global_messages_dead_lettered_expired_total",
            "Total number of messages dead-lettered due to message TTL exceeded",
            DeathReason::Expired,
        ),
        (
            "rabbitmq_global_messages_dead_lettered_maxlen_total",
            "Total number of messages dead-lettered due to overflow drop-head or reject-publish-dlx",
            DeathReason::MaxLen,
        ),
        (
            "rabbitmq_global_messages_dead_lettered_rejected_total",
            "Total number of messages dead-lettered due to basic.reject or basic.nack",
            DeathReason::Rejected,
        ),
    ];
    for (name, help, reason) in reasons {
        p.family(name, "counter", help);
        for kind in [QueueKind::Classic, QueueKind::Quorum] {
            for mode in DeadLetterMode::ALL {
                let unserved = matches!(
                    (kind, mode, reason),
                    (QueueKind::Classic, DeadLetterMode::AtLeastOnce, _)
                        | (QueueKind::Classic, _, DeathReason::DeliveryLimit)
                        | (_, DeadLetterMode::AtLeastOnce, DeathReason::MaxLen)
                );
                if !unserved {
                    let labels = [queue_type(kind), ("dead_letter_strategy", mode.label())];
                    p.sample(name, &labels, d.get(kind, mode, reason));
                }
            }
        }
    }
}

/// A bucket bound as the Erlang Prometheus client writes it (`100.0`,
/// `1e+06`), which RabbitMQ's dashboards select by (`le="1e+06"`).
fn erlang_float(x: f64) -> String {
    if x.abs() < 1e6 {
        return format!("{x:.1}");
    }
    let exponent = x.abs().log10().floor() as i32;
    let mantissa = x / 10f64.powi(exponent);
    format!("{mantissa}e+{exponent:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_are_written_as_rabbitmqs_dashboards_select_them() {
        let written: Vec<String> = antre_broker::metrics::SIZE_BUCKETS
            .iter()
            .map(|b| erlang_float(*b as f64))
            .collect();
        assert_eq!(
            written,
            ["100.0", "1000.0", "10000.0", "100000.0", "1e+06", "1e+07", "5e+07", "1e+08"]
        );
    }

    #[test]
    fn process_numbers_come_from_proc() {
        assert!(open_fds() > 0);
        assert!(fd_limit().unwrap() >= open_fds());
    }
}
