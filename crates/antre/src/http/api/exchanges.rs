//! `/api/exchanges`: list, show, declare, delete.

use std::collections::HashMap;

use antre_broker::access::{Perm, ResourceKind};
use antre_broker::cluster::{MetaCommand, WireTable};
use antre_broker::definitions::json_to_table;
use antre_broker::exchange::Exchange;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{flag, listing, Paging};
use crate::http::error::{ApiError, ApiResult};
use crate::http::{lenient, parse_body, render, AuthUser, HttpState};

fn list(state: &HttpState, vhost: Option<&str>) -> ApiResult<Vec<Value>> {
    let mut out = Vec::new();
    for v in state.vhosts_for(vhost)? {
        let mut exchanges = v.exchanges();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(exchanges.iter().map(|e| render::exchange(&v.name, e)));
    }
    Ok(out)
}

/// GET /api/exchanges.
pub async fn list_all(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let visible = user.filter_vhost(&state, list(&state, None)?);
    Ok(Json(listing(visible, &query, Paging::Paged)?))
}

/// GET /api/exchanges/{vhost}.
pub async fn list_vhost(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    Ok(Json(listing(
        list(&state, Some(&vhost))?,
        &query,
        Paging::Paged,
    )?))
}

/// The exchange, or 404. RabbitMQ names the default exchange `amq.default`
/// in URLs, since its real name is empty.
pub fn find(state: &HttpState, vhost: &str, name: &str) -> ApiResult<Exchange> {
    let v = state.vhost(vhost)?;
    let name = if name == "amq.default" { "" } else { name };
    v.exchanges()
        .into_iter()
        .find(|e| e.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no exchange '{name}' in vhost '{vhost}'")))
}

/// GET /api/exchanges/{vhost}/{name}.
pub async fn show(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let e = find(&state, &vhost, &name)?;
    Ok(Json(render::exchange(&vhost, &e)))
}

/// The body of PUT /api/exchanges/{vhost}/{name}.
/// Fields are read as RabbitMQ reads them (see [`lenient`]).
#[derive(Debug, Default, Deserialize)]
pub struct ExchangeBody {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    durable: Option<bool>,
    #[serde(default, deserialize_with = "lenient::bool")]
    auto_delete: bool,
    #[serde(default, deserialize_with = "lenient::bool")]
    internal: bool,
    #[serde(default, deserialize_with = "lenient::arguments")]
    arguments: Map<String, Value>,
}

/// PUT /api/exchanges/{vhost}/{name}: 201 created, 204 existed, 400
/// inequivalent or unknown type.
pub async fn declare(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: ExchangeBody = parse_body(&body)?;
    let Some(kind) = body.kind else {
        return Err(ApiError::bad_request(
            "field 'type' is required (direct, fanout, topic or headers)",
        ));
    };
    let v = state.vhost(&vhost)?;
    let existed = v.exchanges().iter().any(|e| e.name == name);
    // A built-in amq.* exchange may be declared again as it is (204, or
    // 400 when inequivalent), as over AMQP and in RabbitMQ's API; only new
    // amq.* names are reserved.
    if name.is_empty() || (name.starts_with("amq.") && !existed) {
        return Err(ApiError::bad_request(format!(
            "exchange name '{name}' is reserved or empty"
        )));
    }
    // What exchange.declare needs: configure, and for a new exchange with
    // an alternate, read on it and write on the alternate.
    user.permit(
        &state,
        &vhost,
        ResourceKind::Exchange,
        &name,
        Perm::Configure,
    )?;
    if let Some(ae) = body
        .arguments
        .get("alternate-exchange")
        .and_then(Value::as_str)
    {
        if !existed {
            user.permit(&state, &vhost, ResourceKind::Exchange, &name, Perm::Read)?;
            user.permit(&state, &vhost, ResourceKind::Exchange, ae, Perm::Write)?;
        }
    }
    state
        .broker
        .change_meta(MetaCommand::DeclareExchange {
            vhost,
            name,
            kind,
            durable: body.durable.unwrap_or(true),
            auto_delete: body.auto_delete,
            internal: body.internal,
            arguments: WireTable(json_to_table(&body.arguments)),
        })
        .map_err(ApiError::direct_meta)?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// DELETE /api/exchanges/{vhost}/{name}[?if-unused=true].
pub async fn remove(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    find(&state, &vhost, &name)?;
    if name.is_empty() || name.starts_with("amq.") {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            error: "access_refused",
            reason: format!("exchange '{name}' is predeclared and cannot be deleted"),
        });
    }
    user.permit(
        &state,
        &vhost,
        ResourceKind::Exchange,
        &name,
        Perm::Configure,
    )?;
    state.broker.change_meta(MetaCommand::DeleteExchange {
        vhost,
        name,
        if_unused: flag(&query, "if-unused"),
    })?;
    Ok(StatusCode::NO_CONTENT)
}
