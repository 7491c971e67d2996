//! Policies and operator policies, as RabbitMQ 3.10 has them
//! (`rabbit_policy`, `rabbit_policies`): optional queue and exchange
//! settings applied in bulk by name pattern, changeable at run time.
//!
//! - A [`Policy`] has a name, a regex `pattern` (unanchored, like
//!   RabbitMQ's `re:run`), an `apply-to` ([`ApplyTo`]), a `priority` and a
//!   `definition` (keys such as `message-ttl`, `dead-letter-exchange`).
//!   [`Policy::parse`] validates it with RabbitMQ's rules and texts
//!   ([`PolicyError`]).
//! - Operator policies ([`PolicyKind::Operator`]) are set by operators to cap
//!   what users' policies and arguments may ask for; they accept only the
//!   numeric limits.
//! - At most one policy and one operator policy apply to a queue or
//!   exchange: among those whose pattern matches its name, whose `apply-to`
//!   covers it and which are applicable (a queue type refuses a policy with
//!   any key it does not support, e.g. `delivery-limit` for classic queues),
//!   the highest priority; on a tie the name that sorts first (RabbitMQ
//!   leaves ties to table order; antre makes them deterministic).
//! - [`AppliedPolicy`] merges the two (the smaller value for the numeric
//!   limits, otherwise the operator's) and resolves them against a queue's
//!   own `x-` arguments ([`AppliedPolicy::queue_args`]): the smaller value
//!   for TTLs, expiry, length limits, delivery limit and consumer timeout;
//!   the argument wins for dead-lettering (its strategy too) and overflow.
//!
//! `queue-master-locator` and `queue-leader-locator` place new queues in a
//! cluster ([`crate::placement`]). Keys that select RabbitMQ features
//! antre does not have (mirroring `ha-*`, `queue-mode`, `queue-version`,
//! `initial-cluster-size`, `max-in-memory-*`,
//! stream settings) are validated, stored and shown as in RabbitMQ, and
//! have no effect.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use antre_amqp::FieldTable;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::queue::{DeadLetterStrategy, Overflow, QueueArgs, QueueKind};

/// Whether a policy is a user's policy or an operator policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// A policy (`/api/policies`).
    Policy,
    /// An operator policy (`/api/operator-policies`).
    Operator,
}

impl PolicyKind {
    /// RabbitMQ's runtime parameter component: `policy` or `operator_policy`.
    pub fn component(self) -> &'static str {
        match self {
            PolicyKind::Policy => "policy",
            PolicyKind::Operator => "operator_policy",
        }
    }
}

/// What a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ApplyTo {
    /// Queues and exchanges (the default).
    #[default]
    All,
    /// Queues of every type.
    Queues,
    /// Exchanges.
    Exchanges,
    /// Classic queues only (RabbitMQ 3.12+).
    ClassicQueues,
    /// Quorum queues only (RabbitMQ 3.12+).
    QuorumQueues,
    /// Streams only (RabbitMQ 3.12+).
    Streams,
}

impl ApplyTo {
    /// Parses the `apply-to` field.
    pub fn parse(s: &str) -> Option<ApplyTo> {
        Some(match s {
            "all" => ApplyTo::All,
            "queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            "classic_queues" => ApplyTo::ClassicQueues,
            "quorum_queues" => ApplyTo::QuorumQueues,
            "streams" => ApplyTo::Streams,
            _ => return None,
        })
    }

    /// The name the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::ClassicQueues => "classic_queues",
            ApplyTo::QuorumQueues => "quorum_queues",
            ApplyTo::Streams => "streams",
        }
    }

    /// Whether it covers a queue of type `kind`.
    pub fn covers_queue(self, kind: QueueKind) -> bool {
        match self {
            ApplyTo::All | ApplyTo::Queues => true,
            ApplyTo::Exchanges => false,
            ApplyTo::ClassicQueues => kind == QueueKind::Classic,
            ApplyTo::QuorumQueues => kind == QueueKind::Quorum,
            ApplyTo::Streams => kind == QueueKind::Stream,
        }
    }

    /// Whether it covers exchanges.
    pub fn covers_exchange(self) -> bool {
        matches!(self, ApplyTo::All | ApplyTo::Exchanges)
    }
}

