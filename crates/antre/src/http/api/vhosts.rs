//! `/api/vhosts`: every vhost for administrators and monitors, the ones a
//! user has permissions in for the others (RabbitMQ's visible vhosts).

use std::collections::HashMap;

use antre_broker::cluster::MetaCommand;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{listing, Paging};
use crate::http::error::{ApiError, ApiResult};
use crate::http::{AuthUser, HttpState};

fn vhost_json(state: &HttpState, v: &antre_broker::Vhost) -> Value {
    let (mut ready, mut unacked) = (0u64, 0u64);
    for q in v.queues() {
        let c = q.counts();
        ready += u64::from(c.ready);
        unacked += u64::from(c.unacked);
    }
    let connections = state
        .registry
        .connections()
        .iter()
        .filter(|c| c.vhost == v.name)
        .count();
    json!({
        "name": v.name,
        "description": "",
        "tags": [],
        "tracing": false,
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "connections": connections,
        "cluster_state": { crate::http::render::node_name(): "running" },
    })
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
    let all = vhosts.iter().map(|v| vhost_json(&state, v)).collect();
    Ok(Json(listing(all, &query, Paging::Paged)?))
}

/// GET /api/vhosts/{vhost}.
pub async fn show(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = state.vhost(&vhost)?;
    Ok(Json(vhost_json(&state, &v)))
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
