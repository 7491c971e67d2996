//! Who may call what: HTTP basic auth against the broker's users, then
//! RabbitMQ's management rules by tag (`rabbit_mgmt_util:is_authorized_*`).
//!
//! | tag | may |
//! |---|---|
//! | none | nothing (AMQP only): `401 Not management user` |
//! | `management` | its vhosts' queues, exchanges, bindings; its own connections and channels |
//! | `policymaker` | as management, plus policies and parameters in its vhosts (operator policies are for administrators) |
//! | `monitoring` | as management, plus every vhost's listing, every connection and channel, nodes |
//! | `administrator` | everything, including users, permissions, vhosts, definitions |
//!
//! A route's rule comes from its path template (so one table covers the
//! whole router); handlers then filter lists (`filter_vhost`,
//! `filter_user`) and check AMQP permissions on what they change, as
//! RabbitMQ's management plugin does through its internal AMQP client.
//! Refusals are 401 with RabbitMQ's `not_authorised` reasons; a failed
//! login is 401 `Login failed`, whether or not the user exists.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use antre_broker::access::{Perm, ResourceKind};
use antre_broker::LoginError;
use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::RequestExt;
use base64::Engine;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::HttpState;

/// The user a request authenticated as, with their tags at login.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// Login name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
}

impl AuthUser {
    fn tagged(&self, any: &[&str]) -> bool {
        self.tags.iter().any(|t| any.contains(&t.as_str()))
    }

    /// `administrator`.
    pub fn is_admin(&self) -> bool {
        self.tagged(&["administrator"])
    }

    /// `administrator` or `monitoring`: sees everything.
    pub fn is_monitor(&self) -> bool {
        self.tagged(&["administrator", "monitoring"])
    }

    /// `administrator` or `policymaker`.
    pub fn is_policymaker(&self) -> bool {
        self.tagged(&["administrator", "policymaker"])
    }

    /// Any tag that opens the management API.
    pub fn is_management(&self) -> bool {
        self.tagged(&["administrator", "monitoring", "policymaker", "management"])
    }

    /// The vhosts whose objects the user sees in listings: all for an
    /// administrator, otherwise those it has permissions in (RabbitMQ's
    /// `filter_vhost`; a monitoring user too sees only its own there).
    pub fn vhost_filter(&self, state: &HttpState) -> Option<BTreeSet<String>> {
        if self.is_admin() {
            return None;
        }
        Some(
            state
                .broker
                .access()
                .vhosts_of(&self.name)
                .into_iter()
                .collect(),
        )
    }

    /// Keeps the items (JSON objects with a `vhost` field) the user may see.
    pub fn filter_vhost(&self, state: &HttpState, items: Vec<Value>) -> Vec<Value> {
        match self.vhost_filter(state) {
            None => items,
            Some(vhosts) => items
                .into_iter()
                .filter(|i| i["vhost"].as_str().is_some_and(|v| vhosts.contains(v)))
                .collect(),
        }
    }

    /// Keeps the items whose `user` (or `channel_details.user`) is this
    /// user, unless it is a monitor (RabbitMQ's `filter_user`).
    pub fn filter_user(&self, items: Vec<Value>) -> Vec<Value> {
        if self.is_monitor() {
            return items;
        }
        items
            .into_iter()
            .filter(|i| {
                let user = i["user"].as_str().or(i["channel_details"]["user"].as_str());
                user == Some(self.name.as_str())
            })
            .collect()
    }

    /// Whether the user may see (GET) or close (DELETE) a connection or
    /// channel owned by `owner` (RabbitMQ's `is_authorized_user`).
    pub fn may_touch(&self, owner: &str, delete: bool) -> ApiResult<()> {
        let allowed = owner == self.name
            || if delete {
                self.is_admin()
            } else {
                self.is_monitor()
            };
        allowed
            .then_some(())
            .ok_or_else(|| not_authorised("User not authorised to access object"))
    }