/// A policy refused, worded as RabbitMQ's management API words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The request lacks `pattern` or `definition`.
    #[error("[{{key_missing,{0}}}]")]
    KeyMissing(&'static str),
    /// Validation failed: one line per failed field, in RabbitMQ's order
    /// (definition, apply-to, pattern, priority).
    #[error("Validation failed\n\n{}\n", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// A policy as the API lists it and definitions files hold it (RabbitMQ's
/// field names and order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDef {
    /// The vhost.
    pub vhost: String,
    /// The name.
    pub name: String,
    /// The regex names must match.
    pub pattern: String,
    /// `all`, `queues`, `exchanges`, ...
    #[serde(rename = "apply-to", default = "all")]
    pub apply_to: String,
    /// The settings.
    pub definition: Map<String, Value>,
    /// Higher wins.
    #[serde(default = "zero")]
    pub priority: Number,
}

fn all() -> String {
    "all".to_owned()
}

fn zero() -> Number {
    Number::from(0)
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Policy or operator policy.
    pub kind: PolicyKind,
    /// The vhost it lives in.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// The pattern as given.
    pub pattern: String,
    regex: Regex,
    /// What it applies to.
    pub apply_to: ApplyTo,
    /// Its priority, any JSON number (RabbitMQ accepts 1.5).
    pub priority: Number,
    /// Its settings, validated.
    pub definition: Map<String, Value>,
}

/// Policies are equal when everything but the compiled regex is.
impl PartialEq for Policy {
    fn eq(&self, other: &Policy) -> bool {
        self.kind == other.kind
            && self.vhost == other.vhost
            && self.name == other.name
            && self.pattern == other.pattern
            && self.apply_to == other.apply_to
            && self.priority == other.priority
            && self.definition == other.definition
    }
}

/// The keys an operator policy may set (`operator_policy_validator` in
/// `rabbit_policies`).
const OPERATOR_KEYS: [&str; 7] = [
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// Keys merged by taking the smaller of the policy's and the operator
/// policy's values (`merge_policy_value`).
const MIN_MERGED: [&str; 7] = OPERATOR_KEYS;

/// The mirroring keys, validated together as `rabbit_mirror_queue_misc`
/// does.
const HA_KEYS: [&str; 6] = [
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-sync-batch-size",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
];

/// Policy keys each queue type does not support: a policy with any of them
/// does not apply to a queue of that type (each type's `capabilities/0`,
/// plus `consumer-timeout` for streams, as in RabbitMQ 3.12).
fn unsupported(kind: QueueKind) -> &'static [&'static str] {
    match kind {
        QueueKind::Classic => &[
            "max-age",
            "stream-max-segment-size-bytes",
            "queue-leader-locator",
            "initial-cluster-size",
            "delivery-limit",
            "dead-letter-strategy",
        ],
        QueueKind::Quorum => &[
            "max-priority",
            "queue-mode",
            "single-active-consumer",
            "ha-mode",
            "ha-params",
            "ha-sync-mode",
            "ha-promote-on-shutdown",
            "ha-promote-on-failure",
            "queue-master-locator",
            "max-age",
            "stream-max-segment-size-bytes",
            "initial-cluster-size",
        ],
        QueueKind::Stream => &[
            "expires",
            "message-ttl",
            "dead-letter-exchange",
            "dead-letter-routing-key",
            "max-length",
            "max-in-memory-length",
            "max-in-memory-bytes",
            "max-priority",
            "overflow",
            "queue-mode",
            "single-active-consumer",
            "delivery-limit",
            "ha-mode",
            "ha-params",
            "ha-sync-mode",
            "ha-promote-on-shutdown",
            "ha-promote-on-failure",
            "queue-master-locator",
            "dead-letter-strategy",
            "consumer-timeout",
        ],
    }
}

/// RabbitMQ's `?MAX_STREAM_MAX_SEGMENT_SIZE`.
const MAX_STREAM_SEGMENT_SIZE: u64 = 3_000_000_000;

