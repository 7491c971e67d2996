//! The antre server: wires the broker core and the codec to the network.
//!
//! - [`config`]: settings and their defaults;
//! - [`alarm`]: the free-disk alarm that blocks publishers;
//! - [`server`]: the listener, start-up and graceful shutdown;
//! - [`connection`]: one task per client connection — the AMQP handshake,
//!   the frame loop, content assembly, heartbeats and batched writes.
//!
//! The binary (`main.rs`) parses the command line and calls [`server::start`];
//! integration tests call it too, on port 0 with a temporary data directory.

pub mod alarm;
pub mod config;
pub mod connection;
pub mod server;

pub use config::Config;
pub use server::{start, RunningServer};
