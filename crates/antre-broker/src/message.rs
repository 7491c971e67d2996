//! A message as the broker holds it.

use antre_amqp::BasicProperties;
use bytes::Bytes;

/// A published message. Shared as `Arc<Message>` by every queue it was routed
/// to, so fan-out never copies the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its properties (content header).
    pub properties: BasicProperties,
    /// Its body.
    pub body: Bytes,
}

impl Message {
    /// Whether the publisher marked it persistent (delivery_mode 2).
    pub fn is_persistent(&self) -> bool {
        self.properties.is_persistent()
    }
}