    /// Checks an AMQP permission for a change made through the API; refused
    /// as RabbitMQ's API refuses it (401 `Access refused.`).
    pub fn permit(
        &self,
        state: &HttpState,
        vhost: &str,
        kind: ResourceKind,
        name: &str,
        perm: Perm,
    ) -> ApiResult<()> {
        state
            .broker
            .access()
            .check(&self.name, vhost, kind, name, perm)
            .map_err(|_| not_authorised("Access refused."))
    }
}

/// RabbitMQ's 401 for an authenticated user who may not do this.
pub fn not_authorised(reason: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        error: "not_authorised",
        reason: reason.to_owned(),
    }
}

/// What a route requires beyond a management tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Any,
    Admin,
    Monitor,
    /// Administrator, or permissions in the path's vhost.
    Vhost,
    /// Administrator, or policymaker with permissions in the path's vhost.
    Policies,
    /// Policymaker.
    GlobalParameters,
}

/// The rule for a route, by its path template (RabbitMQ's resource
/// modules each name theirs; this table is the same choice).
fn rule(template: &str, method: &Method) -> Rule {
    const ADMIN_PREFIXES: [&str; 8] = [
        "/api/cluster/",
        "/api/feature-flags",
        "/api/maintenance/",
        "/api/users",
        "/api/permissions",
        "/api/topic-permissions",
        "/api/definitions",
        "/api/cluster-name",
    ];
    if ADMIN_PREFIXES.iter().any(|p| template.starts_with(p)) {
        if template == "/api/cluster-name" && method == Method::GET {
            return Rule::Any;
        }
        return Rule::Admin;
    }
    match template {
        // RabbitMQ's policy listings are per vhost; changing a policy is
        // for policymakers, an operator policy for administrators.
        "/api/policies"
        | "/api/policies/{vhost}"
        | "/api/operator-policies"
        | "/api/operator-policies/{vhost}" => return Rule::Vhost,
        "/api/policies/{vhost}/{name}" => return Rule::Policies,
        "/api/operator-policies/{vhost}/{name}" => return Rule::Admin,
        // Replica management of quorum queues (rabbitmq-queues).
        // So is RabbitMQ 3.10's mirror synchronisation action.
        "/api/queues/{vhost}/{name}/members/{node}"
        | "/api/rebalance/queues"
        | "/api/queues/{vhost}/{name}/actions" => return Rule::Admin,
        "/api/vhosts/{vhost}"
        | "/api/vhosts/{vhost}/start/{node}"
        | "/api/vhosts/{vhost}/permissions"
        | "/api/vhosts/{vhost}/topic-permissions"
        | "/api/vhost-limits/{vhost}/{name}"
        | "/api/user-limits/{user}/{name}" => return Rule::Admin,
        "/api/vhost-limits" | "/api/user-limits" | "/api/user-limits/{user}" => return Rule::Any,
        _ => {}
    }
    // A node's figures, its login counts among them, are for monitoring.
    if template.starts_with("/api/nodes") || template.starts_with("/api/auth/attempts") {
        return Rule::Monitor;
    }
    if template.starts_with("/api/global-parameters") {
        // The one antre keeps names the cluster: administrators set it,
        // as PUT /api/cluster-name.
        if method != Method::GET {
            return Rule::Admin;
        }
        return Rule::GlobalParameters;
    }
    if template.starts_with("/api/parameters") || template.starts_with("/api/policies") {
        return Rule::Policies;
    }
    if template.contains("{vhost}") {
        return Rule::Vhost;
    }
    Rule::Any
}

