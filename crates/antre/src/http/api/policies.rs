//! `/api/policies` and `/api/operator-policies`, as RabbitMQ's management
//! plugin has them: list (all, or one vhost's), show, set (PUT: 201
//! created, 204 updated) and delete, with RabbitMQ's validation texts
//! ([`antre_broker::policy`]). Listings come by priority, lowest first.
//!
//! Who may: any management user lists the policies of its vhosts; changing
//! a policy takes the `policymaker` or `administrator` tag and permissions
//! in the vhost; operator policies are for administrators (see
//! [`crate::http::auth`]).

use std::collections::HashMap;

use antre_broker::cluster::MetaCommand;
use antre_broker::policy::{Policy, PolicyKind};
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::{listing, Paging};
use crate::http::error::{ApiError, ApiResult};
use crate::http::{AuthUser, HttpState};

/// A policy as the API lists it.
pub fn policy_json(p: &Policy) -> Value {
    json!(p.to_def())
}

/// A policy as `/api/parameters` lists it (the runtime parameter RabbitMQ
/// stores it as).
pub fn parameter_json(p: &Policy) -> Value {
    json!({
        "value": {
            "pattern": p.pattern,
            "definition": p.definition,
            "priority": p.priority,
            "apply-to": p.apply_to.as_str(),
        },
        "vhost": p.vhost,
        "component": p.kind.component(),
        "name": p.name,
    })
}

/// Every policy of a kind in the vhosts `vhost` names (all when None), by
/// vhost, then priority.
pub fn all_of(
    state: &HttpState,
    kind: PolicyKind,
    vhost: Option<&str>,
) -> ApiResult<Vec<std::sync::Arc<Policy>>> {
    Ok(state
        .vhosts_for(vhost)?
        .iter()
        .flat_map(|v| v.policies(kind))
        .collect())
}

fn list(
    state: &HttpState,
    user: &AuthUser,
    kind: PolicyKind,
    vhost: Option<&str>,
    query: &HashMap<String, String>,
) -> ApiResult<Json<Value>> {
    let mut policies = all_of(state, kind, vhost)?;
    // By priority across vhosts, as RabbitMQ sorts the listing.
    policies.sort_by(|a, b| {
        let p = |p: &Policy| p.priority.as_f64().unwrap_or(0.0);
        p(a).total_cmp(&p(b))
    });
    let items = policies.iter().map(|p| policy_json(p)).collect();
    let items = user.filter_vhost(state, items);
    Ok(Json(listing(items, query, Paging::Unpaged)?))
}

fn missing() -> ApiError {
    ApiError::not_found("Not Found")
}

fn show(state: &HttpState, kind: PolicyKind, vhost: &str, name: &str) -> ApiResult<Json<Value>> {
    let p = state.vhost(vhost)?.policy(kind, name).ok_or_else(missing)?;
    Ok(Json(policy_json(&p)))
}

fn set(
    state: &HttpState,
    kind: PolicyKind,
    vhost: &str,
    name: &str,
    body: &[u8],
) -> ApiResult<StatusCode> {
    state.vhost(vhost)?;
    let body: Map<String, Value> =
        crate::http::parse_body::<Value>(body).and_then(|b| match b {
            Value::Null => Ok(Map::new()),
            Value::Object(m) => Ok(m),
            other => Err(ApiError::bad_request(format!(
                "a policy is a JSON object, not {other}"
            ))),
        })?;
    let policy = Policy::parse(kind, vhost, name, &body)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let command = MetaCommand::SetPolicy {
        operator: kind == PolicyKind::Operator,
        def: policy.to_def(),
    };
    Ok(if state.broker.change_meta(command)?.changed() {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

fn remove(state: &HttpState, kind: PolicyKind, vhost: &str, name: &str) -> ApiResult<StatusCode> {
    state.vhost(vhost)?;
    let command = MetaCommand::DeletePolicy {
        operator: kind == PolicyKind::Operator,
        vhost: vhost.to_owned(),
        name: name.to_owned(),
    };
    if state.broker.change_meta(command)?.changed() {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(missing())
    }
}

/// GET /api/policies.
pub async fn list_all(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&state, &user, PolicyKind::Policy, None, &query)
}

/// GET /api/policies/{vhost}.
pub async fn list_vhost(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&state, &user, PolicyKind::Policy, Some(&vhost), &query)
}

/// GET /api/policies/{vhost}/{name}.
pub async fn get_one(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    show(&state, PolicyKind::Policy, &vhost, &name)
}

/// PUT /api/policies/{vhost}/{name}.
pub async fn put(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    set(&state, PolicyKind::Policy, &vhost, &name, &body)
}

/// DELETE /api/policies/{vhost}/{name}.
pub async fn delete(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    remove(&state, PolicyKind::Policy, &vhost, &name)
}

/// GET /api/operator-policies.
pub async fn op_list_all(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&state, &user, PolicyKind::Operator, None, &query)
}

