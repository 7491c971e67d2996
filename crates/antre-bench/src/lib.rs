//! antre-bench: a load generator for AMQP 0-9-1 brokers, in the spirit of
//! RabbitMQ's PerfTest and lavinmqperf, built to be much faster than the
//! brokers it measures.
//!
//! - [`client`]: a minimal AMQP client (handshake, channel, declares) on the
//!   project's codec, `antre-amqp`;
//! - [`producer`] and [`consumer`]: the hot loops, one connection each, that
//!   batch frames into few large reads and writes;
//! - [`run`]: one benchmark run from options to [`run::Report`];
//! - [`declare`]: the object-count scenario (many queues declared while a
//!   bystander's round trips are timed);
//! - [`idle`]: many idle connections and what they cost the broker in
//!   memory;
//! - [`lapin_driver`]: the same runs driven by the independent `lapin`
//!   client instead of the built-in one (`antre-bench lapin`);
//! - [`stream`]: streams over RabbitMQ's stream protocol (driven by the
//!   `rabbitmq-stream-client` crate, or publishing with [`stream_lean`])
//!   and over AMQP 0-9-1 (`antre-bench stream`);
//! - [`stats`]: latency histogram, counters, rates;
//! - [`fake`]: an in-process fake server, to measure the tool's own ceiling
//!   ([`selftest`]) and to test the client without a broker;
//! - [`procfs`]: the broker's CPU time and memory from /proc;
//! - [`chart`] and [`compare`]: an SVG of a run, a table of two brokers.

pub mod chart;
pub mod client;
pub mod compare;
pub mod consumer;
pub mod dead_letter;
pub mod declare;
pub mod fake;
pub mod idle;
pub mod lapin_driver;
pub mod procfs;
pub mod producer;
pub mod run;
pub mod selftest;
pub mod stats;
pub mod stream;
pub mod stream_lean;