/// Checks HTTP basic auth against the broker's users, then the route's rule.
pub async fn require_auth(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some((name, password)) = basic_credentials(&request) else {
        return login_failed();
    };
    let loopback = peer.ip().to_canonical().is_loopback();
    let login = state.broker.access().login(&name, &password, loopback);
    state.broker.metrics.auth_http.record(login.is_ok());
    let user = match login {
        Ok(u) => AuthUser {
            name: u.name,
            tags: u.tags,
        },
        Err(e @ LoginError::LoopbackOnly(_)) => {
            tracing::info!(%peer, "HTTP login refused: {e}");
            return not_authorised("User can only log in via localhost").into_response();
        }
        Err(e) => {
            tracing::info!(%peer, "HTTP login refused: {e}");
            return login_failed();
        }
    };
    if !user.is_management() {
        return not_authorised("Not management user").into_response();
    }
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let vhost = match request.extract_parts::<RawPathParams>().await {
        Ok(params) => params
            .iter()
            .find(|(k, _)| *k == "vhost")
            .map(|(_, v)| v.to_owned()),
        Err(_) => None,
    };
    if let Err(e) = authorize(&state, &user, rule(&template, request.method()), vhost) {
        tracing::info!(%peer, user = user.name, "HTTP access refused: {}", e.reason);
        return e.into_response();
    }
    request.extensions_mut().insert(user);
    next.run(request).await
}

fn authorize(
    state: &HttpState,
    user: &AuthUser,
    rule: Rule,
    vhost: Option<String>,
) -> ApiResult<()> {
    // A vhost that does not exist passes: the handler answers 404.
    let in_vhost = || match &vhost {
        Some(v) if state.broker.vhost(v).is_some() => {
            state.broker.access().vhost_access(&user.name, v)
        }
        _ => true,
    };
    let ok = match rule {
        Rule::Any => true,
        Rule::Admin => user.is_admin(),
        Rule::Monitor => user.is_monitor(),
        Rule::Vhost => user.is_admin() || in_vhost(),
        Rule::Policies => user.is_admin() || (user.is_policymaker() && in_vhost()),
        Rule::GlobalParameters => user.is_policymaker(),
    };
    if ok {
        return Ok(());
    }
    Err(not_authorised(match rule {
        Rule::Admin => "Not administrator user",
        Rule::Monitor => "Not monitor user",
        Rule::Vhost => "User not authorised to access virtual host",
        _ => "User not authorised to access object",
    }))
}

/// 401 `Login failed` with a challenge, as RabbitMQ answers a wrong
/// password and an unknown user alike.
fn login_failed() -> Response {
    let mut response = ApiError::unauthorized("Login failed").into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
    );
    response
}

fn basic_credentials(request: &Request) -> Option<(String, String)> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_get_rabbitmqs_rules() {
        let get = Method::GET;
        assert_eq!(rule("/api/users", &get), Rule::Admin);
        assert_eq!(rule("/api/users/{name}/permissions", &get), Rule::Admin);
        assert_eq!(rule("/api/permissions/{vhost}/{user}", &get), Rule::Admin);
        assert_eq!(rule("/api/vhosts/{vhost}", &get), Rule::Admin);
        assert_eq!(rule("/api/vhosts", &get), Rule::Any);
        assert_eq!(rule("/api/queues", &get), Rule::Any);
        assert_eq!(
            rule("/api/queues/{vhost}/{name}", &Method::PUT),
            Rule::Vhost
        );
        assert_eq!(rule("/api/nodes", &get), Rule::Monitor);
        assert_eq!(rule("/api/feature-flags", &get), Rule::Admin);
        assert_eq!(rule("/api/cluster-name", &get), Rule::Any);
        assert_eq!(rule("/api/cluster-name", &Method::PUT), Rule::Admin);
        assert_eq!(
            rule("/api/parameters/{component}/{vhost}", &get),
            Rule::Policies
        );
        assert_eq!(rule("/api/global-parameters", &get), Rule::GlobalParameters);
        assert_eq!(
            rule("/api/global-parameters/{name}", &Method::PUT),
            Rule::Admin
        );
        assert_eq!(rule("/api/definitions/{vhost}", &get), Rule::Admin);
    }
}
