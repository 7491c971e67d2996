//! `/api/definitions`: export and import of vhosts, users (with their
//! password hashes, tags and limits), permissions, topic permissions, vhost
//! limits (as RabbitMQ 3.10 writes them: `vhost-limits` parameters),
//! policies, operator policies (runtime parameters of the component
//! `operator_policy` there) and durable topology in the shape of RabbitMQ's
//! definitions file, so a file
//! exported from RabbitMQ loads here and ours loads into RabbitMQ. An
//! import never drops anything silently: what antre cannot apply (a plugin's
//! parameters, an unknown exchange type, ...) fails it before anything
//! changes, listed, unless `?skip_unsupported=true` asks for the rest. A vhost's own export
//! (`/api/definitions/{vhost}`) has only its topology and limits, as in
//! RabbitMQ. As in RabbitMQ, an import that would take a vhost past its
//! `max-queues` is refused before anything changes.

use antre_broker::access::limits::{parse_limits, LimitScope};
use antre_broker::access::{password, Permission, TopicPermission, UserLimits, VhostLimits};
use antre_broker::cluster::{MetaCommand, WireTable};
use antre_broker::definitions::json_to_table;
use antre_broker::exchange::{Destination, ExchangeType};
use antre_broker::policy::{Policy, PolicyKind};
use antre_broker::queue::QueueArgs;
use antre_broker::vhost::{ExchangeDeclaration, QueueDeclaration};
use antre_broker::UserRecord;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
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
    parameters.extend(
        state
            .broker
            .access()
            .all_vhost_limits()
            .iter()
            .filter(|l| vhost.is_none_or(|v| v == l.vhost))
            .map(super::parameters::limits_parameter),
    );
    let mut body = json!({
        "rabbit_version": crate::config::RABBITMQ_VERSION,
        "rabbitmq_version": crate::config::RABBITMQ_VERSION,
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
        body["users"] = access
            .users()
            .iter()
            .map(|u| super::users::user_json(access, u))
            .collect();
        body["permissions"] = json!(access.permissions());
        body["topic_permissions"] = json!(access.topic_permissions());
        body["global_parameters"] = super::parameters::global_parameters(state).into();
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
    /// RabbitMQ 3.13 writes a vhost's limits here too.
    #[serde(default)]
    limits: Option<Value>,
    /// 3.11+ vhost metadata: antre keeps none of it.
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    default_queue_type: Option<String>,
}

/// A runtime parameter; only `vhost-limits` ones are read.
#[derive(Debug, Deserialize)]
struct ParameterIn {
    component: String,
    #[serde(default)]
    name: Option<String>,
    vhost: Option<String>,
    #[serde(default)]
    value: Value,
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
    /// The queue type as newer RabbitMQ versions also write it.
    #[serde(default, rename = "type")]
    kind: Option<String>,
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

impl QueueIn {
    /// The declared arguments, with `type` as `x-queue-type` when the
    /// arguments do not say it.
    fn arguments(&self) -> antre_amqp::FieldTable {
        let mut args = self.arguments.clone();
        if let Some(kind) = &self.kind {
            args.entry("x-queue-type")
                .or_insert_with(|| Value::String(kind.clone()));
        }
        json_to_table(&args)
    }
}

fn yes() -> bool {
    true
}

/// A definitions file; [`Review`] reports what antre does not apply.
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
    parameters: Vec<ParameterIn>,
    #[serde(default)]
    global_parameters: Vec<Map<String, Value>>,
    #[serde(default)]
    policies: Vec<Map<String, Value>>,
}

/// The vhost and user limits of a definitions file, checked: from
/// `vhost-limits` parameters (RabbitMQ 3.10), vhosts' `limits` (3.13) and
/// users' `limits`. Vhost limits of an import into one vhost apply to it.
fn limits_in(
    defs: &DefinitionsIn,
    into: Option<&str>,
) -> ApiResult<(Vec<VhostLimits>, Vec<UserLimits>)> {
    let invalid = |e: antre_broker::access::LimitError| {
        ApiError::bad_request(format!("Validation failed\n\n{e}\n"))
    };
    let mut vhosts = Vec::new();
    let from_parameters = defs
        .parameters
        .iter()
        .filter(|p| p.component == super::parameters::VHOST_LIMITS)
        .map(|p| (p.vhost.clone(), &p.value));
    let from_vhosts = defs
        .vhosts
        .iter()
        .filter_map(|v| Some((Some(v.name.clone()), v.limits.as_ref()?)))
        .filter(|(_, l)| l.as_object().is_some_and(|o| !o.is_empty()));
    for (vhost, value) in from_parameters.chain(from_vhosts) {
        let vhost = into
            .map(str::to_owned)
            .or(vhost)
            .unwrap_or_else(|| "/".into());
        let value = parse_limits(LimitScope::Vhost, value).map_err(invalid)?;
        vhosts.push(VhostLimits { vhost, value });
    }
    let mut users = Vec::new();
    if into.is_none() {
        for u in &defs.users {
            let (Some(name), Some(limits)) =
                (u.get("name").and_then(Value::as_str), u.get("limits"))
            else {
                continue;
            };
            let value = parse_limits(LimitScope::User, limits).map_err(invalid)?;
            users.push(UserLimits {
                user: name.to_owned(),
                value,
            });
        }
    }
    Ok((vhosts, users))
}

/// RabbitMQ's refusal of an import that would take a vhost past its
/// `max-queues`: every new queue of the file is counted first.
fn check_queue_limits(
    state: &HttpState,
    queues: impl Iterator<Item = (String, String)>,
) -> ApiResult<()> {
    let mut added: std::collections::BTreeMap<String, u64> = Default::default();
    for (vhost, name) in queues {
        let v = state.vhost(&vhost)?;
        if !v.has_queue(&name) {
            *added.entry(vhost).or_default() += 1;
        }
    }
    for (vhost, add) in added {
        let v = state.vhost(&vhost)?;
        let Some(limit) = v.max_queues() else {
            continue;
        };
        let count = v.queue_count() as u64;
        if count + add > limit {
            return Err(ApiError::bad_request(format!(
                "Adding {add} queue(s) to virtual host \"{vhost}\" would exceed the limit of \
                 {limit} queue(s).\n\nThis virtual host currently has {count} queue(s) \
                 defined.\n\nImport aborted!"
            )));
        }
    }
    Ok(())
}

/// The top-level keys of a RabbitMQ definitions file that antre reads or
/// that only describe the file.
const SECTIONS: &[&str] = &[
    "rabbit_version",
    "rabbitmq_version",
    "product_name",
    "product_version",
    "explanation",
    "vhosts",
    "users",
    "permissions",
    "topic_permissions",
    "parameters",
    "global_parameters",
    "policies",
    "exchanges",
    "queues",
    "bindings",
];

/// What of a definitions file antre cannot apply, found before anything
/// changes. `unsupported` items fail the import unless the caller asked to
/// skip them; `ignored` ones only describe the exporting broker and are
/// reported without failing.
#[derive(Debug, Default)]
struct Review {
    unsupported: Vec<String>,
    ignored: Vec<String>,
    /// Names (vhost, name) of exchanges and queues that will not be created,
    /// so their bindings are skipped too.
    skipped_exchanges: std::collections::BTreeSet<(String, String)>,
    skipped_queues: std::collections::BTreeSet<(String, String)>,
    skipped_users: std::collections::BTreeSet<String>,
    /// The file's policies and operator policies antre can apply.
    policies: Vec<Policy>,
    /// The global parameter `cluster_name`.
    cluster_name: Option<String>,
}

impl Review {
    /// Reads the whole file and notes everything antre would not apply.
    fn of(
        raw: &Map<String, Value>,
        defs: &DefinitionsIn,
        pick: &dyn Fn(&Option<String>) -> String,
    ) -> Review {
        let mut r = Review::default();
        for key in raw.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
            r.unsupported.push(format!("section '{key}'"));
        }
        for v in &defs.vhosts {
            if let Some(t) = v.default_queue_type.as_deref().filter(|t| *t != "classic") {
                r.unsupported.push(format!(
                    "vhost '{}': default_queue_type '{t}' (antre's default queue type is classic)",
                    v.name
                ));
            }
            let described = v.description.as_deref().is_some_and(|d| !d.is_empty())
                || v.tags.as_ref().is_some_and(|t| !is_empty_value(t))
                || v.metadata.as_ref().is_some_and(|m| !is_empty_value(m));
            if described {
                r.ignored.push(format!(
                    "vhost '{}': description and tags (antre keeps none)",
                    v.name
                ));
            }
        }
        for u in &defs.users {
            let name = u.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some(alg) = u.get("hashing_algorithm").and_then(Value::as_str) {
                if !password::supported(alg) {
                    r.unsupported.push(format!(
                        "user '{name}': hashing_algorithm '{alg}' (antre checks {} and {})",
                        password::SHA256,
                        password::SHA512
                    ));
                    r.skipped_users.insert(name.to_owned());
                }
            }
        }
        let own = [super::parameters::VHOST_LIMITS, "operator_policy"];
        for p in defs
            .parameters
            .iter()
            .filter(|p| !own.contains(&p.component.as_str()))
        {
            r.unsupported.push(format!(
                "parameter '{}' of component '{}' in vhost '{}' (antre has no such component)",
                p.name.as_deref().unwrap_or_default(),
                p.component,
                pick(&p.vhost)
            ));
        }
        for g in &defs.global_parameters {
            let name = g.get("name").and_then(Value::as_str).unwrap_or_default();
            if name == "internal_cluster_id" {
                r.ignored.push(
                    "global parameter 'internal_cluster_id' (the exporting cluster's identity)"
                        .into(),
                );
            } else if name == "cluster_name" {
                match super::parameters::cluster_name_in(g.get("value")) {
                    Ok(value) => r.cluster_name = Some(value.to_owned()),
                    Err(_) => r
                        .unsupported
                        .push("global parameter 'cluster_name' (not a name)".into()),
                }
            } else {
                r.unsupported.push(format!("global parameter '{name}'"));
            }
        }
        let operator = defs
            .parameters
            .iter()
            .filter(|p| p.component == "operator_policy")
            .map(|p| {
                let body = p.value.as_object().cloned().unwrap_or_default();
                (PolicyKind::Operator, p.vhost.clone(), p.name.clone(), body)
            });
        let policies = defs.policies.iter().map(|p| {
            let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
            (PolicyKind::Policy, text("vhost"), text("name"), p.clone())
        });
        for (kind, vhost, name, body) in policies.chain(operator) {
            let (vhost, name) = (pick(&vhost), name.unwrap_or_default());
            match Policy::parse(kind, &vhost, &name, &body) {
                Ok(p) => r.policies.push(p),
                Err(e) => r.unsupported.push(format!(
                    "{} '{name}' in vhost '{vhost}': {e}",
                    kind.component()
                )),
            }
        }
        for e in &defs.exchanges {
            if let Err(err) = ExchangeType::parse(&e.kind, &json_to_table(&e.arguments)) {
                let vhost = pick(&e.vhost);
                r.unsupported
                    .push(format!("exchange '{}' in vhost '{vhost}': {err}", e.name));
                r.skipped_exchanges.insert((vhost, e.name.clone()));
            }
        }
        for q in &defs.queues {
            let vhost = pick(&q.vhost);
            let args = q.arguments();
            let refusal = QueueArgs::check_expiries(&args, &vhost, &q.name)
                .and_then(|()| QueueArgs::parse(&args, &vhost, &q.name).map(drop))
                .err()
                .map(|e| e.to_string());
            if let Some(err) = refusal {
                r.unsupported
                    .push(format!("queue '{}' in vhost '{vhost}': {err}", q.name));
                r.skipped_queues.insert((vhost, q.name.clone()));
            }
        }
        r
    }

    /// Whether a binding's ends are both being created (or exist).
    fn binding_skipped(&self, vhost: &str, b: &BindingIn) -> bool {
        let key = |n: &str| (vhost.to_owned(), n.to_owned());
        self.skipped_exchanges.contains(&key(&b.source))
            || match b.destination_type.as_str() {
                "queue" => self.skipped_queues.contains(&key(&b.destination)),
                _ => self.skipped_exchanges.contains(&key(&b.destination)),
            }
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty_value),
        _ => false,
    }
}

