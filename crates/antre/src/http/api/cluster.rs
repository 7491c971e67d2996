//! Cluster membership: adding and removing members (administrators only).
//! The members are listed by `GET /api/nodes`. Also the replica
//! management of quorum queues: adding and removing a queue's members,
//! node-wide grow and shrink, rebalancing leaders. See docs/clustering.md.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::HttpState;
use antre_cluster::membership::MembershipError;
use antre_cluster::queue_group::members::{
    GrowStrategy, LeaderMove, QueueChange, QueueMemberError,
};
use antre_cluster::wire::Listing;
use antre_cluster::{Member, MemberChange};

/// The body of `POST /api/cluster/members`.
#[derive(Debug, Deserialize)]
pub struct NewMember {
    /// The new node's name (its `node_name`).
    pub name: String,
    /// Its cluster listener, `HOST:PORT`.
    pub address: String,
}

fn cluster(state: &HttpState) -> ApiResult<&std::sync::Arc<antre_cluster::Cluster>> {
    state
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("this node is a single node, not a cluster member"))
}

fn answer(r: Result<(), MembershipError>) -> ApiResult<StatusCode> {
    match r {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(MembershipError::Invalid(e)) => Err(ApiError::bad_request(e)),
        Err(MembershipError::Unavailable(e)) => Err(ApiError::unavailable(e)),
    }
}

/// POST /api/cluster/members `{"name": "n4", "address": "10.0.0.4:25672"}`:
/// adds the node (a learner until it has caught up, then a voter). 204
/// once it votes, also when it already was a member at that address.
pub async fn add(
    State(state): State<HttpState>,
    Json(body): Json<NewMember>,
) -> ApiResult<StatusCode> {
    let cluster = cluster(&state)?;
    let member = Member {
        name: body.name,
        addr: body.address,
    };
    answer(cluster.change_members(MemberChange::Add(member)).await)
}

/// DELETE /api/cluster/members/{node}: removes the node from the
/// membership (it may be down: `forget`; or the answering node itself:
/// `leave`).
pub async fn remove(
    State(state): State<HttpState>,
    Path(node): Path<String>,
) -> ApiResult<StatusCode> {
    let cluster = cluster(&state)?;
    answer(cluster.change_members(MemberChange::Remove(node)).await)
}

/// Replica management errors: 404 for a missing vhost or queue, 400 for a
/// refused change, 503 when no quorum answered in time.
fn member_answer<T>(r: Result<T, QueueMemberError>) -> ApiResult<T> {
    r.map_err(|e| match e {
        QueueMemberError::NotFound(t) => ApiError::not_found(t),
        QueueMemberError::Invalid(t) => ApiError::bad_request(t),
        QueueMemberError::Unavailable(t) => ApiError::unavailable(t),
    })
}

