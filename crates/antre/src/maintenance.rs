//! Maintenance mode: a cluster node drained of its clients and of its
//! leaderships before it is stopped, as RabbitMQ's `rabbitmq-upgrade
//! drain` does (docs/clustering.md, "Rolling restarts").
//!
//! While a node is drained its AMQP and stream listeners close every new
//! client socket at once (its clients reconnect to another node), every
//! client connection it had is closed, and the quorum queues and streams
//! it led are handed to other members; its replicas keep following and
//! voting but do not stand for election (see
//! [`antre_cluster::network::Link::set_draining`]). The management API
//! stays up, so the node can be revived.

use std::sync::Arc;

use antre_cluster::network::Link;
use tokio::sync::watch;

/// Whether this node is drained; connections watch it, and a cluster
/// node's link is told (its elections read it there).
#[derive(Debug)]
pub struct Maintenance {
    tx: watch::Sender<bool>,
    link: Option<Arc<Link>>,
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance::new(None)
    }
}

impl Maintenance {
    /// Not drained; a cluster node passes its cluster link, which then
    /// follows every change.
    pub fn new(link: Option<Arc<Link>>) -> Self {
        Maintenance {
            tx: watch::channel(false).0,
            link,
        }
    }

    /// Whether the node is drained now.
    pub fn draining(&self) -> bool {
        *self.tx.borrow()
    }

    /// Drains the node (`true`) or revives it; whether that changed
    /// anything. The one place that changes it, so the listeners and the
    /// elections never disagree for longer than this call.
    pub fn set(&self, draining: bool) -> bool {
        if let Some(link) = &self.link {
            link.set_draining(draining);
        }
        self.tx.send_if_modified(|now| {
            let changed = *now != draining;
            *now = draining;
            changed
        })
    }

    /// A receiver that sees each change, for a connection that must end
    /// when the node is drained.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

/// What a client is told when its connection is closed by a drain: the
/// words RabbitMQ uses.
pub const CLOSE_REASON: &str = "Node was put into maintenance mode";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_is_seen_by_its_watchers_once() {
        let m = Maintenance::default();
        let mut rx = m.watch();
        assert!(!m.draining());
        assert!(m.set(true), "drained");
        assert!(!m.set(true), "already drained: no change");
        assert!(rx.has_changed().unwrap_or(false));
        assert!(*rx.borrow_and_update());
        assert!(m.set(false), "revived");
        assert!(!m.draining());
    }
}
