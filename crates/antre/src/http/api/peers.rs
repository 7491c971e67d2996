//! A cluster's management API shows the whole cluster whichever node is
//! asked, as RabbitMQ's does (see docs/clustering.md): what this node
//! answers its peers (its figures for `/api/nodes` and the overview, its
//! own rows of the connection, channel, consumer, queue and vhost
//! listings and its chart samples, closing one of its connections), and
//! the listing of every member's rows.

use std::sync::{Arc, Weak};

use antre_cluster::wire::{Listing, QueueAction};
use serde_json::Value;

use super::overview::NODE_INFO_TIMEOUT;
use super::{connections, overview};
use crate::http::{AuthUser, HttpState};

/// This node's own rows of the listing `what` (only `vhost`'s, and only
/// the object `name`'s, if given: a connection, a channel, a queue; for
/// consumers, those of the queue `name`).
fn local_rows(
    state: &HttpState,
    what: Listing,
    vhost: Option<&str>,
    name: Option<&str>,
) -> Vec<Value> {
    let named = |row: &Value, key: &str| name.is_none_or(|n| row[key] == n);
    let mut rows = match what {
        Listing::Connections => connections::connections(state, vhost),
        Listing::Channels => {
            connections::channels_where(state, |c| vhost.is_none_or(|v| c.vhost == v))
        }
        Listing::Consumers => connections::consumers(state, vhost),
        // Rendered for the named queue only: a queue's page on another
        // member asks for one of maybe thousands.
        Listing::Queues => return super::queues::owned_rows(state, vhost, name),
        Listing::Vhosts => return super::vhosts::own_figures(state, vhost),
        Listing::Samples => return overview::own_samples(state),
        Listing::RaftMembers => {
            return state
                .cluster
                .as_ref()
                .map(|c| super::cluster::raft_rows(c, vhost, name))
                .unwrap_or_default()
        }
    };
    match what {
        Listing::Consumers => rows.retain(|c| named(&c["queue"], "name")),
        _ => rows.retain(|r| named(r, "name")),
    }
    rows
}

/// The rows of `what` of every running node: this node's and each other
/// member's own, asked of them all at once (only `vhost`'s, and only the
/// object `name`'s, as [`local_rows`] filters). A cluster's management
/// API lists the whole cluster's connections, channels and consumers,
/// and shows a queue's and a vhost's figures, whichever node is asked,
/// as RabbitMQ's does; a member that does not answer within
/// [`NODE_INFO_TIMEOUT`] is left out rather than holding the listing up.
pub(crate) async fn cluster_rows(
    state: &HttpState,
    what: Listing,
    vhost: Option<&str>,
    name: Option<&str>,
) -> Vec<Value> {
    let mut rows = local_rows(state, what, vhost, name);
    for theirs in other_members_rows(state, what, vhost, name).await {
        rows.extend(theirs);
    }
    rows
}

/// The other running members' own rows of `what` (see [`cluster_rows`]),
/// one list per member (none on a single node; empty for a member that
/// did not answer in time).
pub(crate) async fn other_members_rows(
    state: &HttpState,
    what: Listing,
    vhost: Option<&str>,
    name: Option<&str>,
) -> Vec<Vec<Value>> {
    let Some(cluster) = &state.cluster else {
        return Vec::new();
    };
    let status = cluster.status();
    let others = status
        .members
        .iter()
        .filter(|m| !m.this_node && m.running)
        .map(|m| member_rows(state, &m.name, what, vhost, name));
    futures::future::join_all(others).await
}

/// Member `node`'s own rows of `what` (filtered as [`local_rows`]
/// filters); none if it does not answer within [`NODE_INFO_TIMEOUT`].
pub(crate) async fn member_rows(
    state: &HttpState,
    node: &str,
    what: Listing,
    vhost: Option<&str>,
    name: Option<&str>,
) -> Vec<Value> {
    let Some(cluster) = &state.cluster else {
        return Vec::new();
    };
    cluster
        .listing(node, what, vhost, name, NODE_INFO_TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(node, "no {what:?} rows from {node}: {e}");
            Vec::new()
        })
}

/// This node's management layer, as its peers ask it.
struct Peers {
    /// A copy of the server's state without the cluster handle: the
    /// cluster keeps this value, so a handle in it would keep both alive
    /// forever.
    state: HttpState,
    /// For the quorum queue counts of the node's figures.
    cluster: Weak<antre_cluster::Cluster>,
}

impl antre_cluster::LocalManagement for Peers {
    fn node_info(&self) -> Value {
        let mut node = overview::local_node(&self.state);
        if let Some(cluster) = self.cluster.upgrade() {
            overview::quorum_counts(&cluster, &mut node);
        }
        node
    }

    fn listing(&self, what: Listing, vhost: Option<&str>, name: Option<&str>) -> Vec<Value> {
        match (what, self.cluster.upgrade()) {
            // The only listing of the cluster's own state, which the
            // copy of the server's state has no handle to.
            (Listing::RaftMembers, Some(cluster)) => {
                super::cluster::raft_rows(&cluster, vhost, name)
            }
            _ => local_rows(&self.state, what, vhost, name),
        }
    }

    fn queue_action(
        &self,
        vhost: &str,
        queue: &str,
        (name, tags): (&str, &[String]),
        action: QueueAction,
    ) -> Result<Value, (u16, String)> {
        let user = AuthUser {
            name: name.to_owned(),
            tags: tags.to_vec(),
        };
        let answer = match action {
            QueueAction::Get(body) => {
                let body = serde_json::to_vec(&body).unwrap_or_default();
                super::messages::get_here(&self.state, &user, vhost, queue, &body)
            }
            QueueAction::Purge => {
                super::queues::purge_here(&self.state, &user, vhost, queue).map(|()| Value::Null)
            }
        };
        answer.map_err(|e| (e.status.as_u16(), e.reason))
    }

    fn close_connection(&self, name: &str, reason: &str) -> bool {
        match self.state.registry.by_name(name) {
            Some(conn) => {
                conn.force_close(reason);
                true
            }
            None => false,
        }
    }
}

/// Makes this node answer its cluster peers' management requests (a
/// single node has none).
pub fn serve(state: &HttpState) {
    let Some(cluster) = &state.cluster else {
        return;
    };
    cluster.serve_management(Arc::new(Peers {
        state: HttpState {
            cluster: None,
            ..state.clone()
        },
        cluster: Arc::downgrade(cluster),
    }));
}
