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
//!
//! The state is the node's own, and the metadata group records it for the
//! others ([`record`]): as RabbitMQ's replicated maintenance-state table,
//! the record keeps new queues' leaders off the node.

use std::sync::Arc;
use std::time::Duration;

use antre_broker::cluster::MetaCommand;
use antre_broker::feature_flags::MAINTENANCE_MODE_STATUS;
use antre_broker::Broker;
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

/// How often the record is compared with the node's state when nothing
/// changed here: the record can change under it (a restarted node whose
/// metadata is catching up; a proposal that failed while the metadata
/// group had no leader).
const RECORD_CHECK: Duration = Duration::from_secs(1);

/// On a cluster node: keeps the metadata's record of whether this node is
/// drained equal to its state, proposing a change whenever they differ,
/// until `shutdown`. A node starts revived, so a restart ends the record of
/// a drain too (RabbitMQ's boot unmarks the node the same way).
pub fn record(
    maintenance: &Maintenance,
    broker: &Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(node) = broker.node_name().map(str::to_owned) else {
        return;
    };
    let mut changes = maintenance.watch();
    let broker = Arc::clone(broker);
    tokio::spawn(async move {
        loop {
            let drained = *changes.borrow_and_update();
            // Until every member's version can read the record, it is not
            // made (see antre_broker::feature_flags).
            let recordable = broker.feature_flag_enabled(MAINTENANCE_MODE_STATUS);
            if recordable && broker.node_drained(&node) != drained {
                let command = MetaCommand::SetDrained {
                    node: node.clone(),
                    drained,
                };
                let b = Arc::clone(&broker);
                match tokio::task::spawn_blocking(move || b.change_meta(command)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!("recording the maintenance state: {e}"),
                    Err(_) => return,
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RECORD_CHECK) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
}

/// Waits, at most `within`, until this node's metadata records its state
/// as `drained`; whether it does (not while the cluster has not enabled
/// the record's feature flag).
pub async fn recorded(broker: &Broker, drained: bool, within: Duration) -> bool {
    let Some(node) = broker.node_name() else {
        return true;
    };
    let until = tokio::time::Instant::now() + within;
    loop {
        if broker.node_drained(node) == drained {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
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
