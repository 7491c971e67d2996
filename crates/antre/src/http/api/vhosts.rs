//! `/api/vhosts`: every vhost for administrators and monitors, the ones a
//! user has permissions in for the others (RabbitMQ's visible vhosts).

use std::collections::HashMap;

use antre_broker::channel::ChannelStats;
use antre_broker::cluster::MetaCommand;
use antre_broker::Vhost;
use antre_cluster::wire::Listing;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::overview::add_message_stats;
use super::peers::cluster_rows;
use super::{listing, Paging};
use crate::http::error::{ApiError, ApiResult};
use crate::http::render::{details, message_stats};
use crate::http::{AuthUser, HttpState};

/// This node's own figures of each vhost (or of `vhost`): the messages in
/// the queues it owns and its connections there. What a cluster member
/// adds to the vhosts' figures another member shows.
pub(crate) fn own_figures(state: &HttpState, vhost: Option<&str>) -> Vec<Value> {
    let Ok(vhosts) = state.vhosts_for(vhost) else {
        return Vec::new();
    };
    let mut connections: HashMap<String, usize> = HashMap::new();
    for c in state.registry.connections() {
        *connections.entry(c.vhost.clone()).or_default() += 1;
    }
    let mut traffic = state.registry.traffic();
    vhosts
        .iter()
        .map(|v| {
            let (ready, unacked) = super::overview::owned_messages_in(v);
            let (ready_rate, unacked_rate) = state.rates.vhost_depths(&v.name);
            let traffic = traffic.remove(&v.name).unwrap_or_default();
            let (rates, recv_rate, send_rate) = state.rates.vhost(&v.name);
            let counters: Vec<(&str, u64, f64)> = ChannelStats::NAMES
                .iter()
                .zip(traffic.counters)
                .zip(rates)
                .map(|((name, count), rate)| (*name, count, rate))
                .collect();
            json!({
                "name": v.name,
                "messages_ready": ready,
                "messages_ready_details": details(ready_rate),
                "messages_unacknowledged": unacked,
                "messages_unacknowledged_details": details(unacked_rate),
                "connections": connections.get(&v.name).copied().unwrap_or(0),
                "message_stats": message_stats(&counters),
                "recv_oct": traffic.recv_oct,
                "recv_oct_details": details(recv_rate),
                "send_oct": traffic.send_oct,
                "send_oct_details": details(send_rate),
                "exchanges": own_exchange_figures(state, v),
            })
        })
        .collect()
}

/// What this node's channels published through each exchange of `v`, as
/// its own vhost figures carry it to the other members: compact, as
/// `[in, out, in rate, out rate]` by exchange, since every exchange
/// published to goes in every listing of exchanges.
pub(crate) fn own_exchange_figures(state: &HttpState, v: &Vhost) -> serde_json::Map<String, Value> {
    v.exchange_flows()
        .totals()
        .iter()
        .map(|(name, [publish_in, publish_out])| {
            let [in_rate, out_rate] = state.rates.exchange(&v.name, name);
            let row = json!([publish_in, publish_out, in_rate, out_rate]);
            (name.clone(), row)
        })
        .collect()
}

