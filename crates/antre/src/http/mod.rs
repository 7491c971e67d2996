//! The HTTP listener: management API, web UI and Prometheus metrics.
//!
//! The API follows RabbitMQ's management plugin (same paths, same JSON field
//! names) wherever antre has the same concept, so dashboards, scripts and
//! tools written for RabbitMQ work. Every `/api` path but the OpenAPI
//! description needs HTTP basic auth with a broker user who has a
//! management tag, and RabbitMQ's rules per tag and vhost apply ([`auth`]).
//! `/metrics`, `/healthz`, `/readyz` and the UI's static files need none:
//! the UI logs in itself.
//!
//! - [`api`]: one module per resource (queues, exchanges, ...);
//! - [`auth`]: logins, tags, and who may see and change what;
//! - [`render`]: the JSON shape of each object, shared by the handlers;
//! - [`rates`]: the sampler behind every `*_details.rate`;
//! - [`metrics`]: `/metrics` and `/metrics/per-object` in Prometheus text
//!   format, under RabbitMQ's names and antre's own;
//! - [`error`]: JSON errors with their status codes;
//! - [`lenient`]: request fields coerced as RabbitMQ coerces them;
//! - [`ui`]: the embedded web UI;
//! - [`serve`]: the accept loop and connections, with their cap and
//!   timeouts.

pub mod api;
pub mod auth;
pub mod error;
pub mod lenient;
pub mod metrics;
pub mod rates;
pub mod render;
pub mod serve;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use antre_broker::{Broker, Vhost};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;

use crate::alarm::Alarms;
use crate::config::Config;
use crate::registry::Registry;
use crate::sockets::Sockets;
use error::{ApiError, ApiResult};
use rates::Rates;

/// What every handler can see.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The broker.
    pub broker: Arc<Broker>,
    /// Open connections.
    pub registry: Arc<Registry>,
    /// Sampled rates.
    pub rates: Arc<Rates>,
    /// The memory and free-disk alarms.
    pub alarms: Alarms,
    /// The server's settings.
    pub config: Arc<Config>,
    /// Where AMQP clients connect (every address).
    pub amqp_addrs: Vec<SocketAddr>,
    /// Where AMQP-over-TLS clients connect (every address).
    pub amqps_addrs: Vec<SocketAddr>,
    /// Where the HTTP listener is (every address).
    pub http_addrs: Vec<SocketAddr>,
    /// Where the HTTPS listener is (every address).
    pub https_addrs: Vec<SocketAddr>,
    /// Where stream-protocol clients connect (every address).
    pub stream_addrs: Vec<SocketAddr>,
    /// When the server started.
    pub started: Instant,
    /// The client-socket budget.
    pub sockets: Arc<Sockets>,
    /// This node's cluster membership, if it is a cluster node.
    pub cluster: Option<Arc<antre_cluster::Cluster>>,
    /// Whether the node is drained (maintenance mode).
    pub maintenance: Arc<crate::maintenance::Maintenance>,
}

impl HttpState {
    /// This node's name: its cluster node name on a cluster node (what
    /// its peers and `/api/nodes` call it), else `antre@host`.
    pub fn node_name(&self) -> String {
        self.broker
            .node_name()
            .map_or_else(render::node_name, str::to_owned)
    }

    /// The cluster's name: the one set at run time (PUT
    /// /api/cluster-name, a definitions file), else the `cluster_name`
    /// setting, else this node's name (RabbitMQ's default, its node name).
    pub fn cluster_name(&self) -> String {
        self.broker
            .access()
            .cluster_name()
            .or_else(|| self.config.cluster_name.clone())
            .unwrap_or_else(|| self.node_name())
    }

    /// The vhost called `name`, or 404.
    pub fn vhost(&self, name: &str) -> ApiResult<Arc<Vhost>> {
        self.broker
            .vhost(name)
            .ok_or_else(|| ApiError::not_found(format!("vhost '{name}' not found")))
    }

    /// The vhosts a listing covers: one, or all of them sorted by name.
    pub fn vhosts_for(&self, name: Option<&str>) -> ApiResult<Vec<Arc<Vhost>>> {
        match name {
            Some(name) => Ok(vec![self.vhost(name)?]),
            None => {
                let mut all = self.broker.vhosts();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(all)
            }
        }
    }
}

pub use auth::AuthUser;
pub use serve::serve;

