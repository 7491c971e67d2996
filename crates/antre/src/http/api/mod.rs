//! The management API, one module per resource. Every handler has the same
//! three steps: find the objects (404 if missing), act through the broker
//! core, answer with [`super::render`]'s JSON.

pub mod bindings;
pub mod cluster;
pub mod connections;
pub mod definitions;
pub mod exchanges;
pub mod health;
pub mod limits;
pub mod listing;
pub mod messages;
pub mod overview;
pub mod parameters;
pub mod peers;
pub mod permissions;
pub mod policies;
pub mod queues;
pub mod users;
pub mod vhosts;

use std::collections::HashMap;

pub use listing::{listing, Paging};

/// A query flag such as `if-unused=true`.
pub fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| v == "true" || v == "1")
}
