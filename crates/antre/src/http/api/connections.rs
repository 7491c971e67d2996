//! `/api/connections`, `/api/channels` and `/api/consumers`.

use std::collections::HashMap;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::{listing, Paging};
use crate::http::error::{ApiError, ApiResult};
use crate::http::{render, AuthUser, HttpState};
use crate::registry::ConnectionEntry;

fn connections(state: &HttpState, vhost: Option<&str>) -> Vec<Value> {
    state
        .registry
        .connections()
        .iter()
        .filter(|c| vhost.is_none_or(|v| c.vhost == v))
        .map(|c| render::connection(state, c))
        .collect()
}

/// GET /api/connections.
pub async fn list(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    Ok(Json(listing(
        user.filter_user(connections(&state, None)),
        &query,
        Paging::Paged,
    )?))
}

/// GET /api/vhosts/{vhost}/connections.
pub async fn list_vhost(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    state.vhost(&vhost)?;
    let all = user.filter_user(connections(&state, Some(&vhost)));
    Ok(Json(listing(all, &query, Paging::Unpaged)?))
}

fn find(state: &HttpState, name: &str) -> ApiResult<std::sync::Arc<ConnectionEntry>> {
    state
        .registry
        .by_name(name)
        .ok_or_else(|| ApiError::not_found(format!("no connection '{name}'")))
}

/// GET /api/connections/{name}.
pub async fn show(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = find(&state, &name)?;
    user.may_touch(&conn.user, false)?;
    Ok(Json(render::connection(&state, &conn)))
}

/// DELETE /api/connections/{name}: closes it with 320 CONNECTION_FORCED and
/// the `X-Reason` header's text.
pub async fn close(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<StatusCode> {
    let conn = find(&state, &name)?;
    user.may_touch(&conn.user, true)?;
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management API");
    conn.force_close(reason);
    Ok(StatusCode::NO_CONTENT)
}

fn channels_where(state: &HttpState, keep: impl Fn(&ConnectionEntry) -> bool) -> Vec<Value> {
    let consumers = render::all_consumers(state);
    let mut out = Vec::new();
    for c in state.registry.connections() {
        if !keep(&c) {
            continue;
        }
        for n in c.channels() {
            out.push(render::channel(&c, n, &consumers));
        }
    }
    out
}

/// GET /api/connections/{name}/channels.
pub async fn channels_of(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    user.may_touch(&find(&state, &name)?.user, false)?;
    let all = channels_where(&state, |c| c.name == name);
    Ok(Json(listing(all, &query, Paging::Unpaged)?))
}

/// GET /api/channels.
pub async fn channels(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let all = user.filter_user(channels_where(&state, |_| true));
    Ok(Json(listing(all, &query, Paging::Paged)?))
}

/// GET /api/vhosts/{vhost}/channels.
pub async fn channels_vhost(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    state.vhost(&vhost)?;
    let all = user.filter_user(channels_where(&state, |c| c.vhost == vhost));
    Ok(Json(listing(all, &query, Paging::Unpaged)?))
}

/// GET /api/channels/{name}, with its consumers.
pub async fn channel(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let consumers = render::all_consumers(&state);
    for c in state.registry.connections() {
        for n in c.channels() {
            if render::channel_name(&c, n) == name {
                user.may_touch(&c.user, false)?;
                let mut body = render::channel(&c, n, &consumers);
                body["consumer_details"] = consumers
                    .iter()
                    .filter(|(_, i)| i.connection == c.id && i.channel == n)
                    .map(|(q, i)| render::consumer(&state, q, i))
                    .collect();
                return Ok(Json(body));
            }
        }
    }
    Err(ApiError::not_found(format!("no channel '{name}'")))
}

fn consumers(state: &HttpState, vhost: Option<&str>) -> Vec<Value> {
    render::all_consumers(state)
        .iter()
        .filter(|(q, _)| vhost.is_none_or(|v| q.vhost == v))
        .map(|(q, i)| render::consumer(state, q, i))
        .collect()
}

/// GET /api/consumers.
pub async fn consumers_all(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    Ok(Json(listing(
        user.filter_user(consumers(&state, None)),
        &query,
        Paging::Unpaged,
    )?))
}

/// GET /api/consumers/{vhost}.
pub async fn consumers_vhost(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    state.vhost(&vhost)?;
    let all = user.filter_user(consumers(&state, Some(&vhost)));
    Ok(Json(listing(all, &query, Paging::Unpaged)?))
}
