//! Runtime parameters, global parameters, extensions and the cluster name,
//! answered as RabbitMQ answers them, so `rabbitmqadmin list parameters`
//! and the like work.
//!
//! - `/api/parameters[/{component}[/{vhost}[/{name}]]]`: besides `policy`
//!   and `operator_policy` (served by [`super::policies`], which routes
//!   the other components here), the component antre has is RabbitMQ's
//!   built-in `vhost-limits`, whose one
//!   parameter per vhost, `limits`, is the vhost's limits as a whole
//!   (`{"value": {"max-connections": 10}, "vhost": "/", "component":
//!   "vhost-limits", "name": "limits"}`; `rabbitmqctl set_vhost_limits`
//!   sets it so). Other components come with RabbitMQ plugins antre does
//!   not have (federation, shovel): their listings are `[]` and setting
//!   one fails as RabbitMQ fails for an unknown component (400
//!   `component ... not found`).
//! - `/api/global-parameters`: antre keeps `cluster_name`, once the
//!   cluster was named at run time; `[]` otherwise.
//! - `/api/extensions`: the UI has no plugin extensions; `[]`.
//! - `/api/cluster-name`: the name set at run time (PUT here, or a
//!   definitions file's `cluster_name`), else the `cluster_name` setting,
//!   else the node's name.
//!
//! `/api/vhost-limits` and `/api/user-limits` are in [`super::limits`].

use antre_broker::access::limits::{parse_limits, LimitScope};
use antre_broker::access::VhostLimits;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::{AuthUser, HttpState};
use antre_broker::cluster::MetaCommand;

/// The component that holds vhost limits.
pub const VHOST_LIMITS: &str = "vhost-limits";
/// The name of its one parameter per vhost.
pub const LIMITS: &str = "limits";

fn none() -> Json<Value> {
    Json(json!([]))
}

/// A vhost's limits as a runtime parameter.
pub fn limits_parameter(l: &VhostLimits) -> Value {
    json!({
        "value": l.value,
        "vhost": l.vhost,
        "component": VHOST_LIMITS,
        "name": LIMITS,
    })
}

/// Every vhost-limits parameter of the vhosts `user` may see, or of one.
pub(super) fn limits_parameters(
    state: &HttpState,
    user: &AuthUser,
    vhost: Option<&str>,
) -> Vec<Value> {
    let visible = user.vhost_filter(state);
    state
        .broker
        .access()
        .all_vhost_limits()
        .iter()
        .filter(|l| vhost.is_none_or(|v| v == l.vhost))
        .filter(|l| visible.as_ref().is_none_or(|v| v.contains(&l.vhost)))
        .map(limits_parameter)
        .collect()
}

/// GET /api/global-parameters, /api/extensions: nothing.
pub async fn empty() -> Json<Value> {
    none()
}

/// GET /api/parameters/{component}.
pub async fn of_component(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(component): Path<String>,
) -> Json<Value> {
    match component.as_str() {
        VHOST_LIMITS => Json(limits_parameters(&state, &user, None).into()),
        _ => none(),
    }
}

/// GET /api/parameters/{component}/{vhost}: 404 for a missing vhost.
pub async fn of_vhost(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    state.vhost(&vhost)?;
    Ok(match component.as_str() {
        VHOST_LIMITS => Json(limits_parameters(&state, &user, Some(&vhost)).into()),
        _ => none(),
    })
}

fn no_parameter(component: &str, vhost: &str, name: &str) -> ApiError {
    ApiError::not_found(format!(
        "no parameter '{name}' of component '{component}' in vhost '{vhost}'"
    ))
}

/// GET /api/parameters/{component}/{vhost}/{name}.
pub async fn one(
    State(state): State<HttpState>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    state.vhost(&vhost)?;
    let limits = state.broker.access().vhost_limits(&vhost);
    if component != VHOST_LIMITS || name != LIMITS || limits.is_empty() {
        return Err(no_parameter(&component, &vhost, &name));
    }
    Ok(Json(limits_parameter(&VhostLimits {
        vhost,
        value: limits,
    })))
}