impl Policy {
    /// Validates a policy from the body of `PUT /api/policies/{vhost}/{name}`
    /// (or the operator-policies one): `pattern` and `definition` required,
    /// `priority` (default 0) and `apply-to` (default `all`) optional.
    pub fn parse(
        kind: PolicyKind,
        vhost: &str,
        name: &str,
        body: &Map<String, Value>,
    ) -> Result<Policy, PolicyError> {
        let pattern = body
            .get("pattern")
            .ok_or(PolicyError::KeyMissing("pattern"))?;
        let definition = body
            .get("definition")
            .ok_or(PolicyError::KeyMissing("definition"))?;
        let mut errors = Vec::new();
        let definition = match validate_definition(kind, definition) {
            Ok(d) => Some(d),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let apply_to = match body.get("apply-to") {
            None => Some(ApplyTo::All),
            Some(Value::String(s)) => ApplyTo::parse(s),
            Some(_) => None,
        };
        if apply_to.is_none() {
            let shown = match body.get("apply-to") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => erlang_term(other),
                None => String::new(),
            };
            errors.push(format!(
                "apply-to '{shown}' unrecognised; should be 'queues', 'exchanges' or 'all'"
            ));
        }
        let regex = match pattern {
            Value::String(p) => match Regex::new(p) {
                Ok(r) => Some((p.clone(), r)),
                Err(e) => {
                    errors.push(format!(
                        "pattern should be regular expression but is invalid: {}",
                        regex_error(&e)
                    ));
                    None
                }
            },
            other => {
                errors.push(format!(
                    "pattern should be a binary but was {}",
                    erlang_term(other)
                ));
                None
            }
        };
        let priority = match body.get("priority") {
            None => Some(Number::from(0)),
            Some(Value::Number(n)) => Some(n.clone()),
            Some(other) => {
                errors.push(format!(
                    "priority should be a number, actually was {}",
                    erlang_term(other)
                ));
                None
            }
        };
        match (definition, apply_to, regex, priority) {
            (Some(definition), Some(apply_to), Some((pattern, regex)), Some(priority))
                if errors.is_empty() =>
            {
                Ok(Policy {
                    kind,
                    vhost: vhost.to_owned(),
                    name: name.to_owned(),
                    pattern,
                    regex,
                    apply_to,
                    priority,
                    definition,
                })
            }
            _ => Err(PolicyError::Invalid(errors)),
        }
    }

    /// Validates a stored or imported policy.
    pub fn from_def(kind: PolicyKind, def: &PolicyDef) -> Result<Policy, PolicyError> {
        let mut body = Map::new();
        body.insert("pattern".into(), Value::String(def.pattern.clone()));
        body.insert("definition".into(), Value::Object(def.definition.clone()));
        body.insert("priority".into(), Value::Number(def.priority.clone()));
        body.insert("apply-to".into(), Value::String(def.apply_to.clone()));
        Policy::parse(kind, &def.vhost, &def.name, &body)
    }

    /// As the API lists it.
    pub fn to_def(&self) -> PolicyDef {
        PolicyDef {
            vhost: self.vhost.clone(),
            name: self.name.clone(),
            pattern: self.pattern.clone(),
            apply_to: self.apply_to.as_str().to_owned(),
            definition: self.definition.clone(),
            priority: self.priority.clone(),
        }
    }

    /// Whether its pattern matches `name` (anywhere in it, as in RabbitMQ).
    pub fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }

    fn priority_value(&self) -> f64 {
        self.priority.as_f64().unwrap_or(0.0)
    }

    /// Whether it applies to a queue of type `kind` called `name`.
    fn applies_to_queue(&self, name: &str, kind: QueueKind) -> bool {
        self.apply_to.covers_queue(kind)
            && !self
                .definition
                .keys()
                .any(|k| unsupported(kind).contains(&k.as_str()))
            && self.matches(name)
    }

    /// Whether it applies to the exchange `name`.
    fn applies_to_exchange(&self, name: &str) -> bool {
        self.apply_to.covers_exchange() && self.matches(name)
    }
}

