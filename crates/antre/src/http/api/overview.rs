//! `/api/overview`, `/api/nodes`, `/api/whoami` and the health checks.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::rates::{node_counters, OverviewSample};
use crate::http::render::{details, message_stats};
use crate::http::{AuthUser, HttpState};
use antre_cluster::wire::Listing;

pub use crate::alarm::resident_memory;

/// Free bytes on the data directory's file system.
pub fn disk_free(state: &HttpState) -> u64 {
    fs4::available_space(&state.config.data_dir).unwrap_or(0)
}

/// Whether the free-disk alarm is raised.
pub fn disk_alarm(state: &HttpState) -> bool {
    state.alarms.state().disk
}

/// Whether the memory alarm is raised.
pub fn memory_alarm(state: &HttpState) -> bool {
    state.alarms.state().memory
}

/// Object counts: (connections, channels, exchanges, queues, consumers).
/// Consumers are those of the queues this node owns (on another member a
/// queue's consumers are that member's to count).
pub fn object_totals(state: &HttpState) -> (usize, usize, usize, usize, usize) {
    let conns = state.registry.connections();
    let channels = conns.iter().map(|c| c.channels().len()).sum();
    let (mut exchanges, mut queues, mut consumers) = (0, 0, 0);
    for v in state.broker.vhosts() {
        exchanges += v.exchange_count();
        queues += v.queues().len();
        for q in v.owned_queues() {
            consumers += q.counts().consumers as usize;
        }
    }
    (conns.len(), channels, exchanges, queues, consumers)
}

/// Messages (ready, unacknowledged) in the queues this node owns: the
/// copy a quorum queue's follower keeps is its leader's to count.
fn owned_messages(state: &HttpState) -> (u64, u64) {
    state
        .broker
        .vhosts()
        .iter()
        .map(|v| owned_messages_in(v))
        .fold((0, 0), |(r, u), (vr, vu)| (r + vr, u + vu))
}

/// Messages (ready, unacknowledged) in the queues of `v` this node owns.
pub(crate) fn owned_messages_in(v: &antre_broker::Vhost) -> (u64, u64) {
    let (mut ready, mut unacked) = (0u64, 0u64);
    for q in v.owned_queues() {
        let c = q.counts();
        ready += u64::from(c.ready);
        unacked += u64::from(c.unacked);
    }
    (ready, unacked)
}

fn samples(history: &[OverviewSample], pick: impl Fn(&OverviewSample) -> u64) -> Value {
    // Newest first, as RabbitMQ lists them.
    history
        .iter()
        .rev()
        .map(|s| json!({ "timestamp": s.timestamp, "sample": pick(s) }))
        .collect()
}

