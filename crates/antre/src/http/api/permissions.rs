//! `/api/permissions` and `/api/topic-permissions`, with their per-user
//! and per-vhost views (administrators only, as in RabbitMQ).

use antre_broker::access::{Permission, TopicPermission};
use antre_broker::cluster::MetaCommand;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::HttpState;

fn not_found() -> ApiError {
    ApiError::not_found("Not Found")
}

/// The named string fields of a body, or RabbitMQ's `key_missing` list.
fn fields<const N: usize>(body: &Map<String, Value>, keys: [&str; N]) -> ApiResult<[String; N]> {
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !body.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, key) in out.iter_mut().zip(keys) {
        *slot = match &body[key] {
            Value::String(s) => s.clone(),
            other => {
                return Err(ApiError::bad_request(format!(
                    "{key} must be a string, not {other}"
                )))
            }
        };
    }
    Ok(out)
}

fn user_and_vhost_exist(state: &HttpState, user: &str, vhost: &str) -> bool {
    state.broker.access().user(user).is_some() && state.broker.vhost(vhost).is_some()
}

/// GET /api/permissions.
pub async fn list(State(state): State<HttpState>) -> Json<Value> {
    Json(json!(state.broker.access().permissions()))
}

/// GET /api/users/{user}/permissions.
pub async fn of_user(
    State(state): State<HttpState>,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    let access = state.broker.access();
    access.user(&user).ok_or_else(not_found)?;
    let mine: Vec<Permission> = access
        .permissions()
        .into_iter()
        .filter(|p| p.user == user)
        .collect();
    Ok(Json(json!(mine)))
}

/// GET /api/vhosts/{vhost}/permissions.
pub async fn of_vhost(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    state.broker.vhost(&vhost).ok_or_else(not_found)?;
    let access = state.broker.access();
    let theirs: Vec<Permission> = access
        .permissions()
        .into_iter()
        .filter(|p| p.vhost == vhost)
        .collect();
    Ok(Json(json!(theirs)))
}

/// GET /api/permissions/{vhost}/{user}.
pub async fn show(
    State(state): State<HttpState>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let p = state
        .broker
        .access()
        .permission(&user, &vhost)
        .ok_or_else(not_found)?;
    Ok(Json(json!(p)))
}

/// PUT /api/permissions/{vhost}/{user} `{"configure","write","read"}`:
/// 201 created, 204 changed. Open channels of the user apply it from
/// their next method on.
pub async fn set(
    State(state): State<HttpState>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: Map<String, Value> = crate::http::parse_body(&body)?;
    if !user_and_vhost_exist(&state, &user, &vhost) {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    let [configure, write, read] = fields(&body, ["configure", "write", "read"])?;
    let created = state
        .broker
        .change_meta(MetaCommand::SetPermission(Permission {
            user,
            vhost,
            configure,
            write,
            read,
        }))?
        .changed();
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

/// DELETE /api/permissions/{vhost}/{user}.
pub async fn clear(
    State(state): State<HttpState>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let command = MetaCommand::ClearPermission { user, vhost };
    match state.broker.change_meta(command)?.changed() {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(not_found()),
    }
}

fn topics_where(
    state: &HttpState,
    keep: impl Fn(&TopicPermission) -> bool,
) -> Vec<TopicPermission> {
    state
        .broker
        .access()
        .topic_permissions()
        .into_iter()
        .filter(keep)
        .collect()
}

/// GET /api/topic-permissions.
pub async fn topic_list(State(state): State<HttpState>) -> Json<Value> {
    Json(json!(state.broker.access().topic_permissions()))
}

/// GET /api/users/{user}/topic-permissions.
pub async fn topic_of_user(
    State(state): State<HttpState>,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    state.broker.access().user(&user).ok_or_else(not_found)?;
    Ok(Json(json!(topics_where(&state, |t| t.user == user))))
}

/// GET /api/vhosts/{vhost}/topic-permissions.
pub async fn topic_of_vhost(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    state.broker.vhost(&vhost).ok_or_else(not_found)?;
    Ok(Json(json!(topics_where(&state, |t| t.vhost == vhost))))
}

/// GET /api/topic-permissions/{vhost}/{user}: every exchange's, or 404.
pub async fn topic_show(
    State(state): State<HttpState>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let found = topics_where(&state, |t| t.user == user && t.vhost == vhost);
    if found.is_empty() {
        return Err(not_found());
    }
    Ok(Json(json!(found)))
}

/// PUT /api/topic-permissions/{vhost}/{user} `{"exchange","write","read"}`.
pub async fn topic_set(
    State(state): State<HttpState>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: Map<String, Value> = crate::http::parse_body(&body)?;
    if !user_and_vhost_exist(&state, &user, &vhost) {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    let [exchange, write, read] = fields(&body, ["exchange", "write", "read"])?;
    let created = state
        .broker
        .change_meta(MetaCommand::SetTopicPermission(TopicPermission {
            user,
            vhost,
            exchange,
            write,
            read,
        }))?
        .changed();
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

/// DELETE /api/topic-permissions/{vhost}/{user}: all of the user's in the
/// vhost (or one exchange's, with `?exchange=`).
pub async fn topic_clear(
    State(state): State<HttpState>,
    Path((vhost, user)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let command = MetaCommand::ClearTopicPermission {
        user,
        vhost,
        exchange: query.get("exchange").cloned(),
    };
    match state.broker.change_meta(command)?.changed() {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(not_found()),
    }
}
