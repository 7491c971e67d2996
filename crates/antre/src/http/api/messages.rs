//! Publishing to an exchange and getting messages from a queue over HTTP,
//! as RabbitMQ's management API does: for tests and debugging, not for
//! throughput.

use std::sync::Arc;

use antre_amqp::BasicProperties;
use antre_broker::access::{Perm, ResourceKind};
use antre_broker::definitions::{json_to_table, table_to_json};
use antre_broker::queue::Entry;
use antre_broker::remote::{by_owner, RemotePublish, RemoteResult};
use antre_broker::{Message, PublishOptions, PublishSource};
use antre_cluster::wire::QueueAction;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::{lenient, parse_body, AuthUser, HttpState};

/// The body of POST /api/exchanges/{vhost}/{name}/publish. rabbitmqadmin
/// also sends `vhost` and `exchange`, which the path already says.
#[derive(Debug, Default, Deserialize)]
pub struct PublishBody {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    payload: String,
    /// "string" (default) or "base64".
    #[serde(default)]
    payload_encoding: Option<String>,
    #[serde(default, deserialize_with = "lenient::arguments")]
    properties: Map<String, Value>,
}

fn properties_from_json(p: &Map<String, Value>) -> ApiResult<BasicProperties> {
    let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
    // Numbers may come as strings ("delivery_mode": "2"), as RabbitMQ takes them.
    let n = |k: &str| -> ApiResult<Option<u64>> {
        match p.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => lenient::to_u64(v)
                .map(Some)
                .map_err(|e| ApiError::bad_request(format!("property '{k}': {e}"))),
        }
    };
    let small = |k: &str| -> ApiResult<Option<u8>> {
        n(k)?
            .map(|v| {
                u8::try_from(v)
                    .map_err(|_| ApiError::bad_request(format!("property '{k}' must be 0..=255")))
            })
            .transpose()
    };
    let headers = match p.get("headers") {
        None | Some(Value::Null) => None,
        Some(Value::Object(h)) => Some(json_to_table(h)),
        Some(_) => {
            return Err(ApiError::bad_request(
                "property 'headers' must be an object",
            ))
        }
    };
    Ok(BasicProperties {
        content_type: s("content_type"),
        content_encoding: s("content_encoding"),
        headers,
        delivery_mode: small("delivery_mode")?,
        priority: small("priority")?,
        correlation_id: s("correlation_id"),
        reply_to: s("reply_to"),
        expiration: s("expiration"),
        message_id: s("message_id"),
        timestamp: n("timestamp")?,
        kind: s("type"),
        user_id: s("user_id"),
        app_id: s("app_id"),
        cluster_id: None,
    })
}

fn properties_to_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    put("content_type", p.content_type.clone().map(Value::from));
    put(
        "content_encoding",
        p.content_encoding.clone().map(Value::from),
    );
    put(
        "headers",
        p.headers.as_ref().map(|h| Value::Object(table_to_json(h))),
    );
    put("delivery_mode", p.delivery_mode.map(Value::from));
    put("priority", p.priority.map(Value::from));
    put("correlation_id", p.correlation_id.clone().map(Value::from));
    put("reply_to", p.reply_to.clone().map(Value::from));
    put("expiration", p.expiration.clone().map(Value::from));
    put("message_id", p.message_id.clone().map(Value::from));
    put("timestamp", p.timestamp.map(Value::from));
    put("type", p.kind.clone().map(Value::from));
    put("user_id", p.user_id.clone().map(Value::from));
    put("app_id", p.app_id.clone().map(Value::from));
    Value::Object(m)
}