/// One line of a regex error (the crate's own text spans several).
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .map(|l| l.trim_start_matches("error:").trim().to_owned())
        .unwrap_or_else(|| text.replace('\n', " "))
}

/// Validates a definition: every key known and valid (the first invalid
/// key's text, keys in order), else the unknown keys, as RabbitMQ reports
/// them.
fn validate_definition(kind: PolicyKind, definition: &Value) -> Result<Map<String, Value>, String> {
    let map = match definition {
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "definition must be a dictionary: {}",
                erlang_term(other)
            ))
        }
    };
    if map.is_empty() {
        return Err("no policy provided".into());
    }
    let mut unknown = Vec::new();
    let mut ha_checked = false;
    for (key, value) in map {
        let known = match kind {
            PolicyKind::Policy => true,
            PolicyKind::Operator => OPERATOR_KEYS.contains(&key.as_str()),
        };
        let checked = if !known {
            None
        } else if HA_KEYS.contains(&key.as_str()) {
            if !ha_checked {
                ha_checked = true;
                validate_ha(map)?;
            }
            Some(())
        } else {
            validate_key(key, value)?
        };
        if checked.is_none() {
            unknown.push(format!(
                "{{{},{}}}",
                erlang_term(&Value::String(key.clone())),
                erlang_term(value)
            ));
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "[{}] are not recognised policy settings",
            unknown.join(",")
        ));
    }
    Ok(map.clone())
}

/// Validates one key of a policy (not the mirroring ones): `Ok(None)` for a
/// key RabbitMQ does not know.
fn validate_key(key: &str, value: &Value) -> Result<Option<()>, String> {
    // JSON integers only (1.0 is a float to RabbitMQ too).
    let int_at_least = |min: u64| value.as_u64().is_some_and(|n| n >= min);
    let string = value.is_string();
    let one_of = |options: &[&str]| value.as_str().is_some_and(|s| options.contains(&s));
    let (ok, what) = match key {
        "alternate-exchange" => (string, "is not a valid alternate exchange name"),
        "dead-letter-exchange" => (string, "is not a valid dead letter exchange name"),
        "dead-letter-routing-key" => (string, "is not a valid dead letter routing key"),
        "dead-letter-strategy" => (
            one_of(&["at-most-once", "at-least-once"]),
            "is not a valid dead letter strategy",
        ),
        "message-ttl" => (int_at_least(0), "is not a valid message TTL"),
        "expires" => (int_at_least(1), "is not a valid queue expiry"),
        "max-length" => (int_at_least(0), "is not a valid maximum length"),
        "max-length-bytes" => (int_at_least(0), "is not a valid maximum length in bytes"),
        // RabbitMQ's text for both says "memory in bytes".
        "max-in-memory-length" | "max-in-memory-bytes" => {
            (int_at_least(0), "is not a valid maximum memory in bytes")
        }
        "queue-mode" => (
            one_of(&["default", "lazy"]),
            "is not a valid queue-mode value",
        ),
        "queue-version" => (
            matches!(value.as_i64(), Some(1 | 2)),
            "is not a valid queue-version value",
        ),
        "overflow" => (
            one_of(&["drop-head", "reject-publish", "reject-publish-dlx"]),
            "is not a valid overflow value",
        ),
        "delivery-limit" => (int_at_least(0), "is not a valid delivery limit"),
        "consumer-timeout" => (int_at_least(0), "is not a valid consumer timeout"),
        "max-age" => (
            value.as_str().is_some_and(|s| max_age_ms(s).is_some()),
            "is not a valid max age",
        ),
        "queue-leader-locator" => (
            one_of(&["client-local", "balanced", "random", "least-leaders"]),
            "is not a valid queue leader locator value",
        ),
        "initial-cluster-size" => (int_at_least(0), "is not a valid cluster size"),
        "stream-max-segment-size-bytes" => (
            value.as_u64().is_some_and(|n| n <= MAX_STREAM_SEGMENT_SIZE),
            "is not a valid segment size",
        ),
        "queue-master-locator" => (
            one_of(&["min-masters", "client-local", "random"]),
            "invalid queue-master-locator value",
        ),
        _ => return Ok(None),
    };
    if ok {
        Ok(Some(()))
    } else {
        Err(format!("{} {what}", erlang_term(value)))
    }
}

