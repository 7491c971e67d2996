//! Changing a vhost's topology: declaring and deleting exchanges and
//! queues, binding and unbinding, with RabbitMQ's rules and reply texts.
//! Each change that touches durable topology is saved before it returns.

use std::sync::Arc;

use antre_amqp::FieldTable;

use crate::error::{exchange_ref, queue_ref, BrokerError};
use crate::exchange::headers::tables_equal;
use crate::exchange::{Binding, Destination, ExchangeType};
use crate::queue::{ConnectionId, Queue, QueueCounts, QueueOptions};

use super::storage::build_exchange;
use super::topology::check_exclusive;
use super::{generated_name, ExchangeDeclaration, QueueDeclaration, Vhost, REPLY_TO};

fn reserved(name: &str) -> bool {
    name.starts_with("amq.")
}

fn inequivalent(
    what: &str,
    arg: &str,
    vhost: &str,
    name: &str,
    got: impl std::fmt::Display,
    have: impl std::fmt::Display,
) -> BrokerError {
    BrokerError::PreconditionFailed(format!(
        "inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': received '{got}' but current is '{have}'"
    ))
}

/// Declaration arguments that must match on redeclare: RabbitMQ compares the
/// `x-` arguments it knows, ignoring others; antre compares all `x-` ones,
/// by value (a recovered queue's I64 10 equals a client's I32 10).
fn x_arguments(args: &FieldTable) -> FieldTable {
    args.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| (k, v.clone()))
        .collect()
}