/// POST /api/queues/{vhost}/{name}/members/{node}: adds a member on
/// `node` to the quorum queue (`rabbitmq-queues add_member`); 204 once
/// it has caught up and votes.
pub async fn add_queue_member(
    State(state): State<HttpState>,
    Path((vhost, name, node)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let cluster = cluster(&state)?;
    member_answer(cluster.add_queue_member(&vhost, &name, &node).await)?;
    Ok(StatusCode::NO_CONTENT)
}

/// DELETE /api/queues/{vhost}/{name}/members/{node}: removes the member
/// on `node` from the quorum queue (`rabbitmq-queues delete_member`); its
/// replica and data there are removed.
pub async fn delete_queue_member(
    State(state): State<HttpState>,
    Path((vhost, name, node)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let cluster = cluster(&state)?;
    member_answer(cluster.delete_queue_member(&vhost, &name, &node).await)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The members a rebalance moves no leader to: all but those that
/// answered, within a few seconds, that they are not in maintenance mode
/// (this node by its own state; one the metadata records as drained is
/// not asked). A drained node would refuse a
/// leadership, and a member that does not answer is no place for one
/// either (a busy node's answer once took longer than a second in CI, and
/// the drained node it came from was then asked to lead).
async fn no_leaders_to(state: &HttpState, cluster: &antre_cluster::Cluster) -> Vec<String> {
    let members = cluster.status().members;
    let asked = members.iter().map(|m| async move {
        let ready = if m.this_node {
            !state.maintenance.draining()
        } else if state.broker.node_drained(&m.name) {
            false
        } else if m.running {
            let wait = std::time::Duration::from_secs(3);
            // Once more on a failure: a pooled connection the peer closed
            // fails the first call, and the next dials afresh.
            let first = cluster.node_info(&m.name, wait).await;
            let answer = match first {
                Ok(info) => Ok(info),
                Err(_) => cluster.node_info(&m.name, wait).await,
            };
            match answer {
                // A node of a version without maintenance mode says nothing.
                Ok(info) => info["being_drained"] != json!(true),
                Err(e) => {
                    tracing::info!(
                        node = m.name,
                        "rebalance: no leader goes to {}, which did not answer: {e}",
                        m.name
                    );
                    false
                }
            }
        } else {
            false
        };
        (!ready).then(|| m.name.clone())
    });
    futures::future::join_all(asked)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Query of the node-wide grow and shrink.
#[derive(Debug, Deserialize)]
pub struct NodeWide {
    /// `all` (default) or `even` (grow only).
    #[serde(default)]
    pub strategy: Option<String>,
    /// Only the queues of this vhost.
    #[serde(default)]
    pub vhost: Option<String>,
}

/// Each leadership a rebalance or a drain moved (or could not), as the
/// API answers it.
fn moves_json(moves: &[LeaderMove]) -> Value {
    Value::Array(
        moves
            .iter()
            .map(|m| {
                json!({
                    "vhost": m.vhost,
                    "name": m.name,
                    "from": m.from,
                    "to": m.to,
                    "ok": m.error.is_none(),
                    "error": m.error,
                })
            })
            .collect(),
    )
}

fn changes_json(changes: Vec<QueueChange>) -> Value {
    Value::Array(
        changes
            .into_iter()
            .map(|c| {
                json!({
                    "vhost": c.vhost,
                    "name": c.name,
                    "members": c.members,
                    "ok": c.error.is_none(),
                    "error": c.error,
                })
            })
            .collect(),
    )
}

/// POST /api/cluster/queues/grow/{node}?strategy=all|even: adds a member
/// on `node` to every quorum queue it is not a member of (`even`: those
/// with an even number of members), as `rabbitmq-queues grow`. Answers
/// each queue's outcome.
pub async fn grow(
    State(state): State<HttpState>,
    Path(node): Path<String>,
    Query(q): Query<NodeWide>,
) -> ApiResult<Json<Value>> {
    let cluster = cluster(&state)?;
    let strategy = match q.strategy.as_deref() {
        None | Some("all") => GrowStrategy::All,
        Some("even") => GrowStrategy::Even,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "strategy '{other}': expected 'all' or 'even'"
            )))
        }
    };
    let changes = member_answer(
        cluster
            .grow_queues(&node, strategy, q.vhost.as_deref())
            .await,
    )?;
    Ok(Json(changes_json(changes)))
}

/// POST /api/cluster/queues/shrink/{node}: removes the member on `node`
/// from every quorum queue where it is not the last one, as
/// `rabbitmq-queues shrink`. Answers each queue's outcome.
pub async fn shrink(
    State(state): State<HttpState>,
    Path(node): Path<String>,
    Query(q): Query<NodeWide>,
) -> ApiResult<Json<Value>> {
    let cluster = cluster(&state)?;
    let changes = member_answer(cluster.shrink_queues(&node, q.vhost.as_deref()).await)?;
    Ok(Json(changes_json(changes)))
}

