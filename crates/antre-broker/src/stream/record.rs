//! A message as a stream record: AMQP 1.0 sections, mapped from and to AMQP
//! 0-9-1 as RabbitMQ maps them (`rabbit_msg_record`), so that what one
//! protocol writes the other reads:
//! - properties: message-id, user-id, reply-to, correlation-id,
//!   content-type, content-encoding, creation-time (the 0-9-1 timestamp in
//!   ms);
//! - application properties: the headers with simple values, and
//!   `x-basic-type`, `x-basic-app-id`;
//! - message annotations: `x-exchange`, `x-routing-key`,
//!   `x-basic-priority`, `x-basic-delivery-mode`, `x-basic-expiration`;
//! - one data section: the body.
//!
//! RabbitMQ drops headers AMQP 1.0 application properties cannot hold
//! (tables, arrays); antre keeps the whole header table in the annotation
//! `x-antre-amqp091-headers` when any header would not come back as it
//! was, so an AMQP 0-9-1 consumer gets exactly what was published.

use antre_amqp::{BasicProperties, FieldTable, FieldValue};
use antre_stream_proto::amqp10::{self, Body, Value};
use bytes::{Bytes, BytesMut};

use crate::message::Message;

const HEADERS_ANNOTATION: &str = "x-antre-amqp091-headers";
const FILTER_VALUE: &str = super::args::FILTER_VALUE_HEADER;

/// Encodes a message as a stream record.
pub fn to_record(m: &Message) -> Bytes {
    let p = &m.properties;
    let mut annotations = vec![
        (Value::symbol("x-exchange"), Value::string(&m.exchange)),
        (
            Value::symbol("x-routing-key"),
            Value::string(&m.routing_key),
        ),
    ];
    if let Some(v) = p.priority {
        annotations.push((Value::symbol("x-basic-priority"), Value::Ubyte(v)));
    }
    if let Some(v) = p.delivery_mode {
        annotations.push((Value::symbol("x-basic-delivery-mode"), Value::Ubyte(v)));
    }
    if let Some(v) = &p.expiration {
        annotations.push((Value::symbol("x-basic-expiration"), Value::string(v)));
    }
    let mut app = Vec::new();
    if let Some(headers) = &p.headers {
        let mut lossless = true;
        for (k, v) in headers.iter() {
            match field_to_value(v) {
                Some(value) => {
                    lossless &= value_to_field(&value).as_ref() == Some(v);
                    app.push((Value::string(k), value));
                }
                None => lossless = false,
            }
        }
        if !lossless {
            let mut raw = BytesMut::new();
            headers.encode(&mut raw);
            annotations.push((
                Value::symbol(HEADERS_ANNOTATION),
                Value::Binary(raw.freeze()),
            ));
        }
    }
    if let Some(v) = &p.kind {
        app.push((Value::string("x-basic-type"), Value::string(v)));
    }
    if let Some(v) = &p.app_id {
        app.push((Value::string("x-basic-app-id"), Value::string(v)));
    }
    let message = amqp10::Message {
        header: None,
        message_annotations: annotations,
        properties: amqp10::Properties {
            message_id: p.message_id.clone().map(Value::String),
            user_id: p.user_id.clone().map(|u| Bytes::from(u.into_bytes())),
            reply_to: p.reply_to.clone(),
            correlation_id: p.correlation_id.clone().map(Value::String),
            content_type: p.content_type.clone(),
            content_encoding: p.content_encoding.clone(),
            creation_time: p.timestamp.map(|t| (t as i64).saturating_mul(1000)),
            ..amqp10::Properties::default()
        },
        application_properties: app,
        body: Body::Data(vec![m.body.clone()]),
    };
    message.to_bytes()
}

