//! `/api/queues`: list, show, declare, delete, purge.

use std::collections::HashMap;
use std::time::Duration;

use antre_broker::access::{Perm, ResourceKind};
use antre_broker::cluster::{MetaCommand, WireTable};
use antre_broker::definitions::json_to_table;
use antre_broker::vhost::QueueDeclaration;
use antre_broker::BrokerError;
use antre_cluster::wire::{Listing, QueueAction};
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::listing::{listing_light, pages_by_name};
use super::{flag, listing, Paging};
use crate::http::error::{ApiError, ApiResult};
use crate::http::{lenient, parse_body, render, AuthUser, HttpState};

/// On a cluster node, a queue's `node` is the cluster node that owns it
/// (its messages and consumers are there; this node shows its definition
/// only), as RabbitMQ shows a queue's home node; a quorum queue's (or a
/// stream's) is its group's leader, and it also shows `leader`, `members`
/// and `online`.
fn with_node(state: &HttpState, v: &antre_broker::Vhost, mut queue: Value) -> Value {
    if let Some(me) = state.broker.node_name() {
        let name = queue["name"].as_str().unwrap_or_default().to_owned();
        let name = name.as_str();
        let node = v
            .remote_owner(name)
            .map_or_else(|| me.to_owned(), |n| n.to_string());
        queue["node"] = Value::String(node);
        if let Some(info) = v.quorum_info(name) {
            // RabbitMQ's fields for a quorum queue: its leader, its
            // members, and the members running now.
            let running: Vec<String> = state
                .cluster
                .as_ref()
                .map(|c| {
                    c.status()
                        .members
                        .into_iter()
                        .filter(|m| m.running)
                        .map(|m| m.name)
                        .collect()
                })
                .unwrap_or_default();
            let online: Vec<&String> = info
                .members
                .iter()
                .filter(|m| running.contains(m))
                .collect();
            queue["leader"] = info.leader.as_deref().map_or(Value::Null, Value::from);
            // The Raft term its leader was elected in (RabbitMQ shows a
            // quorum queue's term in `rabbitmq-queues quorum_status`): it
            // grows with each election, even one the same node wins.
            queue["leader_term"] = Value::from(info.leader_term);
            queue["members"] = Value::from(info.members.clone());
            queue["online"] = serde_json::json!(online);
            // antre's own: what this member's replica holds (applied, not
            // settled), equal to the leader's once it caught up.
            if let Some(replica) = v
                .queue_info(name)
                .as_ref()
                .and_then(|q| q.replica().cloned())
            {
                queue["replica_messages"] = Value::from(replica.replicated_messages());
            }
        }
    }
    queue
}

/// How long a listing waits for the nodes that own queues to send their
/// figures.
const OWNER_WAIT: Duration = Duration::from_secs(3);

/// The fields of a queue's row that are not its owner's to give: its
/// definition, which every member holds alike, and where it runs (its
/// node, a quorum queue's leader, members and this member's replica),
/// which the asking member writes itself. Every other field of the row
/// (its messages, consumers, counters, rates, ...) is the owner's: taken
/// from the owner's own row, or left out if the owner does not answer.
/// A rule by exclusion, so a figure added to the row is the owner's
/// without being listed here.
const LOCAL_FIELDS: [&str; 17] = [
    "name",
    "vhost",
    "durable",
    "auto_delete",
    "exclusive",
    "arguments",
    "type",
    "policy",
    "operator_policy",
    "effective_policy_definition",
    "state",
    "node",
    "leader",
    "leader_term",
    "members",
    "online",
    "replica_messages",
];

/// The queues this node owns (of `vhost`, or of all; only `name`, if
/// given), as it renders them: what another member shows of them (see
/// [`with_owner_figures`]).
pub(crate) fn owned_rows(state: &HttpState, vhost: Option<&str>, name: Option<&str>) -> Vec<Value> {
    let Ok(vhosts) = state.vhosts_for(vhost) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for v in vhosts {
        for q in v.owned_queues() {
            if name.is_none_or(|n| q.name == n) {
                rows.push(render::queue(state, &q));
            }
        }
    }
    rows
}

