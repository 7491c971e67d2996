//! A message as the broker holds it, and its on-disk record.

use std::sync::OnceLock;

use antre_amqp::codec::{put_shortstr, Decoder};
use antre_amqp::BasicProperties;
use bytes::{BufMut, Bytes, BytesMut};

/// The longest time to live or expiry RabbitMQ takes, in ms (ten years:
/// `rabbit_misc:check_expiry`): a message's `expiration`, a queue's
/// `x-message-ttl` and `x-expires`. Longer ones are refused (406
/// `{value_too_large,N}`), as there.
pub const MAX_EXPIRY_MS: u64 = 315_360_000_000;

/// A published message. Shared as `Arc<Message>` by every queue it was routed
/// to, so fan-out never copies the body.
#[derive(Debug, Clone)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its properties (content header).
    pub properties: BasicProperties,
    /// Its body.
    pub body: Bytes,
    /// When it was published, in ms since the epoch (0: unknown). TTLs count
    /// from here, also after a restart, since the record keeps it.
    pub published_at: u64,
    /// The store record, encoded once however many durable queues take it.
    record: OnceLock<Bytes>,
}

/// Equal content; whether the record was encoded yet does not matter.
impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.exchange == other.exchange
            && self.routing_key == other.routing_key
            && self.properties == other.properties
            && self.body == other.body
    }
}

/// Version byte that starts every record, so the format can evolve.
const RECORD_VERSION: u8 = 1;

/// A store record that is not a message this version can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable message record: {0}")]
pub struct RecordError(pub String);

impl Message {
    /// A message.
    pub fn new(
        exchange: String,
        routing_key: String,
        properties: BasicProperties,
        body: Bytes,
    ) -> Message {
        Message {
            exchange,
            routing_key,
            properties,
            body,
            published_at: 0,
            record: OnceLock::new(),
        }
    }

    /// The same message, stamped with its publish time.
    pub fn published_at(mut self, ms: u64) -> Message {
        self.published_at = ms;
        // The record embeds the time: a cached one is stale now.
        self.record = OnceLock::new();
        self
    }

    /// A copy with one header set (e.g. `x-delivery-count` on redelivery).
    pub fn with_header(&self, key: &str, value: antre_amqp::FieldValue) -> Message {
        let mut properties = self.properties.clone();
        properties
            .headers
            .get_or_insert_with(Default::default)
            .insert(key, value);
        self.with_properties(properties)
    }

    /// A copy without header `key` (and without headers at all if it was
    /// the only one).
    pub fn without_header(&self, key: &str) -> Message {
        let mut properties = self.properties.clone();
        if let Some(h) = properties.headers.as_mut() {
            h.remove(key);
            if h.is_empty() {
                properties.headers = None;
            }
        }
        self.with_properties(properties)
    }

    fn with_properties(&self, properties: BasicProperties) -> Message {
        Message::new(
            self.exchange.clone(),
            self.routing_key.clone(),
            properties,
            self.body.clone(),
        )
        .published_at(self.published_at)
    }

    /// The per-message TTL from the `expiration` property, in ms.
    pub fn ttl(&self) -> Result<Option<u64>, String> {
        match &self.properties.expiration {
            None => Ok(None),
            // RabbitMQ's wording: the reason is an Erlang term.
            Some(s) => match s.parse::<i64>() {
                Ok(n) if n > MAX_EXPIRY_MS as i64 => {
                    Err(format!("invalid expiration '{s}': {{value_too_large,{n}}}"))
                }
                Ok(n) if n >= 0 => Ok(Some(n as u64)),
                Ok(n) => Err(format!("invalid expiration '{s}': {{value_negative,{n}}}")),
                Err(_) => Err(format!("invalid expiration '{s}': no_integer")),
            },
        }
    }

    /// Its priority (0 when unset).
    pub fn priority(&self) -> u8 {
        self.properties.priority.unwrap_or(0)
    }

