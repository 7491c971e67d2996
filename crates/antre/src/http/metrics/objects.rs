//! Queue, connection and channel metrics under RabbitMQ's names, written
//! three ways as RabbitMQ writes them: summed into one series
//! (`/metrics`), one series per object (`/metrics/per-object`), or only
//! the requested families, per object, under `rabbitmq_detailed_` names
//! (`/metrics/detailed?family=queue_coarse_metrics&vhost=/`).
//!
//! Each metric belongs to the rabbitmq_prometheus families it is in there,
//! so `family=` selects the same metrics. RabbitMQ labels connection and
//! channel series with `channel`, an Erlang process id; antre puts the
//! connection's or channel's name there.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use antre_broker::queue::QueueStats;
use antre_broker::Queue;
use antre_cluster::RaftFigures;

use super::{Endpoint, Page};
use crate::http::render;
use crate::http::HttpState;

/// One metric: its name after `rabbitmq_` (or `rabbitmq_detailed_`), type,
/// help and the families `/metrics/detailed` knows it by.
struct Metric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    families: &'static [&'static str],
}

/// Where a metric is written on this page, if at all.
struct Writer<'a> {
    endpoint: &'a Endpoint,
    written: HashSet<String>,
}

impl Writer<'_> {
    /// The full name, or None when the page leaves the metric out (not
    /// requested, or already written for another requested family).
    fn name(&mut self, m: &Metric) -> Option<String> {
        let name = match self.endpoint {
            Endpoint::Aggregated | Endpoint::PerObject => format!("rabbitmq_{}", m.name),
            Endpoint::Detailed(d) => {
                if !m.families.iter().any(|f| d.families.iter().any(|w| w == f)) {
                    return None;
                }
                format!("rabbitmq_detailed_{}", m.name)
            }
        };
        self.written.insert(name.clone()).then_some(name)
    }

    /// Writes `m` from per-object rows of (label value, value).
    fn write<T>(&mut self, p: &mut Page, m: &Metric, label: &str, rows: &[(Vec<&str>, T)])
    where
        T: Copy + std::iter::Sum + std::fmt::Display,
    {
        let Some(name) = self.name(m) else {
            return;
        };
        p.family(&name, m.kind, m.help);
        if matches!(self.endpoint, Endpoint::Aggregated) {
            p.sample(&name, &[], rows.iter().map(|(_, v)| *v).sum::<T>());
            return;
        }
        let keys: Vec<&str> = label.split(',').collect();
        for (labels, value) in rows {
            let pairs: Vec<(&str, &str)> =
                keys.iter().copied().zip(labels.iter().copied()).collect();
            p.sample(&name, &pairs, value);
        }
    }
}

/// The queues the page covers (those this node owns, see
/// [`antre_broker::Vhost::owned_queues`]), sorted by vhost and name.
fn sorted_queues(state: &HttpState, endpoint: &Endpoint) -> Vec<Arc<Queue>> {
    let mut all: Vec<Arc<Queue>> = state
        .broker
        .vhosts()
        .iter()
        .filter(|v| match endpoint {
            Endpoint::Detailed(d) => d.vhosts.is_empty() || d.vhosts.contains(&v.name),
            _ => true,
        })
        .flat_map(|v| v.owned_queues())
        .collect();
    all.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    all
}

/// How a queue metric is read from a queue's figures (None: the queue
/// has no value, and no series).
type QueueValue = fn(&QueueRow) -> Option<f64>;

/// A queue's figures and its consumers' utilisation, read once per page.
struct QueueRow {
    stats: QueueStats,
    utilisation: f64,
}

impl std::ops::Deref for QueueRow {
    type Target = QueueStats;

    fn deref(&self) -> &QueueStats {
        &self.stats
    }
}

/// A queue metric of the `queue_metrics` family.
const fn detail(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: "gauge",
        help,
        families: &["queue_metrics"],
    }
}

fn n(v: u64) -> Option<f64> {
    Some(v as f64)
}

