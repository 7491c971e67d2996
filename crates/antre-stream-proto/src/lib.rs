//! The byte formats of RabbitMQ streams, as pure functions on bytes (no I/O,
//! no panics on input), so that antre's streams hold exactly what RabbitMQ's
//! hold and a stream-protocol client can be sent stored chunks as they are:
//! - [`chunk`]: osiris chunks, the unit a stream is written, stored, read and
//!   sent in (a 48-byte header, then entries);
//! - [`amqp10`]: the AMQP 1.0 message format every entry of a stream holds;
//! - [`frame`]: the stream protocol's frames (client requests, server frames).

#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)]

pub mod amqp10;
pub mod chunk;
pub mod frame;