/// Body (or query) of `POST /api/rebalance/queues`.
#[derive(Debug, Default, Deserialize)]
pub struct RebalanceRequest {
    /// Only the queues of this vhost.
    #[serde(default)]
    pub vhost: Option<String>,
    /// Only the queues whose name matches this regular expression.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// POST /api/rebalance/queues (optional JSON body or query `vhost`,
/// `pattern`): moves quorum queue leaders so each node leads about as
/// many as the others, as `rabbitmq-queues rebalance quorum`; answers the
/// leaders per node before and after, and each move.
pub async fn rebalance(
    State(state): State<HttpState>,
    Query(query): Query<RebalanceRequest>,
    body: Option<Json<RebalanceRequest>>,
) -> ApiResult<Json<Value>> {
    let cluster = cluster(&state)?;
    let req = body.map(|Json(b)| b).unwrap_or(query);
    let pattern = match req.pattern.as_deref() {
        Some(p) => Some(
            regex::Regex::new(p)
                .map_err(|e| ApiError::bad_request(format!("pattern '{p}': {e}")))?,
        ),
        None => None,
    };
    let vhost = req.vhost;
    let avoid = no_leaders_to(&state, cluster).await;
    let report = member_answer(
        cluster
            .rebalance_queues(
                |v, n| {
                    vhost.as_deref().is_none_or(|want| want == v)
                        && pattern.as_ref().is_none_or(|re| re.is_match(n))
                },
                &avoid,
            )
            .await,
    )?;
    let counts = |m: &std::collections::BTreeMap<String, usize>| {
        Value::Array(
            m.iter()
                .map(|(node, n)| json!({"node": node, "leaders": n}))
                .collect(),
        )
    };
    Ok(Json(json!({
        "before": counts(&report.before),
        "after": counts(&report.after),
        "moves": moves_json(&report.moves),
    })))
}

/// This node's quorum queue and stream replicas (only `vhost`'s, and only
/// the queue `name`'s) with their Raft figures: its rows of
/// `GET /api/queues/{vhost}/{name}/members`.
pub(crate) fn raft_rows(
    cluster: &antre_cluster::Cluster,
    vhost: Option<&str>,
    name: Option<&str>,
) -> Vec<Value> {
    let node = cluster.link.config.node_name.clone();
    let mut replicas = cluster.queue_groups.raft_figures();
    replicas.retain(|(v, q, _)| vhost.is_none_or(|w| w == v) && name.is_none_or(|n| n == q));
    replicas
        .into_iter()
        .map(|(vhost, name, f)| {
            json!({
                "vhost": vhost,
                "name": name,
                "node": node,
                "raft_state": f.role,
                "term": f.term,
                "last_log_index": f.last_index,
                "last_written_index": f.log.last_written,
                "commit_index": f.log.committed,
                "last_applied_index": f.last_applied,
                "snapshot_index": f.snapshot,
                "commit_latency_ms": f.log.commit_latency.map(|d| d.as_secs_f64() * 1e3),
            })
        })
        .collect()
}

/// GET /api/queues/{vhost}/{name}/members: each member of a quorum queue
/// or stream with its Raft state, term and log indexes, as it reports them
/// (`rabbitmq-queues quorum_status`): this node's own and each other
/// member's, asked over the cluster link. A member whose node is down is
/// listed with `raft_state` `nodedown`; one whose node runs but sent no
/// figures (no replica of the queue yet, or no answer in time) with
/// `noproc`: the words `rabbitmq-queues` uses.
pub async fn queue_members(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let running: Vec<String> = cluster(&state)?
        .status()
        .members
        .into_iter()
        .filter(|m| m.running)
        .map(|m| m.name)
        .collect();
    let Some(info) = state.vhost(&vhost)?.quorum_info(&name) else {
        return Err(ApiError::not_found(format!(
            "no quorum queue or stream '{name}' in vhost '{vhost}'"
        )));
    };
    let rows =
        super::peers::cluster_rows(&state, Listing::RaftMembers, Some(&vhost), Some(&name)).await;
    let members = info
        .members
        .iter()
        .map(|member| {
            let found = rows.iter().find(|r| r["node"] == member.as_str());
            found.cloned().unwrap_or_else(|| {
                let state = if running.contains(member) {
                    "noproc"
                } else {
                    "nodedown"
                };
                json!({"vhost": vhost, "name": name, "node": member, "raft_state": state})
            })
        })
        .collect();
    Ok(Json(Value::Array(members)))
}

/// The replica states that count as up in [`node_is_quorum_critical`]:
/// a member that leads or follows (a learner is catching up: it votes,
/// but does not hold yet the entries a commit counts).
fn replica_up(row: &Value) -> bool {
    matches!(row["raft_state"].as_str(), Some("leader" | "follower"))
}

/// A queue or component as RabbitMQ's health check lists it.
fn printable(name: &str, vhost: &str, kind: &str, readable: String) -> Value {
    json!({"readable_name": readable, "name": name, "virtual_host": vhost, "type": kind})
}

/// GET /api/health/checks/node-is-quorum-critical: 503 if stopping this
/// node would leave a quorum queue or stream it has a member of, or the
/// metadata group, without a majority of its members up, with them
/// listed; RabbitMQ's check of the same name (`rabbitmq-queues
/// check_if_node_is_quorum_critical`), which a rolling restart asks before
/// stopping each node. A member counts as up when its node answers with
/// its replica leading or following (a learner still catching up does
/// not); a group whose members up are at most a bare majority is
/// critical, as in RabbitMQ.
pub async fn node_is_quorum_critical(
    State(state): State<HttpState>,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let single = || Json(json!({"status": "ok", "reason": "single node cluster"}));
    let Some(cluster) = &state.cluster else {
        return Ok(single());
    };
    let status = cluster.status();
    if status.members.len() <= 1 {
        return Ok(single());
    }
    let rows = super::peers::cluster_rows(&state, Listing::RaftMembers, None, None).await;
    let up: std::collections::HashSet<(&str, &str, &str)> = rows
        .iter()
        .filter(|r| replica_up(r))
        .filter_map(|r| {
            Some((
                r["vhost"].as_str()?,
                r["name"].as_str()?,
                r["node"].as_str()?,
            ))
        })
        .collect();
    let mut critical = Vec::new();
    let mine = cluster.queue_groups.raft_figures();
    for (vhost, name, _) in &mine {
        let Some(v) = state.broker.vhost(vhost) else {
            continue;
        };
        let Some(info) = v.quorum_info(name) else {
            continue;
        };
        let alive = info
            .members
            .iter()
            .filter(|m| up.contains(&(vhost.as_str(), name.as_str(), m.as_str())))
            .count();
        if alive <= info.members.len() / 2 + 1 {
            let (kind, what) = if v.stream(name).is_some() {
                ("rabbit_stream_queue", "stream")
            } else {
                ("rabbit_quorum_queue", "queue")
            };
            let readable = format!("{what} '{name}' in vhost '{vhost}'");
            critical.push(printable(name, vhost, kind, readable));
        }
    }
    // The metadata group, as RabbitMQ lists its metadata store and stream
    // coordinator: a component, not a queue.
    let voters: Vec<_> = status.members.iter().filter(|m| m.voter).collect();
    let alive = voters.iter().filter(|m| m.running).count();
    if voters.iter().any(|m| m.this_node) && alive <= voters.len() / 2 + 1 {
        let na = "(not applicable)";
        critical.push(printable("metadata", na, "process", "metadata".into()));
    }
    if critical.is_empty() {
        return Ok(Json(json!({"status": "ok"})));
    }
    Err((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": "failed",
            "reason": "There are quorum queues that would lose their quorum if the target node is shut down",
            "queues": critical,
        })),
    ))
}