/// The mirroring keys, checked as `rabbit_mirror_queue_misc:validate_policy`
/// does (antre does not mirror: they are kept and shown, nothing more).
fn validate_ha(map: &Map<String, Value>) -> Result<(), String> {
    let get = |k: &str| map.get(k);
    let Some(mode) = get("ha-mode") else {
        return Err(
            "ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown"
                .into(),
        );
    };
    let shown = |v: Option<&Value>| v.map_or_else(|| "none".to_owned(), erlang_term);
    let params = get("ha-params");
    match mode.as_str() {
        Some("all") => {
            if params.is_some() {
                return Err("ha-mode=\"all\" does not take parameters".into());
            }
        }
        Some("exactly") => {
            if params.and_then(Value::as_i64).is_none_or(|n| n <= 0) {
                return Err(format!(
                    "ha-mode=\"exactly\" takes an integer, {} given",
                    shown(params)
                ));
            }
        }
        Some("nodes") => match params {
            Some(Value::Array(nodes)) if nodes.is_empty() => {
                return Err("ha-mode=\"nodes\" list must be non-empty".into())
            }
            Some(Value::Array(nodes)) => {
                let invalid: Vec<String> = nodes
                    .iter()
                    .filter(|n| !n.is_string())
                    .map(erlang_term)
                    .collect();
                if !invalid.is_empty() {
                    return Err(format!(
                        "ha-mode=\"nodes\" takes a list of strings, [{}] was not a string",
                        invalid.join(",")
                    ));
                }
            }
            other => {
                return Err(format!(
                    "ha-mode=\"nodes\" takes a list, {} given",
                    shown(other)
                ))
            }
        },
        _ => {
            return Err(format!(
                "{} is not a valid ha-mode value",
                erlang_term(mode)
            ))
        }
    }
    let one_of = |v: Option<&Value>, options: &[&str]| {
        v.is_none_or(|v| v.as_str().is_some_and(|s| options.contains(&s)))
    };
    if !one_of(get("ha-sync-mode"), &["automatic", "manual"]) {
        return Err(format!(
            "ha-sync-mode must be \"manual\" or \"automatic\", got {}",
            shown(get("ha-sync-mode"))
        ));
    }
    let batch = get("ha-sync-batch-size");
    if batch.is_some_and(|b| b.as_i64().is_none_or(|n| n <= 0)) {
        return Err(format!(
            "ha-sync-batch-size takes an integer greater than 0, {} given",
            shown(batch)
        ));
    }
    for key in ["ha-promote-on-shutdown", "ha-promote-on-failure"] {
        if !one_of(get(key), &["always", "when-synced"]) {
            return Err(format!(
                "{key} must be \"always\" or \"when-synced\", got {}",
                shown(get(key))
            ));
        }
    }
    Ok(())
}

/// A `max-age` such as `7D` in milliseconds (RabbitMQ's `check_max_age`:
/// a positive number and one of the units Y, M, D, h, m, s).
pub fn max_age_ms(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let day = 24 * 3_600_000;
    let ms = match unit {
        "Y" => 365 * day,
        "M" => 30 * day,
        "D" => day,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1000,
        _ => return None,
    };
    n.checked_mul(ms)
}

/// A JSON value as Erlang's `~p` prints the term RabbitMQ decoded it to,
/// for error texts: `<<"text">>`, `[1,2]`, `#{<<"k">> => v}`.
pub fn erlang_term(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => {
                let s = format!("{f:?}");
                if s.contains('.') || s.contains('e') {
                    s
                } else {
                    format!("{s}.0")
                }
            }
            _ => n.to_string(),
        },
        Value::String(s) => {
            if s.bytes().all(|b| (32..127).contains(&b)) {
                format!("<<\"{}\">>", s.replace('\\', "\\\\").replace('"', "\\\""))
            } else {
                let bytes: Vec<String> = s.bytes().map(|b| b.to_string()).collect();
                format!("<<{}>>", bytes.join(","))
            }
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(erlang_term).collect();
            format!("[{}]", items.join(","))
        }
        Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{} => {}",
                        erlang_term(&Value::String(k.clone())),
                        erlang_term(v)
                    )
                })
                .collect();
            format!("#{{{}}}", items.join(","))
        }
    }
}

