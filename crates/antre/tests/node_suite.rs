//! The integration tests of one broker: each module drives a real antre
//! (in this process on ephemeral ports, or as a child process where a test
//! kills it or measures its memory) with real clients.
//!
//! One test binary for all of them, rather than one per file, because each
//! binary links the whole broker and its dependencies (about 95 MB in a
//! debug build): forty of them filled CI's disk and spent minutes linking.
//! Run one file's tests with a filter: `cargo test -p antre --test node
//! pika::`.

mod common;
#[path = "cluster/harness.rs"]
mod harness;

mod access_control;
mod access_http;
mod aio_pika;
mod amqp091_go;
mod amqplib;
mod amqprs_client;
mod browser;
mod celery;
mod cli;
mod coalescing;
mod conformance;
mod crash;
mod definitions;
mod direct_reply_to;
mod durability;
mod errors;
mod http_api;
mod http_compat;
mod java_client;
mod kombu;
mod limits;
mod limits_api;
mod listeners;
mod memory;
mod metrics_rabbitmq;
mod pika;
mod point_to_point;
mod policies;
mod pubsub;
mod queue_features;
mod rabbitmq_tools;
mod rstream;
mod server_identity;
mod stream_protocol;
mod streams;
mod tls;
mod tls_pika;