/// Sets the figures of the queues other cluster members own (this node's
/// copy of such a queue is empty, its counters zero) from their owners'
/// own rows (all but [`LOCAL_FIELDS`]), one request per owner, all at once, as
/// RabbitMQ asks a queue's home node. A queue whose owner does not answer
/// in time, or no longer owns it, loses those fields, as RabbitMQ leaves
/// out those of a queue it cannot reach, rather than show zeros. With
/// `one` (a queue's own page), the owner renders that queue only; with
/// `everyone`, every running member is asked, owner or not. Returns the
/// rows each member gave, by member and queue.
async fn with_owner_figures(
    state: &HttpState,
    v: &antre_broker::Vhost,
    queues: &mut [Value],
    one: Option<&str>,
    everyone: bool,
) -> HashMap<String, HashMap<String, Value>> {
    let Some(cluster) = &state.cluster else {
        return HashMap::new();
    };
    let owner_of = |q: &Value| {
        q["name"]
            .as_str()
            .and_then(|n| v.remote_owner(n))
            .map(|o| o.to_string())
    };
    let mut owners: Vec<String> = queues.iter().filter_map(owner_of).collect();
    if everyone {
        let status = cluster.status();
        let running = status
            .members
            .into_iter()
            .filter(|m| !m.this_node && m.running);
        owners.extend(running.map(|m| m.name));
    }
    owners.sort_unstable();
    owners.dedup();
    let asks = owners.into_iter().map(|owner| async move {
        let rows = cluster
            .listing(&owner, Listing::Queues, Some(&v.name), one, OWNER_WAIT)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(node = %owner, "no queue figures from {owner}: {e}");
                Vec::new()
            });
        let by_name: HashMap<String, Value> = rows
            .into_iter()
            .filter_map(|r| Some((r["name"].as_str()?.to_owned(), r)))
            .collect();
        (owner, by_name)
    });
    let figures: HashMap<String, HashMap<String, Value>> =
        futures::future::join_all(asks).await.into_iter().collect();
    for q in queues.iter_mut() {
        let Some(owner) = owner_of(q) else {
            continue;
        };
        let theirs = q["name"].as_str().and_then(|n| figures.get(&owner)?.get(n));
        let Some(fields) = q.as_object_mut() else {
            continue;
        };
        fields.retain(|key, _| LOCAL_FIELDS.contains(&key.as_str()));
        if let Some(Value::Object(theirs)) = theirs {
            for (key, value) in theirs {
                if !LOCAL_FIELDS.contains(&key.as_str()) {
                    fields.insert(key.clone(), value.clone());
                }
            }
        }
    }
    figures
}

/// Other members' exclusive queues among their `figures` (see
/// [`with_owner_figures`]): node-local, so only their node has them, but
/// RabbitMQ lists every node's wherever it is asked.
fn exclusive_elsewhere(
    v: &antre_broker::Vhost,
    figures: HashMap<String, HashMap<String, Value>>,
) -> impl Iterator<Item = (String, Value)> + '_ {
    figures.into_iter().flat_map(move |(node, rows)| {
        rows.into_iter()
            .filter(|(name, row)| row["exclusive"] == Value::Bool(true) && !v.has_queue(name))
            .map(move |(name, mut row)| {
                row["node"] = Value::String(node.clone());
                (name, row)
            })
    })
}

async fn list(state: &HttpState, vhost: Option<&str>) -> ApiResult<Vec<Value>> {
    let mut out = Vec::new();
    for v in state.vhosts_for(vhost)? {
        let queues = v.queues();
        let mut rendered: Vec<Value> = queues
            .iter()
            .map(|q| with_node(state, &v, render::queue(state, q)))
            .collect();
        let figures = with_owner_figures(state, &v, &mut rendered, None, true).await;
        let mut all: Vec<(String, Value)> = queues
            .iter()
            .map(|q| q.name.clone())
            .zip(rendered)
            .collect();
        all.extend(exclusive_elsewhere(&v, figures));
        all.extend(
            v.streams()
                .iter()
                .map(|s| (s.name.clone(), with_node(state, &v, render::stream(s)))),
        );
        all.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(all.into_iter().map(|(_, q)| q));
    }
    Ok(out)
}

