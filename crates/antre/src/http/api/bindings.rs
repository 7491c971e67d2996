//! `/api/bindings`: list, create, delete, and the bindings of one queue or
//! exchange. The default exchange's implicit binding to every queue is
//! listed, as RabbitMQ lists it, but cannot be created or deleted.

use std::collections::HashMap;

use antre_broker::access::{Perm, ResourceKind};
use antre_broker::cluster::MetaCommand;
use antre_broker::definitions::json_to_table;
use antre_broker::exchange::{Binding, Destination};
use antre_broker::Vhost;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{listing, Paging};
use crate::http::error::{ApiError, ApiResult};
use crate::http::{lenient, parse_body, render, AuthUser, HttpState};

/// Every binding of a vhost: (source, binding), the default exchange's first.
fn all(v: &Vhost) -> Vec<(String, Binding)> {
    let mut queues: Vec<String> = v.queues().iter().map(|q| q.name.clone()).collect();
    queues.sort();
    let mut out: Vec<(String, Binding)> = queues
        .into_iter()
        .map(|q| {
            (
                String::new(),
                Binding {
                    routing_key: q.clone(),
                    destination: Destination::Queue(q),
                    arguments: Default::default(),
                },
            )
        })
        .collect();
    let mut exchanges = v.exchanges();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    for e in exchanges {
        for b in e.bindings {
            out.push((e.name.clone(), b));
        }
    }
    out
}

fn render_all(v: &Vhost, keep: impl Fn(&str, &Binding) -> bool) -> Vec<Value> {
    all(v)
        .iter()
        .filter(|(s, b)| keep(s, b))
        .map(|(s, b)| {
            if s.is_empty() {
                let Destination::Queue(q) = &b.destination else {
                    unreachable!("the default exchange binds queues")
                };
                render::default_binding(&v.name, q)
            } else {
                render::binding(&v.name, s, b)
            }
        })
        .collect()
}

/// GET /api/bindings.
pub async fn list_all(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for v in state.vhosts_for(None)? {
        out.extend(render_all(&v, |_, _| true));
    }
    let visible = user.filter_vhost(&state, out);
    Ok(Json(listing(visible, &query, Paging::Unpaged)?))
}

/// GET /api/bindings/{vhost}.
pub async fn list_vhost(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let v = state.vhost(&vhost)?;
    let all = render_all(&v, |_, _| true);
    Ok(Json(listing(all, &query, Paging::Unpaged)?))
}

/// GET /api/queues/{vhost}/{name}/bindings.
pub async fn of_queue(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    if !state.vhost(&vhost)?.has_queue(&name) {
        super::queues::find(&state, &vhost, &name)?;
    }
    let v = state.vhost(&vhost)?;
    let dest = Destination::Queue(name);
    Ok(Json(Value::Array(render_all(&v, |_, b| {
        b.destination == dest
    }))))
}

fn url_exchange(name: &str) -> &str {
    if name == "amq.default" {
        ""
    } else {
        name
    }
}

/// GET /api/exchanges/{vhost}/{name}/bindings/source.
pub async fn of_source(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    super::exchanges::find(&state, &vhost, &name)?;
    let v = state.vhost(&vhost)?;
    let name = url_exchange(&name);
    Ok(Json(Value::Array(render_all(&v, |s, _| s == name))))
}

/// GET /api/exchanges/{vhost}/{name}/bindings/destination.
pub async fn of_destination(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    super::exchanges::find(&state, &vhost, &name)?;
    let v = state.vhost(&vhost)?;
    let dest = Destination::Exchange(name);
    Ok(Json(Value::Array(render_all(&v, |_, b| {
        b.destination == dest
    }))))
}

fn destination(kind: &str, name: String) -> ApiResult<Destination> {
    match kind {
        "q" => Ok(Destination::Queue(name)),
        "e" => Ok(Destination::Exchange(url_exchange(&name).to_owned())),
        other => Err(ApiError::not_found(format!(
            "destination kind '{other}' is neither 'q' (queue) nor 'e' (exchange)"
        ))),
    }
}

/// GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}.
pub async fn between(
    State(state): State<HttpState>,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let v = state.vhost(&vhost)?;
    let dest = destination(&kind, dest)?;
    let source = url_exchange(&source).to_owned();
    Ok(Json(Value::Array(render_all(&v, |s, b| {
        s == source && b.destination == dest
    }))))
}

/// The body of POST /api/bindings/....
/// `routing_key` may be null (pyrabbit2 sends null when none is given) and
/// `arguments` `[]` (pyrabbit2's default), as RabbitMQ accepts.
#[derive(Debug, Default, Deserialize)]
pub struct BindingBody {
    #[serde(default)]
    routing_key: Option<String>,
    #[serde(default, deserialize_with = "lenient::arguments")]
    arguments: Map<String, Value>,
}

/// POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}: 201 with a
/// Location header naming the new binding.
pub async fn create(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let body: BindingBody = parse_body(&body)?;
    let routing_key = body.routing_key.unwrap_or_default();
    let v = state.vhost(&vhost)?;
    let destination = destination(&kind, dest.clone())?;
    permit_binding(&state, &user, &vhost, url_exchange(&source), &destination)?;
    let arguments = json_to_table(&body.arguments);
    let bind = binding_command(
        false,
        &v.name,
        url_exchange(&source),
        destination,
        &routing_key,
        &arguments,
    );
    state
        .broker
        .change_meta(bind)
        .map_err(ApiError::direct_meta)?;
    let location = format!(
        "{}/{}",
        render::percent_encode(&dest),
        render::percent_encode(&render::properties_key(&routing_key, &arguments))
    );
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

fn find_binding(
    v: &Vhost,
    source: &str,
    dest: &Destination,
    props: &str,
) -> ApiResult<(String, Binding)> {
    all(v)
        .into_iter()
        .find(|(s, b)| {
            s == source
                && b.destination == *dest
                && render::properties_key(&b.routing_key, &b.arguments) == props
        })
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no binding from exchange '{source}' with properties key '{props}' in vhost '{}'",
                v.name
            ))
        })
}

/// GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}.
pub async fn show(
    State(state): State<HttpState>,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let v = state.vhost(&vhost)?;
    let dest = destination(&kind, dest)?;
    let source = url_exchange(&source);
    let (s, b) = find_binding(&v, source, &dest, &props)?;
    Ok(Json(if s.is_empty() {
        render::default_binding(&v.name, &b.routing_key)
    } else {
        render::binding(&v.name, &s, &b)
    }))
}

/// DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}.
pub async fn remove(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let v = state.vhost(&vhost)?;
    let dest = destination(&kind, dest)?;
    let source = url_exchange(&source);
    let (s, b) = find_binding(&v, source, &dest, &props)?;
    permit_binding(&state, &user, &vhost, source, &dest)?;
    state.broker.change_meta(binding_command(
        true,
        &v.name,
        &s,
        b.destination,
        &b.routing_key,
        &b.arguments,
    ))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A bind or unbind as a metadata change.
fn binding_command(
    unbind: bool,
    vhost: &str,
    source: &str,
    destination: Destination,
    routing_key: &str,
    arguments: &antre_amqp::FieldTable,
) -> MetaCommand {
    MetaCommand::binding(
        unbind,
        vhost,
        source.to_owned(),
        destination,
        routing_key.to_owned(),
        arguments.clone(),
    )
}

/// What binding and unbinding need: write on the destination, read on the
/// source (as queue.bind over AMQP), and a destination queue that is no
/// connection's exclusive queue.
fn permit_binding(
    state: &HttpState,
    user: &AuthUser,
    vhost: &str,
    source: &str,
    destination: &Destination,
) -> ApiResult<()> {
    let (kind, name) = match destination {
        Destination::Queue(q) => (ResourceKind::Queue, q.as_str()),
        Destination::Exchange(e) => (ResourceKind::Exchange, e.as_str()),
    };
    user.permit(state, vhost, kind, name, Perm::Write)?;
    user.permit(state, vhost, ResourceKind::Exchange, source, Perm::Read)?;
    match destination {
        Destination::Queue(q) => super::queues::refuse_exclusive(&*state.vhost(vhost)?, q),
        Destination::Exchange(_) => Ok(()),
    }
}
