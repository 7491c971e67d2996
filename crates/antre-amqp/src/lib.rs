//! The AMQP 0-9-1 codec of antre: pure functions from bytes to frames and back.
//!
//! Every byte a client sends passes through this crate before the broker sees
//! it, so it does no I/O, keeps no connection state and never panics on input:
//! malformed bytes become a [`CodecError`] that names the AMQP reply code the
//! spec prescribes (see [`CodecError::reply_code`]). That makes it easy to unit
//! test, to fuzz (`fuzz/` at the workspace root) and to check against an
//! independent implementation (the `amq-protocol` crate, in the tests).
//!
//! Layout, one concept per module:
//! - [`types`]: field tables and field values (RabbitMQ's dialect of the type tags);
//! - [`method`]: every method of every class, generated from one table;
//! - [`properties`]: the basic content header properties;
//! - [`frame`]: frames on the wire (method, header, body, heartbeat);
//! - [`constants`]: reply codes, frame types, the protocol header.
//!
//! Bodies and long strings are parsed as [`bytes::Bytes`] slices of the read
//! buffer, never copied.

#![forbid(unsafe_code)]
// A client's bytes or the disk must never panic the broker: no unwrap
// outside tests (clippy.toml lets tests unwrap).
#![warn(clippy::unwrap_used)]

pub mod codec;
pub mod constants;
pub mod error;
pub mod frame;
pub mod method;
pub mod properties;
pub mod types;

pub use constants::*;
pub use error::CodecError;
pub use frame::{decode_frame, encode_content, encode_frame, encode_method, ContentHeader, Frame};
pub use method::Method;
pub use properties::BasicProperties;
pub use types::{FieldTable, FieldValue};
