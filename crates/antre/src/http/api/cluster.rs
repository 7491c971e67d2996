//! Cluster membership: adding and removing members (administrators only).
//! The members are listed by `GET /api/nodes`. See docs/clustering.md.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use crate::http::error::{ApiError, ApiResult};
use crate::http::HttpState;
use antre_cluster::membership::MembershipError;
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