/// A page of the queues of `vhost` (or of all) in name order, rendering
/// only the queues on it (see [`listing_light`]); `visible` keeps the
/// user's. A single node only: a cluster member learns of other members'
/// exclusive queues from their full listings.
fn page_by_name(
    state: &HttpState,
    vhost: Option<&str>,
    query: &HashMap<String, String>,
    visible: impl FnOnce(Vec<Value>) -> Vec<Value>,
) -> ApiResult<Value> {
    let mut light = Vec::new();
    let mut vhosts = HashMap::new();
    for v in state.vhosts_for(vhost)? {
        let mut names: Vec<String> = v.streams().iter().map(|s| s.name.clone()).collect();
        names.extend(v.queues().iter().map(|q| q.name.clone()));
        names.sort();
        light.extend(
            names
                .into_iter()
                .map(|n| json!({ "name": n, "vhost": v.name })),
        );
        vhosts.insert(v.name.clone(), v);
    }
    let render_one = |item: &Value| -> Option<Value> {
        let v = vhosts.get(item["vhost"].as_str()?)?;
        let name = item["name"].as_str()?;
        let row = match v.queue_info(name) {
            Some(q) => render::queue(state, &q),
            None => render::stream(&*v.stream(name)?),
        };
        Some(with_node(state, v, row))
    };
    listing_light(visible(light), query, render_one)
}

/// GET /api/queues.
pub async fn list_all(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    if state.cluster.is_none() && pages_by_name(&query) {
        let visible = |rows| user.filter_vhost(&state, rows);
        return Ok(Json(page_by_name(&state, None, &query, visible)?));
    }
    let visible = user.filter_vhost(&state, list(&state, None).await?);
    Ok(Json(listing(visible, &query, Paging::Paged)?))
}

/// GET /api/queues/{vhost}.
pub async fn list_vhost(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    if state.cluster.is_none() && pages_by_name(&query) {
        return Ok(Json(page_by_name(&state, Some(&vhost), &query, |r| r)?));
    }
    Ok(Json(listing(
        list(&state, Some(&vhost)).await?,
        &query,
        Paging::Paged,
    )?))
}

/// The queue, or 404.
pub fn find(
    state: &HttpState,
    vhost: &str,
    name: &str,
) -> ApiResult<std::sync::Arc<antre_broker::Queue>> {
    let v = state.vhost(vhost)?;
    v.queue_info(name)
        .ok_or_else(|| ApiError::not_found(format!("no queue '{name}' in vhost '{vhost}'")))
}

/// GET /api/queues/{vhost}/{name}, with its consumers.
pub async fn show(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    if let Some(s) = state.vhost(&vhost)?.stream(&name) {
        let v = state.vhost(&vhost)?;
        let mut body = with_node(&state, &v, render::stream(&s));
        body["consumer_details"] = s
            .consumers()
            .iter()
            .map(|c| render::stream_consumer(&state, &s, c))
            .collect();
        breakdowns(&mut body);
        return Ok(Json(body));
    }
    let v = state.vhost(&vhost)?;
    let q = match find(&state, &vhost, &name) {
        Ok(q) => q,
        Err(missing) => {
            return exclusive_of_another_node(&state, &v, &name)
                .await
                .ok_or(missing)
        }
    };
    let mut body = with_node(&state, &v, render::queue(&state, &q));
    // First: the owner's figures replace every field but the local ones.
    with_owner_figures(
        &state,
        &v,
        std::slice::from_mut(&mut body),
        Some(&name),
        false,
    )
    .await;
    body["consumer_details"] = match (v.remote_owner(&name), &state.cluster) {
        // Its consumers are its owner's, listed there with their channels.
        (Some(owner), Some(cluster)) => cluster
            .listing(
                &owner,
                Listing::Consumers,
                Some(&vhost),
                Some(&name),
                OWNER_WAIT,
            )
            .await
            .unwrap_or_default()
            .into(),
        _ => q
            .consumers()
            .iter()
            .map(|c| render::consumer(&state, &q, c))
            .collect(),
    };
    breakdowns(&mut body);
    Ok(Json(body))
}

/// RabbitMQ's per-channel breakdowns of a queue's traffic (`incoming`
/// from each publishing channel, `deliveries` to each consuming one),
/// kept only in its detailed statistics mode: empty, as RabbitMQ 3.10's
/// queue page has them by default.
fn breakdowns(body: &mut Value) {
    body["incoming"] = Value::Array(Vec::new());
    body["deliveries"] = Value::Array(Vec::new());
}