/// DELETE /api/parameters/{component}/{vhost}/{name}: for vhost-limits,
/// clears every limit of the vhost (`rabbitmqctl clear_vhost_limits`).
pub async fn clear(
    State(state): State<HttpState>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    state.vhost(&vhost)?;
    if component != VHOST_LIMITS || name != LIMITS {
        return Err(no_parameter(&component, &vhost, &name));
    }
    let cleared = VhostLimits {
        vhost,
        value: Default::default(),
    };
    state
        .broker
        .change_meta(MetaCommand::ReplaceVhostLimits(cleared))?;
    Ok(StatusCode::NO_CONTENT)
}

/// PUT /api/parameters/{component}/{vhost}/{name} with `{"value": ...}`:
/// for vhost-limits' `limits`, replaces the vhost's limits with the given
/// object (`rabbitmqctl set_vhost_limits`); any other component is
/// refused as RabbitMQ refuses a component no plugin provides.
pub async fn set(
    State(state): State<HttpState>,
    Path((component, vhost, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    state.vhost(&vhost)?;
    if component != VHOST_LIMITS {
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\ncomponent {component} not found \
             (antre has no runtime parameter components but vhost-limits: \
             no federation, no shovel)\n"
        )));
    }
    if name != LIMITS {
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\nparameter '{name}' of {VHOST_LIMITS} must be called '{LIMITS}'\n"
        )));
    }
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let value = body
        .get("value")
        .ok_or_else(|| ApiError::bad_request("[{key_missing,value}]"))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\n{LIMITS} not a list {value}\n"
        )));
    }
    let value = parse_limits(LimitScope::Vhost, value)
        .map_err(|e| ApiError::bad_request(format!("Validation failed\n\n{e}\n")))?;
    state
        .broker
        .change_meta(MetaCommand::ReplaceVhostLimits(VhostLimits {
            vhost,
            value,
        }))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The global parameter antre keeps: `cluster_name`, once set at run
/// time (RabbitMQ's global parameters, in its shape).
const CLUSTER_NAME: &str = "cluster_name";

/// The global parameters, as RabbitMQ lists them: `cluster_name` once the
/// cluster was named at run time.
pub fn global_parameters(state: &HttpState) -> Vec<Value> {
    let named = state.broker.access().cluster_name();
    named
        .into_iter()
        .map(|value| json!({ "name": CLUSTER_NAME, "value": value }))
        .collect()
}

/// GET /api/global-parameters.
pub async fn global_list(State(state): State<HttpState>) -> Json<Value> {
    Json(global_parameters(&state).into())
}

/// GET /api/global-parameters/{name}.
pub async fn global(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    global_parameters(&state)
        .into_iter()
        .find(|p| p["name"] == name.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no global parameter '{name}'")))
}

/// PUT /api/global-parameters/{name}, `{"value": ...}`: only
/// `cluster_name`, which antre keeps (as PUT /api/cluster-name).
pub async fn global_set(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    if name != CLUSTER_NAME {
        return Err(ApiError::bad_request(format!(
            "antre keeps no global parameter '{name}' (only '{CLUSTER_NAME}')"
        )));
    }
    let body: Value = crate::http::parse_body(&body)?;
    set_cluster_name(&state, body.get("value"))
}

/// GET /api/cluster-name: the name set at run time, else the
/// `cluster_name` setting, else this node's name.
pub async fn cluster_name(State(state): State<HttpState>) -> Json<Value> {
    Json(json!({ "name": state.cluster_name() }))
}

/// PUT /api/cluster-name, `{"name": ...}` (administrators): names the
/// cluster, on every node, kept across restarts (`rabbitmqctl
/// set_cluster_name`).
pub async fn set_cluster(State(state): State<HttpState>, body: Bytes) -> ApiResult<StatusCode> {
    let body: Value = crate::http::parse_body(&body)?;
    set_cluster_name(&state, body.get("name"))
}

/// A cluster name as a body or a definitions file gives it: a string,
/// trimmed, not empty; or why not.
pub(super) fn cluster_name_in(value: Option<&Value>) -> Result<&str, &'static str> {
    let Some(name) = value.and_then(Value::as_str).map(str::trim) else {
        return Err("the cluster's name must be a string");
    };
    if name.is_empty() {
        return Err("the cluster's name must not be empty");
    }
    Ok(name)
}

fn set_cluster_name(state: &HttpState, name: Option<&Value>) -> ApiResult<StatusCode> {
    let name = cluster_name_in(name).map_err(ApiError::bad_request)?;
    let command = MetaCommand::SetClusterName {
        name: name.to_owned(),
    };
    state.broker.change_meta(command)?;
    Ok(StatusCode::NO_CONTENT)
}
