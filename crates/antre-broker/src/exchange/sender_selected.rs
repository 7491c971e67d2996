//! Sender-selected distribution, RabbitMQ's extension: a publisher lists
//! extra routing keys in the `CC` and `BCC` headers (arrays of strings) and
//! the message is routed with each of them as well as its own key, reaching
//! every matched queue once. `BCC` is removed before the message is
//! enqueued, so consumers do not see who else got a copy.

use std::sync::Arc;

use antre_amqp::{FieldTable, FieldValue};

use crate::message::Message;

/// The extra routing keys a message's `CC` and `BCC` headers name.
pub(crate) fn extra_keys(headers: Option<&FieldTable>) -> Vec<String> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    ["CC", "BCC"]
        .iter()
        .filter_map(|h| match headers.get(h) {
            Some(FieldValue::Array(keys)) => Some(keys),
            _ => None,
        })
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect()
}

/// The message as queues get it: without its `BCC` header.
pub(crate) fn without_bcc(message: Arc<Message>) -> Arc<Message> {
    let has_bcc = message
        .properties
        .headers
        .as_ref()
        .is_some_and(|h| h.get("BCC").is_some());
    if !has_bcc {
        return message;
    }
    let mut properties = message.properties.clone();
    if let Some(h) = properties.headers.as_mut() {
        h.remove("BCC");
    }
    Arc::new(
        Message::new(
            message.exchange.clone(),
            message.routing_key.clone(),
            properties,
            message.body.clone(),
        )
        .published_at(message.published_at),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use antre_amqp::BasicProperties;
    use bytes::Bytes;

    #[test]
    fn cc_and_bcc_add_keys_and_bcc_is_hidden() {
        let headers: FieldTable = [
            ("CC", FieldValue::Array(vec![FieldValue::string("a")])),
            (
                "BCC",
                FieldValue::Array(vec![FieldValue::string("b"), FieldValue::string("c")]),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(extra_keys(Some(&headers)), ["a", "b", "c"]);
        let m = Arc::new(Message::new(
            String::new(),
            "k".into(),
            BasicProperties {
                headers: Some(headers),
                ..Default::default()
            },
            Bytes::new(),
        ));
        let seen = without_bcc(m);
        let h = seen.properties.headers.as_ref().unwrap();
        assert!(h.get("BCC").is_none());
        assert!(h.get("CC").is_some());
    }
}
