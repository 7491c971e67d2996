//! A vhost's routing table: its exchanges with their bindings, and its
//! queues by name. Pure data and the rules that walk it; persistence lives
//! in [`super::persist`] and locking in [`super::Vhost`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use antre_amqp::{FieldTable, FieldValue};

use crate::error::{exchange_ref, queue_ref, BrokerError};
use crate::exchange::headers::tables_equal;
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::queue::{ConnectionId, Queue};

/// The exchanges every vhost has from the start.
pub(super) const PREDECLARED: [(&str, ExchangeKind); 7] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
    ("amq.rabbitmq.trace", ExchangeKind::Topic),
];

/// Whether `name` is one of the exchanges every vhost has.
pub(super) fn is_predeclared(name: &str) -> bool {
    PREDECLARED.iter().any(|(n, _)| *n == name)
}

/// The exchange argument naming where unroutable messages go instead.
const ALTERNATE_EXCHANGE: &str = "alternate-exchange";

/// Exchanges and queues of one vhost.
#[derive(Debug)]
pub(super) struct Topology {
    /// The vhost's name, for error texts.
    pub vhost: String,
    pub exchanges: HashMap<String, Exchange>,
    pub queues: HashMap<String, Arc<Queue>>,
}

impl Topology {
    /// A topology with only the predeclared exchanges.
    pub fn new(vhost: &str) -> Topology {
        let exchanges = PREDECLARED
            .iter()
            .map(|(name, kind)| (name.to_string(), Exchange::plain(name, *kind)))
            .collect();
        Topology {
            vhost: vhost.to_owned(),
            exchanges,
            queues: HashMap::new(),
        }
    }

    pub fn no_exchange(&self, name: &str) -> BrokerError {
        BrokerError::NotFound(format!("no {}", exchange_ref(&self.vhost, name)))
    }

    pub fn no_queue(&self, name: &str) -> BrokerError {
        BrokerError::NotFound(format!("no {}", queue_ref(&self.vhost, name)))
    }

    /// The exchange a client may publish to.
    pub fn publishable(&self, exchange: &str) -> Result<&Exchange, BrokerError> {
        let ex = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        if ex.internal {
            return Err(BrokerError::AccessRefused(format!(
                "cannot publish to internal {}",
                exchange_ref(&self.vhost, exchange)
            )));
        }
        Ok(ex)
    }