/// GET /api/overview. With `msg_rates_age` or `lengths_age` (seconds), the
/// `*_details` objects also carry `samples` over that age, for charts.
pub async fn overview(
    State(state): State<HttpState>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    let r = state.rates.overview();
    let (mut connections, mut channels, exchanges, queues, mut consumers) = object_totals(&state);
    let (mut ready, mut unacked) = owned_messages(&state);
    let counters = node_counters(&state.broker, &state.registry);
    let mut message_stats = node_message_stats(&state, &counters);
    let mut churn_rates = node_figures(&state, &counters, &CHURN);
    let (mut ready_rate, mut unacked_rate) = (r.ready, r.unacked);
    // In a cluster the totals are the cluster's, as RabbitMQ's are: each
    // member's connections, channels, message counters and rates, and the
    // messages and consumers of the queues it owns (a member that does
    // not answer in time is left out). Exchanges and queues are
    // definitions every member has.
    for info in other_nodes_info(&state).await.into_iter().flatten() {
        let n = |k: &str| info.get(k).and_then(Value::as_u64).unwrap_or(0);
        connections += n("connections") as usize;
        channels += n("channels") as usize;
        consumers += n("consumers") as usize;
        ready += n("messages_ready");
        unacked += n("messages_unacknowledged");
        let rate = |k: &str| info.get(k).and_then(|d| d["rate"].as_f64()).unwrap_or(0.0);
        ready_rate += rate("messages_ready_details");
        unacked_rate += rate("messages_unacknowledged_details");
        if let Some(theirs) = info.get("message_stats").and_then(Value::as_object) {
            add_message_stats(&mut message_stats, theirs);
        }
        // A node's churn counters are top-level fields of its row.
        add_message_stats(&mut churn_rates, &info);
    }
    let mut body = json!({
        "management_version": env!("CARGO_PKG_VERSION"),
        "product_name": "antre",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rabbitmq_version": crate::http::metrics::rabbitmq::RABBITMQ_VERSION,
        "cluster_name": state.cluster_name(),
        "node": state.node_name(),
        "uptime": state.started.elapsed().as_millis() as u64,
        "rates_mode": "basic",
        "sample_interval": state.config.rate_interval.as_secs_f64(),
        "message_stats": message_stats,
        "churn_rates": churn_rates,
        "exchange_types": exchange_types(),
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": details(ready_rate + unacked_rate),
            "messages_ready": ready,
            "messages_ready_details": details(ready_rate),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": details(unacked_rate),
        },
        "object_totals": {
            "connections": connections,
            "channels": channels,
            "exchanges": exchanges,
            "queues": queues,
            "consumers": consumers,
        },
        "listeners": listeners(&state),
        "mem_used": resident_memory(),
        "mem_limit": state.alarms.memory_limit(),
        "mem_alarm": memory_alarm(&state),
        "disk_free": disk_free(&state),
        "disk_free_limit": state.alarms.disk_free_limit(),
        "disk_free_alarm": disk_alarm(&state),
    });
    let age = ["msg_rates_age", "lengths_age"]
        .iter()
        .filter_map(|k| query.get(*k)?.parse::<u64>().ok())
        .max();
    if let Some(age) = age {
        let history = cluster_samples(&state, state.rates.history(Duration::from_secs(age))).await;
        let ms = &mut body["message_stats"];
        ms["publish_details"]["samples"] = samples(&history, |s| s.publish);
        ms["deliver_get_details"]["samples"] = samples(&history, |s| s.deliver_get);
        ms["ack_details"]["samples"] = samples(&history, |s| s.ack);
        ms["redeliver_details"]["samples"] = samples(&history, |s| s.redeliver);
        let qt = &mut body["queue_totals"];
        qt["messages_details"]["samples"] = samples(&history, |s| s.ready + s.unacked);
        qt["messages_ready_details"]["samples"] = samples(&history, |s| s.ready);
        qt["messages_unacknowledged_details"]["samples"] = samples(&history, |s| s.unacked);
    }
    Json(body)
}

/// This node's chart samples as rows for its peers ([`Listing::Samples`]):
/// every one it keeps.
pub(crate) fn own_samples(state: &HttpState) -> Vec<Value> {
    let all = state
        .rates
        .history(Duration::from_secs(u64::from(u32::MAX)));
    all.iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect()
}

/// In a cluster, the cluster's chart samples, as the overview's totals
/// beside them are the cluster's: each member's counters added to
/// `ours` at our sample times (a member that does not answer in time is
/// left out).
async fn cluster_samples(state: &HttpState, ours: Vec<OverviewSample>) -> Vec<OverviewSample> {
    let others: Vec<Vec<OverviewSample>> =
        super::peers::other_members_rows(state, Listing::Samples, None, None)
            .await
            .into_iter()
            .map(|rows| {
                let sample = |row| serde_json::from_value(row).ok();
                rows.into_iter().filter_map(sample).collect()
            })
            .collect();
    if others.is_empty() {
        return ours;
    }
    let slack = state.config.rate_interval.as_millis() as u64 / 2;
    crate::http::rates::cluster_history(ours, &others, slack)
}

