//! `/api/definitions`: export and import of vhosts, users (with their
//! password hashes and tags), permissions, topic permissions and durable
//! topology, policies and operator policies in the shape of RabbitMQ's
//! definitions file, so a file exported from RabbitMQ loads here and ours
//! loads into RabbitMQ. Operator policies are runtime parameters of the
//! component `operator_policy` there (`parameters`); parameters of other
//! components (federation, shovel) are ignored. A vhost's own export
//! (`/api/definitions/{vhost}`) has only its topology and policies, as in
//! RabbitMQ.

use antre_broker::access::{password, Permission, TopicPermission};
use antre_broker::definitions::json_to_table;
use antre_broker::exchange::Destination;
use antre_broker::policy::{Policy, PolicyKind};
use antre_broker::vhost::{ExchangeDeclaration, QueueDeclaration};
use antre_broker::UserRecord;
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
    let (mut policies, mut parameters) = (Vec::new(), Vec::new());
    for v in &vhosts {
        let d = v.definitions();
        exchanges.extend(d.exchanges.iter().map(|e| json!(e)));
        queues.extend(d.queues.iter().map(|q| json!(q)));
        bindings.extend(d.bindings.iter().map(|b| json!(b)));
        policies.extend(
            v.policies(PolicyKind::Policy)
                .iter()
                .map(|p| super::policies::policy_json(p)),
        );
        parameters.extend(
            v.policies(PolicyKind::Operator)
                .iter()
                .map(|p| super::policies::parameter_json(p)),
        );
    }
    let mut body = json!({
        "rabbit_version": "3.13.0",
        "rabbitmq_version": "3.13.0",
        "product_name": "antre",
        "product_version": env!("CARGO_PKG_VERSION"),
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
        "policies": policies,
        "parameters": parameters,
    });
    if vhost.is_none() {
        body["vhosts"] = vhosts.iter().map(|v| json!({ "name": v.name })).collect();
        let access = state.broker.access();
        body["users"] = access.users().iter().map(super::users::user_json).collect();
        body["permissions"] = json!(access.permissions());
        body["topic_permissions"] = json!(access.topic_permissions());
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

/// A definitions file; unknown sections (policies, ...) are ignored.
#[derive(Debug, Default, Deserialize)]
struct DefinitionsIn {
    #[serde(default)]
    vhosts: Vec<VhostIn>,
    #[serde(default)]
    users: Vec<Map<String, Value>>,
    #[serde(default)]
    permissions: Vec<Permission>,
    #[serde(default)]
    topic_permissions: Vec<TopicPermission>,
    #[serde(default)]
    exchanges: Vec<ExchangeIn>,
    #[serde(default)]
    queues: Vec<QueueIn>,
    #[serde(default)]
    bindings: Vec<BindingIn>,
    #[serde(default)]
    policies: Vec<Map<String, Value>>,
    #[serde(default)]
    parameters: Vec<Map<String, Value>>,
}

/// The policies and operator policies of a definitions file, validated,
/// each with its vhost (`into`, else its own, else `/`).
fn policies_in(defs: &DefinitionsIn, into: Option<&str>) -> ApiResult<Vec<Policy>> {
    let vhost_of = |m: &Map<String, Value>| -> String {
        into.map(str::to_owned)
            .or_else(|| m.get("vhost").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "/".to_owned())
    };
    let one = |kind: PolicyKind, vhost: String, name: Option<&Value>, body: &Map<String, Value>| {
        let name = name.and_then(Value::as_str).ok_or_else(|| {
            ApiError::bad_request(format!("a {} without a name", kind.component()))
        })?;
        Policy::parse(kind, &vhost, name, body).map_err(|e| {
            ApiError::bad_request(format!(
                "{} '{name}' in vhost '{vhost}': {e}",
                kind.component()
            ))
        })
    };
    let mut out = Vec::new();
    for p in &defs.policies {
        out.push(one(PolicyKind::Policy, vhost_of(p), p.get("name"), p)?);
    }
    for p in &defs.parameters {
        if p.get("component").and_then(Value::as_str) != Some("operator_policy") {
            continue;
        }
        let value = match p.get("value") {
            Some(Value::Object(v)) => v.clone(),
            _ => Map::new(),
        };
        out.push(one(
            PolicyKind::Operator,
            vhost_of(p),
            p.get("name"),
            &value,
        )?);
    }
    Ok(out)
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
        import_access(state, &defs)?;
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
    let policies = policies_in(&defs, into)?;
    for p in &policies {
        state.vhost(&p.vhost)?;
    }
    let (mut policy_count, mut operator_count) = (0, 0);
    for p in policies {
        match p.kind {
            PolicyKind::Policy => policy_count += 1,
            PolicyKind::Operator => operator_count += 1,
        }
        state.vhost(&p.vhost.clone())?.set_policy(p)?;
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
    Ok(json!({
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
        "policies": policy_count,
        "operator_policies": operator_count,
    }))
}

/// A definitions file's user as RabbitMQ's import reads it: a
/// `password_hash` (with `hashing_algorithm`, SHA-256 if absent) or a
/// cleartext `password`, and `tags` as a list or a comma-separated string.
fn user_in(u: &Map<String, Value>) -> ApiResult<UserRecord> {
    let text = |k: &str| u.get(k).and_then(Value::as_str).map(str::to_owned);
    let name = text("name").ok_or_else(|| ApiError::bad_request("a user without a name"))?;
    let tags = super::users::parse_tags(u.get("tags").unwrap_or(&Value::Null))?;
    let (password_hash, hashing_algorithm) = match (text("password_hash"), text("password")) {
        (Some(hash), _) => (
            hash,
            text("hashing_algorithm").unwrap_or_else(|| password::SHA256.to_owned()),
        ),
        (None, Some(p)) => (password::hash(&p), password::SHA256.to_owned()),
        (None, None) => (String::new(), password::SHA256.to_owned()),
    };
    Ok(UserRecord {
        name,
        password_hash,
        hashing_algorithm,
        tags,
    })
}

/// Imports users, permissions and topic permissions in one change: every
/// vhost they name must exist (or be in the file), every user too.
fn import_access(state: &HttpState, defs: &DefinitionsIn) -> ApiResult<()> {
    let users = defs
        .users
        .iter()
        .map(user_in)
        .collect::<ApiResult<Vec<_>>>()?;
    for vhost in defs
        .permissions
        .iter()
        .map(|p| &p.vhost)
        .chain(defs.topic_permissions.iter().map(|t| &t.vhost))
    {
        state.vhost(vhost)?;
    }
    state
        .broker
        .access()
        .import(
            users,
            defs.permissions.clone(),
            defs.topic_permissions.clone(),
        )
        .map_err(super::users::access_error)
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
