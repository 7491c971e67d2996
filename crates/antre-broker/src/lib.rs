//! The broker core of antre: vhosts, exchanges, bindings, queues, consumers
//! and routing, with no sockets and no clock.
//!
//! The server crate turns bytes into methods (with `antre-amqp`) and hands
//! them to a [`channel::Channel`]; everything that decides where a message
//! goes and who gets it lives here, so it can be tested in microseconds:
//! - [`alarm`]: the memory and disk alarms that block publishers;
//! - [`broker`]: the vhosts and users a server shares among connections;
//! - [`access`]: users, tags, per-vhost and topic permissions;
//! - [`vhost`]: a vhost's topology, and the one publish path into its queues;
//! - [`dead_letter`]: dead-lettering, its cycle rule and its budget;
//! - [`exchange`]: exchange types and binding rules (topic, headers);
//! - [`queue`]: the queue engine (ready messages, consumers, prefetch
//!   credit, round-robin dispatch, requeue at the original position);
//! - [`session`]: a whole client connection's protocol conversation, as a
//!   pure state machine (bytes and time in, bytes and effects out);
//! - [`channel`]: the per-channel state machine (delivery tags, acks,
//!   publisher confirms, transactions);
//! - [`syncer`]: group commit, so confirms mean "on disk" at high rates;
//! - [`policy`]: policies and operator policies, RabbitMQ's rules;
//! - [`definitions`]: durable topology as RabbitMQ-shaped JSON;
//! - [`cluster`]: the seam to a cluster's replicated metadata log;
//! - [`data_format`]: the data directory's format version;
//! - [`metrics`]: counters and latency histograms for monitoring;
//! - [`clock`]: injectable time, so TTLs and delays are tested without sleeps;
//! - [`error`]: refusals, each with its AMQP reply code.

#![forbid(unsafe_code)]
// A client's bytes or the disk must never panic the broker: no unwrap
// outside tests (clippy.toml lets tests unwrap).
#![warn(clippy::unwrap_used)]

pub mod access;
pub mod alarm;
pub mod broker;
pub mod channel;
pub mod clock;
pub mod cluster;
pub mod data_format;
pub mod dead_letter;
pub mod definitions;
pub mod durable;
mod equivalence;
pub mod error;
pub mod exchange;
pub mod feature_flags;
pub mod message;
pub mod metrics;
pub mod placement;
pub mod policy;
pub mod queue;
pub mod remote;
pub mod replicated;
pub mod session;
pub mod stream;
pub mod syncer;
pub mod vhost;

pub use access::{AccessControl, LoginError, UserRecord};
pub use broker::{Broker, StorageOptions, User};
pub use channel::{Channel, ChannelContext, Outgoing};
pub use error::BrokerError;
pub use message::Message;
pub use queue::{
    ConnectionId, ConsumerInfo, Credit, DeathReason, Delivery, DeliverySink, Enqueued, Queue,
    QueueArgs, QueueCounts,
};
pub use vhost::{PublishOptions, PublishOutcome, PublishSource, Vhost};