/// Another node's exclusive queue `name` (its name names its node, or the
/// metadata records it), as that node shows it, with its consumers.
async fn exclusive_of_another_node(
    state: &HttpState,
    v: &antre_broker::Vhost,
    name: &str,
) -> Option<Json<Value>> {
    let cluster = state.cluster.as_ref()?;
    let node = v.named_elsewhere(name)?;
    let ask = |what| cluster.listing(&node, what, Some(&v.name), Some(name), OWNER_WAIT);
    let mut body = ask(Listing::Queues).await.ok()?.into_iter().next()?;
    body["node"] = Value::String(node.to_string());
    body["consumer_details"] = ask(Listing::Consumers).await.unwrap_or_default().into();
    Some(Json(body))
}

/// The body of PUT /api/queues/{vhost}/{name}.
/// Fields are read as RabbitMQ reads them (see [`lenient`]); the ones it
/// also accepts and antre has no use for (`vhost`, `name`, `node`) are
/// ignored.
#[derive(Debug, Default, Deserialize)]
pub struct QueueBody {
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    durable: Option<bool>,
    #[serde(default, deserialize_with = "lenient::bool")]
    auto_delete: bool,
    #[serde(default, deserialize_with = "lenient::bool")]
    exclusive: bool,
    #[serde(default, deserialize_with = "lenient::arguments")]
    arguments: Map<String, Value>,
}