/// Those of this node's counters `all` ([`node_counters`], read once per
/// answer) named in `names`, with their rates, in the `message_stats`
/// shape.
fn node_figures(state: &HttpState, all: &[(&'static str, u64)], names: &[&str]) -> Value {
    let counters: Vec<(&str, u64, f64)> = all
        .iter()
        .filter(|(name, _)| names.contains(name))
        .map(|&(name, count)| (name, count, state.rates.node(name)))
        .collect();
    message_stats(&counters)
}

/// The churn counters, RabbitMQ's overview `churn_rates` and a node's
/// top-level fields.
const CHURN: [&str; 7] = [
    "connection_created",
    "connection_closed",
    "channel_created",
    "channel_closed",
    "queue_declared",
    "queue_created",
    "queue_deleted",
];

/// This node's message counters and their rates, in the overview's
/// `message_stats` shape.
fn node_message_stats(state: &HttpState, counters: &[(&'static str, u64)]) -> Value {
    let m = &state.broker.metrics;
    let r = state.rates.overview();
    let mut stats = node_figures(
        state,
        counters,
        &[
            "deliver",
            "deliver_no_ack",
            "get",
            "get_no_ack",
            "get_empty",
        ],
    );
    let base = message_stats(&[
        ("publish", m.published.get(), r.publish),
        ("deliver_get", m.total(|c| &c.delivered), r.deliver_get),
        ("redeliver", m.total(|c| &c.redelivered), r.redeliver),
        ("ack", m.total(|c| &c.acked), r.ack),
        ("confirm", m.confirmed.get(), r.confirm),
        ("return_unroutable", m.returned.get(), r.return_unroutable),
        (
            "drop_unroutable",
            m.unroutable.get().saturating_sub(m.returned.get()),
            r.drop_unroutable,
        ),
    ]);
    if let (Some(stats), Value::Object(base)) = (stats.as_object_mut(), base) {
        stats.extend(base);
    }
    stats
}

/// Adds another member's `message_stats` to `ours`: counters and rates.
pub(crate) fn add_message_stats(ours: &mut Value, theirs: &serde_json::Map<String, Value>) {
    let Some(ours) = ours.as_object_mut() else {
        return;
    };
    for (key, mine) in ours.iter_mut() {
        let Some(theirs) = theirs.get(key) else {
            continue;
        };
        if let (Some(a), Some(b)) = (mine.as_u64(), theirs.as_u64()) {
            *mine = json!(a + b);
        } else if let (Some(a), Some(b)) = (mine["rate"].as_f64(), theirs["rate"].as_f64()) {
            *mine = details(a + b);
        }
    }
}

/// RabbitMQ's `exchange_types`: every type antre routes with.
fn exchange_types() -> Vec<Value> {
    antre_broker::exchange::EXCHANGE_TYPES
        .iter()
        .map(|(name, description)| json!({"name": name, "description": description, "enabled": true}))
        .collect()
}

/// RabbitMQ's `auth_mechanisms`: the SASL mechanisms connection.start
/// offers; EXTERNAL only where a client can present a certificate the
/// node verifies (a TLS listener with a CA).
fn auth_mechanisms(state: &HttpState) -> Value {
    let external = state.config.tls.as_ref().is_some_and(|t| t.ca.is_some());
    json!([
        {"name": "PLAIN", "description": "SASL PLAIN authentication mechanism", "enabled": true},
        {"name": "AMQPLAIN", "description": "QPid AMQPLAIN mechanism", "enabled": true},
        {"name": "EXTERNAL", "description": "SASL EXTERNAL authentication mechanism, with the TLS client certificate's common name", "enabled": external},
    ])
}

/// Login attempts by protocol, as RabbitMQ's `/api/auth/attempts/{node}`
/// lists them: the protocols with any.
fn auth_attempts(state: &HttpState) -> Value {
    state
        .broker
        .metrics
        .auth_attempts()
        .iter()
        .map(|(protocol, a)| (protocol, a.succeeded.get(), a.failed.get()))
        .filter(|&(_, ok, failed)| ok + failed > 0)
        .map(|(protocol, ok, failed)| {
            json!({
                "protocol": protocol,
                "auth_attempts": ok + failed,
                "auth_attempts_failed": failed,
                "auth_attempts_succeeded": ok,
            })
        })
        .collect()
}

/// GET /api/auth/attempts/{node}: RabbitMQ's login counts of a node, by
/// protocol (404 for no such node; a member of an older version that
/// reports none: an empty list).
pub async fn node_auth_attempts(
    State(state): State<HttpState>,
    Path(node): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = known_node_row(&state, &node).await?;
    Ok(Json(match &row["auth_attempts"] {
        Value::Array(rows) => Value::Array(rows.clone()),
        _ => json!([]),
    }))
}

/// GET /api/auth/attempts/{node}/source: by source address, which
/// RabbitMQ keeps only with `track_auth_attempt_source` (off by default)
/// and antre does not keep: an empty list, as RabbitMQ's default answers.
pub async fn node_auth_attempts_by_source(
    State(state): State<HttpState>,
    Path(node): Path<String>,
) -> ApiResult<Json<Value>> {
    known_node_row(&state, &node).await?;
    Ok(Json(json!([])))
}

/// RabbitMQ's `listeners`: one per protocol and address.
fn listeners(state: &HttpState) -> Value {
    super::health::listeners(state)
        .iter()
        .map(|l| {
            json!({
                "node": state.node_name(),
                "protocol": l.protocol,
                "ip_address": l.addr.ip().to_string(),
                "port": l.addr.port(),
            })
        })
        .collect()
}

/// How long `/api/nodes` waits for another member's figures: a node
/// that is slower than this shows as running but without them, rather
/// than holding the whole listing up.
pub(crate) const NODE_INFO_TIMEOUT: Duration = Duration::from_secs(1);

/// GET /api/nodes: this node, and in a cluster every other member with
/// what this node knows of it (running, metadata leader, last contact)
/// and the figures it reports itself (memory, disk, alarms, connections),
/// as RabbitMQ's management API shows every node of its cluster.
pub async fn nodes(State(state): State<HttpState>) -> Json<Value> {
    let mut local = local_node(&state);
    let Some(cluster) = &state.cluster else {
        return Json(json!([local]));
    };
    let status = cluster.status();
    let ms = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
    };
    let figures = members_info(cluster, &status).await;
    let nodes: Vec<Value> = status
        .members
        .iter()
        .zip(figures)
        .map(|(m, figures)| {
            let cluster_fields = json!({
                "cluster_listen": m.addr.map(|a| a.to_string()),
                "cluster_member": if m.voter { "voter" } else { "learner" },
                "this_node": m.this_node,
                "metadata_leader": m.leader,
                // The Raft term this node is in (on its own entry): a term
                // that grows with no node failing is an election too many.
                "metadata_term": m.this_node.then_some(status.term),
                "last_contact": ms(m.last_contact),
                "unreachable_reason": m.error,
                // Checks of whether the node died (after a connection it
                // opened to this one closed): a figure that keeps growing
                // with every node up means links that keep closing.
                "liveness_probes": (!m.this_node).then_some(m.probes),
                // Requests it sent this node over the cluster link (the
                // heartbeats of many queues in one message count once).
                "link_requests": (!m.this_node).then_some(m.requests),
                // Each quorum queue's heartbeats it sent this node, batched
                // or not: a leader paces an idle queue's at a third of the
                // busy rate.
                "queue_heartbeats": (!m.this_node).then_some(m.queue_heartbeats),
                // Each idle quorum queue's leases it sent this node: what
                // its leader sends instead of heartbeats once it is idle.
                "queue_leases": (!m.this_node).then_some(m.queue_leases),
                // Whether the metadata, as this node has applied it, records
                // the node as drained: new queues are then not placed there.
                // The node records its own state; until it has, this can
                // differ from the `being_drained` it reports.
                "maintenance_recorded": state.broker.node_drained(&m.name),
            });
            let mut node = if m.this_node {
                std::mem::take(&mut local)
            } else {
                let mut node = json!({ "type": "disc" });
                if let (Some(node), Some(figures)) = (node.as_object_mut(), figures) {
                    node.extend(figures);
                }
                node
            };
            node["name"] = json!(m.name);
            node["running"] = json!(m.this_node || m.running);
            if node.get("being_drained").is_none() {
                // A node that does not answer: the metadata's record, as
                // RabbitMQ shows a stopped node drained before it stopped.
                node["being_drained"] = json!(state.broker.node_drained(&m.name));
            }
            if let (Some(node), Value::Object(extra)) = (node.as_object_mut(), cluster_fields) {
                node.extend(extra);
            }
            node
        })
        .collect();
    Json(Value::Array(nodes))
}

/// Each member's figures as it reports them, in `status`'s order: `None`
/// for this node, one not running, or one that does not answer within
/// [`NODE_INFO_TIMEOUT`].
async fn members_info(
    cluster: &antre_cluster::Cluster,
    status: &antre_cluster::ClusterStatus,
) -> Vec<Option<serde_json::Map<String, Value>>> {
    let remote = status.members.iter().map(|m| async move {
        if m.this_node || !m.running {
            return None;
        }
        match cluster.node_info(&m.name, NODE_INFO_TIMEOUT).await {
            Ok(Value::Object(info)) => Some(info),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(node = %m.name, "no figures from {}: {e}", m.name);
                None
            }
        }
    });
    futures::future::join_all(remote).await
}

/// The other members' figures (none on a single node).
async fn other_nodes_info(state: &HttpState) -> Vec<Option<serde_json::Map<String, Value>>> {
    match &state.cluster {
        Some(cluster) => members_info(cluster, &cluster.status()).await,
        None => Vec::new(),
    }
}

/// The quorum queue replicas this node runs and how many of them it
/// leads: what a rebalance evens out.
pub(crate) fn quorum_counts(cluster: &antre_cluster::Cluster, node: &mut Value) {
    let me = &cluster.link.config.node_name;
    let groups = cluster.queue_groups.running();
    let leading = groups
        .iter()
        .filter(|g| cluster.queue_groups.leader_of(g).as_ref() == Some(me))
        .count();
    node["quorum_replicas"] = json!(groups.len());
    node["quorum_leaders"] = json!(leading);
    // Replicas whose Raft timer runs: the leaders of queues busy within
    // the last second (an idle queue costs no timer on any member).
    node["quorum_ticking"] = json!(cluster.queue_groups.ticking());
}

/// This node as `/api/nodes` shows it.
pub(crate) fn local_node(state: &HttpState) -> Value {
    let (connections, channels, _, queues, consumers) = object_totals(state);
    let (ready, unacked) = owned_messages(state);
    let rates = state.rates.overview();
    let counters = node_counters(&state.broker, &state.registry);
    let churn = node_figures(state, &counters, &CHURN);
    let mut node = json!({
        "name": state.node_name(),
        "type": "disc",
        "running": true,
        // The version this node runs: in a rolling upgrade, which nodes
        // are upgraded (an older version's entry may lack it).
        "version": env!("CARGO_PKG_VERSION"),
        // RabbitMQ's field: the node is in maintenance mode.
        "being_drained": state.maintenance.draining(),
        "uptime": state.started.elapsed().as_millis() as u64,
        "mem_used": resident_memory(),
        "mem_limit": state.alarms.memory_limit(),
        "mem_alarm": memory_alarm(state),
        "disk_free": disk_free(state),
        "disk_free_limit": state.alarms.disk_free_limit(),
        "disk_free_alarm": disk_alarm(state),
        "connections": connections,
        "channels": channels,
        "queues": queues,
        // Of the queues this node owns, and this node's counters and
        // rates: what the cluster's overview adds up.
        "consumers": consumers,
        "messages_ready": ready,
        "messages_ready_details": details(rates.ready),
        "messages_unacknowledged": unacked,
        "messages_unacknowledged_details": details(rates.unacked),
        "message_stats": node_message_stats(state, &counters),
        "data_dir": state.config.data_dir.display().to_string(),
        // RabbitMQ's names for the same: its data directory, the OS
        // process, the cores the node may use.
        "db_dir": state.config.data_dir.display().to_string(),
        "os_pid": std::process::id().to_string(),
        "processors": std::thread::available_parallelism().map_or(1, usize::from),
        "fd_used": crate::sockets::open_fds(),
        "fd_total": crate::sockets::fd_limit(),
        "sockets_used": state.sockets.used(),
        "sockets_total": state.sockets.total(),
        // RabbitMQ lists the nodes it is partitioned from, which stay so
        // until an operator heals them; antre's Raft groups heal by
        // themselves once the network does, so there is never one to list
        // (a node it cannot reach shows as not running).
        "partitions": [],
        // What RabbitMQ's node row also says of what the node offers,
        // which tools read from it (not only from the overview).
        "exchange_types": exchange_types(),
        "auth_mechanisms": auth_mechanisms(state),
        "rates_mode": "basic",
        // What `/api/auth/attempts/{node}` answers for this node, read by
        // whichever member is asked.
        "auth_attempts": auth_attempts(state),
    });
    // RabbitMQ's churn counters, `connection_created` and the rest, with
    // their `*_details`, are fields of the node's row.
    if let (Some(node), Value::Object(churn)) = (node.as_object_mut(), churn) {
        node.extend(churn);
    }
    if let Some(cluster) = &state.cluster {
        quorum_counts(cluster, &mut node);
        node["feature_flags"] = json!(cluster.supported_feature_flags());
    }
    node
}

/// GET /api/whoami.
pub async fn whoami(Extension(user): Extension<AuthUser>) -> Json<Value> {
    Json(json!({ "name": user.name, "tags": user.tags }))
}

/// GET /api/health/checks/alarms: 200 `{"status":"ok"}` or 503 with the
/// alarms in effect, in RabbitMQ's words and shape.
pub async fn alarms(
    State(state): State<HttpState>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let raised = state.alarms.state();
    let resources = [(raised.disk, "disk space"), (raised.memory, "memory")];
    let alarms: Vec<Value> = resources
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, resource)| json!({ "node": state.node_name(), "resource": resource }))
        .collect();
    if !alarms.is_empty() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "failed",
                "reason": "There are alarms in effect in the cluster",
                "alarms": alarms,
            })),
        ));
    }
    Ok(Json(json!({ "status": "ok" })))
}

