//! `/api/vhost-limits` and `/api/user-limits`: RabbitMQ's limits, in the
//! shapes and with the answers of its management plugin (checked against
//! RabbitMQ 3.10.8):
//!
//! - `GET /api/vhost-limits[/{vhost}]`: `[{"vhost": "/", "value":
//!   {"max-connections": 10}}]`, only vhosts with limits (and, for the
//!   whole list, only vhosts the user may see);
//! - `PUT /api/vhost-limits/{vhost}/{name}` with `{"value": 10}`: 204;
//!   `max-connections` or `max-queues`, an integer, negative for none;
//! - `DELETE /api/vhost-limits/{vhost}/{name}`: 204, set or not;
//! - the same for `/api/user-limits[/{user}[/{name}]]` with `user` for
//!   `vhost`, and `max-connections` or `max-channels`.
//!
//! RabbitMQ lists a vhost whose last limit was cleared as `"value": []`;
//! antre does not list it, as RabbitMQ's own per-vhost answer does not.

use antre_broker::access::limits::{parse_limit, LimitScope};
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::{AuthUser, HttpState};
use antre_broker::cluster::MetaCommand;

/// The `value` of a `{"value": N}` body, checked for `name` in `scope`.
/// RabbitMQ words its refusals differently for the two scopes.
fn value_of(scope: LimitScope, name: &str, body: &[u8]) -> ApiResult<i64> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let value = body
        .get("value")
        .ok_or_else(|| ApiError::bad_request("[{key_missing,value}]"))?;
    parse_limit(scope, name, value).map_err(|e| match scope {
        LimitScope::Vhost => ApiError::bad_request(format!("Validation failed\n\n{e}\n")),
        LimitScope::User => ApiError::bad_request(e.to_string()),
    })
}

/// GET /api/vhost-limits: every vhost with limits that the user may see.
pub async fn vhost_list(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
) -> Json<Value> {
    let visible = user.vhost_filter(&state);
    let all = state.broker.access().all_vhost_limits();
    Json(json!(all
        .into_iter()
        .filter(|l| visible.as_ref().is_none_or(|v| v.contains(&l.vhost)))
        .collect::<Vec<_>>()))
}

/// GET /api/vhost-limits/{vhost}: its limits, `[]` if none, 404 if there is
/// no such vhost.
pub async fn vhost_show(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    if state.broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found("Not Found"));
    }
    let limits = state.broker.access().vhost_limits(&vhost);
    Ok(Json(match limits.is_empty() {
        true => json!([]),
        false => json!([{ "vhost": vhost, "value": limits }]),
    }))
}

fn no_vhost() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        error: "not_found",
        reason: "vhost_not_found".into(),
    }
}

/// PUT /api/vhost-limits/{vhost}/{name} with `{"value": N}`.
pub async fn vhost_set(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    if state.broker.vhost(&vhost).is_none() {
        return Err(no_vhost());
    }
    let value = value_of(LimitScope::Vhost, &name, &body)?;
    let command = MetaCommand::SetVhostLimit {
        vhost: vhost.clone(),
        name: name.clone(),
        value,
    };
    state.broker.change_meta(command)?;
    tracing::info!(vhost, limit = name, value, "vhost limit set");
    Ok(StatusCode::NO_CONTENT)
}

/// DELETE /api/vhost-limits/{vhost}/{name}.
pub async fn vhost_clear(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    if state.broker.vhost(&vhost).is_none() {
        return Err(no_vhost());
    }
    let command = MetaCommand::ClearVhostLimit {
        vhost: vhost.clone(),
        name: name.clone(),
    };
    state.broker.change_meta(command)?;
    tracing::info!(vhost, limit = name, "vhost limit cleared");
    Ok(StatusCode::NO_CONTENT)
}

/// GET /api/user-limits: every user with limits.
pub async fn user_list(State(state): State<HttpState>) -> Json<Value> {
    Json(json!(state.broker.access().all_user_limits()))
}

/// GET /api/user-limits/{user}: their limits, `[]` if none, 404 if there
/// is no such user.
pub async fn user_show(
    State(state): State<HttpState>,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    let access = state.broker.access();
    if access.user(&user).is_none() {
        return Err(ApiError::not_found("Not Found"));
    }
    let limits = access.user_limits(&user);
    Ok(Json(match limits.is_empty() {
        true => json!([]),
        false => json!([{ "user": user, "value": limits }]),
    }))
}

/// RabbitMQ's answer to a limit of a user who does not exist.
fn no_user(user: &str) -> ApiError {
    ApiError::bad_request(format!("no_such_user: {user}"))
}

/// PUT /api/user-limits/{user}/{name} with `{"value": N}`.
pub async fn user_set(
    State(state): State<HttpState>,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let access = state.broker.access();
    if access.user(&user).is_none() {
        return Err(no_user(&user));
    }
    let value = value_of(LimitScope::User, &name, &body)?;
    let command = MetaCommand::SetUserLimit {
        user: user.clone(),
        name: name.clone(),
        value,
    };
    state.broker.change_meta(command)?;
    tracing::info!(user, limit = name, value, "user limit set");
    Ok(StatusCode::NO_CONTENT)
}

/// DELETE /api/user-limits/{user}/{name}.
pub async fn user_clear(
    State(state): State<HttpState>,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let access = state.broker.access();
    if access.user(&user).is_none() {
        return Err(no_user(&user));
    }
    let command = MetaCommand::ClearUserLimit {
        user: user.clone(),
        name: name.clone(),
    };
    state.broker.change_meta(command)?;
    tracing::info!(user, limit = name, "user limit cleared");
    Ok(StatusCode::NO_CONTENT)
}