/// The policies and operator policies of one vhost.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: BTreeMap<String, Arc<Policy>>,
    operator: BTreeMap<String, Arc<Policy>>,
}

impl PolicySet {
    fn map(&self, kind: PolicyKind) -> &BTreeMap<String, Arc<Policy>> {
        match kind {
            PolicyKind::Policy => &self.policies,
            PolicyKind::Operator => &self.operator,
        }
    }

    fn map_mut(&mut self, kind: PolicyKind) -> &mut BTreeMap<String, Arc<Policy>> {
        match kind {
            PolicyKind::Policy => &mut self.policies,
            PolicyKind::Operator => &mut self.operator,
        }
    }

    /// The policy of that kind and name.
    pub fn get(&self, kind: PolicyKind, name: &str) -> Option<&Arc<Policy>> {
        self.map(kind).get(name)
    }

    /// The policies of a kind in RabbitMQ's listing order: by priority,
    /// lowest first, then by name.
    pub fn list(&self, kind: PolicyKind) -> Vec<Arc<Policy>> {
        let mut all: Vec<Arc<Policy>> = self.map(kind).values().cloned().collect();
        all.sort_by(|a, b| {
            a.priority_value()
                .partial_cmp(&b.priority_value())
                .unwrap_or(Ordering::Equal)
                .then_with(|| a.name.cmp(&b.name))
        });
        all
    }

    /// Whether there is no policy of either kind.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.operator.is_empty()
    }

    /// Adds or replaces a policy; returns the one it replaced.
    pub fn insert(&mut self, policy: Policy) -> Option<Arc<Policy>> {
        self.map_mut(policy.kind)
            .insert(policy.name.clone(), Arc::new(policy))
    }

    /// Removes a policy; returns it.
    pub fn remove(&mut self, kind: PolicyKind, name: &str) -> Option<Arc<Policy>> {
        self.map_mut(kind).remove(name)
    }

    /// The best of a kind's policies that `applies`: the highest priority,
    /// then the name that sorts first.
    fn best(&self, kind: PolicyKind, applies: impl Fn(&Policy) -> bool) -> Option<Arc<Policy>> {
        let mut best: Option<&Arc<Policy>> = None;
        // Names ascend, so on equal priority the first one found stays.
        for p in self.map(kind).values() {
            if !applies(p) {
                continue;
            }
            if best.is_none_or(|b| p.priority_value() > b.priority_value()) {
                best = Some(p);
            }
        }
        best.cloned()
    }

    /// The policies that apply to the queue `name` of type `kind`.
    pub fn select_queue(&self, name: &str, kind: QueueKind) -> AppliedPolicy {
        let applies = |p: &Policy| p.applies_to_queue(name, kind);
        AppliedPolicy {
            policy: self.best(PolicyKind::Policy, applies),
            operator: self.best(PolicyKind::Operator, applies),
        }
    }

    /// The policies that apply to the exchange `name`.
    pub fn select_exchange(&self, name: &str) -> AppliedPolicy {
        let applies = |p: &Policy| p.applies_to_exchange(name);
        AppliedPolicy {
            policy: self.best(PolicyKind::Policy, applies),
            operator: self.best(PolicyKind::Operator, applies),
        }
    }
}

/// The policy and the operator policy that apply to a queue or exchange.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppliedPolicy {
    /// The policy, if one applies.
    pub policy: Option<Arc<Policy>>,
    /// The operator policy, if one applies.
    pub operator: Option<Arc<Policy>>,
}

impl AppliedPolicy {
    /// Whether neither applies.
    pub fn is_none(&self) -> bool {
        self.policy.is_none() && self.operator.is_none()
    }