/// GET /api/nodes/{node}: one row of [`nodes`] (404 for no such node), as
/// monitoring that watches one node's memory and alarms asks RabbitMQ.
pub async fn node(
    State(state): State<HttpState>,
    Path(node): Path<String>,
) -> ApiResult<Json<Value>> {
    known_node_row(&state, &node).await.map(Json)
}

/// [`node_row`], or 404 for no such node.
async fn known_node_row(state: &HttpState, name: &str) -> ApiResult<Value> {
    node_row(state, name)
        .await
        .ok_or_else(|| ApiError::not_found(format!("no node '{name}'")))
}

/// Node `name`'s row of [`nodes`], if it is this node or a member.
///
/// Tools that build RabbitMQ's default node name, `rabbit@HOST` (Debian's
/// nagios-plugins-rabbitmq ask `/api/nodes/rabbit@HOST` with the host or
/// `--node` given), find the node named HOST (a cluster member `n1` as
/// `rabbit@n1`) or antre's own single-node name `antre@HOST`.
pub(crate) async fn node_row(state: &HttpState, name: &str) -> Option<Value> {
    let Json(all) = nodes(State(state.clone())).await;
    let rows = all.as_array()?;
    let exact = rows.iter().find(|r| r["name"] == name);
    let host = name.strip_prefix("rabbit@");
    let aliased = || {
        let host = host?;
        let ours = format!("antre@{host}");
        rows.iter()
            .find(|r| r["name"] == host || r["name"] == ours.as_str())
    };
    exact.or_else(aliased).cloned()
}