/// Applies a definitions file: checks it whole first, then creates what it
/// holds. Nothing is dropped silently: what antre cannot apply fails the
/// import before anything changes, listed, unless `skip` asks to import
/// the rest; then the answer and the log list what was skipped.
fn import(state: &HttpState, body: &[u8], into: Option<&str>, skip: bool) -> ApiResult<Value> {
    let invalid =
        |e: serde_json::Error| ApiError::bad_request(format!("invalid definitions JSON: {e}"));
    let raw: Value = serde_json::from_slice(body).map_err(invalid)?;
    let defs = DefinitionsIn::deserialize(&raw).map_err(invalid)?;
    let raw = raw
        .as_object()
        .ok_or_else(|| ApiError::bad_request("a definitions file is a JSON object"))?;
    let pick = |own: &Option<String>| -> String {
        into.map(str::to_owned)
            .or_else(|| own.clone())
            .unwrap_or_else(|| "/".to_owned())
    };
    let mut review = Review::of(raw, &defs, &pick);
    if into.is_some() {
        for (section, n) in [
            ("vhosts", defs.vhosts.len()),
            ("users", defs.users.len()),
            ("permissions", defs.permissions.len()),
            ("topic_permissions", defs.topic_permissions.len()),
        ] {
            if n > 0 {
                review.ignored.push(format!(
                    "{n} {section} (an import into one vhost reads its topology and limits only)"
                ));
            }
        }
        if review.cluster_name.take().is_some() {
            review.ignored.push(
                "global parameter 'cluster_name' (an import into one vhost reads its \
                 topology and limits only)"
                    .into(),
            );
        }
    }
    if !review.unsupported.is_empty() && !skip {
        return Err(ApiError::bad_request(format!(
            "Import aborted, nothing was changed: antre cannot apply {} item(s) of this file:\n- {}\n\
             Import again with ?skip_unsupported=true to apply the rest.",
            review.unsupported.len(),
            review.unsupported.join("\n- ")
        )));
    }
    for item in &review.unsupported {
        tracing::warn!("definitions import: skipped {item}");
    }
    let (vhost_limits, user_limits) = limits_in(&defs, into)?;
    let mut counts = Map::new();
    if let Some(v) = into {
        state.vhost(v)?;
    } else {
        for v in &defs.vhosts {
            match state.broker.metadata_log() {
                Some(_) => {
                    let command = MetaCommand::AddVhost {
                        name: v.name.clone(),
                    };
                    state.broker.change_meta(command)?;
                }
                None => {
                    state.broker.add_vhost(&v.name)?;
                }
            }
        }
        import_access(state, &defs, &review)?;
        if let Some(name) = &review.cluster_name {
            let command = MetaCommand::SetClusterName { name: name.clone() };
            state.broker.change_meta(command)?;
        }
        counts.insert("vhosts".into(), defs.vhosts.len().into());
        let users = defs.users.len() - review.skipped_users.len();
        counts.insert("users".into(), users.into());
    }
    // Check the whole topology before changing it: a vhost that is named
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
    let new_queues = defs
        .queues
        .iter()
        .map(|q| (pick(&q.vhost), q.name.clone()))
        .filter(|k| !review.skipped_queues.contains(k));
    check_queue_limits(state, new_queues)?;
    for p in &review.policies {
        state.vhost(&p.vhost)?;
    }
    let created = import_topology(state, &defs, &review, &pick)?;
    counts.extend(created);
    let (mut policies, mut operator_policies) = (0, 0);
    for p in review.policies {
        match p.kind {
            PolicyKind::Policy => policies += 1,
            PolicyKind::Operator => operator_policies += 1,
        }
        let vhost = state.vhost(&p.vhost)?;
        if state.broker.metadata_log().is_some() {
            let operator = p.kind == PolicyKind::Operator;
            let command = MetaCommand::SetPolicy {
                operator,
                def: p.to_def(),
            };
            state.broker.change_meta(command)?;
            continue;
        }
        vhost.set_policy(p)?;
    }
    counts.insert("policies".into(), policies.into());
    counts.insert("operator_policies".into(), operator_policies.into());
    // Last, as RabbitMQ's import does not hold the file's own queues to
    // the file's limits.
    if state.broker.metadata_log().is_some() {
        let command = MetaCommand::ImportLimits {
            vhosts: vhost_limits,
            users: user_limits,
        };
        state.broker.change_meta(command)?;
    } else {
        state
            .broker
            .import_limits(vhost_limits, user_limits)
            .map_err(super::users::access_error)?;
    }
    counts.insert("skipped".into(), json!(review.unsupported));
    counts.insert("ignored".into(), json!(review.ignored));
    Ok(Value::Object(counts))
}