/// GET /api/health/checks/quorum-queues-without-elected-leaders/all-vhosts/
/// and `.../vhost/{vhost}/`, each optionally `.../pattern/{pattern}` (a
/// regular expression the queue's name must match): 503 with the quorum
/// queues none of whose members answers as their leader, as RabbitMQ's
/// check of the same name (3.13) lists them; 200 when every one has
/// one. A member counts when its node answers within the listing's
/// wait, so a queue whose members' nodes are all down or cut off is
/// listed. Streams are not quorum queues, as in RabbitMQ.
pub async fn quorum_queues_without_elected_leaders(
    State(state): State<HttpState>,
    params: axum::extract::RawPathParams,
) -> Result<Json<Value>, Response> {
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
    };
    let (vhost, pattern) = (param("vhost"), param("pattern"));
    let pattern =
        match &pattern {
            Some(p) => Some(regex::Regex::new(p).map_err(|e| {
                ApiError::bad_request(format!("invalid pattern: {e}")).into_response()
            })?),
            None => None,
        };
    let vhosts = state
        .vhosts_for(vhost.as_deref())
        .map_err(IntoResponse::into_response)?;
    if state.cluster.is_none() {
        // A single node's quorum queues are its own: it leads them all.
        return Ok(Json(json!({"status": "ok"})));
    }
    let rows =
        super::peers::cluster_rows(&state, Listing::RaftMembers, vhost.as_deref(), None).await;
    let led: std::collections::HashSet<(&str, &str)> = rows
        .iter()
        .filter(|r| r["raft_state"] == "leader")
        .filter_map(|r| Some((r["vhost"].as_str()?, r["name"].as_str()?)))
        .collect();
    let mut leaderless = Vec::new();
    for v in &vhosts {
        let mut names = v.replicated_names();
        names.sort();
        for name in names {
            let wanted = pattern.as_ref().is_none_or(|p| p.is_match(&name));
            if !wanted || v.stream(&name).is_some() || led.contains(&(v.name.as_str(), &name)) {
                continue;
            }
            let readable = format!("queue '{name}' in vhost '{}'", v.name);
            leaderless.push(printable(&name, &v.name, "rabbit_quorum_queue", readable));
        }
    }
    if leaderless.is_empty() {
        return Ok(Json(json!({"status": "ok"})));
    }
    Err((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": "failed",
            "reason": "Detected quorum queues without an elected leader",
            "queues": leaderless,
        })),
    )
        .into_response())
}

