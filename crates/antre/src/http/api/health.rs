//! RabbitMQ's fine-grained health checks that look at this node's
//! listeners, certificates and connections: what load balancers,
//! Kubernetes probes and monitoring ask before sending clients to a node
//! (`/api/health/checks/port-listener/5672`, `.../protocol-listener/amqp`,
//! `.../certificate-expiration/1/months`) or before a rolling restart.
//!
//! Each answers as RabbitMQ's management plugin does (3.10's checks, and
//! 3.13's `is-in-service`, `below-node-connection-limit` and
//! `ready-to-serve-clients` that its Kubernetes operator's probes use):
//! 200 `{"status":"ok",...}`, or 503 `{"status":"failed","reason":...}`
//! with what is missing, and 400 for a malformed path value.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::http::error::ApiError;
use crate::http::HttpState;

/// One of this node's listeners, as RabbitMQ names its protocol.
pub(crate) struct Listener {
    /// `amqp`, `amqp/ssl`, `http`, `https`, `stream` or `clustering`.
    pub protocol: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    /// A TLS listener's certificate and CA files.
    pub files: Option<(PathBuf, Option<PathBuf>)>,
}

/// Every listener of this node, in RabbitMQ's order (AMQP first).
pub(crate) fn listeners(state: &HttpState) -> Vec<Listener> {
    let tls = state
        .config
        .tls
        .as_ref()
        .map(|t| (t.cert.clone(), t.ca.clone()));
    let cluster_tls = state
        .config
        .cluster_tls_files
        .as_ref()
        .map(|t| (t.cert.clone(), Some(t.ca.clone())));
    let cluster = state.config.cluster.as_ref().map(|c| c.listen);
    let each = |protocol, addrs: &[SocketAddr], files: &Option<(PathBuf, Option<PathBuf>)>| {
        addrs
            .iter()
            .map(|&addr| Listener {
                protocol,
                addr,
                files: files.clone(),
            })
            .collect::<Vec<_>>()
    };
    [
        each("amqp", &state.amqp_addrs, &None),
        each("amqp/ssl", &state.amqps_addrs, &tls),
        each("clustering", cluster.as_slice(), &cluster_tls),
        each("http", &state.http_addrs, &None),
        each("https", &state.https_addrs, &tls),
        each("stream", &state.stream_addrs, &None),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// A failed check: 503 with `body`, which says why.
fn failed(body: Value) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// GET /api/health/checks/port-listener/{port}: a listener of this node
/// is on `port`; else 503 with the ports it listens on.
pub async fn port_listener(State(state): State<HttpState>, Path(port): Path<String>) -> Response {
    let Ok(port) = port.parse::<i64>() else {
        return ApiError::bad_request("Invalid port").into_response();
    };
    let listeners = listeners(&state);
    if listeners.iter().any(|l| i64::from(l.addr.port()) == port) {
        return Json(json!({ "status": "ok", "port": port })).into_response();
    }
    let mut ports: Vec<u16> = listeners.iter().map(|l| l.addr.port()).collect();
    ports.dedup();
    failed(json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": port,
        "ports": ports,
    }))
}

/// A protocol as a check names it, in the listeners' words: RabbitMQ's
/// aliases (`amqp091`, `amqps`, `management`, `distribution`, ...), any
/// case.
fn normalize_protocol(asked: &str) -> String {
    let lower = asked.to_lowercase();
    let same = match lower.as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" | "amqp0_9_1" => "amqp",
        "amqps" | "amqp+tls" | "amqp+ssl" | "amqp/tls" => "amqp/ssl",
        "http1" | "http1.1" | "http_api" | "management" | "management_ui" | "ui" => "http",
        "cli" | "distribution" | "cluster" => "clustering",
        "streams" | "rabbitmq-stream" | "rabbitmq_stream" => "stream",
        _ => return lower,
    };
    same.to_owned()
}