    /// The policy's name.
    pub fn policy_name(&self) -> Option<&str> {
        self.policy.as_deref().map(|p| p.name.as_str())
    }

    /// The operator policy's name.
    pub fn operator_name(&self) -> Option<&str> {
        self.operator.as_deref().map(|p| p.name.as_str())
    }

    /// The merged definition (RabbitMQ's `effective_policy_definition`):
    /// every key of either; for a key in both, the smaller value for the
    /// numeric limits, otherwise the operator policy's.
    pub fn definition(&self) -> Map<String, Value> {
        let mut merged = self
            .policy
            .as_ref()
            .map(|p| p.definition.clone())
            .unwrap_or_default();
        if let Some(op) = &self.operator {
            for (key, op_value) in &op.definition {
                let value = match merged.get(key) {
                    Some(mine) if MIN_MERGED.contains(&key.as_str()) => {
                        match (mine.as_u64(), op_value.as_u64()) {
                            (Some(a), Some(b)) if a <= b => mine.clone(),
                            _ => op_value.clone(),
                        }
                    }
                    _ => op_value.clone(),
                };
                merged.insert(key.clone(), value);
            }
        }
        merged
    }

    /// The exchange's alternate exchange from the policy (an
    /// `alternate-exchange` argument takes precedence; see the router).
    pub fn alternate_exchange(&self) -> Option<String> {
        self.policy
            .as_ref()?
            .definition
            .get("alternate-exchange")?
            .as_str()
            .map(str::to_owned)
    }

    /// What a queue does under these policies: its declared arguments
    /// (`declared`, already parsed as `args`) resolved against the merged
    /// definition as RabbitMQ resolves them: the smaller value for
    /// `message-ttl`, `expires`, `max-length`, `max-length-bytes`,
    /// `delivery-limit` and `consumer-timeout`; the argument, if given, for
    /// `dead-letter-exchange`, `dead-letter-routing-key` and `overflow`.
    pub fn queue_args(&self, declared: &FieldTable, mut args: QueueArgs) -> QueueArgs {
        if self.is_none() {
            return args;
        }
        let def = self.definition();
        let num = |key: &str| def.get(key).and_then(Value::as_u64);
        let text = |key: &str| def.get(key).and_then(Value::as_str).map(str::to_owned);
        let min = |arg: Option<u64>, policy: Option<u64>| match (arg, policy) {
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        };
        args.message_ttl = min(args.message_ttl, num("message-ttl"));
        args.expires = min(args.expires, num("expires").filter(|e| *e >= 1));
        args.max_length = min(args.max_length, num("max-length"));
        args.max_length_bytes = min(args.max_length_bytes, num("max-length-bytes"));
        args.delivery_limit = min(args.delivery_limit, num("delivery-limit"));
        args.consumer_timeout = min(args.consumer_timeout, num("consumer-timeout"));
        if args.dead_letter_exchange.is_none() {
            args.dead_letter_exchange = text("dead-letter-exchange");
        }
        if args.dead_letter_exchange.is_some() && args.dead_letter_routing_key.is_none() {
            args.dead_letter_routing_key = text("dead-letter-routing-key");
        }
        if declared.get("x-dead-letter-strategy").is_none() && args.kind == QueueKind::Quorum {
            args.dead_letter_strategy = match text("dead-letter-strategy").as_deref() {
                Some("at-least-once") => DeadLetterStrategy::AtLeastOnce,
                Some("at-most-once") => DeadLetterStrategy::AtMostOnce,
                _ => args.dead_letter_strategy,
            };
        }
        if declared.get("x-overflow").is_none() {
            args.overflow = match text("overflow").as_deref() {
                Some("reject-publish") => Overflow::RejectPublish,
                // Quorum queues keep drop-head, as RabbitMQ 3.10 does.
                Some("reject-publish-dlx") if args.kind != QueueKind::Quorum => {
                    Overflow::RejectPublishDlx
                }
                _ => args.overflow,
            };
        }
        args
    }
}

#[cfg(test)]
mod tests;
