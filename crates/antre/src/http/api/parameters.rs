//! Runtime parameters, global parameters, limits, extensions and the
//! cluster name: the RabbitMQ endpoints whose concept antre has but whose
//! content is empty, answered as RabbitMQ answers them when empty, so
//! `rabbitmqadmin list parameters` and the like work.
//!
//! - `/api/parameters[/{component}[/{vhost}]]`: the only components antre
//!   has are `policy` and `operator_policy` (served by
//!   [`super::policies`]); RabbitMQ's others come with plugins such as
//!   federation and shovel, so their listings are `[]` and setting one
//!   fails as RabbitMQ fails for an unknown component (400 `component ...
//!   not found`).
//! - `/api/global-parameters`: antre keeps none; `[]`.
//! - `/api/vhost-limits`, `/api/user-limits`: antre enforces none, so none
//!   is in effect; `[]`, and setting one is refused with 400.
//! - `/api/extensions`: the UI has no plugin extensions; `[]`.
//! - `/api/cluster-name`: the node's name, which is antre's cluster name.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::render::node_name;
use crate::http::HttpState;

fn none() -> Json<Value> {
    Json(json!([]))
}

/// GET /api/parameters, /api/global-parameters, /api/vhost-limits,
/// /api/user-limits, /api/extensions: nothing.
pub async fn empty() -> Json<Value> {
    none()
}

/// GET /api/parameters/{component}: no parameters of any component.
pub async fn of_component(Path(_component): Path<String>) -> Json<Value> {
    none()
}

/// GET /api/parameters/{component}/{vhost}, /api/vhost-limits/{vhost}:
/// nothing, or 404 for a missing vhost.
pub async fn of_vhost(
    State(state): State<HttpState>,
    Path(path): Path<Vec<String>>,
) -> ApiResult<Json<Value>> {
    if let Some(vhost) = path.last() {
        state.vhost(vhost)?;
    }
    Ok(none())
}

/// GET and DELETE /api/parameters/{component}/{vhost}/{name}: there is none.
pub async fn one(
    State(state): State<HttpState>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    state.vhost(&vhost)?;
    Err(ApiError::not_found(format!(
        "no parameter '{name}' of component '{component}' in vhost '{vhost}'"
    )))
}

/// PUT /api/parameters/{component}/{vhost}/{name}: refused as RabbitMQ
/// refuses a component no plugin provides.
pub async fn set(
    State(state): State<HttpState>,
    Path((component, vhost, _name)): Path<(String, String, String)>,
    _body: Bytes,
) -> ApiResult<Json<Value>> {
    state.vhost(&vhost)?;
    Err(ApiError::bad_request(format!(
        "Validation failed\n\ncomponent {component} not found \
         (antre has no runtime parameter components: no federation, no shovel)\n"
    )))
}

/// GET /api/global-parameters/{name}: there is none.
pub async fn global(Path(name): Path<String>) -> ApiError {
    ApiError::not_found(format!("no global parameter '{name}'"))
}

/// GET /api/user-limits/{user}: none, or 404 for a missing user.
pub async fn of_user(
    State(state): State<HttpState>,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    if !state.broker.users().iter().any(|u| u.name == user) {
        return Err(ApiError::not_found(format!("no user '{user}'")));
    }
    Ok(none())
}

/// PUT /api/vhost-limits/{vhost}/{name}, /api/user-limits/{user}/{name}.
pub async fn set_limit(Path(path): Path<Vec<String>>, _body: Bytes) -> ApiError {
    let name = path.last().map(String::as_str).unwrap_or("");
    ApiError::bad_request(format!(
        "antre does not enforce vhost or user limits, so limit '{name}' cannot be set"
    ))
}

/// GET /api/cluster-name.
pub async fn cluster_name() -> Json<Value> {
    Json(json!({ "name": node_name() }))
}