/// GET /api/health/checks/protocol-listener/{protocols}: this node
/// listens for each protocol of the comma-separated list; else 503 with
/// the ones missing and the ones it has. One protocol answers as
/// RabbitMQ 3.10 does (`"protocol"`, `"missing"` a string); a list as
/// later versions do (`"protocols"`, `"missing"` a list).
pub async fn protocol_listener(
    State(state): State<HttpState>,
    Path(asked): Path<String>,
) -> Response {
    let wanted: Vec<String> = asked.split(',').map(normalize_protocol).collect();
    let mut active: Vec<&str> = listeners(&state).iter().map(|l| l.protocol).collect();
    active.dedup();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|p| !active.contains(&p.as_str()))
        .collect();
    let single = wanted.len() == 1;
    match (missing.as_slice(), single) {
        ([], true) => Json(json!({ "status": "ok", "protocol": wanted[0] })).into_response(),
        ([], false) => Json(json!({ "status": "ok", "protocols": active })).into_response(),
        (missing, _) => failed(json!({
            "status": "failed",
            "reason": "No active listener",
            "missing": if single { json!(missing[0]) } else { json!(missing) },
            "protocols": active,
        })),
    }
}

/// Seconds in `within` `unit`s (RabbitMQ's units: a month is a twelfth of
/// a 365-day year), or the 400 RabbitMQ answers.
fn horizon(within: &str, unit: &str) -> Result<i64, ApiError> {
    let within: i64 = within
        .parse()
        .map_err(|_| ApiError::bad_request("Invalid expiration value."))?;
    const DAY: i64 = 86_400;
    let unit = match unit.to_lowercase().as_str() {
        "days" => DAY,
        "weeks" => 7 * DAY,
        "months" => 365 * DAY / 12,
        "years" => 365 * DAY,
        _ => {
            return Err(ApiError::bad_request(
                "Time unit not recognised. Supported units: days, weeks, months, years.",
            ))
        }
    };
    Ok(within.saturating_mul(unit))
}