const QUEUE_METRICS: [(Metric, QueueValue); 19] = [
    (
        Metric {
            name: "queue_messages_ready",
            kind: "gauge",
            help: "Messages ready to be delivered to consumers",
            families: &["queue_coarse_metrics"],
        },
        |s| n(s.ready.count),
    ),
    (
        Metric {
            name: "queue_messages_unacked",
            kind: "gauge",
            help: "Messages delivered to consumers but not yet acknowledged",
            families: &["queue_coarse_metrics"],
        },
        |s| n(s.unacked.count),
    ),
    (
        Metric {
            name: "queue_messages",
            kind: "gauge",
            help: "Sum of ready and unacknowledged messages - total queue depth",
            families: &["queue_coarse_metrics"],
        },
        |s| n(s.messages().count),
    ),
    (
        Metric {
            name: "queue_consumers",
            kind: "gauge",
            help: "Consumers on a queue",
            families: &["queue_consumer_count", "queue_metrics"],
        },
        |s| n(u64::from(s.consumers)),
    ),
    (
        detail(
            "queue_process_memory_bytes",
            "Memory in bytes used by the Erlang queue process",
        ),
        |s| n(s.memory),
    ),
    (
        detail("queue_consumer_utilisation", "Consumer utilisation"),
        |s| Some(s.utilisation),
    ),
    (
        detail("queue_consumer_capacity", "Consumer capacity"),
        |s| Some(s.utilisation),
    ),
    (
        detail(
            "queue_messages_ram",
            "Ready and unacknowledged messages stored in memory",
        ),
        |s| n(s.in_memory().count),
    ),
    (
        detail(
            "queue_messages_ram_bytes",
            "Size of ready and unacknowledged messages stored in memory",
        ),
        |s| n(s.in_memory().bytes),
    ),
    (
        detail(
            "queue_messages_ready_ram",
            "Ready messages stored in memory",
        ),
        |s| n(s.ready_in_memory.count),
    ),
    (
        detail(
            "queue_messages_unacked_ram",
            "Unacknowledged messages stored in memory",
        ),
        |s| n(s.unacked_in_memory.count),
    ),
    (
        detail("queue_messages_persistent", "Persistent messages"),
        |s| n(s.persistent.count),
    ),
    (
        detail(
            "queue_messages_persistent_bytes",
            "Size in bytes of persistent messages",
        ),
        |s| n(s.persistent.bytes),
    ),
    (
        detail(
            "queue_messages_bytes",
            "Size in bytes of ready and unacknowledged messages",
        ),
        |s| n(s.messages().bytes),
    ),
    (
        detail(
            "queue_messages_ready_bytes",
            "Size in bytes of ready messages",
        ),
        |s| n(s.ready.bytes),
    ),
    (
        detail(
            "queue_messages_unacked_bytes",
            "Size in bytes of all unacknowledged messages",
        ),
        |s| n(s.unacked.bytes),
    ),
    (
        detail("queue_messages_paged_out", "Messages paged out to disk"),
        |s| n(s.paged_out().count),
    ),
    (
        detail(
            "queue_messages_paged_out_bytes",
            "Size in bytes of messages paged out to disk",
        ),
        |s| n(s.paged_out().bytes),
    ),
    (
        detail(
            "queue_head_message_timestamp",
            "Timestamp of the first message in the queue, if any",
        ),
        |s| s.head_timestamp.map(|t| t as f64),
    ),
];

/// Queue metrics, labelled `vhost` and `queue` per object.
pub fn queues(p: &mut Page, state: &HttpState, endpoint: &Endpoint) {
    let all: Vec<(Arc<Queue>, QueueRow)> = sorted_queues(state, endpoint)
        .into_iter()
        .map(|q| {
            let stats = q.stats();
            let utilisation = state.rates.utilisation(&q, &stats);
            (q, QueueRow { stats, utilisation })
        })
        .collect();
    let mut w = Writer {
        endpoint,
        written: HashSet::new(),
    };
    for (metric, value) in &QUEUE_METRICS {
        let rows: Vec<(Vec<&str>, f64)> = all
            .iter()
            .filter_map(|(q, s)| Some((vec![q.vhost.as_str(), q.name.as_str()], value(s)?)))
            .collect();
        w.write(p, metric, "vhost,queue", &rows);
    }
}

const CONNECTION_METRICS: [Metric; 3] = [
    Metric {
        name: "connection_incoming_bytes_total",
        kind: "counter",
        help: "Total number of bytes received on a connection",
        families: &["connection_coarse_metrics"],
    },
    Metric {
        name: "connection_outgoing_bytes_total",
        kind: "counter",
        help: "Total number of bytes sent on a connection",
        families: &["connection_coarse_metrics"],
    },
    Metric {
        name: "connection_channels",
        kind: "gauge",
        help: "Channels on a connection",
        families: &["connection_metrics"],
    },
];