/// Decodes a stream record of `stream` written at `timestamp` (ms). A
/// record without `x-exchange` came from the stream protocol: it reads as
/// published to the default exchange with the stream's name as routing
/// key, as in RabbitMQ.
pub fn from_record(
    raw: Bytes,
    stream: &str,
    timestamp: u64,
) -> Result<Message, amqp10::DecodeError> {
    let m = amqp10::Message::decode(raw)?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let byte = |key: &str| match m.annotation(key) {
        Some(Value::Ubyte(b)) => Some(*b),
        Some(other) => value_to_field(other)
            .and_then(|f| f.as_i64())
            .and_then(|n| u8::try_from(n).ok()),
        None => None,
    };
    let exchange = text(m.annotation("x-exchange")).unwrap_or_default();
    let routing_key = text(m.annotation("x-routing-key")).unwrap_or_else(|| stream.to_owned());
    let kept = match m.annotation(HEADERS_ANNOTATION) {
        // Encoded with its length prefix.
        Some(Value::Binary(raw)) if raw.len() >= 4 => FieldTable::decode(raw.slice(4..), 0).ok(),
        _ => None,
    };
    let mut kind = None;
    let mut app_id = None;
    let mut headers = FieldTable::default();
    for (k, v) in &m.application_properties {
        let Some(key) = k.as_str() else { continue };
        match key {
            "x-basic-type" => kind = text(Some(v)),
            "x-basic-app-id" => app_id = text(Some(v)),
            _ => {
                if let Some(f) = value_to_field(v) {
                    headers.insert(key, f);
                }
            }
        }
    }
    let mut headers = kept.or((!headers.is_empty()).then_some(headers));
    // A stream-protocol publisher's filter value (see `with_filter_value`)
    // reads as the header an AMQP 0-9-1 publisher would have set.
    if let Some(Value::String(v)) = m.annotation(FILTER_VALUE) {
        let h = headers.get_or_insert_with(FieldTable::default);
        if h.get(FILTER_VALUE).is_none() {
            h.insert(FILTER_VALUE, FieldValue::LongString(v.clone().into()));
        }
    }
    let id = |v: &Option<Value>| v.as_ref().map(id_text);
    let p = &m.properties;
    let properties = BasicProperties {
        content_type: p.content_type.clone(),
        content_encoding: p.content_encoding.clone(),
        headers,
        delivery_mode: byte("x-basic-delivery-mode"),
        priority: byte("x-basic-priority"),
        correlation_id: id(&p.correlation_id),
        reply_to: p.reply_to.clone(),
        expiration: text(m.annotation("x-basic-expiration")),
        message_id: id(&p.message_id),
        timestamp: p.creation_time.map(|ms| (ms.max(0) / 1000) as u64),
        kind,
        user_id: p
            .user_id
            .as_ref()
            .map(|u| String::from_utf8_lossy(u).into_owned()),
        app_id,
        cluster_id: None,
    };
    Ok(Message::new(exchange, routing_key, properties, m.body_bytes()).published_at(timestamp))
}

/// A message's filter value (`x-stream-filter-value`), if it has one.
pub fn filter_value(m: &Message) -> Option<&str> {
    m.properties.headers.as_ref()?.get(FILTER_VALUE)?.as_str()
}

/// A stream-protocol message (`raw`) published with a filter value: the
/// value goes into the message as the annotation `x-stream-filter-value`,
/// so that an AMQP 0-9-1 consumer's exact filter sees it (as the header of
/// that name) like one an AMQP 0-9-1 publisher set. RabbitMQ keeps the
/// value only in the chunk's bloom filter; stream-protocol consumers see
/// the extra annotation. A message that does not parse is kept as sent.
pub fn with_filter_value(raw: &Bytes, value: &str) -> Bytes {
    amqp10::with_annotation(raw, FILTER_VALUE, Value::string(value)).unwrap_or_else(|_| raw.clone())
}

/// A message or correlation id of any AMQP 1.0 type, as 0-9-1's short
/// string.
fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) | Value::Symbol(s) => s.clone(),
        Value::Ulong(n) => n.to_string(),
        Value::Uuid(u) => u.iter().map(|b| format!("{b:02x}")).collect(),
        Value::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

/// A header value as an AMQP 1.0 application property (simple values only).
fn field_to_value(v: &FieldValue) -> Option<Value> {
    Some(match v {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::I8(n) => Value::Byte(*n),
        FieldValue::U8(n) => Value::Ubyte(*n),
        FieldValue::I16(n) => Value::Short(*n),
        FieldValue::U16(n) => Value::Ushort(*n),
        FieldValue::I32(n) => Value::Int(*n),
        FieldValue::U32(n) => Value::Uint(*n),
        FieldValue::I64(n) => Value::Long(*n),
        FieldValue::F32(n) => Value::Float(*n),
        FieldValue::F64(n) => Value::Double(*n),
        FieldValue::LongString(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::string(s),
            Err(_) => Value::Binary(b.clone()),
        },
        FieldValue::Timestamp(secs) => Value::Timestamp((*secs as i64).saturating_mul(1000)),
        FieldValue::Void => Value::Null,
        FieldValue::ByteArray(b) => Value::Binary(b.clone()),
        FieldValue::Decimal { .. } | FieldValue::Array(_) | FieldValue::Table(_) => return None,
    })
}

