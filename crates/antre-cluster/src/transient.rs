//! What the metadata log declared that a broker keeps in memory only:
//! transient (non-durable) exchanges and queues, the bindings that involve
//! them, the bindings of exclusive queues (which name the queue's node)
//! and which node holds each client-named exclusive queue. The broker writes only durable definitions to disk, and a node
//! does not apply again the entries it applied before a restart: without
//! this record, a node that restarted (a rolling restart) lacked every
//! transient exchange and queue the others still had (pika's tutorials
//! declare theirs transient), and publishes through it were refused or
//! unroutable. RabbitMQ keeps transient entities as long as one node of
//! the cluster runs; so does this record, in each node's `applied.json`
//! and in the metadata snapshots, until the entity is deleted.
//!
//! A transient queue lives on its owner: when the owner restarts, its
//! queue (and its messages) are gone, as in RabbitMQ, so the owner does
//! not declare it again (the others keep forwarding to it and are told it
//! is gone, until a client declares it again).

use antre_broker::cluster::MetaCommand;
use serde::{Deserialize, Serialize};

/// The record (see the module docs), in log order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Transient(Vec<MetaCommand>);

impl Transient {
    /// The record of a snapshot or of `applied.json`.
    pub fn from_commands(commands: Vec<MetaCommand>) -> Transient {
        Transient(commands)
    }

    /// The record, for a snapshot or `applied.json`.
    pub fn commands(&self) -> &[MetaCommand] {
        &self.0
    }

    /// Whether `command` may change the record (the state machine keeps a
    /// copy of those only, for [`Transient::applied`]).
    pub fn concerns(command: &MetaCommand) -> bool {
        matches!(
            command,
            MetaCommand::DeclareExchange { durable: false, .. }
                | MetaCommand::DeclareQueue { .. }
                | MetaCommand::Binding { .. }
                | MetaCommand::ExclusiveQueue { .. }
                | MetaCommand::DeleteExchange { .. }
                | MetaCommand::DeleteQueue { .. }
                | MetaCommand::DeleteVhost { .. }
        )
    }

    /// Takes in a change this node applied: `ok` if the broker took it,
    /// `new_queue` if it declared a queue the metadata did not have.
    pub fn applied(&mut self, command: &MetaCommand, ok: bool, new_queue: bool) {
        use MetaCommand as C;
        match command {
            // Recorded whatever this broker made of it (it may not know the
            // exchange yet, just started): the same on every node.
            C::Binding { node: Some(_), .. } => self.binding(command),
            _ if !ok => {}
            C::DeclareExchange {
                vhost,
                name,
                durable: false,
                ..
            } if !self.exchange(vhost, name) => self.0.push(command.clone()),
            C::ExclusiveQueue {
                vhost,
                name,
                node,
                held,
                ..
            } => {
                let previous = self.0.iter().find_map(|c| match c {
                    C::ExclusiveQueue { node: at, .. }
                        if is_exclusive_record(c, vhost, name, None) =>
                    {
                        Some(at.clone())
                    }
                    _ => None,
                });
                // Released, or taken by another node: the bindings to the
                // holder's queue went on every node.
                let gone = if *held {
                    previous.filter(|p| p != node)
                } else {
                    previous.filter(|p| p == node)
                };
                if let Some(holder) = gone {
                    self.0.retain(|c| {
                        !is_exclusive_record(c, vhost, name, None)
                            && !is_binding_to(c, vhost, name, Some(&holder))
                    });
                }
                // Kept without its claim: given back after a restart or a
                // snapshot, the record takes the name whatever held it.
                let record = C::ExclusiveQueue {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    node: node.clone(),
                    held: true,
                    claim: None,
                };
                if *held && !self.0.contains(&record) {
                    self.0.push(record);
                }
            }
            C::DeclareQueue { vhost, name, .. } => {
                // A shared queue took the name of any exclusive one.
                self.0
                    .retain(|c| !is_exclusive_record(c, vhost, name, None));
                if matches!(command, C::DeclareQueue { durable: false, .. }) && new_queue {
                    self.0.push(command.clone());
                }
            }
            C::Binding {
                vhost,
                source,
                destination,
                to_exchange,
                ..
            } => {
                let transient_destination = if *to_exchange {
                    self.exchange(vhost, destination)
                } else {
                    self.queue(vhost, destination)
                };
                if self.exchange(vhost, source) || transient_destination {
                    self.binding(command);
                }
            }
            C::DeleteExchange { vhost, name, .. } => self.0.retain(|c| match c {
                C::DeclareExchange {
                    vhost: v, name: n, ..
                } => !(v == vhost && n == name),
                C::Binding {
                    vhost: v,
                    source,
                    destination,
                    to_exchange,
                    ..
                } => !(v == vhost && (source == name || (*to_exchange && destination == name))),
                _ => true,
            }),
            C::DeleteQueue { vhost, name, .. } => self.0.retain(|c| match c {
                C::DeclareQueue {
                    vhost: v, name: n, ..
                } => !(v == vhost && n == name),
                C::Binding { .. } => !is_binding_to(c, vhost, name, None),
                C::ExclusiveQueue { .. } => !is_exclusive_record(c, vhost, name, None),
                _ => true,
            }),
            C::DeleteVhost { name } => self.0.retain(|c| vhost_of(c) != Some(name.as_str())),
            _ => {}
        }
    }