/// GET /api/healthchecks/node: RabbitMQ's health check from before 3.8's
/// `/api/health/checks/*`, deprecated there and still answered by 3.10,
/// which older monitoring (load balancer probes, Nagios plugins) still
/// calls. As 3.10 answers it: 200 `{"status":"ok"}`, or 503 with
/// `status: failed` and the node's resource alarms in RabbitMQ's words.
///
/// This node's own figures only: a load balancer probes often, and need
/// not wait for the other members' (up to a second for one that is down).
pub async fn legacy_node_check(State(state): State<HttpState>) -> Response {
    legacy_check(&local_node(&state), &state.node_name())
}

/// GET /api/healthchecks/node/{node}: [`legacy_node_check`] of cluster
/// member `node` (404 for no such node; 503 for one that does not run),
/// by what its node information reports.
pub async fn legacy_node_check_of(
    State(state): State<HttpState>,
    Path(node): Path<String>,
) -> Response {
    match node_row(&state, &node).await {
        Some(row) => legacy_check(&row, &node),
        None => ApiError::not_found("Not Found").into_response(),
    }
}

/// The legacy check's answer for node `node`, whose `/api/nodes` row is
/// `row`.
fn legacy_check(row: &Value, node: &str) -> Response {
    let failed = |reason: String| {
        let body = json!({ "status": "failed", "reason": reason });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    };
    if row["running"] != true {
        return failed(format!("node {node} is not running"));
    }
    let alarms: Vec<String> = [("disk_free_alarm", "disk"), ("mem_alarm", "memory")]
        .iter()
        .filter(|(field, _)| row[*field] == true)
        .map(|(_, resource)| format!("{{resource_limit,{resource},{node}}}"))
        .collect();
    if !alarms.is_empty() {
        return failed(format!(
            "resource alarm(s) in effect:[{}]",
            alarms.join(",")
        ));
    }
    Json(json!({ "status": "ok" })).into_response()
}