/// POST /api/exchanges/{vhost}/{name}/publish: `{"routed": bool}`.
pub async fn publish(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body: PublishBody = parse_body(&body)?;
    let v = state.vhost(&vhost)?;
    let exchange = if name == "amq.default" {
        String::new()
    } else {
        name
    };
    // As basic.publish; RabbitMQ's API answers a refusal with 400 and the
    // AMQP code and text.
    state
        .broker
        .access()
        .check(
            &user.name,
            &vhost,
            ResourceKind::Exchange,
            &exchange,
            Perm::Write,
        )
        .map_err(|e| ApiError::over_channel(&e))?;
    let payload = match body.payload_encoding.as_deref().unwrap_or("string") {
        "string" => Bytes::from(body.payload.into_bytes()),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(body.payload.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding '{other}' is neither 'string' nor 'base64'"
            )))
        }
    };
    if payload.len() as u64 > state.config.max_message_size {
        return Err(ApiError::bad_request(format!(
            "message size {} is larger than configured max size {}",
            payload.len(),
            state.config.max_message_size
        )));
    }
    let properties = properties_from_json(&body.properties)?;
    let now = state.broker.clock().now_ms();
    let message = Message::new(exchange, body.routing_key, properties, payload).published_at(now);
    message.ttl().map_err(ApiError::bad_request)?;
    let message = Arc::new(message);
    let options = PublishOptions::new(PublishSource::Api, false);
    // Refused as basic.publish refuses it (no such exchange, an internal
    // one), over a channel as RabbitMQ's API publishes; a failure of the
    // broker itself stays one.
    let outcome = v
        .publish(Arc::clone(&message), options)
        .map_err(|e| match e {
            antre_broker::BrokerError::Internal(_) => ApiError::from(e),
            e => ApiError::over_channel(&e),
        })?;
    v.exchange_flows()
        .count(&message.exchange, outcome.routed + outcome.remote.len());
    // Persistent messages are on disk before the answer, as a publisher
    // confirm would promise.
    if !outcome.stored.is_empty() {
        let broker = Arc::clone(&state.broker);
        let stored = outcome.stored;
        tokio::task::spawn_blocking(move || broker.sync_now(&stored))
            .await
            .map_err(|e| ApiError::internal(format!("sync task failed: {e}")))??;
    }
    let forwarded = forward(&state, &vhost, message, outcome.remote).await?;
    let routed = outcome.routed > 0 || outcome.delayed || forwarded;
    Ok(Json(json!({ "routed": routed })))
}

/// How long the API's publish waits for the owners of the other nodes'
/// queues it routed to.
const FORWARD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands the API's `message` to the owners of the queues of other cluster
/// members it was routed to (`targets`), as a client's channel forwards
/// its publishes, and waits until each stored it (synced if it must be):
/// whether any queue took it. An owner that does not store it (it is
/// unreachable, or its disk failed) makes a 503, as a publisher would get
/// a nack.
async fn forward(
    state: &HttpState,
    vhost: &str,
    message: Arc<Message>,
    targets: Vec<(Arc<str>, String)>,
) -> ApiResult<bool> {
    if targets.is_empty() {
        return Ok(false);
    }
    let Some(remote) = state.broker.remote_queues() else {
        return Err(ApiError::unavailable(
            "this node forwards to no cluster node",
        ));
    };
    let answers = by_owner(targets).into_iter().map(|(owner, queues)| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let batch = vec![RemotePublish {
            queues,
            message: Arc::clone(&message),
            seqs: Vec::new(),
        }];
        remote.publish(
            &owner,
            vhost,
            batch,
            Box::new(move |results| {
                let _ = tx.send(results);
            }),
        );
        async move {
            let results = tokio::time::timeout(FORWARD_WAIT, rx).await;
            (owner, results.ok().and_then(Result::ok).unwrap_or_default())
        }
    });
    let mut routed = false;
    for (owner, results) in futures::future::join_all(answers).await {
        match results.first() {
            Some(RemoteResult::Accepted) => routed = true,
            Some(RemoteResult::Rejected | RemoteResult::Gone) => {}
            Some(RemoteResult::Failed) | None => {
                return Err(ApiError::unavailable(format!(
                    "cluster node '{owner}' did not store the message for its queues"
                )))
            }
        }
    }
    Ok(routed)
}

/// The body of POST /api/queues/{vhost}/{name}/get. Numbers may be strings
/// (rabbitmqadmin sends `"count": "1"`), as RabbitMQ accepts.
#[derive(Debug, Default, Deserialize)]
pub struct GetBody {
    /// How many messages, at most (default 1).
    #[serde(default, deserialize_with = "lenient::opt_usize")]
    count: Option<usize>,
    /// ack_requeue_true (default), ack_requeue_false, reject_requeue_true,
    /// reject_requeue_false.
    #[serde(default)]
    ackmode: Option<String>,
    /// The field RabbitMQ before 3.7 took instead of `ackmode` (pyrabbit2
    /// still sends it): without an `ackmode`, true is ack_requeue_true and
    /// false ack_requeue_false.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    requeue: Option<bool>,
    /// "auto" (string if UTF-8, base64 otherwise) or "base64".
    #[serde(default)]
    encoding: Option<String>,
    /// Cut payloads longer than this many bytes.
    #[serde(default, deserialize_with = "lenient::opt_usize")]
    truncate: Option<usize>,
}

