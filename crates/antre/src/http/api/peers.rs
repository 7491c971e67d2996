//! What this node answers its cluster peers' management APIs: its figures
//! for `/api/nodes` and the overview, its own rows of the connection,
//! channel and consumer listings, and closing one of its connections. A
//! cluster's management API shows the whole cluster whichever node is
//! asked, as RabbitMQ's does (see docs/clustering.md).

use std::sync::{Arc, Weak};

use antre_cluster::wire::Listing;
use serde_json::Value;

use super::{connections, overview};
use crate::http::HttpState;

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

    fn listing(&self, what: Listing, vhost: Option<&str>) -> Vec<Value> {
        connections::local_rows(&self.state, what, vhost)
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
