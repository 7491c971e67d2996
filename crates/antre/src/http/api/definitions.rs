//! `/api/definitions`: export and import of durable topology in the shape
//! of RabbitMQ's definitions file, so a file exported from RabbitMQ loads
//! here (its users, permissions and policies are ignored) and ours loads
//! into RabbitMQ.

use antre_broker::definitions::json_to_table;
use antre_broker::exchange::Destination;
use antre_broker::vhost::{ExchangeDeclaration, QueueDeclaration};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::HttpState;

fn export(state: &HttpState, vhost: Option<&str>) -> ApiResult<Value> {
    let vhosts = state.vhosts_for(vhost)?;
    let (mut exchanges, mut queues, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    for v in &vhosts {
        let d = v.definitions();
        exchanges.extend(d.exchanges.iter().map(|e| json!(e)));
        queues.extend(d.queues.iter().map(|q| json!(q)));
        bindings.extend(d.bindings.iter().map(|b| json!(b)));
    }
    let mut body = json!({
        "rabbit_version": "3.13.0",
        "rabbitmq_version": "3.13.0",
        "product_name": "antre",
        "product_version": env!("CARGO_PKG_VERSION"),
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
        "policies": [],
        "parameters": [],
    });
    if vhost.is_none() {
        body["vhosts"] = vhosts.iter().map(|v| json!({ "name": v.name })).collect();
        body["users"] = json!([]);
        body["permissions"] = json!([]);
        body["topic_permissions"] = json!([]);
        body["global_parameters"] = json!([]);
    }
    Ok(body)
}

/// GET /api/definitions.
pub async fn export_all(State(state): State<HttpState>) -> ApiResult<Json<Value>> {
    Ok(Json(export(&state, None)?))
}

/// GET /api/definitions/{vhost}.
pub async fn export_vhost(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(export(&state, Some(&vhost))?))
}

#[derive(Debug, Default, Deserialize)]
struct VhostIn {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ExchangeIn {
    name: String,
    vhost: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct QueueIn {
    name: String,
    vhost: Option<String>,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct BindingIn {
    source: String,
    vhost: Option<String>,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// A definitions file; unknown sections (users, policies, ...) are ignored.
#[derive(Debug, Default, Deserialize)]
struct DefinitionsIn {
    #[serde(default)]
    vhosts: Vec<VhostIn>,
    #[serde(default)]
    exchanges: Vec<ExchangeIn>,
    #[serde(default)]
    queues: Vec<QueueIn>,
    #[serde(default)]
    bindings: Vec<BindingIn>,
}

/// What an import created, for the answer.
fn import(state: &HttpState, body: &[u8], into: Option<&str>) -> ApiResult<Value> {
    let defs: DefinitionsIn = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid definitions JSON: {e}")))?;
    let pick = |own: &Option<String>| -> String {
        into.map(str::to_owned)
            .or_else(|| own.clone())
            .unwrap_or_else(|| "/".to_owned())
    };
    if let Some(v) = into {
        state.vhost(v)?;
    } else {
        for v in &defs.vhosts {
            state.broker.add_vhost(&v.name)?;
        }
    }
    // Check the whole file before changing anything: a vhost that is named
    // by an object but neither exists nor is declared fails the import.
    for vhost in defs
        .exchanges
        .iter()
        .map(|e| pick(&e.vhost))
        .chain(defs.queues.iter().map(|q| pick(&q.vhost)))
        .chain(defs.bindings.iter().map(|b| pick(&b.vhost)))
    {
        state.vhost(&vhost)?;
    }
    let (mut exchanges, mut queues, mut bindings) = (0, 0, 0);
    for e in &defs.exchanges {
        if e.name.is_empty() || e.name.starts_with("amq.") {
            continue;
        }
        state.vhost(&pick(&e.vhost))?.declare_exchange(
            ExchangeDeclaration {
                name: e.name.clone(),
                kind: e.kind.clone(),
                durable: e.durable,
                auto_delete: e.auto_delete,
                internal: e.internal,
                arguments: json_to_table(&e.arguments),
            },
            false,
        )?;
        exchanges += 1;
    }
    for q in &defs.queues {
        state.vhost(&pick(&q.vhost))?.declare_queue(
            QueueDeclaration {
                name: q.name.clone(),
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
                arguments: json_to_table(&q.arguments),
            },
            false,
            0,
        )?;
        queues += 1;
    }
    for b in &defs.bindings {
        let destination = match b.destination_type.as_str() {
            "queue" => Destination::Queue(b.destination.clone()),
            "exchange" => Destination::Exchange(b.destination.clone()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "binding destination_type '{other}' is neither 'queue' nor 'exchange'"
                )))
            }
        };
        state.vhost(&pick(&b.vhost))?.bind(
            &b.source,
            destination,
            &b.routing_key,
            json_to_table(&b.arguments),
            0,
        )?;
        bindings += 1;
    }
    Ok(json!({ "exchanges": exchanges, "queues": queues, "bindings": bindings }))
}

/// POST /api/definitions: imports a whole file (idempotent: existing
/// objects with the same properties are kept).
pub async fn import_all(
    State(state): State<HttpState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    Ok((StatusCode::CREATED, Json(import(&state, &body, None)?)))
}

/// POST /api/definitions/{vhost}: imports into one vhost, whatever the
/// file's objects say their vhost is.
pub async fn import_vhost(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    Ok((
        StatusCode::CREATED,
        Json(import(&state, &body, Some(&vhost))?),
    ))
}