    /// The queues a message published to `exchange` reaches, each once,
    /// following exchange-to-exchange bindings (cycles are cut) and, from an
    /// exchange where no binding matched, its alternate exchange. Internal
    /// exchanges route too: only clients may not publish to them
    /// ([`Topology::publishable`]).
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> Result<Vec<Arc<Queue>>, BrokerError> {
        if exchange.is_empty() {
            return Ok(self.queues.get(routing_key).cloned().into_iter().collect());
        }
        let ex = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        let mut out: Vec<Arc<Queue>> = Vec::new();
        let mut seen_queues: HashSet<&str> = HashSet::new();
        let mut seen_exchanges: HashSet<&str> = HashSet::from([exchange]);
        let mut pending = vec![ex];
        while let Some(ex) = pending.pop() {
            let mut matched = false;
            for b in &ex.bindings {
                if !ex.matches(b, routing_key, headers) {
                    continue;
                }
                matched = true;
                match &b.destination {
                    Destination::Queue(q) => {
                        if seen_queues.insert(q.as_str()) {
                            if let Some(queue) = self.queues.get(q) {
                                out.push(Arc::clone(queue));
                            }
                        }
                    }
                    Destination::Exchange(e) => {
                        if seen_exchanges.insert(e.as_str()) {
                            if let Some(next) = self.exchanges.get(e) {
                                pending.push(next);
                            }
                        }
                    }
                }
            }
            if matched {
                continue;
            }
            let alternate = ex
                .arguments
                .get(ALTERNATE_EXCHANGE)
                .and_then(FieldValue::as_str);
            if let Some(alt) = alternate {
                if seen_exchanges.insert(alt) {
                    if let Some(next) = self.exchanges.get(alt) {
                        pending.push(next);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Checks that both ends of a binding exist and may be used by `conn`.
    pub fn check_binding_ends(
        &self,
        source: &str,
        destination: &Destination,
        conn: ConnectionId,
    ) -> Result<(), BrokerError> {
        let default = "operation not permitted on the default exchange";
        if source.is_empty() {
            return Err(BrokerError::AccessRefused(default.into()));
        }
        match destination {
            Destination::Queue(q) => {
                let queue = self.queues.get(q).ok_or_else(|| self.no_queue(q))?;
                check_exclusive(queue, conn)?;
            }
            Destination::Exchange(e) => {
                if e.is_empty() {
                    return Err(BrokerError::AccessRefused(default.into()));
                }
                if !self.exchanges.contains_key(e) {
                    return Err(self.no_exchange(e));
                }
            }
        }
        if !self.exchanges.contains_key(source) {
            return Err(self.no_exchange(source));
        }
        Ok(())
    }

    /// Adds a binding unless an equal one exists.
    pub fn bind(&mut self, source: &str, binding: Binding) -> Result<(), BrokerError> {
        let Some(ex) = self.exchanges.get_mut(source) else {
            return Err(self.no_exchange(source));
        };
        if !ex.bindings.iter().any(|b| same_binding(b, &binding)) {
            ex.bindings.push(binding);
        }
        Ok(())
    }

    /// Removes a binding (a missing one is not an error); an auto-delete
    /// source left without bindings goes too.
    pub fn unbind(&mut self, source: &str, binding: &Binding) {
        let Some(ex) = self.exchanges.get_mut(source) else {
            return;
        };
        let before = ex.bindings.len();
        ex.bindings.retain(|b| {
            !(b.destination == binding.destination
                && b.routing_key == binding.routing_key
                && b.arguments == binding.arguments)
        });
        if ex.auto_delete && before > 0 && ex.bindings.is_empty() {
            self.remove_exchange(source);
        }
    }

    /// Removes a queue and the bindings to it; returns the queue.
    pub fn remove_queue(&mut self, name: &str) -> Option<Arc<Queue>> {
        let q = self.queues.remove(name)?;
        self.remove_bindings_to(&Destination::Queue(name.to_owned()));
        Some(q)
    }

    /// Removes an exchange, its stores, and the bindings to it.
    pub fn remove_exchange(&mut self, name: &str) {
        if let Some(ex) = self.exchanges.remove(name) {
            ex.discard_stores();
        }
        self.remove_bindings_to(&Destination::Exchange(name.to_owned()));
    }

    /// Whether some binding has `name` as its destination exchange.
    pub fn is_destination(&self, name: &str) -> bool {
        let dest = Destination::Exchange(name.to_owned());
        self.exchanges
            .values()
            .any(|e| e.bindings.iter().any(|b| b.destination == dest))
    }

    /// Drops every binding to `dest`, then auto-deletes exchanges left with
    /// no bindings.
    fn remove_bindings_to(&mut self, dest: &Destination) {
        let mut emptied = Vec::new();
        for ex in self.exchanges.values_mut() {
            let before = ex.bindings.len();
            ex.bindings.retain(|b| b.destination != *dest);
            if ex.auto_delete && before > 0 && ex.bindings.is_empty() {
                emptied.push(ex.name.clone());
            }
        }
        for name in emptied {
            self.remove_exchange(&name);
        }
    }
}

fn same_binding(a: &Binding, b: &Binding) -> bool {
    a.destination == b.destination
        && a.routing_key == b.routing_key
        && tables_equal(&a.arguments, &b.arguments)
}

/// Refuses another connection's exclusive queue.
pub(super) fn check_exclusive(q: &Queue, conn: ConnectionId) -> Result<(), BrokerError> {
    match q.options.exclusive_owner {
        Some(owner) if owner != conn => Err(BrokerError::ResourceLocked(format!(
            "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            queue_ref(&q.vhost, &q.name)
        ))),
        _ => Ok(()),
    }
}