/// POST /api/maintenance/drain: puts the node asked into maintenance mode
/// before it is stopped (`rabbitmq-upgrade drain`; see
/// [`crate::maintenance`]): new client sockets are refused, every client
/// connection is closed (320, "Node was put into maintenance mode"), and
/// each quorum queue and stream it leads is handed to another member;
/// its replicas take no leadership until it is revived or restarted.
/// Answers with the connections closed and each leadership moved.
pub async fn drain(State(state): State<HttpState>) -> ApiResult<Json<Value>> {
    let cluster = cluster(&state)?;
    if state.maintenance.set(true) {
        tracing::warn!(
            "this node is drained (maintenance mode): it takes no clients and leads no queue"
        );
    }
    let connections = state.registry.connections();
    for c in &connections {
        c.force_close(crate::maintenance::CLOSE_REASON);
    }
    // Recorded before the leaderships move, so that no node places a new
    // queue here meanwhile.
    let recorded = crate::maintenance::recorded(&state.broker, true, RECORD_WAIT).await;
    let moves = member_answer(cluster.drain_leaders().await)?;
    Ok(Json(json!({
        "being_drained": true,
        "recorded": recorded,
        "connections_closed": connections.len(),
        "leaders": moves_json(&moves),
    })))
}

/// GET /api/feature-flags: the feature flags, in RabbitMQ's fields
/// (`name`, `desc`, `state`, `stability`, `provided_by`), `state` being
/// `enabled`, `disabled` (every member supports it: the metadata leader
/// enables it within seconds) or `unavailable` (a member lacks it or did
/// not answer; `waiting_for` names each with why). A single node uses
/// every flag its version knows.
pub async fn feature_flags(State(state): State<HttpState>) -> ApiResult<Json<Value>> {
    let flags = match &state.cluster {
        Some(c) => c.feature_flags().await,
        None => antre_broker::feature_flags::FEATURE_FLAGS
            .iter()
            .map(|f| antre_cluster::feature_flags::FlagState::known(f, true))
            .collect(),
    };
    let rows = flags
        .iter()
        .map(|f| {
            let state = match (f.enabled, f.waiting_for.is_empty()) {
                (true, _) => "enabled",
                (false, true) => "disabled",
                (false, false) => "unavailable",
            };
            json!({
                "name": f.name,
                "desc": f.desc,
                "state": state,
                "stability": "stable",
                "provided_by": if f.known { "antre" } else { "a newer version of antre" },
                "waiting_for": f.waiting_for.iter()
                    .map(|(node, why)| json!({"node": node, "reason": why}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}

/// How long a drain or a revive waits for the metadata to record it; the
/// node keeps proposing it after that ([`crate::maintenance::record`]).
const RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// POST /api/maintenance/revive: ends maintenance mode (`rabbitmq-upgrade
/// revive`): clients are taken again, and the node's replicas may lead
/// again (`antre queues rebalance` gives it its share).
pub async fn revive(State(state): State<HttpState>) -> ApiResult<Json<Value>> {
    cluster(&state)?;
    if state.maintenance.set(false) {
        tracing::info!("this node is revived: it takes clients and may lead again");
    }
    let recorded = crate::maintenance::recorded(&state.broker, false, RECORD_WAIT).await;
    Ok(Json(json!({"being_drained": false, "recorded": recorded})))
}
