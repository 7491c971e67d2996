//! Cluster membership: adding and removing members (administrators only).
//! The members are listed by `GET /api/nodes`. Also the replica
//! management of quorum queues: adding and removing a queue's members,
//! node-wide grow and shrink, rebalancing leaders. See docs/clustering.md.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::HttpState;
use antre_cluster::membership::MembershipError;
use antre_cluster::queue_group::members::{GrowStrategy, QueueChange, QueueMemberError};
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
    let report = member_answer(
        cluster
            .rebalance_queues(|v, n| {
                vhost.as_deref().is_none_or(|want| want == v)
                    && pattern.as_ref().is_none_or(|re| re.is_match(n))
            })
            .await,
    )?;
    let counts = |m: &std::collections::BTreeMap<String, usize>| {
        Value::Array(
            m.iter()
                .map(|(node, n)| json!({"node": node, "leaders": n}))
                .collect(),
        )
    };
    let moves: Vec<Value> = report
        .moves
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
        .collect();
    Ok(Json(json!({
        "before": counts(&report.before),
        "after": counts(&report.after),
        "moves": moves,
    })))
}