/// POST /api/queues/{vhost}/{name}/get: takes up to `count` messages and
/// settles them by `ackmode` (requeued ones come back marked redelivered,
/// at their original positions).
/// On a cluster node that does not own the queue, its owner takes them
/// (as `user`), as RabbitMQ's API gets from a queue whichever node is
/// asked.
pub async fn get(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let v = state.vhost(&vhost)?;
    if let Some(locked) = v.locked_for_management(&name) {
        // RabbitMQ's API gets over an AMQP channel.
        return Err(ApiError::over_channel(&locked));
    }
    let owner = match v.queue_info(&name) {
        // May block while a quorum queue's member waits for its leader.
        Some(q) => v.owner_for_get(&q)?,
        None => v.remote_owner(&name),
    };
    if let (Some(owner), Some(cluster)) = (owner, &state.cluster) {
        let body: Value = parse_body(&body)?;
        let action = QueueAction::Get(body);
        return super::queues::at_owner(cluster, &owner, &vhost, &name, &user, action).await;
    }
    Ok(Json(get_here(&state, &user, &vhost, &name, &body)?))
}

/// Takes messages from this node's queue `name` (see [`get`]).
pub fn get_here(
    state: &HttpState,
    user: &AuthUser,
    vhost: &str,
    name: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let body: GetBody = parse_body(body)?;
    let ackmode = match (body.ackmode.as_deref(), body.requeue) {
        (Some(mode), _) => mode,
        (None, Some(false)) => "ack_requeue_false",
        (None, _) => "ack_requeue_true",
    };
    if !matches!(
        ackmode,
        "ack_requeue_true" | "ack_requeue_false" | "reject_requeue_true" | "reject_requeue_false"
    ) {
        return Err(ApiError::bad_request(format!(
            "ackmode '{ackmode}' is not one of ack_requeue_true, ack_requeue_false, reject_requeue_true, reject_requeue_false"
        )));
    }
    let base64_always = match body.encoding.as_deref().unwrap_or("auto") {
        "auto" => false,
        "base64" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "encoding '{other}' is neither 'auto' nor 'base64'"
            )))
        }
    };
    let q = super::queues::find(state, vhost, name)?;
    state.vhost(vhost)?.check_local(name)?;
    // As basic.get: read on the queue, refused as RabbitMQ's API does.
    state
        .broker
        .access()
        .check(&user.name, vhost, ResourceKind::Queue, name, Perm::Read)
        .map_err(|e| crate::http::auth::not_authorised(&e.to_string()))?;
    let mut taken: Vec<(Entry, u32)> = Vec::new();
    for _ in 0..body.count.unwrap_or(1).min(10_000) {
        match q.get(false) {
            Some(got) => taken.push(got),
            None => break,
        }
    }
    // Counted as RabbitMQ counts its management gets: basic.gets on a
    // channel, to acknowledge.
    let counters = state.broker.metrics.of(q.kind());
    counters.delivered.add(taken.len() as u64);
    counters.delivered_get_manual_ack.add(taken.len() as u64);
    if taken.is_empty() {
        counters.get_empty.inc();
    }
    let out: Vec<Value> = taken
        .iter()
        .map(|(e, remaining)| {
            let m = &e.message;
            let bytes = match body.truncate {
                Some(n) if n < m.body.len() => &m.body[..n],
                _ => &m.body[..],
            };
            let (payload, encoding) = match std::str::from_utf8(bytes) {
                Ok(s) if !base64_always => (s.to_owned(), "string"),
                _ => (
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                    "base64",
                ),
            };
            json!({
                "payload_bytes": m.body.len(),
                "redelivered": e.redelivered,
                "exchange": m.exchange,
                "routing_key": m.routing_key,
                "message_count": remaining,
                "properties": properties_to_json(&m.properties),
                "payload": payload,
                "payload_encoding": encoding,
            })
        })
        .collect();
    let entries: Vec<Entry> = taken.into_iter().map(|(e, _)| e).collect();
    match ackmode {
        "ack_requeue_false" => {
            counters.acked.add(entries.len() as u64);
            q.ack(entries);
        }
        "reject_requeue_false" => {
            q.reject(entries);
            // Dead letters reach the disk with the syncer's next sweep, as
            // those of an AMQP basic.reject do.
            state.vhost(vhost)?.route_dead_letters(&q);
        }
        _ => q.requeue(entries),
    }
    Ok(Value::Array(out))
}
