//! antre's own metrics: an `antre_` prefix, base units (`_bytes`,
//! `_seconds`), `_total` for counters, per-queue series labelled `vhost`
//! and `queue`, and the latency histograms RabbitMQ has no names for.

use super::Page;
use crate::http::api::overview::{
    disk_alarm, disk_free, memory_alarm, object_totals, resident_memory,
};
use crate::http::HttpState;

/// Writes every `antre_*` metric.
pub fn render(p: &mut Page, state: &HttpState) {
    let m = &state.broker.metrics;
    p.family("antre_build_info", "gauge", "Version of the running antre.");
    p.sample(
        "antre_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    p.single(
        "antre_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
        state.started.elapsed().as_secs_f64(),
    );
    let counters: [(&str, &str, u64); 9] = [
        (
            "antre_messages_published_total",
            "Messages published by clients.",
            m.published.get(),
        ),
        (
            "antre_messages_delivered_total",
            "Messages delivered to consumers or fetched with basic.get.",
            m.delivered.get(),
        ),
        (
            "antre_messages_redelivered_total",
            "Deliveries that were redeliveries.",
            m.redelivered.get(),
        ),
        (
            "antre_messages_acked_total",
            "Messages acknowledged by consumers.",
            m.acked.get(),
        ),
        (
            "antre_messages_confirmed_total",
            "Publisher confirms sent (messages covered).",
            m.confirmed.get(),
        ),
        (
            "antre_messages_unroutable_total",
            "Published messages that matched no queue.",
            m.unroutable.get(),
        ),
        (
            "antre_messages_returned_total",
            "Unroutable mandatory messages returned to publishers.",
            m.returned.get(),
        ),
        (
            "antre_dead_letters_dropped_total",
            "Dead letters dropped because one operation caused more than the dead-letter budget allows.",
            m.dead_letters_dropped.get(),
        ),
        (
            "antre_cluster_internal_forwards_failed_total",
            "Dead letters and delayed messages for a queue on another cluster node that did not reach it.",
            m.internal_forwards_failed.get(),
        ),
    ];
    for (name, help, value) in counters {
        p.single(name, "counter", help, value);
    }
    let (connections, channels, exchanges, queues, consumers) = object_totals(state);
    p.single(
        "antre_connections",
        "gauge",
        "Open AMQP connections.",
        connections,
    );
    p.single("antre_channels", "gauge", "Open AMQP channels.", channels);
    p.single(
        "antre_consumers",
        "gauge",
        "Consumers on all queues.",
        consumers,
    );
    p.single("antre_queues", "gauge", "Queues in all vhosts.", queues);
    p.single(
        "antre_exchanges",
        "gauge",
        "Exchanges in all vhosts.",
        exchanges,
    );
    p.single(
        "antre_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the broker process.",
        resident_memory(),
    );
    p.single(
        "antre_memory_limit_bytes",
        "gauge",
        "The memory high watermark: above this much resident memory, publishers are blocked.",
        state.alarms.memory_limit(),
    );
    p.single(
        "antre_memory_alarm",
        "gauge",
        "1 while the memory alarm blocks publishers.",
        u8::from(memory_alarm(state)),
    );
    p.single(
        "antre_disk_free_bytes",
        "gauge",
        "Free bytes on the data directory's file system.",
        disk_free(state),
    );
    p.single(
        "antre_disk_free_limit_bytes",
        "gauge",
        "Below this much free disk space, publishers are blocked.",
        state.alarms.disk_free_limit(),
    );
    p.single(
        "antre_disk_free_alarm",
        "gauge",
        "1 while the free-disk alarm blocks publishers.",
        u8::from(disk_alarm(state)),
    );
    let sockets = &state.sockets;
    p.single(
        "antre_sockets_refused_total",
        "counter",
        "Client sockets closed at once because max_sockets or http_max_connections was reached with none idle.",
        sockets.refused_total(),
    );
    p.single(
        "antre_sockets_evicted_total",
        "counter",
        "Idle client sockets (HTTP with no request, AMQP in its handshake) closed to make room for new ones.",
        sockets.evicted_total(),
    );

    // A node exports the queues it owns, as RabbitMQ's nodes export the
    // queues they host: another member's copy would be a second series
    // of the same queue with its own (empty) figures.
    let mut all = Vec::new();
    for v in state.broker.vhosts() {
        all.extend(v.owned_queues());
    }
    all.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    type QueueValue = fn(&antre_broker::Queue) -> u64;
    let per_queue: [(&str, &str, &str, QueueValue); 9] = [
        (
            "antre_queue_messages_ready",
            "gauge",
            "Messages ready for delivery.",
            |q| u64::from(q.counts().ready),
        ),
        (
            "antre_queue_messages_unacked",
            "gauge",
            "Messages delivered and not yet acknowledged.",
            |q| u64::from(q.counts().unacked),
        ),
        (
            "antre_queue_consumers",
            "gauge",
            "Consumers of the queue.",
            |q| u64::from(q.counts().consumers),
        ),
        (
            "antre_queue_messages_dlx",
            "gauge",
            "Messages dead-lettered at least once that the queue keeps until their targets hold them (quorum queues).",
            |q| u64::from(q.dying().0),
        ),
        (
            "antre_queue_messages_ready_bytes",
            "gauge",
            "Body bytes of ready messages.",
            |q| q.ready_bytes(),
        ),
        (
            "antre_queue_messages_published_total",
            "counter",
            "Messages enqueued.",
            |q| q.metrics.published.get(),
        ),
        (
            "antre_queue_messages_delivered_total",
            "counter",
            "Messages delivered or fetched.",
            |q| q.metrics.delivered.get(),
        ),
        (
            "antre_queue_messages_redelivered_total",
            "counter",
            "Redeliveries.",
            |q| q.metrics.redelivered.get(),
        ),
        (
            "antre_queue_messages_acked_total",
            "counter",
            "Messages acknowledged.",
            |q| q.metrics.acked.get(),
        ),
    ];
    for (name, kind, help, value) in per_queue {
        p.family(name, kind, help);
        for q in &all {
            p.sample(name, &[("vhost", &q.vhost), ("queue", &q.name)], value(q));
        }
    }
    let mut streams = Vec::new();
    for v in state.broker.vhosts() {
        streams.extend(v.streams());
    }
    streams.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    let infos: Vec<_> = streams.iter().map(|s| (s, s.info())).collect();
    type StreamValue = fn(&antre_broker::stream::StreamInfo) -> u64;
    let per_stream: [(&str, &str, &str, StreamValue); 6] = [
        (
            "antre_stream_messages",
            "gauge",
            "Messages a stream holds.",
            |i| i.messages,
        ),
        (
            "antre_stream_bytes",
            "gauge",
            "Bytes of a stream's segments on disk.",
            |i| i.bytes,
        ),
        (
            "antre_stream_segments",
            "gauge",
            "Segment files of a stream.",
            |i| i.segments as u64,
        ),
        (
            "antre_stream_consumers",
            "gauge",
            "Consumers of a stream.",
            |i| u64::from(i.consumers),
        ),
        (
            "antre_stream_messages_published_total",
            "counter",
            "Messages appended to a stream.",
            |i| i.published,
        ),
        (
            "antre_stream_messages_delivered_total",
            "counter",
            "Messages delivered from a stream.",
            |i| i.delivered,
        ),
    ];
    for (name, kind, help, value) in per_stream {
        p.family(name, kind, help);
        for (s, info) in &infos {
            p.sample(
                name,
                &[("vhost", &s.vhost), ("stream", &s.name)],
                value(info),
            );
        }
    }
    p.histogram(
        "antre_store_fsync_seconds",
        "Duration of each group-commit fsync round of the message store.",
        &m.fsync_seconds.snapshot(),
    );
    p.histogram(
        "antre_confirm_latency_seconds",
        "Time from a persistent publish to its confirm.",
        &m.confirm_seconds.snapshot(),
    );
}