    /// What node `me` gives its broker again after a restart or a snapshot:
    /// all but its own transient queues (gone with the restart) and the
    /// bindings to them and to its own exclusive queues. Its own exclusive
    /// queue names stay recorded, as on every other node, until their
    /// releases ([`Transient::released_by_restart`]) are applied: a claim
    /// on a name must be judged alike on every node.
    pub fn to_restore<'a>(&'a self, me: &'a str) -> impl Iterator<Item = &'a MetaCommand> + 'a {
        self.0.iter().filter(move |c| match c {
            MetaCommand::DeclareQueue { owner, .. } => owner != me,
            MetaCommand::ExclusiveQueue { .. } => true,
            MetaCommand::Binding { node: Some(n), .. } => n != me,
            MetaCommand::Binding {
                vhost,
                destination,
                to_exchange: false,
                ..
            } => !self.0.iter().any(|d| {
                matches!(d, MetaCommand::DeclareQueue { vhost: v, name, owner, .. }
                    if v == vhost && name == destination && owner == me)
            }),
            _ => true,
        })
    }

    /// The releases of the client-named exclusive queues node `me` held
    /// before it restarted (they went with the restart): proposed by `me`
    /// so that no node keeps their names or routes to them.
    pub fn released_by_restart(&self, me: &str) -> Vec<MetaCommand> {
        self.0
            .iter()
            .filter_map(|c| match c {
                MetaCommand::ExclusiveQueue {
                    vhost,
                    name,
                    node,
                    held: true,
                    ..
                } if node == me => Some(MetaCommand::ExclusiveQueue {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    node: node.clone(),
                    held: false,
                    claim: None,
                }),
                _ => None,
            })
            .collect()
    }

    /// Records a bind, or forgets what an unbind undoes.
    fn binding(&mut self, command: &MetaCommand) {
        let mut bind = command.clone();
        let MetaCommand::Binding { unbind, .. } = &mut bind else {
            return;
        };
        let undo = std::mem::replace(unbind, false);
        self.0.retain(|c| *c != bind);
        if !undo {
            self.0.push(bind);
        }
    }

    fn exchange(&self, vhost: &str, name: &str) -> bool {
        self.0.iter().any(|c| {
            matches!(c, MetaCommand::DeclareExchange { vhost: v, name: n, .. } if v == vhost && n == name)
        })
    }

    fn queue(&self, vhost: &str, name: &str) -> bool {
        self.0.iter().any(|c| {
            matches!(c, MetaCommand::DeclareQueue { vhost: v, name: n, .. } if v == vhost && n == name)
        })
    }
}

fn vhost_of(command: &MetaCommand) -> Option<&str> {
    match command {
        MetaCommand::DeclareExchange { vhost, .. }
        | MetaCommand::DeclareQueue { vhost, .. }
        | MetaCommand::ExclusiveQueue { vhost, .. }
        | MetaCommand::Binding { vhost, .. } => Some(vhost),
        _ => None,
    }
}

/// Whether `c` records the exclusive queue `name` of `vhost` (held by
/// `node`, if given).
fn is_exclusive_record(c: &MetaCommand, vhost: &str, name: &str, node: Option<&str>) -> bool {
    matches!(c, MetaCommand::ExclusiveQueue { vhost: v, name: n, node: at, .. }
        if v == vhost && n == name && node.is_none_or(|node| at == node))
}