const CHANNEL_METRICS: [Metric; 6] = [
    Metric {
        name: "channel_consumers",
        kind: "gauge",
        help: "Consumers on a channel",
        families: &["channel_metrics"],
    },
    Metric {
        name: "channel_messages_unacked",
        kind: "gauge",
        help: "Delivered but not yet acknowledged messages",
        families: &["channel_metrics"],
    },
    Metric {
        name: "channel_messages_unconfirmed",
        kind: "gauge",
        help: "Published but not yet confirmed messages",
        families: &["channel_metrics"],
    },
    Metric {
        name: "channel_messages_uncommitted",
        kind: "gauge",
        help: "Messages received in a transaction but not yet committed",
        families: &["channel_metrics"],
    },
    Metric {
        name: "channel_acks_uncommitted",
        kind: "gauge",
        help: "Message acknowledgements in a transaction not yet committed",
        families: &["channel_metrics"],
    },
    Metric {
        name: "channel_prefetch",
        kind: "gauge",
        help: "Total limit of unacknowledged messages for all consumers on a channel",
        families: &["channel_metrics"],
    },
];

/// Each channel's counters: the metric, and the counter of
/// [`antre_broker::channel::ChannelStats::counters`] it reads. Summed in
/// `/metrics` over the open channels only, as RabbitMQ's (a closed
/// channel's go with it; the `global` ones keep them).
const CHANNEL_COUNTERS: [(Metric, &str); 11] = [
    (
        Metric {
            name: "channel_messages_published_total",
            kind: "counter",
            help: "Total number of messages published into an exchange on a channel",
            families: &["channel_exchange_metrics"],
        },
        "publish",
    ),
    (
        Metric {
            name: "channel_messages_confirmed_total",
            kind: "counter",
            help: "Total number of messages published into an exchange and confirmed on the channel",
            families: &["channel_exchange_metrics"],
        },
        "confirm",
    ),
    (
        Metric {
            name: "channel_messages_unroutable_returned_total",
            kind: "counter",
            help: "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            families: &["channel_exchange_metrics"],
        },
        "return_unroutable",
    ),
    (
        Metric {
            name: "channel_messages_unroutable_dropped_total",
            kind: "counter",
            help: "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            families: &["channel_exchange_metrics"],
        },
        "drop_unroutable",
    ),
    (
        Metric {
            name: "channel_get_ack_total",
            kind: "counter",
            help: "Total number of messages fetched with basic.get in manual acknowledgement mode",
            families: &["channel_queue_metrics"],
        },
        "get",
    ),
    (
        Metric {
            name: "channel_get_total",
            kind: "counter",
            help: "Total number of messages fetched with basic.get in automatic acknowledgement mode",
            families: &["channel_queue_metrics"],
        },
        "get_no_ack",
    ),
    (
        Metric {
            name: "channel_messages_delivered_ack_total",
            kind: "counter",
            help: "Total number of messages delivered to consumers in manual acknowledgement mode",
            families: &["channel_queue_metrics"],
        },
        "deliver",
    ),
    (
        Metric {
            name: "channel_messages_delivered_total",
            kind: "counter",
            help: "Total number of messages delivered to consumers in automatic acknowledgement mode",
            families: &["channel_queue_metrics"],
        },
        "deliver_no_ack",
    ),
    (
        Metric {
            name: "channel_messages_redelivered_total",
            kind: "counter",
            help: "Total number of messages redelivered to consumers",
            families: &["channel_queue_metrics"],
        },
        "redeliver",
    ),
    (
        Metric {
            name: "channel_messages_acked_total",
            kind: "counter",
            help: "Total number of messages acknowledged by consumers",
            families: &["channel_queue_metrics"],
        },
        "ack",
    ),
    (
        Metric {
            name: "channel_get_empty_total",
            kind: "counter",
            help: "Total number of times basic.get operations fetched no message",
            families: &["channel_queue_metrics"],
        },
        "get_empty",
    ),
];

