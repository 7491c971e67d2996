//! The integration tests of a cluster: each module starts three (or more)
//! real `antre` processes on loopback (`cluster/harness.rs`), often with a
//! fault-injecting proxy on every link between them (`cluster/proxy.rs`),
//! and drives them with real clients.
//!
//! One binary for all of them, as for the single-node suite
//! (`node_suite.rs`): a debug test binary links the whole broker. Run one
//! file's tests with a filter: `cargo test -p antre --test cluster
//! cluster_nemesis::`.

mod common;
#[path = "cluster/harness.rs"]
mod harness;
#[path = "cluster/proxy.rs"]
mod proxy;

mod cluster;
mod cluster_faults;
mod cluster_feature_flags;
mod cluster_forwarding;
mod cluster_nemesis;
mod cluster_stream_protocol;
mod cluster_stream_sac;
mod cluster_streams;
mod cluster_timing;
mod queue_placement;
mod quorum_cluster;
mod quorum_members;
