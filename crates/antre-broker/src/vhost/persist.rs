//! A vhost's durable definitions on disk: what survives a restart (durable
//! exchanges, durable non-exclusive queues, bindings between durable ends,
//! as RabbitMQ persists them), saved after each change to them and read
//! back at start-up.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::clock::Clock;
use crate::definitions::{
    json_to_table, table_to_json, BindingDef, ExchangeDef, QueueDef, VhostDefinitions,
};
use crate::error::BrokerError;
use crate::exchange::{Binding, Destination};
use crate::queue::QueueOptions;

use super::storage::{build_exchange, dir_name, remove_orphan_dirs, VhostStorage};
use super::topology::{is_predeclared, Topology};
use super::ExchangeDeclaration;

const DEFINITIONS_FILE: &str = "definitions.json";

/// The definitions file of a persistent vhost.
#[derive(Debug)]
pub(super) struct DefinitionsFile {
    path: PathBuf,
    /// What the file holds, to skip rewrites that change nothing
    /// (declaring an exclusive queue, say).
    saved: Option<VhostDefinitions>,
}

impl DefinitionsFile {
    /// Reads the vhost's definitions and recovers its durable exchanges,
    /// queues (with their messages) and bindings into `topo`.
    pub fn recover(
        storage: &VhostStorage,
        topo: &mut Topology,
        clock: &Arc<dyn Clock>,
    ) -> Result<DefinitionsFile, BrokerError> {
        let name = topo.vhost.clone();
        let path = storage.dir.join(DEFINITIONS_FILE);
        let defs = match antre_store::definitions::read(&path) {
            Ok(Some(raw)) => serde_json::from_slice::<VhostDefinitions>(&raw).map_err(|e| {
                BrokerError::Internal(format!("unreadable definitions of vhost '{name}': {e}"))
            })?,
            Ok(None) => {
                return Ok(DefinitionsFile { path, saved: None });
            }
            Err(e) => {
                return Err(BrokerError::Internal(format!(
                    "reading definitions of vhost '{name}': {e}"
                )))
            }
        };
        let mut kept_exchanges = HashSet::new();
        for x in &defs.exchanges {
            kept_exchanges.insert(dir_name(&x.name));
            let declaration = ExchangeDeclaration {
                name: x.name.clone(),
                kind: x.kind.clone(),
                durable: true,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: json_to_table(&x.arguments),
            };
            let ex = build_exchange(&name, Some(storage), declaration, false)?;
            topo.exchanges.insert(ex.name.clone(), ex);
        }
        remove_orphan_dirs(&storage.dir.join("exchanges"), &kept_exchanges);
        let mut kept_queues = HashSet::new();
        for q in &defs.queues {
            let options = QueueOptions {
                durable: true,
                exclusive_owner: None,
                auto_delete: q.auto_delete,
                arguments: json_to_table(&q.arguments),
            };
            let queue = storage.open_queue(&name, &q.name, options, Arc::clone(clock), false)?;
            kept_queues.insert(dir_name(&q.name));
            topo.insert_queue(queue);
        }
        remove_orphan_dirs(&storage.dir.join("queues"), &kept_queues);
        for b in &defs.bindings {
            let destination = match b.destination_type.as_str() {
                "exchange" => Destination::Exchange(b.destination.clone()),
                _ => Destination::Queue(b.destination.clone()),
            };
            let binding = Binding {
                destination,
                routing_key: b.routing_key.clone(),
                arguments: json_to_table(&b.arguments),
            };
            // A binding whose source is gone was saved by an older version
            // that did not clean up; it has nothing to route.
            let _ = topo.bind(&b.source, binding);
        }
        Ok(DefinitionsFile {
            path,
            saved: Some(durable_definitions(topo)),
        })
    }

    /// Rewrites the file if the durable part of `topo` changed.
    pub fn save(&mut self, topo: &Topology) -> Result<(), BrokerError> {
        let defs = durable_definitions(topo);
        if self.saved.as_ref() == Some(&defs) {
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(&defs)
            .map_err(|e| BrokerError::Internal(format!("encoding definitions: {e}")))?;
        antre_store::definitions::write_atomic(&self.path, &json).map_err(|e| {
            BrokerError::Internal(format!("saving definitions of vhost '{}': {e}", topo.vhost))
        })?;
        self.saved = Some(defs);
        Ok(())
    }
}

/// The durable part of a topology: durable exchanges (not the predeclared
/// ones), durable non-exclusive queues, and bindings whose ends are both
/// durable, as RabbitMQ persists them.
pub(super) fn durable_definitions(topo: &Topology) -> VhostDefinitions {
    let vhost = topo.vhost.as_str();
    let mut defs = VhostDefinitions {
        name: vhost.to_owned(),
        ..Default::default()
    };
    let durable_queue = |name: &str| {
        topo.queues
            .get(name)
            .is_some_and(|q| q.options.durable && q.options.exclusive_owner.is_none())
    };
    let durable_exchange = |name: &str| topo.exchanges.get(name).is_some_and(|e| e.durable);
    for ex in topo.exchanges.values() {
        if !ex.durable {
            continue;
        }
        if !is_predeclared(&ex.name) {
            defs.exchanges.push(ExchangeDef {
                name: ex.name.clone(),
                vhost: vhost.to_owned(),
                kind: ex.type_name.clone(),
                durable: true,
                auto_delete: ex.auto_delete,
                internal: ex.internal,
                arguments: table_to_json(&ex.arguments),
            });
        }
        for b in &ex.bindings {
            let (destination, kind, durable) = match &b.destination {
                Destination::Queue(q) => (q, "queue", durable_queue(q)),
                Destination::Exchange(e) => (e, "exchange", durable_exchange(e)),
            };
            if durable {
                defs.bindings.push(BindingDef {
                    source: ex.name.clone(),
                    vhost: vhost.to_owned(),
                    destination: destination.clone(),
                    destination_type: kind.to_owned(),
                    routing_key: b.routing_key.clone(),
                    arguments: table_to_json(&b.arguments),
                });
            }
        }
    }
    for q in topo.queues.values() {
        if durable_queue(&q.name) {
            defs.queues.push(QueueDef {
                name: q.name.clone(),
                vhost: vhost.to_owned(),
                durable: true,
                auto_delete: q.options.auto_delete,
                arguments: table_to_json(&q.options.arguments),
            });
        }
    }
    // A stable order, so unchanged topology compares equal and files diff well.
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