/// Whether `c` is a binding to the queue `name` of `vhost` (naming `node`
/// as the queue's, if given).
fn is_binding_to(c: &MetaCommand, vhost: &str, name: &str, node: Option<&str>) -> bool {
    matches!(c, MetaCommand::Binding { vhost: v, destination, to_exchange: false, node: at, .. }
        if v == vhost && destination == name && node.is_none_or(|node| at.as_deref() == Some(node)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use antre_broker::cluster::WireTable;

    fn exchange(name: &str, durable: bool) -> MetaCommand {
        MetaCommand::DeclareExchange {
            vhost: "/".into(),
            name: name.into(),
            kind: "fanout".into(),
            durable,
            auto_delete: false,
            internal: false,
            arguments: WireTable::default(),
        }
    }

    fn queue(name: &str, durable: bool, owner: &str) -> MetaCommand {
        MetaCommand::DeclareQueue {
            vhost: "/".into(),
            name: name.into(),
            durable,
            auto_delete: false,
            arguments: WireTable::default(),
            owner: owner.into(),
        }
    }

    fn bind(unbind: bool, source: &str, queue: &str, node: Option<&str>) -> MetaCommand {
        let b = MetaCommand::binding(
            unbind,
            "/",
            source.into(),
            antre_broker::exchange::Destination::Queue(queue.into()),
            String::new(),
            Default::default(),
        );
        match node {
            Some(n) => b.on_node(n),
            None => b,
        }
    }

    #[test]
    fn transient_entities_and_their_bindings_are_kept_until_deleted() {
        let mut t = Transient::default();
        for (c, new) in [
            (exchange("logs", false), false),
            (exchange("orders", true), false),
            (queue("hello", false, "n1"), true),
            (queue("hello", false, "n2"), false),
            (queue("durable", true, "n1"), true),
            (bind(false, "logs", "durable", None), false),
            (bind(false, "orders", "hello", None), false),
            (bind(false, "orders", "durable", None), false),
        ] {
            t.applied(&c, true, new);
        }
        // The durable ones are the definitions' business; a redeclare
        // (another owner) changes nothing.
        assert_eq!(
            t.commands(),
            [
                exchange("logs", false),
                queue("hello", false, "n1"),
                bind(false, "logs", "durable", None),
                bind(false, "orders", "hello", None),
            ]
        );
        // n1 owned "hello": gone with its restart, and its binding too.
        let on_n1: Vec<_> = t.to_restore("n1").cloned().collect();
        assert_eq!(
            on_n1,
            [
                exchange("logs", false),
                bind(false, "logs", "durable", None)
            ]
        );
        assert_eq!(t.to_restore("n2").count(), 4);
        // Deletions take their bindings along.
        t.applied(
            &MetaCommand::DeleteQueue {
                vhost: "/".into(),
                name: "hello".into(),
                if_unused: false,
                if_empty: false,
            },
            true,
            false,
        );
        t.applied(
            &MetaCommand::DeleteExchange {
                vhost: "/".into(),
                name: "logs".into(),
                if_unused: false,
            },
            true,
            false,
        );
        assert!(t.commands().is_empty(), "{:?}", t.commands());
    }

    #[test]
    fn exclusive_queues_bindings_are_kept_until_unbound_or_deleted() {
        let mut t = Transient::default();
        t.applied(&exchange("orders", true), true, false);
        // Recorded even where the broker refused it.
        t.applied(
            &bind(false, "orders", "amq.gen-x", Some("n2")),
            false,
            false,
        );
        t.applied(
            &bind(false, "orders", "spring.gen-y", Some("n3")),
            true,
            false,
        );
        assert_eq!(t.commands().len(), 2);
        assert_eq!(t.to_restore("n2").count(), 1);
        t.applied(&bind(true, "orders", "amq.gen-x", Some("n2")), true, false);
        assert_eq!(
            t.commands(),
            [bind(false, "orders", "spring.gen-y", Some("n3"))]
        );
        t.applied(&MetaCommand::DeleteVhost { name: "/".into() }, true, false);
        assert!(t.commands().is_empty());
    }

    fn held(name: &str, node: &str, held: bool) -> MetaCommand {
        MetaCommand::ExclusiveQueue {
            vhost: "/".into(),
            name: name.into(),
            node: node.into(),
            held,
            claim: None,
        }
    }

    #[test]
    fn exclusive_queue_names_are_kept_until_their_holder_releases_them() {
        let mut t = Transient::default();
        t.applied(&exchange("orders", true), true, false);
        // A declare's claim is not kept: the record takes the name when it
        // is given back.
        let mut claimed = held("replies", "n2", true);
        if let MetaCommand::ExclusiveQueue { claim, .. } = &mut claimed {
            *claim = Some(antre_broker::cluster::ExclusiveClaim { from: None });
        }
        t.applied(&claimed, true, false);
        t.applied(&bind(false, "orders", "replies", Some("n2")), true, false);
        // Refused (a shared queue had the name): not recorded.
        t.applied(&held("work", "n3", true), false, false);
        assert_eq!(
            t.commands(),
            [
                held("replies", "n2", true),
                bind(false, "orders", "replies", Some("n2"))
            ]
        );
        // n2 restarted: its names stay recorded, as on every node, until
        // n2 releases them; its queue is not declared again, nor bound.
        let restored: Vec<_> = t.to_restore("n2").cloned().collect();
        assert_eq!(restored, [held("replies", "n2", true)]);
        assert_eq!(t.to_restore("n1").count(), 2);
        assert_eq!(t.released_by_restart("n2"), [held("replies", "n2", false)]);
        assert!(t.released_by_restart("n1").is_empty());
        // Taken by another node (n2 was down): n2's bindings go; a late
        // release by n2 changes nothing.
        t.applied(&held("replies", "n3", true), true, false);
        t.applied(&held("replies", "n3", true), true, false);
        t.applied(&held("replies", "n2", false), true, false);
        assert_eq!(t.commands(), [held("replies", "n3", true)]);
        // The holder's release takes its bindings along.
        t.applied(&bind(false, "orders", "replies", Some("n3")), true, false);
        t.applied(&held("replies", "n3", false), true, false);
        assert!(t.commands().is_empty(), "{:?}", t.commands());
        // A shared queue takes the name of an exclusive one.
        t.applied(&held("jobs", "n1", true), true, false);
        t.applied(&queue("jobs", true, "n2"), true, true);
        assert!(t.commands().is_empty(), "{:?}", t.commands());
    }
}