/// A vhost as the API shows it, its figures added up over `figures`
/// (every member's own, see [`own_figures`]), as RabbitMQ's are the
/// cluster's.
fn vhost_json(state: &HttpState, name: &str, figures: &[Value]) -> Value {
    let sum = |key: &str| -> u64 {
        figures
            .iter()
            .filter(|f| f["name"] == name)
            .filter_map(|f| f[key].as_u64())
            .sum()
    };
    let (ready, unacked) = (sum("messages_ready"), sum("messages_unacknowledged"));
    // How fast they change, every member's rate added up (a member of an
    // older version reports none: its part counts as steady).
    let sum_rate = |key: &str| -> f64 {
        figures
            .iter()
            .filter(|f| f["name"] == name)
            .filter_map(|f| f[key]["rate"].as_f64())
            .sum()
    };
    let ready_rate = sum_rate("messages_ready_details");
    let unacked_rate = sum_rate("messages_unacknowledged_details");
    // The traffic of every member's connections, with rates, added up.
    let mut stats: Option<Value> = None;
    let mut bytes = json!({
        "recv_oct": 0,
        "recv_oct_details": details(0.0),
        "send_oct": 0,
        "send_oct_details": details(0.0),
    });
    for f in figures.iter().filter(|f| f["name"] == name) {
        if let Some(theirs) = f["message_stats"].as_object() {
            match &mut stats {
                None => stats = Some(Value::Object(theirs.clone())),
                Some(ours) => add_message_stats(ours, theirs),
            }
        }
        if let Some(theirs) = f.as_object() {
            add_message_stats(&mut bytes, theirs);
        }
    }
    let mut row = json!({
        "name": name,
        "description": "",
        "tags": [],
        // RabbitMQ 3.10's fields of the same: antre's vhosts have no
        // description or tags, and declare classic queues by default.
        "metadata": { "description": "", "tags": [] },
        "default_queue_type": "classic",
        "tracing": false,
        "messages": ready + unacked,
        "messages_details": details(ready_rate + unacked_rate),
        "messages_ready": ready,
        "messages_ready_details": details(ready_rate),
        "messages_unacknowledged": unacked,
        "messages_unacknowledged_details": details(unacked_rate),
        "connections": sum("connections"),
        "cluster_state": cluster_state(state),
    });
    if let (Some(row), Value::Object(bytes)) = (row.as_object_mut(), bytes) {
        row.extend(bytes);
        row.insert("message_stats".into(), stats.unwrap_or_else(|| json!({})));
    }
    row
}

/// Each node's state (`running`, or `nodedown` for a member this node
/// cannot reach), as RabbitMQ's vhosts show it.
fn cluster_state(state: &HttpState) -> Value {
    let Some(cluster) = &state.cluster else {
        return json!({ state.node_name(): "running" });
    };
    cluster
        .status()
        .members
        .iter()
        .map(|m| {
            let up = m.this_node || m.running;
            (
                m.name.clone(),
                json!(if up { "running" } else { "nodedown" }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// GET /api/vhosts.
pub async fn list(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let mut vhosts = state.vhosts_for(None)?;
    if !user.is_monitor() {
        let mine = state.broker.access().vhosts_of(&user.name);
        vhosts.retain(|v| mine.contains(&v.name));
    }
    let figures = cluster_rows(&state, Listing::Vhosts, None, None).await;
    let all = vhosts
        .iter()
        .map(|v| vhost_json(&state, &v.name, &figures))
        .collect();
    Ok(Json(listing(all, &query, Paging::Paged)?))
}

/// GET /api/vhosts/{vhost}.
pub async fn show(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    state.vhost(&vhost)?;
    let figures = cluster_rows(&state, Listing::Vhosts, Some(&vhost), None).await;
    Ok(Json(vhost_json(&state, &vhost, &figures)))
}

/// POST /api/vhosts/{vhost}/start/{node}: RabbitMQ restarts a vhost that
/// failed on a node (its message stores could not start). An antre vhost
/// runs on every node for as long as the node does, with no state of its
/// own to fail, so there is nothing to restart: 204 for a vhost that
/// exists and a running node, as RabbitMQ answers for one that runs; 404
/// for no such vhost or node, 503 for a node that does not run.
pub async fn start(
    State(state): State<HttpState>,
    Path((vhost, node)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.vhost(&vhost)?;
    let Some(row) = super::overview::node_row(&state, &node).await else {
        return Err(ApiError::not_found(format!("no node '{node}'")));
    };
    if row["running"] != true {
        return Err(ApiError::unavailable(format!(
            "node '{node}' is not running"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// PUT /api/vhosts/{vhost}: 201 created (and the creating user gets every
/// permission in it, as in RabbitMQ), 204 existed.
pub async fn create(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> ApiResult<StatusCode> {
    if vhost.is_empty() {
        return Err(ApiError::bad_request("a vhost name cannot be empty"));
    }
    let command = MetaCommand::CreateVhost {
        name: vhost,
        creator: user.name.clone(),
    };
    Ok(if state.broker.change_meta(command)?.changed() {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

/// DELETE /api/vhosts/{vhost}: closes its connections, deletes its queues
/// (and their messages), its definitions and the permissions in it.
pub async fn remove(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
) -> ApiResult<StatusCode> {
    state.vhost(&vhost)?;
    for c in state.registry.connections() {
        if c.vhost == vhost {
            c.force_close(&format!("vhost '{vhost}' is deleted"));
        }
    }
    state
        .broker
        .change_meta(MetaCommand::DeleteVhost { name: vhost })?;
    Ok(StatusCode::NO_CONTENT)
}
