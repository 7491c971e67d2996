//! What the definitions log records (one change to one definition), the
//! durable state those changes build, and the snapshot file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::definitions::{
    table_to_json, BindingDef, ExchangeDef, PolicyDef, QueueDef, VhostDefinitions,
};
use crate::exchange::{Binding, Destination, Exchange};
use crate::policy::PolicyKind;
use crate::queue::Queue;
use crate::stream::Stream;

use crate::vhost::topology::{is_predeclared, Topology};

/// One change to durable definitions, as the log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(in crate::vhost) enum Change {
    /// A durable exchange was declared.
    PutExchange(ExchangeDef),
    /// A durable exchange was deleted.
    DeleteExchange {
        /// Its name.
        name: String,
    },
    /// A durable queue was declared.
    PutQueue(QueueDef),
    /// A durable queue was deleted.
    DeleteQueue {
        /// Its name.
        name: String,
    },
    /// A binding between durable ends was added.
    PutBinding(BindingDef),
    /// A binding between durable ends was removed.
    DeleteBinding(BindingDef),
    /// A policy was set (since data format 4).
    PutPolicy(PolicyDef),
    /// A policy was deleted.
    DeletePolicy {
        /// Its name.
        name: String,
    },
    /// An operator policy was set (since data format 4).
    PutOperatorPolicy(PolicyDef),
    /// An operator policy was deleted.
    DeleteOperatorPolicy {
        /// Its name.
        name: String,
    },
}

impl Change {
    pub(in crate::vhost) fn put_exchange(vhost: &str, ex: &Exchange) -> Change {
        Change::PutExchange(exchange_def(vhost, ex))
    }

    pub(in crate::vhost) fn put_queue(vhost: &str, q: &Queue) -> Change {
        Change::PutQueue(queue_def(vhost, q))
    }

    /// A stream is saved as a queue whose arguments say `x-queue-type:
    /// stream`, as RabbitMQ's definitions have it.
    pub(in crate::vhost) fn put_stream(vhost: &str, s: &Stream) -> Change {
        Change::PutQueue(stream_def(vhost, s))
    }

    pub(in crate::vhost) fn put_binding(vhost: &str, source: &str, b: &Binding) -> Change {
        Change::PutBinding(binding_def(vhost, source, b))
    }

    pub(in crate::vhost) fn delete_binding(vhost: &str, source: &str, b: &Binding) -> Change {
        Change::DeleteBinding(binding_def(vhost, source, b))
    }

    pub(in crate::vhost) fn put_policy(kind: PolicyKind, def: PolicyDef) -> Change {
        match kind {
            PolicyKind::Policy => Change::PutPolicy(def),
            PolicyKind::Operator => Change::PutOperatorPolicy(def),
        }
    }

    pub(in crate::vhost) fn delete_policy(kind: PolicyKind, name: &str) -> Change {
        let name = name.to_owned();
        match kind {
            PolicyKind::Policy => Change::DeletePolicy { name },
            PolicyKind::Operator => Change::DeleteOperatorPolicy { name },
        }
    }
}

fn exchange_def(vhost: &str, ex: &Exchange) -> ExchangeDef {
    ExchangeDef {
        name: ex.name.clone(),
        vhost: vhost.to_owned(),
        kind: ex.type_name.clone(),
        durable: true,
        auto_delete: ex.auto_delete,
        internal: ex.internal,
        arguments: table_to_json(&ex.arguments),
    }
}

fn queue_def(vhost: &str, q: &Queue) -> QueueDef {
    QueueDef {
        name: q.name.clone(),
        vhost: vhost.to_owned(),
        durable: true,
        auto_delete: q.options.auto_delete,
        arguments: table_to_json(&q.options.arguments),
    }
}

fn stream_def(vhost: &str, s: &Stream) -> QueueDef {
    QueueDef {
        name: s.name.clone(),
        vhost: vhost.to_owned(),
        durable: true,
        auto_delete: false,
        arguments: table_to_json(&s.arguments),
    }
}

fn binding_def(vhost: &str, source: &str, b: &Binding) -> BindingDef {
    let (destination, kind) = match &b.destination {
        Destination::Queue(q) => (q.clone(), "queue"),
        Destination::Exchange(e) => (e.clone(), "exchange"),
    };
    BindingDef {
        source: source.to_owned(),
        vhost: vhost.to_owned(),
        destination,
        destination_type: kind.to_owned(),
        routing_key: b.routing_key.clone(),
        arguments: table_to_json(&b.arguments),
    }
}

/// A binding's identity in the durable state: source, destination, key and
/// arguments (serde_json keeps object keys sorted, so equal arguments
/// give equal text).
fn binding_key(b: &BindingDef) -> String {
    serde_json::json!([
        b.source,
        b.destination_type,
        b.destination,
        b.routing_key,
        b.arguments
    ])
    .to_string()
}

/// The snapshot file: the definitions, and the first log generation they
/// do not include (absent in files written before there were generations).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Snapshot {
    #[serde(flatten)]
    pub(super) definitions: VhostDefinitions,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) log_generation: u64,
}