/// GET /api/operator-policies/{vhost}.
pub async fn op_list_vhost(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&state, &user, PolicyKind::Operator, Some(&vhost), &query)
}

/// GET /api/operator-policies/{vhost}/{name}.
pub async fn op_get_one(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    show(&state, PolicyKind::Operator, &vhost, &name)
}

/// PUT /api/operator-policies/{vhost}/{name}.
pub async fn op_put(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    set(&state, PolicyKind::Operator, &vhost, &name, &body)
}

/// DELETE /api/operator-policies/{vhost}/{name}.
pub async fn op_delete(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    remove(&state, PolicyKind::Operator, &vhost, &name)
}

/// The component names of policies among runtime parameters.
fn component_kind(component: &str) -> Option<PolicyKind> {
    match component {
        "policy" => Some(PolicyKind::Policy),
        "operator_policy" => Some(PolicyKind::Operator),
        _ => None,
    }
}

fn parameters(
    state: &HttpState,
    user: &AuthUser,
    kind: PolicyKind,
    vhost: Option<&str>,
) -> ApiResult<Json<Value>> {
    let items = all_of(state, kind, vhost)?
        .iter()
        .map(|p| parameter_json(p))
        .collect();
    Ok(Json(Value::Array(user.filter_vhost(state, items))))
}

/// GET /api/parameters: every runtime parameter, which in antre means the
/// operator policies (RabbitMQ leaves policies out of this listing) and
/// vhost limits.
pub async fn parameters_all(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
) -> ApiResult<Json<Value>> {
    let Json(mut all) = parameters(&state, &user, PolicyKind::Operator, None)?;
    if let Some(all) = all.as_array_mut() {
        all.extend(super::parameters::limits_parameters(&state, &user, None));
    }
    Ok(Json(all))
}

/// GET /api/parameters/{component}: the policies or operator policies as
/// parameters; no other component has any.
pub async fn parameters_of_component(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path(component): Path<String>,
) -> ApiResult<Json<Value>> {
    match component_kind(&component) {
        Some(kind) => parameters(&state, &user, kind, None),
        None => Ok(
            super::parameters::of_component(State(state), Extension(user), Path(component)).await,
        ),
    }
}

/// GET /api/parameters/{component}/{vhost}.
pub async fn parameters_of_vhost(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    match component_kind(&component) {
        Some(kind) => parameters(&state, &user, kind, Some(&vhost)),
        None => {
            super::parameters::of_vhost(State(state), Extension(user), Path((component, vhost)))
                .await
        }
    }
}

/// Operator policies are for administrators, whichever path sets them.
fn may_change(user: &AuthUser, kind: PolicyKind) -> ApiResult<()> {
    if kind == PolicyKind::Operator && !user.is_admin() {
        return Err(crate::http::auth::not_authorised("Not administrator user"));
    }
    Ok(())
}

/// GET /api/parameters/{component}/{vhost}/{name}.
pub async fn parameter(
    State(state): State<HttpState>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let Some(kind) = component_kind(&component) else {
        return super::parameters::one(State(state), Path((component, vhost, name))).await;
    };
    let p = state
        .vhost(&vhost)?
        .policy(kind, &name)
        .ok_or_else(missing)?;
    Ok(Json(parameter_json(&p)))
}

/// PUT /api/parameters/{component}/{vhost}/{name}: a policy or operator
/// policy set as a runtime parameter (`{"value": {"pattern", ...}}`).
pub async fn set_parameter(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let Some(kind) = component_kind(&component) else {
        return super::parameters::set(State(state), Path((component, vhost, name)), body)
            .await
            .map(|_| StatusCode::NO_CONTENT);
    };
    may_change(&user, kind)?;
    let body: Value = crate::http::parse_body(&body)?;
    let value = body.get("value").cloned().unwrap_or(Value::Null);
    set(&state, kind, &vhost, &name, value.to_string().as_bytes())
}

/// DELETE /api/parameters/{component}/{vhost}/{name}.
pub async fn delete_parameter(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let Some(kind) = component_kind(&component) else {
        return super::parameters::clear(State(state), Path((component, vhost, name))).await;
    };
    may_change(&user, kind)?;
    remove(&state, kind, &vhost, &name)
}