/// PUT /api/queues/{vhost}/{name}: 201 when created, 204 when it existed
/// with the same properties, 400 when it exists with others. Durable unless
/// the body says otherwise (as in RabbitMQ's UI).
pub async fn declare(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: QueueBody = parse_body(&body)?;
    if body.exclusive {
        return Err(ApiError::bad_request(
            "exclusive queues belong to an AMQP connection and cannot be declared over HTTP",
        ));
    }
    if name.is_empty() || name.starts_with("amq.") {
        return Err(BrokerError::AccessRefused(format!(
            "queue name '{name}' contains reserved prefix 'amq.*'"
        ))
        .into());
    }
    let v = state.vhost(&vhost)?;
    let existed = v.has_queue(&name);
    // What queue.declare needs: configure, and for a new dead-lettering
    // queue read on it and write on its dead letter exchange.
    user.permit(&state, &vhost, ResourceKind::Queue, &name, Perm::Configure)?;
    refuse_exclusive(&v, &name)?;
    if let Some(dlx) = body
        .arguments
        .get("x-dead-letter-exchange")
        .and_then(Value::as_str)
    {
        if !existed {
            user.permit(&state, &vhost, ResourceKind::Queue, &name, Perm::Read)?;
            user.permit(&state, &vhost, ResourceKind::Exchange, dlx, Perm::Write)?;
        }
    }
    let arguments = json_to_table(&body.arguments);
    antre_broker::queue::QueueArgs::check_expiries(&arguments, &vhost, &name)
        .map_err(ApiError::direct)?;
    if let Some(log) = state.broker.metadata_log() {
        let owner = state
            .broker
            .place_new_queue(&v, &name, &arguments)
            .unwrap_or_else(|| log.node_name().to_owned());
        let command = MetaCommand::DeclareQueue {
            vhost,
            name,
            durable: body.durable.unwrap_or(true),
            auto_delete: body.auto_delete,
            arguments: WireTable(arguments),
            owner,
        };
        state
            .broker
            .change_meta(command)
            .map_err(ApiError::direct_meta)?;
    } else {
        v.declare_queue(
            QueueDeclaration {
                name,
                durable: body.durable.unwrap_or(true),
                exclusive: false,
                auto_delete: body.auto_delete,
                arguments,
            },
            false,
            0,
        )
        .map_err(ApiError::direct)?;
    }
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// DELETE /api/queues/{vhost}/{name}[?if-unused=true&if-empty=true].
pub async fn remove(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let v = state.vhost(&vhost)?;
    let locked = v.locked_for_management(&name);
    if locked.is_none() && v.stream(&name).is_none() {
        find(&state, &vhost, &name)?;
    }
    user.permit(&state, &vhost, ResourceKind::Queue, &name, Perm::Configure)?;
    if let Some(locked) = locked {
        return Err(refused_exclusive(&locked));
    }
    if state.broker.metadata_log().is_some() {
        state.broker.change_meta(MetaCommand::DeleteQueue {
            vhost,
            name,
            if_unused: flag(&query, "if-unused"),
            if_empty: flag(&query, "if-empty"),
        })?;
        return Ok(StatusCode::NO_CONTENT);
    }
    // Connection 0 is no client's: an exclusive queue declared since the
    // check above is refused all the same.
    v.delete_queue(
        &name,
        flag(&query, "if-unused"),
        flag(&query, "if-empty"),
        0,
    )?;
    Ok(StatusCode::NO_CONTENT)
}

/// DELETE /api/queues/{vhost}/{name}/contents: purge.
pub async fn purge(
    State(state): State<HttpState>,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    if state.vhost(&vhost)?.stream(&name).is_some() {
        return Err(ApiError::bad_request(format!(
            "purge not supported by stream queues: '{name}' in vhost '{vhost}' is a stream"
        )));
    }
    let v = state.vhost(&vhost)?;
    refuse_exclusive(&v, &name)?;
    if let (Some(owner), Some(cluster)) = (v.remote_owner(&name), &state.cluster) {
        // Its answer has no body: 204, as for a queue of this node.
        let _ = at_owner(cluster, &owner, &vhost, &name, &user, QueueAction::Purge).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    purge_here(&state, &user, &vhost, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// An exclusive queue is its connection's alone, here or on another
/// running node: the management API neither deletes, purges, redeclares
/// nor binds it, and gets nothing from it (400, with the reason RabbitMQ
/// 3.10's API gives; see [`antre_broker::Vhost::locked_for_management`]).
/// Before, a node's API did all of these to its own node's exclusive
/// queues, from under their connection, and answered 404 for another
/// node's.
pub fn refuse_exclusive(v: &antre_broker::Vhost, name: &str) -> ApiResult<()> {
    match v.locked_for_management(name) {
        Some(locked) => Err(refused_exclusive(&locked)),
        None => Ok(()),
    }
}

/// [`refuse_exclusive`]'s answer: 400 and the details alone (RabbitMQ's
/// API does these itself, not over a channel).
fn refused_exclusive(locked: &BrokerError) -> ApiError {
    ApiError::bad_request(locked.details())
}

/// Purges this node's queue `name` (see [`purge`]).
pub fn purge_here(state: &HttpState, user: &AuthUser, vhost: &str, name: &str) -> ApiResult<()> {
    let q = find(state, vhost, name)?;
    user.permit(state, vhost, ResourceKind::Queue, name, Perm::Read)?;
    state.vhost(vhost)?.check_local(name)?;
    q.purge();
    Ok(())
}

/// Has `owner`, the cluster member that owns queue `name`, do `action`
/// as `user` (a get or a purge through this node's API): its answer, or
/// its error as it gave it.
pub async fn at_owner(
    cluster: &antre_cluster::Cluster,
    owner: &str,
    vhost: &str,
    name: &str,
    user: &AuthUser,
    action: QueueAction,
) -> ApiResult<Json<Value>> {
    let who = (user.name.as_str(), user.tags.as_slice());
    match cluster
        .queue_action(owner, vhost, name, who, action, OWNER_WAIT)
        .await
    {
        Ok(Ok(answer)) => Ok(Json(answer)),
        Ok(Err((status, reason))) => Err(ApiError::from_status(status, reason)),
        Err(e) => Err(ApiError::unavailable(format!(
            "cluster node '{owner}', which owns queue '{name}', did not answer: {e}"
        ))),
    }
}

/// The body of POST /api/queues/{vhost}/{name}/actions.
#[derive(Debug, Default, Deserialize)]
pub struct ActionBody {
    action: String,
}

/// POST /api/queues/{vhost}/{name}/actions: RabbitMQ 3.10's `sync` and
/// `cancel_sync` of a classic queue's mirrors (administrators), which
/// scripts and its UI's "Synchronise" button send. antre has no mirrors
/// to synchronise (a quorum queue's members catch up by themselves), so
/// both are done at once: 204, as RabbitMQ answers for a queue without
/// unsynchronised mirrors; 404 for no such queue, 400 another action.
pub async fn action(
    State(state): State<HttpState>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let body: ActionBody = parse_body(&body)?;
    let v = state.vhost(&vhost)?;
    if v.stream(&name).is_none() {
        find(&state, &vhost, &name)?;
    }
    match body.action.as_str() {
        "sync" | "cancel_sync" => Ok(StatusCode::NO_CONTENT),
        other => Err(ApiError::bad_request(format!(
            "unknown action '{other}' (sync or cancel_sync)"
        ))),
    }
}
