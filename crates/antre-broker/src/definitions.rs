//! Durable definitions (exchanges, queues, bindings, policies) as JSON, in
//! the shape of RabbitMQ's definitions export, so operators' files and tools
//! carry over.

use antre_amqp::{FieldTable, FieldValue};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

pub use crate::policy::PolicyDef;

/// An exchange definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    /// Name.
    pub name: String,
    /// Vhost.
    pub vhost: String,
    /// Type, e.g. "topic".
    #[serde(rename = "type")]
    pub kind: String,
    /// Durable.
    pub durable: bool,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Internal.
    #[serde(default)]
    pub internal: bool,
    /// Arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// A queue definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Name.
    pub name: String,
    /// Vhost.
    pub vhost: String,
    /// Durable.
    pub durable: bool,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// A binding definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    /// Source exchange.
    pub source: String,
    /// Vhost.
    pub vhost: String,
    /// Destination name.
    pub destination: String,
    /// "queue" or "exchange".
    pub destination_type: String,
    /// Binding key.
    pub routing_key: String,
    /// Arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// The durable definitions of one vhost.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct VhostDefinitions {
    /// The vhost's name.
    pub name: String,
    /// Its durable exchanges (not the predeclared ones).
    #[serde(default)]
    pub exchanges: Vec<ExchangeDef>,
    /// Its durable queues.
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    /// Bindings between durable ends.
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
    /// Policies (absent from files written before antre had them, and
    /// left out when there are none, so such files stay as they were).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyDef>,
    /// Operator policies, likewise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operator_policies: Vec<PolicyDef>,
}

/// A field table as a JSON object. Strings that are not UTF-8 are written
/// lossily; numbers keep their value, not their AMQP width (RabbitMQ does
/// the same in its exports).
pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .iter()
        .map(|(k, v)| (k.to_owned(), value_to_json(v)))
        .collect()
}

fn value_to_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::F32(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        FieldValue::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        FieldValue::Decimal { scale, value } => {
            Number::from_f64(f64::from(*value) / 10f64.powi(i32::from(*scale)))
                .map_or(Value::Null, Value::Number)
        }
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b).into_owned())
        }
        FieldValue::Array(items) => Value::Array(items.iter().map(value_to_json).collect()),
        FieldValue::Timestamp(t) => Value::Number((*t).into()),
        FieldValue::Table(t) => Value::Object(table_to_json(t)),
        FieldValue::Void => Value::Null,
        other => other
            .as_i64()
            .map_or(Value::Null, |i| Value::Number(i.into())),
    }
}

/// A JSON object as a field table: integers become signed 64-bit values,
/// as RabbitMQ decodes them.
pub fn json_to_table(map: &Map<String, Value>) -> FieldTable {
    map.iter()
        .map(|(k, v)| (k.as_str(), json_to_value(v)))
        .collect()
}

fn json_to_value(v: &Value) -> FieldValue {
    match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::LongString(Bytes::from(s.clone())),
        Value::Array(items) => FieldValue::Array(items.iter().map(json_to_value).collect()),
        Value::Object(m) => FieldValue::Table(json_to_table(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_survive_json_by_value() {
        let t: FieldTable = [
            ("x-max-length", FieldValue::I32(10)),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
            ("flag", FieldValue::Bool(true)),
            (
                "nested",
                FieldValue::Table([("a", FieldValue::U8(1))].into_iter().collect()),
            ),
        ]
        .into_iter()
        .collect();
        let back = json_to_table(&table_to_json(&t));
        assert_eq!(back.get("x-max-length"), Some(&FieldValue::I64(10)));
        assert_eq!(
            back.get("x-dead-letter-exchange"),
            Some(&FieldValue::string("dlx"))
        );
        assert_eq!(back.get("flag"), Some(&FieldValue::Bool(true)));
        let Some(FieldValue::Table(nested)) = back.get("nested") else {
            panic!()
        };
        assert_eq!(nested.get("a"), Some(&FieldValue::I64(1)));
    }
}