    /// The deduplication key: the `x-deduplication-header` header, or else
    /// the `message-id` property (antre's rule; the plugin knows only the
    /// header).
    pub fn dedup_key(&self) -> Option<String> {
        let header = self
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get("x-deduplication-header"));
        match header {
            Some(antre_amqp::FieldValue::LongString(b)) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            Some(v) => v.as_i64().map(|n| n.to_string()),
            None => self.properties.message_id.clone(),
        }
    }

    /// Whether the publisher marked it persistent (delivery_mode 2).
    pub fn is_persistent(&self) -> bool {
        self.properties.is_persistent()
    }

    /// Bytes it occupies in memory, roughly: body plus bookkeeping.
    pub fn memory_size(&self) -> u64 {
        (self.body.len() + self.exchange.len() + self.routing_key.len() + 160) as u64
    }

    /// The record the store keeps: version, exchange, routing key,
    /// properties (as on the wire), body.
    pub fn record(&self) -> &Bytes {
        self.record.get_or_init(|| self.encode_record())
    }

    /// Encodes the record now and makes the body a slice of it (the body
    /// ends the record), for a message about to be stored: one that then
    /// stays in memory holds its bytes once, not a body (pinning the
    /// client's read buffer it was sliced from) plus the record's copy.
    pub fn seal_record(&mut self) {
        let record = self.encode_record();
        let body_at = record.len() - self.body.len();
        self.body = record.slice(body_at..);
        self.record = OnceLock::from(record);
    }

    fn encode_record(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.body.len() + 64);
        out.put_u8(RECORD_VERSION);
        out.put_u64(self.published_at);
        put_shortstr(&mut out, &self.exchange);
        put_shortstr(&mut out, &self.routing_key);
        let at = out.len();
        out.put_u32(0);
        self.properties.encode(&mut out);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Reads a message back from its record.
    pub fn from_record(raw: &[u8]) -> Result<Message, RecordError> {
        let raw = Bytes::copy_from_slice(raw);
        let mut d = Decoder::new(raw.clone(), "message record");
        let bad = |e: antre_amqp::CodecError| RecordError(e.to_string());
        let version = d.octet().map_err(bad)?;
        if version != RECORD_VERSION {
            return Err(RecordError(format!("version {version}")));
        }
        let published_at = d.longlong().map_err(bad)?;
        let exchange = d.shortstr().map_err(bad)?;
        let routing_key = d.shortstr().map_err(bad)?;
        let props = d.longstr().map_err(bad)?;
        let properties = BasicProperties::from_bytes(props).map_err(bad)?;
        let body = raw.slice(raw.len() - d.remaining()..);
        Ok(Message::new(exchange, routing_key, properties, body).published_at(published_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let m = Message::new(
            "payments".into(),
            "eu.card".into(),
            BasicProperties {
                delivery_mode: Some(2),
                message_id: Some("p-1".into()),
                ..Default::default()
            },
            Bytes::from_static(b"{\"amount\": 1000}"),
        )
        .published_at(1_700_000_000_000);
        let back = Message::from_record(m.record()).unwrap();
        assert_eq!(back, Message::from_record(back.record()).unwrap());
        assert_eq!(
            (back.exchange.as_str(), back.routing_key.as_str()),
            ("payments", "eu.card")
        );
        assert_eq!(back.properties, m.properties);
        assert_eq!(back.body, m.body);
        assert_eq!(back.published_at, 1_700_000_000_000);
    }

    #[test]
    fn a_sealed_message_shares_one_buffer_with_its_record() {
        let mut m = Message::new(
            "ex".into(),
            "key".into(),
            BasicProperties::default(),
            Bytes::from_static(b"the body"),
        )
        .published_at(7);
        let before = Message::from_record(m.record()).unwrap();
        m.seal_record();
        assert_eq!(&m.body[..], b"the body");
        let record = m.record();
        assert!(record.ends_with(b"the body"));
        // The body is the record's tail, not a copy.
        assert_eq!(
            m.body.as_ptr(),
            record[record.len() - m.body.len()..].as_ptr()
        );
        assert_eq!(Message::from_record(record).unwrap(), before);
    }

    #[test]
    fn garbage_records_are_errors() {
        assert!(Message::from_record(&[]).is_err());
        assert!(Message::from_record(&[9, 0, 0]).is_err());
        assert!(Message::from_record(&[1, 5, b'a']).is_err());
    }
}