/// Every route.
pub fn router(state: HttpState) -> Router {
    use api::*;
    let authed = Router::new()
        .route("/api/overview", get(overview::overview))
        .route("/api/nodes", get(overview::nodes))
        .route("/api/nodes/{node}", get(overview::node))
        .route("/api/cluster/members", post(cluster::add))
        .route("/api/cluster/members/{node}", delete(cluster::remove))
        .route("/api/cluster/queues/grow/{node}", post(cluster::grow))
        .route("/api/cluster/queues/shrink/{node}", post(cluster::shrink))
        .route("/api/rebalance/queues", post(cluster::rebalance))
        .route("/api/maintenance/drain", post(cluster::drain))
        .route("/api/maintenance/revive", post(cluster::revive))
        .route("/api/feature-flags", get(cluster::feature_flags))
        .route("/api/queues/{vhost}/{name}/actions", post(queues::action))
        .route(
            "/api/queues/{vhost}/{name}/members",
            get(cluster::queue_members),
        )
        .route(
            "/api/queues/{vhost}/{name}/members/{node}",
            post(cluster::add_queue_member).delete(cluster::delete_queue_member),
        )
        .route("/api/whoami", get(overview::whoami))
        .route(
            "/api/auth/attempts/{node}",
            get(overview::node_auth_attempts),
        )
        .route(
            "/api/auth/attempts/{node}/source",
            get(overview::node_auth_attempts_by_source),
        )
        .route("/api/health/checks/alarms", get(overview::alarms))
        .route("/api/health/checks/local-alarms", get(overview::alarms))
        .route("/api/health/checks/virtual-hosts", get(overview::vhosts_ok))
        .route("/api/health/checks/ready", get(overview::ready))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(health::port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocols}",
            get(health::protocol_listener),
        )
        .route(
            "/api/health/checks/certificate-expiration/{within}/{unit}",
            get(health::certificate_expiration),
        )
        .route(
            "/api/health/checks/node-is-mirror-sync-critical",
            get(health::node_is_mirror_sync_critical),
        )
        .route(
            "/api/health/checks/is-in-service",
            get(health::is_in_service),
        )
        .route(
            "/api/health/checks/below-node-connection-limit",
            get(health::below_node_connection_limit),
        )
        .route(
            "/api/health/checks/ready-to-serve-clients",
            get(health::ready_to_serve_clients),
        )
        .route(
            "/api/health/checks/quorum-queues-without-elected-leaders/all-vhosts",
            get(cluster::quorum_queues_without_elected_leaders),
        )
        .route(
            "/api/health/checks/quorum-queues-without-elected-leaders/vhost/{vhost}",
            get(cluster::quorum_queues_without_elected_leaders),
        )
        .route(
            "/api/health/checks/quorum-queues-without-elected-leaders/all-vhosts/",
            get(cluster::quorum_queues_without_elected_leaders),
        )
        .route(
            "/api/health/checks/quorum-queues-without-elected-leaders/all-vhosts/pattern/{pattern}",
            get(cluster::quorum_queues_without_elected_leaders),
        )
        .route(
            "/api/health/checks/quorum-queues-without-elected-leaders/vhost/{vhost}/",
            get(cluster::quorum_queues_without_elected_leaders),
        )
        .route(
            "/api/health/checks/quorum-queues-without-elected-leaders/vhost/{vhost}/pattern/{pattern}",
            get(cluster::quorum_queues_without_elected_leaders),
        )
        .route("/api/healthchecks/node", get(overview::legacy_node_check))
        .route(
            "/api/healthchecks/node/{node}",
            get(overview::legacy_node_check_of),
        )
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(cluster::node_is_quorum_critical),
        )
        .route("/api/aliveness-test/{vhost}", get(overview::aliveness))
        .route("/api/vhosts", get(vhosts::list))
        .route(
            "/api/vhosts/{vhost}",
            get(vhosts::show).put(vhosts::create).delete(vhosts::remove),
        )
        .route("/api/vhosts/{vhost}/start/{node}", post(vhosts::start))
        .route("/api/users", get(users::list))
        .route(
            "/api/users/without-permissions",
            get(users::without_permissions),
        )
        .route("/api/users/bulk-delete", post(users::bulk_delete))
        .route(
            "/api/users/{name}",
            get(users::show).put(users::put).delete(users::remove),
        )
        .route("/api/users/{user}/permissions", get(permissions::of_user))
        .route(
            "/api/users/{user}/topic-permissions",
            get(permissions::topic_of_user),
        )
        .route(
            "/api/vhosts/{vhost}/permissions",
            get(permissions::of_vhost),
        )
        .route(
            "/api/vhosts/{vhost}/topic-permissions",
            get(permissions::topic_of_vhost),
        )
        .route("/api/permissions", get(permissions::list))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(permissions::show)
                .put(permissions::set)
                .delete(permissions::clear),
        )
        .route("/api/topic-permissions", get(permissions::topic_list))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(permissions::topic_show)
                .put(permissions::topic_set)
                .delete(permissions::topic_clear),
        )
        .route("/api/queues", get(queues::list_all))
        .route("/api/queues/{vhost}", get(queues::list_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queues::show)
                .put(queues::declare)
                .delete(queues::remove),
        )
        .route("/api/queues/{vhost}/{name}/contents", delete(queues::purge))
        .route("/api/queues/{vhost}/{name}/get", post(messages::get))
        .route(
            "/api/queues/{vhost}/{name}/bindings",
            get(bindings::of_queue),
        )
        .route("/api/exchanges", get(exchanges::list_all))
        .route("/api/exchanges/{vhost}", get(exchanges::list_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchanges::show)
                .put(exchanges::declare)
                .delete(exchanges::remove),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(messages::publish),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(bindings::of_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(bindings::of_destination),
        )
        .route("/api/bindings", get(bindings::list_all))
        .route("/api/bindings/{vhost}", get(bindings::list_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(bindings::between).post(bindings::create),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(bindings::show).delete(bindings::remove),
        )
        .route("/api/connections", get(connections::list))
        .route(
            "/api/vhosts/{vhost}/connections",
            get(connections::list_vhost),
        )
        .route(
            "/api/connections/{name}",
            get(connections::show).delete(connections::close),
        )
        .route(
            "/api/connections/{name}/channels",
            get(connections::channels_of),
        )
        .route("/api/channels", get(connections::channels))
        .route(
            "/api/vhosts/{vhost}/channels",
            get(connections::channels_vhost),
        )
        .route("/api/channels/{name}", get(connections::channel))
        .route("/api/consumers", get(connections::consumers_all))
        .route("/api/consumers/{vhost}", get(connections::consumers_vhost))
        .route(
            "/api/definitions",
            get(definitions::export_all).post(definitions::import_all),
        )
        .route(
            "/api/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost),
        )
        .route("/api/policies", get(policies::list_all))
        .route("/api/policies/{vhost}", get(policies::list_vhost))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policies::get_one)
                .put(policies::put)
                .delete(policies::delete),
        )
        .route("/api/operator-policies", get(policies::op_list_all))
        .route(
            "/api/operator-policies/{vhost}",
            get(policies::op_list_vhost),
        )
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(policies::op_get_one)
                .put(policies::op_put)
                .delete(policies::op_delete),
        )
        .route("/api/parameters", get(policies::parameters_all))
        .route(
            "/api/parameters/{component}",
            get(policies::parameters_of_component),
        )
        .route(
            "/api/parameters/{component}/{vhost}",
            get(policies::parameters_of_vhost),
        )
        .route(
            "/api/parameters/{component}/{vhost}/{name}",
            get(policies::parameter)
                .put(policies::set_parameter)
                .delete(policies::delete_parameter),
        )
        .route("/api/global-parameters", get(parameters::global_list))
        .route(
            "/api/global-parameters/{name}",
            get(parameters::global).put(parameters::global_set),
        )
        .route("/api/vhost-limits", get(limits::vhost_list))
        .route("/api/vhost-limits/{vhost}", get(limits::vhost_show))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(limits::vhost_set).delete(limits::vhost_clear),
        )
        .route("/api/user-limits", get(limits::user_list))
        .route("/api/user-limits/{user}", get(limits::user_show))
        .route(
            "/api/user-limits/{user}/{name}",
            put(limits::user_set).delete(limits::user_clear),
        )
        .route("/api/extensions", get(parameters::empty))
        .route(
            "/api/cluster-name",
            get(parameters::cluster_name).put(parameters::set_cluster),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            definitions_synced,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ));
    Router::new()
        .merge(authed)
        .route("/api/openapi.json", get(ui::openapi))
        .route("/metrics", get(metrics::metrics))
        .route("/metrics/per-object", get(metrics::per_object))
        .route("/metrics/detailed", get(metrics::detailed))
        .route("/healthz", get(overview::healthz))
        .route("/readyz", get(overview::readyz))
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such path; the API is described at /api/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Answers a request that may have changed durable definitions (any but
/// GET and HEAD) only once they are on disk, as AMQP's declare-ok is.
async fn definitions_synced(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    let response = next.run(request).await;
    if reads {
        return response;
    }
    let broker = Arc::clone(&state.broker);
    match tokio::task::spawn_blocking(move || broker.sync_definitions()).await {
        Ok(Ok(())) => response,
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => ApiError::internal(format!("sync task failed: {e}")).into_response(),
    }
}

/// Parses a JSON request body; an empty body is the type's default (as
/// RabbitMQ accepts `PUT /api/queues/%2F/q` with no body).
pub fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}