/// A time as RabbitMQ's check shows when a certificate expires
/// (`2027-01-05 9:03:07`, UTC: the hour unpadded).
fn expiry_text(unix: i64) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day] [hour padding:none]:[minute]:[second]"
    );
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// What a certificate file says about the deadline `by` (Unix seconds),
/// at `now`: the expiry of each certificate that ends before it (and a
/// reason for one not valid yet), or why the file cannot be read.
fn expiring(path: Option<&PathBuf>, what: &'static str, now: i64, by: i64) -> Value {
    let Some(path) = path else {
        return json!([]);
    };
    match crate::tls::validities(path, what) {
        Ok(validities) => validities
            .iter()
            .filter_map(|v| {
                if v.not_before > now {
                    Some(json!("Certificate is not yet valid"))
                } else {
                    (v.not_after < by).then(|| json!(expiry_text(v.not_after)))
                }
            })
            .collect(),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// GET /api/health/checks/certificate-expiration/{within}/{unit}: no
/// certificate of a TLS listener of this node (its certificate file and
/// its CA file, read as they are now) expires within that time; else 503
/// with the listeners whose files hold one, as RabbitMQ lists them.
pub async fn certificate_expiration(
    State(state): State<HttpState>,
    Path((within, unit)): Path<(String, String)>,
) -> Response {
    let seconds = match horizon(&within, &unit) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let now = crate::tls::unix_now();
    let by = now.saturating_add(seconds);
    let none = |v: &Value| v.as_array().is_some_and(Vec::is_empty);
    let expired: Vec<Value> = listeners(&state)
        .into_iter()
        .filter_map(|l| {
            let (cert, ca) = l.files?;
            let cert_ends = expiring(Some(&cert), "certificate", now, by);
            let ca_ends = expiring(ca.as_ref(), "CA", now, by);
            if none(&cert_ends) && none(&ca_ends) {
                return None;
            }
            Some(json!({
                "node": state.node_name(),
                "protocol": l.protocol,
                "interface": l.addr.ip().to_string(),
                "port": l.addr.port(),
                "certfile": cert.display().to_string(),
                "cacertfile": ca.map(|p| p.display().to_string()),
                "certfile_expires_on": cert_ends,
                "cacertfile_expires_on": ca_ends,
            }))
        })
        .collect();
    if expired.is_empty() {
        return Json(json!({ "status": "ok" })).into_response();
    }
    failed(json!({
        "status": "failed",
        "reason": "Certificates expiring",
        "expired": expired,
    }))
}

/// GET /api/health/checks/node-is-mirror-sync-critical: antre has no
/// mirrored classic queues (their replicated successor, quorum queues,
/// has `node-is-quorum-critical`), so stopping this node never leaves one
/// without a synchronised mirror. As RabbitMQ 3.10 answers a node without
/// such queues.
pub async fn node_is_mirror_sync_critical(State(state): State<HttpState>) -> Json<Value> {
    Json(if state.cluster.is_some() {
        json!({ "status": "ok" })
    } else {
        json!({ "status": "ok", "reason": "single node cluster" })
    })
}

/// Why this node does not serve clients now: drained (maintenance mode),
/// as RabbitMQ's `is_serving`.
pub(crate) fn not_serving(state: &HttpState) -> Option<&'static str> {
    state
        .maintenance
        .draining()
        .then_some("this node is drained (maintenance mode) and does not serve clients")
}

/// GET /api/health/checks/is-in-service: the node serves clients (not
/// drained); else 503.
pub async fn is_in_service(State(state): State<HttpState>) -> Response {
    match not_serving(&state) {
        None => Json(json!({ "status": "ok" })).into_response(),
        Some(reason) => failed(json!({ "status": "failed", "reason": reason })),
    }
}

/// The AMQP connections open on this node and its `max_connections`,
/// when they have reached it.
pub(crate) fn at_connection_limit(state: &HttpState) -> Option<u64> {
    let limit = state.config.max_connections?;
    let open = state.broker.access().usage().connections();
    (open >= limit).then_some(open)
}

/// GET /api/health/checks/below-node-connection-limit: the node's AMQP
/// connections are below `max_connections` (RabbitMQ's
/// `connection_max`); else 503, a new client would be refused.
pub async fn below_node_connection_limit(State(state): State<HttpState>) -> Response {
    match at_connection_limit(&state) {
        None => Json(json!({ "status": "ok" })).into_response(),
        Some(_) => failed(json!({
            "status": "failed",
            "reason": "node connection limit is reached",
        })),
    }
}

/// GET /api/health/checks/ready-to-serve-clients: the node serves, has
/// an AMQP listener, and takes another connection; else 503 with the
/// first reason (RabbitMQ's readiness probe for its Kubernetes pods).
pub async fn ready_to_serve_clients(State(state): State<HttpState>) -> Response {
    if let Some(reason) = not_serving(&state) {
        return failed(json!({ "status": "failed", "reason": reason }));
    }
    if state.amqp_addrs.is_empty() && state.amqps_addrs.is_empty() {
        return failed(json!({
            "status": "failed",
            "reason": "no active listeners for AMQP/AMQPS",
        }));
    }
    if let Some(open) = at_connection_limit(&state) {
        return failed(json!({
            "status": "failed",
            "reason": "node connection limit is reached",
            "connections": open,
        }));
    }
    Json(json!({ "status": "ok" })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_are_named_as_the_listeners_are() {
        for (asked, named) in [
            ("AMQP", "amqp"),
            ("amqp0-9-1", "amqp"),
            ("amqps", "amqp/ssl"),
            ("management", "http"),
            ("distribution", "clustering"),
            ("mqtt", "mqtt"),
        ] {
            assert_eq!(normalize_protocol(asked), named, "{asked}");
        }
    }

    #[test]
    fn a_horizon_is_counted_in_rabbitmqs_units() {
        assert_eq!(horizon("2", "Days"), Ok(2 * 86_400));
        assert_eq!(horizon("1", "months"), Ok(2_628_000));
        assert_eq!(horizon("0", "years"), Ok(0));
        assert_eq!(horizon("x", "days").unwrap_err().status, 400);
        assert_eq!(horizon("1", "fortnights").unwrap_err().status, 400);
    }

    #[test]
    fn an_expiry_reads_as_rabbitmq_writes_it() {
        assert_eq!(expiry_text(1_799_000_587), "2027-01-03 18:23:07");
        assert_eq!(expiry_text(1_798_938_187), "2027-01-03 1:03:07");
    }
}
