//! `/api/exchanges`: list, show, declare, delete.

use std::collections::HashMap;

use antre_broker::access::{Perm, ResourceKind};
use antre_broker::cluster::{MetaCommand, WireTable};
use antre_broker::definitions::json_to_table;
use antre_broker::exchange::Exchange;
use antre_broker::BrokerError;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::peers::other_members_rows;
use super::vhosts::own_exchange_figures;
use super::{flag, listing, Paging};
use crate::http::error::{ApiError, ApiResult};
use crate::http::{lenient, parse_body, render, AuthUser, HttpState};
use antre_cluster::wire::Listing;

async fn list(state: &HttpState, vhost: Option<&str>) -> ApiResult<Vec<Value>> {
    let vhosts = state.vhosts_for(vhost)?;
    let flows = flows(state, vhost).await;
    let mut out = Vec::new();
    for v in vhosts {
        let mut exchanges = v.exchange_summaries();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(exchanges.iter().map(|e| {
            let flow = flows.get(&(v.name.clone(), e.name.clone()));
            render::exchange(&v.name, e, flow)
        }));
    }
    Ok(out)
}

/// Per (vhost, exchange), what every cluster member's channels published
/// through it (this node's from its vhosts, the others' from their own
/// vhost figures, see [`super::vhosts::own_figures`]), as RabbitMQ's
/// exchange figures are the cluster's.
async fn flows(
    state: &HttpState,
    vhost: Option<&str>,
) -> HashMap<(String, String), render::ExchangeFlow> {
    // This node's without the rest of its vhost figures (which walk every
    // queue it owns).
    let mut rows: Vec<Value> = state
        .vhosts_for(vhost)
        .unwrap_or_default()
        .iter()
        .map(|v| json!({ "name": v.name, "exchanges": own_exchange_figures(state, v) }))
        .collect();
    for theirs in other_members_rows(state, Listing::Vhosts, vhost, None).await {
        rows.extend(theirs);
    }
    let mut all: HashMap<(String, String), render::ExchangeFlow> = HashMap::new();
    for figures in rows {
        let (Some(v), Some(exchanges)) =
            (figures["name"].as_str(), figures["exchanges"].as_object())
        else {
            continue;
        };
        for (name, row) in exchanges {
            let n = |i: usize| row[i].as_u64().unwrap_or(0);
            let r = |i: usize| row[i].as_f64().unwrap_or(0.0);
            let flow = render::ExchangeFlow {
                publish_in: n(0),
                publish_out: n(1),
                rates: [r(2), r(3)],
            };
            all.entry((v.to_owned(), name.clone()))
                .or_default()
                .add(&flow);
        }
    }
    all
}

/// GET /api/exchanges.
pub async fn list_all(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let visible = user.filter_vhost(&state, list(&state, None).await?);
    Ok(Json(listing(visible, &query, Paging::Paged)?))
}

/// GET /api/exchanges/{vhost}.
pub async fn list_vhost(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    Ok(Json(listing(
        list(&state, Some(&vhost)).await?,
        &query,
        Paging::Paged,
    )?))
}

/// The exchange, or 404. RabbitMQ names the default exchange `amq.default`
/// in URLs, since its real name is empty.
pub fn find(state: &HttpState, vhost: &str, name: &str) -> ApiResult<Exchange> {
    let v = state.vhost(vhost)?;
    let name = if name == "amq.default" { "" } else { name };
    v.exchange_summary(name)
        .ok_or_else(|| ApiError::not_found(format!("no exchange '{name}' in vhost '{vhost}'")))
}

/// GET /api/exchanges/{vhost}/{name}.
pub async fn show(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let e = find(&state, &vhost, &name)?;
    let flows = flows(&state, Some(&vhost)).await;
    let mut row = render::exchange(&vhost, &e, flows.get(&(vhost.clone(), e.name.clone())));
    // RabbitMQ's per-channel and per-queue breakdowns, kept only in its
    // detailed statistics mode: empty, as RabbitMQ shows them by default.
    row["incoming"] = Value::Array(Vec::new());
    row["outgoing"] = Value::Array(Vec::new());
    Ok(Json(row))
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
/// inequivalent or unknown type; without a type, a direct exchange.
pub async fn declare(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: ExchangeBody = parse_body(&body)?;
    // RabbitMQ 3.10 declares a direct exchange when the body names no
    // type (checked with `{}`), as exchange.declare's default type is.
    let kind = body.kind.unwrap_or_else(|| "direct".to_owned());
    let v = state.vhost(&vhost)?;
    let existed = v.has_exchange(&name);
    // A built-in amq.* exchange may be declared again as it is (204, or
    // 400 when inequivalent), as over AMQP and in RabbitMQ's API; only new
    // amq.* names are reserved.
    if name.is_empty() || (name.starts_with("amq.") && !existed) {
        return Err(BrokerError::AccessRefused(format!(
            "exchange name '{name}' contains reserved prefix 'amq.*'"
        ))
        .into());
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
        return Err(BrokerError::AccessRefused(format!(
            "exchange '{name}' is predeclared and cannot be deleted"
        ))
        .into());
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
