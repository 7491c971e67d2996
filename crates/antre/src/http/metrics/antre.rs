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
    let counters: [(&str, &str, u64); 10] = [
        (
            "antre_messages_published_total",
            "Messages published by clients.",
            m.published.get(),
        ),
        (
            "antre_messages_delivered_total",
            "Messages delivered to consumers or fetched with basic.get.",
            m.total(|c| &c.delivered),
        ),
        (
            "antre_messages_redelivered_total",
            "Deliveries that were redeliveries.",
            m.total(|c| &c.redelivered),
        ),
        (
            "antre_messages_acked_total",
            "Messages acknowledged by consumers.",
            m.total(|c| &c.acked),
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
        (
            "antre_cluster_forwarded_publishes_sent_again_total",
            "Messages forwarded to a quorum queue's leader and sent again because that leader died or no longer led the queue with them on their way.",
            m.forwards_sent_again.get(),
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
        "antre_node_being_drained",
        "gauge",
        "1 while the node is in maintenance mode (antre cluster drain): it takes no clients and leads no queue.",
        u8::from(state.maintenance.draining()),
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
    cluster(p, state);
}

/// A cluster node's view of the cluster: which members answer, its member
/// of the metadata group, and which quorum queue and stream replicas it
/// leads (RabbitMQ's `rabbitmq_raft_*` give each replica's log).
fn cluster(p: &mut Page, state: &HttpState) {
    let Some(cluster) = &state.cluster else {
        return;
    };
    let status = cluster.status();
    let now = std::time::SystemTime::now();
    p.family(
        "antre_cluster_node_running",
        "gauge",
        "1 for each cluster member this node heard from within 5 s (itself included), 0 for the others.",
    );
    for m in &status.members {
        p.sample(
            "antre_cluster_node_running",
            &[("node", &m.name)],
            u8::from(m.running),
        );
    }
    p.family(
        "antre_cluster_node_drained",
        "gauge",
        "1 for each cluster member the metadata records as drained (maintenance mode; it stays so for one stopped while drained), 0 for the others.",
    );
    for m in &status.members {
        p.sample(
            "antre_cluster_node_drained",
            &[("node", &m.name)],
            u8::from(state.broker.node_drained(&m.name)),
        );
    }
    p.family(
        "antre_cluster_node_last_contact_seconds",
        "gauge",
        "Seconds since this node last heard from each cluster member (0 for itself).",
    );
    for m in &status.members {
        if let Some(at) = m.last_contact {
            let ago = now.duration_since(at).unwrap_or_default();
            p.sample(
                "antre_cluster_node_last_contact_seconds",
                &[("node", &m.name)],
                ago.as_secs_f64(),
            );
        }
    }
    let meta = cluster.metadata_raft();
    p.single(
        "antre_metadata_leader",
        "gauge",
        "1 while this node leads the metadata group.",
        u8::from(meta.leader),
    );
    let figures: [(&str, &str, &str, u64); 5] = [
        (
            "antre_metadata_raft_term_total",
            "counter",
            "The metadata group's current Raft term on this node.",
            meta.term,
        ),
        (
            "antre_metadata_raft_log_snapshot_index",
            "gauge",
            "The last index this node's metadata snapshot covers.",
            meta.snapshot.unwrap_or(0),
        ),
        (
            "antre_metadata_raft_log_last_applied_index",
            "gauge",
            "The last metadata log index this node applied.",
            meta.last_applied.unwrap_or(0),
        ),
        (
            "antre_metadata_raft_log_commit_index",
            "gauge",
            "The last metadata log index this node knows committed.",
            meta.log.committed.unwrap_or(0),
        ),
        (
            "antre_metadata_raft_log_last_written_index",
            "gauge",
            "The last metadata log index durably written on this node.",
            meta.log.last_written.unwrap_or(0),
        ),
    ];
    for (name, kind, help, value) in figures {
        p.single(name, kind, help, value);
    }
    p.single(
        "antre_metadata_raft_entry_commit_latency_seconds",
        "gauge",
        "How long the newest committed metadata entry took from this node's log to its commit.",
        meta.log.commit_latency.unwrap_or_default().as_secs_f64(),
    );
    let replicas = cluster.queue_groups.raft_figures();
    p.family(
        "antre_raft_member_leader",
        "gauge",
        "1 for each quorum queue or stream replica on this node that leads its group, 0 for the others.",
    );
    for (vhost, queue, f) in &replicas {
        p.sample(
            "antre_raft_member_leader",
            &[("vhost", vhost), ("queue", queue)],
            u8::from(f.leader),
        );
    }
}