/// An AMQP 1.0 application property as a header value.
fn value_to_field(v: &Value) -> Option<FieldValue> {
    Some(match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Ubyte(n) => FieldValue::U8(*n),
        Value::Ushort(n) => FieldValue::U16(*n),
        Value::Uint(n) => FieldValue::U32(*n),
        Value::Ulong(n) => FieldValue::I64(i64::try_from(*n).unwrap_or(i64::MAX)),
        Value::Byte(n) => FieldValue::I8(*n),
        Value::Short(n) => FieldValue::I16(*n),
        Value::Int(n) => FieldValue::I32(*n),
        Value::Long(n) => FieldValue::I64(*n),
        Value::Float(n) => FieldValue::F32(*n),
        Value::Double(n) => FieldValue::F64(*n),
        Value::Timestamp(ms) => FieldValue::Timestamp((*ms).max(0) as u64 / 1000),
        Value::String(s) | Value::Symbol(s) => FieldValue::LongString(Bytes::from(s.clone())),
        Value::Binary(b) => FieldValue::LongString(b.clone()),
        Value::Uuid(u) => FieldValue::ByteArray(Bytes::copy_from_slice(u)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: Option<FieldTable>) -> Message {
        Message::new(
            "orders".into(),
            "order.created".into(),
            BasicProperties {
                content_type: Some("application/json".into()),
                delivery_mode: Some(2),
                priority: Some(3),
                message_id: Some("o-1".into()),
                correlation_id: Some("c-1".into()),
                reply_to: Some("replies".into()),
                expiration: Some("60000".into()),
                timestamp: Some(1_700_000_000),
                kind: Some("created".into()),
                app_id: Some("shop".into()),
                user_id: Some("guest".into()),
                headers,
                ..BasicProperties::default()
            },
            Bytes::from_static(b"{\"id\": 1}"),
        )
    }

    #[test]
    fn amqp091_messages_come_back_as_published() {
        let mut simple = FieldTable::default();
        simple.insert("region", FieldValue::string("eu"));
        simple.insert("n", FieldValue::I64(-5));
        let mut nested = simple.clone();
        nested.insert("inner", FieldValue::Table(simple.clone()));
        nested.insert(
            "blob",
            FieldValue::ByteArray(Bytes::from_static(b"\x00\xff")),
        );
        for headers in [None, Some(simple), Some(nested)] {
            let m = message(headers);
            let back = from_record(to_record(&m), "s", 7).unwrap();
            assert_eq!(back, m);
            assert_eq!(back.published_at, 7);
        }
    }

    #[test]
    fn a_stream_protocol_filter_value_reads_as_the_amqp091_header() {
        let record = amqp10::Message {
            application_properties: vec![(Value::string("region"), Value::string("emea"))],
            body: Body::Data(vec![Bytes::from_static(b"o-1")]),
            ..amqp10::Message::default()
        }
        .to_bytes();
        let m = from_record(with_filter_value(&record, "emea"), "orders", 0).unwrap();
        assert_eq!(filter_value(&m), Some("emea"));
        assert_eq!(&m.body[..], b"o-1");
        let headers = m.properties.headers.as_ref().unwrap();
        assert_eq!(headers.get("region"), Some(&FieldValue::string("emea")));
        // A message that does not parse is stored as sent.
        let junk = Bytes::from_static(b"not amqp 1.0");
        assert_eq!(with_filter_value(&junk, "emea"), junk);
    }

    #[test]
    fn records_without_amqp091_annotations_read_as_default_exchange() {
        let record = amqp10::Message {
            application_properties: vec![(Value::string("k"), Value::Int(1))],
            body: Body::Value(Value::string("hi")),
            ..amqp10::Message::default()
        }
        .to_bytes();
        let m = from_record(record, "events", 0).unwrap();
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            ("", "events")
        );
        assert_eq!(&m.body[..], b"hi");
        let headers = m.properties.headers.unwrap();
        assert_eq!(headers.get("k"), Some(&FieldValue::I32(1)));
    }
}