fn is_zero(g: &u64) -> bool {
    *g == 0
}

/// Durable definitions by key, while recovering.
#[derive(Debug, Default)]
pub(super) struct DurableState {
    pub(super) exchanges: BTreeMap<String, ExchangeDef>,
    pub(super) queues: BTreeMap<String, QueueDef>,
    pub(super) bindings: BTreeMap<String, BindingDef>,
    pub(super) policies: BTreeMap<String, PolicyDef>,
    pub(super) operator_policies: BTreeMap<String, PolicyDef>,
}

impl DurableState {
    pub(super) fn from_snapshot(defs: VhostDefinitions) -> DurableState {
        let mut state = DurableState::default();
        for x in defs.exchanges {
            state.exchanges.insert(x.name.clone(), x);
        }
        for q in defs.queues {
            state.queues.insert(q.name.clone(), q);
        }
        for b in defs.bindings {
            state.bindings.insert(binding_key(&b), b);
        }
        for p in defs.policies {
            state.policies.insert(p.name.clone(), p);
        }
        for p in defs.operator_policies {
            state.operator_policies.insert(p.name.clone(), p);
        }
        state
    }

    /// As the snapshot file holds them, sorted like an export.
    pub(super) fn to_definitions(&self, vhost: &str) -> VhostDefinitions {
        let mut bindings: Vec<BindingDef> = self.bindings.values().cloned().collect();
        bindings.sort_by(|a, b| {
            (&a.source, &a.destination, &a.routing_key).cmp(&(
                &b.source,
                &b.destination,
                &b.routing_key,
            ))
        });
        VhostDefinitions {
            name: vhost.to_owned(),
            exchanges: self.exchanges.values().cloned().collect(),
            queues: self.queues.values().cloned().collect(),
            bindings,
            policies: self.policies.values().cloned().collect(),
            operator_policies: self.operator_policies.values().cloned().collect(),
        }
    }

    pub(super) fn apply(&mut self, change: Change) {
        match change {
            Change::PutExchange(x) => {
                self.exchanges.insert(x.name.clone(), x);
            }
            Change::DeleteExchange { name } => {
                self.exchanges.remove(&name);
            }
            Change::PutQueue(q) => {
                self.queues.insert(q.name.clone(), q);
            }
            Change::DeleteQueue { name } => {
                self.queues.remove(&name);
            }
            Change::PutBinding(b) => {
                self.bindings.insert(binding_key(&b), b);
            }
            Change::DeleteBinding(b) => {
                self.bindings.remove(&binding_key(&b));
            }
            Change::PutPolicy(p) => {
                self.policies.insert(p.name.clone(), p);
            }
            Change::DeletePolicy { name } => {
                self.policies.remove(&name);
            }
            Change::PutOperatorPolicy(p) => {
                self.operator_policies.insert(p.name.clone(), p);
            }
            Change::DeleteOperatorPolicy { name } => {
                self.operator_policies.remove(&name);
            }
        }
    }
}

/// The durable part of a topology: durable exchanges (not the predeclared
/// ones), durable non-exclusive queues, and bindings whose ends are both
/// durable, as RabbitMQ persists them; sorted, so files diff well.
pub(in crate::vhost) fn durable_definitions(topo: &Topology) -> VhostDefinitions {
    let vhost = topo.vhost.as_str();
    let mut defs = VhostDefinitions {
        name: vhost.to_owned(),
        ..Default::default()
    };
    let durable_queue = |name: &str| {
        topo.streams.contains_key(name)
            || topo
                .queues
                .get(name)
                .is_some_and(|q| q.options.durable && q.options.exclusive_owner.is_none())
    };
    let durable_exchange = |name: &str| topo.exchanges.get(name).is_some_and(|e| e.durable);
    for ex in topo.exchanges.values() {
        if !ex.durable {
            continue;
        }
        if !is_predeclared(&ex.name) {
            defs.exchanges.push(exchange_def(vhost, ex));
        }
        for b in &ex.bindings {
            let durable = match &b.destination {
                Destination::Queue(q) => durable_queue(q),
                Destination::Exchange(e) => durable_exchange(e),
            };
            if durable {
                defs.bindings.push(binding_def(vhost, &ex.name, b));
            }
        }
    }
    for q in topo.queues.values() {
        if durable_queue(&q.name) {
            defs.queues.push(queue_def(vhost, q));
        }
    }
    for s in topo.streams.values() {
        defs.queues.push(stream_def(vhost, s));
    }
    for kind in [PolicyKind::Policy, PolicyKind::Operator] {
        let list = topo
            .policies
            .list(kind)
            .iter()
            .map(|p| p.to_def())
            .collect();
        match kind {
            PolicyKind::Policy => defs.policies = list,
            PolicyKind::Operator => defs.operator_policies = list,
        }
    }
    defs.exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    defs.queues.sort_by(|a, b| a.name.cmp(&b.name));
    defs.bindings.sort_by(|a, b| {
        (&a.source, &a.destination, &a.routing_key).cmp(&(
            &b.source,
            &b.destination,
            &b.routing_key,
        ))
    });
    defs
}
