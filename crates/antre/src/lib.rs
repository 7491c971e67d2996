//! The antre server: wires the broker core and the codec to the network.
//!
//! - [`config`]: settings and their defaults;
//! - [`alarm`]: the free-disk alarm that blocks publishers;
//! - [`server`]: the listener, start-up and graceful shutdown;
//! - [`listen`]: binding every address of a listener's list;
//! - [`tls`]: certificates for amqps and https (rustls), their reload, and
//!   what a connection's TLS session is;
//! - [`connection`]: one task per client connection: the socket, timers and
//!   delivery coalescing around the core's pure protocol session;
//! - [`registry`]: the open connections and their channels, for operators;
//! - [`sockets`]: the file-descriptor limit and the budget of client
//!   sockets that keeps descriptors for the store;
//! - [`http`]: the management API (RabbitMQ-shaped JSON), the web UI and
//!   Prometheus metrics, on one HTTP listener;
//! - [`cli`]: the `antre queues list`, `antre publish`, ... subcommands, a
//!   client of the management API.
//!
//! The binary (`main.rs`) parses the command line and calls [`server::start`];
//! integration tests call it too, on port 0 with a temporary data directory.

// A client's bytes or the disk must never panic the broker: no unwrap
// outside tests (clippy.toml lets tests unwrap).
#![warn(clippy::unwrap_used)]

pub mod alarm;
pub mod cli;
pub mod config;
pub mod connection;
pub mod http;
pub mod listen;
pub mod maintenance;
pub mod registry;
pub mod server;
pub mod sockets;
pub mod stream;
pub mod tls;

pub use config::{Config, Settings};
pub use server::{start, RunningServer};