/// Connection and channel metrics, labelled `channel` per object.
pub fn connections(p: &mut Page, state: &HttpState, endpoint: &Endpoint) {
    let conns: Vec<_> = state
        .registry
        .connections()
        .into_iter()
        .filter(|c| match endpoint {
            Endpoint::Detailed(d) => d.vhosts.is_empty() || d.vhosts.contains(&c.vhost),
            _ => true,
        })
        .collect();
    let consumers = render::all_consumers(state);
    let per_connection: Vec<(String, Vec<u64>)> = conns
        .iter()
        .map(|c| {
            let values = vec![
                c.recv_oct.load(Ordering::Relaxed),
                c.send_oct.load(Ordering::Relaxed),
                c.channels().len() as u64,
            ];
            (c.name.clone(), values)
        })
        .collect();
    let mut per_channel: Vec<(String, Vec<u64>)> = Vec::new();
    for c in &conns {
        for n in c.channels() {
            let (mut count, mut unacked, mut prefetch) = (0u64, 0u64, 0u64);
            let mine = consumers
                .iter()
                .map(|(_, i)| i)
                .filter(|i| i.connection == c.id && i.channel == n);
            for i in mine {
                count += 1;
                unacked += u64::from(i.unacked);
                prefetch = prefetch.max(u64::from(i.prefetch));
            }
            let Some((_, stats)) = c.channel(n) else {
                continue;
            };
            let (messages, acks) = stats.uncommitted();
            let mut values = vec![
                count,
                unacked,
                stats.unconfirmed(),
                messages,
                acks,
                prefetch,
            ];
            let counters = stats.counters();
            values.extend(CHANNEL_COUNTERS.iter().map(|(_, name)| {
                counters
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0, |&(_, v)| v)
            }));
            per_channel.push((render::channel_name(c, n), values));
        }
    }
    let mut w = Writer {
        endpoint,
        written: HashSet::new(),
    };
    let connection: Vec<&Metric> = CONNECTION_METRICS.iter().collect();
    let channel: Vec<&Metric> = CHANNEL_METRICS
        .iter()
        .chain(CHANNEL_COUNTERS.iter().map(|(m, _)| m))
        .collect();
    for (metrics, objects) in [(connection, &per_connection), (channel, &per_channel)] {
        for (column, metric) in metrics.iter().enumerate() {
            let rows: Vec<(Vec<&str>, u64)> = objects
                .iter()
                .map(|(name, values)| (vec![name.as_str()], values[column]))
                .collect();
            w.write(p, metric, "channel", &rows);
        }
    }
}

/// How a Raft metric is read from a member's figures.
type RaftValue = fn(&RaftFigures) -> u64;

/// RabbitMQ 3.10's Raft metrics of a quorum queue member (its `ra_metrics`
/// family), but the commit latency, which is in seconds.
const RAFT_METRICS: [(Metric, RaftValue); 5] = [
    (
        Metric {
            name: "raft_term_total",
            kind: "counter",
            help: "Current Raft term number",
            families: &["ra_metrics"],
        },
        |f| f.term,
    ),
    (
        Metric {
            name: "raft_log_snapshot_index",
            kind: "gauge",
            help: "Raft log snapshot index",
            families: &["ra_metrics"],
        },
        |f| f.snapshot.unwrap_or(0),
    ),
    (
        Metric {
            name: "raft_log_last_applied_index",
            kind: "gauge",
            help: "Raft log last applied index",
            families: &["ra_metrics"],
        },
        |f| f.last_applied.unwrap_or(0),
    ),
    (
        Metric {
            name: "raft_log_commit_index",
            kind: "gauge",
            help: "Raft log commit index",
            families: &["ra_metrics"],
        },
        |f| f.log.committed.unwrap_or(0),
    ),
    (
        Metric {
            name: "raft_log_last_written_index",
            kind: "gauge",
            help: "Raft log last written index",
            families: &["ra_metrics"],
        },
        |f| f.log.last_written.unwrap_or(0),
    ),
];

const RAFT_COMMIT_LATENCY: Metric = Metric {
    name: "raft_entry_commit_latency_seconds",
    kind: "gauge",
    help: "Time taken for a log entry to be committed",
    families: &["ra_metrics"],
};

/// The Raft figures of every quorum queue and stream member on this node,
/// labelled `vhost` and `queue` per object: each member reports its own
/// log, as each RabbitMQ node reports its Ra servers. Summed into one
/// series on `/metrics`, as RabbitMQ 3.10 does. Nothing on a node outside
/// a cluster, whose queues have no Raft log.
pub fn raft(p: &mut Page, state: &HttpState, endpoint: &Endpoint) {
    let Some(cluster) = &state.cluster else {
        return;
    };
    let mut members = cluster.queue_groups.raft_figures();
    members.retain(|(vhost, _, _)| match endpoint {
        Endpoint::Detailed(d) => d.vhosts.is_empty() || d.vhosts.contains(vhost),
        _ => true,
    });
    let mut w = Writer {
        endpoint,
        written: HashSet::new(),
    };
    for (metric, value) in &RAFT_METRICS {
        let rows: Vec<(Vec<&str>, u64)> = members
            .iter()
            .map(|(vhost, queue, f)| (vec![vhost.as_str(), queue.as_str()], value(f)))
            .collect();
        w.write(p, metric, "vhost,queue", &rows);
    }
    let rows: Vec<(Vec<&str>, f64)> = members
        .iter()
        .map(|(vhost, queue, f)| {
            let latency = f.log.commit_latency.unwrap_or_default();
            (vec![vhost.as_str(), queue.as_str()], latency.as_secs_f64())
        })
        .collect();
    w.write(p, &RAFT_COMMIT_LATENCY, "vhost,queue", &rows);
}
