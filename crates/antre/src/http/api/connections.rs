//! `/api/connections`, `/api/channels` and `/api/consumers`.

use std::collections::HashMap;

use antre_cluster::wire::Listing;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::overview::NODE_INFO_TIMEOUT;
use super::peers::{cluster_rows, member_rows};
use super::{listing, Paging};
use crate::http::error::{ApiError, ApiResult};
use crate::http::{render, AuthUser, HttpState};
use crate::registry::ConnectionEntry;

/// This node's connections (of `vhost`, if given).
pub(crate) fn connections(state: &HttpState, vhost: Option<&str>) -> Vec<Value> {
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
        user.filter_user(cluster_rows(&state, Listing::Connections, None, None).await),
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
    let all =
        user.filter_user(cluster_rows(&state, Listing::Connections, Some(&vhost), None).await);
    Ok(Json(listing(all, &query, Paging::Unpaged)?))
}

fn find(state: &HttpState, name: &str) -> ApiResult<std::sync::Arc<ConnectionEntry>> {
    state
        .registry
        .by_name(name)
        .ok_or_else(|| ApiError::not_found(format!("no connection '{name}'")))
}

/// The row of `what` named `name` on another member, for a connection or
/// channel this node does not have (none on a single node).
async fn elsewhere(state: &HttpState, what: Listing, name: &str) -> Option<Value> {
    state.cluster.as_ref()?;
    cluster_rows(state, what, None, Some(name))
        .await
        .into_iter()
        .find(|row| row["node"] != state.node_name().as_str())
}

/// The user a row of another member's listing belongs to.
fn owner_of(row: &Value) -> &str {
    row["user"].as_str().unwrap_or_default()
}

/// Where connection `name` is: on this node, or in another member's
/// listing (its row).
enum Located {
    Here(std::sync::Arc<ConnectionEntry>),
    Elsewhere(Value),
}

/// Finds connection `name` on this node or another member, and checks
/// that `user` may see it (or close it, with `delete`); 404 if no member
/// has it.
async fn locate(
    state: &HttpState,
    user: &AuthUser,
    name: &str,
    delete: bool,
) -> ApiResult<Located> {
    match find(state, name) {
        Ok(conn) => {
            user.may_touch(&conn.user, delete)?;
            Ok(Located::Here(conn))
        }
        Err(missing) => {
            let row = elsewhere(state, Listing::Connections, name)
                .await
                .ok_or(missing)?;
            user.may_touch(owner_of(&row), delete)?;
            Ok(Located::Elsewhere(row))
        }
    }
}

/// GET /api/connections/{name}: a connection of this node, or else of
/// another member (its row of that member's listing).
pub async fn show(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(match locate(&state, &user, &name, false).await? {
        Located::Here(conn) => render::connection(&state, &conn),
        Located::Elsewhere(row) => row,
    }))
}

/// DELETE /api/connections/{name}: closes it with 320 CONNECTION_FORCED and
/// the `X-Reason` header's text. Another member's connection is closed by
/// that member.
pub async fn close(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<StatusCode> {
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management API");
    let row = match locate(&state, &user, &name, true).await? {
        Located::Here(conn) => {
            conn.force_close(reason);
            return Ok(StatusCode::NO_CONTENT);
        }
        Located::Elsewhere(row) => row,
    };
    let (Some(cluster), Some(node)) = (&state.cluster, row["node"].as_str()) else {
        return Err(ApiError::not_found(format!("no connection '{name}'")));
    };
    match cluster
        .close_connection(node, &name, reason, NODE_INFO_TIMEOUT)
        .await
    {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found(format!("no connection '{name}'"))),
        Err(e) => Err(ApiError::unavailable(format!(
            "cluster node '{node}' did not close connection '{name}': {e}"
        ))),
    }
}

/// The channels of this node's connections that `keep` keeps.
pub(crate) fn channels_where(
    state: &HttpState,
    keep: impl Fn(&ConnectionEntry) -> bool,
) -> Vec<Value> {
    let consumers = render::all_consumers(state);
    let mut out = Vec::new();
    for c in state.registry.connections() {
        if !keep(&c) {
            continue;
        }
        for n in c.channels() {
            out.push(render::channel(state, &c, n, &consumers));
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
    let all = match locate(&state, &user, &name, false).await? {
        Located::Here(_) => channels_where(&state, |c| c.name == name),
        // Asked of the member the connection's row names, for the
        // connection's vhost only.
        Located::Elsewhere(row) => {
            let node = row["node"].as_str().unwrap_or_default();
            let vhost = row["vhost"].as_str();
            member_rows(&state, node, Listing::Channels, vhost, None)
                .await
                .into_iter()
                .filter(|ch| ch["connection_details"]["name"] == name.as_str())
                .collect()
        }
    };
    Ok(Json(listing(all, &query, Paging::Unpaged)?))
}

/// GET /api/channels.
pub async fn channels(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let all = user.filter_user(cluster_rows(&state, Listing::Channels, None, None).await);
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
    let all = user.filter_user(cluster_rows(&state, Listing::Channels, Some(&vhost), None).await);
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
                let mut body = render::channel(&state, &c, n, &consumers);
                body["consumer_details"] = consumers
                    .iter()
                    .filter(|(_, i)| i.connection == c.id && i.channel == n)
                    .map(|(q, i)| render::consumer(&state, q, i))
                    .collect();
                return Ok(Json(body));
            }
        }
    }
    // Another member's, with the consumers its node lists for it.
    let mut row = elsewhere(&state, Listing::Channels, &name)
        .await
        .ok_or_else(|| ApiError::not_found(format!("no channel '{name}'")))?;
    user.may_touch(owner_of(&row), false)?;
    row["consumer_details"] = cluster_rows(&state, Listing::Consumers, None, None)
        .await
        .into_iter()
        .filter(|c| c["channel_details"]["name"] == name.as_str())
        .collect();
    Ok(Json(row))
}

/// The consumers of this node's queues (of `vhost`, if given).
pub(crate) fn consumers(state: &HttpState, vhost: Option<&str>) -> Vec<Value> {
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
        user.filter_user(cluster_rows(&state, Listing::Consumers, None, None).await),
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
    let all = user.filter_user(cluster_rows(&state, Listing::Consumers, Some(&vhost), None).await);
    Ok(Json(listing(all, &query, Paging::Unpaged)?))
}
