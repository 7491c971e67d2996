//! `/api/users`: RabbitMQ's internal users, with their tags and password
//! hashes (administrators only, as in RabbitMQ).

use std::collections::HashMap;

use antre_broker::access::{password, AccessControl, AccessError, Credentials};
use antre_broker::cluster::MetaCommand;
use antre_broker::UserRecord;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::{listing, Paging};
use crate::http::error::{ApiError, ApiResult};
use crate::http::HttpState;

/// A user as RabbitMQ 3.10's API shows it (and its definitions file),
/// with the limits `access` keeps for them.
pub fn user_json(access: &AccessControl, u: &UserRecord) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
        "limits": access.user_limits(&u.name),
    })
}

/// RabbitMQ's answer for a refused change to users or permissions.
pub fn access_error(e: AccessError) -> ApiError {
    match e {
        AccessError::NoSuchUser(_) | AccessError::NoSuchVhost(_) => {
            ApiError::bad_request("vhost_or_user_not_found")
        }
        AccessError::InvalidPattern(p) => ApiError::bad_request(p.to_string()),
        AccessError::InvalidLimit(e) => ApiError::bad_request(e.to_string()),
        AccessError::NotBase64 => ApiError::bad_request("password_hash is not base64"),
        AccessError::Storage(reason) => ApiError::internal(reason),
    }
}

/// Tags as RabbitMQ reads them: a comma-separated string or a list.
pub fn parse_tags(v: &Value) -> ApiResult<Vec<String>> {
    let words: Vec<String> = match v {
        Value::String(s) => s.split(',').map(str::to_owned).collect(),
        Value::Array(a) => a
            .iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::bad_request("tags must be strings"))?,
        Value::Null => Vec::new(),
        other => return Err(ApiError::bad_request(format!("invalid tags {other}"))),
    };
    let mut tags: Vec<String> = Vec::new();
    for t in words.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        if !tags.iter().any(|x| x == t) {
            tags.push(t.to_owned());
        }
    }
    Ok(tags)
}

/// GET /api/users.
pub async fn list(
    State(state): State<HttpState>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let access = state.broker.access();
    let all = access
        .users()
        .iter()
        .map(|u| user_json(access, u))
        .collect();
    Ok(Json(listing(all, &query, Paging::Unpaged)?))
}

/// GET /api/users/without-permissions.
pub async fn without_permissions(State(state): State<HttpState>) -> Json<Value> {
    let access = state.broker.access();
    let users = access
        .users()
        .iter()
        .filter(|u| access.vhosts_of(&u.name).is_empty())
        .map(|u| user_json(access, u))
        .collect();
    Json(users)
}

/// GET /api/users/{name}.
pub async fn show(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let access = state.broker.access();
    access
        .user(&name)
        .map(|u| Json(user_json(access, &u)))
        .ok_or_else(|| ApiError::not_found("Not Found"))
}

/// PUT /api/users/{name}: 201 created, 204 changed. The body has `tags`
/// and `password`, or `password_hash` (with `hashing_algorithm`), or
/// neither (a user without a password), as RabbitMQ's `put_user`.
pub async fn put(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: Map<String, Value> = crate::http::parse_body(&body)?;
    let created = put_user(&state, &name, &body)?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

/// Applies one user's fields (also for definitions import); returns whether
/// the user is new.
pub fn put_user(state: &HttpState, name: &str, body: &Map<String, Value>) -> ApiResult<bool> {
    if name.is_empty() {
        return Err(ApiError::bad_request("a user name cannot be empty"));
    }
    let tags = match (body.get("tags"), body.get("administrator")) {
        (Some(tags), _) => parse_tags(tags)?,
        (None, Some(admin)) => match crate::http::lenient::to_bool(admin) {
            Ok(true) => vec!["administrator".to_owned()],
            Ok(false) => Vec::new(),
            Err(e) => return Err(ApiError::bad_request(e)),
        },
        (None, None) => return Err(ApiError::bad_request("tags_not_present")),
    };
    let text = |key: &str| -> ApiResult<Option<String>> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(ApiError::bad_request(format!(
                "{key} must be a string, not {other}"
            ))),
        }
    };
    let credentials = match (text("password")?, text("password_hash")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "both_password_and_password_hash_are_provided",
            ))
        }
        (Some(p), None) => Credentials::Password(p),
        (None, Some(hash)) => Credentials::Hash {
            hash,
            algorithm: text("hashing_algorithm")?.unwrap_or_else(|| password::SHA256.to_owned()),
        },
        (None, None) => Credentials::None,
    };
    if let Credentials::Hash { algorithm, .. } = &credentials {
        if !password::supported(algorithm) {
            // RabbitMQ keeps a hash it cannot check; so does antre, but the
            // user will not log in with a password until it is replaced.
            tracing::warn!(
                user = name,
                algorithm,
                "password hashing algorithm not supported"
            );
        }
    }
    let command = MetaCommand::put_user(name, credentials, tags);
    Ok(state.broker.change_meta(command)?.changed())
}

/// Deletes a user and closes their connections, as RabbitMQ does.
fn delete(state: &HttpState, name: &str) -> ApiResult<bool> {
    let command = MetaCommand::DeleteUser {
        name: name.to_owned(),
    };
    let existed = state.broker.change_meta(command)?.changed();
    if existed {
        for c in state.registry.connections() {
            if c.user == name {
                c.force_close(&format!("user '{name}' is deleted"));
            }
        }
    }
    Ok(existed)
}

/// DELETE /api/users/{name}.
pub async fn remove(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if delete(&state, &name)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("Not Found"))
    }
}

/// POST /api/users/bulk-delete `{"users": [...]}`: deletes each in turn;
/// a missing one stops the rest with 400 `no_such_user`, as in RabbitMQ.
pub async fn bulk_delete(State(state): State<HttpState>, body: Bytes) -> ApiResult<StatusCode> {
    let body: Map<String, Value> = crate::http::parse_body(&body)?;
    let Some(Value::Array(names)) = body.get("users") else {
        return Err(ApiError::bad_request("[{key_missing,users}]"));
    };
    for name in names {
        let name = name
            .as_str()
            .ok_or_else(|| ApiError::bad_request("users must be names"))?;
        if !delete(&state, name)? {
            return Err(ApiError::bad_request(format!("no_such_user {name}")));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