/// Creates a file's exchanges, queues and bindings, but those the review
/// skips; answers how many of each.
fn import_topology(
    state: &HttpState,
    defs: &DefinitionsIn,
    review: &Review,
    pick: &dyn Fn(&Option<String>) -> String,
) -> ApiResult<Map<String, Value>> {
    let (mut exchanges, mut queues, mut bindings) = (0, 0, 0);
    for e in &defs.exchanges {
        let vhost = pick(&e.vhost);
        if e.name.is_empty()
            || e.name.starts_with("amq.")
            || review
                .skipped_exchanges
                .contains(&(vhost.clone(), e.name.clone()))
        {
            continue;
        }
        let declaration = ExchangeDeclaration {
            name: e.name.clone(),
            kind: e.kind.clone(),
            durable: e.durable,
            auto_delete: e.auto_delete,
            internal: e.internal,
            arguments: json_to_table(&e.arguments),
        };
        if state.broker.metadata_log().is_some() {
            state.broker.change_meta(MetaCommand::DeclareExchange {
                vhost,
                name: declaration.name,
                kind: declaration.kind,
                durable: declaration.durable,
                auto_delete: declaration.auto_delete,
                internal: declaration.internal,
                arguments: WireTable(declaration.arguments),
            })?;
        } else {
            state.vhost(&vhost)?.declare_exchange(declaration, false)?;
        }
        exchanges += 1;
    }
    for q in &defs.queues {
        let vhost = pick(&q.vhost);
        if review
            .skipped_queues
            .contains(&(vhost.clone(), q.name.clone()))
        {
            continue;
        }
        if let Some(log) = state.broker.metadata_log() {
            // Placed as a declare on this node places them.
            let arguments = q.arguments();
            let owner = state
                .broker
                .place_new_queue(&*state.vhost(&vhost)?, &q.name, &arguments)
                .unwrap_or_else(|| log.node_name().to_owned());
            state.broker.change_meta(MetaCommand::DeclareQueue {
                vhost,
                name: q.name.clone(),
                durable: q.durable,
                auto_delete: q.auto_delete,
                arguments: WireTable(arguments),
                owner,
            })?;
            queues += 1;
            continue;
        }
        state.vhost(&vhost)?.declare_queue(
            QueueDeclaration {
                name: q.name.clone(),
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
                arguments: q.arguments(),
            },
            false,
            0,
        )?;
        queues += 1;
    }
    for b in &defs.bindings {
        let vhost = pick(&b.vhost);
        if review.binding_skipped(&vhost, b) {
            continue;
        }
        let destination = match b.destination_type.as_str() {
            "queue" => Destination::Queue(b.destination.clone()),
            "exchange" => Destination::Exchange(b.destination.clone()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "binding destination_type '{other}' is neither 'queue' nor 'exchange'"
                )))
            }
        };
        if state.broker.metadata_log().is_some() {
            state.broker.change_meta(MetaCommand::binding(
                false,
                &vhost,
                b.source.clone(),
                destination,
                b.routing_key.clone(),
                json_to_table(&b.arguments),
            ))?;
        } else {
            state.vhost(&vhost)?.bind(
                &b.source,
                destination,
                &b.routing_key,
                json_to_table(&b.arguments),
                0,
            )?;
        }
        bindings += 1;
    }
    let mut counts = Map::new();
    counts.insert("exchanges".into(), exchanges.into());
    counts.insert("queues".into(), queues.into());
    counts.insert("bindings".into(), bindings.into());
    Ok(counts)
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
fn import_access(state: &HttpState, defs: &DefinitionsIn, review: &Review) -> ApiResult<()> {
    let users = defs
        .users
        .iter()
        .map(user_in)
        .filter(|u| !matches!(u, Ok(u) if review.skipped_users.contains(&u.name)))
        .collect::<ApiResult<Vec<_>>>()?;
    let kept = |user: &String| !review.skipped_users.contains(user);
    let permissions: Vec<Permission> = defs
        .permissions
        .iter()
        .filter(|p| kept(&p.user))
        .cloned()
        .collect();
    let topic_permissions: Vec<TopicPermission> = defs
        .topic_permissions
        .iter()
        .filter(|t| kept(&t.user))
        .cloned()
        .collect();
    for vhost in permissions
        .iter()
        .map(|p| &p.vhost)
        .chain(topic_permissions.iter().map(|t| &t.vhost))
    {
        state.vhost(vhost)?;
    }
    if state.broker.metadata_log().is_some() {
        let command = MetaCommand::ImportAccess {
            users,
            permissions,
            topic_permissions,
        };
        state.broker.change_meta(command)?;
        return Ok(());
    }
    state
        .broker
        .access()
        .import(users, permissions, topic_permissions)
        .map_err(super::users::access_error)
}

/// POST /api/definitions: imports a whole file (idempotent: existing
/// objects with the same properties are kept).
pub async fn import_all(
    State(state): State<HttpState>,
    Query(query): Query<ImportQuery>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let skip = query.skip()?;
    Ok((
        StatusCode::CREATED,
        Json(import(&state, &body, None, skip)?),
    ))
}

/// `?skip_unsupported=true`: import what antre can apply, list the rest.
#[derive(Debug, Default, Deserialize)]
pub struct ImportQuery {
    #[serde(default)]
    skip_unsupported: Option<String>,
}

impl ImportQuery {
    fn skip(&self) -> ApiResult<bool> {
        match self.skip_unsupported.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "skip_unsupported must be true or false, not '{other}'"
            ))),
        }
    }
}

/// POST /api/definitions/{vhost}: imports into one vhost, whatever the
/// file's objects say their vhost is.
pub async fn import_vhost(
    State(state): State<HttpState>,
    Path(vhost): Path<String>,
    Query(query): Query<ImportQuery>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let skip = query.skip()?;
    Ok((
        StatusCode::CREATED,
        Json(import(&state, &body, Some(&vhost), skip)?),
    ))
}