impl Vhost {
    /// exchange.declare. `passive` only checks that it exists.
    pub fn declare_exchange(
        &self,
        d: ExchangeDeclaration,
        passive: bool,
    ) -> Result<(), BrokerError> {
        if passive {
            let topo = self.topology.read();
            return match topo.exchanges.contains_key(&d.name) {
                true => Ok(()),
                false => Err(topo.no_exchange(&d.name)),
            };
        }
        if d.name.is_empty() {
            return Err(BrokerError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if reserved(&d.name) {
            return Err(BrokerError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        ExchangeType::parse(&d.kind, &d.arguments)?;
        let mut topo = self.topology.write();
        if let Some(ex) = topo.exchanges.get(&d.name) {
            let err = |arg, got: &dyn std::fmt::Display, have: &dyn std::fmt::Display| {
                inequivalent("exchange", arg, &self.name, &d.name, got, have)
            };
            if ex.type_name != d.kind {
                return Err(err("type", &d.kind, &ex.type_name));
            }
            if ex.durable != d.durable {
                return Err(err("durable", &d.durable, &ex.durable));
            }
            if ex.auto_delete != d.auto_delete {
                return Err(err("auto_delete", &d.auto_delete, &ex.auto_delete));
            }
            if ex.internal != d.internal {
                return Err(err("internal", &d.internal, &ex.internal));
            }
            return Ok(());
        }
        let ex = build_exchange(&self.name, self.storage.as_ref(), d, true)?;
        topo.insert_exchange(ex);
        self.save(&mut topo)
    }

    /// exchange.delete. Deleting a missing exchange succeeds, as in RabbitMQ.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), BrokerError> {
        if name.is_empty() || reserved(name) {
            return Err(BrokerError::AccessRefused(format!(
                "operation not permitted on {}",
                if name.is_empty() {
                    "the default exchange".to_owned()
                } else {
                    format!("exchange '{name}'")
                }
            )));
        }
        let mut topo = self.topology.write();
        let Some(ex) = topo.exchanges.get(name) else {
            return Ok(());
        };
        if if_unused && (!ex.bindings.is_empty() || topo.is_destination(name)) {
            return Err(BrokerError::PreconditionFailed(format!(
                "{} in use",
                exchange_ref(&self.name, name)
            )));
        }
        topo.remove_exchange(name);
        self.save(&mut topo)
    }

    /// queue.declare. Returns the queue (whose name the server picked if the
    /// client sent none) and its counts.
    pub fn declare_queue(
        &self,
        d: QueueDeclaration,
        passive: bool,
        conn: ConnectionId,
    ) -> Result<(Arc<Queue>, QueueCounts), BrokerError> {
        if passive {
            // A passive declare only looks: unlike a redeclare it does not
            // renew the queue's x-expires lease (as in RabbitMQ).
            let q = self.queue(&d.name, conn)?;
            let counts = q.counts();
            return Ok((q, counts));
        }
        let name = if d.name.is_empty() {
            generated_name("amq.gen-")
        } else if reserved(&d.name) {
            return Err(BrokerError::AccessRefused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        } else {
            d.name.clone()
        };
        let mut topo = self.topology.write();
        if let Some(q) = topo.queues.get(&name) {
            check_exclusive(q, conn)?;
            let o = &q.options;
            let err = |arg, got: &dyn std::fmt::Display, have: &dyn std::fmt::Display| {
                inequivalent("queue", arg, &self.name, &name, got, have)
            };
            if o.durable != d.durable {
                return Err(err("durable", &d.durable, &o.durable));
            }
            if o.exclusive_owner.is_some() != d.exclusive {
                return Err(err("exclusive", &d.exclusive, &o.exclusive_owner.is_some()));
            }
            if o.auto_delete != d.auto_delete {
                return Err(err("auto_delete", &d.auto_delete, &o.auto_delete));
            }
            if !tables_equal(&x_arguments(&o.arguments), &x_arguments(&d.arguments)) {
                return Err(BrokerError::PreconditionFailed(format!(
                    "inequivalent arguments for {}",
                    queue_ref(&self.name, &name)
                )));
            }
            let q = Arc::clone(q);
            topo.lifecycle.declared += 1;
            drop(topo);
            q.touch();
            let counts = q.counts();
            return Ok((q, counts));
        }
        let options = QueueOptions {
            durable: d.durable,
            exclusive_owner: d.exclusive.then_some(conn),
            auto_delete: d.auto_delete,
            arguments: d.arguments,
        };
        // Exclusive queues die with their connection, so their messages
        // never need to outlive a restart.
        let q = match &self.storage {
            Some(storage) if d.durable && !d.exclusive => {
                storage.open_queue(&self.name, &name, options, Arc::clone(&self.clock), true)?
            }
            _ => Queue::new(
                &self.name,
                &name,
                options,
                Arc::clone(&self.clock),
                self.paging(),
            )?,
        };
        topo.insert_queue(Arc::clone(&q));
        self.save(&mut topo)?;
        topo.lifecycle.declared += 1;
        topo.lifecycle.created += 1;
        Ok((q, QueueCounts::default()))
    }

    /// A fresh reply queue for direct reply-to: named
    /// `amq.rabbitmq.reply-to.<random>`, transient, exclusive to `conn` and
    /// deleted with its consumer, so replies published to its name through
    /// the default exchange reach exactly one channel, and a reply that
    /// arrives after the requester left is unroutable.
    pub fn declare_reply_queue(&self, conn: ConnectionId) -> Result<Arc<Queue>, BrokerError> {
        let name = generated_name(&format!("{REPLY_TO}."));
        let options = QueueOptions {
            durable: false,
            exclusive_owner: Some(conn),
            auto_delete: true,
            arguments: FieldTable::default(),
        };
        let q = Queue::new(
            &self.name,
            &name,
            options,
            Arc::clone(&self.clock),
            self.paging(),
        )?;
        // Transient and exclusive: nothing to save in the definitions.
        self.topology.write().insert_queue(Arc::clone(&q));
        Ok(q)
    }

    /// queue.delete; returns how many messages it held.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> Result<u32, BrokerError> {
        let mut topo = self.topology.write();
        let Some(q) = topo.queues.get(name) else {
            // RabbitMQ answers delete-ok for a queue that is already gone.
            return Ok(0);
        };
        check_exclusive(q, conn)?;
        let counts = q.counts();
        if if_unused && counts.consumers > 0 {
            return Err(BrokerError::PreconditionFailed(format!(
                "{} in use",
                queue_ref(&self.name, name)
            )));
        }
        if if_empty && counts.ready + counts.unacked > 0 {
            return Err(BrokerError::PreconditionFailed(format!(
                "{} not empty",
                queue_ref(&self.name, name)
            )));
        }
        let n = topo.remove_queue(name).map_or(0, |q| q.delete());
        self.save(&mut topo)?;
        Ok(n)
    }

    /// Removes a queue whose last consumer left, if it is still auto-delete
    /// and consumer-less (a new consumer may have raced in).
    pub fn auto_delete_queue(&self, queue: &Arc<Queue>) {
        self.remove_if_current(queue, |q| q.counts().consumers == 0);
    }

    /// Removes `queue` if it is still the vhost's queue of that name and
    /// `still` holds, saving the definitions.
    pub(super) fn remove_if_current(&self, queue: &Arc<Queue>, still: impl Fn(&Queue) -> bool) {
        let mut topo = self.topology.write();
        let same = topo
            .queues
            .get(&queue.name)
            .is_some_and(|q| Arc::ptr_eq(q, queue));
        if same && still(queue) {
            if let Some(q) = topo.remove_queue(&queue.name) {
                q.delete();
            }
            if let Err(e) = self.save(&mut topo) {
                tracing::error!("{e}");
            }
        }
    }

    /// Deletes the exclusive queues of a closed connection.
    pub fn connection_closed(&self, conn: ConnectionId) {
        let gone = self.topology.write().take_exclusive(conn);
        for q in gone {
            q.delete();
        }
    }

    /// queue.bind / exchange.bind.
    pub fn bind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        conn: ConnectionId,
    ) -> Result<(), BrokerError> {
        let binding = Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments,
        };
        self.change_binding(source, binding, conn, true)
    }

    /// queue.unbind / exchange.unbind. A missing binding is not an error.
    pub fn unbind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
        conn: ConnectionId,
    ) -> Result<(), BrokerError> {
        let binding = Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        };
        self.change_binding(source, binding, conn, false)
    }

    /// Adds or removes a binding once both its ends check out.
    fn change_binding(
        &self,
        source: &str,
        binding: Binding,
        conn: ConnectionId,
        add: bool,
    ) -> Result<(), BrokerError> {
        let mut topo = self.topology.write();
        topo.check_binding_ends(source, &binding.destination, conn)?;
        if add {
            topo.bind(source, binding)?;
        } else {
            topo.unbind(source, &binding);
        }
        self.save(&mut topo)
    }
}
