//! antre's cluster: nodes that authenticate each other and share one
//! metadata Raft group.
//!
//! - [`config`]: a node's identity, its peers and the shared secret;
//! - [`auth`]: the mutual HMAC-SHA256 challenge/response every link
//!   passes before any Raft message;
//! - [`wire`]: length-prefixed frames and the messages they carry;
//! - [`log_store`]: the Raft log and vote on disk, in antre's segment store;
//! - [`state_machine`]: applies committed metadata changes to the broker
//!   ([`antre_broker::Broker::apply_meta`]), builds and installs snapshots;
//! - [`network`]: the client side of the link (openraft's network factory)
//!   and what each node knows of its peers' reachability;
//! - [`server`]: the listening side of the link;
//! - [`node`]: starting a node, proposing changes, its status;
//! - [`membership`]: who the members are, adding and removing them;
//! - [`stream`]: the byte stream under the link, plain TCP or mutual TLS.
//! - [`queue_group`]: quorum queues, one Raft group per queue, whose
//!   leader runs the queue's engine; [`queue_group::members`]: adding and
//!   removing a queue's members, rebalancing leaders.
//! - [`forward`] and [`data_wire`]: the data link that forwards publishes,
//!   consumers, gets and purges to the node that owns a queue.
//!
//! Consensus is openraft's (0.9); this crate only gives it storage, a
//! network and a state machine. See docs/clustering.md.

#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)]
// openraft's storage and RPC errors are large, and its traits impose them
// as the error types of our storage and network code.
#![allow(clippy::result_large_err)]

pub mod applied_store;
mod auth;
pub mod config;
pub mod data_wire;
mod election;
mod failover;
pub mod feature_flags;
pub mod forward;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod node;
pub mod queue_group;
pub mod raft_runtime;
pub mod server;
pub mod state_machine;
pub mod stream;
pub mod transient;
pub mod wire;

use std::io::Cursor;

use antre_broker::cluster::MetaCommand;
use serde::{Deserialize, Serialize};

pub use config::{node_id_of, ClusterConfig, Peer, RaftTiming};
pub use membership::{Member, MemberChange};
pub use node::{Cluster, ClusterStatus, LocalManagement, MemberStatus, RaftFigures};

/// A node's Raft id: derived from its name (see [`node_id_of`]).
pub type NodeId = u64;

/// One entry of the metadata log: a change and who proposed it, so that
/// the proposer can answer its client with its own apply's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposing node.
    pub origin: NodeId,
    /// The proposer's number for this proposal (unique per process run).
    pub request: u64,
    /// The change.
    pub command: MetaCommand,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (from node {} #{})",
            self.command.describe(),
            self.origin,
            self.request
        )
    }
}

openraft::declare_raft_types!(
    /// openraft's type configuration for the metadata group. The response
    /// is empty: each node answers its own clients from its own apply.
    pub TypeConfig:
        D = Proposal,
        R = (),
        Node = Member,
);

/// The metadata group's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A setting is wrong (peer list, node name, secret).
    #[error("cluster configuration: {0}")]
    Config(String),
    /// The disk failed.
    #[error("cluster storage: {0}")]
    Storage(String),
    /// The network failed.
    #[error("cluster network: {0}")]
    Network(String),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
}
