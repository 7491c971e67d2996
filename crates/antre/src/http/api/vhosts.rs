//! `/api/vhosts` and `/api/users`.
//!
//! Every user may do everything (antre has no permissions yet), so users are
//! listed with the `administrator` tag. Users added here live until the
//! broker stops; put lasting ones in the config (`default_user`).

use std::collections::HashMap;

use antre_broker::{User, UserRecord};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{listing, Paging};
use crate::http::error::{ApiError, ApiResult};
use crate::http::{parse_body, HttpState};

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
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let vhosts = state.vhosts_for(None)?;
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

/// PUT /api/vhosts/{vhost}: 201 created, 204 existed.
pub async fn create(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
) -> ApiResult<StatusCode> {
    if vhost.is_empty() {
        return Err(ApiError::bad_request("a vhost name cannot be empty"));
    }
    let existed = state.broker.vhost(&vhost).is_some();
    state.broker.add_vhost(&vhost)?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// DELETE /api/vhosts/{vhost}: closes its connections, deletes its queues
/// (and their messages) and its definitions.
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
    state.broker.delete_vhost(&vhost)?;
    Ok(StatusCode::NO_CONTENT)
}

fn user_json(u: &UserRecord) -> Value {
    json!({
        "name": u.name,
        "tags": ["administrator"],
        "password_hash": u.password_hash,
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "loopback_only": u.loopback_only,
    })
}

/// GET /api/users.
pub async fn users(
    State(state): State<HttpState>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let all = state.broker.users().iter().map(user_json).collect();
    Ok(Json(listing(all, &query, Paging::Unpaged)?))
}

/// GET /api/users/{name}.
pub async fn user(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    state
        .broker
        .users()
        .iter()
        .find(|u| u.name == name)
        .map(|u| Json(user_json(u)))
        .ok_or_else(|| ApiError::not_found(format!("no user '{name}'")))
}

/// The body of PUT /api/users/{name}.
#[derive(Debug, Default, Deserialize)]
pub struct UserBody {
    password: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    tags: Value,
}

/// PUT /api/users/{name}: 201 created, 204 replaced.
pub async fn put_user(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: UserBody = parse_body(&body)?;
    let Some(password) = body.password else {
        return Err(ApiError::bad_request("field 'password' is required"));
    };
    let existed = state.broker.users().iter().any(|u| u.name == name);
    state.broker.add_user(User {
        name,
        password,
        loopback_only: false,
    });
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// DELETE /api/users/{name}.
pub async fn delete_user(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if state.broker.delete_user(&name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no user '{name}'")))
    }
}