/// GET /api/health/checks/virtual-hosts: every vhost is up.
pub async fn vhosts_ok() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// GET /api/health/checks/ready: the broker accepts clients and has no
/// alarm (the readiness probe, with auth).
pub async fn ready(State(state): State<HttpState>) -> ApiResult<Json<Value>> {
    readiness(&state)
}

/// Ready for new clients: no alarm blocks publishers, the node is not
/// drained (it refuses new sockets), and it is below `max_connections`
/// (it would refuse the next one), so a load balancer or Kubernetes sends
/// clients to the other nodes meanwhile.
fn readiness(state: &HttpState) -> ApiResult<Json<Value>> {
    if let Some(reason) = state.alarms.state().reason() {
        return Err(ApiError::unavailable(format!(
            "resource alarm in effect ({reason}): publishers are blocked"
        )));
    }
    if let Some(reason) = super::health::not_serving(state) {
        return Err(ApiError::unavailable(reason));
    }
    if let Some(open) = super::health::at_connection_limit(state) {
        return Err(ApiError::unavailable(format!(
            "node connection limit is reached ({open} connections): new clients are refused"
        )));
    }
    Ok(Json(json!({ "status": "ok" })))
}

/// GET /readyz: the readiness probe without auth, for orchestrators.
pub async fn readyz(State(state): State<HttpState>) -> ApiResult<Json<Value>> {
    readiness(&state)
}

/// GET /healthz: the liveness probe; the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// GET /api/aliveness-test/{vhost}: declares a queue, publishes to it and
/// gets the message back, as RabbitMQ's check does.
pub async fn aliveness(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    use antre_broker::vhost::QueueDeclaration;
    let v = state.vhost(&vhost)?;
    let (q, _) = v.declare_queue(
        QueueDeclaration {
            name: "aliveness-test".into(),
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
        },
        false,
        0,
    )?;
    let message = antre_broker::Message::new(
        String::new(),
        "aliveness-test".into(),
        Default::default(),
        bytes::Bytes::from_static(b"test_message"),
    );
    let antre_broker::vhost::DeclaredQueue::Queue(q) = q else {
        return Err(ApiError::unavailable("aliveness-test is a stream"));
    };
    q.publish(std::sync::Arc::new(message))?;
    match q.get(true) {
        Some(_) => Ok(Json(json!({ "status": "ok" }))),
        None => Err(ApiError::unavailable("the test message did not come back")),
    }
}
